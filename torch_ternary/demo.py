"""The README's main job: Mini FLUX, full precision beside ternary, on this CPU in well under 2 minutes.

``python -m torch_ternary.demo`` loads the trained Mini FLUX pipeline (``torch_ternary.mini``), makes a
plain absmean-ternary copy with ``quantize_(transformer, TernaryConfig())`` and loads the shipped
calibrated ternary transformer, generates the same prompts and seeds with all three, saves the
side-by-side PNG (``--out``: one column block per model, labelled with its name; one row per prompt,
labelled with the prompt), judges every image with the exact evaluator, and prints storage, time and
scores. It ends with the size report of the full FLUX.1-dev transformer (from its config, on ``meta``).
``--flux`` then runs the random-weight FLUX-architecture check of :mod:`torch_ternary.demo_flux`;
``--no-compile`` (only with ``--flux``) skips that check's ``torch.compile`` run.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np

from . import TernaryConfig, quantize_
from .demo_flux import flux_dev_size_report
from .quantization.activations import set_activations
from .quantization.report import model_nbytes

#: One prompt per category, all from the held-out evaluation set (never seen in training).
DEMO_PROMPTS = (
    "a triangle", "a circle and a square", "three green circles",
    "a yellow square", "a red circle to the left of a blue square", "a blue triangle and a yellow square",
)
DEMO_SEEDS = (0, 1)


#: Grid geometry (before the upscale): a 32-pixel image in a 34-pixel cell, 10 pixels between model blocks.
CELL, GAP, SCALE = 34, 10, 4
#: Grid background and label colours (RGB).
BACKGROUND, LABEL_COLOR = (40, 40, 40), (235, 235, 235)
#: Label font size in pixels of the upscaled PNG, and the padding around a label.
FONT_SIZE, PAD = 16, 6


def side_by_side(columns: list[np.ndarray], n_prompts: int, n_seeds: int) -> np.ndarray:
    """uint8 image: one row per prompt; per model a block of its ``n_seeds`` images, blocks left to right."""
    block = n_seeds * CELL
    out = np.full((n_prompts * CELL, len(columns) * (block + GAP) - GAP, 3), BACKGROUND, np.uint8)
    for c, images in enumerate(columns):
        for i in range(n_prompts * n_seeds):
            p, s = divmod(i, n_seeds)
            x = c * (block + GAP) + s * CELL + 1
            out[p * CELL + 1:p * CELL + 33, x:x + 32] = images[i]
    return out


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: a scalable font
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def label_margins(names: list[str], prompts: list[str]) -> tuple[int, int]:
    """``(top, left)``: pixels above the upscaled grid for the model names, left of it for the prompts."""
    from PIL import Image, ImageDraw

    font, draw = _font(FONT_SIZE), ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_h = max(draw.textbbox((0, 0), t, font=font)[3] for t in [*names, *prompts])
    text_w = max(draw.textbbox((0, 0), t, font=font)[2] for t in prompts)
    return text_h + 2 * PAD, text_w + 2 * PAD


def labelled_png(columns: list[np.ndarray], names: list[str], prompts: list[str], n_seeds: int):
    """The demo's PIL image: :func:`side_by_side` upscaled ``SCALE`` times (nearest), each model's
    block labelled with its name above it, each row with its prompt on the left."""
    from PIL import Image, ImageDraw

    if len(names) != len(columns):
        raise ValueError(f"{len(columns)} image columns but {len(names)} names")
    grid = side_by_side(columns, len(prompts), n_seeds)
    top, left = label_margins(names, prompts)
    h, w = grid.shape[0] * SCALE, grid.shape[1] * SCALE
    image = Image.new("RGB", (left + w, top + h), BACKGROUND)
    image.paste(Image.fromarray(grid).resize((w, h), Image.NEAREST), (left, top))
    draw, font = ImageDraw.Draw(image), _font(FONT_SIZE)
    block = n_seeds * CELL * SCALE
    for c, name in enumerate(names):
        x0 = left + c * (block + GAP * SCALE)
        text_w = draw.textbbox((0, 0), name, font=font)[2]
        draw.text((x0 + max((block - text_w) // 2, 0), PAD), name, fill=LABEL_COLOR, font=font)
    for r, prompt in enumerate(prompts):
        bbox = draw.textbbox((0, 0), prompt, font=font)
        y = top + r * CELL * SCALE + (CELL * SCALE - bbox[3]) // 2
        draw.text((left - PAD - bbox[2], y), prompt, fill=LABEL_COLOR, font=font)
    return image


#: Default ``--out`` of the demo (``make demo`` writes it in the current folder).
DEFAULT_OUT = "demo_mini_flux.png"


def build_parser() -> argparse.ArgumentParser:
    """The demo's options; ``torch-ternary demo`` exposes the same ones (``tests/test_cli.py`` checks)."""
    parser = argparse.ArgumentParser(prog="python -m torch_ternary.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"side-by-side PNG (default {DEFAULT_OUT})")
    parser.add_argument("--flux", action="store_true", help="then run the random-weight FLUX-architecture check")
    parser.add_argument("--no-compile", action="store_true", help="with --flux: skip that check's torch.compile run")
    return parser


def check_args(args: argparse.Namespace) -> str | None:
    """Why the options cannot run (one line), or None. Checked before anything is loaded."""
    if args.no_compile and not args.flux:
        return "--no-compile only applies with --flux (it skips the FLUX-architecture check's torch.compile run)"
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        return f"--out {out}: the demo writes a PNG: name it *.png"
    if not out.parent.is_dir():
        return f"--out {out}: no such folder: {out.parent}"
    return None


def run_mini_flux(out: str | Path) -> None:
    """The Mini FLUX comparison and the FLUX.1-dev size report: prints the transcript, writes ``out``."""
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

    columns, seconds = [], {}

    def run(name, pipe):
        t1 = time.perf_counter()
        images = generate(pipe, list(DEMO_PROMPTS), list(DEMO_SEEDS))
        seconds[name] = time.perf_counter() - t1
        ok = [evaluate(img, DEMO_PROMPTS[i // len(DEMO_SEEDS)]) for i, img in enumerate(images)]
        print(f"  {name:24s} {sum(ok):2d}/{len(ok)} correct  ({seconds[name]:.1f} s)")
        return images

    print(f"{len(DEMO_PROMPTS)} held-out prompts x {len(DEMO_SEEDS)} seeds, 20 Euler steps, CFG:")
    for name, pipe in models.items():
        columns.append(run(name, pipe))
    if "ternary calibrated" in models:  # the same model with 8-bit activations (timed and scored, not drawn)
        set_activations(models["ternary calibrated"].transformer, "int8")
        run("ternary calibrated int8", models["ternary calibrated"])
    fp_s = seconds.pop("full precision")
    print("speed vs full precision, this run: " + ", ".join(f"{name.strip()} {fp_s / s:.2f}x" for name, s in seconds.items()))
    labelled_png(columns, list(models), list(DEMO_PROMPTS), len(DEMO_SEEDS)).save(out)
    print(f"wrote {out} (columns: {', '.join(models)}; rows: {'; '.join(DEMO_PROMPTS)})")
    print("full scores on all 72 evaluation prompts x 4 seeds: docs/mini.md, docs/calibration.md")

    sizes = flux_dev_size_report()
    gb = 1e9
    print("\n== FLUX.1-dev transformer, ternarized with the FLUX preset (shapes on meta)")
    print(f"bf16 {sizes['bytes_before'] / gb:.2f} GB -> in memory (2-bit) {sizes['bytes_after'] / gb:.2f} GB: "
          f"{sizes['ratio']:.2f}x; file base-3 {sizes['file_bytes_base3'] / gb:.2f} GB: {sizes['file_ratio_base3']:.2f}x")
    print(f"total demo time {time.perf_counter() - t0:.1f} s")


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = check_args(args)
    if problem:
        parser.error(problem)  # usage error: exit status 2
    run_mini_flux(args.out)
    if args.flux:
        from . import demo_flux

        print()
        demo_flux.main(["--no-compile"] if args.no_compile else [])


if __name__ == "__main__":
    main()
