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
from .ops_a8 import ACTIVATION_MODES
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
    return _fingerprint(model.state_dict())


def quantized_state_dict(model: nn.Module, codec: str = "base3") -> tuple[dict[str, torch.Tensor], dict]:
    """Plain tensors and the JSON header that :func:`save_quantized` writes.

    Args:
        model: a module, ternarized or not (a model with no ternary weight is saved dense).
        codec: ``"base3"`` (1.6 bits a weight, smallest) or ``"2bit"`` (the in-memory layout).

    Returns:
        ``(tensors, header)``: contiguous CPU tensors by key, and the header dict.
    """
    config = getattr(model, "_torch_ternary_config", None)
    return flatten_state_dict(model.state_dict(keep_vars=True), codec, config=config, class_name=type(model).__name__)


def _storage_key(t: torch.Tensor):
    """What identifies the data of a state-dict entry, so tied tensors are stored once."""
    inner = t.packed if isinstance(t, TernaryTensor) else t
    if inner.device.type == "meta" or inner.numel() == 0:
        return ("id", id(t))
    return (inner.device.type, inner.data_ptr(), tuple(t.shape), t.dtype)


def flatten_state_dict(
    state_dict: dict[str, torch.Tensor], codec: str = "base3", config: TernaryConfig | None = None,
    class_name: str = "Module",
) -> tuple[dict[str, torch.Tensor], dict]:
    """Turn a state dict holding :class:`TernaryTensor` values into plain tensors plus the JSON header.

    This is the flattening every torch-ternary writer uses (``save_quantized``, the diffusers
    quantizer's ``save_pretrained`` and :func:`save_quantized_folder`): ternary weight ``name``
    becomes ``name.ternary_codes`` (uint8, base-3 stream ``[ceil(N*K/5)]`` or 2-bit layout
    ``[N, Kp/4]``) and ``name.ternary_scale`` (float32 ``[S_n, S_k]``); entries sharing storage
    with an earlier one become ``aliases``.

    Args:
        state_dict: name -> tensor (``TernaryTensor`` or plain; ``keep_vars`` or detached), none on meta.
        codec: ``"base3"`` or ``"2bit"``.
        config: the :class:`TernaryConfig` recorded in the header (or None).
        class_name: the model class recorded in the header.

    Returns:
        ``(tensors, header)``: contiguous CPU tensors by key, and the header dict (with CRC32s).
    """
    if codec not in CODECS:
        raise TernaryFormatError(f"codec must be one of {CODECS}, got {codec!r}")
    tensors: dict[str, torch.Tensor] = {}
    layers: dict[str, dict] = {}
    aliases: dict[str, str] = {}
    seen: dict = {}
    for name, t in state_dict.items():
        if t.device.type == "meta":
            raise TernaryFormatError(f"{name} is on meta: there is no data to save")
        key = _storage_key(t)
        if key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        if isinstance(t, TernaryTensor):
            codes, scale, layers[name] = _stored_ternary(t, codec)
            tensors[name + CODES_SUFFIX] = codes
            tensors[name + SCALE_SUFFIX] = scale
        else:
            tensors[name] = t.detach().cpu().contiguous()
    header = make_header(codec, class_name, _fingerprint(state_dict), config, layers, aliases)
    header["crc32"] = {key: _crc32(v) for key, v in tensors.items()}
    return tensors, header


def _stored_ternary(t: TernaryTensor, codec: str) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(codes, scale, layer entry) of one ternary weight as a file stores them (CPU, contiguous)."""
    n, k = t.shape
    packed = t.packed.detach().cpu()
    codes = packed if codec == "2bit" else encode_base3(torch.ops.torch_ternary.unpack(packed, k))
    layer = {"shape": [n, k], "dtype": _dtype_name(t.dtype), "group_size": t.group_size, "activations": t.activations}
    return codes.contiguous(), t.scale.detach().cpu().contiguous(), layer


def _fingerprint(state_dict: dict) -> str:
    entries = sorted((k, list(v.shape)) for k, v in state_dict.items())
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


def make_header(codec: str, class_name: str, fingerprint: str, config: TernaryConfig | None, layers: dict,
                aliases: dict) -> dict:
    """The header dict of format version 1, without ``crc32`` (added once the stored tensors are known)."""
    from . import __version__

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
    """Call ``write(tmp_path)``, fsync the result and rename it to ``path``; remove the temp file on failure.

    The file gets the ordinary permissions of a new file (``0o666`` less the umask) even when ``write``
    creates it owner-only, as safetensors does.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
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
    return parse_header(metadata, path)


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


