"""W1.58A8 on the GPU: per-token 8-bit activations x ternary weights on int8 / fp8 tensor cores.

One ``torch_ternary::linear_a8`` call on CUDA (:func:`a8_linear`):

1. ``cuda/act_quant.cu``: one kernel pass over ``x`` ``[M, K]`` writes the per-token codes
   ``q`` ``[M, Kp]`` (int8 or e4m3, zero past ``K``) and scales ``s_x`` ``[M]``;
2. ``cuda/a8_weights.cu``: the packed weight expands into an int8 / e4m3 workspace ``[Np, Kp]``
   (``Kp = ceil(K/16)*16`` from the packed layout, ``Np = ceil(N/16)*16``, zero padding), taken
   from torch's caching allocator, so consecutive layers recycle the same memory and it is freed
   (not counted by ``max_memory_allocated``) as soon as the GEMM is done;
3. the GEMM on tensor cores, with the scales in the epilogue:

   * int8: ``torch._int_mm(q, w.T)`` -> int32 ``[rows, Np]`` (cuBLASLt IMMA), in row chunks whose
     int32 accumulator stays below :data:`INT_MM_CHUNK_BYTES`, each followed by the fused epilogue
     kernel ``cuda/a8_epilogue.cu`` (``y = ((acc * s_x) * s_w + b)`` rounded once to ``x.dtype``;
     bit-identical to the reference). ``_int_mm`` needs more than 16 rows: fewer are zero-padded.
   * fp8, bf16 activations: ``torch._scaled_mm(q, w.T, scale_a=s_x[M, 1], scale_b=s_w[1, Np],
     bias=b, out_dtype=bf16)``: row-wise scales and bias in cuBLASLt / CUTLASS's own epilogue, no
     extra pass. Where row-wise scaling is not supported (it raises), and for fp16 / fp32
     activations: unit tensor-wise scales, float32 out, then the same epilogue kernel.

fp8 needs compute capability 8.9+ (Ada, Hopper); int8 runs from 8.0. Every function documents
its tensors; they raise :class:`~torch_ternary.errors.UnsupportedDeviceError` off a CUDA sm_80+
device and :class:`~torch_ternary.errors.UnsupportedOperationError` for what they do not take.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

from ..errors import UnsupportedOperationError
from ..ops.ternary_linear_a8 import A8_FORMATS, fp8_dtype, per_group_refusal
from . import loader
from .common import capability, check_cuda, device_index, weight_args

#: The CUDA sources of the A8 path (compiled by tests/kernels/test_compile.py like the others).
SOURCE_FILES = ("act_quant.cu", "a8_weights.cu", "a8_epilogue.cu")
#: Threads a block of cuda/act_quant.cu (its kActThreads; the kernel's reduction assumes it).
ACT_THREADS = 256
EPILOGUE_THREADS = 256
#: Largest int32 (or fp32) accumulator the GEMM writes at once; bigger M is done in row chunks.
INT_MM_CHUNK_BYTES = 64 << 20
#: ``torch._int_mm`` wants more than this many rows.
INT_MM_MIN_ROWS = 17
#: fp8 tensor cores (and the e4m3 conversion instruction): Ada / Hopper and newer.
FP8_MIN_CAPABILITY = (8, 9)
#: ``use_fast_accum`` of ``torch._scaled_mm`` (torchao's inference default); ``TORCH_TERNARY_FP8_FAST_ACCUM=0``
#: turns it off (slower, fp32-promoted accumulation on Hopper).
ENV_FAST_ACCUM = "TORCH_TERNARY_FP8_FAST_ACCUM"
_MAX_GRID_Y = 65535
_MAX_GRID_X = 1 << 20
_TAG = {torch.bfloat16: "bf16", torch.float16: "f16", torch.float32: "f32"}
_CODE = {"int8": "i8", "fp8": "e4m3"}
#: Per device: whether ``_scaled_mm`` took row-wise scales (None: not tried yet).
_rowwise_ok: dict[int, Optional[bool]] = {}
_unit_scales: dict[torch.device, torch.Tensor] = {}


def round_up(v: int, multiple: int) -> int:
    return -(-v // multiple) * multiple


def _code_dtype(fmt: str) -> torch.dtype:
    return torch.int8 if fmt == "int8" else fp8_dtype()


def _check_fmt(fmt: str, device: torch.device) -> None:
    if fmt not in A8_FORMATS:
        raise ValueError(f"fmt must be one of {A8_FORMATS}, got {fmt!r}")
    if fmt == "fp8" and capability(device_index_of(device)) < FP8_MIN_CAPABILITY:
        raise UnsupportedOperationError(
            f"fp8 activations need compute capability >= {FP8_MIN_CAPABILITY}, this GPU has "
            f"{capability(device_index_of(device))}"
        )


def device_index_of(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def quantize_activations_cuda(x2: torch.Tensor, fmt: str,
                              k_cols: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token absmax quantization in one kernel (``cuda/act_quant.cu``), bit-identical to
    :func:`torch_ternary.ops.ternary_linear_a8.quantize_activations` (plus the zero pad).

    Args:
        x2: bfloat16 / float16 / float32 ``[M, K]`` on a CUDA device (copied to contiguous rows
            when its last dimension is strided).
        fmt: ``"int8"`` or ``"fp8"``.
        k_cols: columns of the output, a multiple of 16 and ``>= K`` (default ``round_up(K, 16)``);
            columns ``K ..`` are zero.

    Returns:
        ``(q, s)``: ``q`` int8 / float8_e4m3fn ``[M, k_cols]`` contiguous, ``s`` float32 ``[M]``.
    """
    check_cuda(x2)
    _check_fmt(fmt, x2.device)
    if x2.dtype not in _TAG:
        raise UnsupportedOperationError(f"activation quantization takes {tuple(_TAG)}, not {x2.dtype}")
    if x2.dim() != 2:
        raise ValueError(f"x2 must be [M, K], got {tuple(x2.shape)}")
    m, k = x2.shape
    kq = round_up(k, 16) if k_cols is None else int(k_cols)
    if kq < k or kq % 16:
        raise ValueError(f"k_cols must be a multiple of 16 and >= K={k}, got {kq}")
    if x2.stride(-1) != 1 and m > 0:
        x2 = x2.contiguous()
    q = torch.empty((m, kq), dtype=_code_dtype(fmt), device=x2.device)
    s = torch.empty((m,), dtype=torch.float32, device=x2.device)
    if m == 0:
        return q, s
    v = 16 // x2.element_size()
    ldx = x2.stride(0) if m > 1 else k
    vec = int(x2.data_ptr() % 16 == 0 and ldx % v == 0 and k % v == 0)
    kernel = loader.get_kernel("act_quant.cu", f"tt_act_quant_{_TAG[x2.dtype]}_{_CODE[fmt]}", x2.device)
    loader.launch(
        kernel, (min(m, _MAX_GRID_X), 1, 1), (ACT_THREADS, 1, 1),
        (loader.ptr(q), loader.ptr(s), loader.ptr(x2), loader.i32(m), loader.i32(k), _i64(ldx), loader.i32(kq),
         loader.i32(vec)),
        x2.device,
    )
    return q, s


