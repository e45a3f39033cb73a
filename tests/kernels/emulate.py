"""Lane-level Python models of the CUDA kernels, for CPU tests of their index and fragment logic.

No GPU runs here, so these models replay what each thread of ``cuda/gemv.cu`` and
``cuda/gemm.cu`` computes: the same loops, the same index formulas, the decode constants parsed
from ``cuda/common.cuh``, and ``mma.sync.m16n8k16`` / ``ldmatrix`` given by the fragment layouts
of the PTX ISA (A: a_r[h] at row g + 8 (r % 2), col 2t + h + 8 (r // 2); B: b_r[h] at k 2t + h + 8r,
n g; C: c_i at row g + 8 (i // 2), col 2t + i % 2; g = lane / 4, t = lane % 4). They check the
design (k order, shifts, swizzle, tails, scales) against a dense reference; they do not check
the CUDA compiler or the hardware: the GPU tests do.
"""

from __future__ import annotations

import re
import struct

import numpy as np
import torch

from torch_ternary.kernels import loader

KINDS = ("bf16", "f16")
_TRAITS_NAME = {"bf16": "__nv_bfloat16", "f16": "__half"}


def traits_constants() -> dict[str, dict[str, int]]:
    """``{"bf16": {"kMagic": ..., ...}, "f16": {...}}`` parsed from cuda/common.cuh."""
    text = loader.read_source("gemv.cu")
    out = {}
    for kind, cname in _TRAITS_NAME.items():
        body = re.search(r"struct Half2Traits<" + re.escape(cname) + r"> \{(.*?)\n\};", text, re.S).group(1)
        out[kind] = {k: int(v, 16) for k, v in re.findall(r"static constexpr u32 (k\w+) = (0x[0-9A-Fa-f]+)u;", body)}
    return out


def half_to_float(bits: int, kind: str) -> float:
    bits &= 0xFFFF
    if kind == "bf16":
        return struct.unpack("<f", struct.pack("<I", bits << 16))[0]
    return float(np.array([bits], dtype=np.uint16).view(np.float16)[0])


def float_to_half(v: float, kind: str) -> int:
    """Bits of ``v`` rounded to nearest-even in ``kind`` (through float32, exact for every value used)."""
    if kind == "f16":
        return int(np.array([v], dtype=np.float32).astype(np.float16).view(np.uint16)[0])
    b = struct.unpack("<I", struct.pack("<f", float(np.float32(v))))[0]
    return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) & 0xFFFF


def round_to(v, kind: str) -> np.ndarray:
    dtype = torch.bfloat16 if kind == "bf16" else torch.float16
    return torch.as_tensor(np.asarray(v, dtype=np.float32)).to(dtype).double().numpy()


class Half2:
    """half2 arithmetic on 32-bit registers as the kernels use it (fma2 with one rounding)."""

    def __init__(self, kind: str):
        self.kind = kind
        self.c = traits_constants()[kind]
        self._dec: dict[int, int] = {}
        self._mul: dict[tuple[int, int], int] = {}

    def fma2(self, a: int, b: int, c: int) -> int:
        out = 0
        for h in range(2):
            sh = 16 * h
            v = (half_to_float(a >> sh, self.kind) * half_to_float(b >> sh, self.kind)
                 + half_to_float(c >> sh, self.kind))
            out |= float_to_half(v, self.kind) << sh
        return out

    def decode_pair(self, shifted: int) -> int:
        key = shifted & 0x00030003
        out = self._dec.get(key)
        if out is None:
            out = self._dec[key] = self.fma2(key | self.c["kMagic"], self.c["kOne2"], self.c["kNegOffset"])
        return out

    def scale_pair(self, q2: int, s2: int) -> int:
        key = (q2, s2)
        out = self._mul.get(key)
        if out is None:
            out = self._mul[key] = self.fma2(q2, s2, self.c["kNegZero2"])
        return out

    def splat(self, s: float) -> int:
        b = float_to_half(s, self.kind)
        return b | (b << 16)

    def pair(self, reg: int) -> tuple[float, float]:
        return half_to_float(reg, self.kind), half_to_float(reg >> 16, self.kind)

    def pack(self, lo: float, hi: float) -> int:
        return float_to_half(lo, self.kind) | (float_to_half(hi, self.kind) << 16)


