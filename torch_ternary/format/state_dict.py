"""A model's state dict as a ternary file holds it: the one walk every writer shares.

:func:`plan_state_dict` walks a state dict once and says, before any data is touched, what a file
stores: for a :class:`TernaryTensor` ``name``, ``name.ternary_codes`` (uint8) and ``name.ternary_scale``
(float32); for any other tensor, itself; for an entry that is the same tensor as an earlier one (same
storage, offset, shape, strides and dtype: a tie), an alias. ``save_quantized``, ``save_quantized_folder``,
the diffusers quantizer's ``save_pretrained`` and :func:`payload_nbytes` all read that plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import TernaryFormatError
from ..quantization.config import TernaryConfig
from ..tensor import TernaryTensor
from .codes import codes_shape, stored_ternary
from .header import CODECS, CODES_SUFFIX, SCALE_SUFFIX, crc32, fingerprint, layer_entry, make_header
from .streaming import Planned


def unwrap_compiled(model: nn.Module) -> nn.Module:
    """The module ``torch.compile(model)`` wraps (its state dict has no ``_orig_mod.`` prefix); ``model`` otherwise."""
    while type(model).__name__ == "OptimizedModule" and isinstance(getattr(model, "_orig_mod", None), nn.Module):
        model = model._orig_mod
    return model


def _plain_key(t: torch.Tensor) -> tuple:
    return (t.device.type, t.device.index, t.data_ptr(), tuple(t.shape), tuple(t.stride()), t.dtype)


def storage_key(t: torch.Tensor) -> tuple:
    """What makes two state-dict entries the same tensor (a tie stored once): data pointer, shape, strides, dtype.

    A square ``w`` and ``w.t()`` share storage but not strides: they are two tensors. Meta and empty
    tensors have no data to share and are keyed by identity (tied parameters are one object).
    """
    if t.device.type == "meta" or t.numel() == 0:
        return ("id", id(t))
    if isinstance(t, TernaryTensor):
        return ("ternary", _plain_key(t.packed), _plain_key(t.scale), tuple(t.shape), t.dtype, t.group_size, t.activations)
    return _plain_key(t)


_storage_key = storage_key


@dataclass
class StatePlan:
    """What a ternary file of a state dict holds, known from shapes alone.

    Attributes:
        entries: the stored tensors in state-dict order (each :class:`~.streaming.Planned` can make its data).
        layers: ``header["ternary"]``: name -> layer entry, for every stored ternary weight.
        aliases: name -> the stored name it is tied to.
        shapes: logical shape of every state-dict entry (the architecture fingerprint).
    """

    entries: list[Planned] = field(default_factory=list)
    layers: dict[str, dict] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def header(self, codec: str, config: TernaryConfig | None, class_name: str) -> dict:
        """The file header (without CRC32s) of this plan."""
        return make_header(codec, class_name, fingerprint(self.shapes), config, self.layers, self.aliases)

    @property
    def nbytes(self) -> int:
        """Bytes of every stored tensor (the file, less its header)."""
        return sum(e.nbytes for e in self.entries)


def _cpu(t: torch.Tensor):
    return lambda: t.detach().cpu().contiguous()


def plan_state_dict(state_dict: dict[str, torch.Tensor], codec: str, need_data: bool = True) -> StatePlan:
    """Walk ``state_dict`` once: the stored tensors, ternary layer entries and aliases of its file.

    Args:
        state_dict: name -> tensor (``TernaryTensor`` or plain; ``keep_vars`` or detached).
        codec: ``"base3"`` or ``"2bit"``.
        need_data: refuse tensors on ``meta`` (True when the plan is to be written; False for sizes only).

    Raises:
        TernaryFormatError: unknown codec, a tensor on meta (with ``need_data``), a dtype files cannot hold.
    """
    if codec not in CODECS:
        raise TernaryFormatError(f"codec must be one of {CODECS}, got {codec!r}")
    plan, seen = StatePlan(), {}
    for name, t in state_dict.items():
        if need_data and t.device.type == "meta":
            raise TernaryFormatError(f"{name} is on meta: there is no data to save")
        plan.shapes[name] = tuple(t.shape)
        key = storage_key(t)
        if key in seen:
            plan.aliases[name] = seen[key]
            continue
        seen[key] = name
        if isinstance(t, TernaryTensor):
            n, k = t.shape
            plan.layers[name] = layer_entry((n, k), t.dtype, t.group_size, t.activations)
            plan.entries.append(Planned(name + CODES_SUFFIX, torch.uint8, codes_shape(codec, n, k),
                                        lambda t=t: stored_ternary(t, codec)[0]))
            plan.entries.append(Planned(name + SCALE_SUFFIX, torch.float32, t.scale.shape, _cpu(t.scale)))
        else:
            plan.entries.append(Planned(name, t.dtype, t.shape, _cpu(t)))
    return plan


def model_config(model: nn.Module) -> TernaryConfig | None:
    """The :class:`TernaryConfig` ``quantize_`` (or a load) recorded on ``model``, if any."""
    config = getattr(unwrap_compiled(model), "_torch_ternary_config", None)
    return config if isinstance(config, TernaryConfig) else None


def flatten_state_dict(
    state_dict: dict[str, torch.Tensor], codec: str = "base3", config: TernaryConfig | None = None,
    class_name: str = "Module",
) -> tuple[dict[str, torch.Tensor], dict]:
    """Turn a state dict holding :class:`TernaryTensor` values into plain tensors plus the JSON header.

    What the diffusers quantizer's ``save_pretrained`` writes; ternary weight ``name`` becomes
    ``name.ternary_codes`` (uint8, base-3 stream ``[ceil(N*K/5)]`` or 2-bit layout ``[N, Kp/4]``) and
    ``name.ternary_scale`` (float32 ``[S_n, S_k]``); ties become ``aliases`` (:func:`plan_state_dict`).

    Args:
        state_dict: name -> tensor (``TernaryTensor`` or plain; ``keep_vars`` or detached), none on meta.
        codec: ``"base3"`` or ``"2bit"``.
        config: the :class:`TernaryConfig` recorded in the header (or None).
        class_name: the model class recorded in the header.

    Returns:
        ``(tensors, header)``: contiguous CPU tensors by key, and the header dict (with CRC32s).
    """
    plan = plan_state_dict(state_dict, codec)
    tensors = {e.key: e.make() for e in plan.entries}
    header = plan.header(codec, config, class_name)
    header["crc32"] = {key: crc32(v) for key, v in tensors.items()}
    return tensors, header


def quantized_state_dict(model: nn.Module, codec: str = "base3") -> tuple[dict[str, torch.Tensor], dict]:
    """Plain tensors and the JSON header of ``model``'s ternary file (a compiled model: its original module's).

    Args:
        model: a module, ternarized or not (a model with no ternary weight is saved dense).
        codec: ``"base3"`` (1.6 bits a weight, smallest) or ``"2bit"`` (the in-memory layout).

    Returns:
        ``(tensors, header)``: contiguous CPU tensors by key, and the header dict.
    """
    inner = unwrap_compiled(model)
    return flatten_state_dict(inner.state_dict(keep_vars=True), codec, config=model_config(inner),
                              class_name=type(inner).__name__)


def payload_nbytes(model: nn.Module, codec: str = "base3") -> int:
    """Tensor bytes a :func:`~torch_ternary.format.save_quantized` file of ``model`` holds (header excluded; a few KB).

    Computed from shapes alone, so it works for a model on ``meta``.
    """
    return plan_state_dict(unwrap_compiled(model).state_dict(keep_vars=True), codec, need_data=False).nbytes
