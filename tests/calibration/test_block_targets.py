"""Block matching and high-noise weighting in self-distillation (calibration/block_targets.py, distill._loss)."""

import numpy as np
import pytest
import torch

from torch_ternary import TernaryConfigError
from torch_ternary.calibration import DistillConfig, TrajectoryDataset, record_trajectories
from torch_ternary.calibration.block_targets import (
    BlockOutputs,
    block_matching_loss,
    per_record_relative_error,
    transformer_blocks,
)
from torch_ternary.calibration.distill import _loss, distill
from torch_ternary.mini.pipeline import build_pipeline

from .students import trainable_student

PROMPTS = ["two squares", "a blue square and a triangle"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.manual_seed(0)
    pipe = build_pipeline()
    folder = record_trajectories(pipe, PROMPTS, tmp_path_factory.mktemp("t"), batch_size=2, progress=False,
                                 num_inference_steps=2)
    data = TrajectoryDataset(folder)
    return pipe, data


def test_block_outputs_are_every_stream_of_every_block_in_order(setup):
    pipe, data = setup
    t = pipe.transformer
    kwargs, _ = data.batch(3, np.random.default_rng(0))
    with torch.no_grad(), BlockOutputs(t) as rec:
        t(**kwargs)
    blocks = transformer_blocks(t)
    assert len(blocks) == 6 and len(rec.outputs) == 2 * len(blocks)  # (text, image) per block
    assert rec.outputs[0].shape == kwargs["encoder_hidden_states"].shape[:2] + (t.inner_dim,)
    assert rec.outputs[-1].shape == (3, 64, t.inner_dim)
    assert not any(h for b in blocks for h in b._forward_hooks.values())  # hooks removed on exit
    with pytest.raises(TernaryConfigError, match="Flux-like"):
        BlockOutputs(torch.nn.Linear(2, 2))


def test_relative_error_and_loss_values():
    t = torch.randn(4, 5, 6)
    s = t.clone()
    s[1] += 0.5 * t[1]  # record 1: error 0.25 of its energy
    err = per_record_relative_error(s, t)
    torch.testing.assert_close(err, torch.tensor([0.0, 0.25, 0.0, 0.0]), atol=1e-5, rtol=1e-5)
    loss = block_matching_loss([s, t], [t, t])
    torch.testing.assert_close(loss, torch.tensor([0.0, 0.125, 0.0, 0.0]), atol=1e-5, rtol=1e-5)
    with pytest.raises(TernaryConfigError):
        block_matching_loss([s], [t, t])
    with pytest.raises(TernaryConfigError):
        per_record_relative_error(s[:2], t)


def test_loss_terms(setup):
    pipe, data = setup
    student = trainable_student(pipe)
    kwargs, target = data.batch(4, np.random.default_rng(1))
    ac = dict(device_type="cpu", dtype=torch.bfloat16, enabled=False)
    plain = _loss(student, None, kwargs, target, DistillConfig(), ac)
    with torch.no_grad():
        pred = student(**kwargs)[0]
    per = (pred - target).pow(2).flatten(1).mean(1)
    torch.testing.assert_close(plain, per.mean())
    # the teacher against itself has no block error: the block term of a copy of the teacher is 0
    teacher = pipe.transformer
    with torch.no_grad():
        self_block = _loss(teacher, teacher, kwargs, target, DistillConfig(block_loss_weight=5.0), ac)
        self_plain = _loss(teacher, None, kwargs, target, DistillConfig(), ac)
    assert float(self_block) == pytest.approx(float(self_plain), rel=1e-5)
    with_block = _loss(student, teacher, kwargs, target, DistillConfig(block_loss_weight=1.0), ac)
    assert float(with_block) > float(plain)  # a ternary student's blocks differ from the teacher's
    # high-noise weighting: the weighted mean with weights 1 + a t
    w = 1 + 2.0 * kwargs["timestep"].float()
    weighted = _loss(student, None, kwargs, target, DistillConfig(high_noise_weight=2.0), ac)
    torch.testing.assert_close(weighted, (w * per).sum() / w.sum(), rtol=1e-5, atol=1e-7)
    with pytest.raises(TernaryConfigError):
        DistillConfig(block_loss_weight=-1)


def test_block_distillation_runs_and_needs_a_teacher(setup, tmp_path):
    pipe, data = setup
    student = trainable_student(pipe)
    cfg = DistillConfig(steps=4, batch_size=4, warmup=1, checkpoint_every=0, block_loss_weight=1.0, high_noise_weight=1.0)
    with pytest.raises(TernaryConfigError, match="teacher"):
        distill(student, data, cfg)
    before = {n: p.detach().clone() for n, p in student.named_parameters() if p.requires_grad}
    losses = distill(student, data, cfg, checkpoint_dir=tmp_path, teacher=pipe.transformer)
    assert len(losses) == 1 and np.isfinite(losses[0])
    changed = [n for n, p in student.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert any(n.endswith(".latent") for n in changed) and any(n.endswith(".scale") for n in changed)
