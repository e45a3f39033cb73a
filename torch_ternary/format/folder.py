"""Ternary models as diffusers-layout folders: ``config.json`` plus (sharded) safetensors weights.

Saving a folder is atomic as a set: a reader (diffusers, :func:`load_quantized_folder`) sees the old
weights or the new ones, never a mix. The index (``diffusion_pytorch_model.safetensors.index.json``) is the
commit point: new shards are written under names no file of the old set has, the index is then replaced
atomically, and only after that are stale files removed. A single-file save replaces
``diffusion_pytorch_model.safetensors`` atomically before it removes an old index (which readers prefer).
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from ..errors import TernaryFormatError
from ..quantization.config import TernaryConfig
from .atomic import atomic_write, fsync_dir
from .header import CODECS, CODES_SUFFIX, FORMAT_VERSION, check_header_crc, dtype_name, file_metadata, parse_header
from .loading import load_checkpoint
from .memory import release_freed_memory
from .state_dict import model_config, plan_state_dict, unwrap_compiled
from .streaming import _progress, shard_names, split_shards, write_safetensors_streaming

#: diffusers' weights file name; shards are ``diffusion_pytorch_model-00001-of-00003.safetensors``.
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
INDEX_SUFFIX = ".index.json"
CONFIG_NAME = "config.json"
#: ``quant_method`` of the ``quantization_config`` in a ternary folder's ``config.json``.
QUANT_METHOD = "torch_ternary"
#: An index larger than this is refused unread (FLUX.1-dev's is about 100 KB).
MAX_INDEX_BYTES = 64 << 20

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
        torch_dtype = dtype_name(torch_dtype)
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
    Works for any module ``quantize_`` was applied to (no diffusers quantizer needed), compiled or not.
    The weights are replaced atomically as a set (module docstring); ``config.json`` is written first.

    Args:
        model: the (ternarized) module; no tensor on meta.
        directory: destination folder (created; stale weight files of the same name are removed).
        codec: ``"base3"`` (default) or ``"2bit"``.
        max_shard_size: shard size limit (int bytes or ``"10GB"``-style string).
        weights_name: base file name.
        progress: show a tqdm bar over the tensors written.

    Returns:
        The folder.
    """
    directory = Path(directory)
    max_bytes = parse_size(max_shard_size)
    inner = unwrap_compiled(model)
    plan = plan_state_dict(inner.state_dict(keep_vars=True), codec)
    config = model_config(inner)
    header = plan.header(codec, config, type(inner).__name__)
    groups = split_shards(plan.entries, max_bytes)
    directory.mkdir(parents=True, exist_ok=True)
    names = shard_names(weights_name, len(groups))
    if len(groups) > 1 and any((directory / n).exists() for n in names):  # never overwrite a file of the old set
        names = shard_names(weights_name, len(groups), tag=secrets.token_hex(4))
    model_cfg = _model_config_dict(inner)
    if model_cfg is not None:
        dtype = next((p.dtype for p in inner.parameters() if p.dtype.is_floating_point), None)
        model_cfg["quantization_config"] = quantization_config_dict(config, codec, dtype)
        atomic_write(directory / CONFIG_NAME, lambda tmp: tmp.write_text(json.dumps(model_cfg, indent=2, sort_keys=True) + "\n"))

    bar = _progress(len(plan.entries), f"Writing {directory.name}", progress)

    def written(entry):
        bar.update(1)
        if entry.key.endswith(CODES_SUFFIX):
            release_freed_memory()  # the layer's encoding buffers are free by now

    try:
        crcs = write_safetensors_streaming([(directory / n, g) for n, g in zip(names, groups)],
                                           lambda crcs: file_metadata(header, crcs), on_written=written)
    finally:
        bar.close()
    index_path = directory / (weights_name + INDEX_SUFFIX)
    if len(groups) > 1:
        index = {"metadata": {"total_size": plan.nbytes, **file_metadata(header, crcs)},
                 "weight_map": {e.key: n for n, g in zip(names, groups) for e in g}}
        atomic_write(index_path, lambda tmp: tmp.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n"))
    elif index_path.exists():
        index_path.unlink()  # the single file (renamed in above) is what readers see from now on
        fsync_dir(directory)
    _remove_stale_weights(directory, weights_name, set(names))
    return directory


def _model_config_dict(model: nn.Module) -> dict | None:
    """The diffusers config of ``model`` as saved in ``config.json`` (None for a module without one)."""
    to_json = getattr(model, "to_json_string", None)
    if not callable(to_json) or getattr(model, "config_name", None) is None:
        return None
    d = json.loads(to_json())
    d.pop("_name_or_path", None)
    return d


def _remove_stale_weights(directory: Path, weights_name: str, keep: set[str]) -> None:
    """Remove the weight files of earlier saves (single file or shards, tagged or not) that ``keep`` does not name."""
    import re

    stem, ext = weights_name.rsplit(".", 1)
    pattern = re.compile(re.escape(stem) + r"(-\d{5}-of-\d{5}(\.[0-9a-f]{8})?)?\." + re.escape(ext))
    for p in directory.iterdir():
        if p.is_file() and pattern.fullmatch(p.name) and p.name not in keep:
            p.unlink()


def _plain_name(name) -> bool:
    """A shard name an index may hold: a file name in the folder itself (no folder part, not ``.``/``..``)."""
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name
            and "\0" not in name and os.path.basename(name) == name)


