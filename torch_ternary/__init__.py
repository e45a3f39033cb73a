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

__version__ = "0.1.0"

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
