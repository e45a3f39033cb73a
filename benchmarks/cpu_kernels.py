"""CPU kernels vs torch on every FLUX.1-dev block-linear shape: time per call, weights streamed from DRAM.

For each shape ``K -> N`` (the 494 block linears of FLUX.1-dev have six) and each M of ``--ms``, in one
process, one run:

* ``torch_fp32`` / ``torch_bf16``: ``F.linear`` on dense weights (oneDNN);
* ``torch_int_mm``: ``torch._int_mm`` on int8 activations and pre-expanded int8 weights (oneDNN's own int8
  GEMM: the ceiling of an int8 kernel that keeps a dense int8 copy; activation quantization not counted);
* ``ternary_a16``: ``torch_ternary::linear`` on bf16 activations (what ``activations="16bit"`` runs);
* ``ternary_a16_fp32``: the same with float32 activations (Mini FLUX runs in float32);
* ``ternary_a8``: ``torch_ternary::linear_a8`` with int8 (``activations="int8"``; quantization included);
* ``peer_ggml_tq2_0``: llama.cpp's ggml ``TQ2_0`` ternary type (``ggml_mul_mat``, float32 activations that
  ggml quantizes to Q8_K), built here from its public source by :mod:`peer_ggml` (our harness
  ``benchmarks/peers/ggml_tq2_0.c``); its own process, timed by the harness, right after ours. When the
  build fails its log is written to ``benchmarks/results/cpu_kernels_peer_build.log``.

Each side cycles over distinct copies of its weights, ``max(128 MiB, 2 x L3)`` of them, call after call, so
its weights come from DRAM as in a real model. Samples of the sides are interleaved (the order rotates every
repeat) and each side's figure is the median; ratios are taken against ``torch_bf16`` of the same run.
Everything runs under ``torch.inference_mode()``, op-call overheads included (ours: ~13 us a call).

    python benchmarks/cpu_kernels.py                       # the full sweep (~15 min on 2 cores)
    python benchmarks/cpu_kernels.py --quick               # 3 shapes x M in {1, 1024}
    python benchmarks/cpu_kernels.py --plot benchmarks/results/cpu_kernels.json

Results: ``benchmarks/results/cpu_kernels.json`` (+ ``.png`` when matplotlib is installed). Never time this
while anything else runs on the machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RESULTS, pyplot, save_figure, write_results

#: (K, N) of FLUX.1-dev's block linears: q/k/v/out and the single blocks' q/k/v, the MLP up and down
#: projections, the double blocks' AdaLN (6 x 3072), the single blocks' AdaLN (3 x 3072) and proj_out
FLUX_SHAPES = ((3072, 3072), (3072, 12288), (12288, 3072), (3072, 18432), (3072, 9216), (15360, 3072))
MS = (1, 4, 16, 256, 1024, 4096)
SIDES = ("torch_fp32", "torch_bf16", "torch_int_mm", "ternary_a16", "ternary_a16_fp32", "ternary_a8")
MIN_CYCLE_BYTES = 128 << 20
#: a timing sample runs calls for at least this long
SAMPLE_S = 0.03


def l3_bytes() -> int:
    """The last-level cache size the OS reports (sysfs), 32 MiB if unknown."""
    best = 0
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            size = (index / "size").read_text().strip()
            level = int((index / "level").read_text())
        except OSError:
            continue
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1], 1)
        value = int(size.rstrip("KMG")) * mult
        if level >= 3:
            best = max(best, value)
    return best or 32 << 20


def cycle_bytes() -> int:
    return max(MIN_CYCLE_BYTES, 2 * l3_bytes())


def _copies(t: torch.Tensor, total: int) -> list[torch.Tensor]:
    """Distinct copies of ``t`` (same values, own memory) adding up to at least ``total`` bytes (2 at least)."""
    per = t.numel() * t.element_size()
    return [t.clone() for _ in range(max(2, math.ceil(total / per)))]


class Side:
    """One contender: its weights (distinct copies cycled call after call) and its call."""

    def __init__(self, name: str, make_call, weights: list):
        self.name, self.make_call, self.weights, self.i = name, make_call, weights, 0
        self.samples: list[float] = []

    def call(self):
        w = self.weights[self.i]
        self.i = (self.i + 1) % len(self.weights)
        return self.make_call(w)


def build_sides(k: int, n: int, m: int, total: int, sides) -> dict[str, Side]:
    from torch_ternary.format import packing

    g = torch.Generator().manual_seed(k * 7 + n)
    codes = torch.randint(-1, 2, (n, k), generator=g, dtype=torch.int8)
    scale = torch.rand(n, 1, generator=g) * 0.02 + 0.01
    dense32 = codes.float() * scale
    x32 = torch.randn(m, k, generator=g)
    xbf = x32.bfloat16()
    out: dict[str, Side] = {}
    if "torch_fp32" in sides:
        out["torch_fp32"] = Side("torch_fp32", lambda w: F.linear(x32, w), _copies(dense32, total))
    if "torch_bf16" in sides:
        out["torch_bf16"] = Side("torch_bf16", lambda w: F.linear(xbf, w), _copies(dense32.bfloat16(), total))
    if "torch_int_mm" in sides:
        xi8 = torch.randint(-127, 128, (m, k), generator=g, dtype=torch.int8)
        out["torch_int_mm"] = Side("torch_int_mm", lambda w: torch._int_mm(xi8, w.T), _copies(codes, total))
    packed = packing.pack_codes(codes)
    tern = [(p, scale.clone()) for p in _copies(packed, total)]
    if "ternary_a16" in sides:
        out["ternary_a16"] = Side("ternary_a16", lambda w: torch.ops.torch_ternary.linear(xbf, w[0], w[1], None, k, k),
                                  tern)
    if "ternary_a16_fp32" in sides:
        out["ternary_a16_fp32"] = Side(
            "ternary_a16_fp32", lambda w: torch.ops.torch_ternary.linear(x32, w[0], w[1], None, k, k), tern)
    if "ternary_a8" in sides:
        out["ternary_a8"] = Side(
            "ternary_a8", lambda w: torch.ops.torch_ternary.linear_a8(xbf, w[0], w[1], None, k, k, "int8"), tern)
    return out


def time_sample(side: Side, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        side.call()
    return (time.perf_counter() - t0) / calls


def measure(sides: dict[str, Side], repeats: int) -> dict[str, dict]:
    """Interleaved samples (the side order rotates each repeat); per side the median time per call."""
    calls = {}
    for name, side in sides.items():  # warm-up (kernel build, oneDNN primitive caches) and calls a sample
        side.call()
        t = time_sample(side, 1)
        calls[name] = max(1, min(len(side.weights) * 4, int(SAMPLE_S / max(t, 1e-6))))
    names = list(sides)
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            sides[name].samples.append(time_sample(sides[name], calls[name]))
    return {name: {"median_ms": 1e3 * statistics.median(s.samples), "min_ms": 1e3 * min(s.samples),
                   "samples": len(s.samples), "calls_per_sample": calls[name], "layers": len(s.weights)}
            for name, s in sides.items()}


def repeats_for(m: int, base: int) -> int:
    return base if m <= 256 else max(3, base // 2) if m <= 1024 else 3


def peer_setup(args) -> tuple[object, dict]:
    """Build the ggml TQ2_0 harness (once, cached under --peer-dir); (binary or None, info for the JSON)."""
    import peer_ggml

    log = RESULTS / "cpu_kernels_peer_build.log"
    src = peer_ggml.find_source()
    if src is None:
        log.write_text("no llama.cpp source found ($TORCH_TERNARY_PEER_SRC, /tmp/peer/llama.cpp, /work/.mirror)\n")
        return None, {"status": "no source", "log": str(log.relative_to(RESULTS.parent.parent))}
    binary = peer_ggml.build(src, Path(args.peer_dir), log)
    if binary is None:
        return None, {"status": "build failed", "log": str(log.relative_to(RESULTS.parent.parent))}
    log.unlink(missing_ok=True)  # committed only when the build fails
    return binary, {"status": "built", "source": str(src), "commit": peer_ggml.source_commit(src)}


def run(args) -> dict:
    torch.manual_seed(0)
    from torch_ternary.kernels import cpu

    cpu.install()
    isas = cpu.available_isas()
    total = cycle_bytes()
    binary, peer_info = peer_setup(args) if not args.no_peer else (None, {"status": "skipped (--no-peer)"})
    rows = []
    for k, n in args.shapes:
        for m in args.ms:
            sides = build_sides(k, n, m, total, args.sides)
            stats_before = cpu.STATS.copy()
            with torch.inference_mode():  # as inference runs (no autograd bookkeeping on any side)
                res = measure(sides, repeats_for(m, args.repeats))
            paths = {key.split(":")[0] + ":" + key.split(":")[1]: v - stats_before.get(key, 0)
                     for key, v in cpu.STATS.items() if v != stats_before.get(key, 0)}
            del sides
            if binary is not None:
                import peer_ggml

                per_layer = k * n * 66 // 256
                layers = max(2, math.ceil(total / per_layer)) if m <= 16 else 2
                try:
                    p = peer_ggml.run(binary, k, n, m, layers, repeats_for(m, args.repeats) if m <= 256 else 2,
                                      torch.get_num_threads())
                    res["peer_ggml_tq2_0"] = {"median_ms": p["median_ms_per_call"], "min_ms": p["min_ms_per_call"],
                                              "layers": layers, "rel_err": p.get("rel_err")}
                except Exception as exc:  # a peer failure never loses our figures
                    res["peer_ggml_tq2_0"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            base = res["torch_bf16"]["median_ms"] if "torch_bf16" in res else None
            for r in res.values():
                if base and "median_ms" in r:
                    r["speedup_vs_bf16"] = base / r["median_ms"]
            if "torch_fp32" in res:
                for r in res.values():
                    if "median_ms" in r:
                        r["speedup_vs_fp32"] = res["torch_fp32"]["median_ms"] / r["median_ms"]
            row = {"K": k, "N": n, "M": m, "sides": res, "kernel_paths": paths}
            rows.append(row)
            print(f"K={k:5d} N={n:5d} M={m:4d}  " + "  ".join(
                f"{name}={r['median_ms']:.3g}ms" + (f"({r['speedup_vs_bf16']:.2f}x)" if "speedup_vs_bf16" in r else "")
                for name, r in res.items() if "median_ms" in r), flush=True)
    return {"benchmark": "cpu_kernels", "threads": torch.get_num_threads(), "isas": list(isas),
            "cycle_bytes_per_side": total, "l3_bytes": l3_bytes(), "peer": peer_info,
            "settings": {"repeats": args.repeats, "sample_s": SAMPLE_S, "granularity": "per_channel", "bias": False,
                         "activations_16bit": "bfloat16 (ternary_a16, torch_bf16), float32 (ternary_a16_fp32, torch_fp32)"},
            "results": rows}


def summary_table(payload: dict) -> str:
    """Markdown: per shape and M, ms of torch bf16 and each side's speed-up against it."""
    sides = [s for s in ("torch_fp32", "torch_int_mm", "ternary_a16", "ternary_a16_fp32", "ternary_a8", "peer_ggml_tq2_0")
             if any(s in r["sides"] for r in payload["results"])]
    lines = ["| K -> N | M | torch bf16 (ms) | " + " | ".join(sides) + " |",
             "|---|---|---|" + "---|" * len(sides)]
    for r in payload["results"]:
        cells = []
        for s in sides:
            v = r["sides"].get(s, {})
            cells.append(f"{v['speedup_vs_bf16']:.2f}x" if "speedup_vs_bf16" in v else "-")
        lines.append(f"| {r['K']} -> {r['N']} | {r['M']} | {r['sides']['torch_bf16']['median_ms']:.3g} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(payload: dict, path: Path) -> Path | None:
    """Speed-up vs torch bf16 over M, one panel per shape; None when matplotlib is missing."""
    plt = pyplot()
    if plt is None:
        return None
    rows = payload["results"]
    shapes = sorted({(r["K"], r["N"]) for r in rows}, key=lambda s: FLUX_SHAPES.index(s) if s in FLUX_SHAPES else 99)
    fig, axes = plt.subplots(1, len(shapes), figsize=(3.6 * len(shapes), 3.8), squeeze=False)
    names = sorted({s for r in rows for s in r["sides"]})
    for col, (k, n) in enumerate(shapes):
        ax = axes[0, col]
        sub = sorted((r for r in rows if (r["K"], r["N"]) == (k, n)), key=lambda r: r["M"])
        for name in names:
            pts = [(r["M"], r["sides"][name]["speedup_vs_bf16"]) for r in sub if "speedup_vs_bf16" in r["sides"].get(name, {})]
            if pts:
                style = dict(lw=2.5, color="black") if name == "torch_bf16" else {}
                ax.plot(*zip(*pts), marker="o", label=name, **style)
        ax.set(title=f"{k} -> {n}", xscale="log", yscale="log", xlabel="M (tokens)")
        ax.axhline(1.0, color="gray", lw=1)
    axes[0, 0].set_ylabel("speed-up vs torch bf16")
    axes[0, 0].legend(fontsize=7)
    env = payload.get("environment", {})
    return save_figure(fig, path, f"torch-ternary CPU kernels, {env.get('device')} (torch {env.get('torch')}, "
                                  f"{env.get('date')})", dpi=100)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plot", metavar="JSON", help="only plot (and print the table of) an existing results file")
    p.add_argument("--quick", action="store_true", help="3 shapes, M in {1, 1024}, 5 repeats")
    p.add_argument("--ms", type=int, nargs="+", default=list(MS))
    p.add_argument("--shapes", type=lambda s: tuple(int(v) for v in s.split("x")), nargs="+", default=list(FLUX_SHAPES),
                   metavar="KxN")
    p.add_argument("--sides", nargs="+", default=list(SIDES), choices=SIDES)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--no-peer", action="store_true", help="skip the ggml TQ2_0 peer")
    p.add_argument("--peer-dir", default="/tmp/peer/build", help="where the peer is built (kept between runs)")
    p.add_argument("--out", default="cpu_kernels", help="results name under benchmarks/results/")
    args = p.parse_args(argv)
    if args.plot:
        payload = json.loads(Path(args.plot).read_text())
        print(summary_table(payload))
        plot(payload, Path(args.plot).with_suffix(".png"))
        return 0
    if args.quick:
        args.shapes, args.ms, args.repeats = [(3072, 3072), (3072, 18432), (12288, 3072)], [1, 1024], 5
    payload = run(args)
    path = write_results(args.out, payload)
    print(f"wrote {path}")
    print(summary_table(json.loads(path.read_text())))
    plot(json.loads(path.read_text()), path.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
