"""Save and load a ternary model as one safetensors file (format version 1). Spec: docs/format.md.

A file holds, for every ternary weight ``name``: ``name + ".ternary_codes"`` (uint8: the 2-bit
layout ``[N, Kp/4]`` or the base-3 stream ``[ceil(N*K/5)]``) and ``name + ".ternary_scale"``
(float32 ``[S_n, S_k]``); every other state-dict tensor under its own name; and a JSON header
in the safetensors metadata (:mod:`.header`). Nothing is ever unpickled.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from ..errors import TernaryFormatError
from .header import check_header_crc, file_metadata, parse_header
from .loading import load_checkpoint
from .state_dict import model_config, plan_state_dict, unwrap_compiled
from .streaming import write_safetensors_streaming


def save_quantized(model: nn.Module, path: str | os.PathLike, codec: str = "base3") -> Path:
    """Write ``model`` (ternary weights and everything else in its state dict) to one safetensors file.

    Tensors are encoded and written one at a time; the file is written under a fresh temporary name in
    the same folder, fsynced and renamed over ``path`` (the folder fsynced): a reader sees the old file or
    the new one, never a part. A compiled model (``torch.compile(model)``) is saved as the module it wraps.

    Args:
        model: the (ternarized) module; no tensor on meta.
        path: destination ``.safetensors`` file.
        codec: ``"base3"`` (default, 1.6 bits a weight) or ``"2bit"``.

    Returns:
        The path written.
    """
    path = Path(path)
    inner = unwrap_compiled(model)
    plan = plan_state_dict(inner.state_dict(keep_vars=True), codec)
    header = plan.header(codec, model_config(inner), type(inner).__name__)
    write_safetensors_streaming([(path, plan.entries)], lambda crcs: file_metadata(header, crcs))
    return path


def _open_metadata(path: Path) -> tuple[dict, list[str]]:
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    if not path.is_file():
        raise TernaryFormatError(f"{path} is not a file (a folder? load it with load_quantized_folder)")
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}, list(f.keys())
    except (SafetensorError, OSError, ValueError) as e:
        raise TernaryFormatError(f"{path}: not a readable safetensors file (truncated or corrupt?): {e}") from e


def read_header(path: str | os.PathLike) -> dict:
    """The torch-ternary header of a file, fully validated (:func:`~.header.parse_header`).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        TernaryFormatError: not a readable safetensors file, no or a malformed header, a newer version.
    """
    path = Path(path)
    return parse_header(_open_metadata(path)[0], path)


def load_quantized(
    model: nn.Module, path: str | os.PathLike, device: torch.device | str = "cpu", verify: bool = True
) -> nn.Module:
    """Load a file written by :func:`save_quantized` into ``model``, in place.

    ``model`` may be built on ``meta`` (``with torch.device("meta"): model = Cls(config)``): ternary
    weights are built straight from the packed data, so no dense weight is ever materialized. The header
    (config included) and every stored tensor's dtype and shape are checked against the model first,
    then every tensor is read, validated and placed on ``device``, and only then assigned: on any
    error the model is left bit for bit as it was. A compiled model loads into the module it wraps.

    Args:
        model: a module of the architecture that was saved (dense, ternarized, or on meta), of the file's dtypes.
        path: a ``.safetensors`` file from :func:`save_quantized`.
        device: where the loaded tensors go (``cpu`` or ``cuda``).
        verify: check the CRC32 of the header and of every tensor (a full read; disable only for trusted files:
            then a flipped bit in dense data, or an edit of the header that keeps it consistent, goes unnoticed;
            invalid ternary codes, NaN scales and inconsistent headers are still refused).

    Returns:
        ``model``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        TernaryFormatError: truncated, corrupt, malformed, foreign or newer-version file.
        ArchitectureMismatchError: the file's tensors (names, shapes, dtypes) do not fit ``model``.
        UnsupportedDeviceError: a device other than CPU / CUDA, or CUDA without a GPU.
    """
    path = Path(path)
    metadata, keys = _open_metadata(path)
    if verify:
        check_header_crc(metadata, path)
    header = parse_header(metadata, path)
    return load_checkpoint(model, header, {k: path for k in keys}, path, device, verify)