def mma_m16n8k16(acc: np.ndarray, a: list, b: list, h2: Half2) -> None:
    """``acc[lane, 4] += A @ B`` from per-lane registers ``a[lane][4]``, ``b[lane][2]`` (PTX layouts)."""
    A = np.full((16, 16), np.nan)
    B = np.full((16, 8), np.nan)
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        for r in range(4):
            for h, v in enumerate(h2.pair(a[lane][r])):
                A[g + 8 * (r % 2), 2 * t + h + 8 * (r // 2)] = v
        for r in range(2):
            for h, v in enumerate(h2.pair(b[lane][r])):
                B[2 * t + h + 8 * r, g] = v
    assert not np.isnan(A).any() and not np.isnan(B).any(), "fragment layout does not cover the tile"
    D = A @ B
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        for i in range(4):
            acc[lane, i] += D[g + 8 * (i // 2), 2 * t + (i % 2)]


def ldmatrix_x4(rows: list, h2: Half2) -> list:
    """``ldmatrix.sync.aligned.m8n8.x4.b16``: ``rows[L]`` is the 8-element row lane ``L`` addresses
    (lanes 8i .. 8i+7 give the rows of matrix i); returns ``regs[lane][i]`` = row ``lane / 4``,
    elements ``2 (lane % 4)``, ``+1`` of matrix ``i`` (PTX ISA; checked against CuTe's LDSM layout)."""
    mats = np.asarray(rows, dtype=np.float64).reshape(4, 8, 8)
    return [[h2.pack(*mats[r, lane >> 2, 2 * (lane & 3):2 * (lane & 3) + 2]) for r in range(4)] for lane in range(32)]


class GroupDiv:
    def __init__(self, shift: int, magic: int):
        self.shift, self.magic = shift, magic

    def __call__(self, kb: int) -> int:
        return kb >> self.shift if self.shift >= 0 else (kb * self.magic) >> 32


def _epilogue_value(v, n, grouped, scale_flat, s_row_stride, bias):
    if not grouped:
        v = np.float32(v) * np.float32(scale_flat[n * s_row_stride])
    if bias is not None:
        v = np.float32(v) + np.float32(bias[n])
    return float(v)


def skinny(x: np.ndarray, words: np.ndarray, scale: np.ndarray, bias, kind: str, s_row_stride: int, grouped: int,
           gdiv: GroupDiv, R: int, NT: int, VW: int, W: int) -> np.ndarray:
    """Model of ``tt_skinny_<kind>_r{R}_n{NT}_v{VW}`` with W warps.

    Args:
        x: float64 ``[M, 16 * kblocks]`` holding ``kind`` values, zero past K.
        words: uint32 ``[N, kblocks]``. scale: float32 ``[S_n, S_k]``. bias: float ``[N]`` or None.

    Returns:
        float64 ``[M, N]`` before the final rounding to ``kind``.
    """
    h2 = Half2(kind)
    M, N, kblocks = x.shape[0], words.shape[0], words.shape[1]
    sflat = scale.reshape(-1)
    chunk = 4 * VW
    nchunks = -(-kblocks // chunk)
    y = np.zeros((M, N))
    xpairs = [[h2.pack(x[m, 2 * p], x[m, 2 * p + 1]) for p in range(8 * kblocks)] for m in range(M)]
    for bx in range(-(-N // (16 * R))):
        for by in range(-(-M // (8 * NT))):
            row0, m0 = bx * 16 * R, by * 8 * NT
            red = np.zeros((W, R * NT * 4, 32))
            for warp in range(W):
                acc = np.zeros((R, NT, 32, 4))
                for c in range(warp, nchunks, W):
                    for wi in range(VW):
                        for r in range(R):
                            for s in range(4):
                                a_regs, b_regs = [], [[] for _ in range(NT)]
                                for lane in range(32):
                                    g, t = lane >> 2, lane & 3
                                    kb0 = c * chunk + t * VW
                                    valid = kb0 < kblocks
                                    kb = kb0 + wi if valid else 0
                                    nlo = min(row0 + 16 * r + g, N - 1)
                                    nhi = min(row0 + 16 * r + g + 8, N - 1)
                                    lo = int(words[nlo, kb]) if valid else 0x55555555
                                    hi = int(words[nhi, kb]) if valid else 0x55555555
                                    a = [h2.decode_pair(lo >> (4 * s)), h2.decode_pair(hi >> (4 * s)),
                                         h2.decode_pair(lo >> (4 * s + 2)), h2.decode_pair(hi >> (4 * s + 2))]
                                    if grouped:
                                        col = gdiv(kb)
                                        slo = h2.splat(float(sflat[nlo * s_row_stride + col]))
                                        shi = h2.splat(float(sflat[nhi * s_row_stride + col]))
                                        a = [h2.scale_pair(a[0], slo), h2.scale_pair(a[1], shi),
                                             h2.scale_pair(a[2], slo), h2.scale_pair(a[3], shi)]
                                    a_regs.append(a)
                                    for nt in range(NT):
                                        xm = min(m0 + 8 * nt + g, M - 1)
                                        if valid:
                                            p0 = 8 * kb + 2 * s  # pair index of element 16 kb + 4 s
                                            b_regs[nt].append([xpairs[xm][p0], xpairs[xm][p0 + 1]])
                                        else:
                                            b_regs[nt].append([0, 0])
                                for nt in range(NT):
                                    mma_m16n8k16(acc[r, nt], a_regs, b_regs[nt], h2)
                for r in range(R):
                    for nt in range(NT):
                        for e in range(4):
                            red[warp, (r * NT + nt) * 4 + e, :] = acc[r, nt, :, e]
            for i in range(R * NT * 4 * 32):
                ln, idx = i & 31, i >> 5
                v = red[:, idx, ln].sum()
                e, nt, r = idx & 3, (idx >> 2) % NT, (idx >> 2) // NT
                n = row0 + 16 * r + (ln >> 2) + (8 if e & 2 else 0)
                m = m0 + 8 * nt + 2 * (ln & 3) + (e & 1)
                if n < N and m < M:
                    y[m, n] = _epilogue_value(v, n, grouped, sflat, s_row_stride, bias)
    return y


def gemm(x: np.ndarray, words: np.ndarray, scale: np.ndarray, bias, kind: str, K: int, s_row_stride: int,
         grouped: int, gdiv: GroupDiv, BM: int = 128, BN: int = 128) -> np.ndarray:
    """Model of ``tt_gemm_<kind>``: cp.async tile fill, swizzled ldmatrix A, decoded B, epilogue.

    Args:
        x: float64 ``[M, K]`` holding ``kind`` values (``K`` here is the kernel's K: a multiple of 8).
        words: uint32 ``[N, kblocks]``.

    Returns:
        float64 ``[M, N]`` before the final rounding.
    """
    h2 = Half2(kind)
    M, N, kblocks = x.shape[0], words.shape[0], words.shape[1]
    sflat = scale.reshape(-1)
    ktiles = -(-kblocks // 4)
    y = np.zeros((M, N))
    for by in range(-(-M // BM)):
        for bx in range(-(-N // BN)):
            bm, bn = by * BM, bx * BN
            acc = np.zeros((8, 4, 4, 32, 4))  # warp, i, j, lane, e
            for kt in range(ktiles):
                As = np.zeros(BM * 64)
                for idx in range(1024):
                    row, ch = idx >> 3, idx & 7
                    gm, gk = bm + row, kt * 64 + ch * 8
                    dst = row * 64 + ((ch ^ (row & 7)) * 8)
                    As[dst:dst + 8] = x[gm, gk:gk + 8] if (gm < M and gk < K) else 0.0
                Bs = np.zeros(BN * 4, dtype=np.uint64)
                for idx in range(512):
                    row, wd = idx >> 2, idx & 3
                    gn, kb = bn + row, kt * 4 + wd
                    Bs[row * 4 + wd] = words[gn, kb] if (gn < N and kb < kblocks) else 0
                for warp in range(8):
                    wm, wn = warp // 4, warp % 4
                    for ks in range(4):
                        # ldmatrix.x4: lane L addresses row (L % 16), chunk 2 ks + L / 16 of its m16 tile
                        af = [[None] * 4 for _ in range(4)]
                        for i in range(4):
                            rows = []
                            for L in range(32):
                                row = wm * 64 + i * 16 + (L & 15)
                                ch = ks * 2 + (L >> 4)
                                addr = row * 64 + ((ch ^ (row & 7)) * 8)
                                rows.append(As[addr:addr + 8])
                            af[i] = ldmatrix_x4(rows, h2)
                        kb_c = min(kt * 4 + ks, kblocks - 1)
                        for j in range(4):
                            b_regs = []
                            for lane in range(32):
                                g, t = lane >> 2, lane & 3
                                w = int(Bs[(wn * 32 + j * 8 + g) * 4 + ks]) >> (2 * t)
                                b0, b1 = h2.decode_pair(w), h2.decode_pair(w >> 8)
                                if grouped:
                                    nrow = min(bn + wn * 32 + j * 8 + g, N - 1)
                                    s2 = h2.splat(float(sflat[nrow * s_row_stride + gdiv(kb_c)]))
                                    b0, b1 = h2.scale_pair(b0, s2), h2.scale_pair(b1, s2)
                                b_regs.append([b0, b1])
                            for i in range(4):
                                mma_m16n8k16(acc[warp, i, j], af[i], b_regs, h2)
            for warp in range(8):
                wm, wn = warp // 4, warp % 4
                for j in range(4):
                    for lane in range(32):
                        g, t = lane >> 2, lane & 3
                        n = bn + wn * 32 + j * 8 + 2 * t
                        for i in range(4):
                            for h in range(2):
                                m = bm + wm * 64 + i * 16 + g + 8 * h
                                for e in range(2):
                                    if m < M and n + e < N:
                                        y[m, n + e] = _epilogue_value(acc[warp, i, j, lane, 2 * h + e], n + e, grouped,
                                                                      sflat, s_row_stride, bias)
    return y


def unpack_word_i8(w: int) -> list[int]:
    """Model of ``unpack_word_i8`` in cuda/decode.cu (``__vsub4`` and ``__byte_perm``)."""

    def vsub4(a, b):
        return sum((((a >> (8 * i)) - (b >> (8 * i))) & 0xFF) << (8 * i) for i in range(4))

    def byte_perm(xv, yv, sel):
        src = xv | (yv << 32)
        return sum(((src >> (8 * ((sel >> (4 * i)) & 7))) & 0xFF) << (8 * i) for i in range(4))

    v = [vsub4((w >> (2 * i)) & 0x03030303, 0x01010101) for i in range(4)]
    words = [byte_perm(v[0], v[1], 0x6420), byte_perm(v[2], v[3], 0x6420),
             byte_perm(v[0], v[1], 0x7531), byte_perm(v[2], v[3], 0x7531)]
    out = []
    for j in range(16):
        b = (words[j >> 2] >> (8 * (j & 3))) & 0xFF
        out.append(b - 256 if b >= 128 else b)
    return out
