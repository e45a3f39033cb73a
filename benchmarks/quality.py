"""Mini FLUX quality: exact scores of the full-precision model and of its ternary versions, per category.

    python benchmarks/quality.py                       # FP + absmean PTQ (3 granularities) + shipped ternary
    python benchmarks/quality.py --ternary qat=runs/calib/qat.safetensors ...   # add calibrated files
    python benchmarks/quality.py --split validation --no-ptq --no-shipped --ternary a=... --ternary b=...
                                                       # choose between recipes (validation captions, seeds 100-111)
    python benchmarks/quality.py --no-ptq --ternary b=... --vs shipped_ternary    # b against the shipped model

Every model generates the same images with the same sampler, and the exact evaluator judges each one:
``--split evaluation`` (default) the project's 72 evaluation prompts, never used in training or
calibration, x seeds 0-11; ``--split validation`` the validation captions of
:mod:`torch_ternary.mini.splits` (disjoint in meaning from calibration and evaluation) x seeds 100-111.
Each ternary row carries its ratio to FP with a 95 % interval bootstrapped over distinct prompts and
seeds (:mod:`torch_ternary.mini.intervals`), overall and per category; ``--int8`` adds every ternary
model again with ``activations="int8"``. Writes
``benchmarks/results/<out>.json`` (the scores), ``<out>_grid.png`` (FP beside the best ternary model, two
prompts of each category, same seeds) and ``<out>_grid.txt`` (which model is on the right, and the grid's
prompts); ``--out`` defaults to ``quality_mini``: ``benchmarks/results/quality_mini.json``,
``benchmarks/results/quality_mini_grid.png``, ``benchmarks/results/quality_mini_grid.txt``. A ternary
file's ``<file>.json`` (written by ``torch-ternary calibrate``) supplies its calibration method and time.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, write_results  # noqa: E402

from torch_ternary import TernaryConfig, load_quantized, quantize_  # noqa: E402
from torch_ternary.mini import CATEGORIES, category_of, evaluation_prompts, load_pipeline, score  # noqa: E402
from torch_ternary.mini.intervals import category_ratio_intervals, hits_grid, ratio_interval  # noqa: E402
from torch_ternary.mini.pipeline import TERNARY_WEIGHTS_FILE, weights_dir  # noqa: E402
from torch_ternary.mini.splits import VALIDATION_SEEDS, validation_captions  # noqa: E402
from torch_ternary.quantization.activations import set_activations  # noqa: E402

DEFAULT_SEEDS = {"evaluation": list(range(12)), "validation": list(VALIDATION_SEEDS[:12])}

PTQ = {
    "ptq_per_tensor": TernaryConfig(granularity="per_tensor"),
    "ptq_per_channel": TernaryConfig(granularity="per_channel"),
    "ptq_per_group64": TernaryConfig(granularity="per_group", group_size=64),
}


def with_transformer(pipe, transformer):
    """A shallow copy of ``pipe`` whose transformer is replaced (encoders shared)."""
    other = copy.copy(pipe)
    other.transformer = transformer
    return other


def grid(images_a: np.ndarray, images_b: np.ndarray, prompts: list[str], n_seeds: int, rows: list[int]) -> np.ndarray:
    """uint8 grid: one row per chosen prompt, its ``n_seeds`` images from A, a gap, the same from B."""
    cell, gap = 34, 12
    width = 2 * n_seeds * cell + gap
    out = np.full((len(rows) * cell, width, 3), 40, np.uint8)
    for r, p in enumerate(rows):
        for s in range(n_seeds):
            for side, imgs in enumerate((images_a, images_b)):
                x = side * (n_seeds * cell + gap) + s * cell + 1
                out[r * cell + 1:r * cell + 33, x:x + 32] = imgs[p * n_seeds + s]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", choices=sorted(DEFAULT_SEEDS), default="evaluation",
                        help="evaluation prompts (seeds 0-11) or validation captions (seeds 100-111)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="override the split's seeds")
    parser.add_argument("--no-shipped", action="store_true", help="skip the shipped ternary model")
    parser.add_argument("--int8", action="store_true", help="also score every ternary model with int8 activations")
    parser.add_argument("--ternary", action="append", default=[], metavar="NAME=FILE",
                        help="a calibrated ternary transformer file to score (repeatable)")
    parser.add_argument("--no-ptq", action="store_true", help="skip the absmean PTQ variants")
    parser.add_argument("--out", default="quality_mini", help="results name (benchmarks/results/<out>.json)")
    parser.add_argument("--vs", default=None, metavar="NAME",
                        help="also rate every other ternary model against model NAME (ratio, paired 95 %% interval) "
                             "and give NAME's score its own 95 %% interval")
    args = parser.parse_args()
    seeds = args.seeds or DEFAULT_SEEDS[args.split]
    if args.split == "validation" and any(s < 100 for s in seeds):
        parser.error("validation seeds are 100-199 (0-11 are the evaluation seeds)")
    torch.manual_seed(0)
    prompts = evaluation_prompts() if args.split == "evaluation" else validation_captions()
    fp = load_pipeline()
    models: dict[str, tuple] = {"fp": (fp, {"method": "full precision"})}
    if not args.no_ptq:
        for name, cfg in PTQ.items():
            t = copy.deepcopy(fp.transformer)
            t0 = time.time()
            quantize_(t, cfg)
            models[name] = (with_transformer(fp, t), {"method": "absmean PTQ", "granularity": cfg.granularity,
                                                     "calibration_seconds": round(time.time() - t0, 2)})
    files = [s.split("=", 1) for s in args.ternary]
    shipped = weights_dir() / TERNARY_WEIGHTS_FILE
    if shipped.exists() and not args.no_shipped:
        files.append(("shipped_ternary", str(shipped)))
    for name, path in files:
        t = copy.deepcopy(fp.transformer)
        load_quantized(t, path)
        meta_path = Path(path).with_suffix(".json")
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        info = {"method": meta.get("method", "file"), "file": str(path),
                "calibration_seconds": meta.get("total_seconds"), "calibration": {k: meta[k] for k in meta if k != "losses"}}
        models[name] = (with_transformer(fp, t), info)
        if args.int8:
            t8 = copy.deepcopy(t)
            set_activations(t8, "int8")
            models[f"{name}_int8"] = (with_transformer(fp, t8), {**info, "activations": "int8"})

    if args.vs is not None and (args.vs == "fp" or args.vs not in models):
        parser.error(f"--vs {args.vs}: not a ternary model of this run (have {', '.join(m for m in models if m != 'fp')})")
    results, images, hits = {}, {}, {}
    for name, (pipe, info) in models.items():
        t0 = time.time()
        res = score(pipe, prompts, seeds, return_images=True, return_hits=True)
        images[name] = res.pop("images")
        hits[name] = hits_grid(res.pop("hits"), len(prompts), len(seeds))
        res["hits"] = "".join("1" if h else "0" for h in hits[name].reshape(-1))  # prompt-major
        res["score_seconds"] = round(time.time() - t0, 1)
        res["relative_to_fp"] = res["overall"] / max(results.get("fp", res)["overall"], 1e-9)
        if name != "fp":
            res["interval"] = ratio_interval(hits["fp"], hits[name], prompts)
            res["category_intervals"] = category_ratio_intervals(hits["fp"], hits[name], prompts)
        results[name] = {**info, **res}
        cats = " ".join(f"{c}={res[c]:.2f}" for c in CATEGORIES if c in res)
        ci = res.get("interval")
        band = f" [{100 * ci['low']:.1f}, {100 * ci['high']:.1f}]" if ci else ""
        print(f"{name:18s} overall {res['overall']:.3f} ({100 * res['relative_to_fp']:.1f} % of FP{band})  {cats}", flush=True)

    if args.vs is not None:
        ref = hits[args.vs]
        results[args.vs]["score_interval"] = ratio_interval(np.ones_like(ref), ref, prompts)  # score(NAME) / 1
        for name in results:
            if name not in ("fp", args.vs):
                results[name][f"vs_{args.vs}"] = ci = ratio_interval(ref, hits[name], prompts)
                print(f"{name:18s} {100 * ci['ratio']:.1f} % of {args.vs} [{100 * ci['low']:.1f}, {100 * ci['high']:.1f}]")

    ternary_names = [n for n in results if n != "fp"]
    if ternary_names:
        best = max(ternary_names, key=lambda n: results[n]["overall"])
        rows = [i for c in CATEGORIES for i in [j for j, p in enumerate(prompts) if category_of(p) == c][:2]]
        png = grid(images["fp"], images[best], prompts, len(seeds), rows)
        from PIL import Image

        RESULTS.mkdir(parents=True, exist_ok=True)
        Image.fromarray(png).resize((png.shape[1] * 3, png.shape[0] * 3), Image.NEAREST).save(RESULTS / f"{args.out}_grid.png")
        (RESULTS / f"{args.out}_grid.txt").write_text(
            f"left: fp, right: {best}; seeds {seeds}; rows:\n" + "\n".join(prompts[r] for r in rows) + "\n")
    path = write_results(args.out, {"split": args.split, "prompts": len(prompts), "prompt_list": prompts, "seeds": seeds,
                                    "categories": [c for c in CATEGORIES if c in results["fp"]], "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
