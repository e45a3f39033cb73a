"""Data-parallel training of a calibration student: DDP for scales only, FSDP2 for QAT (latent weights).

- :func:`wrap` returns what :func:`~.distill.distill` calls forward on: the student itself (one
  process), ``DistributedDataParallel(student)`` (scales only: the trainable state is ~0.1 % of the
  model, replicate it), or the student sharded in place by FSDP2 ``fully_shard`` (:func:`fsdp_units`: the
  blocks of a Flux transformer in units of at least :data:`FSDP_MIN_UNIT_PARAMS` parameters, then the root),
  so that each rank holds ~1/N of the float32 latent weights, their gradients and AdamW's moments.
- :func:`local_rows` cuts a rank's contiguous part out of the global batch every rank drew; :func:`micro_batches`
  splits that part for gradient accumulation (``DistillConfig.micro_batch``).
- :func:`trainable_state` gathers the full value of every trainable parameter (collective under
  FSDP2), e.g. for checkpoints and for export.
"""

from __future__ import annotations

import torch
from torch import nn

from .distributed import DistributedCalibrationError, Ranks, full

#: Block lists sharded in units under FSDP2 (diffusers Flux transformers); other models: the root only.
FSDP_BLOCK_LISTS = ("transformer_blocks", "single_transformer_blocks")
#: Fewest parameters of an FSDP2 unit (FSDP1's size-based wrap policy default): every FLUX.1-dev block (~340 M /
#: ~140 M parameters) is a unit of its own, all-gathered only while it runs; the blocks of a small model are
#: grouped (Mini FLUX: none reaches it, the root is the one unit), since every unit costs two collectives and
#: their copies a step (Mini FLUX QAT on 2 CPU ranks over gloo: 1.06 s a step block by block, 0.90 s as one unit).
FSDP_MIN_UNIT_PARAMS = 100_000_000


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model`` was sharded by FSDP2 ``fully_shard``."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def has_latents(model: nn.Module) -> bool:
    return any(n.endswith(".latent") and p.requires_grad for n, p in model.named_parameters())


def fsdp_units(student: nn.Module, min_params: int = FSDP_MIN_UNIT_PARAMS) -> list[list[nn.Module]]:
    """Consecutive blocks of :data:`FSDP_BLOCK_LISTS`, grouped until a group holds ``min_params`` parameters; the
    blocks after the last full group stay in the root's unit."""
    units, current, size = [], [], 0
    for name in FSDP_BLOCK_LISTS:
        for block in getattr(student, name, ()):
            current.append(block)
            size += sum(p.numel() for p in block.parameters())
            if size >= min_params:
                units.append(current)
                current, size = [], 0
    return units


def wrap(student: nn.Module, ranks: Ranks) -> nn.Module:
    """The module to train (see the module docstring); one process: ``student`` unchanged."""
    if not ranks.distributed:
        return student
    if has_latents(student):
        if not is_sharded(student):
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            device = next(student.parameters()).device
            mesh = init_device_mesh(device.type, (ranks.world,))
            for unit in fsdp_units(student):
                fully_shard(unit if len(unit) > 1 else unit[0], mesh=mesh)
            fully_shard(student, mesh=mesh)
        return student
    from torch.nn.parallel import DistributedDataParallel

    device = next(student.parameters()).device
    return DistributedDataParallel(student, device_ids=[device.index] if device.type == "cuda" else None)


def local_rows(kwargs: dict, target: torch.Tensor, per_record: tuple[str, ...], ranks: Ranks,
               unit: int = 1) -> tuple[dict, torch.Tensor]:
    """This rank's contiguous part (:meth:`Ranks.part`) of a global batch.

    Args:
        kwargs: the model inputs of the global batch; the keys in ``per_record`` have one row per record.
        target: ``[B, ...]`` targets of the global batch.
        per_record: which ``kwargs`` are sliced (the rest, e.g. position ids, are shared).
        unit: rows that stay together on one rank (2: the (conditional, unconditional) pairs of the
            guided loss); ``B`` is a multiple of it.
    """
    if not ranks.distributed:
        return kwargs, target
    b = target.shape[0]
    if b // unit < ranks.world:
        raise DistributedCalibrationError(f"a batch of {b // unit} {'pairs' if unit == 2 else 'records'} cannot feed "
                                          f"{ranks.world} ranks; use batch_size >= {ranks.world * unit} (and shards with "
                                          f"at least that many records)")
    start, stop = ranks.part(b // unit)
    return batch_rows(kwargs, target, per_record, start * unit, stop * unit)


def batch_rows(kwargs: dict, target: torch.Tensor, per_record: tuple[str, ...], start: int,
               stop: int) -> tuple[dict, torch.Tensor]:
    """Records ``start .. stop - 1`` of a batch: the ``per_record`` keys of ``kwargs`` and ``target`` ``[B, ...]``
    sliced on their first dimension, the other ``kwargs`` shared."""
    rows = {k: (v[start:stop] if k in per_record and isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    return rows, target[start:stop]


def micro_batches(n: int, micro: int, ranks: Ranks, unit: int = 1) -> list[tuple[int, int, bool]]:
    """This rank's part of a global batch of ``n`` records (:meth:`Ranks.part` of its ``n // unit`` units) in
    micro-batches of at most ``micro`` records (0: the whole part at once), as ``(start, stop, live)`` rows of the
    global batch. Every rank gets the same number of micro-batches (a forward and backward each: FSDP2's
    collectives must pair up across ranks); a rank whose part runs out first gets padding ones, ``live`` False:
    the first unit of its part again, which the loss weighs 0. With one rank and ``micro = ceil(n / N)``, where N
    divides ``n`` or only the last of N parts is smaller (5 records on 2 ranks: 3 + 2), the micro-batches are exactly
    the parts N ranks compute, so the gradient is summed over the same pieces."""
    units = n // unit
    start, stop = ranks.part(units)
    largest = -(-units // ranks.world)  # units of the largest part (the first rank's)
    per = max(1, micro // unit if micro else largest)
    count = -(-largest // per)
    out = []
    for i in range(count):
        lo, hi = start + i * per, min(stop, start + (i + 1) * per)
        out.append((lo * unit, hi * unit, True) if lo < hi else (start * unit, (start + 1) * unit, False))
    return out


def trainable_state(student: nn.Module) -> dict[str, torch.Tensor]:
    """``{name: full tensor}`` of every trainable parameter, in ``named_parameters`` order (collective under
    FSDP2: every rank must call it)."""
    return {n: full(p.detach()) for n, p in student.named_parameters() if p.requires_grad}

