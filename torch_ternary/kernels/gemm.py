"""Large-M ternary linears: decode into a workspace + cuBLAS, or the fused mma kernel (``cuda/gemm.cu``)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..errors import UnsupportedOperationError
from . import loader
from .common import check_half_linear, weight_args
from .decode import dequantize_cuda
from .gemv import prepare_activations

_SOURCE = "gemm.cu"
_ENTRY = {torch.bfloat16: "tt_gemm_bf16", torch.float16: "tt_gemm_f16"}
#: Tile and shared memory of cuda/gemm.cu (kGemmBM, kGemmBN, kGemmSmemBytes; a static_assert there
#: keeps the byte count in sync).
GEMM_BM = 128
GEMM_BN = 128
GEMM_THREADS = 256
GEMM_SMEM_BYTES = 55296
_MAX_GRID_Y = 65535


def decode_cublas_linear(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, bias: Optional[torch.Tensor],
                         in_features: int, group_size: int) -> torch.Tensor:
    """``y = x @ (s * q).T + bias``: decode ``s * q`` into a ``[N, K]`` workspace, then ``F.linear`` (cuBLAS).

    The workspace comes from torch's caching allocator on the current stream, so consecutive
    layers reuse the same memory; the peak extra memory is one dense ``x.dtype`` weight.

    Args:
        x: bfloat16 / float16 ``[M, K]`` on a CUDA device of compute capability 8.0+.
        packed: uint8 ``[N, Kp / 4]``. scale: float32 ``[S_n, S_k]``. bias: ``x.dtype`` ``[N]`` or None.
        in_features: ``K``. group_size: ``G``.

    Returns:
        ``x.dtype`` ``[M, N]``, the reference's arithmetic exactly (same weights, same matmul).
    """
    check_half_linear("decode + cuBLAS path", x, packed, scale, bias)
    w = dequantize_cuda(packed, scale, in_features, group_size, x.dtype)
    return F.linear(x, w, bias)


def fused_linear(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, bias: Optional[torch.Tensor],
                 in_features: int, group_size: int) -> torch.Tensor:
    """``y = x @ (s * q).T + bias`` with the fused decode + mma.sync kernel (UNMEASURED, see docs/kernels.md).

    Args:
        x: bfloat16 / float16 ``[M, K]`` on a CUDA device of compute capability 8.0+, any strides
            (copied to a contiguous, 16-byte aligned tensor when needed, zero-padded to ``Kp``
            columns when ``K % 8 != 0``).
        packed: uint8 ``[N, Kp / 4]``. scale: float32 ``[S_n, S_k]``. bias: ``x.dtype`` ``[N]`` or None.
        in_features: ``K``. group_size: ``G`` (a multiple of 16 when ``S_k > 1``).

    Returns:
        ``x.dtype`` ``[M, N]``, contiguous (fp32 accumulation).

    Raises:
        UnsupportedDeviceError: a tensor not on one CUDA device of compute capability 8.0+.
        UnsupportedOperationError: ``x.dtype`` not bfloat16 / float16, or an unsupported group size.
    """
    check_half_linear("fused GEMM", x, packed, scale, bias, in_features)
    packed = packed.contiguous()
    scale = scale.contiguous()
    wa = weight_args(packed, scale, in_features, group_size)
    m, n = x.shape[0], wa.n
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return y
    if bias is not None:
        bias = bias.contiguous()
    k_cols = in_features if in_features % 8 == 0 else 16 * wa.kblocks
    xp = prepare_activations(x, in_features, k_cols)
    grid = (-(-n // GEMM_BN), -(-m // GEMM_BM), 1)
    if grid[1] > _MAX_GRID_Y:
        raise UnsupportedOperationError(f"fused GEMM takes at most {_MAX_GRID_Y * GEMM_BM} rows, got {m}")
    kernel = loader.get_kernel(_SOURCE, _ENTRY[x.dtype], x.device, max_dynamic_smem=GEMM_SMEM_BYTES)
    loader.launch(
        kernel, grid, (GEMM_THREADS, 1, 1),
        (loader.ptr(y), loader.ptr(xp), loader.ptr(packed), loader.ptr(scale), loader.ptr(bias), loader.i32(m),
         loader.i32(n), loader.i32(k_cols), loader.i32(wa.kblocks), *wa.tail()),
        x.device, shared_mem=GEMM_SMEM_BYTES,
    )
    return y
