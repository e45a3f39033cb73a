"""Write safetensors files one tensor at a time, each tensor produced only when it is written.

Every torch-ternary writer goes through :func:`write_safetensors_streaming`: ``save_quantized`` (one
file), ``save_quantized_folder`` (shards) and ``quantize_file`` (a plain file ternarized tensor by
tensor). A :class:`Planned` entry knows its key, dtype and shape before any data exists, and how to
make its tensor when its turn comes, so memory holds one tensor at a time.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open

from ..errors import TernaryFormatError
from .atomic import commit, fsync_dir, new_file_mode, temporary_path

#: torch dtype -> safetensors dtype name, for every dtype torch-ternary stores
ST_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}
_ST_DTYPES = ST_DTYPES
#: safetensors dtype name -> torch dtype (what a file's index may declare; others are refused on load)
TORCH_DTYPES = {v: k for k, v in ST_DTYPES.items()}


def dtype_nbytes(dtype: torch.dtype) -> int:
    """Bytes of one element of ``dtype``."""
    return torch.empty((), dtype=dtype).element_size()


class Planned:
    """One tensor of a file to write: key, dtype and shape known up front, data made when written.

    Args:
        key: the safetensors key.
        dtype: a dtype of :data:`ST_DTYPES`.
        shape: the tensor's shape.
        make: ``() -> tensor`` (CPU, contiguous, of ``dtype`` and ``shape``), called once, when the tensor is
            written; None when the writer is given the tensors another way.
    """

    __slots__ = ("key", "dtype", "shape", "nbytes", "make")

    def __init__(self, key: str, dtype: torch.dtype, shape, make: Callable[[], torch.Tensor] | None = None):
        if dtype not in ST_DTYPES:
            raise TernaryFormatError(f"{key}: dtype {dtype} cannot be stored")
        self.key, self.dtype, self.shape, self.make = key, dtype, [int(s) for s in shape], make
        numel = 1
        for s in self.shape:
            numel *= s
        self.nbytes = numel * dtype_nbytes(dtype)


_Planned = Planned


def _safetensors_header(entries: list[Planned], metadata: dict[str, str]) -> bytes:
    header: dict = {"__metadata__": metadata}
    offset = 0
    for e in entries:
        header[e.key] = {"dtype": ST_DTYPES[e.dtype], "shape": e.shape, "data_offsets": [offset, offset + e.nbytes]}
        offset += e.nbytes
    return json.dumps(header, separators=(",", ":")).encode()


def write_safetensors_streaming(shards: list[tuple[Path, list[Planned]]], make_metadata: Callable[[dict], dict],
                                on_written: Callable[[Planned], None] | None = None) -> dict[str, int]:
    """Write safetensors files one tensor at a time, each tensor made (``entry.make()``) only when it is written.

    The header (which comes first in a safetensors file and holds the CRC32 of every tensor) is only
    known once every tensor has been written, so each file first reserves room for the longest header
    it can have (every CRC32 at 10 digits), the tensors are written after it, and the real header is
    written last, padded with spaces (valid JSON whitespace, as safetensors itself pads). Each file is
    written under a fresh temporary name beside its target (:func:`~.atomic.temporary_path`), fsynced,
    and renamed over its target once all of them are complete; on any error no target is touched.

    Args:
        shards: ``(target path, planned entries)`` per file, entries in file order, each with ``make``.
        make_metadata: ``crc32s -> {str: str}``, the safetensors metadata of every file.
        on_written: called with each entry once its tensor is written (progress bars).

    Returns:
        ``{key: crc32}`` of everything written.
    """
    placeholder = {e.key: 4294967295 for _, entries in shards for e in entries}
    tmps, crcs = [], {}
    try:
        for target, entries in shards:
            # + 16: metadata values that depend on the CRCs (the header's own CRC32) may grow by a few digits
            reserve = len(_safetensors_header(entries, make_metadata(placeholder))) + 16
            reserve = (reserve + 7) // 8 * 8
            tmp = temporary_path(target)
            tmps.append((tmp, target, entries, reserve, new_file_mode(tmp)))
            with open(tmp, "wb") as f:
                f.seek(8 + reserve)
                for e in entries:
                    t = e.make()
                    if t.dtype != e.dtype or list(t.shape) != e.shape:
                        raise TernaryFormatError(f"internal: expected {e.key} {e.dtype} {e.shape}, got {t.dtype} {list(t.shape)}")
                    if e.nbytes:
                        raw = t.detach().contiguous().reshape(-1).view(torch.uint8).cpu().numpy()
                        crcs[e.key] = zlib.crc32(raw.data)
                        f.write(raw.data)
                    else:
                        crcs[e.key] = 0
                    del t
                    if on_written is not None:
                        on_written(e)
        metadata = make_metadata(crcs)
        for tmp, target, entries, reserve, _ in tmps:
            header = _safetensors_header(entries, metadata)
            if len(header) > reserve:
                raise TernaryFormatError("internal: safetensors header outgrew its reserved room")
            with open(tmp, "rb+") as f:
                f.write(struct.pack("<Q", reserve) + header + b" " * (reserve - len(header)))
        for tmp, target, _, _, mode in tmps:
            commit(tmp, target, mode)
        for folder in {target.parent for _, target, *_ in tmps}:
            fsync_dir(folder)
    finally:
        for tmp, *_ in tmps:
            if tmp.exists():
                tmp.unlink()
    return crcs


def shard_names(weights_name: str, n: int, tag: str = "") -> list[str]:
    """diffusers' shard names: ``[weights_name]`` for one file, else ``<stem>-0000i-of-0000n[.<tag>].<ext>``."""
    if n == 1:
        return [weights_name]
    stem, ext = weights_name.rsplit(".", 1)
    tag = f".{tag}" if tag else ""
    return [f"{stem}-{i + 1:05d}-of-{n:05d}{tag}.{ext}" for i in range(n)]


_shard_names = shard_names


def split_shards(entries: list[Planned], max_bytes: int) -> list[list[Planned]]:
    """Entries in order, cut into runs of at most ``max_bytes`` (a larger single entry gets a run of its own)."""
    shards: list[list[Planned]] = [[]]
    size = 0
    for e in entries:
        if shards[-1] and size + e.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(e)
        size += e.nbytes
    return shards


_split = split_shards


def _pread_supported() -> dict:
    import inspect

    try:
        return {"backend": "pread"} if "backend" in inspect.signature(safe_open).parameters else {}
    except (TypeError, ValueError):  # a builtin without a signature: try it
        return {"backend": "pread"}


#: ``safe_open`` keyword that reads with ``pread`` instead of a memory map (safetensors >= 0.8), else {}
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
