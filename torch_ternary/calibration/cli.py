"""``torch-ternary calibrate``: the calibration methods from the command line.

::

    torch-ternary calibrate --pipeline mini --method distill_qat --prompts mini --num-prompts 512 \\
        --out mini_ternary.safetensors

Writes the calibrated ternary transformer with :func:`~torch_ternary.save_quantized` and, beside it,
``<out>.json`` with the method, its settings, the time each phase took and the loss curve.
"""

from __future__ import annotations

import json
from pathlib import Path

from .calibrate import METHODS


def add_parser(sub) -> None:
    """Register the ``calibrate`` subcommand on an ``argparse`` subparsers object."""
    c = sub.add_parser("calibrate", help="calibrate a ternary transformer from text prompts (self-distillation)",
                       description="Calibrate a ternary version of a FLUX pipeline's transformer from text prompts "
                                   "alone: the full-precision pipeline is the teacher. See docs/calibration.md.")
    c.add_argument("--pipeline", default="mini", help="'mini' (the shipped Mini FLUX) or a diffusers FluxPipeline folder")
    c.add_argument("--method", choices=METHODS, default="distill_qat", help="calibration method (default distill_qat)")
    c.add_argument("--prompts", default="mini", help="'mini-calibration' (Mini FLUX's calibration split), 'mini' (its training captions), "
                                                     "'builtin' or a .txt/.tsv/.jsonl file")
    c.add_argument("--column", default=None, help="field of a .tsv/.jsonl prompt file (default 'prompt')")
    c.add_argument("--num-prompts", type=int, default=512, help="prompts to use (default 512)")
    c.add_argument("--category-weights", default=None, metavar="CAT=W,...",
                   help="relative weights of the mini-calibration categories, e.g. color_attr=2,position=2 (default uniform)")
    c.add_argument("--prompt-seed", type=int, default=0, help="seed of generated prompts (default 0)")
    c.add_argument("--sampling-steps", type=int, default=None, help="teacher sampling steps (default: the pipeline's)")
    c.add_argument("--trajectory-batch", type=int, default=16,
                   help="prompts per teacher sampling call and per trajectory shard (default 16; lower it to fit memory)")
    c.add_argument("--steps", type=int, default=2000, help="distillation steps (default 2000)")
    c.add_argument("--batch-size", type=int, default=32, help="trajectory records per distillation step (default 32)")
    c.add_argument("--micro-batch", type=int, default=0,
                   help="gradient accumulation: records a forward / backward pass takes on each process (default 0: "
                        "all of its part of the batch at once); the step still trains on --batch-size records")
    c.add_argument("--lr", type=float, default=1e-4, help="peak learning rate of latent weights (QAT)")
    c.add_argument("--scale-lr", type=float, default=1e-3, help="peak learning rate of scales")
    c.add_argument("--no-layerwise-init", action="store_true", help="start distillation from absmean codes")
    c.add_argument("--gptq-init", action="store_true", help="start distillation from GPTQ layer-wise calibration")
    c.add_argument("--on-policy-prompts", type=int, default=0,
                   help="after distillation, prompts the student samples for teacher-labelled on-policy records (default 0: none)")
    c.add_argument("--on-policy-steps", type=int, default=0,
                   help="distillation steps on teacher + on-policy records pooled")
    c.add_argument("--on-policy-lr-factor", type=float, default=1.0,
                   help="multiplies both peak learning rates in the on-policy phase (default 1)")
    c.add_argument("--block-loss-weight", type=float, default=0.0,
                   help="weight of matching every block's output to the teacher's (default 0: velocity only)")
    c.add_argument("--high-noise-weight", type=float, default=0.0,
                   help="weight records 1 + this x timestep (high noise, where layout is decided; default 0)")
    c.add_argument("--guided-loss-weight", type=float, default=0.0,
                   help="weight of the guided-velocity term: the error of v_u + g (v_c - v_u), the velocity the CFG "
                        "sampler steps along, over g^2 (needs true CFG; default 0: off)")
    c.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                   help="keep the linears matching GLOB dense, at the teacher's weights (repeatable; "
                        "benchmarks/linear_sensitivity.py ranks the candidates)")
    c.add_argument("--bf16", action="store_true", help="distill under bf16 autocast")
    c.add_argument("--workdir", default="calibration-work", help="trajectories and checkpoints (resumable)")
    c.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    c.add_argument("--out", required=True, help="output .safetensors file of the ternary transformer")
    c.set_defaults(func=cmd_calibrate)


def _load_pipe(spec: str, device: str):
    if spec == "mini":
        from ..mini import load_pipeline

        return load_pipeline(device=device)
    folder = Path(spec)
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(f"{folder}: not a diffusers pipeline folder (no model_index.json)")
    from diffusers import DiffusionPipeline

    return DiffusionPipeline.from_pretrained(folder).to(device)


