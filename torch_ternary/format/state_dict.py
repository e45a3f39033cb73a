"""A model's state dict as a ternary file holds it: plain tensors plus the JSON header."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import TernaryFormatError
from ..quantization.config import TernaryConfig
from ..tensor import TernaryTensor
from .base3 import encoded_nbytes
from .codes import _stored_ternary
from .header import CODECS, CODES_SUFFIX, SCALE_SUFFIX, _crc32, _fingerprint, make_header


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
