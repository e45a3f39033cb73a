"""The compiled CPU kernels (torch_ternary/kernels/cpu/ternary_cpu.cpp), every ISA variant this CPU runs,
against the float64 product with the same ternary weights and against the plain-torch reference ops.

Properties (hypothesis): random M from 1 to 2048, odd K and N, float32 / bf16 / fp16 activations,
contiguous, row-strided, transposed and batched inputs, bias or not, per-tensor / per-channel / per-group
scales. 16-bit activations: relative Frobenius error vs float64 at most 1e-5 for float32, and no larger than
torch's dense ``F.linear`` in the same dtype for bf16 / fp16. ``linear_a8`` (int8): bit-exact with the
reference. ``dequantize`` / ``unpack``: identical to the reference. The backward products: within float32
rounding of float64. Sizes are capped per ISA (the scalar variant is slow) so the suite stays CI-sized.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from tests.ops.test_ternary_linear import make_weight

from torch_ternary.format import packing
from torch_ternary.kernels import cpu
from torch_ternary.ops import backends

from .conftest import ALL_ISAS, forced_isa, require_isa

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
GRANULARITIES = ("per_tensor", "per_channel", "per_group")
#: most multiply-accumulates (M * K * N * limbs) of one example, per ISA
BUDGET = {"amx": 40e6, "avx512": 40e6, "avx2": 20e6, "scalar": 2e6}


@st.composite
def linear_cases(draw, isa: str, dtypes=DTYPES, granularities=GRANULARITIES):
    dtype = draw(st.sampled_from(dtypes))
    m = draw(st.integers(1, 2048))
    k = draw(st.integers(1, 700))
    limbs = cpu.LIMBS[dtype]
    n_max = int(max(1, min(130, BUDGET[isa] // (m * k * limbs))))
    n = draw(st.integers(1, n_max))
    granularity = draw(st.sampled_from(granularities))
    group = draw(st.sampled_from((16, 32, 48, 128)))
    layout = draw(st.sampled_from(("contiguous", "row_strided", "transposed", "batched")))
    return dict(m=m, k=k, n=n, dtype=dtype, granularity=granularity, group=group, layout=layout,
                has_bias=draw(st.booleans()), outlier=draw(st.booleans()), seed=draw(st.integers(0, 2**16)))


def make_input(m, k, dtype, layout, seed, outlier=False, nan=False):
    """``x`` ``dtype`` ``[m, k]`` (or ``[2, m/2, k]`` when batched) in the requested memory layout."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(m, k, generator=g)
    if outlier and k > 1:  # a wide dynamic range in one token (what int8 limbs must cope with)
        base[0, k // 2] = 300.0
    if m > 2:
        base[m // 2] = 0.0  # an all-zero token
    if nan:
        base[-1, 0] = float("nan")
    base = base.to(dtype)
    if layout == "row_strided":  # rows of a wider buffer: row stride > k
        wide = torch.zeros(m, k + 5, dtype=dtype)
        wide[:, 2:2 + k] = base
        return wide[:, 2:2 + k]
    if layout == "transposed":  # unit stride along M, not K
        return base.T.contiguous().T
    if layout == "batched" and m % 2 == 0:
        return base.reshape(2, m // 2, k)
    return base


def rel_fro(y, ref):
    """Relative Frobenius error of ``y`` against float64 ``ref`` (0/0 counts as 0)."""
    num = (y.double() - ref).norm().item()
    den = ref.norm().item()
    return num / den if den > 0 else num


def expected_16bit_path(isa, tokens, dtype, grouped):
    """The kernel that ``torch_ternary::linear`` must run for ``tokens`` rows under a forced ``isa``."""
    if isa != "amx":
        return isa
    if grouped or tokens * cpu.LIMBS[dtype] < cpu.AMX_MIN_ROWS:
        return "avx512"
    if dtype == torch.bfloat16 and tokens >= cpu.AMX_BF16_MIN_ROWS and cpu.amx_bf16_available():
        return "amx_bf16"
    return "amx"


def _check_16bit(case, isa):
    packed, scale, gs, _, w64 = make_weight(case["n"], case["k"], case["granularity"], case["group"], case["seed"])
    x = make_input(case["m"], case["k"], case["dtype"], case["layout"], case["seed"] + 1, case["outlier"])
    bias = torch.randn(case["n"], generator=torch.Generator().manual_seed(case["seed"] + 2)).to(case["dtype"]) \
        if case["has_bias"] else None
    before = cpu.STATS.copy()
    with forced_isa(isa):
        y = torch.ops.torch_ternary.linear(x, packed, scale, bias, case["k"], gs)
    expect = expected_16bit_path(isa, x.numel() // case["k"], x.dtype, scale.shape[1] > 1)
    assert cpu.STATS[f"linear:{expect}"] == before[f"linear:{expect}"] + 1, "the kernel variant did not run"
    assert y.dtype == x.dtype and y.shape == (*x.shape[:-1], case["n"])
    ref = x.double() @ w64.T + (0 if bias is None else bias.double())
    err = rel_fro(y, ref)
    if x.dtype == torch.float32:
        assert err <= 1e-5, err
    else:
        # no larger than torch's dense linear on the same inputs, up to a couple of outputs whose final rounding
        # went the other way (each worth at most one ulp of the largest output: 2 eps / sqrt(outputs) in all)
        dense = torch.nn.functional.linear(x, w64.to(x.dtype), bias)
        slack = 2 * torch.finfo(x.dtype).eps / y.numel() ** 0.5
        assert err <= rel_fro(dense, ref) + slack, (err, rel_fro(dense, ref))


@pytest.mark.parametrize("isa", ALL_ISAS)
def test_linear_16bit_accuracy(isa):
    require_isa(isa)

    @given(case=linear_cases(isa))
    def prop(case):
        _check_16bit(case, isa)

    prop()


def test_amx_variant_runs_many_rows():
    """The AMX tiles are the large-M path: a case sure to take it, all three dtypes (the property above
    reaches it only when M * limbs >= AMX_MIN_ROWS); bf16 takes the AMX-BF16 kernel where the CPU has it."""
    require_isa("amx")
    for dtype in DTYPES:
        for granularity in ("per_tensor", "per_channel"):
            _check_16bit(dict(m=203, k=333, n=161, dtype=dtype, granularity=granularity, group=16, layout="contiguous",
                              has_bias=True, outlier=True, seed=3), "amx")


@pytest.mark.parametrize("m, k, n, layout", [
    (16, 32, 16, "contiguous"),        # one tile of each kind
    (17, 31, 17, "contiguous"),        # a partial token group, K short of a step, a partial row tile
    (100, 1040, 130, "row_strided"),   # K past one K block (1024), x rows of a wider buffer, read in place
    (64, 3072, 256, "transposed"),     # FLUX's width; unit stride along M (copied to rows first)
    (70, 64, 300, "contiguous"),       # past one 256-row thread block, a partial 64-token group
    (48, 48, 200, "batched"),          # K = 3 words: the last step half empty
    (2067, 40, 40, "contiguous"),      # past two 1024-token chunks, the last one 19 tokens (scratch reused)
])
def test_amx_bf16_kernel_on_edge_shapes(m, k, n, layout, monkeypatch):
    """The AMX-BF16 kernel (amx_bf16_cpu.cpp) on the shapes its blocking has edges for (also below the token count
    the dispatcher sends it): error against float64 no larger than torch's dense bf16 linear."""
    require_isa("amx")
    if not cpu.amx_bf16_available():
        pytest.skip("this CPU has no AMX-BF16")
    monkeypatch.setattr(cpu, "AMX_BF16_MIN_ROWS", 1)
    for granularity in ("per_tensor", "per_channel"):
        _check_16bit(dict(m=m, k=k, n=n, dtype=torch.bfloat16, granularity=granularity, group=16, layout=layout,
                          has_bias=True, outlier=False, seed=m + k + n), "amx")


def test_amx_bf16_kernel_propagates_nan_per_token():
    """A NaN activation makes its own token's outputs NaN (as torch's dense linear) and no other token's."""
    require_isa("amx")
    if not cpu.amx_bf16_available():
        pytest.skip("this CPU has no AMX-BF16")
    packed, scale, gs, _, _ = make_weight(40, 96, "per_channel", 16, 1)
    x = torch.randn(cpu.AMX_BF16_MIN_ROWS, 96).bfloat16()
    x[5, 7] = float("nan")
    before = cpu.STATS["linear:amx_bf16"]
    with forced_isa("amx"):
        y = torch.ops.torch_ternary.linear(x, packed, scale, None, 96, gs)
    assert cpu.STATS["linear:amx_bf16"] == before + 1
    assert torch.isnan(y[5]).all()
    assert torch.isfinite(torch.cat([y[:5], y[6:]])).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spread", [1.0, 30.0, 300.0, 3000.0])
def test_outlier_tokens_keep_the_accuracy(dtype, spread):
    """Tokens with a few huge channels (DiT activations have them): the extra limb keeps the error below
    torch's dense linear (bf16 / fp16) and below 1e-5 (float32), on FLUX's width."""
    require_isa("avx512")
    packed, scale, gs, _, w64 = make_weight(256, 3072, "per_channel", seed=5)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(64, 3072, generator=g)
    x[:, torch.randint(0, 3072, (4,), generator=g)] *= spread
    x = x.to(dtype)
    with forced_isa("avx512"):
        y = torch.ops.torch_ternary.linear(x, packed, scale, None, 3072, gs)
    ref = x.double() @ w64.T
    err = rel_fro(y, ref)
    if dtype == torch.float32:
        assert err <= 1e-5, err
    else:
        assert err <= rel_fro(torch.nn.functional.linear(x, w64.to(dtype)), ref), err


@pytest.mark.parametrize("isa", ALL_ISAS)
def test_linear_a8_bit_exact_with_reference(isa):
    require_isa(isa)

    @given(case=linear_cases(isa, granularities=("per_tensor", "per_channel")), nan_row=st.booleans())
    def prop(case, nan_row):
        packed, scale, gs, _, _ = make_weight(case["n"], case["k"], case["granularity"], case["group"], case["seed"])
        x = make_input(case["m"], case["k"], case["dtype"], case["layout"], case["seed"] + 1, case["outlier"], nan_row)
        bias = torch.randn(case["n"]).to(case["dtype"]) if case["has_bias"] else None
        before = cpu.STATS.copy()
        with forced_isa(isa):
            y = torch.ops.torch_ternary.linear_a8(x, packed, scale, bias, case["k"], gs, "int8")
        rows = x.numel() // case["k"]
        expect = "avx512" if isa == "amx" and rows < cpu.AMX_MIN_ROWS else isa
        assert cpu.STATS[f"linear_a8:{expect}"] == before[f"linear_a8:{expect}"] + 1
        ref = backends.reference("linear_a8")(x, packed, scale, bias, case["k"], gs, "int8")
        torch.testing.assert_close(y, ref, rtol=0, atol=0, equal_nan=True)

    prop()


@pytest.mark.parametrize("chunk", [None, 64, 96])
@pytest.mark.parametrize("dtype", DTYPES)
def test_amx_token_chunks(dtype, chunk, monkeypatch):
    """The AMX kernels take tokens in chunks (AMX_CHUNK_ROWS prepared rows: whole tokens, a multiple of 32 rows;
    AMX_BF16_CHUNK_TOKENS tokens): several chunks and a partial last one (the shipped sizes, and small ones that
    leave odd remainders), A8 bit-exact with the reference (a NaN token in the last chunk included), 16-bit within
    the error of torch's dense linear."""
    require_isa("amx")
    if chunk is not None:
        monkeypatch.setattr(cpu, "AMX_CHUNK_ROWS", chunk)
        monkeypatch.setattr(cpu, "AMX_BF16_CHUNK_TOKENS", chunk)
    m = 2100 if chunk is None else 333
    packed, scale, gs, _, _ = make_weight(150, 200, "per_channel", 16, 5)
    x = make_input(m, 200, dtype, "contiguous", 6, False, False)
    x[m - 10, 3] = float("nan")
    bias = torch.randn(150).to(dtype)
    before = cpu.STATS["linear_a8:amx"]
    with forced_isa("amx"):
        y = torch.ops.torch_ternary.linear_a8(x, packed, scale, bias, 200, gs, "int8")
    assert cpu.STATS["linear_a8:amx"] == before + 1
    ref = backends.reference("linear_a8")(x, packed, scale, bias, 200, gs, "int8")
    torch.testing.assert_close(y, ref, rtol=0, atol=0, equal_nan=True)
    _check_16bit(dict(m=m // 2 + 50, k=200, n=150, dtype=dtype, granularity="per_channel", group=16,
                      layout="contiguous", has_bias=True, outlier=True, seed=7), "amx")


@pytest.mark.parametrize("m, k, n", [
    (32, 1024, 256),     # one K block (KBS = 16 steps, 1024 weights) and one 256-row thread block exactly
    (100, 1040, 300),    # a second K block of one chunk; past one thread block, the second one partial
    (300, 2100, 40),     # three K blocks, the last partial; activation blocks of 128 rows and a partial one
    (1100, 200, 520),    # three token chunks (512 rows), the last 76 tokens; the next-block prefetch at each edge
])
def test_amx_int8_kernel_on_block_edges(m, k, n):
    """The AMX-INT8 kernel's blocking (NBA weight rows, KBS steps a K block, MBA activation rows, AMX_CHUNK_ROWS
    a chunk, the prefetch of the next activation block) on shapes that cross every edge: linear_a8 bit-exact with
    the reference, and the limb path of float32 tokens (the same tiles) within its accuracy bound."""
    require_isa("amx")
    packed, scale, gs, _, _ = make_weight(n, k, "per_channel", 16, m + k + n)
    x = make_input(m, k, torch.bfloat16, "contiguous", m + k, True, False)
    bias = torch.randn(n).to(torch.bfloat16)
    before = cpu.STATS["linear_a8:amx"]
    with forced_isa("amx"):
        y = torch.ops.torch_ternary.linear_a8(x, packed, scale, bias, k, gs, "int8")
    assert cpu.STATS["linear_a8:amx"] == before + 1
    ref = backends.reference("linear_a8")(x, packed, scale, bias, k, gs, "int8")
    torch.testing.assert_close(y, ref, rtol=0, atol=0)
    _check_16bit(dict(m=m, k=k, n=n, dtype=torch.float32, granularity="per_tensor", group=16, layout="contiguous",
                      has_bias=True, outlier=True, seed=m + n), "amx")


@pytest.mark.parametrize("sign", [1, -1, 0])
def test_avx2_int16_sums_at_their_largest_across_flushes(sign):
    """The AVX2 kernel (per-channel / per-tensor scales) sums vpmaddubsw pairs in int16 for 4 chunks (1024
    weights) before widening: with every weight +1 (or -1, or alternating) and every activation at +-127, the
    largest sums it can see, on K = 2600 (three flushes, the last one partial, a partial chunk) and on every
    token count of a tile (M = 1..5) the int8 result is bit-exact with the reference, and so is the 16-bit one
    within its bound."""
    require_isa("avx2")
    n, k = 7, 2600
    codes = torch.full((n, k), sign, dtype=torch.int8) if sign else (torch.arange(k) % 2 * 2 - 1).to(torch.int8).expand(n, k)
    packed = packing.pack_codes(codes.contiguous())
    scale = torch.full((n, 1), 0.01)
    for m in range(1, 6):
        x = torch.ones(m, k) * torch.tensor([1.0, -1.0, 0.5, -0.25, 2.0])[:m, None]
        before = cpu.STATS["linear_a8:avx2"]
        with forced_isa("avx2"):
            y = torch.ops.torch_ternary.linear_a8(x, packed, scale, None, k, k, "int8")
            y16 = torch.ops.torch_ternary.linear(x, packed, scale, None, k, k)
        assert cpu.STATS["linear_a8:avx2"] == before + 1
        ref = backends.reference("linear_a8")(x, packed, scale, None, k, k, "int8")
        torch.testing.assert_close(y, ref, rtol=0, atol=0)
        dense = x.double() @ (codes.double() * 0.01).T
        assert rel_fro(y16, dense) <= 1e-5 if sign else float((y16.double() - dense).abs().max()) <= 1e-4


@pytest.mark.parametrize("isa", [i for i in ALL_ISAS if i not in ("scalar", "amx")])
def test_16bit_vector_variants_identical_to_scalar(isa):
    """Per-tensor / per-channel scales: the vectorized activation split (limbs and their remainders), the integer
    tiles and the epilogue of a vector variant give bit-identical 16-bit outputs to the portable scalar variant,
    for every activation dtype, bias or not, odd K and N (tails of every vector loop), outlier and NaN tokens."""
    require_isa(isa)

    @given(case=linear_cases("scalar", granularities=("per_tensor", "per_channel")), nan_row=st.booleans())
    def prop(case, nan_row):
        packed, scale, gs, _, _ = make_weight(case["n"], case["k"], case["granularity"], case["group"], case["seed"])
        x = make_input(case["m"], case["k"], case["dtype"], case["layout"], case["seed"] + 1, case["outlier"], nan_row)
        bias = torch.randn(case["n"]).to(case["dtype"]) if case["has_bias"] else None
        with forced_isa(isa):
            y = torch.ops.torch_ternary.linear(x, packed, scale, bias, case["k"], gs)
        with forced_isa("scalar"):
            ref = torch.ops.torch_ternary.linear(x, packed, scale, bias, case["k"], gs)
        torch.testing.assert_close(y, ref, rtol=0, atol=0, equal_nan=True)

    prop()


@pytest.mark.parametrize("isa", ALL_ISAS)
def test_16bit_nan_and_inf_rows_stay_in_their_rows(isa):
    """A token with a NaN gives NaN outputs in its own row only, as the dense product does."""
    require_isa(isa)
    packed, scale, gs, _, w64 = make_weight(40, 100)
    x = torch.randn(70, 100)
    x[3, 7] = float("nan")
    with forced_isa(isa):
        y = torch.ops.torch_ternary.linear(x, packed, scale, None, 100, gs)
    assert torch.isnan(y[3]).all()
    keep = torch.ones(70, dtype=torch.bool)
    keep[3] = False
    assert rel_fro(y[keep], x[keep].double() @ w64.T) <= 1e-5


@pytest.mark.parametrize("isa", ALL_ISAS)
def test_dequantize_and_unpack_identical_to_reference(isa):
    require_isa(isa)

    @given(n=st.integers(1, 70), k=st.integers(1, 300), granularity=st.sampled_from(GRANULARITIES),
           group=st.sampled_from((16, 32, 64)), dtype=st.sampled_from(DTYPES + (torch.float64,)), seed=st.integers(0, 2**16))
    def prop(n, k, granularity, group, dtype, seed):
        packed, scale, gs, codes, _ = make_weight(n, k, granularity, group, seed)
        with forced_isa(isa):
            w = torch.ops.torch_ternary.dequantize(packed, scale, k, gs, dtype)
            q = torch.ops.torch_ternary.unpack(packed, k)
        assert torch.equal(q, codes)
        assert torch.equal(w, backends.reference("dequantize")(packed, scale, k, gs, dtype))

    prop()


@pytest.mark.parametrize("isa", ALL_ISAS)
def test_backward_products(isa):
    """``linear_grad_input`` (``g @ (s q)``) and ``linear_grad_scale`` against float64."""
    require_isa(isa)

    @given(m=st.integers(1, 300), n=st.integers(1, 90), k=st.integers(1, 260), granularity=st.sampled_from(GRANULARITIES),
           dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16))
    def prop(m, n, k, granularity, dtype, seed):
        packed, scale, gs, codes, w64 = make_weight(n, k, granularity, 32, seed)
        gen = torch.Generator().manual_seed(seed + 1)
        g_out = torch.randn(m, n, generator=gen).to(dtype)
        x = torch.randn(m, k, generator=gen).to(dtype)
        with forced_isa(isa):
            gi = torch.ops.torch_ternary.linear_grad_input(g_out, packed, scale, k, gs)
            gs_ = torch.ops.torch_ternary.linear_grad_scale(g_out, x, packed, scale, k, gs)
        ref_gi = g_out.double() @ w64
        dense = (g_out @ w64.to(dtype)).double()
        assert gi.dtype == dtype and rel_fro(gi, ref_gi) <= rel_fro(dense, ref_gi) + 1e-6
        # d/ds of sum(g * y): per group, sum_m g[m, n] * sum_{k in group} q[n, k] x[m, k]
        q = codes.double()
        groups = torch.arange(k) // gs
        per_group = torch.zeros(n, scale.shape[1], dtype=torch.float64)
        mag = torch.zeros_like(per_group)
        for j in range(scale.shape[1]):
            cols = groups == j
            z = x.double()[:, cols] @ q[:, cols].T
            per_group[:, j] = (g_out.double() * z).sum(0)
            mag[:, j] = (g_out.double().abs() * (x.double()[:, cols].abs() @ q[:, cols].abs().T)).sum(0)
        if scale.shape[0] == 1:
            per_group, mag = per_group.sum(0, keepdim=True), mag.sum(0, keepdim=True)
        assert gs_.dtype == torch.float32 and gs_.shape == scale.shape
        assert ((gs_.double() - per_group).abs() <= 1e-5 * mag + 1e-30).all()

    prop()


@pytest.mark.parametrize("isa", ALL_ISAS)
def test_opcheck_on_the_compiled_kernels(isa):
    require_isa(isa)
    packed, scale, gs, _, _ = make_weight(40, 70, "per_channel")
    x = torch.randn(2, 40, 70, requires_grad=True)  # 80 tokens: the AMX path when isa == "amx"
    bias = torch.randn(40, requires_grad=True)
    with forced_isa(isa):
        torch.library.opcheck(torch.ops.torch_ternary.linear.default, (x, packed, scale.clone().requires_grad_(), bias, 70, gs))
        torch.library.opcheck(torch.ops.torch_ternary.linear_a8.default, (x.detach(), packed, scale, bias.detach(), 70, gs, "int8"))
        torch.library.opcheck(torch.ops.torch_ternary.dequantize.default, (packed, scale, 70, gs, torch.bfloat16))
        torch.library.opcheck(torch.ops.torch_ternary.unpack.default, (packed, 70))


def test_group_sizes_the_kernels_do_not_model_take_the_reference():
    """The op accepts any group size; a group that splits a 16-weight word is computed by the reference."""
    require_isa("scalar")
    packed, scale, gs, _, w64 = make_weight(8, 40, "per_group", 10)
    assert gs == 10
    before = cpu.STATS["linear:reference"]
    y = torch.ops.torch_ternary.linear(torch.ones(3, 40), packed, scale, None, 40, gs)
    assert cpu.STATS["linear:reference"] == before + 1
    assert rel_fro(y, torch.ones(3, 40).double() @ w64.T) <= 1e-6


def test_forcing_an_isa_this_cpu_lacks_or_an_unknown_one_is_an_error():
    from torch_ternary import UnsupportedDeviceError

    require_isa("scalar")
    packed, scale, gs, _, _ = make_weight(8, 40)
    lacking = [i for i in ALL_ISAS if i not in cpu.available_isas()]
    for isa in lacking:
        with forced_isa(isa), pytest.raises(UnsupportedDeviceError, match=isa):
            torch.ops.torch_ternary.linear(torch.ones(3, 40), packed, scale, None, 40, gs)
    with forced_isa("avx9000"), pytest.raises(ValueError, match="TORCH_TERNARY_CPU_ISA"):
        torch.ops.torch_ternary.linear(torch.ones(3, 40), packed, scale, None, 40, gs)
    with forced_isa("reference"):
        before = cpu.STATS["linear:reference"]
        torch.ops.torch_ternary.linear(torch.ones(3, 40), packed, scale, None, 40, gs)
        assert cpu.STATS["linear:reference"] == before + 1


def test_set_num_threads_is_respected_and_results_do_not_depend_on_it():
    require_isa("scalar")
    packed, scale, gs, _, _ = make_weight(300, 500)
    x = torch.randn(40, 500)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = torch.ops.torch_ternary.linear(x, packed, scale, None, 500, gs)
        torch.set_num_threads(max(2, old))
        many = torch.ops.torch_ternary.linear(x, packed, scale, None, 500, gs)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(one, many)


def test_float32_tokens_of_large_calls_take_the_reference_on_avx2_cpus(monkeypatch):
    """On a CPU whose best ISA is avx2, float32 tokens from AVX2_FP32_REFERENCE_MIN_TOKENS a call go to the
    reference (dequantize + float32 GEMM); fewer tokens, bf16 tokens, a forced ISA and better ISAs keep the limbs."""
    if "avx2" not in cpu.available_isas():
        pytest.skip("needs avx2")
    monkeypatch.delenv("TORCH_TERNARY_CPU_ISA", raising=False)
    real = cpu.available_isas()
    k, n, big = 96, 40, cpu.AVX2_FP32_REFERENCE_MIN_TOKENS
    packed, scale, gs, _, w64 = make_weight(n, k, "per_channel", 16, 5)

    def path_of(tokens, dtype):
        before = dict(cpu.STATS)
        x = torch.randn(tokens, k).to(dtype)
        y = torch.ops.torch_ternary.linear(x, packed, scale, None, k, gs)
        assert rel_fro(y, x.double() @ w64.T) <= (1e-5 if dtype == torch.float32 else 1e-2)
        return [key for key in cpu.STATS if cpu.STATS[key] != before.get(key, 0)]

    monkeypatch.setattr(cpu, "available_isas", lambda: ("avx2", "scalar"))
    assert path_of(big, torch.float32) == ["linear:reference"]
    assert path_of(big - 1, torch.float32) == ["linear:avx2"]
    assert path_of(big, torch.bfloat16) == ["linear:avx2"]
    with forced_isa("avx2"):
        assert path_of(big, torch.float32) == ["linear:avx2"]
    if real[0] != "avx2":  # a better ISA keeps its own kernel
        monkeypatch.setattr(cpu, "available_isas", lambda: real)
        assert path_of(big, torch.float32) == [f"linear:{real[0]}"]