def _weights(spec: str | None) -> dict[str, float] | None:
    """``"a=2,b=1"`` -> ``{"a": 2.0, "b": 1.0}``; None -> None."""
    if not spec:
        return None
    from .prompts import PromptSourceError

    out = {}
    for item in spec.split(","):
        name, sep, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise PromptSourceError(f"--category-weights: expected CATEGORY=WEIGHT items, got {item!r}")
    return out


def _check_exclude(transformer, patterns: list[str]) -> None:
    """Refuse an ``--exclude`` glob that names no linear of ``transformer`` (a typo would keep nothing dense)."""
    import torch.nn as nn

    from ..errors import TernaryConfigError
    from ..quantization.config import _matches  # the globs exactly as TernaryConfig(exclude=...) reads them

    names = [n for n, m in transformer.named_modules() if isinstance(m, nn.Linear)]
    for pattern in patterns:
        if not any(_matches(n, (pattern,)) for n in names):
            raise TernaryConfigError(f"--exclude {pattern!r} matches no linear of the transformer "
                                     f"(names look like {names[len(names) // 2]!r})")


def cmd_calibrate(args) -> int:
    from ..format.atomic import atomic_write
    from ..format.single_file import save_quantized
    from ..quantization.config import TernaryConfig
    from .calibrate import CalibrationConfig, calibrate
    from .distill import DistillConfig, config_dict
    from .guided import sampler_guidance_scale
    from .prompts import load_prompts

    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise ValueError(f"{out}: the output is a .safetensors file")
    from .distributed import ranks_from_env

    prompts = load_prompts(args.prompts, args.num_prompts, seed=args.prompt_seed, column=args.column,
                           category_weights=_weights(args.category_weights))
    ranks = ranks_from_env(args.device)  # torchrun: one process per rank, each on its own GPU
    device = f"cuda:{torch_local_rank()}" if ranks.distributed and args.device == "cuda" else args.device
    pipe = _load_pipe(args.pipeline, device)
    pipe.set_progress_bar_config(disable=True)
    _check_exclude(pipe.transformer, args.exclude)
    pipe_kwargs = {} if args.sampling_steps is None else {"num_inference_steps": args.sampling_steps}
    cfg = CalibrationConfig(
        method=args.method, ternary=TernaryConfig(exclude=tuple(args.exclude)), pipe_kwargs=pipe_kwargs,
        trajectory_batch=args.trajectory_batch,
        layerwise_init=not args.no_layerwise_init,
        gptq_init=args.gptq_init, on_policy_prompts=args.on_policy_prompts, on_policy_steps=args.on_policy_steps,
        on_policy_lr_factor=args.on_policy_lr_factor,
        distill=DistillConfig(steps=args.steps, batch_size=args.batch_size, micro_batch=args.micro_batch, lr=args.lr,
                              scale_lr=args.scale_lr,
                              autocast_bf16=args.bf16, block_loss_weight=args.block_loss_weight,
                              high_noise_weight=args.high_noise_weight, guided_loss_weight=args.guided_loss_weight,
                              guidance_scale=sampler_guidance_scale(pipe, pipe_kwargs) if args.guided_loss_weight else None),
    )
    log = lambda rec: print(json.dumps(rec), flush=True)  # noqa: E731
    result = calibrate(pipe, prompts, args.workdir, cfg, log=log, ranks=ranks)
    if not ranks.main:  # rank 0 writes the model, once
        ranks.barrier()
        return 0
    save_quantized(result.transformer, out)
    summary = {**result.summary(), "pipeline": args.pipeline, "prompts": args.prompts, "num_prompts": len(prompts),
               "prompt_seed": args.prompt_seed, "category_weights": _weights(args.category_weights), "ranks": ranks.world,
               "trajectory_batch": cfg.trajectory_batch, "exclude": list(cfg.ternary.exclude),
               "distill": config_dict(cfg.distill), "layerwise_init": cfg.layerwise_init, "gptq_init": cfg.gptq_init,
               "on_policy": {"prompts": cfg.on_policy_prompts, "steps": cfg.on_policy_steps,
                                                  "lr_factor": cfg.on_policy_lr_factor}, "losses": result.losses}
    atomic_write(out.with_suffix(".json"), lambda tmp: tmp.write_text(json.dumps(summary, indent=2)))
    print(f"wrote {out} ({result.method}, {summary['total_seconds']:.0f} s, {ranks.world} rank(s))")
    ranks.barrier()
    return 0


def torch_local_rank() -> int:
    import os

    return int(os.environ.get("LOCAL_RANK", "0"))
