"""Typed errors raised by torch-ternary.

Every error the library raises on bad input derives from :class:`TernaryError`, and also from the
builtin exception a caller would naturally catch (``ValueError``, ``TypeError``, ...), so both
``except TernaryError`` and ``except ValueError`` work.
"""

from __future__ import annotations


class TernaryError(Exception):
    """Base class of every torch-ternary error."""


class TernaryConfigError(TernaryError, ValueError):
    """A :class:`~torch_ternary.TernaryConfig` field has an invalid value."""


class InvalidWeightError(TernaryError, ValueError):
    """A weight cannot be quantized: NaN/Inf values, wrong rank, or a non-floating dtype."""


class TernaryFormatError(TernaryError, ValueError):
    """A quantized file or packed tensor is malformed: truncated, corrupt, or of a wrong version."""


class ArchitectureMismatchError(TernaryError, ValueError):
    """A quantized file does not fit the model it is loaded into (missing, unexpected or reshaped tensors)."""


class UnsupportedDeviceError(TernaryError, RuntimeError):
    """Ternary tensors were sent to a device type the library has no kernels for."""


class UnsupportedOperationError(TernaryError, NotImplementedError):
    """An operation was applied to a :class:`~torch_ternary.TernaryTensor` that it does not implement."""


class DiffusersVersionError(TernaryError, ImportError):
    """The installed diffusers is too old for the torch-ternary quantizer (it lacks hooks the quantizer needs)."""


class DiffusersVersionWarning(UserWarning):
    """Issued once when diffusers' quantizers load and the installed diffusers is too old for torch-ternary."""
