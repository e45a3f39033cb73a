"""The torch-ternary file header (format version 1): constants, the one builder, the strict parser. Spec: docs/format.md.

A ternary file is a safetensors file whose metadata holds, under :data:`HEADER_KEY`, a JSON header:
format version, codec, packed layout, architecture fingerprint, the :class:`TernaryConfig`, one entry
per ternary weight (shape, logical dtype, group size, activation mode), aliases of tied tensors and a
CRC32 of every stored tensor. Nothing is ever unpickled.

:func:`parse_header` checks every field's type and range (the config included), so a malformed header
raises :class:`TernaryFormatError` and nothing else; :func:`file_metadata` is what every writer puts in
the safetensors metadata.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib

import torch

from .._version import __version__
from ..errors import TernaryConfigError, TernaryFormatError
from ..ops.ternary_linear_a8 import ACTIVATION_MODES
from ..quantization.absmean import GROUP_MULTIPLE
from ..quantization.config import TernaryConfig
from . import packing

FORMAT_VERSION = 1
CODECS = ("2bit", "base3")
HEADER_KEY = "torch_ternary"
#: Metadata key of the CRC32 of the header text (written since 0.2; a file without it loads unchecked)
HEADER_CRC_KEY = "torch_ternary_crc32"
CODES_SUFFIX = ".ternary_codes"
SCALE_SUFFIX = ".ternary_scale"
#: logical dtypes of ternary weights, by their header name
DTYPES = {str(d).removeprefix("torch."): d for d in (torch.float32, torch.float16, torch.bfloat16)}
_DTYPES = DTYPES  # the 0.1.0 name (the diffusers quantizer and older callers use it)
#: The largest ternary layer a header may declare (2^40 weights, 275 GB in bf16): anything larger is refused
#: before a byte is read. The real bound is the stored tensors' sizes, checked against the file's own index.
MAX_LAYER_NUMEL = 1 << 40
#: Largest CRC32 value.
_CRC_MAX = (1 << 32) - 1


def dtype_name(dtype: torch.dtype) -> str:
    """``"bfloat16"`` for ``torch.bfloat16``."""
    return str(dtype).removeprefix("torch.")


_dtype_name = dtype_name


def crc32(t: torch.Tensor) -> int:
    """CRC32 of a tensor's bytes (contiguous, native byte order), as the header records it."""
    raw = t.detach().contiguous().reshape(-1).view(torch.uint8)
    return zlib.crc32(raw.cpu().numpy().data)


_crc32 = crc32


def fingerprint(shapes: dict[str, list[int] | tuple[int, ...]]) -> str:
    """SHA-256 over the sorted ``(name, logical shape)`` pairs of a state dict."""
    entries = sorted((k, [int(s) for s in v]) for k, v in shapes.items())
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


def _fingerprint(state_dict: dict) -> str:
    return fingerprint({k: tuple(v.shape) for k, v in state_dict.items()})


def layer_entry(shape, dtype: torch.dtype, group_size: int, activations: str) -> dict:
    """The ``header["ternary"]`` entry of one ternary weight of logical shape ``(N, K)``."""
    n, k = (int(s) for s in shape)
    return {"shape": [n, k], "dtype": dtype_name(dtype), "group_size": int(group_size), "activations": activations}


def make_header(codec: str, class_name: str, fingerprint: str, config: TernaryConfig | None, layers: dict,
                aliases: dict) -> dict:
    """The header dict of format version 1, without ``crc32`` (added once the stored tensors are known)."""
    if codec not in CODECS:
        raise TernaryFormatError(f"codec must be one of {CODECS}, got {codec!r}")
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


def file_metadata(header: dict, crcs: dict[str, int]) -> dict[str, str]:
    """The safetensors metadata of a ternary file (or of every shard, or of a shard index).

    ``{"format": "pt", HEADER_KEY: <the header with the tensors' CRC32s, JSON>, HEADER_CRC_KEY: <CRC32 of that text>}``:
    the tensors' checksums catch a changed byte of data, the header's catches a changed byte of the header.
    """
    text = json.dumps({**header, "crc32": crcs}, sort_keys=True)
    return {"format": "pt", HEADER_KEY: text, HEADER_CRC_KEY: str(zlib.crc32(text.encode()))}


def check_header_crc(metadata: dict, where) -> None:
    """Raise :class:`TernaryFormatError` if the header text's CRC32 is recorded and differs (files before 0.2 have none)."""
    recorded = metadata.get(HEADER_CRC_KEY)
    if recorded is not None and recorded != str(zlib.crc32(str(metadata.get(HEADER_KEY, "")).encode())):
        raise TernaryFormatError(f"{where}: checksum mismatch for the torch-ternary header: the file is corrupt")


# ---------------------------------------------------------------------------------------------- parsing
def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _valid_group_size(g, k: int) -> bool:
    """``G == K`` (per tensor / channel) or a multiple of 16 below ``K`` (per group), as quantization makes them."""
    return _is_int(g) and (g == k or (0 < g < k and g % GROUP_MULTIPLE == 0))


