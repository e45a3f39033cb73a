"""Compiled CPU kernels for the ``torch_ternary`` ops: ternary linears straight from the 2-bit packed weights.

The C++ source is ``ternary_cpu.cpp`` next to this file, built into one extension with ``ste_cpu.cpp``,
``amx_bf16_cpu.cpp`` and their header ``amx_tiles.h`` (each file's header documents its layout, the decode in
registers, the blocking and the threads). :func:`install` (called by ``import torch_ternary``) makes these
functions the CPU implementation of ``torch_ternary::linear``, ``linear_a8``, ``dequantize``, ``unpack``,
``linear_grad_input`` and ``linear_grad_scale`` (:mod:`torch_ternary.ops.backends`), and, from ``ste_cpu.cpp``
(built into the same extension), of calibration's QAT weight ``ste_weight`` / ``ste_weight_backward`` (float32;
other dtypes keep the reference), so eager calls and
``torch.compile`` graphs reach them. ``import torch_ternary`` imports none of this: the first CPU call of an op
imports this module and installs it. Nothing is compiled at import: the first CPU call builds the source
with ``torch.utils.cpp_extension`` (ninja, the machine's C++ compiler; about 30 s) into a cache keyed by
the source, the torch version and the flags (:func:`cache_dir`), and later processes load it in
milliseconds.

Paths (``linear``, by the activation rows ``M`` a call has, after limbs):

* ``amx``: Intel AMX-INT8 tiles, per-channel / per-tensor scales, from :data:`AMX_MIN_ROWS` prepared rows;
  bfloat16 activations from :data:`AMX_BF16_MIN_ROWS` tokens take AMX-BF16 tiles instead where the CPU has them
  (``amx_bf16_cpu.cpp``: the tokens as they are, no limbs; ``STATS["linear:amx_bf16"]``);
* ``avx512``: AVX-512 VNNI (``vpdpbusd``), every granularity, any M;
* ``avx2``: ``vpmaddubsw`` / ``vpmaddwd``;
* ``scalar``: portable C++;
* ``reference``: the plain-torch kernels of :mod:`torch_ternary.ops` (also for ``fmt="fp8"``).

``$TORCH_TERNARY_CPU_ISA`` forces one of ``amx``, ``avx512``, ``avx2``, ``scalar`` (an ISA this CPU lacks is
an error) or ``reference``. ``$TORCH_TERNARY_CPU_KERNELS=require`` turns a failed build into an error (CI
sets it); ``off`` never builds. Without a compiler the ops keep the reference, after one warning.
:data:`STATS` counts the path of every call.

Accuracy (16-bit activations): each token is split into int8 "limbs" (3 for float32, 2 for bf16 / fp16, one
more for the whole call when a token's ``max|x| / rms(x)`` exceeds :data:`RANGE_LIMIT`), so the error is at
most ``max|x| / (2 * 127 * 254^(L-1))`` an element before the exact integer product: relative output errors
~1e-7 (float32) and below torch's own dense linear in bf16 / fp16. The AMX-BF16 kernel needs no limbs: bf16
times a ternary weight is exact and the sums are float32, so its only rounding is the output's.
``linear_a8`` (int8) is bit-exact with its reference.
"""

from __future__ import annotations

import hashlib
import os
import threading
import warnings
from collections import Counter
from pathlib import Path

import torch

from ...errors import UnsupportedDeviceError
from ...ops import backends
from ...ops import ternary_linear as ops
from ...ops import ternary_linear_a8 as ops_a8
from ..loader import KernelLoadError