def _read_index(index_path: Path, directory: Path) -> dict[str, Path]:
    try:
        size = index_path.stat().st_size
        if size > MAX_INDEX_BYTES:
            raise TernaryFormatError(f"{index_path}: a {size:,}-byte index is not a safetensors index (limit {MAX_INDEX_BYTES:,})")
        index = json.loads(index_path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise TernaryFormatError(f"{index_path}: not a valid safetensors index: {e}") from e
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(k, str) for k in weight_map):
        raise TernaryFormatError(f"{index_path}: not a valid safetensors index (no 'weight_map' of names)")
    root = directory.resolve()
    files: dict[str, Path] = {}
    for name in weight_map.values():
        if not _plain_name(name):
            raise TernaryFormatError(f"{index_path}: shard {name!r} is not a file of this folder: refused")
        if name in files:
            continue
        path = directory / name
        if path.resolve().parent != root:  # a link out of the folder
            raise TernaryFormatError(f"{index_path}: shard {name!r} leads out of the folder: refused")
        if not path.is_file():
            raise TernaryFormatError(f"{index_path} names a shard that is missing: {name}")
        files[name] = path
    return {key: files[name] for key, name in weight_map.items()}


def folder_files(directory: str | os.PathLike, weights_name: str = WEIGHTS_NAME) -> tuple[dict[str, Path], bool]:
    """``({stored key: file}, sharded)`` of a (possibly sharded) safetensors folder.

    Raises:
        FileNotFoundError: ``directory`` does not exist.
        TernaryFormatError: not a folder, no weights in it, an index that is not valid JSON, names a shard
            outside the folder or a missing one, or an unreadable weights file.
    """
    directory = Path(directory)
    if not directory.exists():
        raise FileNotFoundError(f"no such folder: {directory}")
    if not directory.is_dir():
        raise TernaryFormatError(f"{directory} is not a folder (a single file? load it with load_quantized)")
    index_path = directory / (weights_name + INDEX_SUFFIX)
    if index_path.is_file():
        return _read_index(index_path, directory), True
    single = directory / weights_name
    if not single.is_file():
        raise TernaryFormatError(f"{directory}: neither {weights_name} nor {weights_name + INDEX_SUFFIX} is there")
    try:
        with safe_open(str(single), framework="pt") as f:
            keys = list(f.keys())
    except (SafetensorError, OSError, ValueError) as e:
        raise TernaryFormatError(f"{single}: not a readable safetensors file (truncated or corrupt?): {e}") from e
    return {k: single for k in keys}, False


def _folder_header(directory: Path, key_files: dict[str, Path], verify: bool = False) -> dict:
    """The header of the folder's first shard (every shard carries the same one), checksummed with ``verify``."""
    files = sorted(set(key_files.values()))
    if not files:
        raise TernaryFormatError(f"{directory}: the weights hold no tensor")
    try:
        with safe_open(str(files[0]), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise TernaryFormatError(f"{files[0]}: not a readable safetensors file (truncated or corrupt?): {e}") from e
    if verify:
        check_header_crc(metadata, files[0])
    return parse_header(metadata, files[0])


def read_folder_header(directory: str | os.PathLike, weights_name: str = WEIGHTS_NAME) -> dict:
    """The torch-ternary header of a folder written by :func:`save_quantized_folder` or ``save_pretrained``.

    Every shard carries the same header; this reads (and validates) the first one.
    """
    return _folder_header(Path(directory), folder_files(directory, weights_name)[0])


def load_quantized_folder(
    model: nn.Module, directory: str | os.PathLike, device: torch.device | str = "cpu", verify: bool = True,
    weights_name: str = WEIGHTS_NAME,
) -> nn.Module:
    """:func:`~torch_ternary.format.load_quantized` for a folder from :func:`save_quantized_folder` / ``save_pretrained``.

    Same checks, errors and guarantee (a failed load leaves ``model`` as it was); ``model`` may be built
    on ``meta``; diffusers is not needed. Raises TernaryFormatError also for an index that names a shard
    outside the folder or a missing one.
    """
    directory = Path(directory)
    key_files, _ = folder_files(directory, weights_name)
    header = _folder_header(directory, key_files, verify)
    return load_checkpoint(model, header, key_files, directory, device, verify)
