"""Denser supervision for self-distillation: every transformer block's output, teacher vs student.

The velocity is one signal at the end of the network; a ternary student can match it on average while
its intermediate states (which carry "which colour goes on which object") drift. :class:`BlockOutputs`
records, through forward hooks, the outputs of every block of a diffusers Flux transformer
(``transformer_blocks``: ``(encoder_hidden_states, hidden_states)``; ``single_transformer_blocks``: the
same pair), and :func:`block_matching_loss` compares the student's with the teacher's, each stream of
each block normalised by the teacher's energy so that blocks of different scale weigh alike.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import TernaryConfigError

#: The block lists of a diffusers Flux transformer whose outputs are matched.
BLOCK_LISTS = ("transformer_blocks", "single_transformer_blocks")


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks of ``model`` (a Flux-like transformer) in execution order; raises if it has none."""
    blocks = [b for name in BLOCK_LISTS for b in getattr(model, name, ())]
    if not blocks:
        raise TernaryConfigError(f"{type(model).__name__} has none of {BLOCK_LISTS}: block matching needs a Flux-like transformer")
    return blocks


class BlockOutputs:
    """Context manager: while active, ``self.outputs`` collects each block's output tensors, in order.

    Every entry is a float tensor ``[B, tokens, width]`` (one per stream of each block call).
    """

    def __init__(self, model: nn.Module):
        self.blocks = transformer_blocks(model)
        self.outputs: list[torch.Tensor] = []
        self._handles: list = []

    def _hook(self, module, args, output) -> None:
        for t in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(t, torch.Tensor):
                self.outputs.append(t)

    def __enter__(self) -> "BlockOutputs":
        self.outputs = []
        self._handles = [b.register_forward_hook(self._hook) for b in self.blocks]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def per_record_relative_error(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """float32 ``[B]``: ``||s_b - t_b||^2 / (||t_b||^2 + eps)`` over all but the first dimension.

    Args:
        student: float tensor ``[B, ...]`` (carries the gradient).
        teacher: float tensor of the same shape (no gradient needed).
    """
    if student.shape != teacher.shape:
        raise TernaryConfigError(f"student block output {tuple(student.shape)} != teacher's {tuple(teacher.shape)}")
    s, t = student.float().flatten(1), teacher.float().flatten(1)
    return (s - t).pow(2).sum(1) / (t.pow(2).sum(1) + 1e-6)


def block_matching_loss(student_outputs: list[torch.Tensor], teacher_outputs: list[torch.Tensor]) -> torch.Tensor:
    """float32 ``[B]``: the mean over blocks and streams of :func:`per_record_relative_error`.

    Args:
        student_outputs, teacher_outputs: the ``outputs`` of two :class:`BlockOutputs` over the same
            inputs (same length, matching shapes ``[B, tokens, width]``).
    """
    if len(student_outputs) != len(teacher_outputs) or not student_outputs:
        raise TernaryConfigError(f"block matching needs the same non-zero number of block outputs "
                                 f"(student {len(student_outputs)}, teacher {len(teacher_outputs)})")
    return torch.stack([per_record_relative_error(s, t) for s, t in zip(student_outputs, teacher_outputs)]).mean(0)