def _read_tensor(f, path: Path, key: str, header: dict, verify: bool) -> torch.Tensor:
    try:
        t = f.get_tensor(key)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise TernaryFormatError(f"{path}: cannot read tensor {key!r} (truncated or corrupt?): {e}") from e
    if verify:
        check_crc(t, key, header, path)
    # Tensors read at unaligned file offsets make CPU GEMMs take other code paths (different
    # summation order); an aligned copy keeps outputs bit-identical to the saved model's.
    return t.clone() if t.data_ptr() % 64 else t


def _read_ternary(f, path: Path, name: str, header: dict, verify: bool) -> TernaryTensor:
    codes = _read_tensor(f, path, name + CODES_SUFFIX, header, verify)
    scale = _read_tensor(f, path, name + SCALE_SUFFIX, header, verify)
    return ternary_from_stored(codes, scale, name, header, path)


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
    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
    return _load_into(model, header, {k: path for k in keys}, path, device, verify)


def _load_into(model: nn.Module, header: dict, key_files: dict[str, Path], where: Path, device, verify: bool) -> nn.Module:
    """Shared by :func:`load_quantized` and :func:`load_quantized_folder`: check, read everything, then place."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict(keep_vars=True).items()}
    in_file = set(header["ternary"]) | set(header["aliases"])
    in_file |= {k for k in key_files if not k.endswith((CODES_SUFFIX, SCALE_SUFFIX))}
    _check_architecture(where, header, expected, in_file)

    loaded: dict[str, torch.Tensor] = {}
    with _FileSet(key_files, where) as f:
        for name in expected:
            if name in header["aliases"]:
                continue
            if name in header["ternary"]:
                loaded[name] = _read_ternary(f, where, name, header, verify)
            else:
                loaded[name] = _read_tensor(f, where, name, header, verify)
            if tuple(loaded[name].shape) != expected[name]:
                raise ArchitectureMismatchError(
                    f"{where}: {name} has shape {tuple(loaded[name].shape)} in the file, {expected[name]} in the model"
                )
    for name, target in header["aliases"].items():
        if target not in loaded:
            raise TernaryFormatError(f"{where}: alias {name} -> {target} points at nothing")
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


class _FileSet:
    """``get_tensor(key)`` over several safetensors files (one open handle per file, closed on exit)."""

    def __init__(self, key_files: dict[str, Path], where: Path):
        self.key_files, self.where, self.handles = key_files, where, {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.handles.values():
            h.__exit__(None, None, None)
        self.handles.clear()

    def get_tensor(self, key: str) -> torch.Tensor:
        file = self.key_files.get(key)
        if file is None:
            raise TernaryFormatError(f"{self.where}: tensor {key!r} is in no file")
        if file not in self.handles:
            try:
                self.handles[file] = safe_open(str(file), framework="pt").__enter__()
            except (SafetensorError, OSError, ValueError) as e:
                raise TernaryFormatError(f"{file}: not a readable safetensors file (truncated or corrupt?): {e}") from e
        return self.handles[file].get_tensor(key)


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


# ====================================================================== sharded folders (diffusers layout)
#: diffusers' weights file name; shards are ``diffusion_pytorch_model-00001-of-00003.safetensors``.
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
INDEX_SUFFIX = ".index.json"
CONFIG_NAME = "config.json"
#: ``quant_method`` of the ``quantization_config`` in a ternary folder's ``config.json``.
QUANT_METHOD = "torch_ternary"

_ST_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}
_SIZE_UNITS = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "B": 1}


def parse_size(size: int | str) -> int:
    """Bytes in ``size``: an int, or a string like ``"10GB"`` (10**9) / ``"2GiB"`` (2**30) as diffusers reads it."""
    if isinstance(size, int):
        if size <= 0:
            raise ValueError(f"size must be positive, got {size}")
        return size
    text = str(size).strip().upper()
    for unit in sorted(_SIZE_UNITS, key=len, reverse=True):
        if text.endswith(unit):
            try:
                value = float(text[: -len(unit)])
            except ValueError:
                break
            if value > 0:
                return int(value * _SIZE_UNITS[unit])
    raise ValueError(f"not a size: {size!r} (use e.g. '10GB', '500MB', '2GiB' or an int)")


def quantization_config_dict(config: TernaryConfig | None, codec: str, torch_dtype: torch.dtype | str | None = None) -> dict:
    """The ``quantization_config`` entry of a ternary folder's ``config.json`` (what diffusers reads back).

    ``{"quant_method": "torch_ternary", "format_version": 1, "codec": ..., "torch_dtype": ..., <TernaryConfig fields>}``
    """
    if codec not in CODECS:
        raise TernaryFormatError(f"codec must be one of {CODECS}, got {codec!r}")
    if isinstance(torch_dtype, torch.dtype):
        torch_dtype = _dtype_name(torch_dtype)
    return {"quant_method": QUANT_METHOD, "format_version": FORMAT_VERSION, "codec": codec, "torch_dtype": torch_dtype,
            **(config or TernaryConfig()).to_dict()}


class _Planned:
    __slots__ = ("key", "dtype", "shape", "nbytes")

    def __init__(self, key: str, dtype: torch.dtype, shape):
        if dtype not in _ST_DTYPES:
            raise TernaryFormatError(f"{key}: dtype {dtype} cannot be stored")
        self.key, self.dtype, self.shape = key, dtype, [int(s) for s in shape]
        numel = 1
        for s in self.shape:
            numel *= s
        self.nbytes = numel * (torch.finfo(dtype).bits if dtype.is_floating_point else
                               (8 if dtype == torch.bool else torch.iinfo(dtype).bits)) // 8


def _safetensors_header(entries: list[_Planned], metadata: dict[str, str]) -> bytes:
    header: dict = {"__metadata__": metadata}
    offset = 0
    for e in entries:
        header[e.key] = {"dtype": _ST_DTYPES[e.dtype], "shape": e.shape, "data_offsets": [offset, offset + e.nbytes]}
        offset += e.nbytes
    return json.dumps(header, separators=(",", ":")).encode()


def write_safetensors_streaming(shards: list[tuple[Path, list[_Planned]]], tensors, make_metadata) -> dict[str, int]:
    """Write safetensors files one tensor at a time, each tensor produced only when it is written.

    The header (which comes first in a safetensors file and holds the CRC32 of every tensor) is only
    known once every tensor has been written, so each file first reserves room for the longest header
    it can have (every CRC32 at 10 digits), the tensors are written after it, and the real header is
    written last, padded with spaces (valid JSON whitespace, as safetensors itself pads). Files are
    written as ``.<name>.<pid>.tmp`` beside the target, fsynced and renamed when all are complete.

    Args:
        shards: ``(target path, planned entries)`` per file, entries in file order.
        tensors: iterator of ``(key, tensor)`` in exactly the planned order (CPU, contiguous, of the
            planned dtype and shape); freed as soon as written.
        make_metadata: ``crc32s -> {str: str}``, the safetensors metadata of every file.

    Returns:
        ``{key: crc32}`` of everything written.
    """
    import struct

    placeholder = {e.key: 4294967295 for _, entries in shards for e in entries}
    tmps, crcs = [], {}
    try:
        for target, entries in shards:
            reserve = len(_safetensors_header(entries, make_metadata(placeholder)))
            reserve = (reserve + 8 + 7) // 8 * 8
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            tmps.append((tmp, target, entries, reserve))
            with open(tmp, "wb") as f:
                f.seek(8 + reserve)
                for e in entries:
                    key, t = next(tensors)
                    if key != e.key or t.dtype != e.dtype or list(t.shape) != e.shape:
                        raise TernaryFormatError(f"internal: expected {e.key} {e.dtype} {e.shape}, got {key} {t.dtype} {list(t.shape)}")
                    if e.nbytes:
                        raw = t.detach().contiguous().reshape(-1).view(torch.uint8).cpu().numpy()
                        crcs[key] = zlib.crc32(raw.data)
                        f.write(raw.data)
                    else:
                        crcs[key] = 0
                    del t
        if next(tensors, None) is not None:  # also lets the producer finish (close its progress bar)
            raise TernaryFormatError("internal: more tensors produced than planned")
        metadata = make_metadata(crcs)
        for tmp, target, entries, reserve in tmps:
            header = _safetensors_header(entries, metadata)
            if len(header) > reserve:
                raise TernaryFormatError("internal: safetensors header outgrew its reserved room")
            with open(tmp, "rb+") as f:
                f.write(struct.pack("<Q", reserve) + header + b" " * (reserve - len(header)))
                f.flush()
                os.fsync(f.fileno())
        for tmp, target, _, _ in tmps:
            os.replace(tmp, target)
    finally:
        for tmp, *_ in tmps:
            if tmp.exists():
                tmp.unlink()
    return crcs


def _shard_names(weights_name: str, n: int) -> list[str]:
    if n == 1:
        return [weights_name]
    stem, ext = weights_name.rsplit(".", 1)
    return [f"{stem}-{i + 1:05d}-of-{n:05d}.{ext}" for i in range(n)]


def _split(entries: list[_Planned], max_bytes: int) -> list[list[_Planned]]:
    shards: list[list[_Planned]] = [[]]
    size = 0
    for e in entries:
        if shards[-1] and size + e.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(e)
        size += e.nbytes
    return shards


def save_quantized_folder(
    model: nn.Module, directory: str | os.PathLike, codec: str = "base3", max_shard_size: int | str = "10GB",
    weights_name: str = WEIGHTS_NAME, progress: bool = False,
) -> Path:
    """Write ``model`` as a diffusers-layout folder that ``from_pretrained`` reloads as ternary.

    The folder holds ``config.json`` (the model's diffusers config, if it has one, plus
    ``quantization_config``), the weights as ``diffusion_pytorch_model.safetensors`` or, above
    ``max_shard_size``, as ``diffusion_pytorch_model-0000i-of-0000n.safetensors`` shards with a
    ``diffusion_pytorch_model.safetensors.index.json``. Every shard carries the same torch-ternary
    header (see docs/format.md). This is the format ``model.save_pretrained`` writes for a model loaded
    with the torch-ternary diffusers quantizer, but streamed: each layer is encoded only when written,
    so it needs no memory beyond the model and one layer (``save_pretrained`` encodes all layers first).
    Works for any module ``quantize_`` was applied to (no diffusers quantizer needed).

    Args:
        model: the (ternarized) module; no tensor on meta.
        directory: destination folder (created; stale weight shards of the same name are removed).
        codec: ``"base3"`` (default) or ``"2bit"``.
        max_shard_size: shard size limit (int bytes or ``"10GB"``-style string).
        weights_name: base file name.
        progress: show a tqdm bar over the tensors written.

    Returns:
        The folder.
    """
    if codec not in CODECS:
        raise TernaryFormatError(f"codec must be one of {CODECS}, got {codec!r}")
    directory = Path(directory)
    max_bytes = parse_size(max_shard_size)
    state = model.state_dict(keep_vars=True)
    entries: list[_Planned] = []
    layers, aliases, seen, order = {}, {}, {}, []
    for name, t in state.items():
        if t.device.type == "meta":
            raise TernaryFormatError(f"{name} is on meta: there is no data to save")
        key = _storage_key(t)
        if key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        order.append(name)
        if isinstance(t, TernaryTensor):
            n, k = t.shape
            codes_shape = list(t.packed.shape) if codec == "2bit" else [encoded_nbytes(n * k)]
            entries.append(_Planned(name + CODES_SUFFIX, torch.uint8, codes_shape))
            entries.append(_Planned(name + SCALE_SUFFIX, torch.float32, t.scale.shape))
            layers[name] = {"shape": [n, k], "dtype": _dtype_name(t.dtype), "group_size": t.group_size,
                            "activations": t.activations}
        else:
            entries.append(_Planned(name, t.dtype, t.shape))
    config = getattr(model, "_torch_ternary_config", None)
    header = make_header(codec, type(model).__name__, _fingerprint(state), config, layers, aliases)

    def produce():
        bar = _progress(len(order), f"Writing {directory.name}", progress)
        for name in order:
            t = state[name]
            if isinstance(t, TernaryTensor):
                codes, scale, _ = _stored_ternary(t, codec)
                yield name + CODES_SUFFIX, codes
                del codes
                yield name + SCALE_SUFFIX, scale
                release_freed_memory()
            else:
                yield name, t.detach().cpu().contiguous()
            bar.update(1)
        bar.close()

    def make_metadata(crcs):
        return {"format": "pt", HEADER_KEY: json.dumps({**header, "crc32": crcs}, sort_keys=True)}

    groups = _split(entries, max_bytes)
    names = _shard_names(weights_name, len(groups))
    crcs = write_safetensors_streaming([(directory / n, g) for n, g in zip(names, groups)], produce(), make_metadata)

    index_path = directory / (weights_name + INDEX_SUFFIX)
    if len(groups) > 1:
        index = {"metadata": {"total_size": sum(e.nbytes for e in entries), **make_metadata(crcs)},
                 "weight_map": {e.key: n for n, g in zip(names, groups) for e in g}}
        atomic_write(index_path, lambda tmp: tmp.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n"))
    elif index_path.exists():
        index_path.unlink()
    _remove_stale_shards(directory, weights_name, set(names))
    model_config = _model_config_dict(model)
    if model_config is not None:
        dtype = next((p.dtype for p in model.parameters() if p.dtype.is_floating_point), None)
        model_config["quantization_config"] = quantization_config_dict(config, codec, dtype)
        atomic_write(directory / CONFIG_NAME,
                     lambda tmp: tmp.write_text(json.dumps(model_config, indent=2, sort_keys=True) + "\n"))
    return directory


def _model_config_dict(model: nn.Module) -> dict | None:
    """The diffusers config of ``model`` as saved in ``config.json`` (None for a module without one)."""
    to_json = getattr(model, "to_json_string", None)
    if not callable(to_json) or getattr(model, "config_name", None) is None:
        return None
    d = json.loads(to_json())
    d.pop("_name_or_path", None)
    return d


def _remove_stale_shards(directory: Path, weights_name: str, keep: set[str]) -> None:
    import re

    stem, ext = weights_name.rsplit(".", 1)
    pattern = re.compile(re.escape(stem) + r"(-\d{5}-of-\d{5})?\." + re.escape(ext))
    for p in directory.iterdir():
        if p.is_file() and pattern.fullmatch(p.name) and p.name not in keep:
            p.unlink()


def folder_files(directory: str | os.PathLike, weights_name: str = WEIGHTS_NAME) -> tuple[dict[str, Path], dict | None]:
    """``({key: shard path}, index or None)`` of a (possibly sharded) safetensors folder.

    Raises:
        FileNotFoundError: no folder, or no weights file / index in it.
        TernaryFormatError: an index that is not valid JSON or names missing shards.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"no such folder: {directory}")
    index_path = directory / (weights_name + INDEX_SUFFIX)
    if index_path.is_file():
        try:
            index = json.loads(index_path.read_text())
            weight_map = {str(k): directory / str(v) for k, v in dict(index["weight_map"]).items()}
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, UnicodeDecodeError) as e:
            raise TernaryFormatError(f"{index_path}: not a valid safetensors index: {e}") from e
        for f in set(weight_map.values()):
            if not f.is_file():
                raise FileNotFoundError(f"{index_path} names a shard that is missing: {f.name}")
        return weight_map, index
    single = directory / weights_name
    if not single.is_file():
        raise FileNotFoundError(f"{directory}: neither {weights_name} nor {weights_name + INDEX_SUFFIX} is there")
    try:
        with safe_open(str(single), framework="pt") as f:
            keys = list(f.keys())
    except (SafetensorError, OSError, ValueError) as e:
        raise TernaryFormatError(f"{single}: not a readable safetensors file (truncated or corrupt?): {e}") from e
    return {k: single for k in keys}, None


