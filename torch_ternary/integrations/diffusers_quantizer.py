"""The torch-ternary diffusers quantizer: quantize while loading, save ternary, reload with no config.

::

    import torch, torch_ternary
    from diffusers import FluxTransformer2DModel

    # a dense (bf16) diffusers folder, quantized shard by shard while it loads
    model = FluxTransformer2DModel.from_pretrained(path, quantization_config=torch_ternary.TernaryConfig(),
                                                   torch_dtype=torch.bfloat16)
    model.save_pretrained("flux-ternary")                     # ternary safetensors + config.json
    model = FluxTransformer2DModel.from_pretrained("flux-ternary", torch_dtype=torch.bfloat16)  # no config

    # or: ternarize a loaded model with quantize_, then diffusers' own save_pretrained writes the same format
    torch_ternary.quantize_(dense_model, torch_ternary.TernaryConfig())
    dense_model.save_pretrained("flux-ternary")             # (a pipeline's save_pretrained too)

    # a whole pipeline: either form of PipelineQuantizationConfig
    pipe = FluxPipeline.from_pretrained(path, quantization_config=PipelineQuantizationConfig(
        quant_mapping={"transformer": torch_ternary.TernaryConfig()}))
    pipe = FluxPipeline.from_pretrained(path, quantization_config=PipelineQuantizationConfig(
        quant_backend="torch_ternary", quant_kwargs={"codec": "base3"}, components_to_quantize=["transformer"]))

Needs diffusers >= 0.39.0 (:data:`~.registration.MIN_DIFFUSERS`; the hook -> version table is in
:mod:`.registration` and docs/diffusers.md).

``quantize_`` then ``save_pretrained``: diffusers saves through ``model.hf_quantizer`` only, which
``from_pretrained`` sets. :func:`attach_quantizer`, a post-quantize hook the registration adds to
:func:`torch_ternary.quantization.quantize.register_post_quantize_hook`, gives a diffusers model
ternarized by ``quantize_`` what ``from_pretrained(..., quantization_config=...)`` would have given it:
an ``hf_quantizer``, ``is_quantized``, and ``quantization_config`` in its config (so ``config.json``
says ``"quant_method": "torch_ternary"`` and ``from_pretrained(folder)`` reloads it ternary, with no config).

Two config classes, and why: ``TernaryConfig`` (what ``quantize_`` takes) is a frozen, diffusers-free
dataclass whose ``to_dict`` is stored verbatim in every file header, so it cannot carry diffusers'
``QuantizationConfigMixin`` API (``quant_method`` in ``to_dict``, ``from_dict`` accepting it) nor the
file-level choices a diffusers folder needs (``codec`` of ``save_pretrained``; the ``torch_dtype`` to
reload with). :class:`TernaryQuantizationConfig` is that thin diffusers-side wrapper: it holds a
``TernaryConfig`` plus ``codec`` and ``torch_dtype``, and is what ``config.json`` stores. Passing a
plain ``TernaryConfig`` to ``from_pretrained`` works too (it is wrapped with ``codec="base3"``), and so
does it in ``PipelineQuantizationConfig(quant_mapping=...)``; ``quant_backend="torch_ternary"`` builds a
:class:`TernaryQuantizationConfig` from ``quant_kwargs``.

Memory: diffusers hands the quantizer each shard as a dict of memory-mapped tensors; touching them all
would make the whole shard (10 GB for FLUX.1-dev) resident. :meth:`maybe_update_state_dict` replaces it
with a lazy mapping that reads one tensor at a time with ``pread`` (safetensors' ``backend="pread"``),
so a dense weight lives only until it is ternarized and peak memory is the ternary model plus one layer.
"""

from __future__ import annotations

import copy
import json
import sys
import warnings
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import torch
from diffusers.quantizers.base import DiffusersQuantizer
from diffusers.quantizers.quantization_config import QuantizationConfigMixin
from torch import nn

