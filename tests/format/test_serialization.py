"""save_quantized / load_quantized: bit-exact round trips, meta loading, and every bad file."""

import os

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from torch_ternary import (
    ArchitectureMismatchError,
    TernaryConfig,
    TernaryFormatError,
    TernaryTensor,
    UnsupportedDeviceError,
    load_quantized,
    quantize_,
    save_quantized,
)
from torch_ternary.format.base3 import encoded_nbytes
from torch_ternary.format.single_file import read_header
from torch_ternary.testing.format_fuzz import rewrite_file


class Net(nn.Module):
    def __init__(self, width=48):
        super().__init__()
        self.inp = nn.Linear(20, width)
        self.mid = nn.Linear(width, width, bias=False)
        self.out = nn.Linear(width, 5)
        self.norm = nn.LayerNorm(width)
        self.register_buffer("steps", torch.tensor([3, 1, 4]))
        self.register_buffer("scratch", torch.zeros(2), persistent=False)

    def forward(self, x):
        return self.out(self.norm(self.mid(torch.relu(self.inp(x)))))


def quantized_net(granularity="per_group", dtype=torch.bfloat16):
    torch.manual_seed(0)
    net = Net().to(dtype)
    quantize_(net, TernaryConfig(granularity=granularity, group_size=16, exclude=("out",)))
    return net


@pytest.mark.parametrize("codec", ["2bit", "base3"])
@pytest.mark.parametrize("granularity", ["per_tensor", "per_channel", "per_group"])
def test_round_trip_bit_exact_into_meta_model(tmp_path, codec, granularity):
    net = quantized_net(granularity)
    path = save_quantized(net, tmp_path / "net.safetensors", codec=codec)
    with torch.device("meta"):
        fresh = Net().to(torch.bfloat16)
    load_quantized(fresh, path)
    for (name, a), (_, b) in zip(net.state_dict().items(), fresh.state_dict().items()):
        assert type(a) is type(b) and a.dtype == b.dtype, name
        assert torch.equal(a, b), name
        assert b.device.type == "cpu", name
    x = torch.randn(4, 20, dtype=torch.bfloat16)
    assert torch.equal(net(x), fresh(x))
    assert fresh._torch_ternary_config == net._torch_ternary_config
    assert not fresh.mid.weight.requires_grad and fresh.out.weight.requires_grad


def test_load_into_dense_or_quantized_model(tmp_path):
    net = quantized_net()
    path = save_quantized(net, tmp_path / "a.safetensors")
    dense = Net().to(torch.bfloat16)
    load_quantized(dense, path)
    assert isinstance(dense.inp.weight, TernaryTensor) and torch.equal(dense.inp.weight, net.inp.weight)
    again = quantized_net("per_channel")  # ternary already, different layout: replaced by the file's
    load_quantized(again, path)
    assert again.inp.weight.group_size == 16 and torch.equal(again.mid.weight, net.mid.weight)


def test_base3_file_is_smaller(tmp_path):
    net = quantized_net()
    a = save_quantized(net, tmp_path / "a.safetensors", codec="2bit")
    b = save_quantized(net, tmp_path / "b.safetensors", codec="base3")
    header = read_header(b)
    assert header["codec"] == "base3" and set(header["ternary"]) == {"inp.weight", "mid.weight"}
    from safetensors import safe_open

    with safe_open(str(b), "pt") as f:
        assert f.get_tensor("mid.weight.ternary_codes").numel() == encoded_nbytes(48 * 48)
    assert os.path.getsize(b) < os.path.getsize(a)


def test_atomic_save_keeps_old_file_on_failure(tmp_path, monkeypatch):
    net = quantized_net()
    path = save_quantized(net, tmp_path / "net.safetensors")
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("torch_ternary.format.codes.encode_base3", boom)  # fails half-way through the file
    with pytest.raises(OSError, match="disk full"):
        save_quantized(net, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["net.safetensors"]  # no temp file left


def test_saved_file_has_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = save_quantized(quantized_net(), tmp_path / "net.safetensors")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644  # safetensors alone creates 0o600


def _fresh():
    with torch.device("meta"):
        return Net().to(torch.bfloat16)


def _assert_untouched(model):
    assert all(t.device.type == "meta" for t in model.state_dict().values())


def test_truncated_file(tmp_path):
    path = save_quantized(quantized_net(), tmp_path / "net.safetensors")
    data = path.read_bytes()
    for cut in (5, 100, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:cut])
        m = _fresh()
        with pytest.raises(TernaryFormatError):
            load_quantized(m, path)
        _assert_untouched(m)


