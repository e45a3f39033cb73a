"""CPU checks of the Python launchers (``kernels/gemv.py``, ``gemm.py``, ``decode.py``, ``a8.py``).

No GPU here: ``loader.get_kernel`` / ``loader.launch`` are replaced by a harness that, for every
launch the real wrappers make,

* checks the argument list against the kernel's own ``extern "C"`` signature parsed from the CUDA
  source: count, order (by name), and the numpy type CuPy will pass (``np.uint64`` pointers,
  ``np.int32`` for ``int``, ``np.uint32`` for ``unsigned int``, ``np.int64`` for ``long long``);
* checks the launch shape (block <= 1024 threads, grid.y / grid.z <= 65535, the grid each kernel's
  header documents) and dynamic shared memory (> 48 KiB only after the kernel's limit was raised);
* checks the pointer contracts the kernels rely on: dtype, shape, contiguity / row stride, and the
  alignment of every 128-bit (or 64 / 32-bit) vector access they make, e.g. x rows with odd K;
* then computes the kernel's output with the arguments *as passed*, independently of the
  plain-torch reference the results are compared with:

  - skinny, fused GEMM, unpack, dequantize, W1.58A8 weight expansion: the kernel's own code
    (``emulate.py`` runs the translated ``extern "C"`` entry point thread by thread on the tensors'
    bytes, with bounds / alignment checks and every output byte written exactly once);
  - activation quantization and the A8 epilogue (not translatable: inline PTX, address-of): numpy
    formulas written from the spec in their headers (``emulate.act_quant_spec`` with a hand-written
    e4m3 encoder, ``emulate.a8_epilogue_spec``), never the op's own functions.

A swapped argument, a wrong scalar type, a missing pad, an unaligned vector load, or a value the
reference disagrees with fails here. What only a GPU proves: the compiled code and the hardware.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from torch_ternary.format import packing
from torch_ternary.kernels import a8, common, decode, gemm, gemv, loader
from torch_ternary.ops import ternary_linear as ops
from torch_ternary.ops import ternary_linear_a8 as ops_a8
from torch_ternary.quantization.absmean import num_groups

from . import emulate
from .csource import Buffer
from .test_kernel_models import dense_reference

_CTYPES = {"int": np.int32, "unsigned int": np.uint32, "long long": np.int64}
_KIND = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}
_SIG = re.compile(r'extern "C" __global__ void\s+(?:__launch_bounds__\([^)]*\)\s*)?(\w+)\s*\(([^)]*)\)')


def signatures(source: str) -> tuple[dict[str, list], list]:
    """``({entry: [(param, numpy type)]}, [macro signatures])`` of a CUDA source."""
    text = loader.read_source(source).replace("\\\n", " ")
    direct, macro = {}, []
    for name, params in _SIG.findall(text):
        parsed = []
        for p in params.split(","):
            p = " ".join(p.replace("__restrict__", "").replace("const ", "").split())
            pname = re.search(r"(\w+)$", p).group(1)
            ctype = p[: -len(pname)].strip()
            parsed.append((pname, np.uint64 if ctype.endswith("*") else _CTYPES[ctype]))
        (direct.__setitem__(name, parsed) if name.startswith("tt_") else macro.append(parsed))
    return direct, macro


def signature(source: str, entry: str) -> list:
    direct, macro = signatures(source)
    if entry in direct:
        return direct[entry]
    assert len(macro) == 1, f"{source}: cannot tell which signature {entry} has"
    return macro[0]


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class FakeKernel:
    def __init__(self, source, entry, max_dynamic_smem):
        self.source, self.entry, self.max_dynamic_smem = source, entry, max_dynamic_smem


class Harness:
    """Stands in for CuPy: records launches, checks them, runs the models."""

    def __init__(self, monkeypatch):
        self.tensors: dict[int, torch.Tensor] = {}
        self.launches: list[tuple[str, dict]] = []
        orig_ptr = loader.ptr

        def ptr(t):
            v = orig_ptr(t)
            if t is not None:
                self.tensors[int(v)] = t
            return v

        monkeypatch.setattr(loader, "ptr", ptr)
        monkeypatch.setattr(loader, "get_kernel", self.get_kernel)
        monkeypatch.setattr(loader, "launch", self.launch)
        for mod in (common, decode, a8):  # gemv / gemm check through common.check_half_linear
            monkeypatch.setattr(mod, "check_cuda", lambda *t: None)
        monkeypatch.setattr(a8, "capability", lambda index: (9, 0))
        monkeypatch.setattr(a8, "device_index_of", lambda device: 0)
        monkeypatch.setattr(a8, "device_index", lambda t: 0)
        monkeypatch.setattr(a8, "_rowwise_ok", {})

    def get_kernel(self, source, entry, device, max_dynamic_smem=0):
        return FakeKernel(source, entry, max_dynamic_smem)

    def tensor(self, p, name, dtype, shape, align, rows_contiguous=True):
        """The tensor behind pointer argument ``name``; checks its dtype, shape, layout and alignment."""
        if int(p[name]) == 0:
            return None
        t = self.tensors[int(p[name])]
        assert t.dtype == dtype, f"{name}: {t.dtype} != {dtype}"
        assert tuple(t.shape) == tuple(shape), f"{name}: shape {tuple(t.shape)} != {tuple(shape)}"
        if rows_contiguous:
            assert t.is_contiguous(), f"{name} is not contiguous"
        assert t.data_ptr() % align == 0, f"{name} is not {align}-byte aligned (vector accesses)"
        return t

    def launch(self, kernel, grid, block, args, device, shared_mem=0):
        params = signature(kernel.source, kernel.entry)
        assert len(args) == len(params), f"{kernel.entry}: {len(args)} arguments for {len(params)} parameters"
        for (pname, typ), v in zip(params, args):
            assert type(v) is typ, f"{kernel.entry}: argument {pname} is {type(v).__name__}, the kernel takes {typ.__name__}"
        p = {pname: v for (pname, _), v in zip(params, args)}
        assert len(grid) == 3 and len(block) == 3
        assert all(int(g) >= 1 for g in grid) and all(int(b) >= 1 for b in block)
        assert grid[0] < 2**31 and grid[1] <= 65535 and grid[2] <= 65535, f"grid {grid}"
        assert block[0] * block[1] * block[2] <= 1024, f"block {block}"
        assert shared_mem <= 48 * 1024 or shared_mem <= kernel.max_dynamic_smem, (
            f"{kernel.entry}: {shared_mem} bytes of dynamic shared memory without raising the kernel's limit")
        self.launches.append((kernel.entry, p))
        model = getattr(self, "_" + re.match(r"tt_(skinny|gemm|unpack|dequant|act_quant|a8_weight|a8_epilogue)",
                                             kernel.entry).group(1))
        model(kernel, tuple(map(int, grid)), tuple(map(int, block)), p, shared_mem)

    # ------------------------------------------------------------------------------- models
    def _weight(self, p, n, kblocks, align=4):
        packed = self.tensor(p, "packed", torch.uint8, (n, 4 * kblocks), align)
        return packed.view(torch.int32).numpy().view(np.uint32)

    def _scale(self, p, n):
        scale = self.tensors[int(p["scale"])]
        assert scale.dtype == torch.float32 and scale.is_contiguous() and scale.dim() == 2
        s_row_stride, grouped = int(p["s_row_stride"]), int(p["grouped"])
        assert scale.shape[0] in (1, n) and s_row_stride == (scale.shape[1] if scale.shape[0] == n else 0)
        assert grouped == int(scale.shape[1] > 1)
        shift, magic = int(p["gshift"]), int(p["gmagic"])
        assert not grouped or (shift >= 0 and magic == 0) or (shift == -1 and magic > 0), "GroupDiv encoding"
        return scale

    def _translated(self, kernel, grid, block, p, shared_mem, outputs):
        """Run the translated entry point on the tensors' bytes; copy the outputs back into their tensors."""
        mod = emulate.DEFAULT.module(kernel.source)
        fd = mod.program.function(kernel.entry)
        args, bufs = {}, {}
        for prm in fd.params:
            v = p[prm.name]
            if not prm.pointer:
                args[prm.name] = int(v)
                continue
            t = self.tensors[int(v)] if int(v) else None
            if t is None:
                args[prm.name] = None
                continue
            assert t.is_contiguous(), f"{prm.name} is not contiguous"
            raw = t.reshape(-1).view(torch.uint8).numpy().tobytes()
            buf = Buffer(raw, prm.name, readonly=prm.name not in outputs, track=prm.name in outputs,
                         base=t.data_ptr() % 256)
            args[prm.name], bufs[prm.name] = buf, (buf, t)
        mod.launch(kernel.entry, grid, block, [], args, dynamic_smem=shared_mem)
        for name in outputs:
            buf, t = bufs[name]
            buf.check_written_once()
            t.reshape(-1).view(torch.uint8).copy_(torch.frombuffer(bytearray(buf.data), dtype=torch.uint8))

    def _skinny(self, kernel, grid, block, p, shared_mem):
        kind, R, NT, VW = re.fullmatch(r"tt_skinny_(bf16|f16)_r(\d)_n(\d)_v(\d)", kernel.entry).groups()
        R, NT, VW, dtype = int(R), int(NT), int(VW), _KIND[kind]
        M, N, kb = int(p["M"]), int(p["N"]), int(p["kblocks"])
        W = block[0] // 32
        assert block[0] % 32 == 0 and 1 <= W <= 8 and block[1:] == (1, 1)
        assert grid == (cdiv(N, 16 * R), cdiv(M, 8 * NT), 1)
        assert VW == 1 or kb % 4 == 0
        self.tensor(p, "x", dtype, (M, 16 * kb), 16)  # two 128-bit loads a word
        self.tensor(p, "y", dtype, (M, N), 2)
        self._weight(p, N, kb, 16 if VW == 4 else 4)
        self._scale(p, N)
        self.tensor(p, "bias", dtype, (N,), 2)
        self._translated(kernel, grid, block, p, shared_mem, ("y",))

    def _gemm(self, kernel, grid, block, p, shared_mem):
        kind = re.fullmatch(r"tt_gemm_(bf16|f16)", kernel.entry).group(1)
        dtype = _KIND[kind]
        M, N, K, kb = int(p["M"]), int(p["N"]), int(p["K"]), int(p["kblocks"])
        assert block == (gemm.GEMM_THREADS, 1, 1) and grid == (cdiv(N, gemm.GEMM_BN), cdiv(M, gemm.GEMM_BM), 1)
        assert shared_mem == gemm.GEMM_SMEM_BYTES and kernel.max_dynamic_smem >= shared_mem
        assert shared_mem == emulate.DEFAULT.module("gemm.cu").constant("kGemmSmemBytes")
        assert K % 8 == 0 and K <= 16 * kb, "16-byte cp.async chunks need K % 8 == 0 and no read past the row"
        self.tensor(p, "x", dtype, (M, K), 16)
        self.tensor(p, "y", dtype, (M, N), 4 if N % 2 == 0 else 2)
        self._weight(p, N, kb)
        self._scale(p, N)
        self.tensor(p, "bias", dtype, (N,), 2)
        self._translated(kernel, grid, block, p, shared_mem, ("y",))

    def _decode_shape(self, grid, block, n, kb):
        assert block[0] % 32 == 0 and block[1:] == (1, 1) and grid[0] * block[0] >= kb and grid[0] == cdiv(kb, block[0])
        assert grid[1] == min(n, 65535) and grid[2] == 1

    def _unpack(self, kernel, grid, block, p, shared_mem):
        n, k, kb = int(p["n_rows"]), int(p["k"]), int(p["kblocks"])
        self._decode_shape(grid, block, n, kb)
        assert 16 * (kb - 1) < k <= 16 * kb
        self.tensor(p, "out", torch.int8, (n, k), 16 if k % 16 == 0 else 1)
        self._weight(p, n, kb)
        self._translated(kernel, grid, block, p, shared_mem, ("out",))

    def _dequant(self, kernel, grid, block, p, shared_mem):
        dtype = _KIND[re.fullmatch(r"tt_dequant_(bf16|f16|f32)", kernel.entry).group(1)]
        n, k, kb = int(p["n_rows"]), int(p["k"]), int(p["kblocks"])
        self._decode_shape(grid, block, n, kb)
        self.tensor(p, "out", dtype, (n, k), 16 if k % 16 == 0 else 1)
        self._weight(p, n, kb)
        self._scale(p, n)
        self._translated(kernel, grid, block, p, shared_mem, ("out",))

    def _act_quant(self, kernel, grid, block, p, shared_mem):
        tag, fmt = re.fullmatch(r"tt_act_quant_(bf16|f16|f32)_(i8|e4m3)", kernel.entry).groups()
        dtype, fmt = _KIND[tag], {"i8": "int8", "e4m3": "fp8"}[fmt]
        m, k, ldx, kq, vec = int(p["m_rows"]), int(p["k"]), int(p["ldx"]), int(p["kq"]), int(p["vec"])
        assert block == (a8.ACT_THREADS, 1, 1) and grid == (min(m, 1 << 20), 1, 1)
        x = self.tensors[int(p["x"])]
        assert x.dtype == dtype and x.shape == (m, k) and x.stride(-1) == 1 and (m == 1 or x.stride(0) == ldx)
        v = 16 // x.element_size()
        if vec:
            assert x.data_ptr() % 16 == 0 and ldx % v == 0 and k % v == 0, "128-bit loads of x need alignment"
        assert kq % 16 == 0 and kq >= k
        q = self.tensor(p, "q", a8._code_dtype(fmt), (m, kq), 8 if vec else 1)
        sx = self.tensor(p, "sx", torch.float32, (m,), 4)
        mod = emulate.DEFAULT.module("act_quant.cu")
        qmax = mod.struct_constant("ActFormatTraits<kFmtInt8>" if fmt == "int8" else "ActFormatTraits<kFmtE4M3>",
                                   "kQmax")
        rows = torch.as_strided(x, (m, k), (ldx, 1)).float().numpy()  # the values the kernel reads, as float
        codes, scale = emulate.act_quant_spec(rows, fmt, mod.constant("kTinyBits"), qmax)
        qb = q.view(torch.uint8)
        qb.fill_(0xAA)  # the kernel writes every byte: the pad must come out zero
        qb[:, :k] = torch.from_numpy(codes)
        qb[:, k:] = 0  # the header: columns K .. Kq-1 are written as 0
        sx.copy_(torch.from_numpy(scale))

    def _a8_weight(self, kernel, grid, block, p, shared_mem):
        fmt = {"i8": "int8", "e4m3": "fp8"}[re.fullmatch(r"tt_a8_weight_(i8|e4m3)", kernel.entry).group(1)]
        n, n_pad, kb = int(p["n_rows"]), int(p["n_pad_rows"]), int(p["kblocks"])
        self._decode_shape(grid, block, n_pad, kb)
        self.tensor(p, "out", a8._code_dtype(fmt), (n_pad, 16 * kb), 16)  # one 128-bit store a word
        self._weight(p, n, kb)
        self._translated(kernel, grid, block, p, shared_mem, ("out",))

    def _a8_epilogue(self, kernel, grid, block, p, shared_mem):
        acc_tag, tag = re.fullmatch(r"tt_a8_epilogue_(i32|f32)_(bf16|f16|f32)", kernel.entry).groups()
        acc_dtype, dtype = {"i32": torch.int32, "f32": torch.float32}[acc_tag], _KIND[tag]
        m, n, ldacc, sw_stride, vec = int(p["m_rows"]), int(p["n"]), int(p["ldacc"]), int(p["sw_stride"]), int(p["vec"])
        assert block == (a8.EPILOGUE_THREADS, 1, 1)
        assert grid == (cdiv(cdiv(n, 4), a8.EPILOGUE_THREADS), min(m, 65535), 1)
        acc = self.tensors[int(p["acc"])]
        assert acc.dtype == acc_dtype and acc.shape[0] == m and acc.shape[1] >= n and acc.stride(-1) == 1
        assert m == 1 or acc.stride(0) == ldacc
        y = self.tensor(p, "y", dtype, (m, n), 1)
        if vec:
            assert n % 4 == 0 and ldacc % 4 == 0 and acc.data_ptr() % 16 == 0 and y.data_ptr() % (4 * y.element_size()) == 0
        sx = self.tensor(p, "sx", torch.float32, (m,), 4)
        sw = self.tensors[int(p["sw"])]
        assert sw.dtype == torch.float32 and sw.is_contiguous() and sw.numel() >= (n if sw_stride else 1)
        bias = self.tensor(p, "bias", dtype, (n,), 1)
        a = torch.as_strided(acc, (m, n), (ldacc, 1)).numpy()
        w = sw.reshape(-1)[:n].numpy() if sw_stride else np.repeat(sw.reshape(-1)[:1].numpy(), n)
        v = emulate.a8_epilogue_spec(a, sx.numpy(), w, None if bias is None else bias.float().numpy())
        y.copy_(torch.from_numpy(v).to(dtype))


