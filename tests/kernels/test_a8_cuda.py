"""GPU tests of the W1.58A8 path (skipped without a CUDA GPU of sm_80+ and CuPy).

* ``cuda/act_quant.cu`` is bit-exact against :func:`torch_ternary.ops.ternary_linear_a8.quantize_activations`
  (codes, scales, zero pad; any row stride / alignment; zero, tiny, NaN and inf rows);
* ``cuda/a8_weights.cu`` writes exactly the codes (int8, or e4m3 -1 / 0 / +1), zero pads;
* ``cuda/a8_epilogue.cu`` is bit-exact against the float32 torch formula;
* ``a8_linear`` (int8: ``_int_mm`` + epilogue) is bit-exact against the op's reference, chunked or
  not, padded or not; fp8 (``_scaled_mm``, row-wise or unit-scale fallback) is close to it;
* ``F.linear`` on an A8 ``TernaryTensor`` reaches the kernels eagerly and under ``torch.compile``.

fp8 cases run on compute capability 8.9+ only.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from torch_ternary import TernaryTensor
from torch_ternary.format import packing
from torch_ternary.ops import ternary_linear_a8 as ops_a8


def _gpu_ok() -> bool:
    if not torch.cuda.is_available() or importlib.util.find_spec("cupy") is None:
        return False
    return torch.cuda.get_device_capability() >= (8, 0)


pytestmark = pytest.mark.skipif(not _gpu_ok(), reason="needs a CUDA GPU of sm_80+ and CuPy")

if _gpu_ok():  # imported here so that collection on CPU does not touch CUDA
    import torch_ternary.kernels as K
    from torch_ternary.kernels import a8, dispatch

DEV = "cuda"
DTYPES = [torch.bfloat16, torch.float16, torch.float32]


def fp8_ok() -> bool:
    return torch.cuda.get_device_capability() >= (8, 9)


def formats() -> list[str]:
    return ["int8", "fp8"] if _gpu_ok() and fp8_ok() else ["int8"]


def make_weight(n, k, granularity, seed):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(-1, 2, (n, k), generator=g, dtype=torch.int8)
    rows = 1 if granularity == "per_tensor" else n
    scale = torch.rand(rows, 1, generator=g) * 0.1 + 0.01
    return packing.pack_codes(codes), scale, codes


def make_x(m, k, dtype, seed, layout):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(m, k, generator=g) * torch.logspace(-3, 3, max(m, 1))[:m, None]
    if layout == "strided":  # rows of a wider tensor
        wide = torch.zeros(m, k + 8)
        wide[:, :k] = base
        return wide.to(DEV, dtype)[:, :k]
    if layout == "offset":  # contiguous rows, misaligned start
        flat = torch.zeros(m * k + 1)
        flat[1:] = base.reshape(-1)
        return flat.to(DEV, dtype)[1:].view(m, k)
    if layout == "transposed":
        return base.t().contiguous().to(DEV, dtype).t()
    return base.to(DEV, dtype)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8) if t.element_size() == 1 else t.view(torch.int32)


# ---------------------------------------------------------------------------- act_quant.cu
@given(
    m=st.integers(1, 70),
    k=st.integers(1, 300),
    dtype=st.sampled_from(DTYPES),
    layout=st.sampled_from(["contiguous", "strided", "offset", "transposed"]),
    special=st.sampled_from(["none", "zero", "tiny", "nan", "inf"]),
    seed=st.integers(0, 2**16),
)
def test_act_quant_bit_exact(m, k, dtype, layout, special, seed):
    for fmt in formats():
        x = make_x(m, k, dtype, seed, layout)
        if special != "none":
            row = {"zero": 0.0, "tiny": 1e-35, "nan": float("nan"), "inf": float("inf")}[special]
            x[m // 2, : max(1, k // 3)] = row
            if special in ("zero", "tiny"):
                x[m // 2] = row
        q, s = a8.quantize_activations_cuda(x, fmt)
        qr, sr = ops_a8.quantize_activations(x.cpu(), fmt)
        assert q.shape == (m, -(-k // 16) * 16) and s.shape == (m,)
        s_cpu = s.cpu()
        nan_rows = torch.isnan(sr)
        assert torch.equal(torch.isnan(s_cpu), nan_rows)
        assert torch.equal(s_cpu[~nan_rows], sr[~nan_rows])
        qc = q.cpu()[:, :k]
        if fmt == "fp8":  # NaN codes (NaN / inf rows) may differ in their sign bit: compare them as NaN
            nan_codes = torch.isnan(qr.float())
            assert torch.equal(torch.isnan(qc.float()), nan_codes)
            assert torch.equal(_bits(qc)[~nan_codes], _bits(qr)[~nan_codes])
        else:
            assert torch.equal(_bits(qc), _bits(qr))
        assert int(q.view(torch.uint8)[:, k:].count_nonzero()) == 0


# --------------------------------------------------------------------------- a8_weights.cu
@pytest.mark.parametrize("n,k,n_pad", [(1, 1, 16), (37, 150, 48), (64, 3072, 64), (3, 16, 3), (300, 40, 304)])
def test_weight_workspace(n, k, n_pad):
    packed, _, codes = make_weight(n, k, "per_channel", n * k)
    kp = -(-k // 16) * 16
    expect = torch.zeros(n_pad, kp, dtype=torch.int8)
    expect[:n, :k] = codes
    for fmt in formats():
        w = a8.a8_weight_workspace(packed.to(DEV), fmt, n_pad)
        assert w.shape == (n_pad, kp) and w.is_contiguous()
        want = expect if fmt == "int8" else expect.float().to(ops_a8.fp8_dtype())
        assert torch.equal(_bits(w.cpu()), _bits(want))


# -------------------------------------------------------------------------- a8_epilogue.cu
@given(
    m=st.integers(1, 50),
    n=st.integers(1, 70),
    pad=st.integers(0, 9),
    dtype=st.sampled_from(DTYPES),
    acc_dtype=st.sampled_from([torch.int32, torch.float32]),
    per_tensor=st.booleans(),
    has_bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_epilogue_bit_exact(m, n, pad, dtype, acc_dtype, per_tensor, has_bias, seed):
    g = torch.Generator().manual_seed(seed)
    acc = torch.randint(-127 * 3072, 127 * 3072, (m, n + pad), generator=g, dtype=torch.int32)
    if acc_dtype == torch.float32:
        acc = acc.float() * 0.37
    sx = torch.rand(m, generator=g) * 0.1
    sw = torch.rand(1 if per_tensor else n, generator=g) * 0.01
    bias = torch.randn(n, generator=g).to(dtype) if has_bias else None
    ref = (acc[:, :n].float() * sx[:, None]) * sw[None, :]
    if bias is not None:
        ref = ref + bias.float()
    out = torch.empty(m, n, dtype=dtype, device=DEV)
    a8.a8_epilogue(acc.to(DEV), sx.to(DEV), sw.to(DEV), None if bias is None else bias.to(DEV), n, out)
    assert torch.equal(out.cpu(), ref.to(dtype))


# ------------------------------------------------------------------------------ a8_linear
@given(
    m=st.integers(1, 300),
    n=st.integers(1, 100),
    k=st.integers(1, 300),
    dtype=st.sampled_from(DTYPES),
    granularity=st.sampled_from(["per_tensor", "per_channel"]),
    has_bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_int8_linear_bit_exact(m, n, k, dtype, granularity, has_bias, seed):
    packed, scale, _ = make_weight(n, k, granularity, seed)
    x = make_x(m, k, dtype, seed + 1, "contiguous")
    bias = torch.randn(n).to(dtype) if has_bias else None
    ref = ops_a8.linear_a8._init_fn(x.cpu(), packed, scale, bias, k, k, "int8")
    y = a8.a8_linear(x, packed.to(DEV), scale.to(DEV), None if bias is None else bias.to(DEV), k, k, "int8")
    assert torch.equal(y.cpu(), ref)


def test_int8_linear_chunked_equals_unchunked(monkeypatch):
    packed, scale, _ = make_weight(200, 272, "per_channel", 1)
    x = make_x(1000, 272, torch.bfloat16, 2, "contiguous")
    args = (x, packed.to(DEV), scale.to(DEV), None, 272, 272, "int8")
    whole = a8.a8_linear(*args)
    monkeypatch.setattr(a8, "INT_MM_CHUNK_BYTES", 4 * 208 * 40)  # 40-row chunks
    assert torch.equal(a8.a8_linear(*args), whole)
    assert torch.equal(whole.cpu(), ops_a8.linear_a8._init_fn(x.cpu(), packed, scale, None, 272, 272, "int8"))


def _sqnr(ref, out):
    noise = (out.double() - ref.double()).pow(2).sum().clamp_min(1e-300)
    return float(10 * torch.log10(ref.double().pow(2).sum() / noise))


@pytest.mark.parametrize("rowwise", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,n,k", [(5, 24, 40), (77, 100, 300), (512, 3072, 3072)])
def test_fp8_linear_close_to_reference(m, n, k, dtype, rowwise, monkeypatch):
    if not fp8_ok():
        pytest.skip("fp8 needs compute capability 8.9+")
    packed, scale, _ = make_weight(n, k, "per_channel", m)
    x = make_x(m, k, dtype, m + 1, "contiguous")
    bias = torch.randn(n).to(dtype)
    if not rowwise:
        monkeypatch.setitem(a8._rowwise_ok, torch.cuda.current_device(), False)
    y = a8.a8_linear(x, packed.to(DEV), scale.to(DEV), bias.to(DEV), k, k, "fp8")
    ref = ops_a8.linear_a8._init_fn(x.cpu(), packed, scale, bias, k, k, "fp8")
    assert y.dtype == dtype and y.shape == (m, n)
    assert _sqnr(ref, y.cpu()) > 40.0


@pytest.mark.parametrize("k,n", [(3072, 3072), (3072, 12288), (15360, 3072)])
def test_flux_shapes_int8_bit_exact_against_the_cuda_reference(k, n):
    packed, scale, _ = make_weight(n, k, "per_channel", k + n)
    x = make_x(4608, k, torch.bfloat16, 7, "contiguous")
    bias = torch.randn(n, device=DEV).to(torch.bfloat16)
    packed, scale = packed.to(DEV), scale.to(DEV)
    y = a8.a8_linear(x, packed, scale, bias, k, k, "int8")
    ref = ops_a8.linear_a8._init_fn(x, packed, scale, bias, k, k, "int8")  # plain torch on the GPU
    assert torch.equal(y, ref)


# ------------------------------------------------------------------------- op and routing
@pytest.mark.parametrize("fmt", ["int8", "fp8"])
def test_f_linear_reaches_the_a8_kernels_eager_and_compiled(fmt):
    if fmt == "fp8" and not fp8_ok():
        pytest.skip("fp8 needs compute capability 8.9+")
    assert K.registered()
    t = TernaryTensor.from_float(torch.randn(96, 128, device=DEV), activations=fmt)
    lin = torch.nn.Linear(128, 96, device=DEV, dtype=torch.bfloat16)
    lin.weight = torch.nn.Parameter(t, requires_grad=False)
    x = torch.randn(4, 40, 128, device=DEV, dtype=torch.bfloat16)
    dispatch.STATS.clear()
    with torch.no_grad():
        y = lin(x)
        assert dispatch.STATS[f"linear_a8:{fmt}"] == 1
        yc = torch.compile(lin, fullgraph=True)(x)
    assert dispatch.STATS[f"linear_a8:{fmt}"] >= 2
    assert torch.equal(y, yc)
    calls = dispatch.STATS[f"linear_a8:{fmt}"]
    with torch.no_grad():
        small = lin(x[:1, :16])  # 16 rows: the 16-bit op
    assert dispatch.STATS[f"linear_a8:{fmt}"] == calls
    assert torch.equal(small, torch.ops.torch_ternary.linear(x[:1, :16], t.packed, t.scale, lin.bias, 128, 128))


def test_memcheck_a8_ragged_shapes():
    """One call of every A8 kernel on ragged shapes (run under compute-sanitizer by run_gpu.sh)."""
    for fmt in formats():
        for dtype in DTYPES:
            packed, scale, _ = make_weight(37, 45, "per_tensor", 3)
            x = make_x(19, 45, dtype, 4, "offset")
            y = a8.a8_linear(x, packed.to(DEV), scale.to(DEV), torch.randn(37, device=DEV).to(dtype), 45, 45, fmt)
            assert y.shape == (19, 37)
            x1 = make_x(3, 45, dtype, 5, "strided")
            assert a8.a8_linear(x1, packed.to(DEV), scale.to(DEV), None, 45, 45, fmt).shape == (3, 37)
    torch.cuda.synchronize()
