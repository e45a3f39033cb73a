"""Self-distillation: the ternary student matches the full-precision teacher's velocity on recorded trajectories.

The loss is flow-matching distillation, ``|| v_student(x_t, t, c) - v_teacher(x_t, t, c) ||^2`` over
records of the teacher's own sampling runs (:mod:`.trajectories`): no image data, no
noise-prediction target from data — the teacher is the only supervision. Trainable parameters are
the ternary scales and, for QAT, the latent weights (see :mod:`.trainable`); everything else stays
frozen. AdamW with linear warm-up and cosine decay; checkpoints (safetensors + JSON) make a run
resumable.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..format.atomic import atomic_write
from .encoder_data import EncoderDistillData
from .trajectories import TrajectoryDataset

CKPT_TENSORS = "distill.safetensors"
CKPT_STATE = "distill.json"


@dataclass
class DistillConfig:
    """Hyper-parameters of :func:`distill`.

    Attributes:
        steps: optimizer steps. batch_size: records per step. lr: peak learning rate of the latent
        weights (QAT). scale_lr: peak learning rate of the scales. warmup: linear warm-up steps.
        final_lr_fraction: cosine floor. weight_decay: AdamW decay of the latent weights.
        seed: data order. checkpoint_every: steps between checkpoints (0: only at the end).
        autocast_bf16: run forward passes under bf16 autocast (CPU or CUDA).
        grad_checkpointing: recompute block activations in the backward (saves memory on big models).
    """

    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-4
    scale_lr: float = 1e-3
    warmup: int = 50
    final_lr_fraction: float = 0.05
    weight_decay: float = 0.0
    seed: int = 0
    checkpoint_every: int = 200
    autocast_bf16: bool = False
    grad_checkpointing: bool = False


def _lr_factor(step: int, cfg: DistillConfig) -> float:
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.final_lr_fraction + (1 - cfg.final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * progress))


def _optimizer(student: nn.Module, cfg: DistillConfig) -> torch.optim.Optimizer:
    scales, latents, others = [], [], []
    for name, p in student.named_parameters():
        if not p.requires_grad:
            continue
        (scales if name.endswith(".scale") else latents if name.endswith(".latent") else others).append(p)
    groups = [{"params": scales, "lr": cfg.scale_lr, "weight_decay": 0.0, "base_lr": cfg.scale_lr},
              {"params": latents, "lr": cfg.lr, "weight_decay": cfg.weight_decay, "base_lr": cfg.lr},
              {"params": others, "lr": cfg.lr, "weight_decay": 0.0, "base_lr": cfg.lr}]
    return torch.optim.AdamW([g for g in groups if g["params"]], betas=(0.9, 0.99))


def _save(student: nn.Module, opt: torch.optim.Optimizer, step: int, seconds: float, rng, folder: Path, losses) -> None:
    names = {id(p): n for n, p in student.named_parameters()}
    tensors = {f"param.{n}": p.detach().contiguous() for n, p in student.named_parameters() if p.requires_grad}
    for group in opt.param_groups:
        for p in group["params"]:
            for key, value in opt.state.get(p, {}).items():
                tensors[f"opt.{names[id(p)]}.{key}"] = (value if value.dim() else value.reshape(1)).contiguous()
    atomic_write(folder / CKPT_TENSORS, lambda tmp: save_file(tensors, str(tmp)))
    state = {"step": step, "seconds": seconds, "rng": rng.bit_generator.state, "losses": losses}
    atomic_write(folder / CKPT_STATE, lambda tmp: tmp.write_text(json.dumps(state)))


def _load(student: nn.Module, opt: torch.optim.Optimizer, folder: Path, rng) -> tuple[int, float, list]:
    tensors = load_file(str(folder / CKPT_TENSORS))
    state = json.loads((folder / CKPT_STATE).read_text())
    with torch.no_grad():
        for n, p in student.named_parameters():
            if f"param.{n}" in tensors:
                p.copy_(tensors[f"param.{n}"])
    for n, p in student.named_parameters():
        st = {k.rsplit(".", 1)[1]: v.to(p.device) for k, v in tensors.items() if k.startswith(f"opt.{n}.")}
        if st:
            st["step"] = st["step"].reshape(())
            opt.state[p] = st
    rng.bit_generator.state = state["rng"]
    return state["step"], state["seconds"], state["losses"]


def distill(student: nn.Module, data: "TrajectoryDataset | EncoderDistillData", cfg: DistillConfig, checkpoint_dir: str | Path | None = None,
            resume: bool = True, log: Callable[[dict], None] | None = None) -> list[float]:
    """Train ``student``'s trainable parameters to match the recorded teacher velocities.

    Args:
        student: the transformer whose ternary linears are :class:`~.trainable.TrainableTernaryLinear`.
        data: what the teacher did: recorded trajectories (:class:`~.trajectories.TrajectoryDataset`) or
            encoder states (:class:`~.encoder_data.EncoderDistillData`); anything whose
            ``batch(size, rng)`` returns ``(student kwargs, target)`` with ``student(**kwargs)[0]`` ~ target.
        cfg: hyper-parameters.
        checkpoint_dir: where checkpoints go (and are resumed from).
        resume: continue from a checkpoint in ``checkpoint_dir`` if there is one.
        log: called every 25 steps with ``{"step", "loss", "lr_factor", "seconds"}``.

    Returns:
        The mean loss of every 25-step window.
    """
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    rng = np.random.default_rng(cfg.seed)
    opt = _optimizer(student, cfg)
    step, seconds, history = 0, 0.0, []
    if folder is not None and resume and (folder / CKPT_STATE).exists():
        step, seconds, history = _load(student, opt, folder, rng)
    if cfg.grad_checkpointing and hasattr(student, "enable_gradient_checkpointing"):
        student.enable_gradient_checkpointing()
    student.train()
    device_type = next(student.parameters()).device.type
    window: list[float] = []
    while step < cfg.steps:
        t0 = time.time()
        factor = _lr_factor(step, cfg)
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * factor
        kwargs, target = data.batch(cfg.batch_size, rng)
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=cfg.autocast_bf16):
            pred = student(**kwargs)[0]
        loss = torch.nn.functional.mse_loss(pred.float(), target.float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():  # scales stay positive
            for n, p in student.named_parameters():
                if n.endswith(".scale"):
                    p.clamp_(min=1e-8)
        step += 1
        seconds += time.time() - t0
        window.append(float(loss.detach()))
        if step % 25 == 0 or step == cfg.steps:
            history.append(float(np.mean(window)))
            window = []
            if log is not None:
                log({"step": step, "loss": history[-1], "lr_factor": factor, "seconds": round(seconds, 1)})
        if folder is not None and cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
            _save(student, opt, step, seconds, rng, folder, history)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        _save(student, opt, step, seconds, rng, folder, history)
    student.eval()
    return history


def config_dict(cfg: DistillConfig) -> dict:
    """JSON-safe dict of a :class:`DistillConfig`."""
    return asdict(cfg)
