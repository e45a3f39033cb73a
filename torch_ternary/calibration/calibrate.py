"""``calibrate``: from a full-precision FLUX pipeline and text prompts to a calibrated ternary transformer.

Methods (each ends in the standard ternary format: no LoRA, no extra full-precision weights):

==================  =====================================================================================
``absmean``         plain post-training absmean ternarization (the baseline; needs no data)
``layerwise``       activation-aware per-channel codes and scales from teacher-trajectory inputs
``layerwise_gptq``  the same with GPTQ error feedback over columns
``distill_scales``  layer-wise init, then self-distillation of the scales only (codes frozen, 2-bit)
``distill_qat``     layer-wise init, then self-distillation of scales and latent weights (STE)
==================  =====================================================================================

Phases: record teacher trajectories (resumable, on disk) -> ternarize a copy of the transformer ->
layer-wise calibration -> distillation -> (optionally) on-policy refinement: the student samples on
prompts, the teacher labels every state it visits, and distillation continues on teacher and
student states pooled -> export. ``inplace=True`` ternarizes the pipeline's own
transformer after the trajectories are recorded instead of copying it (what a 12 B model needs;
then the QAT and layer-wise methods, which need the full-precision weights, are not available).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..errors import TernaryConfigError
from ..quantization.config import TernaryConfig
from ..quantization.quantize import quantize_
from .distill import DistillConfig, config_dict, distill
from .distributed import Ranks, ranks_from_env
from .guided import sampler_guidance_scale
from .layerwise import layerwise_calibrate
from .parallel import trainable_state
from .trainable import export_from_state, export_ternary, make_trainable
from .trajectories import TrajectoryDataset, record_trajectories

METHODS = ("absmean", "layerwise", "layerwise_gptq", "distill_scales", "distill_qat")
#: Added to ``CalibrationConfig.seed`` for the on-policy phase: its starting noise differs from the teacher's.
ON_POLICY_SEED_OFFSET = 1_000_003


@dataclass
class CalibrationConfig:
    """What :func:`calibrate` does.

    Attributes:
        method: one of :data:`METHODS`.
        ternary: the :class:`TernaryConfig` of the student (layer selection, granularity).
        trajectory_batch: prompts per teacher pipeline call (and per shard).
        pipe_kwargs: arguments of the teacher's pipeline call (steps, guidance, size...).
        storage_dtype: dtype of recorded trajectories.
        layerwise_records: trajectory records replayed through the teacher to estimate the input Gram matrices.
        layerwise_init: start distillation from layer-wise calibration (else from absmean).
        gptq_init: with ``layerwise_init``, run that calibration with GPTQ error feedback.
        distill: distillation hyper-parameters.
        seed: seed of the teacher's starting noise.
        on_policy_prompts: after distillation, the student samples the first this-many prompts (other
            starting noise: seed + :data:`ON_POLICY_SEED_OFFSET`) and the teacher labels its states
            (0: no on-policy phase).
        on_policy_steps: distillation steps on the teacher and on-policy records pooled (same
            hyper-parameters as ``distill`` otherwise, a fresh warm-up and cosine).
        on_policy_lr_factor: multiplies both peak learning rates of that phase.
    """

    method: str = "distill_qat"
    ternary: TernaryConfig = field(default_factory=TernaryConfig)
    trajectory_batch: int = 16
    pipe_kwargs: dict = field(default_factory=dict)
    storage_dtype: torch.dtype = torch.float16
    layerwise_records: int = 2048
    layerwise_init: bool = True
    gptq_init: bool = False
    distill: DistillConfig = field(default_factory=DistillConfig)
    seed: int = 0
    on_policy_prompts: int = 0
    on_policy_steps: int = 0
    on_policy_lr_factor: float = 1.0

    def __post_init__(self):
        if self.method not in METHODS:
            raise TernaryConfigError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.ternary.granularity != "per_channel" and self.method != "absmean" and (
            self.method.startswith("layerwise") or self.layerwise_init
        ):
            raise TernaryConfigError("layer-wise calibration computes per-channel scales; use granularity='per_channel'")
        if self.gptq_init and not (self.method.startswith("distill") and self.layerwise_init):
            raise TernaryConfigError("gptq_init applies to distill methods with layerwise_init=True")
        if self.trajectory_batch < 1:
            raise TernaryConfigError(f"trajectory_batch must be >= 1, got {self.trajectory_batch}")
        if self.on_policy_prompts < 0 or self.on_policy_steps < 0:
            raise TernaryConfigError("on_policy_prompts and on_policy_steps must be >= 0")
        if not self.on_policy_lr_factor > 0:
            raise TernaryConfigError(f"on_policy_lr_factor must be > 0, got {self.on_policy_lr_factor}")
        if bool(self.on_policy_prompts) != bool(self.on_policy_steps):
            raise TernaryConfigError("on-policy refinement needs both on_policy_prompts and on_policy_steps > 0")
        if self.on_policy_prompts and not self.method.startswith("distill"):
            raise TernaryConfigError("on-policy refinement applies to the distill methods")


@dataclass
class CalibrationResult:
    """The calibrated transformer and what it cost."""

    transformer: nn.Module
    method: str
    seconds: dict = field(default_factory=dict)
    losses: list = field(default_factory=list)
    layer_errors: dict = field(default_factory=dict)

    def summary(self) -> dict:
        errs = list(self.layer_errors.values())
        out = {"method": self.method, "seconds": self.seconds, "total_seconds": round(sum(self.seconds.values()), 1)}
        if errs:
            out["mean_layer_error_absmean"] = sum(e[0] for e in errs) / len(errs)
            out["mean_layer_error_layerwise"] = sum(e[1] for e in errs) / len(errs)
        if self.losses:
            out["distill_loss_first"], out["distill_loss_last"] = self.losses[0], self.losses[-1]
        return out


def _replay(data: TrajectoryDataset, records: int, batch: int, ranks: Ranks) -> Callable[[nn.Module], None]:
    """Feeds ``model`` the first ``records`` records (whole batches); with N ranks, batch ``j`` on rank ``j % N``."""
    def run(model: nn.Module) -> None:
        seen = 0
        for j, (kwargs, _) in enumerate(data.iterate(batch)):
            if ranks.owns(j):
                model(**kwargs)
            seen += kwargs["hidden_states"].shape[0]
            if seen >= records:
                break

    return run


def calibrate(pipe, prompts: list[str], workdir: str | Path, config: CalibrationConfig | None = None,
              inplace: bool = False, log: Callable[[dict], None] | None = None, ranks: Ranks | None = None) -> CalibrationResult:
    """Calibrate a ternary version of ``pipe.transformer`` from text prompts alone.

    Args:
        pipe: a full-precision diffusers ``FluxPipeline`` (the teacher; left unchanged unless ``inplace``).
        prompts: text prompts (e.g. :func:`~torch_ternary.calibration.prompts.load_prompts`).
        workdir: folder for trajectories (``workdir/trajectories``) and distillation checkpoints.
        config: a :class:`CalibrationConfig`.
        inplace: ternarize ``pipe.transformer`` itself (saves a full copy; absmean / distill_scales without layer-wise init only).
        log: receives progress dicts (on rank 0 only).
        ranks: the job (:mod:`.distributed`); default: the process group torchrun's environment
            describes, else one process. Every rank must call ``calibrate`` with the same arguments
            (``workdir`` on a file system they share); each gets the same result.

    Returns:
        A :class:`CalibrationResult` whose ``transformer`` holds :class:`~torch_ternary.TernaryTensor` weights.
    """
    cfg = config or CalibrationConfig()
    if cfg.distill.guided_loss_weight and cfg.distill.guidance_scale is None:
        cfg = dataclasses.replace(cfg, distill=dataclasses.replace(
            cfg.distill, guidance_scale=sampler_guidance_scale(pipe, cfg.pipe_kwargs)))
    workdir = Path(workdir)
    seconds: dict[str, float] = {}
    teacher = pipe.transformer
    ranks = ranks or ranks_from_env(next(teacher.parameters()).device)
    log = log if ranks.main else None
    needs_fp = cfg.method in ("layerwise", "layerwise_gptq", "distill_qat") or (
        cfg.method == "distill_scales" and cfg.layerwise_init)
    if inplace and cfg.on_policy_prompts:
        raise TernaryConfigError("on-policy refinement needs the full-precision teacher beside the student; "
                                 "inplace=True is not possible")
    if inplace and cfg.distill.block_loss_weight:
        raise TernaryConfigError("block matching compares the student with the full-precision teacher; "
                                 "inplace=True is not possible")
    if inplace and needs_fp:
        raise TernaryConfigError(f"method {cfg.method!r} (with layerwise_init={cfg.layerwise_init}) needs the "
                                 "full-precision transformer beside the student; inplace=True is not possible")
    data = None
    if cfg.method != "absmean":
        t0 = time.time()
        folder = record_trajectories(pipe, prompts, workdir / "trajectories", batch_size=cfg.trajectory_batch,
                                     seed=cfg.seed, storage_dtype=cfg.storage_dtype, ranks=ranks, **cfg.pipe_kwargs)
        device = next(teacher.parameters()).device
        data = TrajectoryDataset(folder, device=device, dtype=next(teacher.parameters()).dtype)
        seconds["trajectories"] = time.time() - t0

    t0 = time.time()
    student = teacher if inplace else copy.deepcopy(teacher)
    quantize_(student, cfg.ternary)
    seconds["absmean"] = time.time() - t0
    result = CalibrationResult(student, cfg.method, seconds)
    if cfg.method == "absmean":
        return result

    if needs_fp and (cfg.method.startswith("layerwise") or cfg.layerwise_init):
        t0 = time.time()
        run = _replay(data, cfg.layerwise_records, cfg.distill.batch_size, ranks)
        result.layer_errors = layerwise_calibrate(student, teacher, run, gptq=cfg.method == "layerwise_gptq" or cfg.gptq_init,
                                                  ranks=ranks)
        seconds["layerwise"] = time.time() - t0
        if log:
            log({"phase": "layerwise", **result.summary()})
    if cfg.method.startswith("layerwise"):
        return result

    t0 = time.time()
    for p in student.parameters():
        p.requires_grad_(False)
    # FSDP2 shards the QAT student in place; the exported model is rebuilt from this 2-bit copy
    base = copy.deepcopy(student) if ranks.distributed and cfg.method == "distill_qat" else None
    make_trainable(student, latent_from=teacher if cfg.method == "distill_qat" else None)
    result.losses = distill(student, data, cfg.distill, checkpoint_dir=workdir / f"distill_{cfg.method}", log=log,
                            teacher=teacher, ranks=ranks)
    seconds["distill"] = time.time() - t0
    if cfg.on_policy_prompts:
        result.losses += _on_policy(pipe, student, teacher, prompts, data, workdir, cfg, seconds, log, ranks, base)
    result.transformer = _exported(student, base)
    if log:
        log({"phase": "done", "distill": config_dict(cfg.distill), **result.summary()})
    return result


def _exported(student: nn.Module, base: nn.Module | None) -> nn.Module:
    """The standard ternary model: ``student`` exported in place, or (FSDP2-sharded student) ``base``
    with the gathered trainable state applied (collective)."""
    if base is None:
        export_ternary(student)
        return student
    return export_from_state(base, trainable_state(student))


def _on_policy(pipe, student: nn.Module, teacher: nn.Module, prompts: list[str], data: TrajectoryDataset,
               workdir: Path, cfg: CalibrationConfig, seconds: dict, log, ranks: Ranks,
               base: nn.Module | None = None) -> list[float]:
    """The student samples, the teacher labels its states; distillation goes on over both record sets
    (``data``, the teacher's records, is extended in place with the on-policy ones). A sharded student
    samples through a ternary copy (``base`` + its gathered state: the same function, no collectives
    inside the sampler)."""
    t0 = time.time()
    student.eval()
    student_pipe = copy.copy(pipe)  # shares encoders, scheduler, VAE; only the transformer differs
    student_pipe.transformer = student if base is None else export_from_state(copy.deepcopy(base), trainable_state(student))
    folder = record_trajectories(student_pipe, list(prompts[:cfg.on_policy_prompts]), workdir / "trajectories_on_policy",
                                 batch_size=cfg.trajectory_batch, seed=cfg.seed + ON_POLICY_SEED_OFFSET,
                                 storage_dtype=cfg.storage_dtype, target=teacher, ranks=ranks, **cfg.pipe_kwargs)
    records_teacher = len(data)
    data.extend(folder)  # the teacher records stay loaded; only the new folder is read
    seconds["on_policy_trajectories"] = time.time() - t0
    if log:
        log({"phase": "on_policy", "records_teacher": records_teacher, "records_pooled": len(data)})
    t0 = time.time()
    f = cfg.on_policy_lr_factor
    refine = dataclasses.replace(cfg.distill, steps=cfg.on_policy_steps, seed=cfg.distill.seed + 1,
                                 lr=cfg.distill.lr * f, scale_lr=cfg.distill.scale_lr * f)
    losses = distill(student, data, refine, checkpoint_dir=workdir / f"distill_{cfg.method}_on_policy", log=log,
                     teacher=teacher, ranks=ranks)
    seconds["on_policy_distill"] = time.time() - t0
    return losses
