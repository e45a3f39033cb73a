"""``torch_ternary::ste_weight``: the ternary weight of a QAT latent weight, with its straight-through gradient.

Forward: ``W_hat = s * clip(round(W / s), -1, 1)`` (round half to even, as ``torch.round``), one value per weight,
``s`` broadcast from its ``[S_n, S_k]`` granules. Backward (LSQ, the straight-through estimator of
``s * round_ste(clip(W / s, -1, 1))``), with ``r = W / s`` and ``inside = |r| <= 1``:

* ``dL/dW = dL/dW_hat`` where ``inside``, else 0;
* ``dL/ds`` = per-granule sums of ``dL/dW_hat * (q - r)`` inside and ``dL/dW_hat * q`` outside (``q`` the codes).

The backward is its own op, ``torch_ternary::ste_weight_backward``: it recomputes ``r`` from ``W`` and ``s``
(nothing but the two inputs is saved for it: no ``[N, K]`` intermediates per linear). Both have a plain-torch
reference (any float dtype, CPU and CUDA, used for float64 and on GPUs) and, on the CPU, a compiled kernel for
float32 (:mod:`torch_ternary.kernels.cpu`: one pass over the weights each way).

Arguments: ``latent`` float ``[N, K]``; ``scale`` the latent's dtype, ``[S_n, S_k]`` with ``S_n`` in {1, N},
``S_k = ceil(K / group_size)``, positive (callers clamp it); ``group_size`` ``G``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import TernaryConfigError
from ..quantization.absmean import expand_scale, reduce_to_granules
from . import backends as _backends

_DEVICES = ("cpu", "cuda")


def check_ste_args(latent: Tensor, scale: Tensor, group_size: int) -> None:
    """Raise :class:`TernaryConfigError` unless the arguments are as the module docstring says."""
    if latent.dim() != 2 or not latent.dtype.is_floating_point:
        raise TernaryConfigError(f"ste_weight: latent must be a float [N, K] tensor, got {latent.dtype} {tuple(latent.shape)}")
    n, k = latent.shape
    if group_size < 1:
        raise TernaryConfigError(f"ste_weight: group_size must be >= 1, got {group_size}")
    groups = -(-k // group_size)
    if scale.dim() != 2 or scale.shape[0] not in (1, n) or scale.shape[1] != groups or scale.dtype != latent.dtype:
        raise TernaryConfigError(f"ste_weight: scale must be {latent.dtype} [1 or {n}, {groups}], got {scale.dtype} "
                                 f"{tuple(scale.shape)}")
    if scale.device != latent.device:
        raise TernaryConfigError(f"ste_weight: latent on {latent.device}, scale on {scale.device}")


@torch.library.custom_op("torch_ternary::ste_weight", mutates_args=(), device_types=_DEVICES)
def ste_weight(latent: Tensor, scale: Tensor, group_size: int) -> Tensor:
    """``s * clip(round(W / s), -1, 1)``: ``latent.dtype`` ``[N, K]`` (see the module docstring)."""
    check_ste_args(latent, scale, group_size)
    n, k = latent.shape
    s = expand_scale(scale, n, k, group_size)
    return torch.div(latent, s).round_().clamp_(-1, 1).mul_(s)


@ste_weight.register_fake
def _ste_weight_fake(latent, scale, group_size):
    return torch.empty_like(latent, memory_format=torch.contiguous_format)


@torch.library.custom_op("torch_ternary::ste_weight_backward", mutates_args=(), device_types=_DEVICES)
def ste_weight_backward(grad: Tensor, latent: Tensor, scale: Tensor, group_size: int) -> tuple[Tensor, Tensor]:
    """``(dL/dW, dL/ds)`` from ``grad = dL/dW_hat`` (``latent.dtype`` ``[N, K]``): ``latent.dtype`` ``[N, K]`` and
    ``[S_n, S_k]`` (sums taken in float64 on the CPU kernel, in the dtype here)."""
    check_ste_args(latent, scale, group_size)
    if grad.shape != latent.shape:
        raise TernaryConfigError(f"ste_weight_backward: grad {tuple(grad.shape)} != latent {tuple(latent.shape)}")
    n, k = latent.shape
    r = torch.div(latent, expand_scale(scale, n, k, group_size))
    inside = r.abs() <= 1
    grad = grad.to(latent.dtype)
    grad_latent = torch.where(inside, grad, 0)
    q = torch.round(r).clamp_(-1, 1)
    grad_scale = reduce_to_granules(grad * (q - r * inside), tuple(scale.shape), group_size)
    return grad_latent, grad_scale


@ste_weight_backward.register_fake
def _ste_weight_backward_fake(grad, latent, scale, group_size):
    return torch.empty_like(latent, memory_format=torch.contiguous_format), torch.empty_like(scale)


def _setup(ctx, inputs, output):
    latent, scale, group_size = inputs
    ctx.save_for_backward(latent, scale)
    ctx.group_size = group_size


def _backward(ctx, grad):
    latent, scale = ctx.saved_tensors
    grad_latent, grad_scale = torch.ops.torch_ternary.ste_weight_backward(grad.contiguous(), latent, scale, ctx.group_size)
    return (grad_latent if ctx.needs_input_grad[0] else None), (grad_scale if ctx.needs_input_grad[1] else None), None


ste_weight.register_autograd(_backward, setup_context=_setup)

for _name, _opdef in (("ste_weight", ste_weight), ("ste_weight_backward", ste_weight_backward)):
    _backends.route(_name, _opdef)