SOURCE = Path(__file__).with_name("ternary_cpu.cpp")
#: the QAT weight kernels, compiled into the same extension (``SOURCE`` binds them)
STE_SOURCE = Path(__file__).with_name("ste_cpu.cpp")
#: the large-M bf16 linear on AMX-BF16, compiled into the same extension (``SOURCE`` binds it)
AMX_BF16_SOURCE = Path(__file__).with_name("amx_bf16_cpu.cpp")
#: what the AMX sources share (included, so part of the cache key)
AMX_HEADER = Path(__file__).with_name("amx_tiles.h")
#: flags of the build (part of the cache key)
CFLAGS = ("-O3", "-std=c++17", "-fopenmp", "-ffp-contract=off")
LDFLAGS = ("-fopenmp",)
ENV_ISA = "TORCH_TERNARY_CPU_ISA"
ENV_MODE = "TORCH_TERNARY_CPU_KERNELS"
ENV_CACHE = "TORCH_TERNARY_CACHE"
ISAS = ("amx", "avx512", "avx2", "scalar")
REFERENCE = "reference"
#: the AMX path from this many prepared activation rows (tokens x limbs); fewer go to avx512
AMX_MIN_ROWS = 16
#: bfloat16 activations with this many tokens (and per-channel / per-tensor scales) take the AMX-BF16 kernel
#: (``amx_bf16_cpu.cpp``: bf16 tiles, no limbs) on CPUs that have it; fewer keep the int8 limbs, which were
#: faster at 16 tokens (it pads tokens to 32) and level at 32 (measured on FLUX.1-dev shapes)
AMX_BF16_MIN_ROWS = 64
#: float32 tokens, from this many a call, take the plain-torch reference (dequantize in chunks, then torch's float32
#: GEMM) on CPUs whose best ISA is ``avx2`` (unless an ISA is forced): there three int8 limbs on vpmaddubsw cost more
#: than the float32 FMAs they replace (benchmarks/cpu_kernels_ab.py --isa avx2 --fp32, docs/cpu.md)
AVX2_FP32_REFERENCE_MIN_TOKENS = 512
#: the AMX-BF16 kernel takes tokens in chunks of this many, so that a thread's float32 accumulators (chunk x 256)
#: stay in L2 across the K blocks (each chunk decodes the weights again)
AMX_BF16_CHUNK_TOKENS = 1024
#: the AMX-INT8 kernel takes tokens in chunks of about this many prepared rows (tokens x limbs, rounded to whole
#: tokens and 32 rows), for the same reason (int32 accumulators: chunk x 256 weight rows, 512 KB at 512)
AMX_CHUNK_ROWS = 512
#: limbs a token, by activation dtype (16-bit mode)
LIMBS = {torch.float32: 3, torch.bfloat16: 2, torch.float16: 2}
#: a call gets one more limb a token when a token's max |x| / rms(x) exceeds this (16-bit mode): the limbs'
#: error grows with that spread, and must stay below 1e-5 (float32) and below torch's own dense bf16 / fp16 linear
RANGE_LIMIT = {torch.float32: 100.0, torch.bfloat16: 64.0, torch.float16: 8.0}
#: most weights the backward's decoded tiles hold at once (as the reference's CHUNK_ELEMENTS)
TILE_ELEMENTS = ops.CHUNK_ELEMENTS

#: calls per path, e.g. ``STATS["linear:avx512"]``
STATS: Counter = Counter()

_lock = threading.Lock()
_module = None
_failure: str | None = None
_installed = False


def cache_dir() -> Path:
    """Where builds are kept: ``$TORCH_TERNARY_CACHE/cpu_kernels``, else ``~/.cache/torch_ternary/cpu_kernels``."""
    root = os.environ.get(ENV_CACHE) or os.path.join(os.path.expanduser("~"), ".cache", "torch_ternary")
    return Path(root) / "cpu_kernels"


def build_key() -> str:
    """The cache key: a hash of the sources' text, the torch version and the flags."""
    text = b"".join(path.read_bytes() for path in _sources() + [AMX_HEADER])
    text += torch.__version__.encode() + " ".join(CFLAGS + LDFLAGS).encode()
    return hashlib.sha256(text).hexdigest()[:16]


def _sources() -> list[Path]:
    return [SOURCE, STE_SOURCE, AMX_BF16_SOURCE]


