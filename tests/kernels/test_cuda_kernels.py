"""GPU property tests of every CUDA kernel against the plain-torch reference (skipped without a GPU).

Error criterion (flash-attention style): against an fp32 reference ``x @ (s*q).T + b`` (exact
fp32 scales, fp32 matmul, no TF32), a kernel's maximum error may be at most twice that of torch's
own same-precision computation (the reference kernel of torch_ternary.ops: ``s*q`` cast to the
dtype, cuBLAS with fp32 accumulation), plus one ulp of the output's scale. dequantize and unpack
must be bit-exact.

Run on a GPU with ``pytest -q tests -k "cuda or kernel"`` (benchmarks/run_gpu.sh does).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from torch_ternary.format import packing
from torch_ternary.ops import ternary_linear as ops
from torch_ternary.quantization.absmean import num_groups


def _gpu_ok() -> bool:
    if not torch.cuda.is_available() or importlib.util.find_spec("cupy") is None:
        return False
    return torch.cuda.get_device_capability() >= (8, 0)


pytestmark = pytest.mark.skipif(not _gpu_ok(), reason="needs a CUDA GPU of sm_80+ and CuPy")

if _gpu_ok():  # imported here so that collection on CPU does not touch CUDA
    import torch_ternary.kernels as K
    from torch_ternary.kernels import dispatch

DEV = "cuda"
HALF = [torch.bfloat16, torch.float16]
GRANULARITIES = ["per_tensor", "per_channel", "per_group"]


def make_weight(n, k, granularity, group_size, seed):
    """Packed codes, scales and the fp32 dense weight ``s * q`` (exact), on the GPU."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(-1, 2, (n, k), generator=g, dtype=torch.int8)
    gs = k if granularity != "per_group" or group_size >= k else group_size
    rows = 1 if granularity == "per_tensor" else n
    scale = torch.rand(rows, num_groups(k, gs), generator=g) * 0.1 + 0.01
    w32 = scale.repeat_interleave(gs, dim=1)[:, :k].expand(n, k) * codes.float()
    return packing.pack_codes(codes).to(DEV), scale.to(DEV), gs, codes.to(DEV), w32.to(DEV)


def make_x(m, k, dtype, seed, layout):
    """Activations ``[m, k]`` in one of several memory layouts (the kernels must accept any)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(m, k, generator=g)
    if layout == "transposed":
        return base.t().contiguous().to(DEV, dtype).t()  # column-major view
    if layout == "strided":
        wide = torch.zeros(m, 2 * k)
        wide[:, ::2] = base
        return wide.to(DEV, dtype)[:, ::2]
    if layout == "offset":  # contiguous rows, storage offset of one element (misaligned)
        flat = torch.zeros(m * k + 1)
        flat[1:] = base.reshape(-1)
        return flat.to(DEV, dtype)[1:].view(m, k)
    return base.to(DEV, dtype)


class Reference:
    """The fp32 result ``x @ (s*q).T + b`` and torch's same-precision result (the reference kernel)."""

    def __init__(self, x, packed, scale, bias, k, gs, w32):
        self.dtype = x.dtype
        tf32, torch.backends.cuda.matmul.allow_tf32 = torch.backends.cuda.matmul.allow_tf32, False
        try:
            self.exact = (x.float() @ w32.T).double()
        finally:
            torch.backends.cuda.matmul.allow_tf32 = tf32
        if bias is not None:
            self.exact = self.exact + bias.double()
        same = ops.linear._init_fn(x, packed, scale, bias, k, gs).double()
        self.err_same = (same - self.exact).abs().max().item() if same.numel() else 0.0

    def check(self, y):
        """Kernel error vs fp32 <= 2 x (torch same-precision error) + 1 ulp of the output scale."""
        assert y.dtype == self.dtype and y.shape == self.exact.shape
        if y.numel() == 0:
            return
        eps = torch.finfo(self.dtype).eps
        err = (y.double() - self.exact).abs().max().item()
        tol = 2 * self.err_same + eps * (self.exact.abs().max().item() + 1)
        assert err <= tol, f"max error {err:.3e} > tol {tol:.3e} (torch same-precision error {self.err_same:.3e})"


def assert_matches_reference(y, x, packed, scale, bias, k, gs, w32):
    Reference(x, packed, scale, bias, k, gs, w32).check(y)


weights = dict(
    n=st.integers(1, 300),
    k=st.integers(1, 700),
    granularity=st.sampled_from(GRANULARITIES),
    group_size=st.sampled_from([16, 32, 48, 64, 128, 256]),
    dtype=st.sampled_from(HALF),
    has_bias=st.booleans(),
    layout=st.sampled_from(["contiguous", "transposed", "strided", "offset"]),
    seed=st.integers(0, 2**16),
)


