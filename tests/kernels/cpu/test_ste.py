"""The compiled QAT weight kernels (torch_ternary/kernels/cpu/ste_cpu.cpp), every ISA variant this CPU runs, against
the plain-torch reference of ``torch_ternary::ste_weight`` / ``ste_weight_backward``.

Properties (hypothesis): odd N and K, per-tensor / per-channel / per-group scales (group sizes that are and are not
multiples of 16: the avx512 variant needs them, others take the scalar loop). The forward and ``dL/dW`` are
bit-identical with the reference; ``dL/ds`` (summed in another order, float64 partials) within float32 rounding of
the float64 reference. A NaN latent stays NaN. Results do not depend on the thread count.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.ops.test_ste_weight import make_case

from torch_ternary.kernels import cpu
from torch_ternary.ops import backends

from .conftest import ALL_ISAS, forced_isa, require_isa


@pytest.mark.parametrize("isa", ALL_ISAS)
@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 70), k=st.integers(1, 300), granularity=st.sampled_from(("per_tensor", "per_channel", "per_group")),
       group=st.sampled_from((16, 32, 48, 20)), seed=st.integers(0, 2**16))
def test_kernels_match_the_reference(isa, n, k, granularity, group, seed):
    require_isa(isa)
    latent, scale, group = make_case(n, k, granularity, group, seed, torch.float32)
    grad = torch.randn(n, k, generator=torch.Generator().manual_seed(seed + 1))
    with forced_isa(isa):
        path = cpu.choose(0, True)  # (amx: the avx512 loops)
        before = cpu.STATS[f"ste_weight:{path}"]
        w = torch.ops.torch_ternary.ste_weight(latent, scale, group)
        got_latent, got_scale = torch.ops.torch_ternary.ste_weight_backward(grad, latent, scale, group)
    assert path in ("avx512", "avx2", "scalar") and cpu.STATS[f"ste_weight:{path}"] == before + 1
    assert torch.equal(w, backends.reference("ste_weight")(latent, scale, group))
    want_latent, _ = backends.reference("ste_weight_backward")(grad, latent, scale, group)
    assert torch.equal(got_latent, want_latent)
    _, want_scale = backends.reference("ste_weight_backward")(grad.double(), latent.double(), scale.double(), group)
    torch.testing.assert_close(got_scale.double(), want_scale, rtol=1e-5, atol=1e-5 * max(1.0, k ** 0.5))
    assert got_scale.dtype == torch.float32 and got_scale.shape == scale.shape


@pytest.mark.parametrize("isa", ["avx512", "scalar"])
def test_nan_latent_stays_nan_and_gets_no_gradient(isa):
    require_isa(isa)
    latent = torch.randn(3, 40)
    latent[1, 7] = float("nan")
    scale = torch.rand(3, 1) + 0.5
    with forced_isa(isa):
        w = torch.ops.torch_ternary.ste_weight(latent, scale, 40)
        grad_latent, _ = torch.ops.torch_ternary.ste_weight_backward(torch.ones(3, 40), latent, scale, 40)
    assert torch.isnan(w[1, 7]) and torch.isnan(w).sum() == 1
    assert grad_latent[1, 7] == 0


def test_thread_count_does_not_change_results():
    require_isa("scalar")
    latent, scale, group = make_case(257, 300, "per_tensor", 16, 3, torch.float32)
    grad = torch.randn(257, 300)
    old = torch.get_num_threads()
    try:
        out = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out.append(torch.ops.torch_ternary.ste_weight_backward(grad, latent, scale, group))
    finally:
        torch.set_num_threads(old)
    assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])


def test_float64_keeps_the_reference():
    require_isa("scalar")
    latent, scale, group = make_case(5, 40, "per_channel", 16, 1)
    before = cpu.STATS["ste_weight:reference"]
    w = torch.ops.torch_ternary.ste_weight(latent, scale, group)
    assert cpu.STATS["ste_weight:reference"] == before + 1 and w.dtype == torch.float64
