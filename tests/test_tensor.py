"""TernaryTensor: construction, module plumbing, compile-facing protocol, errors."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torch_ternary import TernaryTensor, UnsupportedDeviceError, UnsupportedOperationError
from torch_ternary.errors import InvalidWeightError, TernaryFormatError
from torch_ternary.quantization.absmean import absmean_scale, ternary_codes


@pytest.fixture
def tt():
    return TernaryTensor.from_float(torch.randn(12, 40), "per_group", 16, dtype=torch.bfloat16)


def test_looks_like_the_dense_weight(tt):
    assert tt.shape == (12, 40) and tt.dtype == torch.bfloat16 and tt.device.type == "cpu"
    assert tt.packed.shape == (12, 12) and tt.scale.shape == (12, 3) and tt.group_size == 16
    assert tt.granularity == "per_group" and tt.in_features == 40 and tt.out_features == 12
    assert tt.nbytes_packed == 12 * 12 + 12 * 3 * 4


def test_from_float_equals_absmean_of_the_whole_weight():
    w = torch.randn(50, 70)
    for gran, g in (("per_tensor", 70), ("per_channel", 70), ("per_group", 32)):
        t = TernaryTensor.from_float(w, gran, 32)
        scale = absmean_scale(w, gran, g)
        assert torch.equal(t.codes(), ternary_codes(w, scale, g)) and torch.equal(t.scale, scale) and t.group_size == g
        assert t.granularity == gran


def test_from_float_in_row_blocks(monkeypatch):
    from torch_ternary.ops import ternary_linear as ops

    w = torch.randn(33, 20)
    whole = TernaryTensor.from_float(w, "per_tensor")
    monkeypatch.setattr(ops, "CHUNK_ELEMENTS", 60)  # 3 rows a block
    parts = TernaryTensor.from_float(w, "per_tensor")
    assert torch.equal(whole.packed, parts.packed) and torch.equal(whole.scale, parts.scale)


def test_dequantize_and_linear(tt):
    w = tt.dequantize()
    assert w.dtype == torch.bfloat16 and type(w) is torch.Tensor
    x = torch.randn(2, 3, 40, dtype=torch.bfloat16)
    b = torch.randn(12, dtype=torch.bfloat16)
    exact = x.double() @ tt.dequantize(torch.float64).T + b.double()  # the same ternary weights, in float64
    err = (F.linear(x, tt, b).double() - exact).norm() / exact.norm()
    dense_err = (F.linear(x, w, b).double() - exact).norm() / exact.norm()  # torch's bf16 linear on bf16 weights
    assert err <= dense_err + 2**-20, (err, dense_err)


def test_repr(tt):
    r = repr(tt)
    assert r.startswith("TernaryTensor(shape=(12, 40), dtype=torch.bfloat16") and "per_group" in r and "uint8(12, 12)" in r


def test_detach_clone_copy(tt):
    d = tt.detach()
    assert isinstance(d, TernaryTensor) and d.packed.data_ptr() == tt.packed.data_ptr()
    c = tt.clone()
    assert isinstance(c, TernaryTensor) and c.packed.data_ptr() != tt.packed.data_ptr() and torch.equal(c, tt)
    other = TernaryTensor.from_float(torch.randn(12, 40), "per_group", 16, dtype=torch.bfloat16)
    assert not torch.equal(other, tt)
    other.copy_(tt)
    assert torch.equal(other.packed, tt.packed) and torch.equal(other.scale, tt.scale)
    with pytest.raises(UnsupportedOperationError):
        other.copy_(torch.randn(12, 40))
    with pytest.raises(UnsupportedOperationError):
        other.copy_(TernaryTensor.from_float(torch.randn(12, 40), "per_channel"))
    assert torch.equal(copy.deepcopy(tt), tt)


def test_to_dtype_and_device(tt):
    f = tt.to(torch.float32)
    assert isinstance(f, TernaryTensor) and f.dtype == torch.float32 and torch.equal(f.packed, tt.packed)
    assert torch.equal(f.dequantize().bfloat16(), tt.dequantize())
    m = tt.to("meta")
    assert m.device.type == "meta" and m.packed.device.type == "meta" and m.shape == tt.shape
    with pytest.raises(UnsupportedOperationError):
        tt.to(torch.int8)
    with pytest.raises(UnsupportedDeviceError):
        tt.to("mps")


def test_pinning(tt):
    assert not tt.is_pinned()
    if not torch.cuda.is_available():
        pytest.skip("pinning needs a CUDA runtime")
    p = tt.pin_memory()
    assert isinstance(p, TernaryTensor) and p.is_pinned() and p.packed.is_pinned()


def test_module_plumbing(tt):
    lin = nn.Linear(40, 12, dtype=torch.bfloat16)
    lin.weight = nn.Parameter(tt, requires_grad=False)
    assert isinstance(lin.weight, TernaryTensor) and isinstance(lin.weight, nn.Parameter)
    lin.float()
    assert isinstance(lin.weight, TernaryTensor) and lin.weight.dtype == torch.float32 and lin.bias.dtype == torch.float32
    lin.to(torch.float16)
    y = lin(torch.randn(3, 40, dtype=torch.float16))
    assert y.dtype == torch.float16
    sd = lin.state_dict()
    assert isinstance(sd["weight"], TernaryTensor)
    lin.to("meta")
    assert lin.weight.device.type == "meta"


def test_autocast_follows_autocast_dtype(tt):
    lin = nn.Linear(40, 12)
    lin.weight = nn.Parameter(tt.to(torch.float32), requires_grad=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = lin(torch.randn(2, 40))
    assert y.dtype == torch.bfloat16


def test_flatten_unflatten(tt):
    names, meta = tt.__tensor_flatten__()
    assert names == ["packed", "scale"]
    rebuilt = TernaryTensor.__tensor_unflatten__({n: getattr(tt, n) for n in names}, meta, tt.shape, tt.stride())
    assert torch.equal(rebuilt, tt) and rebuilt.dtype == tt.dtype


def test_compiled_linear_matches_eager(tt):
    lin = nn.Linear(40, 12, dtype=torch.bfloat16)
    lin.weight = nn.Parameter(tt, requires_grad=False)
    x = torch.randn(5, 40, dtype=torch.bfloat16)
    compiled = torch.compile(lin, fullgraph=True)
    torch.testing.assert_close(compiled(x), lin(x), rtol=0, atol=0)


def test_unsupported_op_is_typed(tt):
    with pytest.raises(UnsupportedOperationError):
        tt + 1
    with pytest.raises(UnsupportedOperationError):
        tt.t()


def test_meta_weight_gives_meta_tensor():
    t = TernaryTensor.from_float(torch.empty(30, 50, device="meta"), "per_group", 16)
    assert t.device.type == "meta" and t.packed.shape == (30, 16) and t.scale.shape == (30, 4)


@pytest.mark.parametrize(
    "bad", [torch.full((2, 16), float("nan")), torch.ones(4), torch.ones(2, 16, dtype=torch.int64)]
)
def test_bad_weights(bad):
    with pytest.raises(InvalidWeightError):
        TernaryTensor.from_float(bad)


def test_inconsistent_parts_rejected():
    packed = torch.zeros(4, 4, dtype=torch.uint8)
    with pytest.raises(TernaryFormatError):
        TernaryTensor(packed, torch.ones(4, 1), (4, 17), torch.float32, 17)  # 4 bytes hold 16, not 17
    with pytest.raises(TernaryFormatError):
        TernaryTensor(packed, torch.ones(4, 2), (4, 16), torch.float32, 16)  # scale has 2 groups
    with pytest.raises(TernaryFormatError):
        TernaryTensor(packed, torch.ones(4, 1, dtype=torch.float16), (4, 16), torch.float32, 16)
    with pytest.raises(TernaryFormatError):
        TernaryTensor(packed, torch.ones(4, 1), (4, 16), torch.int8, 16)
    with pytest.raises(TernaryFormatError):
        TernaryTensor.from_codes(torch.full((2, 3), 2), torch.ones(2, 1), 3, torch.float32)


def test_requires_grad_true_is_refused_not_ignored():
    """0.1.0 accepted ``requires_grad=True`` and built a tensor that never got a gradient."""
    t = TernaryTensor.from_float(torch.randn(8, 32))
    with pytest.raises(UnsupportedOperationError, match="cannot require grad"):
        TernaryTensor(t.packed, t.scale, (8, 32), torch.float32, 32, requires_grad=True)
    with pytest.raises(UnsupportedOperationError, match="cannot require grad"):
        TernaryTensor(t, requires_grad=True)  # the re-wrap path accelerate uses
    assert not TernaryTensor(t, requires_grad=False).requires_grad


def test_to_copy_with_pin_memory_keyword():
    """0.1.0 passed ``pin_memory`` on to ``Tensor.to`` and raised TypeError."""
    t = TernaryTensor.from_float(torch.randn(8, 32))
    copy = torch.ops.aten._to_copy.default(t, pin_memory=False)
    assert isinstance(copy, TernaryTensor) and torch.equal(copy, t) and copy.packed.data_ptr() != t.packed.data_ptr()
    if torch.cuda.is_available():  # pinning needs an accelerator
        pinned = torch.ops.aten._to_copy.default(t, pin_memory=True)
        assert pinned.is_pinned()
