"""CUDA kernels for the ``torch_ternary`` custom ops, written in CUDA C++ and run through CuPy.

:func:`register` installs them as the CUDA implementation of ``torch_ternary::linear``,
``torch_ternary::unpack``, ``torch_ternary::dequantize`` and ``torch_ternary::linear_a8``
(through the per-device routing table of :mod:`torch_ternary.ops.backends`),
so eager calls and ``torch.compile(fullgraph=True)`` graphs (where the ops are opaque calls) both
reach them. It is a no-op when torch has no CUDA build or CuPy is not installed, and it never
imports CuPy or initializes CUDA: everything is decided at the first call on a CUDA tensor.

At run time each call takes the kernel path when it can and the plain-torch reference of
:mod:`torch_ternary.ops` otherwise (fp32 activations, compute capability < 8.0, a group size
that is not a multiple of 16, CuPy failing to load or compile: the latter warns once and turns
the kernels off for the process). :data:`dispatch.STATS` counts the path of every call.

Functional entries (each documents its tensors): :func:`skinny_linear`, :func:`fused_linear`,
:func:`decode_cublas_linear`, :func:`dequantize_cuda`, :func:`unpack_cuda`, and for
``torch_ternary::linear_a8`` (8-bit activations, also registered here) :func:`a8_linear`,
:func:`quantize_activations_cuda`, :func:`a8_weight_workspace`, :func:`a8_epilogue`.
"""

from __future__ import annotations

import importlib.util
import warnings
from typing import Callable, Optional

import torch

from ..ops import backends
from ..ops import ternary_linear as ops
from ..ops import ternary_linear_a8 as ops_a8
from . import dispatch
from .a8 import a8_epilogue, a8_linear, a8_weight_workspace, quantize_activations_cuda
from .common import DEQUANT_DTYPES, HALF_DTYPES, capability, device_index, unsupported_weight
from .decode import dequantize_cuda, unpack_cuda
from .gemm import decode_cublas_linear, fused_linear
from .gemv import skinny_linear
from .loader import MIN_CAPABILITY, KernelLoadError

__all__ = [
    "a8_epilogue",
    "a8_linear",
    "a8_weight_workspace",
    "available",
    "decode_cublas_linear",
    "dequantize_cuda",
    "disabled_reason",
    "fused_linear",
    "KernelLoadError",
    "quantize_activations_cuda",
    "register",
    "registered",
    "skinny_linear",
    "unpack_cuda",
]

_reference: dict[str, Callable] = {}
_registered = False
_disabled: Optional[str] = None


def _cupy_installed() -> bool:
    return importlib.util.find_spec("cupy") is not None


def available() -> bool:
    """True when the kernels can run here: CUDA build of torch, a GPU of sm_80+, CuPy importable."""
    if torch.version.cuda is None or not _cupy_installed() or _disabled is not None:
        return False
    if not torch.cuda.is_available():
        return False
    return capability(torch.cuda.current_device()) >= MIN_CAPABILITY


def registered() -> bool:
    """True once :func:`register` installed the CUDA implementations."""
    return _registered


def disabled_reason() -> Optional[str]:
    """Why the kernels were turned off for this process (a load / compile failure), else None."""
    return _disabled


def register() -> bool:
    """Install the CUDA kernels as the ``cuda`` implementation of the torch_ternary ops.

    Safe everywhere: returns False and changes nothing when torch is a CPU build or CuPy is not
    installed. Idempotent. Never imports CuPy or touches the GPU.

    Returns:
        True when the kernels are registered.
    """
    global _registered
    if _registered:
        return True
    if torch.version.cuda is None or not _cupy_installed():
        return False
    impls = {"linear": _linear_cuda, "unpack": _unpack_cuda, "dequantize": _dequantize_cuda, "linear_a8": _linear_a8_cuda}
    for name, impl in impls.items():
        _reference[name] = backends.reference(name)  # the plain-torch implementation, kept as the fallback
        backends.set_impl(name, "cuda", impl)
    _registered = True
    return True


def _fallback(name: str, reason: str, *args):
    dispatch.STATS[f"{name}:{dispatch.REFERENCE}({reason})"] += 1
    return _reference[name](*args)


