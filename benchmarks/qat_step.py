"""QAT calibration on the CPU: the ``torch_ternary::ste_weight`` op against the autograd formula it replaced.

    python benchmarks/qat_step.py [--threads 1] [--steps 20] [--batch 32]

Two measurements, in one process, the two variants interleaved call by call (same weights, same inputs):

* the QAT weight alone, forward and backward, on the linear shapes of Mini FLUX and of FLUX.1-dev (random
  latent weights, per-channel scales);
* whole QAT distillation steps of the shipped full-precision Mini FLUX made trainable as ``calibrate`` does
  (absmean start, latent weights from the FP model, AdamW as :func:`~torch_ternary.calibration.distill.distill`),
  batch ``--batch`` records of random inputs of the recorded shapes (64 image + 12 text tokens).

Writes ``qat_step.json`` in the results folder. Run it with nothing else on the cores.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from statistics import median

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402

from torch_ternary.calibration import DistillConfig, trainable  # noqa: E402
from torch_ternary.calibration.distill import _optimizer  # noqa: E402
from torch_ternary.quantization.absmean import expand_scale  # noqa: E402

#: (N, K) of the weights: Mini FLUX's commonest linears, then FLUX.1-dev's
SHAPES = {"mini 256x256": (256, 256), "mini 1536x256 (AdaLN)": (1536, 256), "mini 256x1280": (256, 1280),
          "flux 3072x3072": (3072, 3072), "flux 18432x3072 (AdaLN)": (18432, 3072), "flux 3072x15360": (3072, 15360)}


def autograd_formula(latent: torch.Tensor, scale: torch.Tensor, group_size: int) -> torch.Tensor:
    """What ``ste_ternary_weight`` computed before the op: ``s * round_ste(clip(W / s, -1, 1))`` through autograd."""
    s = expand_scale(scale, *latent.shape, group_size)
    return s * trainable.round_ste(torch.clamp(latent / s, -1.0, 1.0))


def op(latent: torch.Tensor, scale: torch.Tensor, group_size: int) -> torch.Tensor:
    return torch.ops.torch_ternary.ste_weight(latent, scale, group_size)


VARIANTS = {"autograd formula": autograd_formula, "ste_weight op": op}


def time_weight(shape: tuple[int, int], repeats: int) -> dict:
    n, k = shape
    g = torch.Generator().manual_seed(0)
    latent = (torch.randn(n, k, generator=g) * 0.02).requires_grad_()
    scale = (latent.detach().abs().mean(1, keepdim=True)).requires_grad_()
    grad = torch.randn(n, k, generator=g)
    times = {name: [] for name in VARIANTS}
    for _ in range(repeats):
        for name, fn in VARIANTS.items():
            t0 = time.perf_counter()
            w = fn(latent, scale, k)
            torch.autograd.grad(w, (latent, scale), grad)
            times[name].append(time.perf_counter() - t0)
            del w
    ms = {name: round(1e3 * median(t[1:]), 3) for name, t in times.items()}
    return {"shape": [n, k], "ms": ms, "speedup": round(ms["autograd formula"] / ms["ste_weight op"], 2)}


def mini_inputs(batch: int, seed: int) -> tuple[dict, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    kwargs = {"hidden_states": torch.randn(batch, 64, 48, generator=g), "timestep": torch.rand(batch, generator=g),
              "encoder_hidden_states": torch.randn(batch, 12, 128, generator=g),
              "pooled_projections": torch.randn(batch, 64, generator=g), "img_ids": torch.zeros(64, 3),
              "txt_ids": torch.zeros(12, 3), "return_dict": False}
    return kwargs, torch.randn(batch, 64, 48, generator=g)


def time_mini_steps(steps: int, batch: int) -> dict:
    from torch_ternary import TernaryConfig, quantize_
    from torch_ternary.mini import load_pipeline

    teacher = load_pipeline().transformer
    student = copy.deepcopy(teacher)
    quantize_(student, TernaryConfig())
    for p in student.parameters():
        p.requires_grad_(False)
    trainable.make_trainable(student, latent_from=teacher)
    opt = _optimizer(student, DistillConfig(batch_size=batch))
    student.train()
    original = trainable.ste_ternary_weight
    times = {name: [] for name in VARIANTS}
    try:
        for step in range(steps):
            for name, fn in VARIANTS.items():
                trainable.ste_ternary_weight = fn  # what TrainableTernaryLinear.forward calls
                kwargs, target = mini_inputs(batch, step)
                t0 = time.perf_counter()
                loss = (student(**kwargs)[0] - target).pow(2).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                times[name].append(time.perf_counter() - t0)
    finally:
        trainable.ste_ternary_weight = original
    s = {name: round(median(t[2:]), 4) for name, t in times.items()}
    return {"batch": batch, "steps_each": steps, "seconds_per_step": s,
            "speedup": round(s["autograd formula"] / s["ste_weight op"], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    weights = {}
    for name, shape in SHAPES.items():
        weights[name] = time_weight(shape, args.repeats if name.startswith("mini") else 3)
        print(name, weights[name], flush=True)
    steps = time_mini_steps(args.steps, args.batch)
    print("Mini FLUX QAT step", steps, flush=True)
    path = write_results("qat_step", {"threads": args.threads, "weights": weights, "mini_qat_step": steps})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
