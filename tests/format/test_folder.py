"""Sharded folders: indexes that point outside their folder are refused, and a save replaces the set atomically."""

import json
import os

import pytest
import torch
from torch import nn

from torch_ternary import TernaryConfig, TernaryFormatError, quantize_
from torch_ternary.format import atomic, folder, streaming
from torch_ternary.format.folder import INDEX_SUFFIX, WEIGHTS_NAME, load_quantized_folder, save_quantized_folder

from .snapshot import snapshot

INDEX = WEIGHTS_NAME + INDEX_SUFFIX


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(64, 64)
        self.b = nn.Linear(64, 64)
        self.c = nn.Linear(64, 32)


def net(seed):
    torch.manual_seed(seed)
    m = Net()
    quantize_(m, TernaryConfig())
    return m


def loads_as(path, model):
    fresh = Net()
    load_quantized_folder(fresh, path)
    return all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/passwd", "sub/x.safetensors", "..", "a\\b"])
def test_index_naming_a_file_outside_the_folder_is_refused(tmp_path, shard):
    save_quantized_folder(net(0), tmp_path / "m", max_shard_size=3000)
    (tmp_path / "outside.safetensors").write_bytes((tmp_path / "m" / sorted(os.listdir(tmp_path / "m"))[0]).read_bytes())
    index = json.loads((tmp_path / "m" / INDEX).read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = shard
    (tmp_path / "m" / INDEX).write_text(json.dumps(index))
    target = net(1)
    before = snapshot(target)
    with pytest.raises(TernaryFormatError, match="not a file of this folder|leads out"):
        load_quantized_folder(target, tmp_path / "m")
    assert snapshot(target) == before


def test_shard_that_is_a_link_out_of_the_folder_is_refused(tmp_path):
    save_quantized_folder(net(0), tmp_path / "m", max_shard_size=3000)
    index = json.loads((tmp_path / "m" / INDEX).read_text())
    name = sorted(set(index["weight_map"].values()))[0]
    (tmp_path / "elsewhere.safetensors").write_bytes((tmp_path / "m" / name).read_bytes())
    (tmp_path / "m" / name).unlink()
    (tmp_path / "m" / name).symlink_to(tmp_path / "elsewhere.safetensors")
    with pytest.raises(TernaryFormatError, match="leads out"):
        load_quantized_folder(Net(), tmp_path / "m")


def test_missing_shard_is_a_format_error(tmp_path):
    save_quantized_folder(net(0), tmp_path / "m", max_shard_size=3000)
    index = json.loads((tmp_path / "m" / INDEX).read_text())
    (tmp_path / "m" / sorted(set(index["weight_map"].values()))[-1]).unlink()
    with pytest.raises(TernaryFormatError, match="missing"):
        load_quantized_folder(Net(), tmp_path / "m")


@pytest.mark.parametrize("shards,fail_at", [(3000, 2), ("10GB", 1)])
def test_a_save_that_fails_half_way_leaves_the_old_set_loadable(tmp_path, monkeypatch, shards, fail_at):
    """0.1.0 renamed shard by shard: a failure between renames left a mix of two saves."""
    old, new = net(0), net(1)
    save_quantized_folder(old, tmp_path / "m", max_shard_size=3000)
    files_before = sorted(os.listdir(tmp_path / "m"))
    real = atomic.commit
    calls = []

    def flaky(tmp, path, mode):  # a rename of the new save fails (the second of the shards, or the single file's)
        calls.append(path.name)
        if len(calls) == fail_at:
            raise OSError("disk full (simulated)")
        return real(tmp, path, mode)

    monkeypatch.setattr(streaming, "commit", flaky)
    with pytest.raises(OSError, match="disk full"):
        save_quantized_folder(new, tmp_path / "m", max_shard_size=shards)
    monkeypatch.undo()
    assert loads_as(tmp_path / "m", old)
    # new shards may have been renamed in under fresh names, but the old set is whole and still the one read
    assert set(files_before) <= set(os.listdir(tmp_path / "m"))
    save_quantized_folder(new, tmp_path / "m", max_shard_size=shards)  # a later save cleans up
    assert loads_as(tmp_path / "m", new)
    expected = 1 if shards == "10GB" else len(files_before) - 1
    assert len([f for f in os.listdir(tmp_path / "m") if f.endswith(".safetensors")]) == expected


def test_failure_before_the_index_is_replaced_keeps_the_old_set(tmp_path, monkeypatch):
    old, new = net(0), net(1)
    save_quantized_folder(old, tmp_path / "m", max_shard_size=3000)

    def no_index(path, write):
        raise OSError("crash before the commit (simulated)")

    monkeypatch.setattr(folder, "atomic_write", no_index)
    with pytest.raises(OSError):
        save_quantized_folder(new, tmp_path / "m", max_shard_size=3000)
    monkeypatch.undo()
    assert loads_as(tmp_path / "m", old)


def test_same_shard_count_gets_fresh_names_then_stale_ones_go(tmp_path):
    save_quantized_folder(net(0), tmp_path / "m", max_shard_size=3000)
    first = set(os.listdir(tmp_path / "m"))
    save_quantized_folder(net(1), tmp_path / "m", max_shard_size=3000)
    second = set(os.listdir(tmp_path / "m"))
    shards = lambda names: {n for n in names if n.endswith(".safetensors")}  # noqa: E731
    assert shards(first).isdisjoint(shards(second)) and len(shards(first)) == len(shards(second))
    assert loads_as(tmp_path / "m", net(1))
