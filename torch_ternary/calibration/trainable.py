"""Trainable ternary linears for calibration: trainable scales, optionally trainable latent weights.

Two modes, both ending in the standard ternary format (:meth:`TrainableTernaryLinear.to_linear`):

* **scales only**: the codes are frozen (kept 2-bit packed, run by ``torch_ternary::linear``, whose
  autograd gives ``dL/dscale``). Memory: packed codes + fp32 scales; this is the path that fits a
  12 B transformer on one GPU.
* **latent weights (QAT)**: a float32 latent weight ``W`` is trained through a straight-through
  estimator (LSQ): ``W_hat = s * round_ste(clip(W / s, -1, 1))``. Gradients reach ``W`` inside
  the clip range and ``s`` through both the rounding residual and the clipped entries. The op
  ``torch_ternary::ste_weight`` computes it in one pass each way (:mod:`torch_ternary.ops.ste_weight`; compiled
  on the CPU for float32).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..quantization.absmean import expand_scale
from ..tensor import TernaryTensor


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """``round(x)`` forward, identity backward."""
    return x + (torch.round(x) - x).detach()


def ste_ternary_weight(latent: torch.Tensor, scale: torch.Tensor, group_size: int) -> torch.Tensor:
    """``s * round_ste(clip(W / s, -1, 1))`` (the op ``torch_ternary::ste_weight``: the same values and gradients).

    Args:
        latent: float32 (or float64) ``[N, K]``. scale: the same dtype, ``[S_n, S_k]`` (positive). group_size: ``G``.

    Returns:
        ``latent.dtype`` ``[N, K]`` with values in {-s, 0, s}, differentiable w.r.t. both inputs.
    """
    return torch.ops.torch_ternary.ste_weight(latent, scale, group_size)


class TrainableTernaryLinear(nn.Module):
    """A linear whose weight is ternary with trainable scales (and optionally a trainable latent weight).

    Args:
        weight: the starting ternary weight (its codes and scales).
        bias: float ``[N]`` or None (kept frozen unless ``train_bias``).
        latent: float ``[N, K]`` latent weight for QAT, or None for scales only.
        train_bias: make the bias trainable too.
    """

    def __init__(self, weight: TernaryTensor, bias: torch.Tensor | None, latent: torch.Tensor | None = None,
                 train_bias: bool = False):
        super().__init__()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.group_size = weight.group_size
        self.weight_dtype = weight.dtype
        self.register_buffer("packed", weight.packed.clone())
        self.scale = nn.Parameter(weight.scale.detach().clone().float())
        self.latent = None if latent is None else nn.Parameter(latent.detach().clone().float())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=train_bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear, latent: torch.Tensor | None = None, train_bias: bool = False):
        """Wrap an ``nn.Linear`` whose weight is a :class:`TernaryTensor`."""
        if not isinstance(linear.weight, TernaryTensor):
            raise TypeError("from_linear needs a linear with a TernaryTensor weight; run quantize_ first")
        return cls(linear.weight, linear.bias, latent, train_bias)

    def current_codes(self) -> torch.Tensor:
        """int8 ``[N, K]``: the codes the current latent weight and scale give (or the frozen ones)."""
        if self.latent is None:
            return torch.ops.torch_ternary.unpack(self.packed, self.in_features)
        s = expand_scale(self.scale.detach().clamp_min(1e-8), self.out_features, self.in_features, self.group_size)
        return torch.clamp(torch.round(self.latent.detach() / s), -1, 1).to(torch.int8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if self.latent is None:
            return torch.ops.torch_ternary.linear(x, self.packed, self.scale, bias, self.in_features, self.group_size)
        w = ste_ternary_weight(self.latent, self.scale.clamp_min(1e-8), self.group_size)
        return F.linear(x, w.to(x.dtype), bias)

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` with the calibrated :class:`TernaryTensor` weight (no extra weights)."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        tt = TernaryTensor.from_codes(self.current_codes(), self.scale.detach().clamp_min(1e-8).float(),
                                      self.group_size, self.weight_dtype)
        linear.weight = nn.Parameter(tt, requires_grad=False)
        if self.bias is not None:
            linear.bias = nn.Parameter(self.bias.detach().clone(), requires_grad=False)
        return linear


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, module)


def make_trainable(model: nn.Module, latent_from: nn.Module | None = None, train_bias: bool = False) -> list[str]:
    """Swap every ternary linear of ``model`` for a :class:`TrainableTernaryLinear`, in place.

    Args:
        model: a ternarized module.
        latent_from: the full-precision model with the same module names; when given, each trainable
            linear gets a latent weight initialized from the full-precision weight (QAT).
        train_bias: make biases trainable.

    Returns:
        The names of the swapped linears.
    """
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and isinstance(m.weight, TernaryTensor)]
    for name in names:
        latent = None
        if latent_from is not None:
            latent = latent_from.get_submodule(name).weight.detach().float()
        _set_submodule(model, name, TrainableTernaryLinear.from_linear(model.get_submodule(name), latent, train_bias))
    return names


def export_ternary(model: nn.Module) -> list[str]:
    """Swap every :class:`TrainableTernaryLinear` back to an ``nn.Linear`` with a ternary weight, in place."""
    names = [n for n, m in model.named_modules() if isinstance(m, TrainableTernaryLinear)]
    for name in names:
        module = model.get_submodule(name)
        linear = module.to_linear()
        _set_submodule(model, name, linear.to(module.scale.device))
    return names


def export_from_state(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """``model`` (ternary linears, e.g. the student before :func:`make_trainable`) with the calibrated
    weights of ``state`` (``{"<linear>.scale": ..., "<linear>.latent": ..., "<linear>.bias": ...}``, full
    tensors, as :func:`~.parallel.trainable_state` gathers them), exported exactly as
    :meth:`TrainableTernaryLinear.to_linear` does. In place; returns ``model``."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and isinstance(m.weight, TernaryTensor)]
    for name in names:
        if f"{name}.scale" not in state:
            continue
        linear = model.get_submodule(name)
        trained = TrainableTernaryLinear.from_linear(linear, state.get(f"{name}.latent"))
        with torch.no_grad():
            trained.scale.copy_(state[f"{name}.scale"])
            if f"{name}.bias" in state:
                trained.bias.copy_(state[f"{name}.bias"])
        _set_submodule(model, name, trained.to_linear().to(state[f"{name}.scale"].device))
    return model
