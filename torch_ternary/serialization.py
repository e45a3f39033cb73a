"""Save and load ternary models as safetensors (format version 1). Spec: docs/format.md.

A file holds, for every ternary weight ``name``: ``name + ".ternary_codes"`` (uint8: the 2-bit
layout ``[N, Kp/4]`` or the base-3 stream ``[ceil(N*K/5)]``) and ``name + ".ternary_scale"``
(float32 ``[S_n, S_k]``); every other state-dict tensor under its own name; and a JSON header
in the safetensors metadata (format version, codec, config, per-layer shapes and dtypes, an
architecture fingerprint and a CRC32 of every stored tensor). Nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from . import packing
from .base3 import decode_base3, encode_base3, encoded_nbytes
from .config import TernaryConfig
from .errors import ArchitectureMismatchError, TernaryError, TernaryFormatError
from .tensor import TernaryTensor, check_device

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


def architecture_fingerprint(model: nn.Module) -> str:
    """SHA-256 over the sorted (name, logical shape) pairs of ``model.state_dict()``."""
    entries = sorted((k, list(v.shape)) for k, v in model.state_dict().items())
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


def quantized_state_dict(model: nn.Module, codec: str = "base3") -> tuple[dict[str, torch.Tensor], dict]:
    """Plain tensors and the JSON header that :func:`save_quantized` writes.

    Args:
        model: a module, ternarized or not (a model with no ternary weight is saved dense).
        codec: ``"base3"`` (1.6 bits a weight, smallest) or ``"2bit"`` (the in-memory layout).

    Returns:
        ``(tensors, header)``: contiguous CPU tensors by key, and the header dict.
    """
    if codec not in CODECS:
        raise TernaryFormatError(f"codec must be one of {CODECS}, got {codec!r}")
    from . import __version__

    tensors: dict[str, torch.Tensor] = {}
    layers: dict[str, dict] = {}
    aliases: dict[str, str] = {}
    seen: dict[int, str] = {}
    for name, t in model.state_dict(keep_vars=True).items():
        key = id(t.packed) if isinstance(t, TernaryTensor) else (t.data_ptr() if t.numel() else id(t))
        if key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        if isinstance(t, TernaryTensor):
            if t.device.type == "meta":
                raise TernaryFormatError(f"{name} is on meta: there is no data to save")
            n, k = t.shape
            packed = t.packed.detach().cpu()
            codes = packed if codec == "2bit" else encode_base3(torch.ops.torch_ternary.unpack(packed, k))
            tensors[name + CODES_SUFFIX] = codes.contiguous()
            tensors[name + SCALE_SUFFIX] = t.scale.detach().cpu().contiguous()
            layers[name] = {"shape": [n, k], "dtype": _dtype_name(t.dtype), "group_size": t.group_size}
        else:
            if t.device.type == "meta":
                raise TernaryFormatError(f"{name} is on meta: there is no data to save")
            tensors[name] = t.detach().cpu().contiguous()
    config = getattr(model, "_torch_ternary_config", None)
    header = {
        "format_version": FORMAT_VERSION,
        "library_version": __version__,
        "codec": codec,
        "layout": packing.LAYOUT,
        "architecture": {"class": type(model).__name__, "fingerprint": architecture_fingerprint(model)},
        "config": config.to_dict() if isinstance(config, TernaryConfig) else None,
        "ternary": layers,
        "aliases": aliases,
        "crc32": {key: _crc32(v) for key, v in tensors.items()},
    }
    return tensors, header


def payload_nbytes(model: nn.Module, codec: str = "base3") -> int:
    """Tensor bytes a :func:`save_quantized` file of ``model`` holds (header excluded; a few KB).

    Computed from shapes alone, so it works for a model on ``meta``.
    """
    if codec not in CODECS:
        raise TernaryFormatError(f"codec must be one of {CODECS}, got {codec!r}")
    total, seen = 0, set()
    for t in model.state_dict(keep_vars=True).values():
        inner = t.packed if isinstance(t, TernaryTensor) else t
        if id(inner) in seen:
            continue
        seen.add(id(inner))
        if isinstance(t, TernaryTensor):
            n, k = t.shape
            codes = t.packed.numel() if codec == "2bit" else encoded_nbytes(n * k)
            total += codes + t.scale.numel() * t.scale.element_size()
        else:
            total += t.numel() * t.element_size()
    return total


def save_quantized(model: nn.Module, path: str | os.PathLike, codec: str = "base3") -> Path:
    """Write ``model`` (ternary weights and everything else in its state dict) to one safetensors file.

    The write is atomic: a temporary file in the same folder is fsynced, then renamed over ``path``.

    Args:
        model: the (ternarized) module.
        path: destination ``.safetensors`` file.
        codec: ``"base3"`` (default, 1.6 bits a weight) or ``"2bit"``.

    Returns:
        The path written.
    """
    path = Path(path)
    tensors, header = quantized_state_dict(model, codec)
    metadata = {"format": "pt", HEADER_KEY: json.dumps(header, sort_keys=True)}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    return path


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)``, fsync the result and rename it to ``path``; remove the temp file on failure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_header(path: str | os.PathLike) -> dict:
    """The torch-ternary header of a file, validated for version and shape; raises :class:`TernaryFormatError`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise TernaryFormatError(f"{path}: not a readable safetensors file (truncated or corrupt?): {e}") from e
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
        dict(header["aliases"]), dict(header["crc32"]), header["architecture"]["fingerprint"]
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, TernaryError):
            raise
        raise TernaryFormatError(f"{path}: the torch-ternary header is malformed: {e!r}") from e
    return header