from ..errors import ArchitectureMismatchError, TernaryConfigError, TernaryFormatError
from ..format.codes import ternary_from_stored
from ..format.folder import quantization_config_dict
from ..format.header import (
    _DTYPES,
    CODECS,
    CODES_SUFFIX,
    FORMAT_VERSION,
    SCALE_SUFFIX,
    check_crc,
    check_header_crc,
    file_metadata,
    parse_header,
)
from ..format.memory import release_freed_memory
from ..format.state_dict import flatten_state_dict
from ..quantization.absmean import check_weight
from ..quantization.config import TernaryConfig
from ..quantization.quantize import select_linears
from ..tensor import TernaryTensor
from .quant_method import QUANT_METHOD, AcceptsTernaryConfig, TernaryQuantizationMethod  # noqa: F401

# ``DiffusersAutoQuantizer.from_config`` reads ``quantization_config.quant_method`` to pick the
# quantizer, so a plain TernaryConfig passed to ``from_pretrained`` needs one too (a class attribute:
# not a dataclass field, so TernaryConfig's fields, equality and to_dict are unchanged).
TernaryConfig.quant_method = QUANT_METHOD


class TernaryQuantizationConfig(QuantizationConfigMixin, metaclass=AcceptsTernaryConfig):
    """diffusers-side config: a :class:`TernaryConfig` plus the file choices of ``save_pretrained``.

    A plain ``TernaryConfig`` counts as an instance (``isinstance(TernaryConfig(), TernaryQuantizationConfig)``
    is True): that is what ``PipelineQuantizationConfig(quant_mapping=...)`` checks (see
    :class:`~.quant_method.AcceptsTernaryConfig`); use :func:`as_quantization_config` to get a real one.

    Args:
        config: the :class:`TernaryConfig` (what to ternarize and how); or give its fields as keywords.
        codec: ``"base3"`` (default; 1.6 bits a weight) or ``"2bit"``: how ``save_pretrained`` stores codes.
        torch_dtype: dtype name (``"bfloat16"``) recorded at quantization; ``from_pretrained`` on the saved
            folder uses it when no ``torch_dtype`` is passed. Set automatically.
        format_version: the format version the folder was written in (checked on load).
        **fields: ``TernaryConfig`` fields (``granularity``, ``group_size``, ``preset``, ``include``, ...).

    Raises:
        TernaryConfigError: unknown fields, bad values, or a foreign ``quant_method``.
        TernaryFormatError: a ``format_version`` newer than this library reads.
    """

    def __init__(self, config: TernaryConfig | None = None, codec: str = "base3", torch_dtype: str | None = None,
                 format_version: int = FORMAT_VERSION, quant_method: str = QUANT_METHOD.value, **fields):
        if quant_method != QUANT_METHOD.value:
            raise TernaryConfigError(f"quant_method must be {QUANT_METHOD.value!r}, got {quant_method!r}")
        if config is not None and fields:
            raise TernaryConfigError("give either a TernaryConfig or its fields, not both")
        if config is not None and not isinstance(config, TernaryConfig):
            raise TernaryConfigError(f"config must be a TernaryConfig, got {type(config).__name__}")
        if codec not in CODECS:
            raise TernaryConfigError(f"codec must be one of {CODECS}, got {codec!r}")
        if isinstance(torch_dtype, torch.dtype):
            torch_dtype = str(torch_dtype).removeprefix("torch.")
        if torch_dtype is not None and torch_dtype not in _DTYPES:
            raise TernaryConfigError(f"torch_dtype must be one of {sorted(_DTYPES)} or None, got {torch_dtype!r}")
        if not isinstance(format_version, int) or format_version < 1:
            raise TernaryFormatError(f"invalid format_version {format_version!r}")
        if format_version > FORMAT_VERSION:
            raise TernaryFormatError(
                f"this ternary model was written in format version {format_version}; this torch-ternary reads up to "
                f"version {FORMAT_VERSION} (upgrade it)"
            )
        self.quant_method = QUANT_METHOD
        self.ternary = config if config is not None else TernaryConfig.from_dict(fields)
        self.codec = codec
        self.torch_dtype = torch_dtype
        self.format_version = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        """What ``config.json`` stores under ``quantization_config``."""
        return quantization_config_dict(self.ternary, self.codec, self.torch_dtype)

    def to_json_string(self, use_diff: bool = True) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def __iter__(self):
        yield from self.to_dict().items()

    def __eq__(self, other):
        return _is_quantization_config(other) and self.to_dict() == other.to_dict()

    __hash__ = None