def _staged_sources(folder: Path) -> list[str]:
    """The sources (and the header they include) copied into ``folder/src``, where the build reads them: the build
    files then name the same paths whichever checkout or install of the same sources built them, so two of them
    sharing one cache load each other's build instead of rebuilding it (ninja rebuilds when a source's path
    changes). Each file is written to a temporary name and renamed, and only when its text differs."""
    src = folder / "src"
    src.mkdir(parents=True, exist_ok=True)
    for path in _sources() + [AMX_HEADER]:
        data, target = path.read_bytes(), src / path.name
        if not target.exists() or target.read_bytes() != data:
            tmp = src / f".{path.name}.{os.getpid()}.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, target)
    return [str(src / p.name) for p in _sources()]


def _mode() -> str:
    mode = os.environ.get(ENV_MODE, "auto").strip().lower() or "auto"
    if mode not in ("auto", "require", "off"):
        raise ValueError(f"${ENV_MODE} must be auto, require or off, got {mode!r}")
    return mode


def load():
    """The compiled extension (built on first use, then cached), or None when it cannot be had.

    Raises:
        KernelLoadError: the build failed and ``$TORCH_TERNARY_CPU_KERNELS=require``.
    """
    global _module, _failure
    if _module is not None:
        return _module
    mode = _mode()
    if mode == "off":
        return None
    with _lock:
        tried_now = False
        if _module is None and _failure is None:
            tried_now = True
            try:
                from torch.utils.cpp_extension import load as cpp_load

                key = build_key()
                folder = cache_dir() / key
                folder.mkdir(parents=True, exist_ok=True)
                _module = cpp_load(name=f"torch_ternary_cpu_{key}", sources=_staged_sources(folder), extra_cflags=list(CFLAGS),
                                   extra_ldflags=list(LDFLAGS), build_directory=str(folder), verbose=False)
            except Exception as exc:  # no compiler, no ninja, a compile error: the reference keeps working
                _failure = f"{type(exc).__name__}: {' '.join(str(exc).split())[:400]}"
        if _module is None:
            if mode == "require":
                raise KernelLoadError(f"torch-ternary CPU kernels could not be built ({_failure}); "
                                      f"${ENV_MODE}=require makes that an error")
            if tried_now:  # one warning a process
                warnings.warn(f"torch-ternary: CPU kernels unavailable, using the plain-torch reference ({_failure})",
                              RuntimeWarning, stacklevel=3)
            _failure = _failure or "unavailable"
    return _module


def failure() -> str | None:
    """Why the build failed in this process (None if it did not, or was not tried)."""
    return _failure


_isas: dict[object, tuple[str, ...]] = {}
_amx_bf16: dict[object, bool] = {}


def available_isas() -> tuple[str, ...]:
    """The ISAs this CPU runs, best first (builds the extension); empty without it."""
    mod = load()
    if mod is None:
        return ()
    if mod not in _isas:  # (asked once per loaded build: every call dispatches on it)
        _isas[mod] = tuple(mod.cpu_isas())
    return _isas[mod]


def forced_isa() -> str | None:
    """``$TORCH_TERNARY_CPU_ISA``, checked (``reference`` included), or None."""
    isa = os.environ.get(ENV_ISA, "").strip().lower()
    if not isa:
        return None
    if isa not in ISAS + (REFERENCE,):
        raise ValueError(f"${ENV_ISA} must be one of {ISAS + (REFERENCE,)}, got {isa!r}")
    return isa


def choose(rows: int, grouped: bool) -> str:
    """The path of a call with ``rows`` prepared activation rows: an ISA of :data:`ISAS` or ``reference``."""
    forced = forced_isa()
    if forced == REFERENCE:
        return REFERENCE
    isas = available_isas()
    if not isas:
        return REFERENCE
    if forced is not None:
        if forced not in isas:
            raise UnsupportedDeviceError(f"${ENV_ISA}={forced}, but this CPU runs only {isas}")
        isa = forced
    else:
        isa = isas[0]
    if isa == "amx" and (grouped or rows < AMX_MIN_ROWS):
        isa = "avx512"
    return isa


