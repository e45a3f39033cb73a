"""Compare Mini FLUX full-precision weights folders (training recipes) at one sampler setting.

    python benchmarks/mini_compare.py --weights A=runs/a B=runs/b --out mini_training_shift

Each folder (``mini_flux.safetensors`` + ``mini_flux.json``) is scored twice with the exact
evaluator: on validation captions from the training-caption sampler (seed 123, one image each with
seed 1000; what recipe decisions are made on) and on the 72 evaluation prompts with seeds 0-3 (what
the issue's target is stated on). The sampler setting is the same for every folder (``--cfg``,
``--shift``), so the comparison is of the weights alone. Results go to
``benchmarks/results/<out>.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import mini_validation_captions, write_results  # noqa: E402

from torch_ternary.mini import evaluation_prompts, load_pipeline, score  # noqa: E402
from torch_ternary.mini.pipeline import set_sampling  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", nargs="+", required=True, help="NAME=FOLDER, one per model")
    parser.add_argument("--validation-prompts", type=int, default=192)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3], help="seeds for the evaluation prompts")
    parser.add_argument("--cfg", type=float, default=2.0)
    parser.add_argument("--shift", type=float, default=3.0)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", required=True, help="results name (benchmarks/results/<out>.json)")
    args = parser.parse_args()
    validation = mini_validation_captions(args.validation_prompts)
    sampling = {"true_cfg_scale": args.cfg, "num_inference_steps": args.steps, "scheduler_shift": args.shift}
    rows = []
    for spec in args.weights:
        name, sep, folder = spec.partition("=")
        if not sep:
            parser.error(f"--weights takes NAME=FOLDER, got {spec!r}")
        pipe = load_pipeline(path=folder)
        set_sampling(pipe, sampling)
        t0 = time.time()
        val = score(pipe, validation, [1000])
        ev = score(pipe, evaluation_prompts(), args.seeds)
        training = json.loads((Path(folder) / "mini_flux.json").read_text()).get("training", {})
        rows.append({"name": name, "folder": folder, "training": training, "validation": val, "evaluation": ev,
                     "seconds": round(time.time() - t0, 1)})
        print(json.dumps({"name": name, "validation": round(val["overall"], 3), "evaluation": round(ev["overall"], 3)}),
              flush=True)
    write_results(args.out, {"sampling": sampling, "validation_prompts": len(validation), "seeds": args.seeds,
                             "rows": rows})


if __name__ == "__main__":
    main()
