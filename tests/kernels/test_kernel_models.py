"""CPU checks of the CUDA kernels' logic through lane-level models (tests/kernels/emulate.py).

These run everywhere (no GPU): they replay each thread's loads, decodes, fragment placement and
epilogue, and compare with a dense float64 reference. The GPU tests (test_cuda_kernels.py)
check the compiled kernels themselves.
"""

import numpy as np
import pytest
import torch

from torch_ternary.format import packing
from torch_ternary.kernels.common import emulate_group_div, group_div
from torch_ternary.quantization.absmean import num_groups

from . import emulate


def make_case(n, k, m, granularity, group_size, kind, has_bias, seed):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(-1, 2, (n, k), generator=g, dtype=torch.int8)
    gs = k if granularity != "per_group" else group_size
    rows = 1 if granularity == "per_tensor" else n
    scale = torch.rand(rows, num_groups(k, gs), generator=g) * 0.1 + 0.01
    packed = packing.pack_codes(codes)
    words = packed.view(torch.int32).numpy().view(np.uint32)
    x = emulate.round_to(torch.randn(m, k, generator=g).numpy(), kind)
    bias = emulate.round_to(torch.randn(n, generator=g).numpy(), kind) if has_bias else None
    return codes.numpy().astype(np.float64), scale.numpy(), gs, words, x, bias


def dense_reference(x, codes, scale, gs, kind, bias):
    """x @ W^T with W = q * s rounded to ``kind`` for groups (as the kernels), fp32 s applied after otherwise."""
    n, k = codes.shape
    grouped = scale.shape[1] > 1
    if grouped:
        s = np.repeat(emulate.round_to(scale, kind), gs, axis=1)[:, :k]
        w = codes * np.broadcast_to(s, (n, k))
        y = x @ w.T
    else:
        y = (x @ codes.T) * np.broadcast_to(scale.astype(np.float64).reshape(-1), (n,))
    return y if bias is None else y + bias


def weight_encoding(scale, n, gs):
    s_k = scale.shape[1]
    grouped = int(s_k > 1)
    shift, magic = group_div(gs // 16) if grouped else (0, 0)
    return (s_k if scale.shape[0] == n else 0), grouped, emulate.GroupDiv(shift, magic)


@pytest.mark.parametrize(
    "n,k,m,granularity,gs,kind,bias,R,W",
    [
        (40, 200, 3, "per_group", 48, "bf16", False, 1, 3),   # kblocks 13: VW = 1, K tail, gb = 3 (magic)
        (33, 256, 11, "per_channel", 256, "f16", True, 2, 2),  # VW = 4, NT = 2, ragged N, R = 2
        (17, 128, 1, "per_tensor", 128, "bf16", True, 1, 1),   # GEMV, per-tensor scale
        (24, 64, 20, "per_group", 32, "f16", False, 1, 2),     # two M tiles (grid.y), gb = 2 (shift)
    ],
)
def test_skinny_model_matches_dense(n, k, m, granularity, gs, kind, bias, R, W):
    codes, scale, gs, words, x, b = make_case(n, k, m, granularity, gs, kind, bias, seed=n + k + m)
    kblocks = words.shape[1]
    vw = 4 if kblocks % 4 == 0 else 1
    nt = 1 if m <= 8 else 2
    xp = np.zeros((m, 16 * kblocks))
    xp[:, :k] = x
    s_row_stride, grouped, gdiv = weight_encoding(scale, n, gs)
    got = emulate.skinny(xp, words, scale, b, kind, s_row_stride, grouped, gdiv, R, nt, vw, W)
    ref = dense_reference(x, codes, scale, gs, kind, b)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "n,k,m,granularity,gs,kind,bias",
    [
        (136, 72, 20, "per_group", 32, "bf16", True),   # 2 N tiles, K tail inside a 64-wide stage
        (9, 40, 5, "per_channel", 40, "f16", False),    # tiny, odd N
    ],
)
def test_gemm_model_matches_dense(n, k, m, granularity, gs, kind, bias):
    codes, scale, gs, words, x, b = make_case(n, k, m, granularity, gs, kind, bias, seed=n * k + m)
    s_row_stride, grouped, gdiv = weight_encoding(scale, n, gs)
    got = emulate.gemm(x, words, scale, b, kind, k, s_row_stride, grouped, gdiv)
    ref = dense_reference(x, codes, scale, gs, kind, b)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_decode_constants_give_codes_minus_one():
    for kind in emulate.KINDS:
        h2 = emulate.Half2(kind)
        for c0 in range(3):
            for c1 in range(3):
                word = c0 | (c1 << 16)
                assert h2.pair(h2.decode_pair(word)) == (c0 - 1.0, c1 - 1.0)
        s2 = h2.splat(0.0371)
        s = emulate.round_to(0.0371, kind).item()
        for c in range(3):
            assert h2.pair(h2.scale_pair(h2.decode_pair(c | (c << 16)), s2)) == ((c - 1) * s, (c - 1) * s)