def amx_bf16_available() -> bool:
    """Whether the built kernels run AMX-BF16 here (the ``amx`` ISA's bf16 kernel; False without a build)."""
    mod = load()
    if mod is None:
        return False
    if mod not in _amx_bf16:
        _amx_bf16[mod] = bool(mod.amx_bf16_available())
    return _amx_bf16[mod]


def _words_in_one_group(scale: torch.Tensor, group_size: int) -> bool:
    """Whether every 16-weight word of the packed rows lies in one scale group (what the kernels assume): true
    for one group a row and for group sizes that are multiples of 16 (all that ``TernaryConfig`` makes)."""
    return scale.shape[1] == 1 or group_size % 16 == 0


def _rows2d(x: torch.Tensor, k: int) -> torch.Tensor:
    """``x`` as ``[M, K]`` rows with a unit last stride (a copy only when the layout needs one)."""
    x2 = x if x.dim() == 2 else x.reshape(-1, k)
    if x2.stride(-1) != 1 or (x2.shape[0] > 1 and x2.stride(0) < k):
        x2 = x2.contiguous()
    return x2


def _c(t: torch.Tensor | None) -> torch.Tensor | None:
    return t if t is None or t.is_contiguous() else t.contiguous()


def linear_cpu(x, packed, scale, bias, in_features, group_size):
    """CPU implementation of ``torch_ternary::linear`` (arguments as the op: ``x`` float ``[..., K]``, ``packed``
    uint8 ``[N, Kp/4]``, ``scale`` float32 ``[S_n, S_k]``, ``bias`` ``x.dtype`` ``[N]`` or None)."""
    ops._check_linear_args(x, packed, scale, bias, in_features, group_size)
    x2 = _rows2d(x, in_features)
    path = _linear_path(x2.shape[0], x.dtype, scale, group_size)
    STATS["linear:" + path] += 1
    if path == REFERENCE:
        return backends.reference("linear")(x, packed, scale, bias, in_features, group_size)
    if path == "amx_bf16":
        y = _module.ternary_linear_bf16_amx(x2, _c(packed), _c(scale), _c(bias), in_features, AMX_BF16_CHUNK_TOKENS)
    else:
        y = _module.ternary_linear(x2, _c(packed), _c(scale), _c(bias), in_features, group_size, path, LIMBS[x.dtype],
                                   False, RANGE_LIMIT[x.dtype], AMX_CHUNK_ROWS)
    return y if x.dim() == 2 else y.reshape(*x.shape[:-1], packed.shape[0])


def _linear_path(tokens: int, dtype: torch.dtype, scale: torch.Tensor, group_size: int) -> str:
    """The kernel of a 16-bit ``linear`` call: :func:`choose` on its prepared rows (tokens x limbs), with bfloat16
    tokens on the AMX ISA moving to the AMX-BF16 kernel from :data:`AMX_BF16_MIN_ROWS` tokens, and float32 tokens
    on an AVX2-only CPU to the reference from :data:`AVX2_FP32_REFERENCE_MIN_TOKENS` tokens."""
    if not _words_in_one_group(scale, group_size):
        return REFERENCE
    path = choose(tokens * LIMBS[dtype], scale.shape[1] > 1)
    if path == "avx2" and dtype == torch.float32 and tokens >= AVX2_FP32_REFERENCE_MIN_TOKENS and forced_isa() is None:
        return REFERENCE
    if path == "amx" and dtype == torch.bfloat16 and tokens >= AMX_BF16_MIN_ROWS and amx_bf16_available():
        return "amx_bf16"
    return path


