"""Ternarize a plain safetensors state dict into a ternary file, one tensor at a time (no model needed)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from ..errors import TernaryFormatError
from ..quantization.config import TernaryConfig
from ..tensor import TernaryTensor
from . import packing
from .base3 import encoded_nbytes
from .codes import _stored_ternary
from .header import CODECS, CODES_SUFFIX, HEADER_KEY, SCALE_SUFFIX, _dtype_name, make_header
from .memory import release_freed_memory
from .streaming import _PREAD, _ST_DTYPES, _Planned, _progress, write_safetensors_streaming

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
    from ..quantization.absmean import check_weight, num_groups, resolve_group_size

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
    st_to_torch = {v: k for k, v in _ST_DTYPES.items()}
    preset = config.preset
    if preset == "auto":
        keys = set(shapes)
        flux = all(k in keys for k in _FLUX_KEYS) and any(k.startswith("single_transformer_blocks.") for k in keys)
        preset = "flux" if flux else "all"
    entries, selected, layers, order = [], set(), {}, []
    params_total = params_ternary = 0
    for key, (shape, st_dtype) in shapes.items():
        if st_dtype not in st_to_torch:
            raise TernaryFormatError(f"{src}: tensor {key} has dtype {st_dtype}, which torch-ternary cannot store")
        t_dtype = st_to_torch[st_dtype]
        out_dtype = dtype if (dtype is not None and t_dtype.is_floating_point) else t_dtype
        numel = 1
        for s in shape:
            numel *= s
        params_total += numel
        order.append(key)
        module_name, _, attr = key.rpartition(".")
        if attr == "weight" and len(shape) == 2 and t_dtype.is_floating_point and min(shape) > 0:
            n, k = shape
            with torch.device("meta"):
                probe = nn.Linear(k, n, bias=False)
            if config.selects(module_name, probe, preset):
                g = resolve_group_size(config.granularity, config.group_size, k)
                s_rows = 1 if config.granularity == "per_tensor" else n
                codes_shape = list(packing.packed_shape(n, k)) if codec == "2bit" else [encoded_nbytes(n * k)]
                entries.append(_Planned(key + CODES_SUFFIX, torch.uint8, codes_shape))
                entries.append(_Planned(key + SCALE_SUFFIX, torch.float32, [s_rows, num_groups(k, g)]))
                layers[key] = {"shape": [n, k], "dtype": _dtype_name(out_dtype), "group_size": g,
                               "activations": config.activations}
                selected.add(key)
                params_ternary += numel
                continue
        entries.append(_Planned(key, out_dtype, shape))
    fingerprint = hashlib.sha256(json.dumps(sorted((k, s) for k, (s, _) in shapes.items())).encode()).hexdigest()
    class_name = "FluxTransformer2DModel" if preset == "flux" and config.preset == "auto" else "safetensors state dict"
    header = make_header(codec, class_name, fingerprint, config, layers, {})

    def produce():
        bar = _progress(len(order), f"Ternarizing {src.name}", progress)
        with safe_open(str(src), framework="pt", **_PREAD) as f:
            for key in order:
                t = f.get_tensor(key)
                if dtype is not None and t.dtype.is_floating_point:
                    t = t.to(dtype)
                if key in selected:
                    check_weight(t, key)
                    tt = TernaryTensor.from_float(t, config.granularity, config.group_size)
                    del t
                    codes, scale, _ = _stored_ternary(tt, codec)
                    del tt
                    yield key + CODES_SUFFIX, codes
                    del codes
                    yield key + SCALE_SUFFIX, scale
                    release_freed_memory()
                else:
                    yield key, t.contiguous()
                bar.update(1)
        bar.close()

    def make_metadata(crcs):
        return {"format": "pt", HEADER_KEY: json.dumps({**header, "crc32": crcs}, sort_keys=True)}

    write_safetensors_streaming([(dst, entries)], produce(), make_metadata)
    return {"tensors": len(order), "ternary_layers": len(selected), "params_ternary": params_ternary,
            "params_total": params_total, "bytes_in": src.stat().st_size, "bytes_out": dst.stat().st_size}
