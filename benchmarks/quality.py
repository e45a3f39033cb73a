"""Mini FLUX quality: exact scores of the full-precision model and of its ternary versions, per category.

    python benchmarks/quality.py                       # FP + absmean PTQ (3 granularities) + shipped ternary
    python benchmarks/quality.py --ternary qat=runs/calib/qat.safetensors ...   # add calibrated files

Every model generates the same images (the project's 72 evaluation prompts, never used in training or
calibration, x 4 seeds) with the same sampler, and the exact evaluator judges each one. Writes
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
from torch_ternary.mini import CATEGORIES, evaluation_prompts, load_pipeline, score  # noqa: E402
from torch_ternary.mini.pipeline import TERNARY_WEIGHTS_FILE, weights_dir  # noqa: E402

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
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--ternary", action="append", default=[], metavar="NAME=FILE",
                        help="a calibrated ternary transformer file to score (repeatable)")
    parser.add_argument("--no-ptq", action="store_true", help="skip the absmean PTQ variants")
    parser.add_argument("--out", default="quality_mini", help="results name (benchmarks/results/<out>.json)")
    args = parser.parse_args()
    torch.manual_seed(0)
    prompts = evaluation_prompts()
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
    if shipped.exists():
        files.append(("shipped_ternary", str(shipped)))
    for name, path in files:
        t = copy.deepcopy(fp.transformer)
        load_quantized(t, path)
        meta_path = Path(path).with_suffix(".json")
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        info = {"method": meta.get("method", "file"), "file": str(path),
                "calibration_seconds": meta.get("total_seconds"), "calibration": {k: meta[k] for k in meta if k != "losses"}}
        models[name] = (with_transformer(fp, t), info)

    results, images = {}, {}
    for name, (pipe, info) in models.items():
        t0 = time.time()
        res = score(pipe, prompts, args.seeds, return_images=True)
        images[name] = res.pop("images")
        res["score_seconds"] = round(time.time() - t0, 1)
        res["relative_to_fp"] = res["overall"] / max(results.get("fp", res)["overall"], 1e-9)
        results[name] = {**info, **res}
        cats = " ".join(f"{c}={res[c]:.2f}" for c in CATEGORIES)
        print(f"{name:18s} overall {res['overall']:.3f} ({100 * res['relative_to_fp']:.1f} % of FP)  {cats}", flush=True)

    ternary_names = [n for n in results if n != "fp"]
    if ternary_names:
        best = max(ternary_names, key=lambda n: results[n]["overall"])
        rows = [prompts.index(p) for c in CATEGORIES for p in evaluation_prompts(c)[:2]]
        png = grid(images["fp"], images[best], prompts, len(args.seeds), rows)
        from PIL import Image

        RESULTS.mkdir(parents=True, exist_ok=True)
        Image.fromarray(png).resize((png.shape[1] * 3, png.shape[0] * 3), Image.NEAREST).save(RESULTS / f"{args.out}_grid.png")
        (RESULTS / f"{args.out}_grid.txt").write_text(
            f"left: fp, right: {best}; seeds {args.seeds}; rows:\n" + "\n".join(prompts[r] for r in rows) + "\n")
    path = write_results(args.out, {"prompts": len(prompts), "seeds": args.seeds, "categories": list(CATEGORIES),
                                    "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
