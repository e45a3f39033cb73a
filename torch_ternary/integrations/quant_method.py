"""torch-ternary's quantization method name for diffusers, and the metaclass of its config class.

A leaf module (no diffusers import), shared by :mod:`.registration` (which writes them into diffusers'
tables) and :mod:`.diffusers_quantizer` (the quantizer and config classes), so neither imports the other
at module level.
"""

from __future__ import annotations

import enum

from ..quantization.config import TernaryConfig


class TernaryQuantizationMethod(str, enum.Enum):
    """diffusers keys quantizers by a ``str`` enum with a ``.value``; this is torch-ternary's."""

    TORCH_TERNARY = "torch_ternary"


QUANT_METHOD = TernaryQuantizationMethod.TORCH_TERNARY


class AcceptsTernaryConfig(type):
    """Metaclass: ``isinstance(TernaryConfig(), cls)`` is True.

    ``PipelineQuantizationConfig(quant_mapping={"transformer": TernaryConfig()})`` accepts a config only
    if it is an instance of a class of ``AUTO_QUANTIZATION_CONFIG_MAPPING``; the diffusers-free
    ``TernaryConfig`` cannot subclass diffusers' mixin, so the registered config class counts it as one
    of its instances (``from_pretrained`` wraps a plain ``TernaryConfig`` itself).
    """

    def __instancecheck__(cls, obj) -> bool:
        return isinstance(obj, TernaryConfig) or super().__instancecheck__(obj)