@given(m=st.integers(1, 40), rows_per_warp=st.sampled_from([1, 2]), warps=st.integers(0, 8), **weights)
def test_cuda_skinny_kernel(m, n, k, granularity, group_size, dtype, has_bias, layout, seed, rows_per_warp, warps):
    packed, scale, gs, _, w32 = make_weight(n, k, granularity, group_size, seed)
    x = make_x(m, k, dtype, seed + 1, layout)
    bias = torch.randn(n, generator=torch.Generator().manual_seed(seed + 2)).to(DEV, dtype) if has_bias else None
    y = K.skinny_linear(x, packed, scale, bias, k, gs, rows_per_warp=rows_per_warp, warps=warps)
    assert_matches_reference(y, x, packed, scale, bias, k, gs, w32)


@given(m=st.sampled_from([1, 5, 16, 17, 127, 128, 129, 300, 1000]), **weights)
def test_cuda_fused_gemm_kernel(m, n, k, granularity, group_size, dtype, has_bias, layout, seed):
    packed, scale, gs, _, w32 = make_weight(n, k, granularity, group_size, seed)
    x = make_x(m, k, dtype, seed + 1, layout)
    bias = torch.randn(n, generator=torch.Generator().manual_seed(seed + 2)).to(DEV, dtype) if has_bias else None
    y = K.fused_linear(x, packed, scale, bias, k, gs)
    assert_matches_reference(y, x, packed, scale, bias, k, gs, w32)


@given(m=st.sampled_from([1, 17, 300, 2048]), **weights)
def test_cuda_decode_cublas_path(m, n, k, granularity, group_size, dtype, has_bias, layout, seed):
    packed, scale, gs, _, w32 = make_weight(n, k, granularity, group_size, seed)
    x = make_x(m, k, dtype, seed + 1, layout)
    bias = torch.randn(n, generator=torch.Generator().manual_seed(seed + 2)).to(DEV, dtype) if has_bias else None
    y = K.decode_cublas_linear(x, packed, scale, bias, k, gs)
    assert_matches_reference(y, x, packed, scale, bias, k, gs, w32)


@given(
    n=st.integers(1, 300), k=st.integers(1, 700), granularity=st.sampled_from(GRANULARITIES),
    group_size=st.sampled_from([16, 32, 48, 128]), dtype=st.sampled_from([torch.float32, *HALF]),
    seed=st.integers(0, 2**16),
)
def test_cuda_dequantize_and_unpack_kernels_are_exact(n, k, granularity, group_size, dtype, seed):
    packed, scale, gs, codes, _ = make_weight(n, k, granularity, group_size, seed)
    assert torch.equal(K.unpack_cuda(packed, k), codes)
    got = K.dequantize_cuda(packed, scale, k, gs, dtype)
    ref = ops.dequantize._init_fn(packed, scale, k, gs, dtype)
    assert got.dtype == dtype and torch.equal(got, ref)
    ws = torch.empty(n, k, dtype=dtype, device=DEV)
    assert K.dequantize_cuda(packed, scale, k, gs, dtype, out=ws) is ws and torch.equal(ws, ref)


@pytest.mark.parametrize("k,n", [(3072, 3072), (3072, 18432), (15360, 3072)])
@pytest.mark.parametrize("m", [1, 16, 4608])
def test_cuda_flux_shapes_all_paths(m, k, n):
    packed, scale, gs, _, w32 = make_weight(n, k, "per_channel", k, seed=m + n)
    x = make_x(m, k, torch.bfloat16, 7, "contiguous")
    bias = torch.randn(n, device=DEV, dtype=torch.bfloat16)
    ref = Reference(x, packed, scale, bias, k, gs, w32)
    del w32
    paths = [K.decode_cublas_linear, K.fused_linear] + ([K.skinny_linear] if m <= 16 else [])
    for path in paths:
        ref.check(path(x, packed, scale, bias, k, gs))


