"""torch-ternary: ternary (1.58-bit) weight quantization for PyTorch.

Public API::

    from torch_ternary import quantize_, TernaryConfig
    report = quantize_(pipe.transformer, TernaryConfig())
    save_quantized(pipe.transformer, "transformer.safetensors")
    load_quantized(meta_built_transformer, "transformer.safetensors")
"""

from .config import TernaryConfig
from .errors import (
    ArchitectureMismatchError,
    InvalidWeightError,
    TernaryConfigError,
    TernaryError,
    TernaryFormatError,
    UnsupportedDeviceError,
    UnsupportedOperationError,
)
from .quantize import quantize_
from .report import QuantizationReport
from .serialization import load_quantized, save_quantized
from .tensor import TernaryTensor
from .kernels import register as _register_kernels; _register_kernels()  # noqa: E702  (CUDA kernels; no-op on CPU)

__version__ = "0.1.0"

from .integrations import install as _install_integrations  # noqa: E402  (diffusers quantizer; imports nothing heavy)

_install_integrations()

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
