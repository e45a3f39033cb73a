"""Ternary models as diffusers-layout folders: ``config.json`` plus (sharded) safetensors weights."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from ..errors import TernaryFormatError
from ..quantization.config import TernaryConfig
from ..tensor import TernaryTensor, check_device
from .atomic import atomic_write
from .base3 import encoded_nbytes
from .codes import _stored_ternary
from .header import (
    CODECS,
    CODES_SUFFIX,
    FORMAT_VERSION,
    HEADER_KEY,
    SCALE_SUFFIX,
    _dtype_name,
    _fingerprint,
    make_header,
)
from .loading import _load_into
from .memory import release_freed_memory
from .single_file import read_header
from .state_dict import _storage_key
from .streaming import _Planned, _progress, _shard_names, _split, write_safetensors_streaming

#: diffusers' weights file name; shards are ``diffusion_pytorch_model-00001-of-00003.safetensors``.
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"


INDEX_SUFFIX = ".index.json"


CONFIG_NAME = "config.json"


#: ``quant_method`` of the ``quantization_config`` in a ternary folder's ``config.json``.
QUANT_METHOD = "torch_ternary"


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
