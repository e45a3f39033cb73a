"""Two builds of the CPU kernels in one process: a git revision's C++ sources against the working tree's.

A change to ``torch_ternary/kernels/cpu/*.cpp`` is judged against the build it replaces, not against a sweep
from another day (this VM's host and its speed change between sessions). The revision's sources (and the
``AMX_CHUNK_ROWS`` / ``AMX_BF16_CHUNK_TOKENS`` of its ``__init__.py``) are built into a temporary folder as a
second extension module; both modules and torch bf16 (``F.linear``, the ratios' denominator) then run the same
product, each side cycling over distinct weight copies of ``max(128 MiB, 2 x L3)`` (from DRAM, as in a model),
samples interleaved, medians (``cpu_kernels.measure``). Sides:

* ``torch_bf16``: ``F.linear`` on dense bf16 weights; with ``--torch-fp32`` also ``torch_fp32`` (float32 weights
  and tokens: the dense product a CPU without bf16 arithmetic runs best);
* ``a8_base`` / ``a8_new``: ``torch_ternary::linear_a8``'s kernel (``ternary_linear``, int8 mode) on ``--isa``
  (default ``amx``; ``avx512``, ``avx2``, ``scalar``: the register-tile variants);
* with ``--a16``, ``a16_base`` / ``a16_new``: bf16 tokens in 16-bit mode: on ``amx`` the AMX-BF16 kernel
  (``ternary_linear_bf16_amx``), elsewhere two int8 limbs a token on the ``--isa`` variant;
* with ``--fp32``, ``fp32_base`` / ``fp32_new``: float32 tokens as three int8 limbs on the ``--isa`` variant (what
  ``torch_ternary::linear`` runs for float32 activations at large M), and ``fp32_reference``: the plain-torch
  reference op on them (dequantize in chunks, then torch's float32 GEMM), which the dispatcher takes instead of
  the limbs for float32 tokens from ``AVX2_FP32_REFERENCE_MIN_TOKENS`` on CPUs whose best ISA is ``avx2``.

Before timing, ``a8_base`` and ``a8_new`` must give bit-identical outputs (the int8 arithmetic is exact).

    python benchmarks/cpu_kernels_ab.py --base HEAD~1 --shapes 3072x3072 12288x3072 --ms 1024 4096

    python benchmarks/cpu_kernels_ab.py --isa avx2 --torch-fp32 --a16 --fp32 --ms 256 1024   # an AVX2-only CPU

Results: ``benchmarks/results/cpu_kernels_ab.json``. Needs a CPU that runs ``--isa``; never run it while anything
else runs on the machine.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results
from cpu_kernels import Side, _copies, cycle_bytes, measure

ROOT = Path(__file__).resolve().parents[1]
KERNELS = "torch_ternary/kernels/cpu"


def revision_file(rev: str, path: str) -> str:
    """The text of ``path`` at git revision ``rev`` of this repository."""
    return subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, check=True, capture_output=True,
                          text=True).stdout


def chunk_settings(init_text: str) -> dict[str, int]:
    """``AMX_CHUNK_ROWS`` and ``AMX_BF16_CHUNK_TOKENS`` as a ``kernels/cpu/__init__.py`` text sets them."""
    out = {}
    for name in ("AMX_CHUNK_ROWS", "AMX_BF16_CHUNK_TOKENS"):
        found = re.search(rf"^{name} = (\d+)$", init_text, re.M)
        if found is None:
            raise ValueError(f"{name} not found in that revision's {KERNELS}/__init__.py")
        out[name] = int(found.group(1))
    return out


def build_revision(rev: str, folder: Path):
    """The CPU extension built from revision ``rev``'s sources (the same flags as the package's build)."""
    from torch.utils.cpp_extension import load as cpp_load

    from torch_ternary.kernels import cpu

    names = [p.name for p in cpu._sources()] + [cpu.AMX_HEADER.name]
    texts = {name: revision_file(rev, f"{KERNELS}/{name}") for name in names}
    src = folder / "src"
    src.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        (src / name).write_text(text)
    key = hashlib.sha256("".join(texts.values()).encode()).hexdigest()[:16]
    build = folder / "build"
    build.mkdir(exist_ok=True)
    return cpp_load(name=f"torch_ternary_cpu_ab_{key}", sources=[str(src / p.name) for p in cpu._sources()],
                    extra_cflags=list(cpu.CFLAGS), extra_ldflags=list(cpu.LDFLAGS), build_directory=str(build),
                    verbose=False)


def sides_for(k: int, n: int, m: int, builds: dict, a16: bool, fp32: bool = False, isa: str = "amx",
              torch_fp32: bool = False) -> dict[str, Side]:
    """torch bf16 (and float32) and each build's kernels on ``isa`` on one product: random ternary codes,
    per-channel scales, bf16 (float32) x."""
    from torch_ternary.format import packing
    from torch_ternary.kernels import cpu

    g = torch.Generator().manual_seed(k * 7 + n)
    codes = torch.randint(-1, 2, (n, k), generator=g, dtype=torch.int8)
    scale = torch.rand(n, 1, generator=g) * 0.02 + 0.01
    x32 = torch.randn(m, k, generator=g)
    x = x32.bfloat16()
    total = cycle_bytes()
    sides = {"torch_bf16": Side("torch_bf16", lambda w: F.linear(x, w), _copies((codes.float() * scale).bfloat16(), total))}
    if torch_fp32:
        sides["torch_fp32"] = Side("torch_fp32", lambda w: F.linear(x32, w), _copies(codes.float() * scale, total))
    packed = _copies(packing.pack_codes(codes), total)
    for tag, (module, chunks) in builds.items():
        sides[f"a8_{tag}"] = Side(f"a8_{tag}", lambda p, mod=module, c=chunks: mod.ternary_linear(
            x, p, scale, None, k, 0, isa, 1, True, 0.0, c["AMX_CHUNK_ROWS"]), packed)
        if a16 and isa != "amx":
            sides[f"a16_{tag}"] = Side(f"a16_{tag}", lambda p, mod=module, c=chunks: mod.ternary_linear(
                x, p, scale, None, k, 0, isa, cpu.LIMBS[torch.bfloat16], False, cpu.RANGE_LIMIT[torch.bfloat16],
                c["AMX_CHUNK_ROWS"]), packed)
        elif a16:
            sides[f"a16_{tag}"] = Side(f"a16_{tag}", lambda p, mod=module, c=chunks: mod.ternary_linear_bf16_amx(
                x, p, scale, None, k, c["AMX_BF16_CHUNK_TOKENS"]), packed)
        if fp32:
            sides[f"fp32_{tag}"] = Side(f"fp32_{tag}", lambda p, mod=module, c=chunks: mod.ternary_linear(
                x32, p, scale, None, k, 0, isa, cpu.LIMBS[torch.float32], False, cpu.RANGE_LIMIT[torch.float32],
                c["AMX_CHUNK_ROWS"]), packed)
    if fp32:
        from torch_ternary.ops import backends

        ref = backends.reference("linear")
        sides["fp32_reference"] = Side("fp32_reference", lambda p: ref(x32, p, scale, None, k, k), packed)
    return sides


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default="HEAD", help="git revision of the baseline build (default HEAD)")
    p.add_argument("--shapes", type=lambda s: tuple(int(v) for v in s.split("x")), nargs="+",
                   default=[(3072, 3072), (12288, 3072), (3072, 18432)], help="K x N")
    p.add_argument("--ms", type=int, nargs="+", default=[1024, 4096])
    p.add_argument("--isa", choices=["amx", "avx512", "avx2", "scalar"], default="amx", help="the variant compared")
    p.add_argument("--torch-fp32", action="store_true", help="also torch's dense float32 product")
    p.add_argument("--a16", action="store_true", help="also bf16 tokens in 16-bit mode on both builds")
    p.add_argument("--fp32", action="store_true", help="also float32 tokens (int8 limbs) on both builds")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", default="cpu_kernels_ab", help="results name under benchmarks/results/")
    args = p.parse_args(argv)
    from torch_ternary.kernels import cpu

    if args.isa not in cpu.available_isas():
        raise SystemExit(f"this CPU (or process) does not run {args.isa}: the compared kernels cannot run here")
    with tempfile.TemporaryDirectory() as tmp:
        base = build_revision(args.base, Path(tmp))
        builds = {"base": (base, chunk_settings(revision_file(args.base, f"{KERNELS}/__init__.py"))),
                  "new": (cpu.load(), {"AMX_CHUNK_ROWS": cpu.AMX_CHUNK_ROWS,
                                       "AMX_BF16_CHUNK_TOKENS": cpu.AMX_BF16_CHUNK_TOKENS})}
        rows = []
        with torch.inference_mode():
            for k, n in args.shapes:
                for m in args.ms:
                    sides = sides_for(k, n, m, builds, args.a16, args.fp32, args.isa, args.torch_fp32)
                    if not torch.equal(sides["a8_base"].call(), sides["a8_new"].call()):
                        raise SystemExit(f"the two builds' int8 products differ at K={k} N={n} M={m}")
                    res = measure(sides, args.repeats)
                    bf16 = res["torch_bf16"]["median_ms"]
                    for r in res.values():
                        r["speedup_vs_bf16"] = bf16 / r["median_ms"]
                    rows.append({"K": k, "N": n, "M": m, "sides": res})
                    print(f"K={k:5d} N={n:5d} M={m:5d}  " + "  ".join(
                        f"{name}={r['median_ms']:.3g}ms({r['speedup_vs_bf16']:.2f}x)" for name, r in res.items()),
                        flush=True)
    payload = {"benchmark": "cpu_kernels_ab", "base": args.base, "isa": args.isa, "argv": sys.argv[1:] if argv is None else argv,
               "base_revision": subprocess.run(["git", "rev-parse", args.base], cwd=ROOT, capture_output=True,
                                               text=True).stdout.strip(),
               "chunks": {tag: c for tag, (_, c) in builds.items()}, "threads": torch.get_num_threads(),
               "cycle_bytes_per_side": cycle_bytes(), "results": rows}
    print(f"wrote {write_results(args.out, payload)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