@pytest.mark.parametrize("path", ["skinny", "decode_cublas", "fused_mma"])
def test_cuda_op_uses_kernels_eager_and_compiled(path):
    """torch.ops.torch_ternary.linear on CUDA reaches the kernel, in eager mode and under torch.compile."""
    assert K.registered()
    packed, scale, gs, _, w32 = make_weight(96, 200, "per_group", 64, seed=3)
    x = make_x(4, 200, torch.bfloat16, 4, "contiguous")
    bias = torch.randn(96, device=DEV, dtype=torch.bfloat16)

    def f(x, packed, scale, bias):
        return torch.ops.torch_ternary.linear(x, packed, scale, bias, 200, gs) * 2

    compiled = torch.compile(f, fullgraph=True)
    with dispatch.forced(path):
        dispatch.STATS.clear()
        eager = f(x, packed, scale, bias)
        assert dispatch.STATS[f"linear:{path}"] == 1
        out = compiled(x, packed, scale, bias)
        assert dispatch.STATS[f"linear:{path}"] == 2
    torch.testing.assert_close(out, eager)
    assert_matches_reference(eager / 2, x, packed, scale, bias, 200, gs, w32)


@pytest.mark.parametrize("m", [1, 40])
@pytest.mark.parametrize("dtype", HALF)
def test_cuda_opcheck(m, dtype):
    """torch.library.opcheck of the ops with their CUDA kernels (schema, fake tensors, autograd, AOT)."""
    packed, scale, gs, _, _ = make_weight(24, 40, "per_group", 16, seed=1)
    x = torch.randn(m, 40, device=DEV, dtype=dtype, requires_grad=True)
    bias = torch.randn(24, device=DEV, dtype=dtype, requires_grad=True)
    torch.library.opcheck(torch.ops.torch_ternary.linear.default, (x, packed, scale, bias, 40, gs))
    torch.library.opcheck(torch.ops.torch_ternary.unpack.default, (packed, 40))
    torch.library.opcheck(torch.ops.torch_ternary.dequantize.default, (packed, scale, 40, gs, dtype))


def test_cuda_ternary_tensor_linear_and_fallbacks():
    """F.linear on a TernaryTensor (3-D input) takes the table's path; fp32 goes to the reference."""
    from torch_ternary import TernaryTensor

    w = torch.randn(64, 160)
    t = TernaryTensor.from_float(w, "per_group", 32, dtype=torch.bfloat16).to(DEV)
    dispatch.STATS.clear()
    x = torch.randn(2, 3, 160, device=DEV, dtype=torch.bfloat16)
    y = F.linear(x, t)
    assert y.shape == (2, 3, 64) and dispatch.STATS["linear:skinny"] == 1
    torch.testing.assert_close(y, F.linear(x, t.dequantize()), rtol=2e-2, atol=2e-2)
    F.linear(torch.randn(600, 160, device=DEV, dtype=torch.bfloat16), t)
    assert dispatch.STATS["linear:decode_cublas"] == 1
    F.linear(torch.randn(2, 160, device=DEV), t)
    assert dispatch.STATS["linear:reference(dtype)"] == 1
    assert torch.equal(t.codes().cpu(), packing.unpack_codes(t.packed.cpu(), 160))
    assert dispatch.STATS["unpack:cuda"] >= 1
    t.dequantize()
    assert dispatch.STATS["dequantize:cuda"] >= 1


def test_cuda_kernels_run_on_the_current_stream():
    packed, scale, gs, _, w32 = make_weight(256, 512, "per_channel", 512, seed=5)
    x = make_x(3, 512, torch.float16, 6, "contiguous")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):  # queue work behind a busy stream
            torch.randn(2048, 2048, device=DEV) @ torch.randn(2048, 2048, device=DEV)
        y = K.skinny_linear(x, packed, scale, None, 512, gs)
        z = K.fused_linear(x, packed, scale, None, 512, gs)
    torch.cuda.current_stream().wait_stream(stream)
    assert_matches_reference(y, x, packed, scale, None, 512, gs, w32)
    assert_matches_reference(z, x, packed, scale, None, 512, gs, w32)


def test_cuda_memcheck_smoke():
    """One call of every kernel on ragged shapes: what compute-sanitizer runs (benchmarks/run_gpu.sh)."""
    for dtype in HALF:
        packed, scale, gs, codes, w32 = make_weight(37, 77, "per_group", 32, seed=11)
        for m in (1, 9, 130):
            x = make_x(m, 77, dtype, m, "offset")
            bias = torch.randn(37, device=DEV, dtype=dtype)
            ref = Reference(x, packed, scale, bias, 77, gs, w32)
            for fn in (K.skinny_linear, K.fused_linear, K.decode_cublas_linear):
                ref.check(fn(x, packed, scale, bias, 77, gs))
        assert torch.equal(K.unpack_cuda(packed, 77), codes)
        K.dequantize_cuda(packed, scale, 77, gs, dtype)
    torch.cuda.synchronize()
