"""The torch-ternary file header (format version 1): constants, building, parsing, checksums. Spec: docs/format.md.

A ternary file is a safetensors file whose metadata holds, under :data:`HEADER_KEY`, a JSON header:
format version, codec, packed layout, architecture fingerprint, the :class:`TernaryConfig`, one entry
per ternary weight (shape, logical dtype, group size, activation mode), aliases of tied tensors and a
CRC32 of every stored tensor. Nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib

import torch

from ..errors import TernaryError, TernaryFormatError
from ..ops.ternary_linear_a8 import ACTIVATION_MODES
from ..quantization.config import TernaryConfig
from . import packing

FORMAT_VERSION = 1


CODECS = ("2bit", "base3")


HEADER_KEY = "torch_ternary"


CODES_SUFFIX = ".ternary_codes"


SCALE_SUFFIX = ".ternary_scale"


_DTYPES = {str(d).removeprefix("torch."): d for d in (torch.float32, torch.float16, torch.bfloat16)}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _crc32(t: torch.Tensor) -> int:
    raw = t.detach().contiguous().reshape(-1).view(torch.uint8)
    return zlib.crc32(raw.cpu().numpy().data)


def _fingerprint(state_dict: dict) -> str:
    entries = sorted((k, list(v.shape)) for k, v in state_dict.items())
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


def make_header(codec: str, class_name: str, fingerprint: str, config: TernaryConfig | None, layers: dict,
                aliases: dict) -> dict:
    """The header dict of format version 1, without ``crc32`` (added once the stored tensors are known)."""
    from .. import __version__

    return {
        "format_version": FORMAT_VERSION,
        "library_version": __version__,
        "codec": codec,
        "layout": packing.LAYOUT,
        "architecture": {"class": class_name, "fingerprint": fingerprint},
        "config": config.to_dict() if isinstance(config, TernaryConfig) else None,
        "ternary": layers,
        "aliases": aliases,
    }


def parse_header(metadata: dict, where: str | os.PathLike) -> dict:
    """Validate and return the torch-ternary header held in a safetensors ``metadata`` dict.

    Args:
        metadata: the ``__metadata__`` string dict of a safetensors file (or of a sharded index).
        where: the file or folder named in error messages.

    Raises:
        TernaryFormatError: no header, corrupt JSON, missing fields, unknown codec/layout, newer version.
    """
    path = where
    if HEADER_KEY not in metadata:
        raise TernaryFormatError(f"{path}: a safetensors file, but not written by torch-ternary (no '{HEADER_KEY}' header)")
    try:
        header = json.loads(metadata[HEADER_KEY])
        version = header["format_version"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise TernaryFormatError(f"{path}: the torch-ternary header is corrupt: {e}") from e
    if not isinstance(version, int) or version < 1:
        raise TernaryFormatError(f"{path}: invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise TernaryFormatError(
            f"{path}: written in format version {version}; this torch-ternary reads up to version {FORMAT_VERSION} (upgrade it)"
        )
    try:
        if header["codec"] not in CODECS or header["layout"] != packing.LAYOUT:
            raise TernaryFormatError(f"{path}: unknown codec {header['codec']!r} or layout {header['layout']!r}")
        for name, layer in header["ternary"].items():
            n, k = (int(v) for v in layer["shape"])
            if n <= 0 or k <= 0 or layer["dtype"] not in _DTYPES or int(layer["group_size"]) <= 0:
                raise TernaryFormatError(f"{path}: bad layer entry for {name}: {layer}")
            # "activations" (W1.58A8) is optional: files without it load as 16-bit
            mode = layer.get("activations", "16bit")
            if mode not in ACTIVATION_MODES or (mode != "16bit" and int(layer["group_size"]) < k):
                raise TernaryFormatError(
                    f"{path}: bad activation mode for {name} (8-bit needs per-channel scales): {layer}")
        dict(header["aliases"]), dict(header["crc32"]), header["architecture"]["fingerprint"]
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, TernaryError):
            raise
        raise TernaryFormatError(f"{path}: the torch-ternary header is malformed: {e!r}") from e
    return header


def check_crc(t: torch.Tensor, key: str, header: dict, where) -> None:
    """Raise :class:`TernaryFormatError` unless ``t``'s CRC32 is the one the header records for ``key``."""
    expected = header["crc32"].get(key)
    if expected is None or _crc32(t) != expected:
        raise TernaryFormatError(f"{where}: checksum mismatch for {key!r}: the file is corrupt")
