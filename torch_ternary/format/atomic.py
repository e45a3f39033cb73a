"""Atomic file writes: write a temporary file beside the target, fsync it, rename it over the target."""

from __future__ import annotations

import os
from pathlib import Path


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)``, fsync the result and rename it to ``path``; remove the temp file on failure.

    The file gets the ordinary permissions of a new file (``0o666`` less the umask) even when ``write``
    creates it owner-only, as safetensors does.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
