"""The CPU kernel models are honest: one-token edits of ``cuda/*`` turn them red.

Each mutation below changes ONE token of a kernel source (a shift amount, an index term, an
offset, a mask, a loop bound, a selector, a decode constant), in a temporary copy of ``cuda/``.
The CPU models (``emulate.py``, which run the kernels' own translated statements) are then run on
the mutated copy, and the exact-equality check that passes on the real sources (the "unmutated"
test) must fail: with an ``AssertionError``, i.e. a wrong value, or a ``ModelError`` raised by a
run-time check (out-of-bounds / misaligned access, an output byte written twice or never, a read
of shared memory nobody wrote). A ``CSourceError`` (the translator refusing the mutant) would
error the test instead: every mutant here is valid C++ that the models run and get wrong.

Mutants that cannot change any output are deliberately absent (e.g. the pad word ``0x55555555``
of the skinny kernel: its weights meet zeroed activations whatever they are).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from torch_ternary.kernels import loader

from . import csource, emulate
from .csource import CSourceError, tokenize
from .test_kernel_models import DECODE_CASES, SKINNY_CASES, check_a8_weight, check_decode, run_gemm, run_skinny


@dataclass(frozen=True)
class Mutation:
    id: str
    file: str
    old: str
    new: str
    check: str  # "skinny" | "gemm" | "decode" | "a8"
    what: str   # shift / index / offset / mask / loop bound / selector / constant
    nth: int = 0  # which occurrence of ``old`` (0: the first)


MUTATIONS = [
    # ---------------------------------------------------------------------------- gemv.cu
    Mutation("gemv-decode-shift-lo", "gemv.cu", "lo >> (4 * s + 2)", "lo >> (4 * s + 3)", "skinny", "shift"),
    Mutation("gemv-decode-shift-hi", "gemv.cu", "hi >> (4 * s));", "hi >> (2 * s));", "skinny", "shift"),
    Mutation("gemv-row-hi", "gemv.cu", "row0 + 16 * r + g + 8, N - 1", "row0 + 16 * r + g + 4, N - 1", "skinny", "index"),
    Mutation("gemv-x-second-half", "gemv.cu", "xrow[nt] + 16 * kb + 8)", "xrow[nt] + 16 * kb + 16)", "skinny", "offset"),
    Mutation("gemv-lane-word", "gemv.cu", "c * kChunk + t * VW;", "c * kChunk + t * kChunk;", "skinny", "index"),
    Mutation("gemv-x-register", "gemv.cu", "xv[nt][s >> 1];", "xv[nt][s >> 2];", "skinny", "shift"),
    Mutation("gemv-b0-member", "gemv.cu", "(s & 1) ? xs.z : xs.x;", "(s & 1) ? xs.z : xs.y;", "skinny", "index"),
    Mutation("gemv-epilogue-col", "gemv.cu", "2 * (ln & 3) + (e & 1);", "2 * (ln & 3) + (e & 2);", "skinny", "index"),
    Mutation("gemv-epilogue-row", "gemv.cu", "16 * r + (ln >> 2) +", "16 * r + (ln >> 3) +", "skinny", "shift"),
    Mutation("gemv-prefetch", "gemv.cu", "kb0 + nwarps * kChunk;", "kb0 + nwarps * VW;", "skinny", "offset"),
    Mutation("gemv-scale-row", "gemv.cu", "(scale + (long long)nlo[r] * s_row_stride + col));",
             "(scale + (long long)nhi[r] * s_row_stride + col));", "skinny", "index"),
    Mutation("gemv-reduction-slot", "gemv.cu", "red[warp][(r * NT + nt) * 4 + e]", "red[warp][(r * NT + nt) * 2 + e]",
             "skinny", "index"),
    Mutation("gemv-block-rows", "gemv.cu", "blockIdx.x * (16 * R);", "blockIdx.x * (8 * R);", "skinny", "index"),
    Mutation("gemv-chunk-count", "gemv.cu", "(kblocks + kChunk - 1) / kChunk", "(kblocks + kChunk - 2) / kChunk",
             "skinny", "loop bound"),
    Mutation("gemv-warp-stride", "gemv.cu", "c < nchunks; c += nwarps)", "c < nchunks; c += 1)", "skinny", "loop bound"),
    # ---------------------------------------------------------------------------- gemm.cu
    Mutation("gemm-swizzle-store", "gemm.cu", "a_dst + row * kGemmBK + ((ch ^ (row & 7)) * 8)",
             "a_dst + row * kGemmBK + ((ch ^ (row & 3)) * 8)", "gemm", "index"),
    Mutation("gemm-ldmatrix-chunk", "gemm.cu", "ks * 2 + (lane >> 4);", "ks * 2 + (lane >> 3);", "gemm", "shift"),
    Mutation("gemm-b-pair-shift", "gemm.cu", "word_of(bw[j], ks) >> (2 * t);", "word_of(bw[j], ks) >> (4 * t);",
             "gemm", "shift"),
    Mutation("gemm-b1-shift", "gemm.cu", "decode_pair<T>(w >> 8);", "decode_pair<T>(w >> 6);", "gemm", "shift"),
    Mutation("gemm-a-chunk-k", "gemm.cu", "kt * kGemmBK + ch * 8;", "kt * kGemmBK + ch * 4;", "gemm", "offset"),
    Mutation("gemm-b-tile-row", "gemm.cu", "b_dst + row * 4 + wd", "b_dst + row * 2 + wd", "gemm", "index"),
    Mutation("gemm-epilogue-row", "gemm.cu", "i * 16 + g + 8 * h;", "i * 16 + g + 4 * h;", "gemm", "offset"),
    Mutation("gemm-epilogue-col", "gemm.cu", "warp_n * 32 + j * 8 + 2 * t;", "warp_n * 32 + j * 4 + 2 * t;",
             "gemm", "index"),
    Mutation("gemm-scale-row-clamp", "gemm.cu", "j * 8 + g, N - 1);", "j * 8 + g, N - 2);", "gemm", "offset"),
    Mutation("gemm-ktiles", "gemm.cu", "(kblocks + 3) / 4;", "(kblocks + 2) / 4;", "gemm", "loop bound"),
    Mutation("gemm-scale-column", "gemm.cu", "min(kt * 4 + ks, kblocks - 1);", "min(kt * 2 + ks, kblocks - 1);",
             "gemm", "index"),
    Mutation("gemm-stage-index", "gemm.cu", "load_stage(nk % kGemmStages, nk);", "load_stage(nk % kGemmMT, nk);",
             "gemm", "index"),
    Mutation("gemm-prologue-stages", "gemm.cu", "s < kGemmStages - 1; ++s", "s < kGemmStages - 2; ++s", "gemm",
             "loop bound"),
    Mutation("gemm-pair-store-shift", "gemm.cu", "((u32)Tr::bits(v1) << 16);", "((u32)Tr::bits(v1) << 8);", "gemm",
             "shift"),
    # ---------------------------------------------------------------------------- decode.cu
    Mutation("decode-unpack-shift", "decode.cu", "__vsub4((w >> 4) & 0x03030303u", "__vsub4((w >> 5) & 0x03030303u",
             "decode", "shift"),
    Mutation("decode-unpack-selector", "decode.cu", "out[2] = __byte_perm(v0, v1, 0x7531);",
             "out[2] = __byte_perm(v0, v1, 0x7530);", "decode", "selector"),
    Mutation("decode-unpack-row-offset", "decode.cu", "signed char* dst = out + (long long)n * k + 16 * kb;",
             "signed char* dst = out + (long long)n * k + 8 * kb;", "decode", "offset"),
    Mutation("decode-f32-slot", "decode.cu", "8 * (j & 1) + (j >> 1);", "8 * (j & 1) + (j >> 2);", "decode", "shift"),
    Mutation("decode-half-pair-shift", "decode.cu", "decode_pair<T>(w >> (2 * i))", "decode_pair<T>(w >> (3 * i))",
             "decode", "shift"),
    Mutation("decode-half-tail-shift", "decode.cu", "(p[j >> 1] >> (16 * (j & 1)))", "(p[j >> 1] >> (8 * (j & 1)))",
             "decode", "shift"),
    Mutation("decode-scale-row", "decode.cu", "__ldg(scale + (long long)n * s_row_stride + col)",
             "__ldg(scale + (long long)kb * s_row_stride + col)", "decode", "index"),
    Mutation("decode-dequant-word-index", "decode.cu", "(long long)n * kblocks + kb;", "(long long)n * k + kb;",
             "decode", "index", nth=1),
    Mutation("decode-half-vector-order", "decode.cu", "make_uint4(p[4], p[5], p[6], p[7])",
             "make_uint4(p[3], p[5], p[6], p[7])", "decode", "index"),
    Mutation("decode-f32-vector-order", "decode.cu", "v[4 * i + 2], v[4 * i + 3]);", "v[4 * i + 2], v[4 * i + 2]);",
             "decode", "index"),
    Mutation("decode-row-stride", "decode.cu", "n < n_rows; n += gridDim.y)", "n < n_rows; n += gridDim.x)", "decode",
             "loop bound", nth=2),
    # ------------------------------------------------------------------------- a8_weights.cu
    Mutation("a8-codes-shift", "a8_weights.cu", "(w >> 6) & 0x03030303u;", "(w >> 7) & 0x03030303u;", "a8", "shift"),
    Mutation("a8-e4m3-sign-shift", "a8_weights.cu", "(neg << 7);", "(neg << 6);", "a8", "shift"),
    Mutation("a8-store-offset", "a8_weights.cu", "(long long)n * kp + 16LL * kb)", "(long long)n * kp + 8LL * kb)",
             "a8", "offset"),
    Mutation("a8-e4m3-nonzero-mask", "a8_weights.cu", "(c ^ 0x01010101u) & 0x01010101u", "(c ^ 0x01010100u) & 0x01010101u",
             "a8", "mask"),
    # --------------------------------------------------------------------------- common.cuh
    Mutation("common-decode-mask", "common.cuh", "(shifted_word & 0x00030003u)", "(shifted_word & 0x00070003u)",
             "decode", "mask"),
    Mutation("common-bf16-offset-constant", "common.cuh", "kNegOffset = 0xC301C301u;", "kNegOffset = 0xC302C301u;",
             "decode", "constant"),
    Mutation("common-splat-shift", "common.cuh", "return b | (b << 16);", "return b | (b << 15);", "decode", "shift"),
    Mutation("common-groupdiv-shift", "common.cuh", "(kb >> shift)", "(kb << shift)", "decode", "shift"),
    Mutation("common-word-of-index", "common.cuh", "(i == 2 ? v.z : v.w)", "(i == 2 ? v.w : v.w)", "gemm", "index"),
]

#: The cases each check runs (small: every mutant runs its check once).
GEMM_MUTATION_CASES = [
    (40, 200, 20, "per_group", 48, "bf16", True),  # 4 k-tiles (the pipeline wraps), gb = 3, ragged N, bias, pair stores
    (9, 40, 5, "per_channel", 40, "f16", False),   # odd N: element stores
]


def check(name: str, source) -> None:
    """Run one family's exact-equality checks on ``source``; raises AssertionError (or ModelError) on a mismatch."""
    if name == "skinny":
        for case in (SKINNY_CASES[0], SKINNY_CASES[1], SKINNY_CASES[3]):
            got, ref = run_skinny(case, source)
            np.testing.assert_array_equal(got, ref, err_msg=f"skinny {case}")
    elif name == "gemm":
        for case in GEMM_MUTATION_CASES:
            got, ref = run_gemm(case, source)
            np.testing.assert_array_equal(got, ref, err_msg=f"gemm {case}")
    elif name == "decode":
        for case in DECODE_CASES[:2]:
            check_decode(case, source)
    elif name == "a8":
        for case in DECODE_CASES[:2]:
            check_a8_weight(case, source)
    else:  # pragma: no cover
        raise ValueError(name)