def linear_a8_cpu(x, packed, scale, bias, in_features, group_size, fmt):
    """CPU implementation of ``torch_ternary::linear_a8``: int8 bit-exact with the reference; fp8 is the reference."""
    ops_a8.check_a8_args(x, packed, scale, bias, in_features, group_size, fmt)
    path = choose(x.numel() // max(in_features, 1), False) if fmt == "int8" else REFERENCE
    STATS[f"linear_a8:{path}"] += 1
    if path == REFERENCE:
        return backends.reference("linear_a8")(x, packed, scale, bias, in_features, group_size, fmt)
    x2 = _rows2d(x, in_features)
    y = _module.ternary_linear(x2, packed.contiguous(), scale.contiguous(), None if bias is None else bias.contiguous(),
                               in_features, group_size, path, 1, True, 0.0, AMX_CHUNK_ROWS)
    return y.reshape(*x.shape[:-1], packed.shape[0])


def _decode(packed, scale, in_features, group_size, dtype, n0, n1, path, codes_only=False):
    return _module.ternary_dequantize(packed, scale, in_features, group_size, dtype, n0, n1, path, codes_only)


def dequantize_cpu(packed, scale, in_features, group_size, dtype):
    """CPU implementation of ``torch_ternary::dequantize`` (bit-identical with the reference): float32 / bf16 / fp16
    ``[N, K]`` decoded in C++; other dtypes the op accepts (float64) by the reference."""
    ops._check_weight_args(packed, scale, in_features, group_size)
    modelled = _words_in_one_group(scale, group_size) and dtype in LIMBS  # (float64 and others: the reference)
    path = choose(0, True) if modelled else REFERENCE
    STATS[f"dequantize:{path}"] += 1
    if path == REFERENCE:
        return backends.reference("dequantize")(packed, scale, in_features, group_size, dtype)
    return _decode(packed.contiguous(), scale.contiguous(), in_features, group_size, dtype, 0, packed.shape[0], path)


def unpack_cpu(packed, in_features):
    """CPU implementation of ``torch_ternary::unpack``: int8 ``[N, K]`` codes."""
    from ...format import packing

    packing.check_packed(packed, in_features)
    path = choose(0, True)
    STATS[f"unpack:{path}"] += 1
    if path == REFERENCE:
        return backends.reference("unpack")(packed, in_features)
    ones = torch.ones(1, 1, dtype=torch.float32)
    return _decode(packed.contiguous(), ones, in_features, in_features, torch.float32, 0, packed.shape[0], path, True)


def linear_grad_input_cpu(grad_out, packed, scale, in_features, group_size):
    """CPU implementation of ``torch_ternary::linear_grad_input``: ``grad_out @ (s * q)`` over decoded row tiles.

    Args:
        grad_out: float ``[..., N]``. packed: uint8 ``[N, Kp/4]``. scale: float32 ``[S_n, S_k]``.

    Returns:
        ``grad_out.dtype`` ``[..., K]`` (tiles accumulated in float32, as the reference).
    """
    ops._check_weight_args(packed, scale, in_features, group_size)
    ops._check_activation(grad_out, packed.shape[0], "grad_out")
    path = choose(0, True) if _words_in_one_group(scale, group_size) else REFERENCE
    STATS[f"linear_grad_input:{path}"] += 1
    if path == REFERENCE:
        return backends.reference("linear_grad_input")(grad_out, packed, scale, in_features, group_size)
    n = packed.shape[0]
    g2 = grad_out.reshape(-1, n)
    packed, scale = packed.contiguous(), scale.contiguous()
    step = max(1, TILE_ELEMENTS // max(in_features, 1))
    if step >= n:
        out = g2 @ _decode(packed, scale, in_features, group_size, grad_out.dtype, 0, n, path)
    else:
        acc = torch.zeros((g2.shape[0], in_features), dtype=torch.float32)
        for n0 in range(0, n, step):
            n1 = min(n, n0 + step)
            acc += (g2[:, n0:n1] @ _decode(packed, scale, in_features, group_size, grad_out.dtype, n0, n1, path)).float()
        out = acc.to(grad_out.dtype)
    return out.reshape(*grad_out.shape[:-1], in_features)


def linear_grad_scale_cpu(grad_out, x, packed, scale, in_features, group_size):
    """CPU implementation of ``torch_ternary::linear_grad_scale``.

    Per channel / per tensor: ``dL/ds[n] = sum_m g[m, n] * z[m, n]`` with ``z = x @ q^T`` (the forward
    product with unit scales, float32 limbs); per group: the reference's ``g^T x`` reduced with the codes.

    Returns:
        float32, shaped like ``scale``.
    """
    ops._check_weight_args(packed, scale, in_features, group_size)
    path = choose(0, scale.shape[1] > 1)
    STATS[f"linear_grad_scale:{path}"] += 1
    if path == REFERENCE or scale.shape[1] > 1:
        return backends.reference("linear_grad_scale")(grad_out, x, packed, scale, in_features, group_size)
    n = packed.shape[0]
    x2 = _rows2d(x.float(), in_features)
    rows_path = choose(x2.shape[0] * LIMBS[torch.float32], False)
    z = _module.ternary_linear(x2, packed.contiguous(), torch.ones(n, 1), None, in_features, in_features, rows_path,
                               LIMBS[torch.float32], False, RANGE_LIMIT[torch.float32], AMX_CHUNK_ROWS)
    ds = (grad_out.reshape(-1, n).float() * z).sum(dim=0)
    return ds.sum().reshape(1, 1) if scale.shape[0] == 1 else ds.reshape(n, 1)


def _ste_path(latent: torch.Tensor) -> str:
    return choose(0, True) if latent.dtype == torch.float32 else REFERENCE


def ste_weight_cpu(latent, scale, group_size):
    """CPU implementation of ``torch_ternary::ste_weight`` (:mod:`torch_ternary.ops.ste_weight`; ``latent`` float
    ``[N, K]``, ``scale`` ``[S_n, S_k]``): float32 in C++, bit-identical with the reference; other dtypes by it."""
    from ...ops import ste_weight as ste

    ste.check_ste_args(latent, scale, group_size)
    path = _ste_path(latent)
    STATS[f"ste_weight:{path}"] += 1
    if path == REFERENCE:
        return backends.reference("ste_weight")(latent, scale, group_size)
    return _module.ste_forward(latent.contiguous(), scale.contiguous(), group_size, path in ("amx", "avx512"))


def ste_weight_backward_cpu(grad, latent, scale, group_size):
    """CPU implementation of ``torch_ternary::ste_weight_backward``: ``(dL/dW [N, K], dL/ds [S_n, S_k])`` from
    ``grad`` ``[N, K]``; float32 in C++ (``dL/dW`` bit-identical, ``dL/ds`` summed in float64)."""
    from ...ops import ste_weight as ste

    ste.check_ste_args(latent, scale, group_size)
    path = _ste_path(latent) if grad.shape == latent.shape else REFERENCE  # (the reference raises the shape error)
    STATS[f"ste_weight_backward:{path}"] += 1
    if path == REFERENCE:
        return backends.reference("ste_weight_backward")(grad, latent, scale, group_size)
    grad_latent, grad_scale = _module.ste_backward(grad.to(torch.float32).contiguous(), latent.contiguous(),
                                                   scale.contiguous(), group_size, path in ("amx", "avx512"))
    return grad_latent, grad_scale


_IMPLS = {"linear": linear_cpu, "linear_a8": linear_a8_cpu, "dequantize": dequantize_cpu, "unpack": unpack_cpu,
          "linear_grad_input": linear_grad_input_cpu, "linear_grad_scale": linear_grad_scale_cpu,
          "ste_weight": ste_weight_cpu, "ste_weight_backward": ste_weight_backward_cpu}
assert tuple(_IMPLS) == backends.CPU_KERNEL_OPS


def install() -> bool:
    """Make the compiled kernels the CPU implementation of the ops (idempotent; builds nothing now).

    Returns:
        False when ``$TORCH_TERNARY_CPU_KERNELS=off`` (the reference stays), else True.
    """
    global _installed
    if _mode() == "off":
        return False
    if not _installed:
        for name, fn in _IMPLS.items():
            backends.set_impl(name, "cpu", fn)
        _installed = True
    return True


def uninstall() -> None:
    """Give the ops their plain-torch CPU implementation back."""
    global _installed
    for name in _IMPLS:
        backends.set_impl(name, "cpu", None)
    _installed = False
