"""Calibration across processes: ``torch.distributed`` as ``torchrun`` sets it up (no communication layer of our own).

``torchrun --nproc-per-node N ... torch-ternary calibrate ...`` exports ``RANK`` / ``WORLD_SIZE`` /
``MASTER_ADDR``; :func:`ranks_from_env` then starts the default process group (NCCL for CUDA, gloo on
the CPU) and every phase of :func:`~torch_ternary.calibration.calibrate` splits its work:

- teacher trajectories: shard ``i`` (prompts ``i*b .. i*b+b-1``) is recorded by rank ``i % N``, into
  the same folder and format as one process writes; rank 0 writes the manifest;
- layer-wise calibration: replayed batches ``j`` go to rank ``j % N``; input moments are all-reduced;
  the solve of linear ``l`` runs on rank ``l % N`` and its codes, scale and bias are broadcast;
- self-distillation: every rank draws the same global batch (same generator) and trains on its
  contiguous part of it (:meth:`Ranks.part`); scales-only runs under DDP, QAT under FSDP2
  (``fully_shard`` per block), the loss weighted so that the gradient equals the one-process gradient
  of the global batch whatever N divides;
- checkpoints: full tensors gathered and written by rank 0 (safetensors + JSON), readable by any N.

A rank that dies (even SIGKILL) ends the job: torchrun's agent stops the other workers and reports the
failed rank and its signal; a rank blocked in a collective gives up after :data:`TIMEOUT_S`.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import TernaryError

#: Seconds a collective may wait for a peer before the rank raises (env ``TORCH_TERNARY_DIST_TIMEOUT``).
TIMEOUT_S = float(os.environ.get("TORCH_TERNARY_DIST_TIMEOUT", "300"))


class DistributedCalibrationError(TernaryError, RuntimeError):
    """A distributed calibration that cannot go on (a lost rank, an unsupported layout, a too-small batch)."""


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job. ``Ranks()`` is the one-process job (no collectives at all)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """True on rank 0 (the rank that writes manifests, checkpoints and the exported model)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def part(self, n: int) -> tuple[int, int]:
        """``(start, stop)`` of this rank's contiguous part of ``n`` items: the first ``n % world`` ranks
        take one more; a rank may get none when ``n < world``."""
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (1 if self.rank < extra else 0)

    def owns(self, index: int) -> bool:
        """Round-robin ownership of item ``index`` (shards, replay batches, layer solves)."""
        return index % self.world == self.rank

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def ranks_from_env(device: str | torch.device = "cpu") -> Ranks:
    """The job this process belongs to: the initialised default group, else one started from torchrun's
    environment (``WORLD_SIZE`` > 1; NCCL when ``device`` is CUDA, gloo otherwise), else ``Ranks()``."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    if not dist.is_available():
        raise DistributedCalibrationError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=TIMEOUT_S))
    return Ranks(dist.get_rank(), dist.get_world_size())


def all_reduce_sum(t: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """``t`` summed over ranks, in place (no-op for one process)."""
    if ranks.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast(t: torch.Tensor, src: int, ranks: Ranks) -> torch.Tensor:
    """``t`` from rank ``src`` on every rank, in place (no-op for one process)."""
    if ranks.distributed:
        dist.broadcast(t, src)
    return t


def full(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor of ``t``'s full value (gathers an FSDP2 ``DTensor`` shard: collective)."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def like(value: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """``value`` (the full tensor) laid out like ``param``: its local shard when ``param`` is a ``DTensor``."""
    if hasattr(param, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(value.to(param.device, param.dtype), param.device_mesh, param.placements)
    return value.to(param.device, param.dtype)
