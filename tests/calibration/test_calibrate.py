"""End to end on an untrained Mini FLUX pipeline (fast settings): trajectories, every method, resume."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from torch_ternary import TernaryConfigError, TernaryTensor
from torch_ternary.calibration import (
    CalibrationConfig,
    DistillConfig,
    TrajectoryDataset,
    TrajectoryError,
    calibrate,
    record_trajectories,
)
from torch_ternary.mini.pipeline import build_pipeline

PROMPTS = ["one red circle", "two squares", "a blue square and a triangle", "one yellow triangle"]
FAST = dict(num_inference_steps=2)


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    return build_pipeline()


def test_trajectories_record_resume_and_read(tmp_path, pipe):
    folder = record_trajectories(pipe, PROMPTS, tmp_path / "t", batch_size=2, progress=False, **FAST)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert [s["records"] for s in manifest["shards"]] == [8, 8]  # 2 prompts x 2 steps x (cond + uncond)
    data = TrajectoryDataset(folder)
    assert len(data) == 16
    kwargs, v = data.batch(5, np.random.default_rng(0))
    assert kwargs["hidden_states"].shape == (5, 64, 48) and v.shape == (5, 64, 48)
    assert kwargs["encoder_hidden_states"].shape == (5, 12, 128) and kwargs["pooled_projections"].shape == (5, 64)
    # the recorded velocity is what the teacher outputs for the recorded inputs
    with torch.no_grad():
        out = pipe.transformer(**kwargs)[0]
    torch.testing.assert_close(out, v, rtol=2e-3, atol=2e-3)  # float16 storage
    shard0 = (folder / manifest["shards"][0]["file"]).stat().st_mtime_ns
    record_trajectories(pipe, PROMPTS, folder, batch_size=2, progress=False, **FAST)  # resume: nothing to redo
    assert (folder / manifest["shards"][0]["file"]).stat().st_mtime_ns == shard0
    with pytest.raises(TrajectoryError, match="other prompts"):
        record_trajectories(pipe, PROMPTS[:2], folder, batch_size=2, progress=False, **FAST)
    (folder / manifest["shards"][1]["file"]).unlink()
    with pytest.raises(TrajectoryError, match="1 of 2"):
        TrajectoryDataset(folder)


@pytest.mark.parametrize("method", ["absmean", "layerwise", "layerwise_gptq", "distill_scales", "distill_qat"])
def test_every_method_gives_a_standard_ternary_transformer(tmp_path, pipe, method):
    cfg = CalibrationConfig(method=method, trajectory_batch=2, pipe_kwargs=FAST, layerwise_records=32,
                            distill=DistillConfig(steps=3, batch_size=4, warmup=1, checkpoint_every=0))
    teacher_state = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    result = calibrate(pipe, PROMPTS, tmp_path, cfg)
    ternary = [m for m in result.transformer.modules() if isinstance(getattr(m, "weight", None), TernaryTensor)]
    assert len(ternary) == 52
    assert all(type(p) is torch.nn.Parameter or isinstance(p, TernaryTensor) for p in result.transformer.parameters())
    assert not any("latent" in n or "lora" in n for n, _ in result.transformer.named_parameters())
    for k, v in pipe.transformer.state_dict().items():  # the teacher is untouched
        assert torch.equal(v, teacher_state[k]), k
    if method.startswith("layerwise"):
        errs = result.layer_errors.values()
        assert sum(a for _, a in errs) < sum(b for b, _ in errs)
    if method.startswith("distill"):
        assert len(result.losses) == 1 and (tmp_path / f"distill_{method}" / "distill.json").exists()


def test_inplace_and_config_errors(tmp_path, pipe):
    with pytest.raises(TernaryConfigError):
        CalibrationConfig(method="magic")
    with pytest.raises(TernaryConfigError, match="trajectory_batch"):
        CalibrationConfig(trajectory_batch=0)
    with pytest.raises(TernaryConfigError, match="per-channel"):
        CalibrationConfig(method="layerwise", ternary=__import__("torch_ternary").TernaryConfig(granularity="per_tensor"))
    with pytest.raises(TernaryConfigError, match="inplace"):
        calibrate(pipe, PROMPTS, tmp_path, CalibrationConfig(method="distill_qat"), inplace=True)


def test_gptq_init_starts_distillation_from_the_gptq_solution(tmp_path, pipe):
    common = dict(trajectory_batch=2, pipe_kwargs=FAST, layerwise_records=32,
                  distill=DistillConfig(steps=1, batch_size=4, warmup=1, checkpoint_every=0))
    gptq = calibrate(pipe, PROMPTS, tmp_path / "a", CalibrationConfig(method="layerwise_gptq", **common))
    init = calibrate(pipe, PROMPTS, tmp_path / "b", CalibrationConfig(method="distill_scales", gptq_init=True, **common))
    plain = calibrate(pipe, PROMPTS, tmp_path / "c", CalibrationConfig(method="distill_scales", **common))
    assert init.layer_errors.keys() == gptq.layer_errors.keys()
    for name, (_, after) in gptq.layer_errors.items():
        assert init.layer_errors[name][1] == pytest.approx(after, rel=1e-5), name
    assert any(plain.layer_errors[n][1] != pytest.approx(init.layer_errors[n][1], rel=1e-3) for n in init.layer_errors)
    with pytest.raises(TernaryConfigError, match="gptq_init"):
        CalibrationConfig(method="layerwise", gptq_init=True)
    with pytest.raises(TernaryConfigError, match="gptq_init"):
        CalibrationConfig(method="distill_qat", gptq_init=True, layerwise_init=False)


def test_target_labels_the_states_the_pipeline_visits(tmp_path, pipe):
    """With ``target``, x_t follow the sampling pipeline's transformer and the velocity is the target's."""
    import copy

    from torch_ternary import TernaryConfig, quantize_

    student = copy.deepcopy(pipe.transformer)
    quantize_(student, TernaryConfig())
    student_pipe = copy.copy(pipe)
    student_pipe.transformer = student
    on = record_trajectories(student_pipe, PROMPTS[:2], tmp_path / "on", batch_size=2, progress=False,
                             target=pipe.transformer, **FAST)
    own = record_trajectories(student_pipe, PROMPTS[:2], tmp_path / "own", batch_size=2, progress=False, **FAST)
    teacher = record_trajectories(pipe, PROMPTS[:2], tmp_path / "teacher", batch_size=2, progress=False, **FAST)
    rows = torch.arange(8)
    (k_on, v_on), (k_own, v_own), (k_t, _) = (TrajectoryDataset(f).take(TrajectoryDataset(f).shards[0], rows)
                                              for f in (on, own, teacher))
    torch.testing.assert_close(k_on["hidden_states"], k_own["hidden_states"], rtol=0, atol=0)  # the student's states
    assert not torch.allclose(k_on["hidden_states"][4:], k_t["hidden_states"][4:], atol=1e-2)  # not the teacher's
    with torch.no_grad():
        torch.testing.assert_close(v_on, pipe.transformer(**k_on)[0], rtol=2e-3, atol=2e-3)  # teacher labels
    assert not torch.allclose(v_on, v_own, atol=1e-2)
    with pytest.raises(TrajectoryError, match="other prompts/settings"):  # a folder never mixes the two kinds
        record_trajectories(student_pipe, PROMPTS[:2], tmp_path / "on", batch_size=2, progress=False, **FAST)
    pooled = TrajectoryDataset([teacher, on])
    assert len(pooled) == 16 and len(pooled.shards) == 2 and pooled.prompts == PROMPTS[:2] * 2
    with pytest.raises(TrajectoryError):
        TrajectoryDataset([])


def test_on_policy_phase(tmp_path, pipe, monkeypatch):
    import importlib

    cal = importlib.import_module("torch_ternary.calibration.calibrate")  # the package attribute is the function

    phases = []
    real_distill = cal.distill
    monkeypatch.setattr(cal, "distill", lambda student, data, c, **kw: phases.append(c) or real_distill(student, data, c, **kw))
    with pytest.raises(TernaryConfigError, match="both"):
        CalibrationConfig(on_policy_prompts=2)
    with pytest.raises(TernaryConfigError, match="distill"):
        CalibrationConfig(method="layerwise", on_policy_prompts=2, on_policy_steps=2)
    with pytest.raises(TernaryConfigError, match="lr_factor"):
        CalibrationConfig(on_policy_prompts=2, on_policy_steps=2, on_policy_lr_factor=0.0)
    with pytest.raises(TernaryConfigError, match="inplace"):
        calibrate(pipe, PROMPTS, tmp_path, CalibrationConfig(method="distill_scales", layerwise_init=False,
                                                             on_policy_prompts=2, on_policy_steps=2), inplace=True)
    cfg = CalibrationConfig(method="distill_qat", trajectory_batch=2, pipe_kwargs=FAST, layerwise_records=32,
                            distill=DistillConfig(steps=2, batch_size=4, warmup=1, checkpoint_every=0),
                            on_policy_prompts=2, on_policy_steps=2, on_policy_lr_factor=0.5)
    result = calibrate(pipe, PROMPTS, tmp_path, cfg)
    manifest = json.loads((tmp_path / "trajectories_on_policy" / "manifest.json").read_text())
    assert manifest["prompts"] == PROMPTS[:2] and manifest["labelled_by_target"]
    assert (tmp_path / "distill_distill_qat_on_policy" / "distill.json").exists()
    opt_state = load_file(str(tmp_path / "distill_distill_qat_on_policy" / "distill.safetensors"))
    assert any(k.endswith(".latent.exp_avg") for k in opt_state)  # QAT latents kept training in this phase
    assert len(result.losses) == 2 and {"on_policy_trajectories", "on_policy_distill"} <= set(result.seconds)
    assert [c.steps for c in phases] == [2, 2]
    assert phases[1].lr == pytest.approx(0.5 * phases[0].lr) and phases[1].scale_lr == pytest.approx(0.5 * phases[0].scale_lr)
    assert not any("latent" in n for n, _ in result.transformer.named_parameters())
    assert sum(isinstance(m.weight, TernaryTensor) for m in result.transformer.modules() if hasattr(m, "weight")) == 52