def copy_sources(dst: Path) -> Path:
    """The package's CUDA sources (``*.cu``, ``*.cuh``) copied into ``dst``."""
    dst.mkdir(parents=True, exist_ok=True)
    for entry in loader.source_dir().iterdir():
        if entry.name.endswith((".cu", ".cuh")):
            (dst / entry.name).write_text(entry.read_text())
    return dst


def apply(m: Mutation, folder: Path) -> None:
    path = folder / m.file
    text = path.read_text()
    starts = [mm.start() for mm in re.finditer(re.escape(m.old), text)]
    assert len(starts) > m.nth, f"{m.id}: {m.old!r} occurs {len(starts)} times in {m.file}"
    at = starts[m.nth]
    path.write_text(text[:at] + m.new + text[at + len(m.old):])


@pytest.mark.parametrize("m", MUTATIONS, ids=lambda m: m.id)
def test_mutation_is_one_token(m):
    """Each mutation replaces exactly one token, and its anchor exists in the real source."""
    a, b = [t.text for t in tokenize(m.old)], [t.text for t in tokenize(m.new)]
    assert len(a) == len(b) and sum(x != y for x, y in zip(a, b)) == 1, (a, b)
    assert loader.source_dir().joinpath(m.file).read_text().count(m.old) > m.nth


