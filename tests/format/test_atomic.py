"""atomic_write: no process-wide umask change, unique temporary names, the folder fsynced after the rename."""

import os
import threading

import pytest
import torch
from torch import nn

from torch_ternary import load_quantized, save_quantized
from torch_ternary.format import atomic
from torch_ternary.format.atomic import atomic_write


def test_umask_is_never_touched(tmp_path, monkeypatch):
    """0.1.0 read the umask by setting it (os.umask(0)): a race for every other thread of the process."""
    def forbidden(mask):
        raise AssertionError("os.umask called")

    old = os.umask(0o027)
    try:
        monkeypatch.setattr(os, "umask", forbidden)
        atomic_write(tmp_path / "f.txt", lambda tmp: tmp.write_text("x"))
        # a writer that creates its file owner-only (as safetensors does) still gives ordinary permissions
        atomic_write(tmp_path / "g.txt", lambda tmp: (tmp.unlink(), os.close(os.open(tmp, os.O_CREAT | os.O_WRONLY, 0o600))))
    finally:
        monkeypatch.undo()
        os.umask(old)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "g.txt").stat().st_mode & 0o777 == 0o640


def test_temporary_names_are_unique_per_call(tmp_path):
    """0.1.0 named temps ``.<name>.<pid>.tmp``: two threads of one process saving one path wrote one file."""
    names = {atomic.temporary_path(tmp_path / "x") for _ in range(50)}
    assert len(names) == 50 and all(p.exists() for p in names)


def test_two_threads_saving_one_path_both_leave_a_whole_file(tmp_path):
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(nn.Sequential(nn.Linear(256, 256), nn.Linear(256, 256)))
    path = tmp_path / "m.safetensors"
    errors = []

    def save(m):
        try:
            for _ in range(5):
                save_quantized(m, path)
        except Exception as e:  # pragma: no cover - the failure being tested
            errors.append(e)

    threads = [threading.Thread(target=save, args=(m,)) for m in models]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    fresh = nn.Sequential(nn.Linear(256, 256), nn.Linear(256, 256))
    load_quantized(fresh, path)  # whole and checksummed: one of the two models, not a mix
    assert any(all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), m.state_dict().values())) for m in models)
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_folder_is_fsynced_after_the_rename(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def fsync(fd):
        synced.append(os.path.isdir(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else True)
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    atomic_write(tmp_path / "f.txt", lambda tmp: tmp.write_text("x"))
    assert synced[-1] is True and False in synced  # the file, then its folder


def test_failed_write_leaves_no_temporary_file(tmp_path):
    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "f.txt", lambda tmp: (_ for _ in ()).throw(RuntimeError("boom")))
    assert list(tmp_path.iterdir()) == []