def _is_quantization_config(obj) -> bool:
    """A real :class:`TernaryQuantizationConfig` (the metaclass makes ``isinstance`` accept a ``TernaryConfig`` too)."""
    return type.__instancecheck__(TernaryQuantizationConfig, obj)


def as_quantization_config(config) -> TernaryQuantizationConfig:
    """A (fresh) :class:`TernaryQuantizationConfig` from one, from a ``TernaryConfig``, or from a dict."""
    if isinstance(config, TernaryConfig):
        return TernaryQuantizationConfig(config)
    if _is_quantization_config(config):
        return copy.deepcopy(config)
    if isinstance(config, dict):
        return TernaryQuantizationConfig(**config)
    raise TernaryConfigError(f"expected a TernaryConfig or TernaryQuantizationConfig, got {type(config).__name__}")


def _open_pread(path: str):
    from safetensors import safe_open

    try:
        return safe_open(path, framework="pt", backend="pread").__enter__()
    except TypeError:  # safetensors < 0.8 has no pread backend: fall back to its memory map
        return safe_open(path, framework="pt").__enter__()


class _LazyShard(MutableMapping):
    """One checkpoint shard as diffusers iterates it, each tensor read from disk only when asked for.

    Keys are model state-dict names: for a ternary checkpoint, ``<name>.ternary_codes`` /
    ``<name>.ternary_scale`` pairs appear as the single key ``<name>`` whose value is the
    :class:`TernaryTensor` (its two parts may sit in different shards).
    """

    def __init__(self, quantizer: TernaryDiffusersQuantizer, source: dict):
        self._q, self._source = quantizer, source
        header = quantizer._header
        keys = []
        for k in source:
            if header is not None and k.endswith(SCALE_SUFFIX) and k[: -len(SCALE_SUFFIX)] in header["ternary"]:
                continue  # listed with its codes
            if header is not None and k.endswith(CODES_SUFFIX) and k[: -len(CODES_SUFFIX)] in header["ternary"]:
                keys.append(k[: -len(CODES_SUFFIX)])
            else:
                keys.append(k)
        self._keys = dict.fromkeys(keys)

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._keys:
            raise KeyError(key)
        return self._q._read(key, self._source)

    def __iter__(self):
        return iter(list(self._keys))

    def __len__(self) -> int:
        return len(self._keys)

    def __delitem__(self, key: str) -> None:
        del self._keys[key]

    def __setitem__(self, key, value):
        raise TypeError("a streamed checkpoint shard is read-only")