def test_every_family_and_kind_is_covered():
    """At least a shift, an index and an offset (or loop bound) per kernel family."""
    for family in ("gemv.cu", "gemm.cu", "decode.cu"):
        kinds = {m.what for m in MUTATIONS if m.file == family}
        assert {"shift", "index"} <= kinds and kinds & {"offset", "loop bound"}, (family, kinds)
    assert {m.file for m in MUTATIONS} == {"gemv.cu", "gemm.cu", "decode.cu", "a8_weights.cu", "common.cuh"}


@pytest.mark.parametrize("family", ["skinny", "gemm", "decode", "a8"])
def test_unmutated_sources_pass(tmp_path, family):
    """The same checks on an unedited copy of the sources pass (the mutants fail for their edit only)."""
    check(family, emulate.KernelSource(copy_sources(tmp_path / "cuda")))


@pytest.mark.parametrize("m", MUTATIONS, ids=lambda m: m.id)
def test_mutation_turns_the_models_red(tmp_path, m):
    folder = copy_sources(tmp_path / "cuda")
    apply(m, folder)
    source = emulate.KernelSource(folder)
    with pytest.raises(AssertionError):  # a wrong value (assert_array_equal) or a ModelError run-time check
        try:
            check(m.check, source)
        except CSourceError as exc:  # the translator refusing the mutant would be no evidence: fail loudly
            pytest.fail(f"{m.id}: the mutant was not translated: {exc}")


