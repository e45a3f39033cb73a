"""torch-ternary: ternary (1.58-bit) weight quantization for PyTorch.

Public API::

    from torch_ternary import quantize_, TernaryConfig
    report = quantize_(pipe.transformer, TernaryConfig())
    save_quantized(pipe.transformer, "transformer.safetensors")
    load_quantized(meta_built_transformer, "transformer.safetensors")

The package is grouped by layer (docs/architecture.md): ``ops`` (custom ops) and ``kernels`` (CUDA),
``tensor`` (``TernaryTensor``), ``quantization`` (``TernaryConfig``, ``quantize_``), ``format`` (files),
``integrations`` (diffusers), ``testing`` (offline tiny models), ``calibration``, ``mini``.
"""

from . import _legacy
from ._version import __version__  # noqa: F401
from .errors import (
    ArchitectureMismatchError,
    InvalidWeightError,
    TernaryConfigError,
    TernaryError,
    TernaryFormatError,
    UnsupportedDeviceError,
    UnsupportedOperationError,
)
from .format.single_file import load_quantized, save_quantized
from .quantization.config import TernaryConfig
from .quantization.quantize import quantize_
from .quantization.report import QuantizationReport
from .tensor import TernaryTensor


def _install() -> None:
    """What ``import torch_ternary`` sets up, none of it importing diffusers or CuPy, compiling, or touching a GPU."""
    import importlib.util

    import torch

    from . import integrations

    _legacy.install()  # 0.1.0 import paths
    integrations.install()  # the diffusers quantizer, registered when diffusers' quantizers load
    from .ops import backends

    for name in backends.CPU_KERNEL_OPS:  # compiled CPU kernels: imported, built (and cached) at the first CPU call
        backends.set_impl(name, "cpu", _first_cpu_call(name))
    if torch.version.cuda is not None and importlib.util.find_spec("cupy") is not None:
        from . import kernels  # CUDA kernels as the ops' CUDA implementation; CuPy loads at the first CUDA call

        kernels.register()


def _first_cpu_call(name: str):
    """The CPU implementation of op ``name`` until its first call: then :mod:`torch_ternary.kernels.cpu` installs
    itself (or, with ``$TORCH_TERNARY_CPU_KERNELS=off``, the reference stays) and the call goes there."""

    def first_call(*args):
        from .kernels import cpu as cpu_kernels
        from .ops import backends

        if not cpu_kernels.install():
            for op in backends.CPU_KERNEL_OPS:
                backends.set_impl(op, "cpu", None)
        return backends.get_impl(name, "cpu")(*args)

    first_call.__name__ = first_call.__qualname__ = f"{name}_first_cpu_call"
    return first_call


_install()


def __getattr__(name: str):
    """0.1.0's top-level modules (``torch_ternary.ops_a8``, ``torch_ternary.serialization``, ...), see :mod:`._legacy`."""
    module = _legacy.resolve(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return module


__all__ = [
    "ArchitectureMismatchError",
    "InvalidWeightError",
    "QuantizationReport",
    "TernaryConfig",
    "TernaryConfigError",
    "TernaryError",
    "TernaryFormatError",
    "TernaryTensor",
    "UnsupportedDeviceError",
    "UnsupportedOperationError",
    "load_quantized",
    "quantize_",
    "save_quantized",
]
