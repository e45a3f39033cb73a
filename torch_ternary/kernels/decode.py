"""CUDA decode kernels (``cuda/decode.cu``): ``unpack`` and ``dequantize`` without the reference's
chunked torch ops; ``dequantize`` also fills the workspace of the large-M ``decode_cublas`` path."""

from __future__ import annotations

import torch

from ..errors import UnsupportedOperationError
from . import loader
from .common import DEQUANT_DTYPES, check_cuda, weight_args

_SOURCE = "decode.cu"
_DEQUANT_ENTRY = {torch.bfloat16: "tt_dequant_bf16", torch.float16: "tt_dequant_f16", torch.float32: "tt_dequant_f32"}
_MAX_GRID_Y = 65535


def _launch_shape(n: int, kblocks: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """One thread a word: x covers a row's words, y walks the rows (grid-stride past 65535)."""
    threads = min(256, -(-kblocks // 32) * 32)
    return (-(-kblocks // threads), min(n, _MAX_GRID_Y), 1), (threads, 1, 1)


def unpack_cuda(packed: torch.Tensor, in_features: int) -> torch.Tensor:
    """Ternary codes of a packed weight, on the GPU.

    Args:
        packed: uint8 ``[N, Kp / 4]`` on a CUDA device (made contiguous if it is not).
        in_features: ``K``.

    Returns:
        int8 ``[N, K]`` in {-1, 0, 1}, contiguous, on ``packed.device``.
    """
    check_cuda(packed)
    packed = packed.contiguous()
    n = packed.shape[0]
    kblocks = packed.shape[1] // 4
    out = torch.empty((n, in_features), dtype=torch.int8, device=packed.device)
    if out.numel() == 0:
        return out
    kernel = loader.get_kernel(_SOURCE, "tt_unpack_i8", packed.device)
    grid, block = _launch_shape(n, kblocks)
    loader.launch(
        kernel, grid, block,
        (loader.ptr(out), loader.ptr(packed), loader.i32(n), loader.i32(in_features), loader.i32(kblocks)),
        packed.device,
    )
    return out


def dequantize_cuda(packed: torch.Tensor, scale: torch.Tensor, in_features: int, group_size: int,
                    dtype: torch.dtype, out: torch.Tensor | None = None) -> torch.Tensor:
    """Dense ``W_hat = s * q`` on the GPU, equal to the reference bit for bit.

    Args:
        packed: uint8 ``[N, Kp / 4]`` (CUDA). scale: float32 ``[S_n, S_k]`` (same device).
        in_features: ``K``. group_size: ``G`` (a multiple of 16 when ``S_k > 1``).
        dtype: bfloat16, float16 or float32.
        out: optional contiguous ``dtype`` ``[N, K]`` tensor to write into (a reusable workspace).

    Returns:
        ``dtype`` ``[N, K]``: ``out`` if given, else a new contiguous tensor.

    Raises:
        UnsupportedDeviceError: not on a CUDA device of compute capability 8.0+.
        UnsupportedOperationError: another dtype, or a group size the kernels do not take.
    """
    check_cuda(packed, scale)
    if dtype not in DEQUANT_DTYPES:
        raise UnsupportedOperationError(f"dequantize kernel writes {DEQUANT_DTYPES}, not {dtype}")
    packed = packed.contiguous()
    scale = scale.contiguous()
    wa = weight_args(packed, scale, in_features, group_size)
    if out is None:
        out = torch.empty((wa.n, in_features), dtype=dtype, device=packed.device)
    elif (out.shape != (wa.n, in_features) or out.dtype != dtype or not out.is_contiguous()
          or out.device != packed.device or out.data_ptr() % 16):
        raise ValueError(
            f"out must be a contiguous, 16-byte aligned {dtype} [{wa.n}, {in_features}] tensor on {packed.device}"
        )
    if out.numel() == 0:
        return out
    kernel = loader.get_kernel(_SOURCE, _DEQUANT_ENTRY[dtype], packed.device)
    grid, block = _launch_shape(wa.n, wa.kblocks)
    loader.launch(
        kernel, grid, block,
        (loader.ptr(out), loader.ptr(packed), loader.ptr(scale), loader.i32(wa.n), loader.i32(in_features),
         loader.i32(wa.kblocks), *wa.tail()),
        packed.device,
    )
    return out