@pytest.fixture
def harness(monkeypatch):
    return Harness(monkeypatch)


def make_x(m, k, dtype, seed, layout):
    """CPU activations in the layouts the GPU tests use (the wrappers must accept any)."""
    base = torch.randn(m, k, generator=torch.Generator().manual_seed(seed))
    if layout == "transposed":
        return base.t().contiguous().to(dtype).t()
    if layout == "strided":
        wide = torch.zeros(m, 2 * k)
        wide[:, ::2] = base
        return wide.to(dtype)[:, ::2]
    if layout == "offset":  # contiguous rows, storage offset of one element (misaligned)
        flat = torch.zeros(m * k + 1)
        flat[1:] = base.reshape(-1)
        return flat.to(dtype)[1:].view(m, k)
    return base.to(dtype)


def make_weight(n, k, granularity, gs, seed):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(-1, 2, (n, k), generator=g, dtype=torch.int8)
    gs = k if granularity != "per_group" else gs
    rows = 1 if granularity == "per_tensor" else n
    scale = torch.rand(rows, num_groups(k, gs), generator=g) * 0.1 + 0.01
    return packing.pack_codes(codes), scale, gs, codes


def _kind(dtype):
    return "bf16" if dtype == torch.bfloat16 else "f16"


def _check_linear(y, x, codes, scale, gs, bias, dtype):
    """y: ``dtype`` ``[M, N]`` from the wrapper (the translated kernel computed it, exactly, in float64
    before one rounding) must equal the float64 dense reference rounded to ``dtype``."""
    ref = dense_reference(x.double().numpy(), codes.double().numpy(), scale.numpy(), gs, _kind(dtype),
                          None if bias is None else bias.double().numpy())
    assert y.dtype == dtype and y.is_contiguous()
    np.testing.assert_array_equal(y.double().numpy(), emulate.round_to(ref, _kind(dtype)))


