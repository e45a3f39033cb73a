"""Atomic file writes: a temporary file beside the target, fsynced, renamed over the target, the folder fsynced.

Temporary names are unique per call (``.<name>.<random>.tmp``, created with ``O_EXCL``), so two threads or
processes saving the same path never write into one file; the last rename wins and each result is
whole. A written file gets the permissions a new file gets in this process (``0o666`` less the umask),
read off the temporary file the kernel created, so the process-wide umask is never changed.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Callable


def temporary_path(path: Path) -> Path:
    """A fresh, unused temporary file name in ``path``'s folder, created empty (``O_EXCL``) so it is ours."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:  # pragma: no cover - 48 random bits
            continue
        os.close(fd)
        return tmp


def new_file_mode(tmp: Path) -> int:
    """The permission bits of the file :func:`temporary_path` created: ``0o666`` less this process's umask."""
    return os.stat(tmp).st_mode & 0o777


def fsync_dir(folder: Path) -> None:
    """fsync a folder, so that the renames into it survive a crash (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - file systems without folder fsync
        pass
    finally:
        os.close(fd)


def commit(tmp: Path, path: Path, mode: int) -> None:
    """Give ``tmp`` the permissions ``mode``, fsync it and rename it over ``path`` (the folder is not fsynced)."""
    os.chmod(tmp, mode)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp_path)``, then make the result ``path`` atomically; on any failure ``path`` is untouched.

    ``write`` may replace the temporary file (safetensors does, owner-only): the result still gets the
    ordinary permissions of a new file.

    Args:
        path: the file to write.
        write: writes the whole content to the path it is given.
    """
    path = Path(path)
    tmp = temporary_path(path)
    try:
        mode = new_file_mode(tmp)
        write(tmp)
        commit(tmp, path, mode)
        fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()
