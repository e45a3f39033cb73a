"""The in-memory 2-bit packed layout (``k16-interleaved``, version 1). Spec: docs/format.md.

A ternary weight ``q`` of shape ``[N, K]`` is stored as the 2-bit code ``c = q + 1`` (0, 1, 2;
3 is invalid) in a ``uint8`` tensor of shape ``[N, Kp / 4]`` where ``Kp = ceil(K / 16) * 16``.
Each row is a sequence of little-endian 32-bit words; word ``w`` of row ``n`` holds the 16
weights ``k = 16 w + j``, ``j = 0..15``. Weight ``j`` of a word sits in 2-bit slot

    slot(j) = 8 * (j % 2) + j // 2        (bits 2*slot .. 2*slot+1 of the word)

i.e. even weights in the low half-word, odd weights in the high half-word. A GPU decodes the
pair (2i, 2i+1) into one packed bf16x2 / f16x2 register with a shift, one AND, one OR and one
subtract:

    h = ((word >> 2i) & 0x00030003) | 0x43004300   # bf16 pair (128 + c_2i, 128 + c_2i+1)
    w = h - (129, 129)                              # (q_2i, q_2i+1)  (f16: 0x64006400, 1025)

Pad slots (``K <= k < Kp``) hold code 1 (weight 0) and are never returned by :func:`unpack_codes`.
"""

from __future__ import annotations

import torch

from ..errors import TernaryFormatError

LAYOUT = "k16-interleaved-v1"
WEIGHTS_PER_WORD = 16
WEIGHTS_PER_BYTE = 4
PAD_CODE = 1  # code of weight 0; what pad slots hold

# _SLOT_OF[j]: the 2-bit slot of logical weight j within its 32-bit word.
_SLOT_OF = [8 * (j % 2) + j // 2 for j in range(WEIGHTS_PER_WORD)]
# _WEIGHT_AT[s]: the logical weight held by slot s (inverse permutation).
_WEIGHT_AT = [0] * WEIGHTS_PER_WORD
for _j, _s in enumerate(_SLOT_OF):
    _WEIGHT_AT[_s] = _j


def padded_in_features(in_features: int) -> int:
    """``Kp``: ``K`` rounded up to a multiple of 16."""
    return -(-in_features // WEIGHTS_PER_WORD) * WEIGHTS_PER_WORD


def packed_shape(out_features: int, in_features: int) -> tuple[int, int]:
    """Shape ``[N, Kp / 4]`` of the uint8 tensor holding a packed ``[N, K]`` weight."""
    return out_features, padded_in_features(in_features) // WEIGHTS_PER_BYTE


def pack_codes(codes: torch.Tensor) -> torch.Tensor:
    """Pack ternary codes into the 2-bit layout.

    Args:
        codes: integer tensor ``[N, K]`` with values in {-1, 0, 1} (any integer dtype).

    Returns:
        uint8 ``[N, Kp / 4]`` on the same device, contiguous.
    """
    if codes.dim() != 2:
        raise TernaryFormatError(f"pack_codes expects [N, K] codes, got shape {tuple(codes.shape)}")
    n, k = codes.shape
    kp = padded_in_features(k)
    c = (codes.to(torch.int16) + 1).to(torch.uint8)
    if kp != k:
        c = torch.nn.functional.pad(c, (0, kp - k), value=PAD_CODE)
    words = c.reshape(n, kp // WEIGHTS_PER_WORD, WEIGHTS_PER_WORD)
    slots = words[:, :, _WEIGHT_AT]  # slots[..., s] = code of the weight held by slot s
    slots = slots.reshape(n, kp // WEIGHTS_PER_BYTE, WEIGHTS_PER_BYTE)
    packed = slots[..., 0] | (slots[..., 1] << 2) | (slots[..., 2] << 4) | (slots[..., 3] << 6)
    return packed.contiguous()


def unpack_raw(packed: torch.Tensor) -> torch.Tensor:
    """2-bit codes ``c`` of every slot, pad included, in logical order.

    Args:
        packed: uint8 ``[N, Kp / 4]`` (rows of little-endian 32-bit words).

    Returns:
        uint8 ``[N, Kp]`` with values 0..3 (3 only in a corrupt tensor).
    """
    n, nbytes = packed.shape
    words = packed.contiguous().view(torch.int32)  # [N, Kp/16]
    shifts = torch.tensor([2 * s for s in _SLOT_OF], dtype=torch.int32, device=packed.device)
    codes = (words.unsqueeze(-1) >> shifts) & 3  # [N, Kp/16, 16], logical order
    return codes.to(torch.uint8).reshape(n, nbytes * WEIGHTS_PER_BYTE)


def unpack_codes(packed: torch.Tensor, in_features: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`.

    Args:
        packed: uint8 ``[N, Kp / 4]``.
        in_features: ``K`` (``Kp - 16 < K <= Kp``).

    Returns:
        int8 ``[N, K]`` with values in {-1, 0, 1}; the pad is dropped.
    """
    check_packed(packed, in_features)
    return (unpack_raw(packed)[:, :in_features].to(torch.int8) - 1)


def check_packed(packed: torch.Tensor, in_features: int) -> None:
    """Raise :class:`TernaryFormatError` unless ``packed`` has the dtype and shape of a packed ``K``-wide weight.

    Args:
        packed: expected uint8 ``[N, ceil(K/16) * 4]``.
        in_features: ``K``.
    """
    if packed.dtype != torch.uint8 or packed.dim() != 2:
        raise TernaryFormatError(
            f"packed weights must be a 2-D uint8 tensor, got {packed.dtype} of shape {tuple(packed.shape)}"
        )
    if in_features <= 0 or packed.shape[1] != padded_in_features(in_features) // WEIGHTS_PER_BYTE:
        raise TernaryFormatError(
            f"packed weights of width {packed.shape[1]} bytes cannot hold in_features={in_features} "
            f"(expected {padded_in_features(max(in_features, 1)) // WEIGHTS_PER_BYTE})"
        )


def validate_packed_codes(packed: torch.Tensor, in_features: int) -> None:
    """Full content check used on load: no code 3 anywhere, and every pad slot holds code 1.

    Args:
        packed: uint8 ``[N, Kp / 4]``.
        in_features: ``K``.
    """
    check_packed(packed, in_features)
    raw = unpack_raw(packed)
    if bool((raw == 3).any()):
        raise TernaryFormatError("packed weights contain the invalid 2-bit code 3 (corrupt data)")
    if raw.shape[1] != in_features and bool((raw[:, in_features:] != PAD_CODE).any()):
        raise TernaryFormatError("packed weights have non-zero padding past in_features (corrupt data)")
