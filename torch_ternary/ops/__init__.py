"""The ``torch_ternary::*`` custom ops: schemas, plain-torch reference kernels, fake kernels, autograd.

- :mod:`.ternary_linear`: ``unpack``, ``dequantize``, ``linear`` (16-bit activations) and the two
  backward ops ``linear_grad_input`` / ``linear_grad_scale``;
- :mod:`.ternary_linear_a8`: ``linear_a8`` (per-token 8-bit activations, W1.58A8);
- :mod:`.ste_weight`: ``ste_weight`` / ``ste_weight_backward`` (calibration's QAT weight, straight-through).

Importing this package registers every op (``torch.ops.torch_ternary.*``). The CUDA kernels of
:mod:`torch_ternary.kernels` replace the CUDA registrations when they can run.
"""

from __future__ import annotations

from . import ste_weight as _ste_weight_module  # noqa: F401  (registers the QAT weight ops)
from . import ternary_linear, ternary_linear_a8  # noqa: F401  (registers every op; the modules, as attributes)
from .ternary_linear import dequantize, linear, linear_grad_input, linear_grad_scale, unpack
from .ternary_linear_a8 import linear_a8

__all__ = ["dequantize", "linear", "linear_a8", "linear_grad_input", "linear_grad_scale", "unpack"]


def __getattr__(name: str):
    """Other names of torch-ternary 0.1.0's module ``torch_ternary.ops`` (now :mod:`.ternary_linear`)."""
    try:
        return getattr(ternary_linear, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