class TernaryDiffusersQuantizer(DiffusersQuantizer):
    """diffusers quantizer for torch-ternary (``quant_method="torch_ternary"``).

    * quantize on load (``pre_quantized=False``): every ``nn.Linear`` weight the ``TernaryConfig``
      selects (FLUX preset for ``FluxTransformer2DModel``) is ternarized as its shard streams in;
    * pre-quantized (a folder with ``quant_method: torch_ternary`` in ``config.json``): ternary weights
      are rebuilt from their stored codes and scales, every tensor's CRC32 checked.
    """

    requires_calibration = False
    required_packages = None
    use_keep_in_fp32_modules = False
    #: show a tqdm bar over the layers ternarized while loading (the CLI turns it on)
    show_progress = False

    def __init__(self, quantization_config, **kwargs):
        super().__init__(as_quantization_config(quantization_config), **kwargs)
        self._header: dict | None = None
        self._key_files: dict[str, str] = {}
        self._handles: dict[str, Any] = {}
        self._selected: set[str] = set()
        self._class_name = "Module"
        self._where = "checkpoint"
        self._bar = None

    # ------------------------------------------------------------------ set-up
    def update_torch_dtype(self, torch_dtype):
        recorded = self.quantization_config.torch_dtype
        if torch_dtype is None and self.pre_quantized and recorded is not None:
            return _DTYPES[recorded]
        if not self.pre_quantized and torch_dtype is not None:
            self.quantization_config.torch_dtype = str(torch_dtype).removeprefix("torch.")
        return torch_dtype

    def maybe_update_loaded_keys(self, loaded_keys: list[str], checkpoint_files: list) -> list[str]:
        from safetensors import SafetensorError, safe_open

        files = [str(f) for f in checkpoint_files if isinstance(f, (str, Path)) and str(f).endswith(".safetensors")]
        if files:
            self._where = str(Path(files[0]).parent)
        metadata = None
        for path in files:
            try:
                with safe_open(path, framework="pt") as f:
                    for k in f.keys():  # noqa: SIM118  (a safetensors handle, not a dict)
                        self._key_files[k] = path
                    if metadata is None:
                        metadata = f.metadata() or {}
            except (SafetensorError, OSError, ValueError) as e:
                raise TernaryFormatError(f"{path}: not a readable safetensors file (truncated or corrupt?): {e}") from e
        if not self.pre_quantized:
            return loaded_keys
        if metadata is None:
            raise TernaryFormatError(f"{self._where}: a torch-ternary model must be stored as safetensors")
        check_header_crc(metadata, files[0])
        header = parse_header(metadata, files[0])
        if header["codec"] != self.quantization_config.codec:
            # config.json and the weights disagree: the weights' own header wins
            self.quantization_config.codec = header["codec"]
        self._header = header
        keys = []
        for k in loaded_keys:
            for suffix in (CODES_SUFFIX, SCALE_SUFFIX):
                if k.endswith(suffix) and k[: -len(suffix)] in header["ternary"]:
                    k = k[: -len(suffix)]
            keys.append(k)
        for name in header["ternary"]:
            for part in (CODES_SUFFIX, SCALE_SUFFIX):
                if name + part not in self._key_files:
                    raise TernaryFormatError(f"{self._where}: ternary weight {name!r} has no stored {part[1:]}")
        keys.extend(header["aliases"])
        return list(dict.fromkeys(keys))

    def _process_model_before_weight_loading(self, model, device_map=None, keep_in_fp32_modules=(), **kwargs):
        self._class_name = type(model).__name__
        self.modules_to_not_convert = list(keep_in_fp32_modules or [])
        if isinstance(device_map, dict):  # weights offloaded to disk stay dense
            self.modules_to_not_convert += [k for k, v in device_map.items() if v == "disk"]
        if self.pre_quantized:
            expected = dict(model.state_dict(keep_vars=True))
            for name, layer in self._header["ternary"].items():
                if name not in expected:
                    raise ArchitectureMismatchError(
                        f"{self._where}: ternary weight {name!r} is not a parameter of {self._class_name}"
                    )
                if tuple(layer["shape"]) != tuple(expected[name].shape):
                    raise ArchitectureMismatchError(
                        f"{self._where}: {name} is {tuple(layer['shape'])} in the file, "
                        f"{tuple(expected[name].shape)} in the model"
                    )
        else:
            chosen, _ = select_linears(model, self.quantization_config.ternary)
            self._selected = {
                f"{name}.weight" for name in chosen
                if not any(name == m or name.startswith(m + ".") for m in self.modules_to_not_convert)
            }
            if self.show_progress:
                from ..format.streaming import _progress

                self._bar = _progress(len(self._selected), "Ternarizing", True, unit="layer")
        # The item itself (not only the attribute): from_pretrained re-registers the config afterwards.
        model.register_to_config(quantization_config=self.quantization_config)
        return model

    # ------------------------------------------------------------------ loading
    def maybe_update_state_dict(self, state_dict: dict) -> MutableMapping:
        return _LazyShard(self, state_dict)

    @property
    def supports_parallel_loading(self) -> bool:
        return False  # the lazy reader keeps per-file handles; shards are read one after the other

    def _get(self, key: str, source: dict) -> torch.Tensor:
        path = self._key_files.get(key)
        if path is None:
            return source[key]
        if path not in self._handles:
            self._handles[path] = _open_pread(path)
        return self._handles[path].get_tensor(key)

    def _read(self, key: str, source: dict) -> torch.Tensor:
        header = self._header
        if key in self._selected or (header is not None and key in header["ternary"]):
            release_freed_memory()  # the previous layer's dense copy / decode buffers are free by now
        try:
            if header is not None and key in header["ternary"]:
                codes = self._get(key + CODES_SUFFIX, source)
                scale = self._get(key + SCALE_SUFFIX, source)
                check_crc(codes, key + CODES_SUFFIX, header, self._where)
                check_crc(scale, key + SCALE_SUFFIX, header, self._where)
                return ternary_from_stored(codes, scale, key, header, self._where)
            t = self._get(key, source)
        except (OSError, RuntimeError) as e:
            raise TernaryFormatError(f"{self._where}: cannot read tensor {key!r} (truncated or corrupt?): {e}") from e
        if header is not None:
            check_crc(t, key, header, self._where)
        if key not in self._selected and t.data_ptr() % 64:
            # an aligned copy: CPU GEMMs on unaligned data take other code paths (different rounding)
            t = t.clone()
        return t

    def _close(self) -> None:
        for h in self._handles.values():
            h.__exit__(None, None, None)
        self._handles.clear()
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def check_if_quantized_param(self, model, param_value, param_name: str, state_dict, **kwargs) -> bool:
        if isinstance(param_value, TernaryTensor):
            return True
        return not self.pre_quantized and param_name in self._selected

    def create_quantized_param(self, model, param_value, param_name: str, target_device, state_dict,
                               unexpected_keys=None, **kwargs):
        """Set ``param_name`` to a ternary parameter.

        Args:
            param_value: the dense weight (floating ``[N, K]``, already in the load dtype) or, for a
                ternary checkpoint, the rebuilt :class:`TernaryTensor`.
            target_device: where the parameter goes (``"cpu"``, a CUDA index or device).
        """
        module_name, _, attr = param_name.rpartition(".")
        module = model.get_submodule(module_name) if module_name else model
        device = torch.device(f"cuda:{target_device}" if isinstance(target_device, int) else target_device)
        if isinstance(param_value, TernaryTensor):
            weight = param_value.to(device)
        else:
            check_weight(param_value, param_name)
            cfg = self.quantization_config.ternary
            weight = TernaryTensor.from_float(param_value.to(device), cfg.granularity, cfg.group_size,
                                              activations=cfg.activations)
            del param_value
            release_freed_memory()  # see its docstring: without it glibc keeps GBs of freed dense weights
            if self._bar is not None:
                self._bar.update(1)
        module._parameters[attr] = nn.Parameter(weight, requires_grad=False)

    def update_missing_keys(self, model, missing_keys: list[str], prefix: str) -> list[str]:
        if self._header is None:
            return missing_keys
        return [k for k in missing_keys if k not in self._header["aliases"]]

    def _process_model_after_weight_loading(self, model, **kwargs):
        self._close()
        if self.pre_quantized:
            header = self._header
            for name, target in header["aliases"].items():
                owner_name, _, attr = name.rpartition(".")
                owner = model.get_submodule(owner_name) if owner_name else model
                t_owner_name, _, t_attr = target.rpartition(".")
                t_owner = model.get_submodule(t_owner_name) if t_owner_name else model
                if t_attr in t_owner._parameters:
                    owner._parameters[attr] = t_owner._parameters[t_attr]
                else:
                    owner._buffers[attr] = t_owner._buffers[t_attr]
            if header.get("config") is not None:
                self.quantization_config.ternary = TernaryConfig.from_dict(header["config"])
            meta = [n for n, p in model.named_parameters() if p.device.type == "meta"]
            if meta and not getattr(model, "hf_device_map", None):
                raise ArchitectureMismatchError(f"{self._where}: {len(meta)} parameters are not in the checkpoint: {meta[:5]}")
        model._torch_ternary_config = self.quantization_config.ternary
        return model

    # ------------------------------------------------------------------ saving
    def get_state_dict_and_metadata(self, state_dict: dict, safe_serialization: bool = False):
        """Flatten ternary weights to ``.ternary_codes`` / ``.ternary_scale`` tensors plus the header (docs/format.md)."""
        if not safe_serialization:
            raise TernaryFormatError("torch-ternary models are saved as safetensors only: use safe_serialization=True")
        tensors, header = flatten_state_dict(state_dict, self.quantization_config.codec,
                                             config=self.quantization_config.ternary, class_name=self._class_name)
        return tensors, file_metadata(header, header.pop("crc32"))  # the header and its own CRC32, as every writer

    @property
    def is_serializable(self) -> bool:
        return True

    @property
    def supports_safetensors_serialization(self) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return True  # gradients reach activations, biases, scales and adapters (LoRA); the codes stay fixed

    @property
    def is_compileable(self) -> bool:
        return True

    def get_cuda_warm_up_factor(self):
        return 8

    def _dequantize(self, model):
        for module in model.modules():
            if isinstance(module, nn.Linear) and isinstance(module.weight, TernaryTensor):
                module.weight = nn.Parameter(module.weight.dequantize(), requires_grad=True)
        if hasattr(model, "_torch_ternary_config"):
            del model._torch_ternary_config
        # the model is dense again: config.json must not say torch_ternary any more, or the saved folder
        # would not reload (diffusers removes hf_quantizer and resets is_quantized itself). The config is
        # a FrozenDict rebuilt the way register_to_config does.
        config = getattr(model, "_internal_dict", None)
        if config is not None and "quantization_config" in config:
            from diffusers.configuration_utils import FrozenDict

            model._internal_dict = FrozenDict({k: v for k, v in config.items() if k != "quantization_config"})
        if hasattr(model, "quantization_method"):
            del model.quantization_method
        return model


