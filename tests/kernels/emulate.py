"""CPU models of the CUDA kernels: the kernels' own code, run per thread, on hand models of the hardware.

What is DERIVED from the source (``csource.py`` translates the text NVRTC compiles, macros expanded):
every statement of the ``extern "C"`` entry points and of the device functions they call
(``skinny_impl``, ``gemm_impl``, ``unpack_i8_impl``, ``dequant_*_impl``, ``a8_weight_impl``,
``decode_pair``, ``splat_scale``, ``scale_pair``, ``word_of``, ``load_words``, ``GroupDiv``,
``unpack_word_i8``, ``word_codes``, ...): indices, shifts, offsets, masks, loop bounds, tile
constants, the decode constants of ``Half2Traits``, the thread mapping and the epilogue. An edit of
any of them changes what these models compute (``test_source_mutations.py`` proves it for a list
of one-token edits).

What is a HAND model here (from the PTX ISA and the CUDA Math API, not from our sources):

* ``mma.sync.aligned.m16n8k16`` (:class:`Mma`): the A / B / C fragment layouts of the PTX ISA,
  cross-checked against CUTLASS / CuTe's layouts in ``test_kernel_models.py``; products summed in
  float64 (exact for the tests' values; the GPU accumulates in fp32);
* ``ldmatrix.sync.aligned.m8n8.x4.b16`` (:class:`LdMatrixX4`), also cross-checked against CuTe;
* ``fma.rn.{bf16,f16}x2`` (one rounding to nearest even per half), float <-> half conversions;
* ``cp.async`` (copies complete at once: the pipeline's waits and commits are not modelled),
  ``__ldg``, ``__umulhi``, ``__vsub4``, ``__byte_perm``, ``make_uint4`` and friends;
* memory: ``csource.Buffer`` / ``Ptr`` check bounds, alignment, writes into inputs, shared-memory
  reads before writes, and that every output byte is written exactly once.

Not modelled at all (only a GPU run proves them): the CUDA compiler's code generation, register
allocation, the ``cp.async`` pipeline's timing and synchronization, memory ordering / races
between warps, fp32 rounding of the accumulators, and speed.
"""

from __future__ import annotations

import functools
import math
import struct

import numpy as np
import torch

from torch_ternary.kernels import loader

from . import csource
from .csource import HALF_TYPES, Buffer, CSourceError, ModelError, Ptr

KINDS = ("bf16", "f16")
_TORCH = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}
_TRAITS_NAME = {"bf16": "__nv_bfloat16", "f16": "__half"}


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


# ================================================================================ numbers
@functools.lru_cache(maxsize=1 << 17)
def half_to_float(bits: int, kind: str) -> float:
    """Exact value of the 16-bit pattern ``bits`` of ``kind`` ("bf16" / "f16")."""
    bits &= 0xFFFF
    if kind == "bf16":
        return struct.unpack("<f", struct.pack("<I", bits << 16))[0]
    return float(np.array([bits], dtype=np.uint16).view(np.float16)[0])


def float_to_half(v: float, kind: str) -> int:
    """Bits of ``v`` rounded to float32 and then to nearest-even ``kind`` (what ``__float2bfloat16_rn`` /
    ``__float2half_rn`` do to a C ``float``)."""
    if kind == "f16":
        return int(np.array([v], dtype=np.float32).astype(np.float16).view(np.uint16)[0])
    b = struct.unpack("<I", struct.pack("<f", float(np.float32(v))))[0]
    if (b & 0x7F800000) == 0x7F800000 and b & 0x7FFFFF:  # NaN stays a (quiet) NaN
        return ((b >> 16) | 0x40) & 0xFFFF
    return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) & 0xFFFF


