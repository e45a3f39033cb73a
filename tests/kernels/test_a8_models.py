"""CPU models of the W1.58A8 kernels' bit and index logic (no GPU here; test_a8_cuda.py runs them).

The weight expansion of ``cuda/a8_weights.cu`` is replayed on 32-bit words with the selectors and
constants parsed from the source (``__byte_perm``, ``__vsub4``, the e4m3 encoding; the whole kernel
also runs translated in test_kernel_models.py); the constants of ``cuda/act_quant.cu`` and the row
chunking of ``kernels/a8.py`` are checked against the Python side that must agree with them; the
orchestration of ``a8_linear`` runs on CPU stand-ins of the kernels that do not use the op's code.
"""

from __future__ import annotations

import re
import struct

import numpy as np
import pytest
import torch

from torch_ternary.format import packing
from torch_ternary.kernels import a8, loader
from torch_ternary.ops import ternary_linear_a8 as ops_a8

from . import emulate


def byte_perm(x: np.ndarray, y: np.ndarray, sel: int) -> np.ndarray:
    """CUDA ``__byte_perm(x, y, s)``: byte i of the result is byte ``(s >> 4i) & 7`` of the 8 bytes (y:x)."""
    both = (y.astype(np.uint64) << np.uint64(32)) | x.astype(np.uint64)
    out = np.zeros_like(x, dtype=np.uint64)
    for i in range(4):
        b = (sel >> (4 * i)) & 7
        out |= ((both >> np.uint64(8 * b)) & np.uint64(0xFF)) << np.uint64(8 * i)
    return out.astype(np.uint32)


def vsub4(a: np.ndarray, b: int) -> np.ndarray:
    """CUDA ``__vsub4``: per-byte subtraction modulo 256."""
    out = np.zeros_like(a)
    for i in range(4):
        sh = np.uint32(8 * i)
        out |= (((a >> sh) - np.uint32((b >> (8 * i)) & 0xFF)) & np.uint32(0xFF)) << sh
    return out


def _weights_source() -> str:
    return loader.read_source("a8_weights.cu")


def model_word_codes(words: np.ndarray) -> list[np.ndarray]:
    """``word_codes`` of cuda/a8_weights.cu, with its shifts and byte_perm selectors parsed from the source."""
    body = re.search(r"void word_codes\(u32 w, u32 \(&out\)\[4\]\) \{(.*?)\n\}", _weights_source(), re.S).group(1)
    pattern = r"const u32 (v\d) = \(?w(?: >> (\d))?\)? & 0x03030303u;"
    shifts = {name: int(sh or 0) for name, sh in re.findall(pattern, body)}
    assert sorted(shifts) == ["v0", "v1", "v2", "v3"], body
    v = {name: (words >> np.uint32(sh)) & np.uint32(0x03030303) for name, sh in shifts.items()}
    perms = re.findall(r"out\[(\d)\] = __byte_perm\((v\d), (v\d), (0x[0-9A-Fa-f]+)\);", body)
    assert [int(i) for i, *_ in perms] == [0, 1, 2, 3], body
    return [byte_perm(v[a], v[b], int(sel, 16)) for _, a, b, sel in perms]


def model_codes_to_e4m3(c: np.ndarray) -> np.ndarray:
    body = re.search(r"u32 codes_to_e4m3\(u32 c\) \{(.*?)\n\}", _weights_source(), re.S).group(1)
    one = int(re.search(r"nz \* (0x[0-9A-Fa-f]+)u", body).group(1), 16)
    sign_shift = int(re.search(r"neg << (\d+)", body).group(1))
    nz = (c ^ np.uint32(0x01010101)) & np.uint32(0x01010101)
    neg = nz & ~(c >> np.uint32(1)) & np.uint32(0x01010101)
    return (nz * np.uint32(one)) | (neg << np.uint32(sign_shift))


def _bytes(words: list[np.ndarray]) -> np.ndarray:
    """[rows, 4] u32 words (out[0..3]) -> [rows, 16] bytes, little endian."""
    stacked = np.stack(words, axis=-1).astype("<u4")
    return stacked.view(np.uint8).reshape(*stacked.shape[:-1], 16)