def read_folder_header(directory: str | os.PathLike, weights_name: str = WEIGHTS_NAME) -> dict:
    """The torch-ternary header of a folder written by :func:`save_quantized_folder` or ``save_pretrained``.

    Every shard carries the same header; this reads (and validates) the first one.
    """
    key_files, _ = folder_files(directory, weights_name)
    files = sorted(set(key_files.values()))
    if not files:
        raise TernaryFormatError(f"{directory}: the weights hold no tensor")
    return read_header(files[0])


def load_quantized_folder(
    model: nn.Module, directory: str | os.PathLike, device: torch.device | str = "cpu", verify: bool = True,
    weights_name: str = WEIGHTS_NAME,
) -> nn.Module:
    """:func:`load_quantized` for a folder from :func:`save_quantized_folder` / ``save_pretrained`` (diffusers not needed).

    Same checks and errors as :func:`load_quantized`; ``model`` may be built on ``meta``.
    """
    check_device(device)
    directory = Path(directory)
    key_files, _ = folder_files(directory, weights_name)
    header = read_folder_header(directory, weights_name)
    return _load_into(model, header, key_files, directory, device, verify)


# ====================================================================== plain safetensors file -> ternary file
#: FLUX transformer keys, for ``preset="auto"`` on a plain file (there is no module class to look at).
_FLUX_KEYS = ("x_embedder.weight", "context_embedder.weight", "proj_out.weight")


