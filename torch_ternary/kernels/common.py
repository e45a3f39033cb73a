"""Argument checks and encodings shared by the CUDA kernel wrappers."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional

import torch

from ..errors import UnsupportedDeviceError, UnsupportedOperationError
from ..format import packing
from ..quantization.absmean import GROUP_MULTIPLE, num_groups
from .loader import MIN_CAPABILITY

#: Half-precision activation dtypes the GEMV / GEMM kernels take (fp32 goes to the reference).
HALF_DTYPES = (torch.bfloat16, torch.float16)
#: Output dtypes of the dequantize kernel.
DEQUANT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
#: Words a row may have: the in-kernel group division is exact below this (see common.cuh GroupDiv).
MAX_KBLOCKS = 1 << 16


@functools.lru_cache(maxsize=None)
def capability(device_index: int) -> tuple[int, int]:
    """Compute capability of a CUDA device (cached)."""
    return torch.cuda.get_device_capability(device_index)


def device_index(t: torch.Tensor) -> int:
    return t.device.index if t.device.index is not None else torch.cuda.current_device()


def check_cuda(*tensors: Optional[torch.Tensor]) -> None:
    """Raise :class:`UnsupportedDeviceError` unless every tensor is on one CUDA device of sm_80+."""
    devices = {t.device for t in tensors if t is not None}
    if len(devices) != 1 or next(iter(devices)).type != "cuda":
        raise UnsupportedDeviceError(
            f"torch-ternary CUDA kernels need all tensors on one CUDA device, got {sorted(map(str, devices))}"
        )
    cap = capability(device_index(next(t for t in tensors if t is not None)))
    if cap < MIN_CAPABILITY:
        raise UnsupportedDeviceError(
            f"torch-ternary CUDA kernels need compute capability >= {MIN_CAPABILITY}, this GPU has {cap}"
        )


def check_half_linear(what: str, x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor,
                      bias: Optional[torch.Tensor], in_features: Optional[int] = None) -> None:
    """The checks every half-precision linear kernel makes before it launches.

    Args:
        what: the kernel's name, for the messages.
        x: activations, bfloat16 / float16 ``[M, K]``; ``packed``, ``scale``, ``bias``: the weight's tensors.
        in_features: ``K``; when given, ``x`` must be 2-D with ``K`` columns.

    Raises:
        UnsupportedDeviceError: a tensor not on one CUDA device of compute capability 8.0+.
        UnsupportedOperationError: ``x.dtype`` not bfloat16 / float16.
        ValueError: ``x`` not ``[M, in_features]``.
    """
    check_cuda(x, packed, scale, bias)
    if x.dtype not in HALF_DTYPES:
        raise UnsupportedOperationError(f"{what} takes bfloat16 / float16 activations, not {x.dtype}")
    if in_features is not None and (x.dim() != 2 or x.shape[1] != in_features):
        raise ValueError(f"{what}: x must be [M, {in_features}], got {tuple(x.shape)}")


def group_div(words_per_group: int) -> tuple[int, int]:
    """``(shift, magic)`` with which the kernels compute ``kb // words_per_group`` (common.cuh ``GroupDiv``).

    Args:
        words_per_group: ``G / 16`` (>= 1).

    Returns:
        ``(log2(gb), 0)`` for a power of two, else ``(-1, ceil(2**32 / gb))``.
    """
    gb = int(words_per_group)
    if gb <= 0:
        raise ValueError(f"words_per_group must be positive, got {gb}")
    if gb & (gb - 1) == 0:
        return gb.bit_length() - 1, 0
    return -1, -(-(1 << 32) // gb)


def emulate_group_div(kb: torch.Tensor, shift: int, magic: int) -> torch.Tensor:
    """What the kernels compute for word indices ``kb`` (int64 tensor); tests compare with ``kb // gb``."""
    if shift >= 0:
        return kb >> shift
    return (kb * magic) >> 32


@dataclass(frozen=True)
class WeightArgs:
    """Kernel arguments describing a packed weight and its scales.

    Attributes:
        n: ``N``. k: ``K``. kblocks: ``Kp / 16`` words a row.
        s_row_stride: ``S_k`` when ``S_n == N`` (a scale row per output), else 0.
        grouped: 1 when ``S_k > 1`` (per-group scales), else 0.
        gshift, gmagic: the division by ``G / 16`` (see :func:`group_div`); 0, 0 when not grouped.
    """

    n: int
    k: int
    kblocks: int
    s_row_stride: int
    grouped: int
    gshift: int
    gmagic: int

    def tail(self) -> tuple:
        """``(s_row_stride, grouped, gshift, gmagic)`` as kernel arguments."""
        import numpy as np

        return (np.int32(self.s_row_stride), np.int32(self.grouped), np.int32(self.gshift), np.uint32(self.gmagic))


def unsupported_weight(packed: torch.Tensor, scale: torch.Tensor, in_features: int, group_size: int) -> Optional[str]:
    """Why the kernels cannot take this weight (None when they can). The op arguments are valid."""
    kblocks = packing.padded_in_features(in_features) // packing.WEIGHTS_PER_WORD
    if kblocks >= MAX_KBLOCKS:
        return f"in_features {in_features} too large (the kernels take K < {16 * MAX_KBLOCKS})"
    if scale.shape[1] > 1 and group_size % GROUP_MULTIPLE:
        return f"group_size {group_size} is not a multiple of {GROUP_MULTIPLE}"
    if packed.shape[0] * kblocks >= 1 << 31:
        return "weight too large for 32-bit word indices"
    return None


def weight_args(packed: torch.Tensor, scale: torch.Tensor, in_features: int, group_size: int) -> WeightArgs:
    """Encode a packed weight for the kernels.

    Args:
        packed: uint8 ``[N, Kp / 4]`` (contiguous). scale: float32 ``[S_n, S_k]`` (contiguous).
        in_features: ``K``. group_size: ``G``.

    Raises:
        UnsupportedOperationError: group size not a multiple of 16 with ``S_k > 1``, or ``K`` too large.
    """
    reason = unsupported_weight(packed, scale, in_features, group_size)
    if reason is not None:
        raise UnsupportedOperationError(f"torch-ternary CUDA kernels: {reason}")
    n = packed.shape[0]
    kblocks = packed.shape[1] // 4  # bytes a row / 4 bytes a word
    s_k = scale.shape[1]
    if s_k != num_groups(in_features, group_size):
        raise UnsupportedOperationError(f"scale has {s_k} columns, expected {num_groups(in_features, group_size)}")
    grouped = int(s_k > 1)
    shift, magic = group_div(group_size // GROUP_MULTIPLE) if grouped else (0, 0)
    s_row_stride = s_k if scale.shape[0] == n else 0
    return WeightArgs(n, in_features, kblocks, s_row_stride, grouped, shift, magic)
