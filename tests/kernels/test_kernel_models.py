"""CPU checks of the CUDA kernels through models that run the kernels' own code (tests/kernels/emulate.py).

What these prove, on CPU: the kernels' statements as written in ``cuda/*.cu`` (parsed and
translated by ``csource.py``: every index, shift, offset, mask, loop bound and tile constant, the
``extern "C"`` entry points with their macros expanded) compute the right outputs when run
thread by thread on hand models of the hardware (mma / ldmatrix fragment layouts from the PTX ISA,
cross-checked below against CuTe's; half rounding; cp.async as an immediate copy), with every
memory access bounds- and alignment-checked and every output written exactly once. Outputs are
compared EXACTLY with a float64 reference rounded to the output dtype (the models accumulate in
float64, so they are exact where the GPU rounds to fp32).

What they do not prove: that nvcc compiles this meaning, that the hardware behaves like the hand
models, the cp.async pipeline's synchronization, races, fp32 rounding, speed. The GPU tests
(test_cuda_kernels.py) check the compiled kernels themselves.
"""

import numpy as np
import pytest
import torch

from torch_ternary.format import packing
from torch_ternary.kernels.common import emulate_group_div, group_div
from torch_ternary.ops import ternary_linear as ops
from torch_ternary.quantization.absmean import num_groups

from . import emulate
from .csource import HALF_TYPES