def a8_weight_workspace(packed: torch.Tensor, fmt: str, n_pad: Optional[int] = None) -> torch.Tensor:
    """The ternary codes as the 8-bit GEMM operand (``cuda/a8_weights.cu``), scales not applied.

    Args:
        packed: uint8 ``[N, Kp / 4]`` on a CUDA device (made contiguous if it is not).
        fmt: ``"int8"`` (values -1, 0, 1) or ``"fp8"`` (e4m3fn -1.0, 0.0, 1.0).
        n_pad: rows of the result, ``>= N`` (default ``N``); rows ``N ..`` are zero.

    Returns:
        int8 / float8_e4m3fn ``[n_pad, Kp]``, contiguous; pad columns (``k >= K``) are zero.
    """
    check_cuda(packed)
    _check_fmt(fmt, packed.device)
    packed = packed.contiguous()
    n = packed.shape[0]
    kblocks = packed.shape[1] // 4
    n_pad = n if n_pad is None else int(n_pad)
    if n_pad < n:
        raise ValueError(f"n_pad must be >= N={n}, got {n_pad}")
    out = torch.empty((n_pad, 16 * kblocks), dtype=_code_dtype(fmt), device=packed.device)
    if out.numel() == 0:
        return out
    threads = min(256, round_up(kblocks, 32))
    kernel = loader.get_kernel("a8_weights.cu", f"tt_a8_weight_{_CODE[fmt]}", packed.device)
    loader.launch(
        kernel, (-(-kblocks // threads), min(n_pad, _MAX_GRID_Y), 1), (threads, 1, 1),
        (loader.ptr(out), loader.ptr(packed), loader.i32(n), loader.i32(n_pad), loader.i32(kblocks)),
        packed.device,
    )
    return out


def a8_epilogue(acc: torch.Tensor, sx: torch.Tensor, sw: torch.Tensor, bias: Optional[torch.Tensor], n: int,
                out: torch.Tensor) -> torch.Tensor:
    """``out = ((acc * sx[:, None]) * sw + bias)`` rounded once to ``out.dtype`` (``cuda/a8_epilogue.cu``).

    Args:
        acc: int32 or float32 ``[M, ldacc]`` (``ldacc >= n``), rows contiguous.
        sx: float32 ``[M]``. sw: float32 ``[n]`` or ``[1]`` (per tensor).
        bias: ``out.dtype`` ``[n]`` or None.
        n: output columns.
        out: bfloat16 / float16 / float32 ``[M, n]``, contiguous (written in place).

    Returns:
        ``out``.
    """
    check_cuda(acc, sx, sw, bias, out)
    if acc.dtype not in (torch.int32, torch.float32) or out.dtype not in _TAG:
        raise UnsupportedOperationError(f"epilogue takes int32 / float32 accumulators into {tuple(_TAG)}, "
                                        f"got {acc.dtype} -> {out.dtype}")
    m = acc.shape[0]
    if (acc.dim() != 2 or acc.stride(1) != 1 or acc.shape[1] < n or out.shape != (m, n) or not out.is_contiguous()
            or sx.shape != (m,) or sw.numel() not in (1, n)):
        raise ValueError(f"bad epilogue shapes: acc {tuple(acc.shape)}, out {tuple(out.shape)}, sx {tuple(sx.shape)}, "
                         f"sw {tuple(sw.shape)}, n={n}")
    if m == 0 or n == 0:
        return out
    sx, sw = sx.contiguous(), sw.contiguous()
    if bias is not None:
        bias = bias.contiguous()
    ldacc = acc.stride(0) if m > 1 else acc.shape[1]
    vec = int(n % 4 == 0 and ldacc % 4 == 0 and acc.data_ptr() % 16 == 0
              and out.data_ptr() % (4 * out.element_size()) == 0)
    acc_tag = "i32" if acc.dtype == torch.int32 else "f32"
    kernel = loader.get_kernel("a8_epilogue.cu", f"tt_a8_epilogue_{acc_tag}_{_TAG[out.dtype]}", acc.device)
    quads = -(-n // 4)
    loader.launch(
        kernel, (-(-quads // EPILOGUE_THREADS), min(m, _MAX_GRID_Y), 1), (EPILOGUE_THREADS, 1, 1),
        (loader.ptr(out), loader.ptr(acc), loader.ptr(sx), loader.ptr(sw), loader.ptr(bias), loader.i32(m),
         loader.i32(n), _i64(ldacc), loader.i32(1 if sw.numel() == n and n > 1 else 0), loader.i32(vec)),
        acc.device,
    )
    return out


def row_chunks(m: int, rows: int, min_rows: int = INT_MM_MIN_ROWS) -> list[tuple[int, int]]:
    """Split ``range(m)`` into ``[m0, m1)`` chunks of about ``rows`` rows, none shorter than ``min_rows``
    (a short tail joins the previous chunk; ``m < min_rows`` gives one chunk)."""
    rows = max(rows, min_rows)
    out, m0 = [], 0
    while m0 < m:
        m1 = min(m, m0 + rows)
        if 0 < m - m1 < min_rows:
            m1 = m
        out.append((m0, m1))
        m0 = m1
    return out


def _i64(v: int):
    import numpy as np

    return np.int64(v)


def fast_accum() -> bool:
    return os.environ.get(ENV_FAST_ACCUM, "1").strip() not in ("0", "false", "False", "")


def _unit_scale(device: torch.device) -> torch.Tensor:
    t = _unit_scales.get(device)
    if t is None:
        t = _unit_scales[device] = torch.ones((), dtype=torch.float32, device=device)
    return t


def _gemm_chunked(xq: torch.Tensor, w: torch.Tensor, sx: torch.Tensor, sw: torch.Tensor, bias: Optional[torch.Tensor],
                  n: int, y: torch.Tensor, fmt: str) -> None:
    """``y = epilogue(xq @ w.T)`` in row chunks: int8 via ``_int_mm`` (int32), fp8 via ``_scaled_mm`` (unit
    scales, float32 out). ``xq`` has at least :data:`INT_MM_MIN_ROWS` rows (the caller pads)."""
    m = y.shape[0]
    np_ = w.shape[0]
    rows = max(INT_MM_MIN_ROWS, INT_MM_CHUNK_BYTES // (4 * np_))
    chunks = row_chunks(xq.shape[0], rows)
    acc = None
    if fmt == "int8":  # one int32 buffer for every chunk
        acc = torch.empty((max(b - a for a, b in chunks), np_), dtype=torch.int32, device=xq.device)
    for m0, m1 in chunks:
        if m0 >= m:
            break
        if acc is not None:
            a = acc[: m1 - m0]
            torch._int_mm(xq[m0:m1], w.t(), out=a)
        else:
            one = _unit_scale(xq.device)
            a = torch._scaled_mm(xq[m0:m1], w.t(), scale_a=one, scale_b=one, out_dtype=torch.float32,
                                 use_fast_accum=fast_accum())
        r1 = min(m1, m)
        a8_epilogue(a[: r1 - m0], sx[m0:r1], sw, bias, n, y[m0:r1])


def _scaled_mm_rowwise(xq: torch.Tensor, w: torch.Tensor, sx: torch.Tensor, sw: torch.Tensor,
                       bias: Optional[torch.Tensor], n: int) -> Optional[torch.Tensor]:
    """bf16 ``[M, n]`` from ``_scaled_mm`` with row-wise scales and the bias in its epilogue, or None
    where this torch / GPU does not take row-wise scaling (remembered per device)."""
    dev = device_index(xq)
    if _rowwise_ok.get(dev) is False:
        return None
    np_ = w.shape[0]
    if np_ == n and sw.numel() == n:
        scale_b = sw.reshape(1, n)
    else:  # per-tensor scale broadcast, and / or zero scales for the pad rows
        scale_b = torch.zeros((1, np_), dtype=torch.float32, device=xq.device)
        scale_b[0, :n] = sw.reshape(-1)
    b = None
    if bias is not None:
        b = bias if np_ == n else torch.nn.functional.pad(bias, (0, np_ - n))
    try:
        y = torch._scaled_mm(xq, w.t(), scale_a=sx.reshape(-1, 1), scale_b=scale_b, bias=b, out_dtype=torch.bfloat16,
                             use_fast_accum=fast_accum())
    except RuntimeError:
        if _rowwise_ok.get(dev):
            raise
        _rowwise_ok[dev] = False
        return None
    _rowwise_ok[dev] = True
    return y if np_ == n else y[:, :n].contiguous()


def a8_linear(x2: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, bias: Optional[torch.Tensor],
              in_features: int, group_size: int, fmt: str) -> torch.Tensor:
    """``torch_ternary::linear_a8`` on the GPU (module docstring).

    Args:
        x2: bfloat16 / float16 / float32 ``[M, K]`` on a CUDA device of compute capability 8.0+ (8.9+ for fp8).
        packed: uint8 ``[N, Kp / 4]``. scale: float32 ``[S_n, 1]``. bias: ``x2.dtype`` ``[N]`` or None.
        in_features: ``K``. group_size: ``G`` (must give ``S_k == 1``).
        fmt: ``"int8"`` or ``"fp8"``.

    Returns:
        ``x2.dtype`` ``[M, N]``, contiguous. int8: bit-identical to the reference; fp8: the same
        quantized operands, float32 (tensor-core) accumulation in another order.
    """
    check_cuda(x2, packed, scale, bias)
    _check_fmt(fmt, x2.device)
    if x2.dtype not in _TAG:
        raise UnsupportedOperationError(f"linear_a8 takes {tuple(_TAG)} activations, not {x2.dtype}")
    if scale.shape[1] != 1:
        raise UnsupportedOperationError(per_group_refusal(f"{scale.shape[1]} groups"))
    packed = packed.contiguous()
    wa = weight_args(packed, scale.contiguous(), in_features, group_size)
    m, n = x2.shape[0], wa.n
    kp = 16 * wa.kblocks
    np_ = round_up(n, 16)
    y = torch.empty((m, n), dtype=x2.dtype, device=x2.device)
    if m == 0 or n == 0:
        return y
    xq, sx = quantize_activations_cuda(x2, fmt, kp)
    w = a8_weight_workspace(packed, fmt, np_)
    sw = scale.reshape(-1).contiguous()
    if fmt == "fp8" and x2.dtype == torch.bfloat16:
        out = _scaled_mm_rowwise(xq, w, sx, sw, bias, n)
        if out is not None:
            return out
    if xq.shape[0] < INT_MM_MIN_ROWS:  # cuBLAS int8 wants > 16 rows: pad with zero rows (results dropped)
        pad = torch.zeros((INT_MM_MIN_ROWS, kp), dtype=torch.uint8, device=xq.device)
        pad[:m] = xq.view(torch.uint8)  # byte copies: no fill / copy kernel needed for fp8 dtypes
        xq = pad.view(xq.dtype)
    _gemm_chunked(xq, w, sx, sw, bias, n, y, fmt)
    return y
