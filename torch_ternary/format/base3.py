"""The base-3 storage codec: 5 trits a byte (1.6 bits a weight), used in files. Spec: docs/format.md.

The codes ``c = q + 1`` of a ``[N, K]`` weight are read in row-major order, padded with ``c = 1``
to a multiple of 5, and each run of five ``c_0..c_4`` becomes the byte

    b = c_0 + 3 c_1 + 9 c_2 + 27 c_3 + 81 c_4        (0 <= b <= 242)

Bytes 243..255 never occur in a valid stream and are rejected on decode, as is a non-zero pad.
"""

from __future__ import annotations

import torch

from ..errors import TernaryFormatError

TRITS_PER_BYTE = 5
MAX_BYTE = 3**TRITS_PER_BYTE - 1  # 242
_POWERS = [1, 3, 9, 27, 81]


def encoded_nbytes(numel: int) -> int:
    """Bytes of the base-3 stream for ``numel`` weights: ``ceil(numel / 5)``."""
    return -(-numel // TRITS_PER_BYTE)


def encode_base3(codes: torch.Tensor) -> torch.Tensor:
    """Encode ternary codes.

    Args:
        codes: integer tensor of any shape with values in {-1, 0, 1}.

    Returns:
        uint8 1-D tensor of ``ceil(numel / 5)`` bytes.
    """
    flat = (codes.reshape(-1).to(torch.int16) + 1).to(torch.uint8)
    pad = encoded_nbytes(flat.numel()) * TRITS_PER_BYTE - flat.numel()
    if pad:
        flat = torch.nn.functional.pad(flat, (0, pad), value=1)
    t = flat.reshape(-1, TRITS_PER_BYTE)
    out = t[:, 4]
    for i in (3, 2, 1, 0):  # Horner: ((((c4*3)+c3)*3+c2)*3+c1)*3+c0, stays <= 242 in uint8
        out = out * 3 + t[:, i]
    return out.contiguous()


def _decode_table(device: torch.device) -> torch.Tensor:
    b = torch.arange(256, dtype=torch.int16, device=device)
    return torch.stack([(b // p) % 3 for p in _POWERS], dim=1).to(torch.int8) - 1  # [256, 5]


def decode_base3(data: torch.Tensor, numel: int) -> torch.Tensor:
    """Decode a base-3 stream.

    Args:
        data: uint8 1-D tensor of exactly ``ceil(numel / 5)`` bytes.
        numel: number of weights encoded.

    Returns:
        int8 1-D tensor of ``numel`` codes in {-1, 0, 1}. Raises :class:`TernaryFormatError` on a
        wrong length, a byte above 242 or a non-zero pad.
    """
    if data.dtype != torch.uint8 or data.dim() != 1:
        raise TernaryFormatError(f"base-3 data must be a 1-D uint8 tensor, got {data.dtype} {tuple(data.shape)}")
    if data.numel() != encoded_nbytes(numel):
        raise TernaryFormatError(
            f"base-3 data has {data.numel()} bytes, expected {encoded_nbytes(numel)} for {numel} weights"
        )
    if bool((data > MAX_BYTE).any()):
        raise TernaryFormatError("base-3 data holds a byte above 242 (corrupt data)")
    codes = _decode_table(data.device)[data.long()].reshape(-1)
    if bool((codes[numel:] != 0).any()):
        raise TernaryFormatError("base-3 data has a non-zero pad (corrupt data)")
    return codes[:numel]
