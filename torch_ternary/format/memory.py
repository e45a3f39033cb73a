"""Giving freed memory back to the operating system while large models stream through."""

from __future__ import annotations


def _load_malloc_trim():
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim  # glibc only
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_MALLOC_TRIM = _load_malloc_trim()


def release_freed_memory() -> None:
    """Give memory freed by the allocator back to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    Streaming quantization frees one dense weight (tens of MB) per layer while keeping its much
    smaller packed codes; glibc keeps such freed blocks in its heaps and per-thread arenas, and on
    FLUX.1-dev that retention grows to gigabytes. Trimming after each layer keeps the process at the
    size of what it really holds.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
