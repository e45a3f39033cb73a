"""Loading a ternary checkpoint into a model, shared by the single-file and the folder loader.

A load is a transaction with three phases, and only the last touches the model:

1. **check** (no tensor data read): every name the model expects is in the file and nothing else; every
   stored tensor's dtype and shape, as the file's own index gives them, is what the header and the model
   need (ternary codes and scales against the layer entry, dense tensors against the model's dtype and
   shape, aliases against the entry they stand for); a header that declares absurd sizes fails here;
2. **build**: read every tensor (CRC32-checked with ``verify``), validate ternary codes and scales, build
   the :class:`TernaryTensor` s, move everything to ``device`` and wrap parameters; out-of-memory or a
   device error fails here, still before the model changed;
3. **assign**: put the new tensors in place (dict assignments, which cannot fail).

A failed load therefore leaves the model bit for bit as it was.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from ..errors import ArchitectureMismatchError, TernaryFormatError, UnsupportedDeviceError
from ..quantization.quantize import run_post_quantize_hooks
from ..tensor import TernaryTensor, check_device
from .codes import check_stored_layout, ternary_from_stored
from .header import CODES_SUFFIX, DTYPES, SCALE_SUFFIX, check_crc, header_config
from .state_dict import unwrap_compiled
from .streaming import TORCH_DTYPES


class StoredTensors:
    """The stored tensors of a checkpoint (one file, or a folder's shards): dtype and shape from each file's
    own index without reading data, data on demand. One open handle per file, closed on exit.

    Args:
        key_files: stored key -> the file holding it.
        where: file or folder named in errors.
    """

    def __init__(self, key_files: dict[str, Path], where):
        self.key_files, self.where, self.handles = key_files, where, {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.handles.values():
            h.__exit__(None, None, None)
        self.handles.clear()

    def _handle(self, key: str):
        file = self.key_files.get(key)
        if file is None:
            raise TernaryFormatError(f"{self.where}: tensor {key!r} is in no file")
        if file not in self.handles:
            try:
                self.handles[file] = safe_open(str(file), framework="pt").__enter__()
            except (SafetensorError, OSError, ValueError) as e:
                raise TernaryFormatError(f"{file}: not a readable safetensors file (truncated or corrupt?): {e}") from e
        return self.handles[file]

    def layout(self, key: str) -> tuple[torch.dtype, tuple[int, ...]]:
        """``(dtype, shape)`` of stored tensor ``key``, from the file's index (nothing read)."""
        try:
            sl = self._handle(key).get_slice(key)
            st_dtype, shape = sl.get_dtype(), tuple(int(s) for s in sl.get_shape())
        except (SafetensorError, OSError, ValueError) as e:
            raise TernaryFormatError(f"{self.where}: tensor {key!r} cannot be read: {e}") from e
        if st_dtype not in TORCH_DTYPES:
            raise TernaryFormatError(f"{self.where}: tensor {key!r} has dtype {st_dtype}, which torch-ternary never stores")
        return TORCH_DTYPES[st_dtype], shape

    def read(self, key: str, header: dict, verify: bool) -> torch.Tensor:
        """The data of stored tensor ``key`` (CRC32-checked against ``header`` when ``verify``)."""
        try:
            t = self._handle(key).get_tensor(key)
        except (SafetensorError, OSError, ValueError) as e:
            raise TernaryFormatError(f"{self.where}: cannot read tensor {key!r} (truncated or corrupt?): {e}") from e
        if verify:
            check_crc(t, key, header, self.where)
        # Tensors read at unaligned file offsets make CPU GEMMs take other code paths (different
        # summation order); an aligned copy keeps outputs bit-identical to the saved model's.
        return t.clone() if t.data_ptr() % 64 else t


def _owner(model: nn.Module, name: str, where) -> tuple[nn.Module, str, bool]:
    """``(module, attribute, is_parameter)`` holding state-dict entry ``name``."""
    module_name, _, attr = name.rpartition(".")
    try:
        owner = model.get_submodule(module_name) if module_name else model
    except AttributeError as e:  # pragma: no cover - state_dict names always resolve
        raise ArchitectureMismatchError(f"{where}: {name} is not an entry of this model") from e
    return owner, attr, attr in owner._parameters


def _check_names(where, header: dict, expected: dict, plain: set[str]) -> None:
    in_file = set(header["ternary"]) | set(header["aliases"]) | plain
    missing = sorted(set(expected) - in_file)
    unexpected = sorted(in_file - set(expected))
    if missing or unexpected:
        raise ArchitectureMismatchError(
            f"{where} (saved from {header['architecture'].get('class')}) does not fit this model: "
            f"{len(missing)} missing tensors {missing[:5]}, {len(unexpected)} unexpected {unexpected[:5]}"
        )


def _fits(where, name: str, what: str, dtype: torch.dtype, shape, model_t: torch.Tensor) -> None:
    if tuple(shape) != tuple(model_t.shape):
        raise ArchitectureMismatchError(f"{where}: {name} is {tuple(shape)} {what}, {tuple(model_t.shape)} in the model")
    if dtype != model_t.dtype:
        raise ArchitectureMismatchError(
            f"{where}: {name} is {dtype} {what}, {model_t.dtype} in the model (build the model in the file's dtype, "
            f"e.g. model.to({dtype}) before loading, also on meta)"
        )


def check_checkpoint(model: nn.Module, header: dict, files: StoredTensors, where) -> dict[str, tuple]:
    """Phase 1: check a parsed header and the stored tensors' layouts against ``model``; read no data.

    Returns:
        name -> ``("ternary", None)`` / ``("dense", None)`` / ``("alias", target)`` for every entry of the model.

    Raises:
        ArchitectureMismatchError: names, shapes or dtypes that do not fit the model.
        TernaryFormatError: stored tensors that do not match the header (sizes included), missing parts.
    """
    expected = unwrap_compiled(model).state_dict(keep_vars=True)
    layers, aliases = header["ternary"], header["aliases"]
    parts = {name + s for name in layers for s in (CODES_SUFFIX, SCALE_SUFFIX)}
    plain = {k for k in files.key_files if k not in parts}
    both = sorted(plain & (set(layers) | set(aliases)))
    if both:
        raise TernaryFormatError(f"{where}: {both[:5]} are stored both as tensors and as ternary weights or aliases")
    _check_names(where, header, expected, plain)
    kinds: dict[str, tuple] = {}
    stored_layout: dict[str, tuple[torch.dtype, tuple]] = {}  # logical (dtype, shape) of each stored name
    for name, layer in layers.items():
        if not _owner(unwrap_compiled(model), name, where)[2]:
            raise ArchitectureMismatchError(f"{where}: {name} is a ternary weight in the file, a buffer in the model")
        for part in (CODES_SUFFIX, SCALE_SUFFIX):
            if name + part not in files.key_files:
                raise TernaryFormatError(f"{where}: ternary weight {name!r} has no stored {part[1:]}")
        check_stored_layout(name, layer, header["codec"], files.layout(name + CODES_SUFFIX),
                            files.layout(name + SCALE_SUFFIX), where)
        stored_layout[name] = (DTYPES[layer["dtype"]], tuple(layer["shape"]))
        _fits(where, name, "in the file", *stored_layout[name], expected[name])
        kinds[name] = ("ternary", None)
    for name in plain:
        stored_layout[name] = files.layout(name)
        _fits(where, name, "in the file", *stored_layout[name], expected[name])
        kinds[name] = ("dense", None)
    for name, target in aliases.items():
        if target not in stored_layout:
            raise TernaryFormatError(f"{where}: alias {name} -> {target} points at nothing stored")
        _fits(where, name, f"as an alias of {target}", *stored_layout[target], expected[name])
        if target in layers and not _owner(unwrap_compiled(model), name, where)[2]:
            raise ArchitectureMismatchError(f"{where}: alias {name} of ternary weight {target} is a buffer in the model")
        kinds[name] = ("alias", target)
    return kinds


def load_checkpoint(model: nn.Module, header: dict, key_files: dict[str, Path], where, device, verify: bool) -> nn.Module:
    """Load a parsed checkpoint into ``model`` (or the module a compiled ``model`` wraps): check, build, assign.

    Args:
        model: a module of the saved architecture (dense, ternarized, or on meta).
        header: the checkpoint's header, from :func:`~torch_ternary.format.header.parse_header`.
        key_files: stored key -> the file holding it.
        where: file or folder named in errors.
        device: where the loaded tensors go (``cpu`` or ``cuda``).
        verify: check the CRC32 of every tensor.

    Returns:
        ``model``.
    """
    check_device(device)
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UnsupportedDeviceError(f"cannot load onto {device}: this torch has no usable CUDA device")
    target = unwrap_compiled(model)
    config = header_config(header)
    with StoredTensors(key_files, where) as files:
        kinds = check_checkpoint(target, header, files, where)
        expected = target.state_dict(keep_vars=True)
        # phase 2: build everything, placed on the device, before the model is touched
        built: dict[str, torch.Tensor] = {}
        for name, (kind, _) in kinds.items():
            if kind == "ternary":
                codes = files.read(name + CODES_SUFFIX, header, verify)
                scale = files.read(name + SCALE_SUFFIX, header, verify)
                built[name] = ternary_from_stored(codes, scale, name, header, where).to(device)
            elif kind == "dense":
                built[name] = files.read(name, header, verify).to(device)
    placed: dict[tuple[int, bool], torch.Tensor] = {}  # one Parameter / buffer per stored tensor: ties survive
    assignments = []
    for name in expected:
        kind, alias_of = kinds[name]
        t = built[alias_of if kind == "alias" else name]
        owner, attr, is_param = _owner(target, name, where)
        key = (id(t), is_param)
        if key not in placed:
            if is_param:
                grad = expected[name].requires_grad and not isinstance(t, TernaryTensor)
                placed[key] = nn.Parameter(t, requires_grad=grad)
            else:
                placed[key] = t
        assignments.append((owner, attr, is_param, placed[key]))
    # phase 3: assign (nothing below can fail)
    for owner, attr, is_param, value in assignments:
        (owner._parameters if is_param else owner._buffers)[attr] = value
    if config is not None:
        target._torch_ternary_config = config
    if header["ternary"]:  # what quantize_ sets up after ternarizing (a diffusers model gets its quantizer)
        run_post_quantize_hooks(target, config, codec=header["codec"])
    return model


_load_into = load_checkpoint
