"""The skinny tensor-core GEMV / GEMM (``cuda/gemv.cu``): small-M ternary linears."""

from __future__ import annotations

from typing import Optional

import torch

from ..errors import UnsupportedOperationError
from . import loader
from .common import check_half_linear, weight_args

_SOURCE = "gemv.cu"
_PREFIX = {torch.bfloat16: "tt_skinny_bf16", torch.float16: "tt_skinny_f16"}
_MAX_WARPS = 8
_MAX_GRID_Y = 65535


def prepare_activations(x2: torch.Tensor, in_features: int, kp: int, alignment: int = 16) -> torch.Tensor:
    """``x2`` as the kernels read it: contiguous, ``alignment``-byte aligned, zero-padded to ``kp`` columns.

    Args:
        x2: ``[M, K]`` (any strides). in_features: ``K``. kp: columns wanted (``>= K``).

    Returns:
        ``x2`` itself when it already qualifies, else a copy ``[M, kp]``.
    """
    if kp != in_features:
        xp = x2.new_zeros((x2.shape[0], kp))
        xp[:, :in_features] = x2
        return xp
    if not x2.is_contiguous():
        x2 = x2.contiguous()
    if x2.data_ptr() % alignment:
        x2 = x2.clone(memory_format=torch.contiguous_format)
    return x2


def auto_warps(kblocks: int, vec_words: int) -> int:
    """Warps splitting K in a block: each streams at least two chunks of ``4 * vec_words`` words."""
    chunks = -(-kblocks // (4 * vec_words))
    return max(1, min(_MAX_WARPS, chunks // 2))


def skinny_linear(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, bias: Optional[torch.Tensor],
                  in_features: int, group_size: int, *, rows_per_warp: int = 1, warps: int = 0) -> torch.Tensor:
    """``y = x @ (s * q).T + bias`` with the skinny tensor-core kernel (fp32 accumulation).

    Args:
        x: bfloat16 / float16 ``[M, K]`` on a CUDA device of compute capability 8.0+, any strides
            (copied to a contiguous, 16-byte aligned ``[M, Kp]`` with zeros past ``K`` when needed).
        packed: uint8 ``[N, Kp / 4]``, same device.
        scale: float32 ``[S_n, S_k]``, same device.
        bias: ``x.dtype`` ``[N]`` or None.
        in_features: ``K``. group_size: ``G`` (a multiple of 16 when ``S_k > 1``).
        rows_per_warp: m16 tiles of output rows per warp (1 or 2).
        warps: warps splitting K in a block (1..8; 0 = :func:`auto_warps`).

    Returns:
        ``x.dtype`` ``[M, N]``, contiguous.

    Raises:
        UnsupportedDeviceError: a tensor not on one CUDA device of compute capability 8.0+.
        UnsupportedOperationError: ``x.dtype`` not bfloat16 / float16, or an unsupported group size.
    """
    check_half_linear("skinny kernel", x, packed, scale, bias, in_features)
    if rows_per_warp not in (1, 2) or not 0 <= warps <= _MAX_WARPS:
        raise ValueError(f"rows_per_warp must be 1 or 2 and warps 0..{_MAX_WARPS}, got {rows_per_warp}, {warps}")
    packed = packed.contiguous()
    scale = scale.contiguous()
    wa = weight_args(packed, scale, in_features, group_size)
    m, n = x.shape[0], wa.n
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return y
    if bias is not None:
        bias = bias.contiguous()
    xp = prepare_activations(x, in_features, 16 * wa.kblocks)
    vw = 4 if wa.kblocks % 4 == 0 and packed.data_ptr() % 16 == 0 else 1
    nt = 1 if m <= 8 else 2
    m_tiles = -(-m // (8 * nt))
    if m_tiles > _MAX_GRID_Y:
        raise UnsupportedOperationError(f"skinny kernel takes at most {_MAX_GRID_Y * 16} rows, got {m}")
    w = warps or auto_warps(wa.kblocks, vw)
    entry = f"{_PREFIX[x.dtype]}_r{rows_per_warp}_n{nt}_v{vw}"
    kernel = loader.get_kernel(_SOURCE, entry, x.device)
    grid = (-(-n // (16 * rows_per_warp)), m_tiles, 1)
    loader.launch(
        kernel, grid, (32 * w, 1, 1),
        (loader.ptr(y), loader.ptr(xp), loader.ptr(packed), loader.ptr(scale), loader.ptr(bias),
         loader.i32(m), loader.i32(n), loader.i32(wa.kblocks), *wa.tail()),
        x.device,
    )
    return y
