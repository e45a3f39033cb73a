"""How a ternary weight's codes are stored in a file: the 2-bit packed layout or the base-3 stream.

``codec="2bit"`` stores the in-memory layout of :mod:`.packing` as it is (uint8 ``[N, Kp/4]``);
``codec="base3"`` stores the codes as the 5-trits-a-byte stream of :mod:`.base3` (uint8 ``[ceil(N*K/5)]``).
Scales are float32 ``[S_n, S_k]`` in both.
"""

from __future__ import annotations

import torch

from ..errors import TernaryFormatError
from ..tensor import TernaryTensor
from . import packing
from .base3 import decode_base3, encode_base3
from .header import _DTYPES, _dtype_name


def _stored_ternary(t: TernaryTensor, codec: str) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(codes, scale, layer entry) of one ternary weight as a file stores them (CPU, contiguous)."""
    n, k = t.shape
    packed = t.packed.detach().cpu()
    codes = packed if codec == "2bit" else encode_base3(torch.ops.torch_ternary.unpack(packed, k))
    layer = {"shape": [n, k], "dtype": _dtype_name(t.dtype), "group_size": t.group_size, "activations": t.activations}
    return codes.contiguous(), t.scale.detach().cpu().contiguous(), layer


def ternary_from_stored(codes: torch.Tensor, scale: torch.Tensor, name: str, header: dict, where) -> TernaryTensor:
    """Rebuild the :class:`TernaryTensor` ``name`` from its stored tensors, validating them.

    Args:
        codes: uint8, base-3 stream ``[ceil(N*K/5)]`` or 2-bit layout ``[N, Kp/4]`` (per ``header["codec"]``).
        scale: float32 ``[S_n, S_k]``.
        name: the weight's state-dict name (a key of ``header["ternary"]``).
        header: the file's header (:func:`parse_header`).
        where: file named in errors.

    Raises:
        TernaryFormatError: wrong dtype, invalid codes (2-bit code 3, base-3 byte > 242, bad pad),
            NaN/Inf scales, shapes that do not fit.
    """
    layer = header["ternary"][name]
    n, k = (int(v) for v in layer["shape"])
    dtype, group_size = _DTYPES[layer["dtype"]], int(layer["group_size"])
    try:
        if codes.dtype != torch.uint8:
            raise TernaryFormatError(f"codes must be uint8, got {codes.dtype}")
        if header["codec"] == "base3":
            packed = packing.pack_codes(decode_base3(codes, n * k).reshape(n, k))
        else:
            packing.validate_packed_codes(codes, k)
            packed = codes
        if scale.dtype == torch.float32 and not bool(torch.isfinite(scale).all()):
            raise TernaryFormatError("scale holds NaN or Inf")
        return TernaryTensor(packed, scale, (n, k), dtype, group_size, activations=layer.get("activations", "16bit"))
    except TernaryFormatError as e:
        raise TernaryFormatError(f"{where}: ternary weight {name!r}: {e}") from e
