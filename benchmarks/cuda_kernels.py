"""Ternary CUDA kernels vs cuBLAS bf16 on the FLUX.1-dev linear shapes.

For each shape (K -> N) and each M, times (CUDA events, warm-up, median of repeats):

* ``cublas_bf16``: ``F.linear`` with the dense bf16 weight (the baseline);
* ``skinny`` (M <= 64), in each launch configuration (rows_per_warp x warps): cuda/gemv.cu;
* ``decode_cublas``: decode kernel into a bf16 workspace + ``F.linear``; ``decode_only``: the decode alone;
* ``fused_mma``: cuda/gemm.cu;
* ``dispatched``: ``torch.ops.torch_ternary.linear`` as the dispatch table routes it.

Each is timed inside a CUDA graph (``median_us`` = ``graph_us``: GPU time, no Python overhead)
and eagerly (``eager_us``: includes the host overhead of the CuPy launch path).

Weights are "cold": each timed call uses the next of several weight copies whose total exceeds
twice the L2 cache, so packed weights do not stay in L2 between calls as they would not in a
model (``--warm-l2`` turns this off). Per-tensor-shape per-channel scales, bias on, bf16
activations. Every path's output is checked against cuBLAS (``max_rel_err`` in the JSON).

    python benchmarks/cuda_kernels.py                    # all shapes, M in {1, 16, 512, 4096, 4608}
    python benchmarks/cuda_kernels.py --reduced          # benchmarks/run_gpu.sh's default: 2 shapes, 4 M, fewer repeats
    python benchmarks/cuda_kernels.py --quick            # two shapes, fewer repeats
    python benchmarks/cuda_kernels.py --plot results.json  # plot an existing results file (no GPU needed)
    python benchmarks/cuda_kernels.py --reduced --plan   # no GPU: print what a run would do (JSON), run nothing

Results: ``benchmarks/results/kernels_<gpu>.json`` (+ ``.png`` when matplotlib is installed), or
under ``--out-dir``. Without a GPU it exits with a message.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RESULTS, environment, pyplot, save_figure, write_results  # noqa: E402

#: (K, N) of the FLUX.1-dev transformer's linears: attention / MLP in / MLP out / single-block
#: fused out / AdaLN (single blocks, 27 % of the parameters at M = 1) / AdaLN (single: 3x).
SHAPES = [(3072, 3072), (3072, 12288), (12288, 3072), (15360, 3072), (3072, 18432), (3072, 9216)]
MS = [1, 16, 512, 4096, 4608]
SKINNY_MAX_M = 64
SKINNY_CONFIGS = [(1, 0), (2, 0), (1, 4), (1, 8), (2, 8)]  # (rows_per_warp, warps); warps 0 = auto
#: ``--reduced`` (benchmarks/run_gpu.sh's default sweep): the attention and MLP-in shapes, the four M
#: that decide the dispatch table (GEMV, the skinny limit, mid, FLUX's 4608 tokens), fewer repeats.
REDUCED = {"shapes": SHAPES[:2], "ms": [1, 16, 512, 4608], "warmup": 5, "repeats": 10}


def planned_paths(m: int, first_m: int) -> list[tuple[str, dict]]:
    """The (path, config) rows ``bench_shape`` times at this M, in order (``--plan`` counts these)."""
    rows = [("cublas_bf16", {})]
    if m <= SKINNY_MAX_M:
        rows += [("skinny", {"rows_per_warp": r, "warps": w}) for r, w in SKINNY_CONFIGS]
    rows.append(("decode_cublas", {}))
    if m == first_m:
        rows.append(("decode_only", {}))
    rows += [("fused_mma", {}), ("dispatched", {})]
    return rows


def inner_calls(m: int) -> int:
    """Calls per timed repeat (and per captured CUDA graph)."""
    return 50 if m <= SKINNY_MAX_M else 3


def plan(args) -> dict:
    """What ``run(args)`` will do, counted without a GPU: shapes, timed rows, kernel calls, compilations."""
    shapes, ms = resolve(args)
    rows = [(k, n, m, path, cfg) for k, n in shapes for m in ms for path, cfg in planned_paths(m, ms[0])]
    # (the row loop of bench_shape iterates over planned_paths too; time_call's loops are counted below)

    def gpu_calls(m):  # executed: the checked call, warm-up, eager repeats, the graph's warm replay and repeats
        return 1 + args.warmup + args.repeats * inner_calls(m) + (1 + args.repeats) * inner_calls(m)

    def host_launches(m):  # issued from Python: all but the graph replays, plus the capture itself
        return 1 + args.warmup + args.repeats * inner_calls(m) + inner_calls(m)

    return {
        "benchmark": "kernels",
        "shapes": [list(s) for s in shapes],
        "ms": ms,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "timed_rows": len(rows),
        "rows_per_path": {p: sum(r[3] == p for r in rows) for p in dict.fromkeys(r[3] for r in rows)},
        "rows": [{"K": k, "N": n, "M": m, "path": path, "gpu_calls": gpu_calls(m), "host_launches": host_launches(m)}
                 for k, n, m, path, _ in rows],
        "kernel_calls": sum(gpu_calls(m) for _, _, m, _, _ in rows),
        "cold_weight_copies_max": 64,
        "torch_compile_compilations": 0,
        "nvrtc_sources": ["decode.cu", "gemv.cu", "gemm.cu"],
        "outputs": ["kernels_<gpu>.json", "kernels_<gpu>.png"],
    }


def resolve(args) -> tuple[list[tuple[int, int]], list[int]]:
    """The (K, N) shapes and the M values of a run."""
    shapes = REDUCED["shapes"] if args.reduced else (SHAPES[:2] if args.quick else SHAPES)
    if args.shapes:
        shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes]
    ms = args.ms or (REDUCED["ms"] if args.reduced else MS)
    return [tuple(s) for s in shapes], list(ms)


def _events_us(run_once, repeats: int, inner: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run_once()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000.0 / inner)
    return times


def time_call(fn, n_args: int, warmup: int, repeats: int, inner: int) -> dict:
    """Per-call time of ``fn(i)`` (i cycles over the weight copies), two ways.

    * ``graph_us``: ``inner`` calls captured in one CUDA graph and replayed: GPU time only, no
      Python / launch overhead (what a CUDA-graphed or compiled model sees);
    * ``eager_us``: ``inner`` calls issued from Python between two CUDA events: includes the
      wrapper's host overhead when the GPU outruns Python.

    Returns medians and minima over ``repeats``; ``graph_us`` is None if capture failed.
    """
    for i in range(warmup):
        fn(i % n_args)
    torch.cuda.synchronize()

    def eager():
        for i in range(inner):
            fn(i % n_args)

    eager_t = _events_us(eager, repeats, inner)
    out = {"eager_us": statistics.median(eager_t), "eager_min_us": min(eager_t), "graph_us": None, "graph_min_us": None}
    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            eager()
        graph.replay()
        torch.cuda.synchronize()
        graph_t = _events_us(graph.replay, repeats, inner)
        out.update(graph_us=statistics.median(graph_t), graph_min_us=min(graph_t))
        del graph
    except Exception as exc:  # noqa: BLE001  (report, keep the eager numbers)
        out["graph_error"] = f"{type(exc).__name__}: {exc}"[:300]
        torch.cuda.synchronize()
    return out


def _copies(nbytes: int, l2: int, warm: bool) -> int:
    return 1 if warm else max(1, min(64, -(-2 * l2 // max(nbytes, 1))))


def bench_shape(k: int, n: int, ms: list[int], args, l2: int, gen: torch.Generator) -> list[dict]:
    """Every path for one (K, N) at every M; returns the result rows."""
    import torch_ternary.kernels as K
    from torch_ternary import TernaryTensor
    from torch_ternary.kernels import dispatch

    dev = torch.device("cuda")
    rows: list[dict] = []
    dense = (torch.randn(n, k, generator=gen) * 0.02).to(torch.bfloat16)
    t_cpu = TernaryTensor.from_float(dense, "per_channel")
    w_bf16 = t_cpu.dequantize(torch.bfloat16).to(dev)  # the dense weight cuBLAS multiplies (same values)
    t = t_cpu.to(dev)
    bias = (torch.randn(n, generator=gen) * 0.1).to(dev, torch.bfloat16)
    n_dense = _copies(w_bf16.numel() * 2, l2, args.warm_l2)
    n_packed = _copies(t.packed.numel(), l2, args.warm_l2)
    dense_copies = [w_bf16] + [w_bf16.clone() for _ in range(n_dense - 1)]
    packed_copies = [t.packed] + [t.packed.clone() for _ in range(n_packed - 1)]
    scale, dense_bytes, packed_bytes = t.scale, w_bf16.numel() * 2, t.packed.numel()
    print(f"K={k} N={n}: {n_dense} dense / {n_packed} packed weight copies", flush=True)
    for m in ms:
        x = (torch.randn(m, k, generator=gen)).to(dev, torch.bfloat16)
        ref = F.linear(x, w_bf16, bias).float()
        flops = 2.0 * m * n * k

        def record(path, config, fn, n_args, weight_bytes, m=m, x=x, ref=ref, flops=flops):
            out = fn(0)
            err = None
            if out is not None:
                err = ((out.float() - ref).abs().max() / ref.abs().max().clamp_min(1e-6)).item()
            inner = inner_calls(m)
            timing = time_call(fn, n_args, args.warmup, args.repeats, inner)
            med = timing["graph_us"] if timing["graph_us"] is not None else timing["eager_us"]
            rows.append({"K": k, "N": n, "M": m, "path": path, "config": config, "median_us": med, **timing,
                         "tflops": flops / med / 1e6, "weight_gbps": weight_bytes / med / 1e3, "max_rel_err": err})
            graph = timing["graph_us"] if timing["graph_us"] is not None else float("nan")
            print(f"  M={m:5d} {path:14s} {json.dumps(config):34s} graph {graph:9.2f} us"
                  f"  eager {timing['eager_us']:9.2f} us  err={err}", flush=True)

        def decode_only(i):
            K.dequantize_cuda(packed_copies[i], scale, k, k, torch.bfloat16)  # timed; output not checked

        for path, cfg in planned_paths(m, ms[0]):  # the rows --plan counts
            if path == "cublas_bf16":
                record(path, cfg, lambda i, x=x: F.linear(x, dense_copies[i], bias), n_dense, dense_bytes)
            elif path == "skinny":
                r, w = cfg["rows_per_warp"], cfg["warps"]
                record(path, cfg, lambda i, x=x, r=r, w=w: K.skinny_linear(x, packed_copies[i], scale, bias, k, k,
                                                                           rows_per_warp=r, warps=w),
                       n_packed, packed_bytes)
            elif path == "decode_cublas":
                record(path, cfg, lambda i, x=x: K.decode_cublas_linear(x, packed_copies[i], scale, bias, k, k),
                       n_packed, packed_bytes)
            elif path == "decode_only":
                record(path, cfg, decode_only, n_packed, packed_bytes)
            elif path == "fused_mma":
                record(path, cfg, lambda i, x=x: K.fused_linear(x, packed_copies[i], scale, bias, k, k),
                       n_packed, packed_bytes)
            else:
                choice = dispatch.choose(m, n, k, torch.cuda.get_device_capability(dev))
                record(path, {"table": choice.path},
                       lambda i, x=x: torch.ops.torch_ternary.linear(x, packed_copies[i], scale, bias, k, k),
                       n_packed, packed_bytes)
    return rows


def run(args) -> dict:
    import torch_ternary.kernels as K

    if not K.registered():
        raise SystemExit("torch-ternary CUDA kernels are not registered (is CuPy installed?)")
    props = torch.cuda.get_device_properties(torch.device("cuda"))
    l2 = int(getattr(props, "L2_cache_size", 50 << 20))
    shapes, ms = resolve(args)
    rows = []
    gen = torch.Generator(device="cpu").manual_seed(0)
    for k, n in shapes:
        rows += bench_shape(k, n, ms, args, l2, gen)
        torch.cuda.empty_cache()
    base = {(r["K"], r["N"], r["M"]): r["median_us"] for r in rows if r["path"] == "cublas_bf16"}
    for row in rows:
        row["speedup_vs_cublas"] = base[(row["K"], row["N"], row["M"])] / row["median_us"]
    return {
        "benchmark": "kernels",
        "gpu": props.name,
        "l2_bytes": l2,
        "cold_weights": not args.warm_l2,
        "settings": {"warmup": args.warmup, "repeats": args.repeats, "granularity": "per_channel", "bias": True,
                     "activations": "bfloat16", "sweep": "reduced" if args.reduced else ("quick" if args.quick else
                                                                                         "full")},
        "results": rows,
    }


def plot(payload: dict, path: Path) -> Path | None:
    """Time per call and speed-up vs cuBLAS, one panel per shape; None when matplotlib is missing."""
    plt = pyplot()
    if plt is None:
        return None
    rows = payload["results"]
    shapes = sorted({(r["K"], r["N"]) for r in rows})
    fig, axes = plt.subplots(2, len(shapes), figsize=(4 * len(shapes), 7), squeeze=False)
    for col, (k, n) in enumerate(shapes):
        sub = [r for r in rows if (r["K"], r["N"]) == (k, n) and r["path"] != "decode_only"]
        series: dict[str, list] = {}
        for r in sub:
            cfg = r["config"]
            label = r["path"] + (f" r{cfg['rows_per_warp']}w{cfg['warps']}" if r["path"] == "skinny" else "")
            series.setdefault(label, []).append(r)
        for label, pts in sorted(series.items()):
            pts.sort(key=lambda r: r["M"])
            style = dict(lw=2.5, color="black") if label == "cublas_bf16" else {}
            axes[0, col].plot([p["M"] for p in pts], [p["median_us"] for p in pts], marker="o", label=label, **style)
            axes[1, col].plot([p["M"] for p in pts], [p["speedup_vs_cublas"] for p in pts], marker="o", label=label,
                              **style)
        axes[0, col].set(title=f"K={k} -> N={n}", xscale="log", yscale="log", ylabel="median time (us)")
        axes[1, col].set(xscale="log", yscale="log", xlabel="M (tokens)", ylabel="speed-up vs cuBLAS bf16")
        axes[1, col].axhline(1.0, color="gray", lw=1)
    axes[0, 0].legend(fontsize=7)
    env = payload.get("environment", {})
    return save_figure(fig, path, f"torch-ternary kernels on {env.get('device', payload.get('gpu'))} "
                                  f"(torch {env.get('torch')}, CUDA {env.get('cuda')}, {env.get('date')})")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plot", metavar="JSON", help="only plot an existing results file")
    p.add_argument("--quick", action="store_true", help="two shapes, 10 repeats")
    p.add_argument("--reduced", action="store_true",
                   help=f"run_gpu.sh's default sweep: shapes {REDUCED['shapes']}, M {REDUCED['ms']}, "
                        f"{REDUCED['warmup']} warm-up, {REDUCED['repeats']} repeats")
    p.add_argument("--plan", action="store_true", help="print what the run would do (JSON) and exit; no GPU needed")
    p.add_argument("--shapes", nargs="*", help="KxN shapes, e.g. 3072x18432")
    p.add_argument("--ms", nargs="*", type=int, help=f"M values (default {MS})")
    p.add_argument("--warmup", type=int, default=None, help="default 10 (--reduced: 5)")
    p.add_argument("--repeats", type=int, default=None, help="default 30 (--quick, --reduced: 10)")
    p.add_argument("--warm-l2", action="store_true", help="reuse one weight copy (L2-resident weights)")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.warmup is None:
        args.warmup = REDUCED["warmup"] if args.reduced else 10
    if args.repeats is None:
        args.repeats = REDUCED["repeats"] if (args.reduced or args.quick) else 30
    if args.plot:
        path = Path(args.plot)
        plot(json.loads(path.read_text()), path.with_suffix(".png"))
        return 0
    if args.plan:
        print(json.dumps(plan(args)))
        return 0
    if not torch.cuda.is_available():
        print("benchmarks/cuda_kernels.py needs a CUDA GPU (none found); see benchmarks/run_gpu.sh", file=sys.stderr)
        return 2
    payload = run(args)
    slug = re.sub(r"[^A-Za-z0-9]+", "_", payload["gpu"]).strip("_").lower()
    out = write_results(f"kernels_{slug}", payload)  # benchmarks/results/, stamped with the environment
    if args.out_dir.resolve() != RESULTS.resolve():
        args.out_dir.mkdir(parents=True, exist_ok=True)
        copy = args.out_dir / out.name
        copy.write_text(out.read_text())
        out = copy
    print(f"wrote {out}")
    plot({"environment": environment(), **payload}, out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
