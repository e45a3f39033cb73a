"""One FLUX.1-dev denoising step on this CPU: ternary (A16 and A8) on the full transformer vs bf16 on cut configs.

The full FLUX.1-dev transformer (its real config, random weights) is built on ``meta`` and materialized one
block at a time in bf16, each block ternarized right away (``benchmarks/flux.py``'s ``build_variant``), so
the bf16 model is never held: the peak RSS is the ternary model plus one block. One step = one forward of
the transformer at 512 x 512 (1024 image tokens) with 512 text tokens, batch 1 (FLUX.1-dev is guidance
distilled: one forward a step), bf16 activations, after a short warm-up forward.

bf16 cannot run here at full size (23.8 GB of weights on a 24 GiB machine), so it is measured on cut
configs with the same blocks: FLUX.1-dev has 19 double and 38 single blocks, i.e. 19 "units" of one double
and two single blocks; the cut configs hold 2 and 4 units, and the full-model bf16 step is extrapolated as
``t(2) + (t(4) - t(2)) / 2 * 17`` (per-unit time from the difference, the rest - embedders, norm_out - from
the intercept).

Two measurements: peak RSS needs one process a variant (``ru_maxrss``), so every variant and cut runs once
in its own process (:func:`one`; their single-step times are recorded but drift too much between processes
on a shared VM to be compared); the times that are compared come from one process holding the full ternary
model and both bf16 cuts at once (~12 GB), samples interleaved, ``--rounds`` rounds (:func:`interleaved`).

    python benchmarks/flux_cpu_step.py                 # everything (~25 min on 2 cores)
    python benchmarks/flux_cpu_step.py --interleaved-only   # redo the compared times only (~10 min)
    python benchmarks/flux_cpu_step.py --interleaved-only --compiled   # eager and compiled (~15 min)
    python benchmarks/flux_cpu_step.py --one ternary_int8 --units 19   # one variant, this process

Results: ``benchmarks/results/flux_cpu_step.json``. Never run it while anything else runs on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RESULTS, write_results

FULL_UNITS = 19
VARIANTS = ("ternary_16bit", "ternary_int8", "bf16")
HEIGHT = WIDTH = 512
TEXT_TOKENS = 512


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def config_for(units: int) -> dict:
    from torch_ternary.testing.flux import FLUX_DEV_CONFIG

    return dict(FLUX_DEV_CONFIG, num_layers=units, num_single_layers=2 * units)


def step_inputs(config: dict) -> tuple[dict, dict]:
    """The step's inputs (512² = 32 x 32 latent tokens after the VAE's /8 and 2x2 patches, 512 text tokens, bf16)
    and a small warm-up input."""
    from torch_ternary.testing.flux import example_inputs

    latent = HEIGHT // 16
    return (example_inputs(config, height=latent, width=latent, text_tokens=TEXT_TOKENS, dtype=torch.bfloat16),
            example_inputs(config, height=4, width=4, text_tokens=16, dtype=torch.bfloat16))


def one(variant: str, units: int, steps: int) -> dict:
    """Build ``variant`` with ``units`` units and time ``steps`` steps (this process)."""
    from flux import build_variant

    from torch_ternary.kernels import cpu

    torch.manual_seed(0)
    config = config_for(units)
    model, info = build_variant(variant, config, "cpu", torch.bfloat16)
    weight_bytes = sum(_stored_bytes(t) for t in model.state_dict().values())
    rss_built = peak_rss_bytes()
    inputs, small = step_inputs(config)
    times = []
    with torch.inference_mode():
        t0 = time.perf_counter()
        model(**small)  # warm-up: kernel build / load, oneDNN primitives
        warm = time.perf_counter() - t0
        before = cpu.STATS.copy()
        for _ in range(steps):
            t0 = time.perf_counter()
            out = model(**inputs)[0]
            times.append(time.perf_counter() - t0)
    paths = {k: v - before.get(k, 0) for k, v in cpu.STATS.items() if v != before.get(k, 0)}
    assert torch.isfinite(out.float()).all(), "non-finite output"
    return {"variant": variant, "units": units, "double_blocks": units, "single_blocks": 2 * units,
            "image_tokens": inputs["hidden_states"].shape[1], "text_tokens": TEXT_TOKENS, "step_s": min(times), "steps_s": times,
            "warmup_s": warm, "build_s": info["build_s"], "converted_linears": info["converted_linears"],
            "weight_bytes": weight_bytes, "peak_rss_after_build_bytes": rss_built, "peak_rss_bytes": peak_rss_bytes(),
            "kernel_paths": paths, "threads": torch.get_num_threads()}


def _stored_bytes(t: torch.Tensor) -> int:
    """Bytes a state-dict entry holds: packed codes plus scales for a ternary weight."""
    from torch_ternary import TernaryTensor

    if isinstance(t, TernaryTensor):
        return t.packed.numel() + t.scale.numel() * 4
    return t.numel() * t.element_size()


def interleaved(rounds: int, compiled: bool = False) -> dict:
    """Step times in one process, samples interleaved: the full ternary model (int8, then the same codes with
    16-bit activations via ``set_activations``) and bf16 on the 2- and 4-unit cut configs, ``rounds`` rounds
    with the order rotating, after one full-size warm-up step of each; medians. With ``compiled``, the same
    again after regional ``torch.compile`` of every block of all three models (``flux.compile_blocks_``, what
    users are told to run), and each mode's ratios plus the best of both modes for each side.
    (Peak RSS needs one process a variant: :func:`one`.)"""
    from flux import build_variant, compile_blocks_

    torch.manual_seed(0)
    models = {"ternary_full": build_variant("ternary_int8", config_for(FULL_UNITS), "cpu", torch.bfloat16)[0],
              "bf16_2": build_variant("bf16", config_for(2), "cpu", torch.bfloat16)[0],
              "bf16_4": build_variant("bf16", config_for(4), "cpu", torch.bfloat16)[0]}
    inputs, small = step_inputs(config_for(FULL_UNITS))
    out = _rounds(models, inputs, small, rounds)
    if compiled:
        for model in models.values():
            compile_blocks_(model)
        out["compiled"] = _rounds(models, inputs, small, rounds)
        best = {k: min(out["median_s"][k], out["compiled"]["median_s"][k]) for k in out["median_s"]}
        bf16_full = best["bf16_2"] + (best["bf16_4"] - best["bf16_2"]) / 2 * (FULL_UNITS - 2)
        out["best_of_modes"] = {"median_s": best, "bf16_full_extrapolated_s": bf16_full,
                                "ternary_int8_speedup_vs_bf16_full": bf16_full / best["ternary_int8"],
                                "ternary_16bit_speedup_vs_bf16_full": bf16_full / best["ternary_16bit"]}
    out["peak_rss_bytes"] = peak_rss_bytes()
    return out


def _rounds(models: dict, inputs: dict, small: dict, rounds: int) -> dict:
    """One mode of :func:`interleaved`: warm-ups (small input, then one full-size step of every run, which also
    compiles compiled blocks), then the timed rounds."""
    from torch_ternary.quantization.activations import set_activations

    runs = {"ternary_int8": ("ternary_full", "int8"), "ternary_16bit": ("ternary_full", "16bit"),
            "bf16_2": ("bf16_2", None), "bf16_4": ("bf16_4", None)}
    times: dict[str, list[float]] = {k: [] for k in runs}
    names = list(runs)

    def model_for(name: str):
        key, act = runs[name]
        if act is not None:
            set_activations(models[key], act)
        return models[key]

    with torch.inference_mode():
        for name in names:
            model = model_for(name)
            model(**small)
            model(**inputs)
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                model = model_for(name)
                t0 = time.perf_counter()
                model(**inputs)
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    per_unit = (med["bf16_4"] - med["bf16_2"]) / 2
    bf16_full = med["bf16_2"] + per_unit * (FULL_UNITS - 2)
    return {"rounds": rounds, "seconds": times, "median_s": med, "bf16_per_unit_s": per_unit,
            "bf16_full_extrapolated_s": bf16_full,
            "ternary_int8_speedup_vs_bf16_full": bf16_full / med["ternary_int8"],
            "ternary_16bit_speedup_vs_bf16_full": bf16_full / med["ternary_16bit"]}


def spawn(variant: str, units: int, steps: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--one", variant, "--units", str(units), "--steps", str(steps)]
    print("running", " ".join(cmd[2:]), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    if proc.returncode != 0:
        return {"variant": variant, "units": units, "error": proc.stderr[-2000:]}
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"  {variant} units={units}: {row['step_s']:.1f} s/step, peak RSS {row['peak_rss_bytes'] / 1e9:.2f} GB", flush=True)
    return row


def summarize(rows: list[dict]) -> dict:
    by = {(r["variant"], r["units"]): r for r in rows if "step_s" in r}
    out: dict = {}
    for v in VARIANTS:
        if (v, 2) in by and (v, 4) in by:
            per_unit = (by[(v, 4)]["step_s"] - by[(v, 2)]["step_s"]) / 2
            out[f"{v}_per_unit_s"] = per_unit
            out[f"{v}_full_extrapolated_s"] = by[(v, 2)]["step_s"] + per_unit * (FULL_UNITS - 2)
    for v in ("ternary_16bit", "ternary_int8"):
        if (v, FULL_UNITS) in by:
            full = by[(v, FULL_UNITS)]
            out[f"{v}_full_s"] = full["step_s"]
            out[f"{v}_full_peak_rss_bytes"] = full["peak_rss_bytes"]
            if "bf16_full_extrapolated_s" in out:
                out[f"{v}_speedup_vs_bf16_full"] = out["bf16_full_extrapolated_s"] / full["step_s"]
        if f"{v}_per_unit_s" in out and "bf16_per_unit_s" in out:
            out[f"{v}_speedup_vs_bf16_per_unit"] = out["bf16_per_unit_s"] / out[f"{v}_per_unit_s"]
    if ("bf16", 2) in by and ("bf16", 4) in by:
        a, b = by[("bf16", 2)], by[("bf16", 4)]
        per_unit_w = (b["weight_bytes"] - a["weight_bytes"]) / 2
        full_w = a["weight_bytes"] + per_unit_w * (FULL_UNITS - 2)
        overhead = b["peak_rss_bytes"] - b["weight_bytes"]  # activations, runtime, libraries at this size
        out["bf16_full_weight_bytes"] = full_w
        out["bf16_full_rss_needed_bytes"] = full_w + overhead
        out["machine_ram_bytes"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--one", choices=VARIANTS, help="run one variant in this process and print its JSON row")
    p.add_argument("--units", type=int, default=FULL_UNITS)
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--no-full", action="store_true", help="cut configs only")
    p.add_argument("--rounds", type=int, default=3, help="rounds of the interleaved timing")
    p.add_argument("--compiled", action="store_true",
                   help="the interleaved timing also after regional torch.compile of every block")
    p.add_argument("--interleaved-only", action="store_true",
                   help="only the interleaved timing, added to the existing results file")
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one, args.units, args.steps)))
        return 0
    if args.interleaved_only:
        path = RESULTS / "flux_cpu_step.json"
        payload = json.loads(path.read_text())
        payload.pop("environment", None)
        payload["interleaved"] = interleaved(args.rounds, args.compiled)
        print(json.dumps(payload["interleaved"], indent=2))
        print(f"wrote {write_results('flux_cpu_step', payload)}")
        return 0
    rows = []
    for v in args.variants:
        for units in (2, 4):
            rows.append(spawn(v, units, args.steps))
        if v != "bf16" and not args.no_full:
            rows.append(spawn(v, FULL_UNITS, args.steps))
    payload = {"benchmark": "flux_cpu_step", "config": "FLUX.1-dev (random weights)", "height": HEIGHT,
               "width": WIDTH, "text_tokens": TEXT_TOKENS, "rows": rows, "summary": summarize(rows),
               "interleaved": interleaved(args.rounds, args.compiled)}
    path = write_results("flux_cpu_step", payload)
    print(json.dumps(payload["summary"], indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
