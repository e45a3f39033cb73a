import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from torch_ternary.errors import InvalidWeightError, TernaryConfigError
from torch_ternary.quantization.absmean import (
    SCALE_EPS,
    absmean_scale,
    check_weight,
    dequantize_codes,
    resolve_group_size,
    ternary_codes,
)


def ternarize(w, granularity="per_channel", group_size=128):
    """What ``TernaryTensor.from_float`` computes for one weight: ``(codes, scale, G)``."""
    check_weight(w)
    g = resolve_group_size(granularity, group_size, w.shape[1])
    scale = absmean_scale(w, granularity, g)
    return ternary_codes(w, scale, g), scale, g


def _reference_ternarize(w: torch.Tensor, granularity: str, group_size: int):
    """Element-by-granule loop straight from the formula in docs/quantization.md (float64)."""
    n, k = w.shape
    w = w.double()
    if granularity == "per_tensor":
        granules = [[(i, j) for i in range(n) for j in range(k)]]
        where = lambda i, j: (0, 0)  # noqa: E731
        shape = (1, 1)
    else:
        g = k if granularity == "per_channel" else min(group_size, k)
        ng = math.ceil(k / g)
        granules = [[(i, j) for j in range(c * g, min(k, (c + 1) * g))] for i in range(n) for c in range(ng)]
        where = lambda i, j: (i, j // g)  # noqa: E731
        shape = (n, ng)
    scale = torch.empty(shape, dtype=torch.float64)
    for gr in granules:
        i, j = gr[0]
        scale[where(i, j)] = max(sum(abs(float(w[a, b])) for a, b in gr) / len(gr), SCALE_EPS)
    q = torch.empty(n, k, dtype=torch.int8)
    for i in range(n):
        for j in range(k):
            q[i, j] = int(max(-1, min(1, round(float(w[i, j]) / float(scale[where(i, j)])))))
    return q, scale


@given(
    n=st.integers(1, 9),
    k=st.integers(1, 70),
    granularity=st.sampled_from(["per_tensor", "per_channel", "per_group"]),
    group_size=st.sampled_from([16, 32, 48]),
    seed=st.integers(0, 2**16),
)
def test_ternarize_matches_formula(n, k, granularity, group_size, seed):
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(seed))
    codes, scale, g = ternarize(w, granularity, group_size)
    ref_q, ref_s = _reference_ternarize(w, granularity, group_size)
    assert scale.dtype == torch.float32 and codes.dtype == torch.int8
    torch.testing.assert_close(scale.double(), ref_s, rtol=1e-6, atol=0)
    # Entries within 1e-5 of a rounding tie (|W/s| = 0.5) may round differently in float32 vs float64.
    full = ref_s.repeat_interleave(g, dim=1)[:, :k].expand(n, k) if ref_s.shape[1] > 1 else ref_s.expand(n, k)
    clear = ((w.double() / full).abs() - 0.5).abs() > 1e-5
    assert torch.equal(codes[clear], ref_q[clear])
    assert set(codes.unique().tolist()) <= {-1, 0, 1}


def test_scale_shapes_and_partial_last_group():
    w = torch.ones(3, 40)
    w[:, 32:] = 4.0  # last group (8 wide) has a different mean
    _, s, g = ternarize(w, "per_group", 32)
    assert g == 32 and s.shape == (3, 2)
    torch.testing.assert_close(s, torch.tensor([[1.0, 4.0]] * 3))
    assert ternarize(w, "per_channel")[1].shape == (3, 1)
    assert ternarize(w, "per_tensor")[1].shape == (1, 1)


def test_dequantize_is_scale_times_codes():
    w = torch.randn(5, 33)
    codes, s, g = ternarize(w, "per_group", 16)
    full = s.repeat_interleave(16, dim=1)[:, :33]
    assert torch.equal(dequantize_codes(codes, s, g), codes.float() * full)
    assert torch.equal(dequantize_codes(codes, s, g, torch.bfloat16), (codes.float() * full).bfloat16())


def test_zero_weight_gets_eps_scale_and_zero_codes():
    codes, s, _ = ternarize(torch.zeros(2, 8))
    assert torch.all(s == SCALE_EPS) and torch.all(codes == 0)


def test_deterministic():
    w = torch.randn(64, 96)
    a, b = ternarize(w, "per_group", 32), ternarize(w.clone(), "per_group", 32)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize(
    "bad",
    [torch.tensor([[1.0, float("nan")]]), torch.tensor([[float("inf"), 1.0]]), torch.ones(3), torch.ones(2, 2, 2),
     torch.ones(2, 2, dtype=torch.int32), torch.ones(0, 4)],
)
def test_bad_weights_rejected(bad):
    with pytest.raises(InvalidWeightError):
        ternarize(bad)


@pytest.mark.parametrize("g", [0, -16, 8, 33])
def test_bad_group_size(g):
    with pytest.raises(TernaryConfigError):
        absmean_scale(torch.ones(2, 64), "per_group", g)


def test_bad_granularity():
    with pytest.raises(TernaryConfigError):
        ternarize(torch.ones(2, 2), "per_row")