def _device_ok(t: torch.Tensor) -> Optional[str]:
    if _disabled is not None:
        return "disabled"
    if capability(device_index(t)) < MIN_CAPABILITY:
        return "capability"
    return None


def _run(name: str, fn: Callable, fallback_args: tuple):
    """Run a kernel; a CuPy load / compile failure turns the kernels off once, with a warning."""
    global _disabled
    try:
        return fn()
    except KernelLoadError as exc:
        if _disabled is None:
            _disabled = f"{type(exc).__name__}: {exc}"
            warnings.warn(
                f"torch-ternary: CUDA kernels disabled, falling back to the reference ({_disabled})",
                RuntimeWarning, stacklevel=3,
            )
        return _fallback(name, "disabled", *fallback_args)


def _linear_cuda(x, packed, scale, bias, in_features, group_size):
    args = (x, packed, scale, bias, in_features, group_size)
    ops._check_linear_args(*args)
    reason = _device_ok(x)
    if reason is None and x.dtype not in HALF_DTYPES:
        reason = "dtype"
    if reason is None:
        reason = unsupported_weight(packed, scale, in_features, group_size) and "weight"
    x2 = x.reshape(-1, in_features)
    m, n = x2.shape[0], packed.shape[0]
    if reason is None and (m == 0 or n == 0):
        reason = "empty"
    if reason is not None:
        return _fallback("linear", reason, *args)
    choice = dispatch.choose(m, n, in_features, capability(device_index(x)))
    if choice.path == dispatch.REFERENCE:
        return _fallback("linear", "table", *args)

    def go():
        if choice.path == dispatch.SKINNY:
            y = skinny_linear(x2, packed, scale, bias, in_features, group_size,
                              rows_per_warp=choice.rows_per_warp, warps=choice.warps)
        elif choice.path == dispatch.FUSED_MMA:
            y = fused_linear(x2, packed, scale, bias, in_features, group_size)
        else:
            y = decode_cublas_linear(x2, packed, scale, bias, in_features, group_size)
        dispatch.STATS[f"linear:{choice.path}"] += 1
        return y.reshape(*x.shape[:-1], n)

    return _run("linear", go, args)


def _unpack_cuda(packed, in_features):
    args = (packed, in_features)
    ops.packing.check_packed(packed, in_features)
    reason = _device_ok(packed)
    if reason is not None:
        return _fallback("unpack", reason, *args)

    def go():
        out = unpack_cuda(packed, in_features)
        dispatch.STATS["unpack:cuda"] += 1
        return out

    return _run("unpack", go, args)


def _dequantize_cuda(packed, scale, in_features, group_size, dtype):
    args = (packed, scale, in_features, group_size, dtype)
    ops._check_weight_args(packed, scale, in_features, group_size)
    reason = _device_ok(packed)
    if reason is None and dtype not in DEQUANT_DTYPES:
        reason = "dtype"
    if reason is None:
        reason = unsupported_weight(packed, scale, in_features, group_size) and "weight"
    if reason is not None:
        return _fallback("dequantize", reason, *args)

    def go():
        out = dequantize_cuda(packed, scale, in_features, group_size, dtype)
        dispatch.STATS["dequantize:cuda"] += 1
        return out

    return _run("dequantize", go, args)


def _linear_a8_cuda(x, packed, scale, bias, in_features, group_size, fmt):
    args = (x, packed, scale, bias, in_features, group_size, fmt)
    ops_a8.check_a8_args(*args)
    reason = _device_ok(x)
    if reason is None and capability(device_index(x)) < dispatch.A8_MIN_CAPABILITY[fmt]:
        reason = "capability"
    if reason is None:
        reason = unsupported_weight(packed, scale, in_features, group_size) and "weight"
    x2 = x.reshape(-1, in_features)
    if reason is None and (x2.shape[0] == 0 or packed.shape[0] == 0):
        reason = "empty"
    if reason is not None:
        return _fallback("linear_a8", reason, *args)
    if dispatch.choose_a8(fmt, capability(device_index(x))) == dispatch.REFERENCE:
        return _fallback("linear_a8", "table", *args)

    def go():
        y = a8_linear(x2, packed, scale, bias, in_features, group_size, fmt)
        dispatch.STATS[f"linear_a8:{fmt}"] += 1
        return y.reshape(*x.shape[:-1], packed.shape[0])

    return _run("linear_a8", go, args)