def round_half_exact(v: float, kind: str) -> int:
    """Bits of the exact value ``v`` rounded ONCE to nearest-even ``kind`` (``fma.rn`` on halves)."""
    if v == 0 or math.isnan(v) or math.isinf(v):
        return float_to_half(v, kind)
    mant, emin, emax = (8, -126, 127) if kind == "bf16" else (11, -14, 15)
    m, e = math.frexp(abs(v))  # |v| = m 2^e, 0.5 <= m < 1
    p = mant - max(0, emin - (e - 1))  # significant bits available (fewer for subnormals)
    q = round(m * 2.0 ** p)  # exact scaling, then round half to even
    r = math.ldexp(q, e - p)
    if r >= 2.0 ** (emax + 1):
        r = math.inf
    return float_to_half(math.copysign(r, v), kind)  # r is representable: the conversion is exact


def round_to(v, kind: str) -> np.ndarray:
    """float64 array of ``v`` rounded to ``kind`` through float32 (as ``x.float().to(dtype)``)."""
    return torch.as_tensor(np.asarray(v, dtype=np.float32)).to(_TORCH[kind]).double().numpy()


def to_bits(x, kind: str) -> np.ndarray:
    """uint16 bit patterns of ``x`` (float values exactly representable in ``kind``, or already uint16 bits)."""
    x = np.asarray(x)
    if x.dtype == np.uint16:
        return x
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)).to(_TORCH[kind])
    if not torch.equal(t.double(), torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))):
        raise ValueError(f"values not representable in {kind}")
    return t.view(torch.int16).numpy().view(np.uint16)


def from_bits(bits: np.ndarray, kind: str) -> np.ndarray:
    """float64 values of uint16 ``bits`` of ``kind``."""
    return torch.from_numpy(np.array(bits, dtype=np.uint16).view(np.int16)).view(_TORCH[kind]).double().numpy()


# ====================================================================== hardware: half2
class Traits:
    """``Half2Traits<T>``: the constants are the source's (``static constexpr``), the methods hand
    models of what their inline PTX / intrinsics do."""

    def __init__(self, kind: str, module: csource.Module):
        self.kind = kind
        name = f"Half2Traits<{_TRAITS_NAME[kind]}>"
        for c in module.program.struct(name).constants:
            setattr(self, c, module.struct_constant(name, c))
        self._fma: dict = {}
        self.mma = Mma(kind)

    def fma2(self, a: int, b: int, c: int) -> int:
        """``fma.rn.{bf16,f16}x2``: per 16-bit lane d = a * b + c, rounded once to nearest even."""
        key = (a, b, c)
        out = self._fma.get(key)
        if out is None:
            out = 0
            for sh in (0, 16):
                v = (half_to_float(a >> sh, self.kind) * half_to_float(b >> sh, self.kind)
                     + half_to_float(c >> sh, self.kind))
                out |= round_half_exact(v, self.kind) << sh
            self._fma[key] = out
        return out

    def bits(self, v) -> int:
        return float_to_half(v, self.kind)

    from_float = bits

    @staticmethod
    def from_bits(b) -> int:
        return int(b) & 0xFFFF

    def to_float(self, b) -> float:
        return half_to_float(int(b), self.kind)

    def __repr__(self):
        return f"Half2Traits<{_TRAITS_NAME[self.kind]}>"


class TraitsTemplate:
    """``Half2Traits``: ``specialize(T)`` with ``T`` a half ``CType``."""

    def __init__(self):
        self.module: csource.Module | None = None
        self._cache: dict = {}

    def specialize(self, ct):
        kind = getattr(ct, "kind", None)
        if kind not in KINDS:
            raise CSourceError(f"Half2Traits<{ct!r}> is not modelled")
        if kind not in self._cache:
            self._cache[kind] = Traits(kind, self.module)
        return self._cache[kind]


@functools.lru_cache(maxsize=None)
def _half_table(kind: str) -> np.ndarray:
    """float64 value of every 16-bit pattern of ``kind``."""
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    return from_bits(bits, kind)


