"""Tune Mini FLUX's sampler (guidance scale, steps, schedule shift) on validation captions — never on the evaluation prompts.

    python benchmarks/mini_sampling.py --weights runs/main          # a run folder with mini_flux.safetensors/json

Validation captions are drawn from the training-caption sampler (compositional evaluation prompts
and their meanings never appear) with seed 123, one image each with seeds 1000+. The best setting is
written into the weights folder's ``mini_flux.json`` ("sampling") when ``--write`` is given, and the
sweep to ``benchmarks/results/mini_sampling.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import mini_validation_captions, write_results  # noqa: E402

from torch_ternary.format.atomic import atomic_write  # noqa: E402
from torch_ternary.mini import load_pipeline, score  # noqa: E402
from torch_ternary.mini.pipeline import META_FILE, set_sampling  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True, help="folder with mini_flux.safetensors and mini_flux.json")
    parser.add_argument("--prompts", type=int, default=96)
    parser.add_argument("--cfg", type=float, nargs="+", default=[2.0, 3.0, 4.0, 6.0])
    parser.add_argument("--steps", type=int, nargs="+", default=[20])
    parser.add_argument("--shift", type=float, nargs="+", default=[1.0, 2.0])
    parser.add_argument("--write", action="store_true", help="store the best setting in the folder's mini_flux.json")
    args = parser.parse_args()
    prompts = mini_validation_captions(args.prompts)
    rows = []
    pipe = load_pipeline(path=args.weights)
    for cfg, steps, shift in itertools.product(args.cfg, args.steps, args.shift):
        set_sampling(pipe, {"true_cfg_scale": cfg, "num_inference_steps": steps, "scheduler_shift": shift})
        res = score(pipe, prompts, [1000])
        rows.append({"true_cfg_scale": cfg, "num_inference_steps": steps, "scheduler_shift": shift, **res})
        print(json.dumps(rows[-1]), flush=True)
    best = max(rows, key=lambda r: r["overall"])
    write_results("mini_sampling", {"validation_prompts": len(prompts), "rows": rows, "best": best})
    if args.write:
        meta_path = Path(args.weights) / META_FILE
        meta = json.loads(meta_path.read_text())
        meta["sampling"] = {k: best[k] for k in ("true_cfg_scale", "num_inference_steps", "scheduler_shift")}
        atomic_write(meta_path, lambda tmp: tmp.write_text(json.dumps(meta, indent=2)))
        print(f"wrote sampling {meta['sampling']} to {meta_path}")


if __name__ == "__main__":
    main()
