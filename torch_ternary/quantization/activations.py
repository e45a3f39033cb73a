"""Switching a quantized model between 16-bit and 8-bit activations (codes and scales untouched)."""

from __future__ import annotations

import dataclasses

import torch

from ..errors import TernaryConfigError
from ..ops.ternary_linear_a8 import check_activation_mode, per_group_refusal
from ..tensor import TernaryTensor


def set_activations(model: torch.nn.Module, activations: str) -> int:
    """Switch every ternary weight of ``model`` to activation mode ``activations``, in place.

    The codes and scales are untouched: one quantized model can be run with 16-bit, int8 and fp8
    activations in turn. Switch before ``torch.compile`` (or expect a recompile).

    Args:
        model: a module holding :class:`~torch_ternary.TernaryTensor` parameters.
        activations: one of :data:`~torch_ternary.ops.ternary_linear_a8.ACTIVATION_MODES`.

    Returns:
        The number of ternary weights switched.

    Raises:
        TernaryConfigError: unknown mode, or an 8-bit mode while some weight has per-group scales
            (nothing is changed then).
    """
    check_activation_mode(activations)
    weights = {id(p): p for p in model.parameters() if isinstance(p, TernaryTensor)}
    if activations != "16bit":
        grouped = [p for p in weights.values() if p.scale.shape[1] > 1]
        if grouped:
            raise TernaryConfigError(per_group_refusal(f"{len(grouped)} weights are per group"))
    for p in weights.values():
        p.activations = activations
    config = getattr(model, "_torch_ternary_config", None)  # what quantize_ recorded; files store it
    if config is not None and hasattr(config, "activations"):
        try:
            model._torch_ternary_config = dataclasses.replace(config, activations=activations)
        except TernaryConfigError:  # a per-group config whose layers all had G >= K: keep it as it was
            pass
    return len(weights)
