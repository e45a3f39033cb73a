"""parse_header checks every field; the header carries its own CRC32; malformed headers are TernaryFormatError."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from torch_ternary import TernaryConfig, TernaryFormatError, load_quantized, quantize_, save_quantized
from torch_ternary.format.header import HEADER_CRC_KEY, HEADER_KEY, parse_header


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(32, 32), nn.Linear(32, 16))
    quantize_(net, TernaryConfig())
    return save_quantized(net, tmp_path / "n.safetensors")


def header_of(path):
    with safe_open(str(path), "pt") as f:
        return f.metadata()


def good():
    return {"format_version": 1, "codec": "base3", "layout": "k16-interleaved-v1",
            "architecture": {"class": "M", "fingerprint": "x"}, "config": None,
            "ternary": {"w": {"shape": [4, 32], "dtype": "float32", "group_size": 32}}, "aliases": {}, "crc32": {}}


@pytest.mark.parametrize("edit", [
    lambda h: h.update(format_version=True),
    lambda h: h.update(format_version=1.0),
    lambda h: h.update(codec=["base3"]),  # unhashable: 0.1.0 raised TypeError deep inside
    lambda h: h.update(architecture="M"),
    lambda h: h.update(library_version=3),
    lambda h: h.update(config=[]),
    lambda h: h.update(config={"granularity": "per_pixel"}),
    lambda h: h.update(config={"nonsense": 1}),
    lambda h: h.update(ternary=[]),
    lambda h: h["ternary"].update(w=[]),
    lambda h: h["ternary"]["w"].update(shape=[4, 32, 1]),
    lambda h: h["ternary"]["w"].update(shape=["4", 32]),
    lambda h: h["ternary"]["w"].update(shape=[1 << 30, 1 << 30]),
    lambda h: h["ternary"]["w"].update(dtype=["float32"]),  # unhashable: found by the 10,000-case fuzz run
    lambda h: h["ternary"]["w"].update(group_size=17),
    lambda h: h["ternary"]["w"].update(group_size=64),  # larger than K
    lambda h: h["ternary"]["w"].update(activations="int4"),
    lambda h: h["ternary"]["w"].update(group_size=16, activations="int8"),
    lambda h: h.update(aliases=[]),
    lambda h: h.update(aliases={"a": 3}),
    lambda h: h.update(aliases={"a": "a"}),
    lambda h: h.update(aliases={"w": "b"}),
    lambda h: h.update(aliases={"a": "b", "b": "w"}),
    lambda h: h.update(crc32={"w": -1}),
    lambda h: h.update(crc32={"w": "12"}),
    lambda h: h.pop("crc32"),
])
def test_malformed_fields_are_format_errors(edit):
    header = good()
    assert parse_header({HEADER_KEY: json.dumps(header)}, "f")["codec"] == "base3"
    edit(header)
    with pytest.raises(TernaryFormatError):
        parse_header({HEADER_KEY: json.dumps(header)}, "f")


@pytest.mark.parametrize("text", ["[1, 2]", "null", '"x"', "{", "[" * 100000])
def test_header_that_is_not_an_object(text):
    with pytest.raises(TernaryFormatError):
        parse_header({HEADER_KEY: text}, "f")


def test_header_crc_catches_a_coherent_edit(saved):
    """An edit that leaves the header valid (here: a different recorded config) is caught by the header's CRC32."""
    meta = header_of(saved)
    assert HEADER_CRC_KEY in meta
    header = json.loads(meta[HEADER_KEY])
    header["config"]["min_numel"] = 7
    meta[HEADER_KEY] = json.dumps(header, sort_keys=True)
    with safe_open(str(saved), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(saved), metadata=meta)
    fresh = nn.Sequential(nn.Linear(32, 32), nn.Linear(32, 16))
    with pytest.raises(TernaryFormatError, match="header"):
        load_quantized(fresh, saved)
    load_quantized(fresh, saved, verify=False)  # unverified, the coherent edit loads
    assert fresh._torch_ternary_config.min_numel == 7


def test_files_without_a_header_crc_still_load(saved):
    """0.1.0 files carry no header CRC32 (tests/format/test_golden.py loads real ones)."""
    meta = header_of(saved)
    del meta[HEADER_CRC_KEY]
    with safe_open(str(saved), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(saved), metadata=meta)
    load_quantized(nn.Sequential(nn.Linear(32, 32), nn.Linear(32, 16)), saved)
