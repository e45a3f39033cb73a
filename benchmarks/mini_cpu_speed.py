"""Mini FLUX sampling on the CPU: full precision (float32) vs the shipped ternary model with 16-bit and int8
activations, time and score in one run.

Time: the same batch of prompts (``--prompts`` evaluation prompts x ``--seeds``, 20 Euler steps with CFG, as
the demo), each model in turn, ``--repeats`` rounds with the order rotating; per model the median seconds.
Score: the exact evaluator on the same images (the price of int8 activations in quality, here on
``--prompts x --seeds`` images; ``benchmarks/quality.py`` is the full 72-prompt evaluation).

    python benchmarks/mini_cpu_speed.py            # 24 prompts x 2 seeds, 3 rounds (~3 min on 2 cores)

Results: ``benchmarks/results/mini_cpu_speed.json``. Never run it while anything else runs on the machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import write_results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=24, help="the first N evaluation prompts, every 3rd (all categories)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    from torch_ternary.kernels import cpu
    from torch_ternary.mini import load_pipeline
    from torch_ternary.mini.grammar import category_of, evaluation_prompts
    from torch_ternary.mini.scoring import score
    from torch_ternary.quantization.activations import set_activations

    prompts = evaluation_prompts()[::3][: args.prompts]
    models = {"full_precision_fp32": load_pipeline(), "ternary_16bit": load_pipeline(quantized=True),
              "ternary_int8": load_pipeline(quantized=True)}
    set_activations(models["ternary_int8"].transformer, "int8")
    seconds: dict[str, list[float]] = {k: [] for k in models}
    scores = {}
    before = cpu.STATS.copy()
    names = list(models)
    with torch.inference_mode():
        for name, pipe in models.items():  # scores (and a warm-up)
            scores[name] = score(pipe, prompts, args.seeds)
        for r in range(args.repeats):
            for name in names[r % len(names):] + names[:r % len(names)]:
                t0 = time.perf_counter()
                score(models[name], prompts, args.seeds)
                seconds[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in seconds.items()}
    rows = {k: {"median_s": med[k], "seconds": seconds[k], "speedup_vs_fp32": med["full_precision_fp32"] / med[k],
                "score": scores[k]} for k in models}
    payload = {"benchmark": "mini_cpu_speed", "images_per_round": len(prompts) * len(args.seeds),
               "categories": sorted({category_of(q) for q in prompts}), "threads": torch.get_num_threads(),
               "kernel_paths": {k: v - before.get(k, 0) for k, v in cpu.STATS.items() if v != before.get(k, 0)},
               "models": rows}
    path = write_results("mini_cpu_speed", payload)
    for k, r in rows.items():
        print(f"{k:22s} {r['median_s']:.2f} s ({r['speedup_vs_fp32']:.2f}x fp32), score {r['score']['overall']:.3f} "
              f"on {r['score']['n']} images")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