def test_flipped_byte_caught_by_checksum(tmp_path):
    path = save_quantized(quantized_net(), tmp_path / "net.safetensors")
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # inside the last tensor's data
    path.write_bytes(bytes(data))
    m = _fresh()
    with pytest.raises(TernaryFormatError, match="checksum"):
        load_quantized(m, path)
    _assert_untouched(m)


def _rewrite(path, mutate_header=None, mutate_tensors=None):
    """A coherent edit (header CRC32 recomputed), so the checks behind the checksum are reached."""
    state = {}
    rewrite_file(path, lambda h: (state.setdefault("h", h), mutate_header and mutate_header(h)),
                 mutate_tensors and (lambda t: mutate_tensors(t, state["h"])))


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda h: h.update(format_version=99), "version 99"),
        (lambda h: h.update(format_version="one"), "format_version"),
        (lambda h: h.update(codec="base7"), "codec"),
        (lambda h: h.pop("ternary"), "'ternary' must be an object"),
        (lambda h: h["ternary"]["mid.weight"].update(dtype="int3"), "unknown dtype 'int3'"),
    ],
)
def test_bad_headers(tmp_path, mutate, match):
    path = save_quantized(quantized_net(), tmp_path / "net.safetensors")
    _rewrite(path, mutate)
    with pytest.raises(TernaryFormatError, match=match):
        load_quantized(_fresh(), path)


def test_invalid_codes_detected_even_without_checksums(tmp_path):
    path = save_quantized(quantized_net(), tmp_path / "net.safetensors", codec="base3")

    def corrupt(tensors, header):
        tensors["mid.weight.ternary_codes"][0] = 250

    _rewrite(path, mutate_tensors=corrupt)
    with pytest.raises(TernaryFormatError, match="above 242"):
        load_quantized(_fresh(), path, verify=False)


def test_nan_scale_rejected(tmp_path):
    path = save_quantized(quantized_net(), tmp_path / "net.safetensors")

    def corrupt(tensors, header):
        tensors["inp.weight.ternary_scale"][0, 0] = float("nan")

    _rewrite(path, mutate_tensors=corrupt)
    with pytest.raises(TernaryFormatError, match="NaN"):
        load_quantized(_fresh(), path, verify=False)


def test_not_a_torch_ternary_file(tmp_path):
    plain = tmp_path / "plain.safetensors"
    save_file({"a": torch.ones(2)}, str(plain))
    with pytest.raises(TernaryFormatError, match="not written by torch-ternary"):
        load_quantized(_fresh(), plain)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(TernaryFormatError):
        load_quantized(_fresh(), junk)
    with pytest.raises(FileNotFoundError):
        load_quantized(_fresh(), tmp_path / "missing.safetensors")


def test_wrong_architecture(tmp_path):
    path = save_quantized(quantized_net(), tmp_path / "net.safetensors")
    with torch.device("meta"):
        wider = Net(width=64).to(torch.bfloat16)
    with pytest.raises(ArchitectureMismatchError, match="inp.weight"):
        load_quantized(wider, path)
    _assert_untouched(wider)
    with pytest.raises(ArchitectureMismatchError, match="missing"):
        load_quantized(nn.Sequential(nn.Linear(20, 48)), path)


def test_unsupported_device(tmp_path):
    path = save_quantized(quantized_net(), tmp_path / "net.safetensors")
    with pytest.raises(UnsupportedDeviceError):
        load_quantized(_fresh(), path, device="mps")


def test_meta_model_cannot_be_saved(tmp_path):
    with pytest.raises(TernaryFormatError, match="meta"):
        save_quantized(_fresh(), tmp_path / "x.safetensors")


def test_tied_weights_survive(tmp_path):
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(32, 32)
            self.b = nn.Linear(32, 32)
            self.b.weight = self.a.weight

    m = Tied()
    report = quantize_(m, TernaryConfig())
    assert m.a.weight is m.b.weight and report.params_quantized == 32 * 32
    path = save_quantized(m, tmp_path / "t.safetensors")
    assert read_header(path)["aliases"] == {"b.weight": "a.weight"}
    fresh = Tied().to("meta")
    load_quantized(fresh, path)
    assert fresh.a.weight is fresh.b.weight and isinstance(fresh.a.weight, TernaryTensor)


@pytest.mark.parametrize("codec", ["2bit", "base3"])
def test_payload_nbytes_predicts_the_file(tmp_path, codec):
    from safetensors import safe_open

    from torch_ternary.format.state_dict import payload_nbytes

    net = quantized_net()
    path = save_quantized(net, tmp_path / "n.safetensors", codec=codec)
    with safe_open(str(path), "pt") as f:
        stored = sum(f.get_tensor(k).numel() * f.get_tensor(k).element_size() for k in f.keys())
    assert payload_nbytes(net, codec) == stored
    assert payload_nbytes(net.to("meta"), codec) == stored
