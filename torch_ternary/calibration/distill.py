"""Self-distillation: the ternary student matches the full-precision teacher's velocity on recorded trajectories.

The loss is flow-matching distillation, ``|| v_student(x_t, t, c) - v_teacher(x_t, t, c) ||^2`` over
records of the teacher's own sampling runs (:mod:`.trajectories`): no image data, no
noise-prediction target from data — the teacher is the only supervision. Trainable parameters are
the ternary scales and, for QAT, the latent weights (see :mod:`.trainable`); everything else stays
frozen. AdamW with linear warm-up and cosine decay; checkpoints (safetensors + JSON) make a run
resumable.
"""

from __future__ import annotations

import contextlib
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

from ..errors import TernaryConfigError
from ..format.atomic import atomic_write
from .block_targets import BlockOutputs, block_matching_loss
from .distributed import DistributedCalibrationError, Ranks, all_reduce_sum, full, like
from .guided import guided_error
from .parallel import batch_rows, local_rows, micro_batches, wrap
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
        block_loss_weight: weight of the block-matching term (:mod:`.block_targets`): every block's output
            (both streams) against the teacher's on the same inputs, as a relative squared error; needs
            ``teacher`` in :func:`distill`. 0: velocity only.
        high_noise_weight: each record's loss is weighted ``1 + high_noise_weight * t`` (``t``: the record's
            timestep, 1 = pure noise, where the layout is decided), normalised over the batch. 0: uniform.
        guided_loss_weight: weight ``w`` of the guided-velocity term (:mod:`.guided`): batches become
            ``batch_size // 2`` (conditional, unconditional) pairs of records and every pair adds
            ``w * ||e_u + g (e_c - e_u)||^2 / g^2``, the error of the velocity the CFG sampler steps along.
            0: off. Needs trajectories recorded with true CFG and an even ``batch_size``.
        guidance_scale: ``g`` of that term, the sampler's ``true_cfg_scale`` (> 1); :func:`~.calibrate.calibrate`
            fills it from the pipeline when it is ``None``.
        micro_batch: gradient accumulation: each process runs its records of a step in forward / backward passes of
            at most this many records (activation memory of one micro-batch), summing their gradients before the
            one optimizer step; the step is still that of the global ``batch_size``. 0: all at once. It also fixes
            how the batch's gradient is summed: one process with ``micro_batch = batch_size / N`` (N dividing it;
            or ``ceil`` of it when only the last part is smaller) adds up exactly the pieces N ranks compute, so
            float32 rounding no longer depends on the number of processes (:func:`~.parallel.micro_batches`).
            With ``guided_loss_weight``: even (whole pairs).
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
    block_loss_weight: float = 0.0
    high_noise_weight: float = 0.0
    guided_loss_weight: float = 0.0
    guidance_scale: float | None = None
    micro_batch: int = 0

    def __post_init__(self):
        if not (isinstance(self.micro_batch, int) and self.micro_batch >= 0):
            raise TernaryConfigError(f"micro_batch must be an int >= 0 (0: the whole batch at once), got {self.micro_batch!r}")
        if self.guided_loss_weight and self.micro_batch % 2:
            raise TernaryConfigError(f"guided_loss_weight needs an even micro_batch (whole pairs), got {self.micro_batch}")
        if not (self.block_loss_weight >= 0 and self.high_noise_weight >= 0 and self.guided_loss_weight >= 0):
            raise TernaryConfigError(f"block_loss_weight, high_noise_weight and guided_loss_weight must be >= 0, got "
                                     f"{self.block_loss_weight}, {self.high_noise_weight}, {self.guided_loss_weight}")
        if self.guided_loss_weight and self.batch_size % 2:
            raise TernaryConfigError(f"guided_loss_weight needs an even batch_size (pairs of records), got {self.batch_size}")
        if self.guidance_scale is not None and not self.guidance_scale > 1:
            raise TernaryConfigError(f"guidance_scale must be > 1 (true classifier-free guidance), got {self.guidance_scale}")


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
    # (not fused=True: its CPU kernel rounds a shard's elements differently from the whole tensor's, and the
    # 2-rank FSDP2 latents and scales then drift 10x further from one rank's: 4e-4 after 20 steps, over the 1e-4 bound)
    return torch.optim.AdamW([g for g in groups if g["params"]], betas=(0.9, 0.99))


def _save(student: nn.Module, opt: torch.optim.Optimizer, step: int, seconds: float, rng, folder: Path, losses,
          ranks: Ranks) -> None:
    """Full tensors of the trainable parameters and their AdamW state (gathered under FSDP2: every rank
    calls this), written by rank 0: any number of ranks can resume from it."""
    names = {id(p): n for n, p in student.named_parameters()}
    tensors = {f"param.{n}": full(p.detach()).contiguous() for n, p in student.named_parameters() if p.requires_grad}
    for group in opt.param_groups:
        for p in group["params"]:
            for key, value in opt.state.get(p, {}).items():
                value = full(value)
                tensors[f"opt.{names[id(p)]}.{key}"] = (value if value.dim() else value.reshape(1)).contiguous()
    if ranks.main:
        atomic_write(folder / CKPT_TENSORS, lambda tmp: save_file(tensors, str(tmp)))
        state = {"step": step, "seconds": seconds, "rng": rng.bit_generator.state, "losses": losses, "ranks": ranks.world}
        atomic_write(folder / CKPT_STATE, lambda tmp: tmp.write_text(json.dumps(state)))
    ranks.barrier()  # nobody reads a checkpoint rank 0 has not finished


