"""The README's main job: Mini FLUX, full precision beside ternary, on this CPU in well under 2 minutes.

``python -m torch_ternary.demo`` loads the trained Mini FLUX pipeline (``torch_ternary.mini``), makes a
plain absmean-ternary copy with ``quantize_(transformer, TernaryConfig())`` and loads the shipped
calibrated ternary transformer, generates the same prompts and seeds with all three, saves the
side-by-side PNG, judges every image with the exact evaluator, and prints storage, time and scores.
It ends with the size report of the full FLUX.1-dev transformer (from its config, on ``meta``).
``--flux`` also runs the random-weight FLUX-architecture check of :mod:`torch_ternary.demo_flux`.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np

from . import TernaryConfig, quantize_
from .demo_flux import flux_dev_size_report
from .quantization.report import model_nbytes

#: One prompt per category, all from the held-out evaluation set (never seen in training).
DEMO_PROMPTS = (
    "a triangle", "a circle and a square", "three green circles",
    "a yellow square", "a red circle to the left of a blue square", "a blue triangle and a yellow square",
)
DEMO_SEEDS = (0, 1)


def side_by_side(columns: list[np.ndarray], n_prompts: int, n_seeds: int) -> np.ndarray:
    """uint8 image: one row per prompt; per model a block of its ``n_seeds`` images, blocks left to right."""
    cell, gap = 34, 10
    block = n_seeds * cell
    out = np.full((n_prompts * cell, len(columns) * (block + gap) - gap, 3), 40, np.uint8)
    for c, images in enumerate(columns):
        for i in range(n_prompts * n_seeds):
            p, s = divmod(i, n_seeds)
            x = c * (block + gap) + s * cell + 1
            out[p * cell + 1:p * cell + 33, x:x + 32] = images[i]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_mini_flux.png", help="side-by-side PNG (default demo_mini_flux.png)")
    parser.add_argument("--flux", action="store_true", help="also run the random-weight FLUX-architecture check")
    parser.add_argument("--no-compile", action="store_true", help="with --flux: skip its torch.compile run")
    args = parser.parse_args(argv)
    from PIL import Image

    from .mini import evaluate, generate, load_pipeline
    from .mini.pipeline import TERNARY_WEIGHTS_FILE, weights_dir

    t0 = time.perf_counter()
    fp = load_pipeline()
    ptq = copy.copy(fp)
    ptq.transformer = copy.deepcopy(fp.transformer)
    report = quantize_(ptq.transformer, TernaryConfig())
    models = {"full precision": fp, "ternary absmean (PTQ)": ptq}
    if (weights_dir() / TERNARY_WEIGHTS_FILE).exists():
        models["ternary calibrated"] = load_pipeline(quantized=True)
    print(f"== Mini FLUX (diffusers FluxPipeline, {sum(p.numel() for p in fp.transformer.parameters()) / 1e6:.1f} M-param "
          f"transformer), loaded and quantized in {time.perf_counter() - t0:.1f} s")
    fp_bytes = model_nbytes(fp.transformer)
    print(f"transformer: {fp_bytes / 1e6:.1f} MB float32 -> {report.bytes_after / 1e6:.2f} MB ternary "
          f"({report.ratio:.1f}x smaller; {len(report.layers_converted)} linears, "
          f"{100 * report.fraction_quantized:.1f} % of parameters ternary)")

    columns = []
    print(f"{len(DEMO_PROMPTS)} held-out prompts x {len(DEMO_SEEDS)} seeds, 20 Euler steps, CFG:")
    for name, pipe in models.items():
        t1 = time.perf_counter()
        images = generate(pipe, list(DEMO_PROMPTS), list(DEMO_SEEDS))
        seconds = time.perf_counter() - t1
        ok = [evaluate(img, DEMO_PROMPTS[i // len(DEMO_SEEDS)]) for i, img in enumerate(images)]
        columns.append(images)
        print(f"  {name:24s} {sum(ok):2d}/{len(ok)} correct  ({seconds:.1f} s)")
    png = side_by_side(columns, len(DEMO_PROMPTS), len(DEMO_SEEDS))
    Image.fromarray(png).resize((png.shape[1] * 4, png.shape[0] * 4), Image.NEAREST).save(args.out)
    print(f"wrote {Path(args.out).resolve()} (columns: {', '.join(models)}; rows: {'; '.join(DEMO_PROMPTS)})")
    print("full scores on all 72 evaluation prompts x 4 seeds: docs/mini.md, docs/calibration.md")

    sizes = flux_dev_size_report()
    gb = 1e9
    print(f"\n== FLUX.1-dev transformer, ternarized with the FLUX preset (shapes on meta)")
    print(f"bf16 {sizes['bytes_before'] / gb:.2f} GB -> in memory (2-bit) {sizes['bytes_after'] / gb:.2f} GB: "
          f"{sizes['ratio']:.2f}x; file base-3 {sizes['file_bytes_base3'] / gb:.2f} GB: {sizes['file_ratio_base3']:.2f}x")
    print(f"total demo time {time.perf_counter() - t0:.1f} s")
    if args.flux:
        from . import demo_flux

        print()
        demo_flux.main(["--no-compile"] if args.no_compile else [])


if __name__ == "__main__":
    main()