def _read_tensor(f, path: Path, key: str, header: dict, verify: bool) -> torch.Tensor:
    try:
        t = f.get_tensor(key)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise TernaryFormatError(f"{path}: cannot read tensor {key!r} (truncated or corrupt?): {e}") from e
    if verify:
        expected = header["crc32"].get(key)
        if expected is None or _crc32(t) != expected:
            raise TernaryFormatError(f"{path}: checksum mismatch for {key!r}: the file is corrupt")
    # Tensors read at unaligned file offsets make CPU GEMMs take other code paths (different
    # summation order); an aligned copy keeps outputs bit-identical to the saved model's.
    return t.clone() if t.data_ptr() % 64 else t


def _read_ternary(f, path: Path, name: str, header: dict, verify: bool) -> TernaryTensor:
    layer = header["ternary"][name]
    n, k = (int(v) for v in layer["shape"])
    dtype, group_size = _DTYPES[layer["dtype"]], int(layer["group_size"])
    codes = _read_tensor(f, path, name + CODES_SUFFIX, header, verify)
    scale = _read_tensor(f, path, name + SCALE_SUFFIX, header, verify)
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
        return TernaryTensor(packed, scale, (n, k), dtype, group_size)
    except TernaryFormatError as e:
        raise TernaryFormatError(f"{path}: ternary weight {name!r}: {e}") from e


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    module_name, _, attr = name.rpartition(".")
    return (model.get_submodule(module_name) if module_name else model), attr


def load_quantized(
    model: nn.Module, path: str | os.PathLike, device: torch.device | str = "cpu", verify: bool = True
) -> nn.Module:
    """Load a file written by :func:`save_quantized` into ``model``, in place.

    ``model`` may be built on ``meta`` (``with torch.device("meta"): model = Cls(config)``): ternary
    weights are built straight from the packed data, so no dense weight is ever materialized.
    Everything is read and checked before the model is touched: on any error it is unchanged.

    Args:
        model: a module of the architecture that was saved (dense, ternarized, or on meta).
        path: a ``.safetensors`` file from :func:`save_quantized`.
        device: where the loaded tensors go (``cpu`` or ``cuda``).
        verify: check the CRC32 of every tensor (a full read; disable only for trusted files).

    Returns:
        ``model``.

    Raises:
        TernaryFormatError: truncated, corrupt, foreign or newer-version file.
        ArchitectureMismatchError: the file's tensors do not fit ``model``.
    """
    check_device(device)
    path = Path(path)
    header = read_header(path)
    expected = {k: tuple(v.shape) for k, v in model.state_dict(keep_vars=True).items()}
    in_file = set(header["ternary"]) | set(header["aliases"])
    with safe_open(str(path), framework="pt") as f:
        in_file |= {k for k in f.keys() if not k.endswith((CODES_SUFFIX, SCALE_SUFFIX))}
    _check_architecture(path, header, expected, in_file)

    loaded: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt") as f:
        for name in expected:
            if name in header["aliases"]:
                continue
            if name in header["ternary"]:
                loaded[name] = _read_ternary(f, path, name, header, verify)
            else:
                loaded[name] = _read_tensor(f, path, name, header, verify)
            if tuple(loaded[name].shape) != expected[name]:
                raise ArchitectureMismatchError(
                    f"{path}: {name} has shape {tuple(loaded[name].shape)} in the file, {expected[name]} in the model"
                )
    for name, target in header["aliases"].items():
        if target not in loaded:
            raise TernaryFormatError(f"{path}: alias {name} -> {target} points at nothing")
        loaded[name] = loaded[target]

    placed: dict[tuple[int, bool], torch.Tensor] = {}  # one moved tensor / Parameter per stored tensor, so ties survive
    for name, t in loaded.items():
        owner, attr = _owner(model, name)
        is_param = attr in owner._parameters
        key = (id(t), is_param)
        if key not in placed:
            moved = t.to(device)
            if is_param:
                grad = owner._parameters[attr].requires_grad and not isinstance(t, TernaryTensor)
                moved = nn.Parameter(moved, requires_grad=grad)
            placed[key] = moved
        if is_param:
            owner._parameters[attr] = placed[key]
        else:
            owner._buffers[attr] = placed[key]
    if header.get("config") is not None:
        model._torch_ternary_config = TernaryConfig.from_dict(header["config"])
    return model


def _check_architecture(path: Path, header: dict, expected: dict, in_file: set) -> None:
    missing = sorted(set(expected) - in_file)
    unexpected = sorted(in_file - set(expected))
    if missing or unexpected:
        raise ArchitectureMismatchError(
            f"{path} (saved from {header['architecture'].get('class')}) does not fit this model: "
            f"{len(missing)} missing tensors {missing[:5]}, {len(unexpected)} unexpected {unexpected[:5]}"
        )
    for name, layer in header["ternary"].items():
        if tuple(layer["shape"]) != expected[name]:
            raise ArchitectureMismatchError(
                f"{path}: {name} is {tuple(layer['shape'])} in the file, {expected[name]} in the model"
            )
