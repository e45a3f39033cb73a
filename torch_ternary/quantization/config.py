"""``TernaryConfig``: what to ternarize and how, plus its handler for one ``nn.Linear``.

Module selection, in order:

1. ``preset`` picks the candidate linears: ``"flux"`` keeps what 1.58-bit FLUX keeps in full
   precision (the x / context / time-text embedders, ``norm_out`` and ``proj_out``) and takes every
   linear under ``transformer_blocks`` and ``single_transformer_blocks`` (AdaLN modulation linears
   included); ``"all"`` takes every ``nn.Linear``; ``"auto"`` (default) is ``"flux"`` for a
   ``FluxTransformer2DModel`` and ``"all"`` otherwise.
2. ``include`` (if given) narrows to names matching one of its glob patterns.
3. ``exclude`` drops names matching one of its glob patterns.
4. Linears with fewer than ``min_numel`` weights, or fewer than ``min_in_features`` inputs, stay dense.
5. ``quantize_``'s ``filter_fn(module, name)`` (if given) has the last word.

Patterns are ``fnmatch`` globs over the module's full dotted name (``"*.attn.to_q"``).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
from dataclasses import dataclass

from torch import nn

from ..errors import TernaryConfigError
from ..ops.ternary_linear_a8 import ACTIVATION_MODES, per_group_refusal
from ..tensor import TernaryTensor
from .absmean import GRANULARITIES, resolve_group_size

PRESETS = ("auto", "flux", "all")

#: Module class names that the ``auto`` preset treats as FLUX transformers.
FLUX_CLASS_NAMES = ("FluxTransformer2DModel",)

#: The FLUX preset: which linears 1.58-bit FLUX ternarizes (every one in these block lists).
FLUX_INCLUDE = ("transformer_blocks.*", "single_transformer_blocks.*")


@dataclass(frozen=True)
class TernaryConfig:
    """How ``quantize_`` ternarizes a model.

    Attributes:
        granularity: scale granule: ``"per_tensor"`` (BitNet b1.58), ``"per_channel"`` (one scale
            per output feature; default) or ``"per_group"`` (one per ``group_size`` inputs).
        group_size: ``G`` for ``per_group``; a positive multiple of 16.
        preset: ``"auto"``, ``"flux"`` or ``"all"`` (see module docstring).
        include: glob patterns; when given, only matching linears are candidates.
        exclude: glob patterns of linears to keep dense.
        min_numel: linears with fewer weight entries stay dense.
        min_in_features: linears with fewer inputs ``K`` stay dense.
        activations: ``"16bit"`` (default: activations stay in the model's dtype), ``"int8"`` or
            ``"fp8"``: large linears quantize activations per token to 8 bits and run on int8 / fp8
            tensor cores (``torch_ternary.ops.ternary_linear_a8``). 8-bit modes need ``per_channel`` or
            ``per_tensor`` granularity.
    """

    granularity: str = "per_channel"
    group_size: int = 128
    preset: str = "auto"
    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    min_numel: int = 0
    min_in_features: int = 1
    activations: str = "16bit"

    def __post_init__(self):
        if self.granularity not in GRANULARITIES:
            raise TernaryConfigError(f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}")
        if self.granularity == "per_group":
            resolve_group_size("per_group", self.group_size, 1 << 30)
        elif not isinstance(self.group_size, int) or self.group_size <= 0:
            raise TernaryConfigError(f"group_size must be a positive int, got {self.group_size!r}")
        if self.preset not in PRESETS:
            raise TernaryConfigError(f"preset must be one of {PRESETS}, got {self.preset!r}")
        for name in ("include", "exclude"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, str) or not all(isinstance(p, str) for p in value):
                raise TernaryConfigError(f"{name} must be a tuple of glob strings, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        for name in ("min_numel", "min_in_features"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise TernaryConfigError(f"{name} must be a non-negative int, got {value!r}")
        if self.activations not in ACTIVATION_MODES:
            raise TernaryConfigError(f"activations must be one of {ACTIVATION_MODES}, got {self.activations!r}")
        if self.activations != "16bit" and self.granularity == "per_group":
            raise TernaryConfigError(per_group_refusal(f"granularity='per_group', group_size={self.group_size}"))

    # ------------------------------------------------------------------ (de)serialization
    def to_dict(self) -> dict:
        """JSON-safe dict of the fields (what files store)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["include"] = None if self.include is None else list(self.include)
        d["exclude"] = list(self.exclude)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TernaryConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`TernaryConfigError`."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise TernaryConfigError(f"unknown TernaryConfig fields: {sorted(unknown)}")
        d = dict(d)
        if d.get("include") is not None:
            d["include"] = tuple(d["include"])
        if "exclude" in d:
            d["exclude"] = tuple(d["exclude"])
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    # ------------------------------------------------------------------ selection
    def resolved_preset(self, model: nn.Module) -> str:
        """``"flux"`` or ``"all"``: the preset ``"auto"`` resolves to for ``model``."""
        if self.preset != "auto":
            return self.preset
        return "flux" if type(model).__name__ in FLUX_CLASS_NAMES else "all"

    def selects(self, name: str, module: nn.Module, preset: str) -> bool:
        """Whether the linear ``module`` at dotted ``name`` is ternarized (filter_fn aside)."""
        if not isinstance(module, nn.Linear) or isinstance(module.weight, TernaryTensor):
            return False
        if preset == "flux" and not _matches(name, FLUX_INCLUDE):
            return False
        if self.include is not None and not _matches(name, self.include):
            return False
        if _matches(name, self.exclude):
            return False
        return module.weight.numel() >= self.min_numel and module.in_features >= self.min_in_features


def _matches(name: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def ternarize_linear(module: nn.Linear, config: TernaryConfig) -> None:
    """The config's handler: swap ``module.weight`` for a :class:`TernaryTensor` parameter, in place.

    Args:
        module: an ``nn.Linear`` whose weight is a finite floating ``[N, K]`` tensor (or on meta).
        config: granularity, group size and activation mode to use.
    """
    weight = module.weight
    tt = TernaryTensor.from_float(weight.detach(), config.granularity, config.group_size,
                                  activations=config.activations)
    module.weight = nn.Parameter(tt, requires_grad=False)