@pytest.mark.parametrize(
    "m,n,k,granularity,gs,dtype,layout,rows_per_warp,warps",
    [
        (3, 40, 200, "per_group", 48, torch.bfloat16, "offset", 1, 3),      # K tail (padded x), VW = 1, gb = 3
        (11, 33, 256, "per_channel", 256, torch.float16, "transposed", 2, 0),  # VW = 4, NT = 2, auto warps
        (1, 17, 128, "per_tensor", 128, torch.bfloat16, "strided", 1, 1),    # GEMV
        (20, 24, 64, "per_group", 32, torch.float16, "contiguous", 1, 2),    # two M tiles
    ],
)
def test_skinny_launch(harness, m, n, k, granularity, gs, dtype, layout, rows_per_warp, warps):
    packed, scale, gs, codes = make_weight(n, k, granularity, gs, seed=m + n + k)
    x = make_x(m, k, dtype, m, layout)
    bias = torch.randn(n, generator=torch.Generator().manual_seed(1)).to(dtype) if m % 2 else None
    y = gemv.skinny_linear(x, packed, scale, bias, k, gs, rows_per_warp=rows_per_warp, warps=warps)
    (entry, p), = harness.launches
    xk = harness.tensors[int(p["x"])]
    assert int(xk[:, k:].count_nonzero()) == 0, "x must be zero past K (pad weights are 0, but 0 * inf is not)"
    _check_linear(y, x, codes, scale, gs, bias, dtype)


