"""Write safetensors files one tensor at a time, each tensor produced only when it is written."""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

import torch
from safetensors import safe_open

from ..errors import TernaryFormatError

_ST_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}


class _Planned:
    __slots__ = ("key", "dtype", "shape", "nbytes")

    def __init__(self, key: str, dtype: torch.dtype, shape):
        if dtype not in _ST_DTYPES:
            raise TernaryFormatError(f"{key}: dtype {dtype} cannot be stored")
        self.key, self.dtype, self.shape = key, dtype, [int(s) for s in shape]
        numel = 1
        for s in self.shape:
            numel *= s
        self.nbytes = numel * (torch.finfo(dtype).bits if dtype.is_floating_point else
                               (8 if dtype == torch.bool else torch.iinfo(dtype).bits)) // 8


def _safetensors_header(entries: list[_Planned], metadata: dict[str, str]) -> bytes:
    header: dict = {"__metadata__": metadata}
    offset = 0
    for e in entries:
        header[e.key] = {"dtype": _ST_DTYPES[e.dtype], "shape": e.shape, "data_offsets": [offset, offset + e.nbytes]}
        offset += e.nbytes
    return json.dumps(header, separators=(",", ":")).encode()


def write_safetensors_streaming(shards: list[tuple[Path, list[_Planned]]], tensors, make_metadata) -> dict[str, int]:
    """Write safetensors files one tensor at a time, each tensor produced only when it is written.

    The header (which comes first in a safetensors file and holds the CRC32 of every tensor) is only
    known once every tensor has been written, so each file first reserves room for the longest header
    it can have (every CRC32 at 10 digits), the tensors are written after it, and the real header is
    written last, padded with spaces (valid JSON whitespace, as safetensors itself pads). Files are
    written as ``.<name>.<pid>.tmp`` beside the target, fsynced and renamed when all are complete.

    Args:
        shards: ``(target path, planned entries)`` per file, entries in file order.
        tensors: iterator of ``(key, tensor)`` in exactly the planned order (CPU, contiguous, of the
            planned dtype and shape); freed as soon as written.
        make_metadata: ``crc32s -> {str: str}``, the safetensors metadata of every file.

    Returns:
        ``{key: crc32}`` of everything written.
    """
    import struct

    placeholder = {e.key: 4294967295 for _, entries in shards for e in entries}
    tmps, crcs = [], {}
    try:
        for target, entries in shards:
            reserve = len(_safetensors_header(entries, make_metadata(placeholder)))
            reserve = (reserve + 8 + 7) // 8 * 8
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            tmps.append((tmp, target, entries, reserve))
            with open(tmp, "wb") as f:
                f.seek(8 + reserve)
                for e in entries:
                    key, t = next(tensors)
                    if key != e.key or t.dtype != e.dtype or list(t.shape) != e.shape:
                        raise TernaryFormatError(f"internal: expected {e.key} {e.dtype} {e.shape}, got {key} {t.dtype} {list(t.shape)}")
                    if e.nbytes:
                        raw = t.detach().contiguous().reshape(-1).view(torch.uint8).cpu().numpy()
                        crcs[key] = zlib.crc32(raw.data)
                        f.write(raw.data)
                    else:
                        crcs[key] = 0
                    del t
        if next(tensors, None) is not None:  # also lets the producer finish (close its progress bar)
            raise TernaryFormatError("internal: more tensors produced than planned")
        metadata = make_metadata(crcs)
        for tmp, target, entries, reserve in tmps:
            header = _safetensors_header(entries, metadata)
            if len(header) > reserve:
                raise TernaryFormatError("internal: safetensors header outgrew its reserved room")
            with open(tmp, "rb+") as f:
                f.write(struct.pack("<Q", reserve) + header + b" " * (reserve - len(header)))
                f.flush()
                os.fsync(f.fileno())
        for tmp, target, _, _ in tmps:
            os.replace(tmp, target)
    finally:
        for tmp, *_ in tmps:
            if tmp.exists():
                tmp.unlink()
    return crcs


def _shard_names(weights_name: str, n: int) -> list[str]:
    if n == 1:
        return [weights_name]
    stem, ext = weights_name.rsplit(".", 1)
    return [f"{stem}-{i + 1:05d}-of-{n:05d}.{ext}" for i in range(n)]


def _split(entries: list[_Planned], max_bytes: int) -> list[list[_Planned]]:
    shards: list[list[_Planned]] = [[]]
    size = 0
    for e in entries:
        if shards[-1] and size + e.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(e)
        size += e.nbytes
    return shards


def _pread_supported() -> dict:
    import inspect

    try:
        return {"backend": "pread"} if "backend" in inspect.signature(safe_open).parameters else {}
    except (TypeError, ValueError):  # a builtin without a signature: try it
        return {"backend": "pread"}


_PREAD = _pread_supported()


class _NoBar:
    def update(self, n=1):
        pass

    def close(self):
        pass


def _progress(total: int, desc: str, enabled: bool, unit: str = "tensor"):
    """A tqdm bar (or a no-op stand-in when disabled or tqdm is missing)."""
    if not enabled:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, desc=desc, unit=unit)