def _check_layer(name, layer, where) -> None:
    if not isinstance(name, str) or not isinstance(layer, dict):
        raise TernaryFormatError(f"{where}: bad ternary layer entry {name!r}: {layer!r}")
    shape = layer.get("shape")
    if not isinstance(shape, list) or len(shape) != 2 or not all(_is_int(s) and s > 0 for s in shape):
        raise TernaryFormatError(f"{where}: ternary weight {name!r} has an invalid shape {shape!r}")
    n, k = shape
    if n * k > MAX_LAYER_NUMEL:
        raise TernaryFormatError(f"{where}: ternary weight {name!r} declares {n * k:,} weights (shape {shape}): absurd")
    if not isinstance(layer.get("dtype"), str) or layer["dtype"] not in DTYPES:
        raise TernaryFormatError(f"{where}: ternary weight {name!r} has an unknown dtype {layer.get('dtype')!r}")
    g = layer.get("group_size")
    if not _valid_group_size(g, k):
        raise TernaryFormatError(f"{where}: ternary weight {name!r} has an invalid group_size {g!r} for K={k}")
    mode = layer.get("activations", "16bit")  # optional: files without it load as 16-bit
    if not isinstance(mode, str) or mode not in ACTIVATION_MODES:
        raise TernaryFormatError(f"{where}: ternary weight {name!r} has an unknown activation mode {mode!r}")
    if mode != "16bit" and g != k:
        raise TernaryFormatError(f"{where}: ternary weight {name!r}: 8-bit activations need per-channel scales")


def _check_names(value, what: str, where, values_are) -> dict:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise TernaryFormatError(f"{where}: the header's {what!r} must be an object keyed by tensor names")
    for k, v in value.items():
        if not values_are(v):
            raise TernaryFormatError(f"{where}: the header's {what!r} holds an invalid value for {k!r}: {v!r}")
    return value


def parse_header(metadata: dict, where: str | os.PathLike) -> dict:
    """Validate and return the torch-ternary header held in a safetensors ``metadata`` dict.

    Every field is checked for type and range: version, codec, layout, architecture, config (parsed
    with :meth:`TernaryConfig.from_dict`), each ternary layer (shape, dtype, group size, activation
    mode), aliases (names, no self- or layer-aliases, no cycles) and CRC32s.

    Args:
        metadata: the ``__metadata__`` string dict of a safetensors file (or of a sharded index).
        where: the file or folder named in error messages.

    Raises:
        TernaryFormatError: no header, corrupt JSON, a missing or malformed field, a newer version.
    """
    if not isinstance(metadata, dict) or HEADER_KEY not in metadata:
        raise TernaryFormatError(f"{where}: a safetensors file, but not written by torch-ternary (no '{HEADER_KEY}' header)")
    try:
        header = json.loads(metadata[HEADER_KEY])
    except (json.JSONDecodeError, TypeError, RecursionError) as e:
        raise TernaryFormatError(f"{where}: the torch-ternary header is not valid JSON: {e}") from e
    if not isinstance(header, dict):
        raise TernaryFormatError(f"{where}: the torch-ternary header must be a JSON object, got {type(header).__name__}")
    version = header.get("format_version")
    if not _is_int(version) or version < 1:
        raise TernaryFormatError(f"{where}: invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise TernaryFormatError(
            f"{where}: written in format version {version}; this torch-ternary reads up to version {FORMAT_VERSION} (upgrade it)"
        )
    codec, layout = header.get("codec"), header.get("layout")
    if not isinstance(codec, str) or codec not in CODECS or layout != packing.LAYOUT:
        raise TernaryFormatError(f"{where}: unknown codec {codec!r} or layout {layout!r}")
    arch = header.get("architecture")
    if not isinstance(arch, dict) or not isinstance(arch.get("fingerprint"), str) or not isinstance(arch.get("class", ""), str):
        raise TernaryFormatError(f"{where}: the header's 'architecture' is malformed: {arch!r}")
    if not isinstance(header.get("library_version", ""), str):
        raise TernaryFormatError(f"{where}: the header's 'library_version' must be a string")
    config = header.get("config")
    if config is not None:
        if not isinstance(config, dict):
            raise TernaryFormatError(f"{where}: the header's 'config' must be an object or null, got {config!r}")
        try:
            TernaryConfig.from_dict(config)
        except (TernaryConfigError, TypeError, ValueError) as e:
            raise TernaryFormatError(f"{where}: the header's 'config' is not a valid TernaryConfig: {e}") from e
    layers = header.get("ternary")
    if not isinstance(layers, dict):
        raise TernaryFormatError(f"{where}: the header's 'ternary' must be an object of layers, got {type(layers).__name__}")
    for name, layer in layers.items():
        _check_layer(name, layer, where)
    aliases = _check_names(header.get("aliases"), "aliases", where, lambda v: isinstance(v, str))
    for name, target in aliases.items():
        if name == target or name in layers:
            raise TernaryFormatError(f"{where}: alias {name!r} -> {target!r} names itself or a stored ternary weight")
        if target in aliases:
            raise TernaryFormatError(f"{where}: alias {name!r} points at another alias {target!r}")
    _check_names(header.get("crc32"), "crc32", where, lambda v: _is_int(v) and 0 <= v <= _CRC_MAX)
    return header


def header_config(header: dict) -> TernaryConfig | None:
    """The :class:`TernaryConfig` a parsed header records (None for a file saved without one)."""
    config = header.get("config")
    return None if config is None else TernaryConfig.from_dict(config)


def check_crc(t: torch.Tensor, key: str, header: dict, where) -> None:
    """Raise :class:`TernaryFormatError` unless ``t``'s CRC32 is the one the header records for ``key``."""
    expected = header["crc32"].get(key)
    if expected is None or crc32(t) != expected:
        raise TernaryFormatError(f"{where}: checksum mismatch for {key!r}: the file is corrupt")
