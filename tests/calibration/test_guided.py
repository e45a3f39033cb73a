"""The guided-velocity term of self-distillation (calibration/guided.py, TrajectoryDataset.paired_batch, distill._loss)."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torch_ternary import TernaryConfigError
from torch_ternary.calibration import DistillConfig, TrajectoryDataset, record_trajectories
from torch_ternary.calibration.distill import _loss, distill
from torch_ternary.calibration.distributed import Ranks
from torch_ternary.calibration.guided import cfg_pairs, guided_error, sampler_guidance_scale
from torch_ternary.calibration.parallel import local_rows, micro_batches
from torch_ternary.calibration.trajectories import TrajectoryError
from torch_ternary.mini.pipeline import build_pipeline
from torch_ternary.mini.text import MAX_TOKENS

from .students import trainable_student

PROMPTS = ["two squares", "a blue square and a triangle", "a red circle"]
AC = dict(device_type="cpu", dtype=torch.bfloat16, enabled=False)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.manual_seed(0)
    pipe = build_pipeline()  # a fresh Mini FLUX pipeline: default sampling, true CFG at scale 4
    folder = record_trajectories(pipe, PROMPTS, tmp_path_factory.mktemp("t"), batch_size=2, progress=False,
                                 num_inference_steps=3)
    return pipe, TrajectoryDataset(folder)


def test_cfg_pairs_finds_exactly_the_rows_sharing_x_t_and_timestep():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(9, 4, 3, generator=g).half()
    t = torch.rand(9, generator=g)
    x[5], t[5] = x[1], t[1]          # pair (1, 5)
    x[8], t[8] = x[2], t[2]          # pair (2, 8)
    x[6] = x[0]                      # same x_t at another timestep: no pair
    x[7], t[7] = x[3], t[3]
    x[4], t[4] = x[3], t[3]          # three rows alike: not a CFG pair
    assert cfg_pairs(x, t).tolist() == [[1, 5], [2, 8]]
    assert cfg_pairs(x[:1], t[:1]).shape == (0, 2)
    with pytest.raises(TernaryConfigError):
        cfg_pairs(x, t[:3])


def test_recorded_pairs_are_conditional_then_unconditional(setup):
    pipe, data = setup
    for shard in data.shards:
        pairs = cfg_pairs(shard["hidden_states"], shard["timestep"])
        assert pairs.shape[0] * 2 == shard["timestep"].shape[0]  # every record has its CFG partner
        cond, uncond = shard["text_index"][pairs[:, 0]], shard["text_index"][pairs[:, 1]]
        # the unconditional partner carries the empty prompt's conditioning: one text row for all of them
        assert uncond.unique().numel() == 1 and not (cond == uncond[0]).any()
        with torch.no_grad():
            empty, pooled, _ = pipe.encode_prompt("", "", max_sequence_length=MAX_TOKENS)
        torch.testing.assert_close(shard["encoder_hidden_states"][uncond[0]], empty[0].to(torch.float16))
        torch.testing.assert_close(shard["pooled_projections"][uncond[0]], pooled[0].to(torch.float16))


@settings(max_examples=40, deadline=None)
@given(pairs=st.integers(1, 5), elems=st.integers(1, 7), g=st.floats(1.01, 12.0), seed=st.integers(0, 2**16))
def test_guided_error_is_the_error_of_the_guided_velocity(pairs, elems, g, seed):
    gen = torch.Generator().manual_seed(seed)
    pred, target = torch.randn(2 * pairs, elems, generator=gen), torch.randn(2 * pairs, elems, generator=gen)
    p, v = pred.double(), target.double()
    guided_pred = p[1::2] + g * (p[0::2] - p[1::2])
    guided_target = v[1::2] + g * (v[0::2] - v[1::2])
    want = (guided_pred - guided_target).pow(2).mean(1) / g**2
    torch.testing.assert_close(guided_error(pred, target, g).double(), want, rtol=1e-4, atol=1e-6)


def test_guided_error_refuses_unpaired_batches():
    with pytest.raises(TernaryConfigError):
        guided_error(torch.zeros(3, 2), torch.zeros(3, 2), 4.0)
    with pytest.raises(TernaryConfigError):
        guided_error(torch.zeros(4, 2), torch.zeros(4, 3), 4.0)


def test_paired_batch_interleaves_partners(setup):
    _, data = setup
    kwargs, target = data.paired_batch(6, np.random.default_rng(0))
    assert target.shape[0] == 6
    assert torch.equal(kwargs["hidden_states"][0::2], kwargs["hidden_states"][1::2])
    assert torch.equal(kwargs["timestep"][0::2], kwargs["timestep"][1::2])
    assert not torch.equal(kwargs["encoder_hidden_states"][0::2], kwargs["encoder_hidden_states"][1::2])


def test_paired_batch_refuses_trajectories_without_cfg(tmp_path):
    torch.manual_seed(0)
    pipe = build_pipeline(sampling={"true_cfg_scale": 1.0})
    folder = record_trajectories(pipe, PROMPTS[:2], tmp_path, batch_size=2, progress=False, num_inference_steps=2)
    with pytest.raises(TrajectoryError, match="without true classifier-free guidance"):
        TrajectoryDataset(folder).paired_batch(4, np.random.default_rng(0))
    with pytest.raises(TernaryConfigError, match="true_cfg_scale 1.0"):
        sampler_guidance_scale(pipe)
    assert sampler_guidance_scale(pipe, {"true_cfg_scale": 2.5}) == 2.5


def test_loss_adds_the_guided_term_and_splits_by_pairs_over_ranks(setup):
    pipe, data = setup
    student = trainable_student(pipe)
    kwargs, target = data.paired_batch(6, np.random.default_rng(1))
    cfg = DistillConfig(batch_size=6, guided_loss_weight=2.0, guidance_scale=4.0, high_noise_weight=1.0)
    with torch.no_grad():
        pred = student(**kwargs)[0]
        one = _loss(student, None, kwargs, target, cfg, AC)
        per = (pred - target).pow(2).flatten(1).mean(1) + 2.0 * guided_error(pred, target, 4.0).repeat_interleave(2)
        w = 1 + kwargs["timestep"].float()
        torch.testing.assert_close(one, (w * per).sum() / w.sum(), rtol=1e-5, atol=1e-8)
        # 3 pairs on 2 ranks: rank 0 takes pairs 0-1 (rows 0-3), rank 1 pair 2; the ranks' mean is the batch's loss
        keys = TrajectoryDataset.PER_RECORD
        parts = [local_rows(kwargs, target, keys, Ranks(r, 2), unit=2)[1].shape[0] for r in range(2)]
        assert parts == [4, 2]
        two = [_loss(student, None, kwargs, target, cfg, AC, Ranks(r, 2), keys) for r in range(2)]
    torch.testing.assert_close((two[0] + two[1]) / 2, one, rtol=1e-5, atol=1e-8)
    # a teacher matching itself has neither plain nor guided error
    with torch.no_grad():
        assert float(_loss(pipe.transformer, None, kwargs, pipe.transformer(**kwargs)[0], cfg, AC)) == 0.0


def test_config_and_distill_refuse_what_cannot_pair(setup):
    pipe, data = setup
    with pytest.raises(TernaryConfigError, match="even batch_size"):
        DistillConfig(batch_size=5, guided_loss_weight=1.0)
    with pytest.raises(TernaryConfigError):
        DistillConfig(guided_loss_weight=-1.0)
    with pytest.raises(TernaryConfigError, match="> 1"):
        DistillConfig(guided_loss_weight=1.0, guidance_scale=1.0)
    with pytest.raises(TernaryConfigError, match="guidance_scale"):
        distill(trainable_student(pipe), data, DistillConfig(steps=1, batch_size=4, guided_loss_weight=1.0))
    with pytest.raises(TernaryConfigError, match="even micro_batch"):
        DistillConfig(batch_size=4, guided_loss_weight=1.0, micro_batch=3)
    with pytest.raises(TernaryConfigError, match="micro_batch"):
        DistillConfig(micro_batch=-1)


def test_micro_batches_add_up_to_the_batch_loss_and_gradient(setup):
    """Gradient accumulation (DistillConfig.micro_batch): the micro-batches' losses (pairs kept whole, a padding
    piece weighed 0) and the gradients their backward passes accumulate are the whole batch's."""
    pipe, data = setup
    kwargs, target = data.paired_batch(6, np.random.default_rng(2))
    cfg = DistillConfig(batch_size=6, guided_loss_weight=2.0, guidance_scale=4.0, high_noise_weight=1.0, micro_batch=2)
    keys = TrajectoryDataset.PER_RECORD
    grads = []
    for pieces in (None, micro_batches(6, 2, Ranks(), unit=2) + [(0, 2, False)]):
        student = trainable_student(pipe)
        if pieces is None:
            total = _loss(student, None, kwargs, target, cfg, AC, Ranks(), keys)
            total.backward()
        else:
            assert [p[:2] for p in pieces[:3]] == [(0, 2), (2, 4), (4, 6)]
            total = 0.0
            for piece in pieces:
                part = _loss(student, None, kwargs, target, cfg, AC, Ranks(), keys, rows=piece)
                part.backward()
                total = total + part.detach()
            assert float(part) == 0.0  # the padding piece
        grads.append((float(total), {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}))
    assert grads[0][1] and grads[0][1].keys() == grads[1][1].keys()
    assert abs(grads[0][0] - grads[1][0]) <= 1e-6 * abs(grads[0][0])
    for name, g in grads[0][1].items():  # float32 sums in another order: relative Frobenius error
        assert float((grads[1][1][name] - g).norm() / g.norm()) <= 1e-5, name


def test_guided_distillation_trains(setup, tmp_path):
    pipe, data = setup
    student = trainable_student(pipe)
    cfg = DistillConfig(steps=4, batch_size=4, warmup=1, checkpoint_every=0, guided_loss_weight=1.0, guidance_scale=4.0)
    before = {n: p.detach().clone() for n, p in student.named_parameters() if p.requires_grad}
    losses = distill(student, data, cfg, checkpoint_dir=tmp_path)
    assert len(losses) == 1 and np.isfinite(losses[0])
    changed = [n for n, p in student.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert any(n.endswith(".latent") for n in changed) and any(n.endswith(".scale") for n in changed)