def quantize_file(
    src: str | os.PathLike, dst: str | os.PathLike, config: TernaryConfig | None = None, codec: str = "base3",
    dtype: torch.dtype | None = None, progress: bool = False,
) -> dict:
    """Ternarize a plain safetensors state dict into a :func:`save_quantized` file, one tensor at a time.

    No model is needed: every 2-D floating ``<module>.weight`` tensor is a candidate linear weight
    ``[N, K]``, selected by ``config`` exactly as ``quantize_`` selects ``nn.Linear`` modules
    (``preset="auto"`` means ``"flux"`` when the keys are a diffusers FLUX transformer's, ``"all"``
    otherwise; exclude embedding tables with ``exclude``). Each tensor is read with ``pread``,
    ternarized, encoded and written before the next is read, so memory stays at one tensor.
    ``load_quantized(model, dst)`` loads the result into the model the state dict came from.

    Args:
        src: a safetensors file without a torch-ternary header.
        dst: the output ``.safetensors`` file (written atomically).
        config: selection and granularity (default ``TernaryConfig()``).
        codec: ``"base3"`` or ``"2bit"``.
        dtype: cast floating tensors to this dtype (and make it the ternary weights' logical dtype);
            default: keep each tensor's dtype.
        progress: show a tqdm bar.

    Returns:
        ``{"tensors", "ternary_layers", "params_ternary", "params_total", "bytes_in", "bytes_out"}``.

    Raises:
        FileNotFoundError: ``src`` missing. TernaryFormatError: not safetensors, already ternary, or an
        unsupported dtype. InvalidWeightError: NaN/Inf in a selected weight.
    """
    from .quant_math import check_weight, num_groups, resolve_group_size

    config = config or TernaryConfig()
    if codec not in CODECS:
        raise TernaryFormatError(f"codec must be one of {CODECS}, got {codec!r}")
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise FileNotFoundError(f"no such file: {src}")
    try:
        with safe_open(str(src), framework="pt") as f:
            metadata = f.metadata() or {}
            shapes = {k: (list(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise TernaryFormatError(f"{src}: not a readable safetensors file (truncated or corrupt?): {e}") from e
    if HEADER_KEY in metadata:
        raise TernaryFormatError(f"{src}: already a torch-ternary file")
    st_to_torch = {v: k for k, v in _ST_DTYPES.items()}
    preset = config.preset
    if preset == "auto":
        keys = set(shapes)
        flux = all(k in keys for k in _FLUX_KEYS) and any(k.startswith("single_transformer_blocks.") for k in keys)
        preset = "flux" if flux else "all"
    entries, selected, layers, order = [], set(), {}, []
    params_total = params_ternary = 0
    for key, (shape, st_dtype) in shapes.items():
        if st_dtype not in st_to_torch:
            raise TernaryFormatError(f"{src}: tensor {key} has dtype {st_dtype}, which torch-ternary cannot store")
        t_dtype = st_to_torch[st_dtype]
        out_dtype = dtype if (dtype is not None and t_dtype.is_floating_point) else t_dtype
        numel = 1
        for s in shape:
            numel *= s
        params_total += numel
        order.append(key)
        module_name, _, attr = key.rpartition(".")
        if attr == "weight" and len(shape) == 2 and t_dtype.is_floating_point and min(shape) > 0:
            n, k = shape
            with torch.device("meta"):
                probe = nn.Linear(k, n, bias=False)
            if config.selects(module_name, probe, preset):
                g = resolve_group_size(config.granularity, config.group_size, k)
                s_rows = 1 if config.granularity == "per_tensor" else n
                codes_shape = list(packing.packed_shape(n, k)) if codec == "2bit" else [encoded_nbytes(n * k)]
                entries.append(_Planned(key + CODES_SUFFIX, torch.uint8, codes_shape))
                entries.append(_Planned(key + SCALE_SUFFIX, torch.float32, [s_rows, num_groups(k, g)]))
                layers[key] = {"shape": [n, k], "dtype": _dtype_name(out_dtype), "group_size": g,
                               "activations": config.activations}
                selected.add(key)
                params_ternary += numel
                continue
        entries.append(_Planned(key, out_dtype, shape))
    fingerprint = hashlib.sha256(json.dumps(sorted((k, s) for k, (s, _) in shapes.items())).encode()).hexdigest()
    class_name = "FluxTransformer2DModel" if preset == "flux" and config.preset == "auto" else "safetensors state dict"
    header = make_header(codec, class_name, fingerprint, config, layers, {})

    def produce():
        bar = _progress(len(order), f"Ternarizing {src.name}", progress)
        with safe_open(str(src), framework="pt", **_PREAD) as f:
            for key in order:
                t = f.get_tensor(key)
                if dtype is not None and t.dtype.is_floating_point:
                    t = t.to(dtype)
                if key in selected:
                    check_weight(t, key)
                    tt = TernaryTensor.from_float(t, config.granularity, config.group_size)
                    del t
                    codes, scale, _ = _stored_ternary(tt, codec)
                    del tt
                    yield key + CODES_SUFFIX, codes
                    del codes
                    yield key + SCALE_SUFFIX, scale
                    release_freed_memory()
                else:
                    yield key, t.contiguous()
                bar.update(1)
        bar.close()

    def make_metadata(crcs):
        return {"format": "pt", HEADER_KEY: json.dumps({**header, "crc32": crcs}, sort_keys=True)}

    write_safetensors_streaming([(dst, entries)], produce(), make_metadata)
    return {"tensors": len(order), "ternary_layers": len(selected), "params_ternary": params_ternary,
            "params_total": params_total, "bytes_in": src.stat().st_size, "bytes_out": dst.stat().st_size}


def _pread_supported() -> dict:
    import inspect

    try:
        return {"backend": "pread"} if "backend" in inspect.signature(safe_open).parameters else {}
    except (TypeError, ValueError):  # a builtin without a signature: try it
        return {"backend": "pread"}


_PREAD = _pread_supported()


class _NoBar:
    def update(self, n=1):
        pass

    def close(self):
        pass


def _progress(total: int, desc: str, enabled: bool, unit: str = "tensor"):
    """A tqdm bar (or a no-op stand-in when disabled or tqdm is missing)."""
    if not enabled:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, desc=desc, unit=unit)


# ====================================================================== memory
def _load_malloc_trim():
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim  # glibc only
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_MALLOC_TRIM = _load_malloc_trim()


def release_freed_memory() -> None:
    """Give memory freed by the allocator back to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    Streaming quantization frees one dense weight (tens of MB) per layer while keeping its much
    smaller packed codes; glibc keeps such freed blocks in its heaps and per-thread arenas, and on
    FLUX.1-dev that retention grows to gigabytes. Trimming after each layer keeps the process at the
    size of what it really holds.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
