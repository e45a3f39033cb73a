"""The torch_ternary custom ops: opcheck, agreement with an independent reference, gradients."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from torch_ternary.format import packing
from torch_ternary.ops import ternary_linear as ops
from torch_ternary.quantization.absmean import num_groups

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def make_weight(n, k, granularity="per_channel", group_size=32, seed=0):
    """Random codes and positive scales, packed, plus the float64 dense reference ``s * q``."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(-1, 2, (n, k), generator=g, dtype=torch.int8)
    gs = k if granularity != "per_group" else min(group_size, k)
    rows = 1 if granularity == "per_tensor" else n
    scale = torch.rand(rows, num_groups(k, gs), generator=g) * 0.1 + 0.01
    full = scale.double().repeat_interleave(gs, dim=1)[:, :k].expand(n, k)
    return packing.pack_codes(codes), scale, gs, codes, full * codes.double()


def reference_linear(x, w64, bias):
    """``x @ (s*q).T + b`` in float64: the independent reference."""
    y = x.double() @ w64.T
    return y if bias is None else y + bias.double()


@pytest.mark.parametrize("granularity", ["per_tensor", "per_channel", "per_group"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_opcheck_all_ops(granularity, dtype):
    packed, scale, gs, _, _ = make_weight(24, 40, granularity, 16)
    x = torch.randn(3, 5, 40, dtype=dtype, requires_grad=True)
    bias = torch.randn(24, dtype=dtype, requires_grad=True)
    scale_g = scale.clone().requires_grad_(True)
    g_out = torch.randn(3, 5, 24, dtype=dtype)
    torch.library.opcheck(torch.ops.torch_ternary.unpack.default, (packed, 40))
    torch.library.opcheck(torch.ops.torch_ternary.dequantize.default, (packed, scale_g, 40, gs, dtype))
    torch.library.opcheck(torch.ops.torch_ternary.linear.default, (x, packed, scale_g, bias, 40, gs))
    torch.library.opcheck(torch.ops.torch_ternary.linear.default, (x, packed, scale, None, 40, gs))
    torch.library.opcheck(torch.ops.torch_ternary.linear_grad_input.default, (g_out, packed, scale, 40, gs))
    torch.library.opcheck(torch.ops.torch_ternary.linear_grad_scale.default, (g_out, x.detach(), packed, scale, 40, gs))


@given(
    n=st.integers(1, 48),
    k=st.integers(1, 150),
    lead=st.lists(st.integers(0, 4), min_size=0, max_size=3),
    dtype=st.sampled_from(DTYPES),
    granularity=st.sampled_from(["per_tensor", "per_channel", "per_group"]),
    has_bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_linear_matches_reference(n, k, lead, dtype, granularity, has_bias, seed):
    """Error vs the float64 reference is at most 2x that of torch's own ``F.linear`` in ``dtype``, plus 1 ulp slack."""
    packed, scale, gs, _, w64 = make_weight(n, k, granularity, 16, seed)
    x = torch.randn(*lead, k, generator=torch.Generator().manual_seed(seed + 1)).to(dtype)
    bias = torch.randn(n, generator=torch.Generator().manual_seed(seed + 2)).to(dtype) if has_bias else None
    y = torch.ops.torch_ternary.linear(x, packed, scale, bias, k, gs)
    assert y.dtype == dtype and y.shape == (*lead, n)
    if y.numel() == 0:
        return
    ref = reference_linear(x, w64, bias)
    same_precision = torch.nn.functional.linear(x, w64.to(dtype), bias).double()
    eps = torch.finfo(dtype).eps
    tol = 2 * (same_precision - ref).abs().max().item() + eps * (ref.abs().max().item() + 1)
    assert (y.double() - ref).abs().max().item() <= tol


def test_linear_chunks_over_rows(monkeypatch):
    """A tiny chunk budget forces many row blocks; the result must not change."""
    packed, scale, gs, _, _ = make_weight(37, 50, "per_group", 16)
    x = torch.randn(4, 50)
    bias = torch.randn(37)
    whole = torch.ops.torch_ternary.linear(x, packed, scale, bias, 50, gs)
    monkeypatch.setattr(ops, "CHUNK_ELEMENTS", 120)  # 2 rows at a time
    assert ops.rows_per_chunk(50) == 2
    torch.testing.assert_close(torch.ops.torch_ternary.linear(x, packed, scale, bias, 50, gs), whole, rtol=0, atol=1e-6)
    gi = torch.ops.torch_ternary.linear_grad_input(torch.ones(4, 37), packed, scale, 50, gs)
    monkeypatch.setattr(ops, "CHUNK_ELEMENTS", 1 << 22)
    torch.testing.assert_close(gi, torch.ops.torch_ternary.linear_grad_input(torch.ones(4, 37), packed, scale, 50, gs))


def test_unpack_and_dequantize():
    packed, scale, gs, codes, w64 = make_weight(9, 45, "per_group", 32)
    assert torch.equal(torch.ops.torch_ternary.unpack(packed, 45), codes)
    w = torch.ops.torch_ternary.dequantize(packed, scale, 45, gs, torch.float32)
    torch.testing.assert_close(w.double(), w64, rtol=1e-7, atol=0)


@pytest.mark.parametrize("granularity", ["per_tensor", "per_channel", "per_group"])
def test_gradients_match_dense_autograd(granularity):
    packed, scale, gs, codes, _ = make_weight(20, 36, granularity, 16)
    x = torch.randn(2, 3, 36, requires_grad=True)
    bias = torch.randn(20, requires_grad=True)
    s = scale.clone().requires_grad_(True)
    y = torch.ops.torch_ternary.linear(x, packed, s, bias, 36, gs)
    g = torch.randn_like(y)
    y.backward(g)

    x2, b2, s2 = x.detach().clone().requires_grad_(True), bias.detach().clone().requires_grad_(True), scale.clone().requires_grad_(True)
    full = s2.repeat_interleave(gs, dim=1)[:, :36] if s2.shape[1] > 1 else s2
    y2 = torch.nn.functional.linear(x2, full * codes.float(), b2)
    y2.backward(g)
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(bias.grad, b2.grad)
    torch.testing.assert_close(s.grad, s2.grad, rtol=1e-4, atol=1e-4)


def test_dequantize_gradient_wrt_scale():
    packed, scale, gs, codes, _ = make_weight(6, 40, "per_group", 16)
    s = scale.clone().requires_grad_(True)
    w = torch.ops.torch_ternary.dequantize(packed, s, 40, gs, torch.float32)
    (w * torch.arange(40.0)).sum().backward()
    s2 = scale.clone().requires_grad_(True)
    (s2.repeat_interleave(16, dim=1)[:, :40] * codes.float() * torch.arange(40.0)).sum().backward()
    torch.testing.assert_close(s.grad, s2.grad)


@pytest.mark.parametrize(
    "mutate,err",
    [
        (lambda a: a.update(x=a["x"].to(torch.int32)), TypeError),
        (lambda a: a.update(x=torch.randn(2, 7)), ValueError),
        (lambda a: a.update(scale=a["scale"].double()), ValueError),
        (lambda a: a.update(scale=torch.ones(3, 2)), ValueError),
        (lambda a: a.update(bias=torch.ones(5)), ValueError),
        (lambda a: a.update(bias=torch.ones(8, dtype=torch.float16)), ValueError),
        (lambda a: a.update(packed=a["packed"].to(torch.int8)), ValueError),
    ],
)
def test_bad_arguments_raise(mutate, err):
    packed, scale, gs, _, _ = make_weight(8, 32)
    args = dict(x=torch.randn(2, 32), packed=packed, scale=scale, bias=None)
    mutate(args)
    with pytest.raises(err):
        torch.ops.torch_ternary.linear(args["x"], args["packed"], args["scale"], args["bias"], 32, gs)