@pytest.mark.parametrize("seed", range(3))
def test_weight_expansion_int8_and_e4m3(seed):
    g = torch.Generator().manual_seed(seed)
    n, k = 37, 16 * 9 + 5  # ragged K: the pad codes must come out as zero weights
    codes = torch.randint(-1, 2, (n, k), generator=g, dtype=torch.int8)
    packed = packing.pack_codes(codes)
    words = packed.view(torch.int32).numpy().view(np.uint32)  # [N, kblocks]
    parts = model_word_codes(words)
    kp = 16 * words.shape[1]
    q_i8 = _bytes([vsub4(p, 0x01010101) for p in parts]).reshape(n, kp).view(np.int8)
    expect = np.zeros((n, kp), np.int8)
    expect[:, :k] = codes.numpy()
    assert np.array_equal(q_i8, expect)
    q_f8 = _bytes([model_codes_to_e4m3(p) for p in parts]).reshape(n, kp)
    fp8 = torch.from_numpy(expect.astype(np.float32)).to(ops_a8.fp8_dtype()).view(torch.uint8).numpy()
    assert np.array_equal(q_f8, fp8)
    assert set(np.unique(q_f8).tolist()) <= {0x00, 0x38, 0xB8}


def test_act_quant_constants_match_python():
    src = loader.read_source("act_quant.cu")
    tiny = int(re.search(r"kTinyBits = (0x[0-9A-Fa-f]+)u", src).group(1), 16)
    assert tiny == struct.unpack("<I", struct.pack("<f", ops_a8.TINY_AMAX))[0]
    qmax = dict(re.findall(r"struct ActFormatTraits<kFmt(\w+)> \{\s*static constexpr float kQmax = ([0-9.]+)f;", src))
    assert {"Int8": float(qmax["Int8"]), "E4M3": float(qmax["E4M3"])} == {"Int8": ops_a8.QMAX["int8"],
                                                                          "E4M3": ops_a8.QMAX["fp8"]}
    assert int(re.search(r"kActThreads = (\d+);", src).group(1)) == a8.ACT_THREADS
    assert "__reduce_max_sync" in src and "cvt.rn.satfinite.e4m3x2.f32" in src