def test_unpack_word_model_matches_packing():
    g = torch.Generator().manual_seed(3)
    codes = torch.randint(-1, 2, (8, 16 * 6), generator=g, dtype=torch.int8)
    words = packing.pack_codes(codes).view(torch.int32).numpy().view(np.uint32)
    for r in range(8):
        for w in range(6):
            assert emulate.unpack_word_i8(int(words[r, w])) == codes[r, 16 * w:16 * w + 16].tolist()


@pytest.mark.parametrize("gb", [1, 2, 3, 5, 6, 7, 8, 12, 24, 96, 100, 1000, 4095, 65535])
def test_group_division_is_exact(gb):
    kb = torch.arange(0, 1 << 16, dtype=torch.int64)
    shift, magic = group_div(gb)
    assert torch.equal(emulate_group_div(kb, shift, magic), kb // gb)


# ------------------------------------------------------------------------------------------------
# The fragment models above come from the PTX ISA tables. Check them against a second, independent
# statement of the same hardware layouts: CUTLASS / CuTe's (thread, value) -> coordinate layouts
# (include/cute/atom/mma_traits_sm80.hpp, SM80_16x8x16_F32{F16F16,BF16BF16}F32_TN, and
# include/cute/atom/copy_traits_sm75.hpp, SM75_U32x4_LDSM_N), evaluated here from their
# shape / stride tuples. A model that merely repeated a kernel's own assumption would fail this.
def _cute_flat(shape, stride):
    if isinstance(shape, int):
        return [(shape, stride)]
    return [mode for s, d in zip(shape, stride) for mode in _cute_flat(s, d)]


def _cute(layout, idx):
    """CuTe layout function: colexicographic decomposition of ``idx`` over the (nested) shape."""
    off = 0
    for s, d in _cute_flat(*layout):
        off += (idx % s) * d
        idx //= s
    return off


# (thread layout, value layout) of the m16n8k16 f16 / bf16 MMA atom
_CUTE_THR_A, _CUTE_VAL_A = ((4, 8), (32, 1)), ((2, 2, 2), (16, 8, 128))  # -> (m, k), M = 16
_CUTE_THR_B, _CUTE_VAL_B = ((4, 8), (16, 1)), ((2, 2), (8, 64))          # -> (n, k), N = 8
_CUTE_THR_C, _CUTE_VAL_C = ((4, 8), (32, 1)), ((2, 2), (16, 8))          # -> (m, n), M = 16


@pytest.mark.parametrize("kind", emulate.KINDS)
def test_mma_model_matches_cute_layouts(kind):
    h2 = emulate.Half2(kind)
    rng = np.random.default_rng(0)
    A = rng.integers(-4, 5, (16, 16)).astype(np.float64)  # [m, k]
    B = rng.integers(-4, 5, (16, 8)).astype(np.float64)   # [k, n]
    a = [[0] * 4 for _ in range(32)]
    b = [[0] * 2 for _ in range(32)]
    for lane in range(32):
        for v in range(8):  # register v // 2, half v % 2
            off = _cute(_CUTE_THR_A, lane) + _cute(_CUTE_VAL_A, v)
            a[lane][v // 2] |= emulate.float_to_half(A[off % 16, off // 16], kind) << (16 * (v % 2))
        for v in range(4):
            off = _cute(_CUTE_THR_B, lane) + _cute(_CUTE_VAL_B, v)
            b[lane][v // 2] |= emulate.float_to_half(B[off // 8, off % 8], kind) << (16 * (v % 2))
    acc = np.zeros((32, 4))
    emulate.mma_m16n8k16(acc, a, b, h2)
    D = A @ B
    for lane in range(32):
        for v in range(4):
            off = _cute(_CUTE_THR_C, lane) + _cute(_CUTE_VAL_C, v)
            assert acc[lane, v] == D[off % 16, off // 16], (lane, v)


def test_ldmatrix_model_matches_cute_layout():
    # SM75_U32x4_LDSM_N: thread T supplies the address of 128-bit row T (SrcLayout (32, 128):(128, 1));
    # register r of thread T receives bits 32 T + 1024 r .. +31 (DstLayout (32, (32, 4)):(32, (1, 1024))).
    h2 = emulate.Half2("f16")
    rows = [[8 * L + c for c in range(8)] for L in range(32)]  # element e of the 32 x 8 source = e
    regs = emulate.ldmatrix_x4(rows, h2)
    for lane in range(32):
        for r in range(4):
            bit = 32 * lane + 1024 * r
            assert h2.pair(regs[lane][r]) == (bit // 16, bit // 16 + 1), (lane, r)
