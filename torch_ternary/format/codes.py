"""How a ternary weight is stored in a file: its codes (2-bit packed layout or base-3 stream) and its scales.

``codec="2bit"`` stores the in-memory layout of :mod:`.packing` as it is: uint8 ``[N, Kp/4]``;
``codec="base3"`` stores the codes as the 5-trits-a-byte stream of :mod:`.base3`: uint8 ``[ceil(N*K/5)]``.
Scales are float32 ``[S_n, S_k]`` in both (``S_n`` in {1, N}, ``S_k = ceil(K/G)``).

:func:`check_stored_layout` compares what a file's own index says about the two stored tensors (dtype
and shape, known before a byte is read) with the header's layer entry, so a header that declares
absurd sizes is refused before anything is allocated; :func:`ternary_from_stored` then validates the
content (no invalid code, finite scales) and builds the :class:`TernaryTensor`.
"""

from __future__ import annotations

import torch

from ..errors import TernaryFormatError
from ..quantization.absmean import num_groups
from ..tensor import TernaryTensor
from . import packing
from .base3 import decode_base3, encode_base3, encoded_nbytes
from .header import DTYPES, layer_entry


def codes_shape(codec: str, n: int, k: int) -> tuple[int, ...]:
    """Shape of the stored uint8 codes of an ``[N, K]`` weight: ``(N, Kp/4)`` (2bit) or ``(ceil(N*K/5),)`` (base3)."""
    return tuple(packing.packed_shape(n, k)) if codec == "2bit" else (encoded_nbytes(n * k),)


def stored_ternary(t: TernaryTensor, codec: str) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """``(codes, scale, layer entry)`` of one ternary weight as a file stores them (CPU, contiguous).

    Args:
        t: the weight; ``t.packed`` uint8 ``[N, Kp/4]``, ``t.scale`` float32 ``[S_n, S_k]``.
        codec: ``"2bit"`` or ``"base3"``.

    Returns:
        codes uint8 (:func:`codes_shape`), scale float32 ``[S_n, S_k]``, and the header's layer entry.
    """
    n, k = t.shape
    packed = t.packed.detach().cpu()
    codes = packed if codec == "2bit" else encode_base3(torch.ops.torch_ternary.unpack(packed, k))
    layer = layer_entry((n, k), t.dtype, t.group_size, t.activations)
    return codes.contiguous(), t.scale.detach().cpu().contiguous(), layer


_stored_ternary = stored_ternary


def check_stored_layout(name: str, layer: dict, codec: str, codes: tuple[torch.dtype, tuple], scale: tuple[torch.dtype, tuple],
                        where) -> None:
    """Refuse, before reading them, stored codes / scale whose dtype or shape the layer entry does not give.

    Args:
        name: the weight's state-dict name.
        layer: its (parsed) ``header["ternary"]`` entry.
        codec: the file's codec.
        codes, scale: ``(dtype, shape)`` of the stored ``.ternary_codes`` / ``.ternary_scale`` tensors, from the
            file's own index.
        where: the file named in errors.
    """
    n, k = layer["shape"]
    want_codes = codes_shape(codec, n, k)
    if codes[0] != torch.uint8 or tuple(codes[1]) != want_codes:
        raise TernaryFormatError(f"{where}: ternary weight {name!r}: stored codes are {codes[0]} {list(codes[1])}, "
                                 f"the header's shape {[n, k]} needs uint8 {list(want_codes)} ({codec})")
    groups = num_groups(k, layer["group_size"])
    rows_ok = len(scale[1]) == 2 and scale[1][0] in (1, n) and scale[1][1] == groups
    if scale[0] != torch.float32 or not rows_ok:
        raise TernaryFormatError(f"{where}: ternary weight {name!r}: stored scale is {scale[0]} {list(scale[1])}, "
                                 f"expected float32 [1 or {n}, {groups}]")
    if layer.get("activations", "16bit") != "16bit" and groups != 1:
        raise TernaryFormatError(f"{where}: ternary weight {name!r}: 8-bit activations need one scale per channel")


def ternary_from_stored(codes: torch.Tensor, scale: torch.Tensor, name: str, header: dict, where) -> TernaryTensor:
    """Rebuild the :class:`TernaryTensor` ``name`` from its stored tensors, validating them.

    Args:
        codes: uint8, base-3 stream ``[ceil(N*K/5)]`` or 2-bit layout ``[N, Kp/4]`` (per ``header["codec"]``).
        scale: float32 ``[S_n, S_k]``.
        name: the weight's state-dict name (a key of ``header["ternary"]``).
        header: the file's header (:func:`~torch_ternary.format.header.parse_header`).
        where: file named in errors.

    Raises:
        TernaryFormatError: wrong dtype or shape, invalid codes (2-bit code 3, base-3 byte > 242, bad pad),
            NaN/Inf scales.
    """
    layer = header["ternary"][name]
    n, k = layer["shape"]
    check_stored_layout(name, layer, header["codec"], (codes.dtype, tuple(codes.shape)), (scale.dtype, tuple(scale.shape)),
                        where)
    try:
        if header["codec"] == "base3":
            packed = packing.pack_codes(decode_base3(codes, n * k).reshape(n, k))
        else:
            packing.validate_packed_codes(codes, k)
            packed = codes
        if not bool(torch.isfinite(scale).all()):
            raise TernaryFormatError("scale holds NaN or Inf")
        return TernaryTensor(packed, scale, (n, k), DTYPES[layer["dtype"]], layer["group_size"],
                             activations=layer.get("activations", "16bit"))
    except TernaryFormatError as e:
        raise TernaryFormatError(f"{where}: ternary weight {name!r}: {e}") from e
