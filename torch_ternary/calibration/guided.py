"""The guided-velocity term of self-distillation: match the velocity the sampler actually uses.

With true classifier-free guidance the sampler never steps along the transformer's raw outputs but
along ``v_g = v_u + g (v_c - v_u)`` (``v_c`` / ``v_u``: the conditional and unconditional calls at the same
``x_t``, ``g``: the guidance scale, 1.5 for the shipped Mini FLUX). A student error ``e_c``, ``e_u`` on the two calls moves
the sample by ``e_u + g (e_c - e_u)``: the part of the error that differs between the two calls, which is
where the prompt's content (which colour on which object, where it goes) lives, is amplified ``g`` times,
while the plain velocity loss weighs it no more than the rest. This term adds, for every pair of records,

    ``w * || e_u + g (e_c - e_u) ||^2 / g^2``      (mean over the elements, as the plain loss)

so that the term's size does not grow with ``g`` (the ``1 / g^2`` makes it about ``|| e_c - e_u ||^2`` for
large ``g``; at ``g = 1.5`` it is ``|| e_c + 0.5 (e_c - e_u) ||^2 / 2.25``).

Pairs come from the recorded trajectories (:mod:`.trajectories`): diffusers' ``FluxPipeline`` calls the
transformer with the conditional batch, then with the unconditional (negative-prompt) batch, at the
same ``x_t`` and timestep, and the recorder keeps the calls in order; :func:`~.trajectories.cfg_pairs` finds, in one
shard, the rows with byte-identical ``x_t`` and equal timestep, the earlier of two being the conditional
one. Rows without exactly one partner (no true CFG, or a duplicated sample) take no part.
"""

from __future__ import annotations

import torch

from ..errors import TernaryConfigError
from .trajectories import cfg_pairs  # noqa: F401  (the pairs this term reads; defined beside the recorder)


def guided_error(pred: torch.Tensor, target: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Per pair ``|| e_u + g (e_c - e_u) ||^2 / g^2`` (mean over elements) of an interleaved batch.

    Args:
        pred: ``[2P, ...]`` float student outputs, rows ``2p`` / ``2p + 1`` the conditional / unconditional
            call of pair ``p``.
        target: ``[2P, ...]`` float teacher velocities, same layout.
        guidance_scale: ``g`` of the sampler (> 1).

    Returns:
        float32 ``[P]``.
    """
    if pred.shape != target.shape or pred.shape[0] % 2:
        raise TernaryConfigError(f"an interleaved pair batch needs equal shapes with an even first dimension, got "
                                 f"{tuple(pred.shape)} and {tuple(target.shape)}")
    err = (pred.float() - target.float()).reshape(pred.shape[0] // 2, 2, -1)
    e_c, e_u = err[:, 0], err[:, 1]
    g = float(guidance_scale)
    return (e_u + g * (e_c - e_u)).pow(2).mean(1) / (g * g)


def sampler_guidance_scale(pipe, pipe_kwargs: dict | None = None) -> float:
    """The true-CFG scale ``pipe`` samples with: ``pipe_kwargs["true_cfg_scale"]``, else Mini FLUX's own
    sampling setting; a pipeline without true CFG (``<= 1``, e.g. guidance-distilled FLUX.1-dev) is refused."""
    g = (pipe_kwargs or {}).get("true_cfg_scale", getattr(pipe, "mini_sampling", {}).get("true_cfg_scale", 1.0))
    if not float(g) > 1:
        raise TernaryConfigError(f"the guided-velocity loss needs a sampler with true classifier-free guidance; this "
                                 f"pipeline samples with true_cfg_scale {g} (no unconditional call to pair with)")
    return float(g)
