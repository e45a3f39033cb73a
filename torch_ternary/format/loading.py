"""Loading a ternary checkpoint into a model, shared by the single-file and the folder loader."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from ..errors import ArchitectureMismatchError, TernaryFormatError
from ..quantization.config import TernaryConfig
from ..tensor import TernaryTensor
from .codes import ternary_from_stored
from .header import CODES_SUFFIX, SCALE_SUFFIX, check_crc


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


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    module_name, _, attr = name.rpartition(".")
    return (model.get_submodule(module_name) if module_name else model), attr


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