def test_max_over_abs_bit_patterns_is_torch_amax():
    """The kernel reduces max |x| as unsigned float32 bit patterns: NaN on top, -0 == +0, inf kept."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 33)).astype(np.float32) * np.logspace(-40, 30, 64, dtype=np.float32)[:, None]
    x[1, 3], x[2, 5], x[3, :] = np.nan, -np.inf, -0.0
    x[4, 7] = np.float32(-1e-45)  # subnormal
    bits = x.view(np.uint32) & np.uint32(0x7FFFFFFF)
    model = bits.max(axis=1).view(np.float32)
    ref = torch.from_numpy(x).abs().amax(dim=1).numpy()
    assert np.array_equal(np.isnan(model), np.isnan(ref))
    assert np.array_equal(model[~np.isnan(ref)], ref[~np.isnan(ref)])


@pytest.mark.parametrize("m", [0, 1, 16, 17, 33, 100, 1000, 4608])
@pytest.mark.parametrize("rows", [1, 17, 50, 910])
def test_row_chunks_cover_and_respect_the_int_mm_minimum(m, rows):
    chunks = a8.row_chunks(m, rows)
    flat = [i for a, b in chunks for i in range(a, b)]
    assert flat == list(range(m))
    if m >= a8.INT_MM_MIN_ROWS:
        assert all(b - a >= a8.INT_MM_MIN_ROWS for a, b in chunks)
    assert all(b - a <= max(rows, a8.INT_MM_MIN_ROWS) + a8.INT_MM_MIN_ROWS for a, b in chunks)


# ------------------------------------------------------- a8_linear's orchestration, on CPU
class _KernelTwins:
    """CPU stand-ins for the three kernels with their documented output layouts, so that ``a8_linear``'s
    padding, chunking and GEMM calls (``torch._int_mm`` / ``torch._scaled_mm`` run on CPU too) can be
    checked here. None of them calls the op's own code (the reference the results are compared with):

    * quantize: ``emulate.act_quant_spec``, numpy from the header of cuda/act_quant.cu (its constants
      parsed from the source), hand-written e4m3 encoder;
    * weights: ``emulate.a8_weight``, the translated ``tt_a8_weight_*`` of cuda/a8_weights.cu;
    * epilogue: ``emulate.a8_epilogue_spec``, numpy from the header of cuda/a8_epilogue.cu.
    """

    @staticmethod
    def quantize(x2, fmt, k_cols=None):
        """x2: bf16 / f16 / f32 ``[M, K]`` -> (int8 / e4m3 ``[M, k_cols]`` zero padded, float32 ``[M]``)."""
        mod = emulate.DEFAULT.module("act_quant.cu")
        qmax = mod.struct_constant("ActFormatTraits<kFmtInt8>" if fmt == "int8" else "ActFormatTraits<kFmtE4M3>",
                                   "kQmax")
        codes, s = emulate.act_quant_spec(x2.float().numpy(), fmt, mod.constant("kTinyBits"), qmax)
        kq = k_cols or -(-x2.shape[1] // 16) * 16
        out = torch.zeros(x2.shape[0], kq, dtype=torch.uint8)
        out[:, : x2.shape[1]] = torch.from_numpy(codes)
        return out.view(a8._code_dtype(fmt)), torch.from_numpy(s)

    @staticmethod
    def weights(packed, fmt, n_pad=None):
        """packed uint8 ``[N, Kp/4]`` -> int8 / e4m3 ``[n_pad, Kp]`` (the translated kernel)."""
        words = packed.contiguous().view(torch.int32).numpy().view(np.uint32)
        out = emulate.a8_weight(words, n_pad or packed.shape[0], fmt)
        return torch.from_numpy(out).view(a8._code_dtype(fmt))

    @staticmethod
    def epilogue(acc, sx, sw, bias, n, out):
        """acc int32 / float32 ``[M, >= n]``, sx float32 ``[M]``, sw float32 ``[n]`` or ``[1]`` -> out ``[M, n]``."""
        w = sw.reshape(-1).numpy()
        w = np.repeat(w[:1], n) if w.size == 1 else w[:n]
        v = emulate.a8_epilogue_spec(acc[:, :n].numpy(), sx.numpy(), w, None if bias is None else bias.float().numpy())
        out.copy_(torch.from_numpy(v).to(out.dtype))
        return out


@pytest.fixture
def cpu_a8(monkeypatch):
    monkeypatch.setattr(a8, "check_cuda", lambda *t: None)
    monkeypatch.setattr(a8, "capability", lambda index: (9, 0))
    monkeypatch.setattr(a8, "device_index_of", lambda device: 0)
    monkeypatch.setattr(a8, "device_index", lambda t: 0)
    monkeypatch.setattr(a8, "quantize_activations_cuda", _KernelTwins.quantize)
    monkeypatch.setattr(a8, "a8_weight_workspace", _KernelTwins.weights)
    monkeypatch.setattr(a8, "a8_epilogue", _KernelTwins.epilogue)
    monkeypatch.setattr(a8, "_rowwise_ok", {})
    return a8


@pytest.mark.parametrize("m,n,k", [(1, 24, 40), (16, 24, 40), (17, 5, 16), (100, 40, 33), (300, 48, 64)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("per_tensor", [False, True])
def test_a8_linear_orchestration_int8_is_exact(cpu_a8, monkeypatch, m, n, k, dtype, per_tensor):
    g = torch.Generator().manual_seed(m * n + k)
    codes = torch.randint(-1, 2, (n, k), generator=g, dtype=torch.int8)
    packed = packing.pack_codes(codes)
    scale = torch.rand(1 if per_tensor else n, 1, generator=g) + 0.01
    x = torch.randn(m, k, generator=g).to(dtype)
    bias = torch.randn(n, generator=g).to(dtype)
    ref = ops_a8.linear_a8._init_fn(x, packed, scale, bias, k, k, "int8")
    assert torch.equal(cpu_a8.a8_linear(x, packed, scale, bias, k, k, "int8"), ref)
    monkeypatch.setattr(cpu_a8, "INT_MM_CHUNK_BYTES", 4 * 48 * 20)  # ~20-row chunks
    assert torch.equal(cpu_a8.a8_linear(x, packed, scale, None, k, k, "int8"),
                       ops_a8.linear_a8._init_fn(x, packed, scale, None, k, k, "int8"))


@pytest.mark.parametrize("m,n,k", [(3, 24, 40), (40, 20, 48), (64, 32, 32)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("rowwise", [True, False])
def test_a8_linear_orchestration_fp8(cpu_a8, m, n, k, dtype, rowwise):
    g = torch.Generator().manual_seed(m + n + k)
    codes = torch.randint(-1, 2, (n, k), generator=g, dtype=torch.int8)
    packed, scale = packing.pack_codes(codes), torch.rand(n, 1, generator=g) + 0.01
    x = torch.randn(m, k, generator=g).to(dtype)
    bias = torch.randn(n, generator=g).to(dtype)
    if not rowwise:
        cpu_a8._rowwise_ok[0] = False
    y = cpu_a8.a8_linear(x, packed, scale, bias, k, k, "fp8")
    ref = ops_a8.linear_a8._init_fn(x, packed, scale, bias, k, k, "fp8")
    assert y.shape == (m, n) and y.dtype == dtype
    tol = 1e-2 if dtype == torch.bfloat16 or (rowwise is False and dtype == torch.float16) else 2e-3
    torch.testing.assert_close(y.float(), ref.float(), rtol=tol, atol=tol)
    if rowwise and dtype == torch.bfloat16:
        assert cpu_a8._rowwise_ok[0] is True