@pytest.mark.parametrize(
    "m,n,k,granularity,gs,dtype,layout",
    [
        (5, 9, 40, "per_channel", 40, torch.float16, "offset"),         # K % 16 = 8: x unpadded, misaligned -> copy
        (20, 136, 72, "per_group", 32, torch.bfloat16, "contiguous"),   # 2 N tiles, K tail inside a stage
        (3, 20, 33, "per_tensor", 33, torch.bfloat16, "transposed"),    # K % 8 != 0: x padded to Kp
    ],
)
def test_fused_gemm_launch(harness, m, n, k, granularity, gs, dtype, layout):
    packed, scale, gs, codes = make_weight(n, k, granularity, gs, seed=m * n + k)
    x = make_x(m, k, dtype, m, layout)
    bias = torch.randn(n, generator=torch.Generator().manual_seed(2)).to(dtype) if n % 2 else None
    y = gemm.fused_linear(x, packed, scale, bias, k, gs)
    _check_linear(y, x, codes, scale, gs, bias, dtype)


@pytest.mark.parametrize("granularity,gs", [("per_tensor", 0), ("per_channel", 0), ("per_group", 48), ("per_group", 32)])
@pytest.mark.parametrize("k", [77, 96])
def test_decode_launches_are_exact(harness, granularity, gs, k):
    packed, scale, gs, codes = make_weight(13, k, granularity, gs, seed=k)
    assert torch.equal(decode.unpack_cuda(packed, k), codes)
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        got = decode.dequantize_cuda(packed, scale, k, gs, dtype)
        assert torch.equal(got, ops.dequantize._init_fn(packed, scale, k, gs, dtype))
    x = make_x(3, k, torch.bfloat16, 5, "offset")
    torch.testing.assert_close(gemm.decode_cublas_linear(x, packed, scale, None, k, gs),
                               ops.linear._init_fn(x, packed, scale, None, k, gs))