# ---------------------------------------------------------------------- quantize_ -> save_pretrained
def _dtype_name(dtype) -> str | None:
    name = str(dtype).removeprefix("torch.")
    return name if name in _DTYPES else None


def attach_quantizer(model: nn.Module, config: TernaryConfig | None, codec: str | None = None, **info) -> None:
    """Post-quantize hook: make a ternarized diffusers model save and reload like a quantized-on-load one.

    Registered by :func:`~.registration.register_into_diffusers`; called by ``quantize_`` (and by code
    that loads ternary weights into a model). For a diffusers ``ModelMixin`` holding at least one
    :class:`TernaryTensor` parameter it sets ``model.hf_quantizer`` (a :class:`TernaryDiffusersQuantizer`
    whose config is ``config``), ``is_quantized``, ``quantization_method`` and the ``quantization_config``
    item of the model's config, replacing a ternary quantizer the model already had (so its config is
    never stale). Any other module is left alone, and so is a model quantized by another method.

    Args:
        model: the module just ternarized (or a ``torch.compile`` wrapper of it).
        config: the ``TernaryConfig`` it was ternarized with (None: the model's recorded one, else the default).
        codec: how ``save_pretrained`` stores codes; default: that of the model's ternary quantizer, else ``"base3"``.
    """
    modeling_utils = sys.modules.get("diffusers.models.modeling_utils")
    if modeling_utils is None:  # not imported: the model cannot be a diffusers model
        return
    target = getattr(model, "_orig_mod", model)
    if not isinstance(target, modeling_utils.ModelMixin) or not any(isinstance(p, TernaryTensor) for p in target.parameters()):
        return
    existing = getattr(target, "hf_quantizer", None)
    if existing is not None and not isinstance(existing, TernaryDiffusersQuantizer):
        warnings.warn(f"{type(target).__name__} is already quantized with "
                      f"{getattr(existing.quantization_config, 'quant_method', '?')}: save_pretrained goes through "
                      "that quantizer, not torch-ternary's", stacklevel=3)
        return
    if config is None:
        config = getattr(target, "_torch_ternary_config", None) or TernaryConfig()
    if codec is None:
        codec = existing.quantization_config.codec if existing is not None else "base3"
    quantizer = TernaryDiffusersQuantizer(
        TernaryQuantizationConfig(config, codec=codec, torch_dtype=_dtype_name(target.dtype)),
        pre_quantized=existing.pre_quantized if existing is not None else False,
    )
    quantizer._class_name = type(target).__name__
    target.hf_quantizer = quantizer
    target.is_quantized = True
    target.quantization_method = QUANT_METHOD
    target.register_to_config(quantization_config=quantizer.quantization_config)
