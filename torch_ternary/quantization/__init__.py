"""What to ternarize and how: absmean math, ``TernaryConfig``, ``quantize_``, size reports, activation modes.

- :mod:`.absmean`: the ternarization formula (scales, codes, granules); plain torch, used by the ops too;
- :mod:`.config`: ``TernaryConfig`` and its handler for one ``nn.Linear``;
- :mod:`.quantize`: ``quantize_`` and ``select_linears``;
- :mod:`.report`: ``QuantizationReport`` and byte accounting;
- :mod:`.activations`: ``set_activations`` (16-bit / int8 / fp8 activations of a quantized model).

The public names below are loaded on first use, so ``import torch_ternary.quantization.absmean`` (what
the ops do) costs nothing more.
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "TernaryConfig": ".config", "PRESETS": ".config", "quantize_": ".quantize", "select_linears": ".quantize",
    "QuantizationReport": ".report", "model_nbytes": ".report", "set_activations": ".activations",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