# ------------------------------------------------------------------------- the translator
STRICT_CASES = {
    "while loop": "while (i < 4) { ++i; }",
    "inline asm": 'asm("mov.u32 %0, 0;" : "=r"(i));',
    "address-of": "const int* p = &i;",
    "unknown intrinsic": "i = __popc(i);",
    "arrow": "i = p->x;",
    "preprocessor conditional": "#if 1\n  i = 1;\n#endif",
    "undeclared name": "i = j + 1;",
}


@pytest.mark.parametrize("what", sorted(STRICT_CASES))
def test_translator_refuses_what_it_does_not_model(what):
    """Outside its C++ subset the translator raises CSourceError instead of guessing a meaning."""
    text = f"__device__ void f(int i) {{\n  {STRICT_CASES[what]}\n}}\n"
    mod = csource.Module(csource.Program("strict.cu", text), emulate.runtime([]))
    with pytest.raises(CSourceError):
        mod.function("f")


def test_translation_keeps_c_semantics():
    """Integer division truncates, int wraps, ?: is lazy, nested scopes shadow, continue runs the for step."""
    text = """
__device__ int f(int a, int b) {
  const int q = a / b;
  const int r = a % b;
  int w = 2147483647;
  w = w + 1;
  int s = 0;
  for (int i = 0; i < 5; ++i) {
    if (i == 2) continue;
    const int q = 100;
    s += q + i;
  }
  const int lazy = b == 0 ? 0 : a / b;
  return q * 1000000 + r * 10000 + (w == -2147483647 - 1) * 1000 + s + lazy * 0;
}
"""
    mod = csource.Module(csource.Program("sem.cu", text), emulate.runtime([]))
    fn = mod.function("f")[0]
    th = csource.ThreadCtx((0, 0, 0), (0, 0, 0), (32, 1, 1), (1, 1, 1), None, 1000)
    # -7 / 2 == -3 and -7 % 2 == -1 in C (Python: -4, 1); the loop adds 100 + i for i in {0, 1, 3, 4}
    assert fn(th, -7, 2) == -3 * 1000000 + -1 * 10000 + 1000 + 408