def make_case(n, k, m, granularity, group_size, kind, has_bias, seed):
    """Codes float64 ``[n, k]``, scale float32 ``[S_n, S_k]``, group size, words uint32 ``[n, kblocks]``,
    x float64 ``[m, k]`` (``kind`` values), bias float64 ``[n]`` (``kind`` values) or None."""
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
    """float64 ``x @ W^T (+ bias)`` with W = q * s rounded to ``kind`` for groups (as the kernels), fp32 s
    applied after otherwise. x: float64 ``[M, K]``, codes float64 ``[N, K]``, scale float32 ``[S_n, S_k]``."""
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
    """``(s_row_stride, grouped, gshift, gmagic)``: the kernels' scalar weight arguments (host encoding)."""
    s_k = scale.shape[1]
    grouped = int(s_k > 1)
    shift, magic = group_div(gs // 16) if grouped else (0, 0)
    return (s_k if scale.shape[0] == n else 0), grouped, shift, magic


SKINNY_CASES = [
    (40, 200, 3, "per_group", 48, "bf16", False, 1, 3),   # kblocks 13: VW = 1, K tail, gb = 3 (magic), prefetch
    (33, 256, 11, "per_channel", 256, "f16", True, 2, 2),  # VW = 4, NT = 2, ragged N, R = 2
    (17, 128, 1, "per_tensor", 128, "bf16", True, 1, 1),   # GEMV, per-tensor scale
    (24, 64, 20, "per_group", 32, "f16", False, 1, 2),     # two M tiles (grid.y), gb = 2 (shift)
]
GEMM_CASES = [
    (136, 72, 20, "per_group", 32, "bf16", True),   # 2 N tiles, K tail inside a 64-wide stage
    (9, 40, 5, "per_channel", 40, "f16", False),    # tiny, odd N (element stores)
]


def run_skinny(case, source=None):
    """(model output, rounded reference), both float64 ``[M, N]``, for one of SKINNY_CASES."""
    n, k, m, granularity, gs, kind, bias, R, W = case
    codes, scale, gs, words, x, b = make_case(n, k, m, granularity, gs, kind, bias, seed=n + k + m)
    kblocks = words.shape[1]
    vw = 4 if kblocks % 4 == 0 else 1
    nt = 1 if m <= 8 else 2
    xp = np.zeros((m, 16 * kblocks))
    xp[:, :k] = x
    got = emulate.skinny(xp, words, scale, b, kind, *weight_encoding(scale, n, gs), R, nt, vw, W, source=source)
    return got, emulate.round_to(dense_reference(x, codes, scale, gs, kind, b), kind)


def run_gemm(case, source=None):
    n, k, m, granularity, gs, kind, bias = case
    codes, scale, gs, words, x, b = make_case(n, k, m, granularity, gs, kind, bias, seed=n * k + m)
    got = emulate.gemm(x, words, scale, b, kind, k, *weight_encoding(scale, n, gs), source=source)
    return got, emulate.round_to(dense_reference(x, codes, scale, gs, kind, b), kind)


@pytest.mark.parametrize("case", SKINNY_CASES)
def test_skinny_model_matches_dense(case):
    got, ref = run_skinny(case)
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("case", GEMM_CASES)
def test_gemm_model_matches_dense(case):
    got, ref = run_gemm(case)
    np.testing.assert_array_equal(got, ref)


DECODE_CASES = [(13, 77, "per_group", 48), (13, 96, "per_group", 32), (7, 96, "per_channel", 0),
                (5, 77, "per_tensor", 0), (3, 16 * 40, "per_group", 16 * 20)]  # the last: kblocks > 32, two x blocks


def decode_case(n, k, granularity, gs, seed=0):
    """packed uint8 ``[n, Kp/4]``, words uint32 ``[n, kblocks]``, scale float32 ``[S_n, S_k]``, gs, codes int8 ``[n, k]``."""
    g = torch.Generator().manual_seed(seed + n + k)
    codes = torch.randint(-1, 2, (n, k), generator=g, dtype=torch.int8)
    gs = gs if granularity == "per_group" else k
    scale = torch.rand(1 if granularity == "per_tensor" else n, num_groups(k, gs), generator=g) * 0.1 + 0.01
    packed = packing.pack_codes(codes)
    return packed, packed.view(torch.int32).numpy().view(np.uint32), scale, gs, codes


def check_decode(case, source=None):
    """unpack and dequantize (bf16 / f16 / f32) bit-exact against the format's reference decode."""
    n, k, granularity, gs = case
    packed, words, scale, gs, codes = decode_case(n, k, granularity, gs)
    np.testing.assert_array_equal(emulate.unpack(words, k, source=source), codes.numpy())
    enc = weight_encoding(scale.numpy(), n, gs)
    for kind, dtype in (("bf16", torch.bfloat16), ("f16", torch.float16), ("f32", torch.float32)):
        got = emulate.dequant(words, scale.numpy(), k, *enc, kind, source=source)
        ref = ops.dequantize._init_fn(packed, scale, k, gs, dtype)
        ref = ref.numpy() if kind == "f32" else ref.view(torch.int16).numpy().view(np.uint16)
        np.testing.assert_array_equal(got.view(np.uint8), np.ascontiguousarray(ref).view(np.uint8), err_msg=kind)


def check_a8_weight(case, source=None):
    """The W1.58A8 weight expansion: int8 codes / e4m3 +-1 bits, zero pad columns and rows."""
    n, k, granularity, gs = case
    _, words, _, gs, codes = decode_case(n, k, granularity, gs)
    n_pad = -(-n // 16) * 16
    expect = np.zeros((n_pad, 16 * words.shape[1]), np.int8)
    expect[:n, :k] = codes.numpy()
    np.testing.assert_array_equal(emulate.a8_weight(words, n_pad, "int8", source=source).view(np.int8), expect)
    e4m3 = {-1: 0xB8, 0: 0x00, 1: 0x38}  # e4m3fn -1.0 / 0 / +1.0 (sign, exponent 0111, mantissa 000)
    np.testing.assert_array_equal(emulate.a8_weight(words, n_pad, "fp8", source=source),
                                  np.vectorize(e4m3.get)(expect).astype(np.uint8))


@pytest.mark.parametrize("case", DECODE_CASES)
def test_decode_models_match_reference(case):
    check_decode(case)


@pytest.mark.parametrize("case", DECODE_CASES[:3])
def test_a8_weight_model_matches_codes(case):
    check_a8_weight(case)


def test_decode_constants_give_codes_minus_one():
    """The source's decode_pair / splat_scale / scale_pair (translated) turn codes into q and q * s."""
    for kind in emulate.KINDS:
        T = HALF_TYPES[kind]
        decode = emulate.DEFAULT.device_function("gemv.cu", "decode_pair", T)
        splat = emulate.DEFAULT.device_function("gemv.cu", "splat_scale", T)
        scale_pair = emulate.DEFAULT.device_function("gemv.cu", "scale_pair", T)

        def pair(reg, kind=kind):
            return emulate.half_to_float(reg, kind), emulate.half_to_float(reg >> 16, kind)

        for c0 in range(3):
            for c1 in range(3):
                assert pair(decode(c0 | (c1 << 16))) == (c0 - 1.0, c1 - 1.0)
                assert pair(decode((c0 | (c1 << 16)) | 0xFFFCFFFC)) == (c0 - 1.0, c1 - 1.0)  # other bits masked off
        s = emulate.round_to(0.0371, kind).item()
        for c in range(3):
            assert pair(scale_pair(decode(c | (c << 16)), splat(0.0371))) == ((c - 1) * s, (c - 1) * s)


@pytest.mark.parametrize("gb", [1, 2, 3, 5, 6, 7, 8, 12, 24, 96, 100, 1000, 4095, 65535])
def test_group_division_is_exact(gb):
    kb = torch.arange(0, 1 << 16, dtype=torch.int64)
    shift, magic = group_div(gb)
    assert torch.equal(emulate_group_div(kb, shift, magic), kb // gb)  # the host's encoding
    gdiv = emulate.DEFAULT.group_div("decode.cu", shift, magic)  # the source's GroupDiv::operator()
    sample = list(range(0, 1 << 16, 251)) + [gb - 1, gb, (1 << 16) - 1]
    assert [gdiv(v) for v in sample] == [v // gb for v in sample]


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
    emulate.mma_m16n8k16(acc, a, b, kind)
    D = A @ B
    for lane in range(32):
        for v in range(4):
            off = _cute(_CUTE_THR_C, lane) + _cute(_CUTE_VAL_C, v)
            assert acc[lane, v] == D[off % 16, off // 16], (lane, v)


def test_ldmatrix_model_matches_cute_layout():
    # SM75_U32x4_LDSM_N: thread T supplies the address of 128-bit row T (SrcLayout (32, 128):(128, 1));
    # register r of thread T receives bits 32 T + 1024 r .. +31 (DstLayout (32, (32, 4)):(32, (1, 1024))).
    rows = [[8 * L + c for c in range(8)] for L in range(32)]  # 16-bit element e of the 32 x 8 source = e
    regs = emulate.ldmatrix_x4_bits(rows)
    for lane in range(32):
        for r in range(4):
            bit = 32 * lane + 1024 * r
            assert (regs[lane][r] & 0xFFFF, regs[lane][r] >> 16) == (bit // 16, bit // 16 + 1), (lane, r)
