"""``torch_ternary::ste_weight`` / ``ste_weight_backward`` (plain-torch reference): values and gradients against
autograd through the textbook straight-through formula ``s * round_ste(clip(W / s, -1, 1))`` in float64,
every granularity, odd shapes; opcheck; typed errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torch_ternary.calibration.trainable import round_ste
from torch_ternary.errors import TernaryConfigError
from torch_ternary.ops import backends
from torch_ternary.quantization.absmean import expand_scale


def textbook(latent: torch.Tensor, scale: torch.Tensor, group_size: int) -> torch.Tensor:
    """``s * round_ste(clip(W / s, -1, 1))`` through autograd (the definition the op implements)."""
    s = expand_scale(scale, *latent.shape, group_size)
    return s * round_ste(torch.clamp(latent / s, -1.0, 1.0))


def make_case(n, k, granularity, group, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(n, k, generator=g, dtype=dtype) * 0.7
    group = k if granularity != "per_group" else group
    rows = 1 if granularity == "per_tensor" else n
    scale = torch.rand(rows, -(-k // group), generator=g, dtype=dtype) + 0.2
    return latent, scale, group


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 40), k=st.integers(1, 90), granularity=st.sampled_from(("per_tensor", "per_channel", "per_group")),
       group=st.sampled_from((1, 5, 16, 32)), seed=st.integers(0, 2**16))
def test_reference_matches_the_textbook_formula(n, k, granularity, group, seed):
    latent, scale, group = make_case(n, k, granularity, group, seed)
    ref = backends.reference("ste_weight")
    w = ref(latent, scale, group)
    lt, st_ = latent.clone().requires_grad_(), scale.clone().requires_grad_()
    expected = textbook(lt, st_, group)
    assert torch.equal(w, expected.detach())
    grad = torch.randn(n, k, dtype=latent.dtype, generator=torch.Generator().manual_seed(seed + 1))
    want_latent, want_scale = torch.autograd.grad(expected, (lt, st_), grad)
    got_latent, got_scale = backends.reference("ste_weight_backward")(grad, latent, scale, group)
    torch.testing.assert_close(got_latent, want_latent, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_scale, want_scale, rtol=1e-10, atol=1e-10)


def test_clipped_and_boundary_entries():
    latent = torch.tensor([[0.1, 0.6, -2.0, 1.0, -1.0, 0.5]], dtype=torch.float64, requires_grad=True)
    scale = torch.tensor([[1.0]], dtype=torch.float64, requires_grad=True)
    w = torch.ops.torch_ternary.ste_weight(latent, scale, 6)
    assert w.tolist() == [[0.0, 1.0, -1.0, 1.0, -1.0, 0.0]]  # 0.5 rounds half to even
    w.sum().backward()
    assert latent.grad.tolist() == [[1.0, 1.0, 0.0, 1.0, 1.0, 1.0]]  # |W/s| <= 1 passes, the clipped entry does not
    want = (0 - 0.1) + (1 - 0.6) + (-1.0) + (1 - 1.0) + (-1 + 1.0) + (0 - 0.5)
    assert abs(scale.grad.item() - want) < 1e-12


@pytest.mark.parametrize("granularity", ["per_tensor", "per_channel", "per_group"])
def test_opcheck(granularity):
    latent, scale, group = make_case(6, 40, granularity, 16, 0, torch.float32)
    torch.library.opcheck(torch.ops.torch_ternary.ste_weight.default, (latent.requires_grad_(), scale.requires_grad_(), group))
    grad = torch.randn(6, 40)
    torch.library.opcheck(torch.ops.torch_ternary.ste_weight_backward.default, (grad, latent.detach(), scale.detach(), group))


def test_bad_arguments_are_typed_errors():
    latent = torch.randn(4, 8)
    with pytest.raises(TernaryConfigError, match="scale must be"):
        torch.ops.torch_ternary.ste_weight(latent, torch.ones(4, 2), 8)
    with pytest.raises(TernaryConfigError, match="scale must be"):
        torch.ops.torch_ternary.ste_weight(latent, torch.ones(4, 1, dtype=torch.float64), 8)
    with pytest.raises(TernaryConfigError, match="latent must be"):
        torch.ops.torch_ternary.ste_weight(torch.randn(8), torch.ones(1, 1), 8)
    with pytest.raises(TernaryConfigError, match="group_size"):
        torch.ops.torch_ternary.ste_weight(latent, torch.ones(4, 1), 0)
    with pytest.raises(TernaryConfigError, match="grad"):
        torch.ops.torch_ternary.ste_weight_backward(torch.randn(4, 7), latent, torch.ones(4, 1), 8)
