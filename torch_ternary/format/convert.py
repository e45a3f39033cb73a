"""Ternarize a plain safetensors state dict into a ternary file, one tensor at a time (no model needed)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from ..errors import TernaryFormatError
from ..quantization.absmean import check_weight, num_groups, resolve_group_size
from ..quantization.config import TernaryConfig
from ..tensor import TernaryTensor
from .codes import codes_shape, stored_ternary
from .header import CODECS, CODES_SUFFIX, HEADER_KEY, SCALE_SUFFIX, file_metadata, fingerprint, layer_entry, make_header
from .memory import release_freed_memory
from .streaming import _PREAD, TORCH_DTYPES, Planned, _progress, write_safetensors_streaming

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
    preset = config.preset
    if preset == "auto":
        keys = set(shapes)
        flux = all(k in keys for k in _FLUX_KEYS) and any(k.startswith("single_transformer_blocks.") for k in keys)
        preset = "flux" if flux else "all"
    handle = {}  # the pread handle of src while writing
    scales: dict[str, torch.Tensor] = {}  # a layer's scale, made with its codes, written right after them

    def read(key):
        t = handle["f"].get_tensor(key)
        return t.to(dtype) if dtype is not None and t.dtype.is_floating_point else t.contiguous()

    def ternary_codes(key):
        t = read(key)
        check_weight(t, key)
        tt = TernaryTensor.from_float(t, config.granularity, config.group_size, activations=config.activations)
        del t
        codes, scales[key], _ = stored_ternary(tt, codec)
        return codes

    entries, layers = [], {}
    params_total = params_ternary = 0
    for key, (shape, st_dtype) in shapes.items():
        if st_dtype not in TORCH_DTYPES:
            raise TernaryFormatError(f"{src}: tensor {key} has dtype {st_dtype}, which torch-ternary cannot store")
        t_dtype = TORCH_DTYPES[st_dtype]
        out_dtype = dtype if (dtype is not None and t_dtype.is_floating_point) else t_dtype
        numel = 1
        for s in shape:
            numel *= s
        params_total += numel
        module_name, _, attr = key.rpartition(".")
        if attr == "weight" and len(shape) == 2 and t_dtype.is_floating_point and min(shape) > 0:
            n, k = shape
            with torch.device("meta"):
                probe = nn.Linear(k, n, bias=False)
            if config.selects(module_name, probe, preset):
                g = resolve_group_size(config.granularity, config.group_size, k)
                s_rows = 1 if config.granularity == "per_tensor" else n
                entries.append(Planned(key + CODES_SUFFIX, torch.uint8, codes_shape(codec, n, k),
                                       lambda key=key: ternary_codes(key)))
                entries.append(Planned(key + SCALE_SUFFIX, torch.float32, [s_rows, num_groups(k, g)],
                                       lambda key=key: scales.pop(key)))
                layers[key] = layer_entry((n, k), out_dtype, g, config.activations)
                params_ternary += numel
                continue
        entries.append(Planned(key, out_dtype, shape, lambda key=key: read(key)))
    class_name = "FluxTransformer2DModel" if preset == "flux" and config.preset == "auto" else "safetensors state dict"
    header = make_header(codec, class_name, fingerprint({k: s for k, (s, _) in shapes.items()}), config, layers, {})
    bar = _progress(len(entries), f"Ternarizing {src.name}", progress)

    def written(entry):
        bar.update(1)
        if entry.key.endswith(SCALE_SUFFIX):
            release_freed_memory()  # the layer's dense weight and encoding buffers are free by now

    try:
        with safe_open(str(src), framework="pt", **_PREAD) as f:
            handle["f"] = f
            write_safetensors_streaming([(dst, entries)], lambda crcs: file_metadata(header, crcs), on_written=written)
    finally:
        bar.close()
    return {"tensors": len(shapes), "ternary_layers": len(layers), "params_ternary": params_ternary,
            "params_total": params_total, "bytes_in": src.stat().st_size, "bytes_out": dst.stat().st_size}
