"""One rank of the distributed calibration tests (tests/calibration/test_distributed.py runs it under torchrun).

    torchrun --standalone --nproc-per-node N tests/calibration/distributed_worker.py OUT [--steps S] [--kill-at K]
        [--only scales|qat] [--float64] [--threads T] [--guided W] [--micro-batch B]

Every rank loads the shipped full-precision Mini FLUX, records teacher trajectories into ``OUT/traj``,
runs GPTQ layer-wise calibration and then 20 distillation steps twice (scales only: DDP; QAT: FSDP2),
with a global batch of 5 (which 2 ranks do not divide). Rank 0 writes the results to ``OUT``:
``layerwise.safetensors``, ``scales.safetensors``, ``qat.safetensors`` (full trainable tensors and the
exported codes), and every rank ``shard_<rank>.json`` (how much of the QAT state it holds).
``--kill-at K``: rank 1 SIGKILLs itself when it draws its K-th QAT batch (after a checkpoint).
``--float64``: the distillation runs on a float64 copy of the student and float64 inputs (the same algorithm
with float rounding out of the way). ``--threads T``: intra-op threads a rank (another float rounding).
``--guided W``: the guided-velocity term at weight W (batches of 3 (conditional, unconditional) pairs, which 2
ranks split 2 + 1, whole pairs on a rank), at the pipeline's own true_cfg_scale. ``--micro-batch B``: the distillation's
``DistillConfig.micro_batch`` (gradient accumulation; 3 on one rank: the pieces 2 ranks compute, 3 + 2).
"""

import argparse
import copy
import json
import os
import signal
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from torch_ternary import TernaryTensor
from torch_ternary.calibration import DistillConfig, TrajectoryDataset, record_trajectories
from torch_ternary.calibration.calibrate import _replay
from torch_ternary.calibration import distill as distill_module
from torch_ternary.calibration.distill import _optimizer as make_optimizer
from torch_ternary.calibration.distill import distill
from torch_ternary.calibration.distributed import ranks_from_env
from torch_ternary.calibration.guided import sampler_guidance_scale
from torch_ternary.calibration.layerwise import layerwise_calibrate
from torch_ternary.calibration.parallel import trainable_state
from torch_ternary.calibration.trainable import export_from_state, make_trainable
from torch_ternary.mini import load_pipeline
from torch_ternary.quantization import quantize_
from torch_ternary.quantization.config import TernaryConfig

PROMPTS = ["two squares", "a blue square and a triangle", "one red circle", "a circle above a square",
           "three green triangles"]  # 3 shards of 2: not divisible by 2 ranks


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--kill-at", type=int, default=0)
    parser.add_argument("--only", choices=["scales", "qat"], default=None)
    parser.add_argument("--float64", action="store_true", help="distil a float64 student (latents, scales, inputs)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads a rank (changes float rounding)")
    parser.add_argument("--guided", type=float, default=0.0, help="guided-velocity loss weight (batches of 3 pairs)")
    parser.add_argument("--micro-batch", type=int, default=0, help="DistillConfig.micro_batch (0: off)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ranks = ranks_from_env("cpu")
    out = Path(args.out)
    torch.manual_seed(0)
    pipe = load_pipeline()  # the shipped full-precision model: calibration's real starting point
    pipe.set_progress_bar_config(disable=True)
    teacher = pipe.transformer
    folder = record_trajectories(pipe, PROMPTS, out / "traj", batch_size=2, progress=False, ranks=ranks,
                                 num_inference_steps=2)
    data = TrajectoryDataset(folder)
    student = copy.deepcopy(teacher)
    quantize_(student, TernaryConfig())
    layerwise_calibrate(student, teacher, _replay(data, 24, 4, ranks), gptq=True, ranks=ranks)
    if args.float64:  # distillation inputs in float64 (layer-wise above ran on the float32 student)
        data = TrajectoryDataset(folder, dtype=torch.float64)
    if ranks.main:
        save_file({f"{n}.{k}": v.detach().contiguous() for n, m in student.named_modules()
                   if isinstance(m, torch.nn.Linear) and isinstance(m.weight, TernaryTensor)
                   for k, v in (("packed", m.weight.packed), ("scale", m.weight.scale), ("bias", m.bias))
                   if v is not None}, str(out / "layerwise.safetensors"))
    for p in student.parameters():
        p.requires_grad_(False)
    for method in ("scales", "qat") if args.only is None else (args.only,):
        s = copy.deepcopy(student)
        make_trainable(s, latent_from=teacher if method == "qat" else None)
        if args.float64:  # the same algorithm with float rounding out of the way (QAT only: STE in plain torch)
            torch.nn.Module.to(s, torch.float64)  # diffusers refuses .to(dtype) on a quantized model
        if args.kill_at and method == "qat" and ranks.rank == 1:
            draw, calls = data.batch, [0]

            def dying(*a, **k):
                calls[0] += 1
                if calls[0] == args.kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
                return draw(*a, **k)

            data.batch = dying
        guided = dict(batch_size=6, guided_loss_weight=args.guided, guidance_scale=sampler_guidance_scale(pipe)) \
            if args.guided else dict(batch_size=5)
        cfg = DistillConfig(steps=args.steps, warmup=2, checkpoint_every=10, micro_batch=args.micro_batch, **guided)  # the recipe's learning rates
        made = []
        distill_module._optimizer = lambda *a, _make=make_optimizer: made.append(_make(*a)) or made[-1]
        distill(s, data, cfg, checkpoint_dir=out / f"ckpt_{method}", ranks=ranks)
        if method == "qat":
            def local(t):
                return (t.to_local() if hasattr(t, "to_local") else t).numel()

            latents = [p for n, p in s.named_parameters() if n.endswith(".latent")]
            moments = [v for p in latents for k, v in made[-1].state[p].items() if k != "step"]
            (out / f"shard_{ranks.rank}.json").write_text(json.dumps({
                "latent_local": sum(local(p) for p in latents), "latent_total": sum(p.numel() for p in latents),
                "adam_local": sum(local(v) for v in moments), "adam_total": sum(v.numel() for v in moments)}))
        state = trainable_state(s)
        base = copy.deepcopy(student)
        exported = export_from_state(base, state)
        codes = {f"{n}.codes": m.weight.codes() for n, m in exported.named_modules()
                 if isinstance(m, torch.nn.Linear) and isinstance(m.weight, TernaryTensor)}
        if ranks.main:
            save_file({**{k: v.contiguous() for k, v in state.items()}, **codes}, str(out / f"{method}.safetensors"))
    ranks.barrier()
    return 0


if __name__ == "__main__":
    sys.exit(main())