# PTX ISA fragment layouts of mma.m16n8k16 (g = lane / 4, t = lane % 4), as index arrays:
#   A [16 x 16]: register r, half h of lane -> row g + 8 (r % 2), col 2t + h + 8 (r // 2)
#   B [16 x 8]:  register r, half h of lane -> k 2t + h + 8 r, n g
#   C [16 x 8]:  accumulator i of lane      -> row g + 8 (i // 2), col 2t + i % 2
_LANE = np.arange(32)
_G, _T = _LANE >> 2, _LANE & 3
_A_ROW = np.array([[[_G[ln] + 8 * (r % 2) for h in range(2)] for r in range(4)] for ln in range(32)])
_A_COL = np.array([[[2 * _T[ln] + h + 8 * (r // 2) for h in range(2)] for r in range(4)] for ln in range(32)])
_B_K = np.array([[[2 * _T[ln] + h + 8 * r for h in range(2)] for r in range(2)] for ln in range(32)])
_B_N = np.array([[[_G[ln] for h in range(2)] for r in range(2)] for ln in range(32)])
_C_ROW = np.array([[_G[ln] + 8 * (i // 2) for i in range(4)] for ln in range(32)])
_C_COL = np.array([[2 * _T[ln] + (i % 2) for i in range(4)] for ln in range(32)])


def _halves(regs: np.ndarray, kind: str) -> np.ndarray:
    """[..., 2] float64 halves (low, high) of 32-bit registers."""
    table = _half_table(kind)
    regs = regs.astype(np.int64)
    return np.stack([table[regs & 0xFFFF], table[(regs >> 16) & 0xFFFF]], axis=-1)


def mma_tiles(a, b, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """A [16, 16] and B [16, 8] (float64) of ``mma.m16n8k16`` from per-lane registers ``a[lane][0..3]``,
    ``b[lane][0..1]`` (the PTX ISA fragment layouts above)."""
    A = np.full((16, 16), np.nan)
    B = np.full((16, 8), np.nan)
    A[_A_ROW, _A_COL] = _halves(np.asarray(a, dtype=np.int64), kind)
    B[_B_K, _B_N] = _halves(np.asarray(b, dtype=np.int64), kind)
    if np.isnan(A).any() or np.isnan(B).any():
        raise ModelError("mma operand holds NaN (or the fragment layout does not cover the tile)")
    return A, B


def mma_m16n8k16(acc: np.ndarray, a, b, kind: str) -> None:
    """``acc[lane, 4] += A @ B`` (float64; C fragment as above)."""
    A, B = mma_tiles(a, b, kind)
    acc += (A @ B)[_C_ROW, _C_COL]


class Mma:
    """``Half2Traits<T>::mma(d, a, b0, b1)``: a warp collective (every lane passes its fragments)."""

    def __init__(self, kind: str):
        self.kind = kind

    def collective(self, lanes: list) -> None:
        try:
            a = [lane[1].data if isinstance(lane[1], csource.CArray) else list(lane[1]) for lane in lanes]
            b = [[lane[2], lane[3]] for lane in lanes]
            acc = np.array([lane[0].data for lane in lanes], dtype=np.float64)
        except (TypeError, ValueError, ModelError):
            raise ModelError("mma operand or accumulator unset") from None
        if acc.shape != (32, 4) or len(a) != 32 or any(len(x) != 4 for x in a):
            raise ModelError("mma fragments of the wrong size")
        mma_m16n8k16(acc, a, b, self.kind)
        for lane, row in zip(lanes, acc.tolist()):
            lane[0].data[:] = row

    def __repr__(self):
        return f"mma.m16n8k16.{self.kind}"


def ldmatrix_x4_bits(rows: list) -> list:
    """``ldmatrix.sync.aligned.m8n8.x4.b16``: ``rows[L]`` is the 8 16-bit values at lane ``L``'s address
    (lanes 8i .. 8i+7 address the rows of matrix i); returns ``regs[lane][i]`` = row ``lane / 4``,
    elements ``2 (lane % 4)``, ``+1`` of matrix ``i`` (PTX ISA; checked against CuTe's LDSM layout)."""
    mats = [[rows[8 * i + r] for r in range(8)] for i in range(4)]
    out = []
    for lane in range(32):
        r, c = lane >> 2, 2 * (lane & 3)
        out.append([int(mats[i][r][c]) | (int(mats[i][r][c + 1]) << 16) for i in range(4)])
    return out


class LdMatrixX4:
    """``ldmatrix_x4(r, saddr)``: warp collective; each lane's address is a pointer into shared memory."""

    def collective(self, lanes: list) -> None:
        rows = []
        for dst, p in lanes:
            if not isinstance(p, Ptr) or not p.buf.shared:
                raise ModelError(f"ldmatrix address {p!r} is not in shared memory")
            rows.append(struct.unpack("<8H", p.buf.read(p.off, 16)))
        for (dst, _), regs in zip(lanes, ldmatrix_x4_bits(rows)):
            for i in range(4):
                dst[i] = regs[i]

    def __repr__(self):
        return "ldmatrix.x4"


# =================================================================== hardware: the rest
def _ldg(p):
    if not isinstance(p, Ptr):
        raise ModelError(f"__ldg of {p!r}")
    return p[0]


def _umulhi(a, b):
    return ((int(a) & 0xFFFFFFFF) * (int(b) & 0xFFFFFFFF)) >> 32


def vsub4(a: int, b: int) -> int:
    """CUDA ``__vsub4``: per-byte subtraction modulo 256."""
    return sum((((a >> (8 * i)) - (b >> (8 * i))) & 0xFF) << (8 * i) for i in range(4))


def byte_perm(x: int, y: int, s: int) -> int:
    """CUDA ``__byte_perm(x, y, s)``: byte i of the result is byte ``(s >> 4i) & 7`` of the 8 bytes (y:x)."""
    src = (int(x) & 0xFFFFFFFF) | ((int(y) & 0xFFFFFFFF) << 32)
    return sum(((src >> (8 * ((int(s) >> (4 * i)) & 7))) & 0xFF) << (8 * i) for i in range(4))


def _smem_u32(p):
    if not isinstance(p, Ptr) or not p.buf.shared:
        raise ModelError(f"smem_u32 of {p!r}: not a shared-memory pointer")
    return p


def _cp_async(nbytes):
    def copy(saddr, gptr, valid):
        if not isinstance(saddr, Ptr) or not saddr.buf.shared:
            raise ModelError(f"cp.async destination {saddr!r} is not shared memory")
        raw = gptr.buf.read(gptr.off, nbytes) if valid else bytes(nbytes)
        saddr.buf.write(saddr.off, raw)
    return copy


class _CpAsyncWait:
    def specialize(self, n):
        return lambda: None


def _make(fmt_conv, n):
    def make(*vals):
        if len(vals) != n:
            raise ModelError(f"make_* with {len(vals)} values")
        return tuple(fmt_conv(v) for v in vals)
    return make


class GroupDivModel:
    """A ``GroupDiv{shift, magic}`` value; calling it runs the source's ``GroupDiv::operator()``."""

    def __init__(self, module: csource.Module, shift: int, magic: int):
        self.fn = module.function("operator()", owner="GroupDiv")[0]
        self.shift, self.magic = int(shift), int(magic)

    def __call__(self, kb):
        return self.fn(_LONE_THREAD, self.shift, self.magic, kb)


#: Thread context for device functions called outside a launch (no builtins needed; loops allowed).
_LONE_THREAD = csource.ThreadCtx((0, 0, 0), (0, 0, 0), (32, 1, 1), (1, 1, 1), None, 1 << 30)


def runtime(module_ref: list) -> dict:
    """The intrinsics the translated kernels call, by C name."""
    traits = TraitsTemplate()
    module_ref.append(traits)
    return {
        "Half2Traits": traits, "__ldg": _ldg, "__umulhi": _umulhi, "__vsub4": vsub4, "__byte_perm": byte_perm,
        "min": min, "max": max, "make_uint4": _make(csource._tt_u32, 4), "make_uint2": _make(csource._tt_u32, 2),
        "make_float4": _make(csource._tt_float, 4), "smem_u32": _smem_u32, "cp_async16": _cp_async(16),
        "cp_async4": _cp_async(4), "cp_async_commit": lambda: None, "cp_async_wait": _CpAsyncWait(),
        "ldmatrix_x4": LdMatrixX4(), "GroupDiv": None,  # bound per module below
    }


# ================================================================================ sources
class KernelSource:
    """The CUDA sources the models run: the package's ``cuda/`` (default) or another folder.

    Args:
        folder: a folder holding ``common.cuh`` and the ``.cu`` files (e.g. an edited copy); None:
            :func:`torch_ternary.kernels.loader.source_dir`.
    """

    def __init__(self, folder=None):
        self.folder = folder
        self._modules: dict[str, csource.Module] = {}

    def text(self, name: str) -> str:
        return loader.read_source(name, folder=self.folder)

    def module(self, name: str) -> csource.Module:
        """``cuda/<name>`` parsed and translated (cached)."""
        if name not in self._modules:
            ref: list = []
            rt = runtime(ref)
            mod = csource.Module(csource.Program(name, self.text(name)), rt)
            ref[0].module = mod
            mod.runtime["GroupDiv"] = lambda shift, magic, _m=mod: GroupDivModel(_m, shift, magic)
            mod.ns.clear()
            mod._consts_done = False
            self._modules[name] = mod
        return self._modules[name]

    def group_div(self, name: str, shift: int, magic: int) -> GroupDivModel:
        return GroupDivModel(self.module(name), shift, magic)

    def traits(self, name: str, kind: str) -> Traits:
        mod = self.module(name)
        mod._namespace()
        return mod.runtime["Half2Traits"].specialize(HALF_TYPES[kind])

    def device_function(self, name: str, fname: str, *template_args):
        """A translated device function of ``cuda/<name>`` as a Python callable (template arguments bound)."""
        fn = self.module(name).function(fname)[0]
        return functools.partial(fn, _LONE_THREAD, *template_args)


DEFAULT = KernelSource()


def _src(source) -> KernelSource:
    return DEFAULT if source is None else source


# ============================================================================ the kernels
def _buf(arr: np.ndarray, name: str, base: int = 0, readonly: bool = True) -> Buffer:
    return Buffer(np.ascontiguousarray(arr).tobytes(), name, readonly=readonly, base=base)


def _out(nbytes: int, name: str, base: int = 0) -> Buffer:
    return Buffer(bytes(nbytes), name, track=True, base=base)


def skinny_entry(kind: str, R: int, NT: int, VW: int) -> str:
    return f"tt_skinny_{kind}_r{R}_n{NT}_v{VW}"


def _linear_args(x, words, scale, bias, kind: str, bases, **scalars):
    """The output buffer ``y`` and the argument dict of a 16-bit linear kernel (skinny GEMV and GEMM alike):
    ``x`` / ``bias`` as ``kind`` bits, ``words`` uint32, ``scale`` float32, each at its ``bases`` address."""
    bases = bases or {}
    y = _out(2 * scalars["M"] * scalars["N"], "y", bases.get("y", 0))
    return y, dict(y=y, x=_buf(to_bits(x, kind), "x", bases.get("x", 0)),
                   packed=_buf(np.asarray(words, np.uint32), "packed", bases.get("packed", 0)),
                   scale=_buf(np.asarray(scale, np.float32), "scale", bases.get("scale", 0)),
                   bias=None if bias is None else _buf(to_bits(bias, kind), "bias", bases.get("bias", 0)), **scalars)


def skinny(x, words, scale, bias, kind: str, s_row_stride: int, grouped: int, gshift: int, gmagic: int,
           R: int, NT: int, VW: int, W: int, source: KernelSource | None = None, grid=None, bases=None) -> np.ndarray:
    """Run ``tt_skinny_<kind>_r{R}_n{NT}_v{VW}`` (cuda/gemv.cu, translated) with ``W`` warps.

    Args:
        x: ``[M, 16 * kblocks]`` float64 values of ``kind`` (or uint16 bits), zero past K.
        words: uint32 ``[N, kblocks]`` packed codes. scale: float32 ``[S_n, S_k]``.
        bias: ``[N]`` float64 values of ``kind`` (or uint16 bits), or None.
        s_row_stride, grouped, gshift, gmagic: the kernel's scalar arguments.
        grid: launch grid (default: the one documented in the kernel's header).
        bases: ``{argument: address % 256}`` for the alignment checks (default: all aligned).

    Returns:
        float64 ``[M, N]``: the ``kind`` values the kernel stores (rounded once).
    """
    src = _src(source)
    M, N, kblocks = x.shape[0], words.shape[0], words.shape[1]
    y, args = _linear_args(x, words, scale, bias, kind, bases, M=M, N=N, kblocks=kblocks, s_row_stride=s_row_stride,
                           grouped=grouped, gshift=gshift, gmagic=gmagic)
    grid = grid or (cdiv(N, 16 * R), cdiv(M, 8 * NT), 1)
    src.module("gemv.cu").launch(skinny_entry(kind, R, NT, VW), grid, (32 * W, 1, 1), [], args)
    y.check_written_once()
    return from_bits(np.frombuffer(bytes(y.data), np.uint16), kind).reshape(M, N)


def gemm(x, words, scale, bias, kind: str, K: int, s_row_stride: int, grouped: int, gshift: int, gmagic: int,
         source: KernelSource | None = None, grid=None, block=None, shared_mem=None, bases=None) -> np.ndarray:
    """Run ``tt_gemm_<kind>`` (cuda/gemm.cu, translated): cp.async tiles, swizzled ldmatrix, decoded B, epilogue.

    Args:
        x: ``[M, K]`` float64 values of ``kind`` (or uint16 bits); ``K`` is the kernel's K (a multiple of 8).
        words: uint32 ``[N, kblocks]``. scale: float32 ``[S_n, S_k]``. bias: ``[N]`` or None.
        grid / block / shared_mem: the launch (default: from the source's tile constants).

    Returns:
        float64 ``[M, N]``: the stored ``kind`` values.
    """
    src = _src(source)
    mod = src.module("gemm.cu")
    M, N, kblocks = x.shape[0], words.shape[0], words.shape[1]
    y, args = _linear_args(x, words, scale, bias, kind, bases, M=M, N=N, K=K, kblocks=kblocks,
                           s_row_stride=s_row_stride, grouped=grouped, gshift=gshift, gmagic=gmagic)
    grid = grid or (cdiv(N, mod.constant("kGemmBN")), cdiv(M, mod.constant("kGemmBM")), 1)
    block = block or (mod.constant("kGemmThreads"), 1, 1)
    smem = mod.constant("kGemmSmemBytes") if shared_mem is None else shared_mem
    mod.launch(f"tt_gemm_{kind}", grid, block, [], args, dynamic_smem=smem)
    y.check_written_once()
    return from_bits(np.frombuffer(bytes(y.data), np.uint16), kind).reshape(M, N)


def decode_launch(n: int, kblocks: int) -> tuple[tuple, tuple]:
    """The launch decode.cu / a8_weights.cu document: one thread a word, grid.y over (at most 65535) rows."""
    threads = min(256, cdiv(kblocks, 32) * 32)
    return (cdiv(kblocks, threads), min(n, 65535), 1), (threads, 1, 1)


def unpack(words, k: int, source: KernelSource | None = None, grid=None, block=None, bases=None) -> np.ndarray:
    """Run ``tt_unpack_i8`` (cuda/decode.cu, translated).

    Args:
        words: uint32 ``[N, kblocks]``. k: ``K`` (``16 (kblocks - 1) < K <= 16 kblocks``).

    Returns:
        int8 ``[N, K]``.
    """
    src = _src(source)
    n, kblocks = words.shape
    bases = bases or {}
    out = _out(n * k, "out", bases.get("out", 0))
    g, b = decode_launch(n, kblocks)
    src.module("decode.cu").launch("tt_unpack_i8", grid or g, block or b, [],
                                   dict(out=out, packed=_buf(np.asarray(words, np.uint32), "packed", bases.get("packed", 0)),
                                        n_rows=n, k=k, kblocks=kblocks))
    out.check_written_once()
    return np.frombuffer(bytes(out.data), np.int8).reshape(n, k).copy()


def dequant(words, scale, k: int, s_row_stride: int, grouped: int, gshift: int, gmagic: int, out_kind: str,
            source: KernelSource | None = None, grid=None, block=None, bases=None) -> np.ndarray:
    """Run ``tt_dequant_<out_kind>`` (cuda/decode.cu, translated), ``out_kind`` in bf16 / f16 / f32.

    Args:
        words: uint32 ``[N, kblocks]``. scale: float32 ``[S_n, S_k]``. k: ``K``.

    Returns:
        ``[N, K]`` raw output: uint16 bits (bf16 / f16) or float32.
    """
    src = _src(source)
    n, kblocks = words.shape
    esize = 4 if out_kind == "f32" else 2
    bases = bases or {}
    out = _out(n * k * esize, "out", bases.get("out", 0))
    g, b = decode_launch(n, kblocks)
    src.module("decode.cu").launch(f"tt_dequant_{out_kind}", grid or g, block or b, [], dict(
        out=out, packed=_buf(np.asarray(words, np.uint32), "packed", bases.get("packed", 0)),
        scale=_buf(np.asarray(scale, np.float32), "scale", bases.get("scale", 0)), n_rows=n, k=k, kblocks=kblocks,
        s_row_stride=s_row_stride, grouped=grouped, gshift=gshift, gmagic=gmagic))
    out.check_written_once()
    return np.frombuffer(bytes(out.data), np.float32 if out_kind == "f32" else np.uint16).reshape(n, k).copy()


def a8_weight(words, n_pad: int, fmt: str, source: KernelSource | None = None, grid=None, block=None,
              bases=None) -> np.ndarray:
    """Run ``tt_a8_weight_{i8,e4m3}`` (cuda/a8_weights.cu, translated).

    Args:
        words: uint32 ``[N, kblocks]``. n_pad: ``Np >= N`` rows to write. fmt: "int8" or "fp8".

    Returns:
        uint8 ``[Np, 16 kblocks]``: int8 codes or e4m3 bits.
    """
    src = _src(source)
    n, kblocks = words.shape
    bases = bases or {}
    out = _out(n_pad * 16 * kblocks, "out", bases.get("out", 0))
    g, b = decode_launch(n_pad, kblocks)
    entry = "tt_a8_weight_i8" if fmt == "int8" else "tt_a8_weight_e4m3"
    src.module("a8_weights.cu").launch(entry, grid or g, block or b, [], dict(
        out=out, packed=_buf(np.asarray(words, np.uint32), "packed", bases.get("packed", 0)),
        n_rows=n, n_pad_rows=n_pad, kblocks=kblocks))
    out.check_written_once()
    return np.frombuffer(bytes(out.data), np.uint8).reshape(n_pad, 16 * kblocks).copy()


# ================================================ W1.58A8 activations / epilogue (from the spec)
def e4m3_bits(v: np.ndarray) -> np.ndarray:
    """OCP FP8 E4M3FN encoding of float32 ``v``, round to nearest even, saturating to +-448, NaN -> 0x7F
    (what ``cvt.rn.satfinite.e4m3x2.f32`` does). Written from the format spec: bias 7, 3 mantissa
    bits, subnormal step 2^-9, no infinities."""
    v = np.asarray(v, dtype=np.float32)
    out = np.zeros(v.shape, np.uint8)
    for idx, x in np.ndenumerate(v):
        x = float(x)
        if math.isnan(x):
            out[idx] = 0x7F
            continue
        sign = 0x80 if math.copysign(1.0, x) < 0 else 0
        a = min(abs(x), 448.0)
        if a < 2.0 ** -6:  # subnormal: q * 2^-9, q in 0..8 (8 is the smallest normal)
            q = round(a * 2.0 ** 9)
            out[idx] = sign | (q if q < 8 else 0x08)
            continue
        m, e = math.frexp(a)  # a = m 2^e, 0.5 <= m < 1  ->  1.f * 2^(e-1)
        q = round(m * 16)  # 1.fff as 4 bits (8..16), half to even
        if q == 16:
            q, e = 8, e + 1
        if e - 1 > 8 or (e - 1 == 8 and q > 14):  # above 448 after rounding: saturate
            e, q = 9, 14
        out[idx] = sign | ((e - 1 + 7) << 3) | (q - 8)
    return out


def act_quant_spec(x: np.ndarray, fmt: str, tiny_bits: int, qmax: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-token quantization as the header of cuda/act_quant.cu specifies it (numpy, not the op's code).

    Args:
        x: float32 ``[M, K]`` (the row values as the kernel reads them, converted to float).
        fmt: "int8" or "fp8". tiny_bits, qmax: the kernel's ``kTinyBits`` and ``kQmax``.

    Returns:
        ``(q, s)``: uint8 ``[M, K]`` code bytes (int8 two's complement / e4m3 bits) and float32 ``[M]``.
    """
    x = np.asarray(x, dtype=np.float32)
    bits = x.view(np.uint32) & np.uint32(0x7FFFFFFF)
    amax_bits = bits.max(axis=1) if x.shape[1] else np.zeros(x.shape[0], np.uint32)
    a = amax_bits.view(np.float32)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        s = np.where(amax_bits < tiny_bits, np.float32(1.0), a / np.float32(qmax)).astype(np.float32)
        v = (x / s[:, None]).astype(np.float32)
        if fmt == "int8":
            r = np.rint(v)
            r = np.where(np.isnan(r), 0.0, r)
            q = np.clip(r, -127, 127).astype(np.int8).view(np.uint8)
        else:
            q = e4m3_bits(v)
    return q, s


def a8_epilogue_spec(acc: np.ndarray, sx: np.ndarray, sw: np.ndarray, bias) -> np.ndarray:
    """``(float(acc) * sx[m]) * sw[n] (+ bias[n])`` in float32, in this order, as the header of
    cuda/a8_epilogue.cu specifies (numpy; the caller rounds to the output dtype)."""
    a = np.asarray(acc).astype(np.float32)
    v = (a * np.asarray(sx, np.float32)[:, None]).astype(np.float32) * np.asarray(sw, np.float32)[None, :]
    v = v.astype(np.float32)
    if bias is not None:
        v = (v + np.asarray(bias, np.float32)[None, :]).astype(np.float32)
    return v


__all__ = ["KINDS", "CSourceError", "ModelError", "KernelSource", "DEFAULT", "skinny", "gemm", "unpack", "dequant",
           "a8_weight", "act_quant_spec", "a8_epilogue_spec", "e4m3_bits", "mma_m16n8k16", "ldmatrix_x4_bits",
           "half_to_float", "float_to_half", "round_to", "to_bits", "from_bits", "vsub4", "byte_perm"]
