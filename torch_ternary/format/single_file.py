"""Save and load a ternary model as one safetensors file (format version 1). Spec: docs/format.md.

A file holds, for every ternary weight ``name``: ``name + ".ternary_codes"`` (uint8: the 2-bit
layout ``[N, Kp/4]`` or the base-3 stream ``[ceil(N*K/5)]``) and ``name + ".ternary_scale"``
(float32 ``[S_n, S_k]``); every other state-dict tensor under its own name; and a JSON header
in the safetensors metadata (:mod:`.header`). Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from ..errors import TernaryFormatError
from ..tensor import check_device
from .atomic import atomic_write
from .header import HEADER_KEY, parse_header
from .loading import _load_into
from .state_dict import quantized_state_dict


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
