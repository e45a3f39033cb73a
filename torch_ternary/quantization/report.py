"""Size accounting: what a model holds before and after ternarization."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..tensor import TernaryTensor


def tensor_nbytes(t: torch.Tensor) -> int:
    """Bytes a tensor holds in memory: packed codes + scales for a TernaryTensor, ``numel * itemsize`` otherwise."""
    if isinstance(t, TernaryTensor):
        return t.nbytes_packed
    return t.numel() * t.element_size()


def model_nbytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer of ``model`` (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) in seen:
            continue
        seen.add(id(t))
        total += tensor_nbytes(t)
    return total


@dataclass
class QuantizationReport:
    """What ``quantize_`` did.

    Attributes:
        layers_converted: dotted names of the linears now holding a ternary weight.
        layers_kept: dotted names of the linears left dense.
        params_total: parameters of the model (logical count).
        params_quantized: weight entries now ternary.
        bytes_before: bytes of all parameters and buffers before.
        bytes_after: the same after (packed codes + float32 scales for ternary weights).
    """

    layers_converted: list[str] = field(default_factory=list)
    layers_kept: list[str] = field(default_factory=list)
    params_total: int = 0
    params_quantized: int = 0
    bytes_before: int = 0
    bytes_after: int = 0

    @property
    def ratio(self) -> float:
        """``bytes_before / bytes_after``."""
        return self.bytes_before / max(self.bytes_after, 1)

    @property
    def fraction_quantized(self) -> float:
        """Share of parameters that are ternary."""
        return self.params_quantized / max(self.params_total, 1)

    def to_dict(self) -> dict:
        return {
            "layers_converted": len(self.layers_converted),
            "layers_kept": len(self.layers_kept),
            "params_total": self.params_total,
            "params_quantized": self.params_quantized,
            "fraction_quantized": self.fraction_quantized,
            "bytes_before": self.bytes_before,
            "bytes_after": self.bytes_after,
            "ratio": self.ratio,
        }

    def __str__(self) -> str:
        mb = 1e6
        return (
            f"ternarized {len(self.layers_converted)} linears, kept {len(self.layers_kept)} dense\n"
            f"parameters: {self.params_total:,} ({self.params_quantized:,} ternary, {100 * self.fraction_quantized:.2f} %)\n"
            f"bytes: {self.bytes_before / mb:,.3f} MB -> {self.bytes_after / mb:,.3f} MB  ({self.ratio:.2f}x smaller)"
        )
