"""A trainable ternary student of a pipeline's transformer, shared by the distillation tests."""

import copy

from torch_ternary.calibration.trainable import make_trainable
from torch_ternary.quantization import quantize_
from torch_ternary.quantization.config import TernaryConfig


def trainable_student(pipe):
    """A QAT student of ``pipe.transformer``: absmean ternary copy, every parameter frozen except the
    :class:`~torch_ternary.calibration.trainable.TrainableTernaryLinear` latents and scales."""
    student = copy.deepcopy(pipe.transformer)
    quantize_(student, TernaryConfig())
    for p in student.parameters():
        p.requires_grad_(False)
    make_trainable(student, latent_from=pipe.transformer)
    return student