@pytest.mark.parametrize("layout", ["contiguous", "offset", "strided", "transposed"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("k", [45, 64])
def test_act_quant_launch(harness, layout, dtype, k):
    """Launch arguments / layout of tt_act_quant_*, and the spec model of its header (emulate.act_quant_spec,
    numpy) agreeing with the op's plain-torch quantize_activations (two independent statements of the math)."""
    x = make_x(7, k, dtype, k, layout)
    v = 16 // x.element_size()
    for fmt in ("int8", "fp8"):
        q, s = a8.quantize_activations_cuda(x, fmt)  # the harness computes q, s with the spec model
        qr, sr = ops_a8.quantize_activations(x, fmt)
        assert q.shape == (7, -(-k // 16) * 16) and torch.equal(s, sr)
        assert torch.equal(q.view(torch.uint8)[:, :k], qr.view(torch.uint8))
        assert int(q.view(torch.uint8)[:, k:].count_nonzero()) == 0
        entry, p = harness.launches[-1]
        if layout in ("contiguous", "offset"):  # rows used in place: 16-byte loads only when aligned
            assert int(p["vec"]) == int(x.data_ptr() % 16 == 0 and k % v == 0)


# Hand-computed rows (per the header of cuda/act_quant.cu): s = amax / QMAX, q = rint_half_even(x / s).
_KNOWN_INT8 = [
    ([0.0, 1.0, -2.5, 127.0, 3.5, -0.5, 126.5, 200.0], 200.0 / 127, None),  # checked through the formula below
    ([0.0, 1.0, -2.5, 127.0, 3.5, -0.5, 126.5, -127.0], 1.0, [0, 1, -2, 127, 4, 0, 126, -127]),  # ties to even
    ([2.0 ** -101] * 8, 1.0, [0] * 8),  # amax below 2^-100: s = 1, every code 0
]
_KNOWN_FP8 = [  # amax = 448: s = 1; e4m3fn bits: 448 = 0x7E, 1 = 0x38, -3.5 = 0xC6, 0.0 = 0x00, 2^-9 = 0x01
    ([448.0, 1.0, -3.5, 0.0, 2.0 ** -9, -448.0, 0.5, 3.0], 1.0, [0x7E, 0x38, 0xC6, 0x00, 0x01, 0xFE, 0x30, 0x44]),
]


@pytest.mark.parametrize("fmt,rows", [("int8", _KNOWN_INT8), ("fp8", _KNOWN_FP8)])
def test_act_quant_known_values(harness, fmt, rows):
    """Hand-computed codes and scales, through the launcher (harness: spec model) and the op's reference."""
    for vals, scale, codes in rows:
        x = torch.tensor([vals], dtype=torch.float32)
        for got_q, got_s in (a8.quantize_activations_cuda(x, fmt), ops_a8.quantize_activations(x, fmt)):
            assert got_s.item() == np.float32(scale)
            bytes_ = got_q.view(torch.uint8)[0, :8].tolist()
            if codes is None:  # the general case: the header's formula in float32
                codes = [int(np.clip(np.rint(np.float32(v) / np.float32(scale)), -127, 127)) for v in vals]
            expect = [c & 0xFF for c in codes]
            assert bytes_ == expect, (vals, bytes_, expect)


def test_e4m3_encoder_matches_torch():
    """The spec encoder the harness uses agrees with torch's float8_e4m3fn cast (saturated), on a dense sweep."""
    v = np.concatenate([np.linspace(-470, 470, 20001, dtype=np.float32),
                        np.float32(2.0) ** np.arange(-12, 9, 0.125, dtype=np.float32), [0.0, -0.0]]).astype(np.float32)
    ours = emulate.e4m3_bits(v)
    ref = torch.from_numpy(np.clip(v, -448, 448)).to(ops_a8.fp8_dtype()).view(torch.uint8).numpy()
    np.testing.assert_array_equal(ours, ref)
    assert emulate.e4m3_bits(np.array([np.nan], np.float32))[0] & 0x7F == 0x7F


@pytest.mark.parametrize("m,n,k", [(1, 24, 40), (19, 37, 45), (40, 20, 48)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("per_tensor", [False, True])
def test_a8_linear_launches_int8_exact(harness, m, n, k, dtype, per_tensor):
    packed, scale, _, _ = make_weight(n, k, "per_tensor" if per_tensor else "per_channel", 0, seed=m + n)
    x = make_x(m, k, dtype, n, "offset")
    bias = torch.randn(n, generator=torch.Generator().manual_seed(3)).to(dtype)
    y = a8.a8_linear(x, packed, scale, bias, k, k, "int8")
    assert torch.equal(y, ops_a8.linear_a8._init_fn(x, packed, scale, bias, k, k, "int8"))
    assert [e for e, _ in harness.launches] == [
        f"tt_act_quant_{'bf16' if dtype == torch.bfloat16 else 'f32'}_i8", "tt_a8_weight_i8",
        f"tt_a8_epilogue_i32_{'bf16' if dtype == torch.bfloat16 else 'f32'}"]


@pytest.mark.parametrize("dtype,rowwise", [(torch.bfloat16, True), (torch.bfloat16, False), (torch.float16, False)])
def test_a8_linear_launches_fp8(harness, dtype, rowwise):
    m, n, k = 20, 37, 45
    packed, scale, _, _ = make_weight(n, k, "per_channel", 0, seed=9)
    x = make_x(m, k, dtype, 4, "strided")
    bias = torch.randn(n, generator=torch.Generator().manual_seed(4)).to(dtype)
    if not rowwise:
        a8._rowwise_ok[0] = False
    y = a8.a8_linear(x, packed, scale, bias, k, k, "fp8")
    ref = ops_a8.linear_a8._init_fn(x, packed, scale, bias, k, k, "fp8")
    torch.testing.assert_close(y.float(), ref.float(), rtol=1e-2, atol=1e-2)
    entries = [e for e, _ in harness.launches]
    assert entries[:2] == [f"tt_act_quant_{_kind(dtype)}_e4m3", "tt_a8_weight_e4m3"]
    assert entries[2:] == ([] if rowwise else [f"tt_a8_epilogue_f32_{_kind(dtype)}"])


def test_launch_harness_catches_a_wrong_argument_type(harness, monkeypatch):
    """The harness is not vacuous: an int64 passed for a C ``int`` is refused."""
    packed, scale, gs, _ = make_weight(8, 32, "per_channel", 0, seed=0)
    monkeypatch.setattr(loader, "i32", lambda v: np.int64(v))
    with pytest.raises(AssertionError, match="the kernel takes int32"):
        decode.unpack_cuda(packed, 32)


@pytest.mark.parametrize("wrapper", ["skinny", "fused", "decode_cublas"])
def test_half_linear_wrappers_refuse_bad_activations(harness, wrapper):
    """Every half-precision wrapper refuses fp32 activations and a wrong K before launching anything."""
    from torch_ternary.errors import UnsupportedOperationError

    packed, scale, gs, _ = make_weight(16, 64, "per_channel", 0, seed=3)
    call = {"skinny": gemv.skinny_linear, "fused": gemm.fused_linear, "decode_cublas": gemm.decode_cublas_linear}[wrapper]
    with pytest.raises(UnsupportedOperationError, match="bfloat16 / float16"):
        call(torch.randn(2, 64), packed, scale, None, 64, gs)
    if wrapper != "decode_cublas":  # F.linear checks the shape itself
        for bad in (torch.randn(2, 63).half(), torch.randn(64).half()):
            with pytest.raises(ValueError, match=r"x must be \[M, 64\]"):
                call(bad, packed, scale, None, 64, gs)
    assert harness.launches == []


def test_half_linear_check_refuses_cpu_tensors():
    from torch_ternary.errors import UnsupportedDeviceError
    from torch_ternary.kernels.common import check_half_linear

    packed, scale, _, _ = make_weight(16, 64, "per_channel", 0, seed=3)
    with pytest.raises(UnsupportedDeviceError, match="one CUDA device"):
        check_half_linear("skinny kernel", torch.randn(2, 64).half(), packed, scale, None, 64)