def _load_params(student: nn.Module, folder: Path) -> tuple[dict, dict]:
    """Copy a checkpoint's parameters into the student (each laid out like its parameter: a shard under
    FSDP2); returns ``(tensors, state)``."""
    tensors = load_file(str(folder / CKPT_TENSORS))
    state = json.loads((folder / CKPT_STATE).read_text())
    with torch.no_grad():
        for n, p in student.named_parameters():
            if f"param.{n}" in tensors:
                p.copy_(like(tensors[f"param.{n}"], p))
    return tensors, state


def _load_optimizer(student: nn.Module, opt: torch.optim.Optimizer, tensors: dict) -> None:
    """The checkpoint's AdamW state, laid out like each (possibly sharded) parameter."""
    for n, p in student.named_parameters():
        st = {k.rsplit(".", 1)[1]: v for k, v in tensors.items() if k.startswith(f"opt.{n}.")}
        if st:
            st = {k: (v.reshape(()) if k == "step" else like(v, p)) for k, v in st.items()}
            opt.state[p] = st


def _loss(model: nn.Module, teacher: nn.Module | None, kwargs: dict, target: torch.Tensor, cfg: DistillConfig,
          autocast: dict, ranks: Ranks | None = None, per_record_keys: tuple[str, ...] = (),
          rows: tuple[int, int, bool] | None = None) -> torch.Tensor:
    """The scalar distillation loss of one global batch (plain velocity MSE unless the config asks for more).

    With several ranks, this rank's part of the batch only, scaled so that the gradient DDP / FSDP2
    average over ranks is the gradient of the global batch's loss: ``world * sum_local(w l) / sum_global(w)``.
    ``rows``: one micro-batch ``(start, stop, live)`` of :func:`~.parallel.micro_batches` instead (its records of the
    global batch, the same weighting; weight 0 when not ``live``): the losses of a rank's micro-batches add up to
    its part's.
    """
    ranks = ranks or Ranks()
    if rows is None and not ranks.distributed and not cfg.block_loss_weight and not cfg.high_noise_weight \
            and not cfg.guided_loss_weight:
        with torch.autocast(**autocast):
            pred = model(**kwargs)[0]
        return torch.nn.functional.mse_loss(pred.float(), target.float())
    if cfg.high_noise_weight and "timestep" not in kwargs:
        raise TernaryConfigError("high_noise_weight needs records with a 'timestep' (diffusion trajectories)")
    n = target.shape[0]
    w_all = (1.0 + cfg.high_noise_weight * kwargs["timestep"].detach().float().reshape(-1)) if cfg.high_noise_weight \
        else torch.ones(n, device=target.device)
    unit = 2 if cfg.guided_loss_weight else 1  # a rank's part holds whole (conditional, unconditional) pairs
    live = True
    if rows is not None:
        start, stop, live = rows
        kwargs, target = batch_rows(kwargs, target, per_record_keys, start, stop)
    else:
        start, stop = ranks.part(n // unit) if ranks.distributed else (0, n // unit)
        start, stop = start * unit, stop * unit
        kwargs, target = local_rows(kwargs, target, per_record_keys, ranks, unit=unit)
    block = None
    if cfg.block_loss_weight:
        inner = getattr(model, "module", model)  # DDP wraps; the hooks go on the blocks themselves
        with torch.no_grad(), torch.autocast(**autocast), BlockOutputs(teacher) as t_out:
            teacher(**kwargs)
        with torch.autocast(**autocast), BlockOutputs(inner) as s_out:
            pred = model(**kwargs)[0]
        block = block_matching_loss(s_out.outputs, t_out.outputs)
    else:
        with torch.autocast(**autocast):
            pred = model(**kwargs)[0]
    per_record = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
    if cfg.guided_loss_weight:  # both records of a pair carry the pair's guided error
        per_record = per_record + cfg.guided_loss_weight * guided_error(pred, target, cfg.guidance_scale).repeat_interleave(2)
    if block is not None:
        per_record = per_record + cfg.block_loss_weight * block
    w = w_all[start:stop] if live else torch.zeros_like(w_all[start:stop])  # padding: no gradient at all
    return ranks.world * (w * per_record).sum() / w_all.sum()


def _no_sync(model: nn.Module, last: bool):
    """DDP: no all-reduce in the backward of a micro-batch but the step's last (its gradients accumulate locally,
    the last backward reduces the sum). FSDP2 reduce-scatters every micro-batch into the sharded gradients (each
    rank keeps 1/N of them) and one process has nothing to sync: a no-op."""
    if not last and hasattr(model, "no_sync"):
        return model.no_sync()
    return contextlib.nullcontext()


def distill(student: nn.Module, data: "TrajectoryDataset | EncoderDistillData", cfg: DistillConfig, checkpoint_dir: str | Path | None = None,
            resume: bool = True, log: Callable[[dict], None] | None = None, teacher: nn.Module | None = None,
            ranks: Ranks | None = None) -> list[float]:
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
        teacher: the full-precision model (frozen, eval mode); needed when ``cfg.block_loss_weight > 0``.
        ranks: a :class:`~.distributed.Ranks` (default one process). With N ranks every rank draws the same
            global batch of ``cfg.batch_size`` records and trains on its part; scales-only students run
            under DDP, students with latent weights are sharded by FSDP2 (in place: ``student`` stays
            sharded afterwards; :func:`~.parallel.trainable_state` gathers it). Checkpoints are written by
            rank 0 and resume with any N.

    Returns:
        The mean loss of every 25-step window.
    """
    if cfg.block_loss_weight and teacher is None:
        raise TernaryConfigError("block_loss_weight > 0 needs the teacher: distill(..., teacher=...)")
    if cfg.guided_loss_weight and not hasattr(data, "paired_batch"):
        raise TernaryConfigError(f"guided_loss_weight needs diffusion trajectories with CFG pairs; "
                                 f"{type(data).__name__} has none")
    if cfg.guided_loss_weight and cfg.guidance_scale is None:
        raise TernaryConfigError("guided_loss_weight needs guidance_scale (the sampler's true_cfg_scale)")
    ranks = ranks or Ranks()
    if ranks.distributed and cfg.batch_size < ranks.world:
        raise DistributedCalibrationError(f"batch_size {cfg.batch_size} < {ranks.world} ranks: every rank needs records")
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    rng = np.random.default_rng(cfg.seed)
    step, seconds, history, tensors = 0, 0.0, [], None
    if folder is not None and resume and (folder / CKPT_STATE).exists():
        tensors, state = _load_params(student, folder)
        rng.bit_generator.state = state["rng"]
        step, seconds, history = state["step"], state["seconds"], state["losses"]
    if cfg.grad_checkpointing and hasattr(student, "enable_gradient_checkpointing"):
        student.enable_gradient_checkpointing()
    model = wrap(student, ranks)
    opt = _optimizer(student, cfg)
    if tensors is not None:
        _load_optimizer(student, opt, tensors)
    student.train()
    device_type = next(student.parameters()).device.type
    per_record_keys = tuple(getattr(data, "PER_RECORD", ()))
    window: list[float] = []
    while step < cfg.steps:
        t0 = time.time()
        factor = _lr_factor(step, cfg)
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * factor
        kwargs, target = data.paired_batch(cfg.batch_size, rng) if cfg.guided_loss_weight else data.batch(cfg.batch_size, rng)
        autocast = dict(device_type=device_type, dtype=torch.bfloat16, enabled=cfg.autocast_bf16)
        opt.zero_grad(set_to_none=True)
        if cfg.micro_batch:  # gradient accumulation: the step's gradient summed over micro-batches
            pieces = micro_batches(target.shape[0], cfg.micro_batch, ranks, unit=2 if cfg.guided_loss_weight else 1)
            loss = 0.0
            for i, piece in enumerate(pieces):
                with _no_sync(model, last=i == len(pieces) - 1):
                    part = _loss(model, teacher, kwargs, target, cfg, autocast, ranks, per_record_keys, rows=piece)
                    part.backward()
                loss = loss + part.detach().float()  # this rank's part of the batch's loss (on the model's device)
        else:
            loss = _loss(model, teacher, kwargs, target, cfg, autocast, ranks, per_record_keys)
            loss.backward()
        opt.step()
        with torch.no_grad():  # scales stay positive
            for n, p in student.named_parameters():
                if n.endswith(".scale"):
                    p.clamp_(min=1e-8)
        step += 1
        seconds += time.time() - t0
        global_loss = all_reduce_sum(loss.detach().float().reshape(1) / ranks.world, ranks)  # the batch's loss
        window.append(float(global_loss))
        if step % 25 == 0 or step == cfg.steps:
            history.append(float(np.mean(window)))
            window = []
            if log is not None and ranks.main:
                log({"step": step, "loss": history[-1], "lr_factor": factor, "seconds": round(seconds, 1)})
        if folder is not None and cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
            _save(student, opt, step, seconds, rng, folder, history, ranks)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        _save(student, opt, step, seconds, rng, folder, history, ranks)
    student.eval()
    return history


def config_dict(cfg: DistillConfig) -> dict:
    """JSON-safe dict of a :class:`DistillConfig`."""
    return asdict(cfg)
