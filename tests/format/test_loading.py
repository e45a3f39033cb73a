"""Loading is a transaction: everything is checked and built before the model is touched.

Each test here failed before the loader was split into check / build / assign (torch-ternary 0.1.0
placed parameters while it read, validated the stored config last, placed aliases unchecked, and
ignored dtypes and strides).
"""


import pytest
import torch
from safetensors import safe_open
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
from torch_ternary.format import loading
from torch_ternary.testing.format_fuzz import rewrite_file

from .snapshot import snapshot


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(32, 32)
        self.b = nn.Linear(32, 48)
        self.c = nn.Linear(48, 48)
        self.d = nn.Linear(48, 48)
        self.register_buffer("steps", torch.tensor([3, 1, 4]))

    def forward(self, x):
        return self.d(self.c(self.b(self.a(x))))


def quantized(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    net = Net().to(dtype)
    quantize_(net, TernaryConfig(exclude=("a",)))
    return net


def edit(path, header_fn=None, tensors_fn=None):
    """A coherent edit (header CRC32 recomputed), so the checks behind the checksum are reached."""
    rewrite_file(path, header_fn, tensors_fn)


@pytest.fixture
def saved(tmp_path):
    return save_quantized(quantized(), tmp_path / "net.safetensors")


@pytest.fixture
def target():
    """A different ternarized model of the same architecture: what a load would overwrite."""
    return quantized(seed=1)


def test_invalid_stored_config_leaves_the_model_untouched(saved, target):
    edit(saved, lambda h: h["config"].update(granularity="per_pixel"))
    before = snapshot(target)
    with pytest.raises(TernaryFormatError, match="config"):
        load_quantized(target, saved)
    assert snapshot(target) == before


def test_failure_while_building_leaves_the_model_untouched(saved, target, monkeypatch):
    """Out of memory (or a device error) half-way through reading: nothing was assigned yet."""
    real, calls = loading.StoredTensors.read, []

    def read(self, key, header, verify):
        calls.append(key)
        if len(calls) == 5:
            raise torch.OutOfMemoryError("CPU out of memory (simulated)")
        return real(self, key, header, verify)

    monkeypatch.setattr(loading.StoredTensors, "read", read)
    before = snapshot(target)
    with pytest.raises(torch.OutOfMemoryError):
        load_quantized(target, saved)
    assert len(calls) == 5 and snapshot(target) == before


def test_cuda_without_a_gpu_is_refused_before_anything(saved, target):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    before = snapshot(target)
    with pytest.raises(UnsupportedDeviceError):
        load_quantized(target, saved, device="cuda")
    assert snapshot(target) == before


def test_alias_onto_a_tensor_of_another_shape_is_refused(saved, target):
    """0.1.0 placed a [32] bias into a 48-output layer when a header aliased it there."""
    def alias(h):
        h["aliases"]["c.bias"] = "a.bias"  # [32] onto [48]

    edit(saved, alias, lambda t: t.pop("c.bias"))
    before = snapshot(target)
    with pytest.raises(ArchitectureMismatchError, match="c.bias"):
        load_quantized(target, saved)
    assert snapshot(target) == before


def test_alias_of_the_right_shape_but_another_dtype_is_refused(tmp_path):
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("f", torch.zeros(4))
            self.register_buffer("i", torch.zeros(4, dtype=torch.int32))

    path = save_quantized(Two(), tmp_path / "two.safetensors")
    edit(path, lambda h: h["aliases"].update(i="f"), lambda t: t.pop("i"))
    with pytest.raises(ArchitectureMismatchError, match="torch.float32"):
        load_quantized(Two(), path)


def test_dense_tensor_of_another_dtype_is_refused(tmp_path):
    path = save_quantized(quantized(torch.bfloat16), tmp_path / "bf16.safetensors")
    fp32 = quantized(torch.float32)
    before = snapshot(fp32)
    with pytest.raises(ArchitectureMismatchError, match="bfloat16"):
        load_quantized(fp32, path)
    assert snapshot(fp32) == before
    with torch.device("meta"):
        meta = Net().to(torch.bfloat16)
    load_quantized(meta, path)  # the same file into a model of its dtype
    assert meta.a.weight.dtype == torch.bfloat16 and isinstance(meta.b.weight, TernaryTensor)


def test_absurd_declared_sizes_are_refused_before_reading(saved, target, monkeypatch):
    """A header declaring a 2^40-weight layer is refused from the file's index alone: no tensor is read."""
    def grow(h):
        h["ternary"]["c.weight"]["shape"] = [1 << 20, 1 << 20]

    edit(saved, grow)
    monkeypatch.setattr(loading.StoredTensors, "read", lambda *a: pytest.fail("read a tensor"))
    with pytest.raises((TernaryFormatError, ArchitectureMismatchError)):
        load_quantized(target, saved)
    edit(saved, lambda h: h["ternary"]["c.weight"].update(shape=[48, 48]))  # right shape, wrong stored size:
    edit(saved, tensors_fn=lambda t: t.update({"c.weight.ternary_codes": torch.zeros(7, dtype=torch.uint8)}))
    with pytest.raises(TernaryFormatError, match="stored codes"):
        load_quantized(target, saved)


@pytest.mark.parametrize("bad", [[], "x", None, 3, {"c.weight": []}, {"c.weight": {"shape": [48]}},
                                 {"c.weight": {"shape": [48, True], "dtype": "float32", "group_size": 48}}])
def test_malformed_ternary_section_is_a_format_error(saved, target, bad):
    """0.1.0: ``"ternary": []`` escaped as AttributeError."""
    edit(saved, lambda h: h.update(ternary=bad))
    before = snapshot(target)
    with pytest.raises(TernaryFormatError):
        load_quantized(target, saved)
    assert snapshot(target) == before


def test_compiled_model_saves_and_loads_like_its_original(tmp_path):
    """``torch.compile(model)`` then ``save_quantized``: no ``_orig_mod.`` keys; loads into plain and compiled models."""
    net = quantized()
    compiled = torch.compile(net)
    path = save_quantized(compiled, tmp_path / "c.safetensors")
    with safe_open(str(path), "pt") as f:
        assert not [k for k in f.keys() if k.startswith("_orig_mod")]
    plain = Net()
    load_quantized(plain, path)
    assert torch.equal(plain.b.weight, net.b.weight)
    into_compiled = torch.compile(Net())
    assert load_quantized(into_compiled, path) is into_compiled
    assert torch.equal(into_compiled._orig_mod.c.weight, net.c.weight)


def test_transposed_view_is_not_taken_for_a_tie(tmp_path):
    """A square ``w`` and ``w.t()`` share storage but not strides: 0.1.0 stored them once and reloaded ``w`` twice."""
    class T(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.arange(16.0).reshape(4, 4))
            self.wt = nn.Parameter(self.w.detach().t())
            self.same = self.w  # a real tie

    m = T()
    path = save_quantized(m, tmp_path / "t.safetensors")
    fresh = T()
    with torch.no_grad():
        fresh.w.zero_()
        fresh.wt.zero_()
    load_quantized(fresh, path)
    assert torch.equal(fresh.w, m.w) and torch.equal(fresh.wt, m.w.t())
    assert fresh.same is fresh.w
