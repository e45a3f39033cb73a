"""Mini FLUX's trainer (``torch_ternary.mini.train``): exact resume, devices, schedule phases, timestep shift."""

import json

import pytest
import torch

from torch_ternary.mini.grammar import category_of
from torch_ternary.mini.pipeline import generate
from torch_ternary.mini.train import Trainer, main, parse_args, shifted_timesteps

TINY = ["--batch", "4", "--warmup", "2", "--threads", "1", "--eval-every", "0"]


def test_trainer_resume_is_exact(tmp_path):
    args = parse_args(["--out", str(tmp_path), "--batch", "4", "--steps", "4", "--warmup", "2", "--threads", "1"])
    straight = Trainer(args)
    losses = [straight.train_step() for _ in range(4)]
    first = Trainer(args)
    [first.train_step() for _ in range(2)]
    first.save_checkpoint(tmp_path)
    resumed = Trainer(args)
    resumed.load_checkpoint(tmp_path)
    assert resumed.step == 2
    assert [resumed.train_step() for _ in range(2)] == losses[2:]
    for k, v in straight.ema.items():
        assert torch.equal(resumed.ema[k], v), k
    resumed.save_weights(tmp_path / "w")
    from torch_ternary.mini.pipeline import load_pipeline

    pipe = load_pipeline(path=tmp_path / "w")
    assert generate(pipe, ["a circle"], [0]).shape == (1, 32, 32, 3)


def test_training_device_is_checked():
    from torch_ternary.errors import UnsupportedDeviceError
    from torch_ternary.mini.train import training_device

    assert training_device("cpu") == torch.device("cpu")
    for bad in ("meta", "tpu0", "mps"):
        with pytest.raises(UnsupportedDeviceError):
            training_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(UnsupportedDeviceError, match="CUDA"):
            main(["--out", "/nonexistent/never-created", "--device", "cuda"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_trainer_on_cuda_resumes_on_cpu(tmp_path):
    common = ["--out", str(tmp_path), "--batch", "4", "--steps", "4", "--warmup", "2", "--threads", "1"]
    gpu = Trainer(parse_args(common + ["--device", "cuda"]))
    assert all(torch.isfinite(torch.tensor(gpu.train_step())) for _ in range(2))
    gpu.save_checkpoint(tmp_path)
    cpu = Trainer(parse_args(common))
    cpu.load_checkpoint(tmp_path)
    assert cpu.step == 2 and all(v.device.type == "cpu" for v in cpu.ema.values())
    for k, v in gpu.ema.items():
        torch.testing.assert_close(cpu.ema[k], v.cpu(), rtol=0, atol=0)
    cpu.train_step()


def test_shifted_timesteps_moves_mass_to_high_noise():
    t = torch.sigmoid(torch.randn(200_000, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(shifted_timesteps(t, 1.0), t)
    s3 = shifted_timesteps(t, 3.0)
    assert bool(((s3 > 0) & (s3 < 1)).all()) and bool((s3 >= t).all())
    assert bool((shifted_timesteps(torch.sort(t.double()).values, 3.0).diff() >= 0).all())  # monotone: stretched, not reordered
    assert float((t > 0.9).float().mean()) == pytest.approx(0.014, abs=0.002)
    assert float((s3 > 0.9).float().mean()) == pytest.approx(0.136, abs=0.005)
    torch.testing.assert_close(shifted_timesteps(torch.tensor([0.5]), 3.0), torch.tensor([0.75]))


def test_schedule_start_restarts_warmup_and_cosine(tmp_path):
    trainer = Trainer(parse_args(["--out", str(tmp_path), "--steps", "300", "--lr", "1e-3", "--warmup", "10",
                                  "--schedule-start", "100", "--final-lr-fraction", "0.1"]))
    assert trainer.lr_at(0) == trainer.lr_at(100) == pytest.approx(1e-4)  # first warm-up step of the phase
    assert trainer.lr_at(109) == pytest.approx(1e-3)
    assert trainer.lr_at(300) == pytest.approx(1e-4)  # the phase ends at final_lr_fraction
    assert trainer.lr_at(205) == pytest.approx(0.55e-3)  # half way through the cosine


def test_phase_run_until_then_resume(tmp_path):
    base = ["--out", str(tmp_path), *TINY]
    main(base + ["--steps", "3"])
    main(base + ["--steps", "7", "--resume", "--schedule-start", "3", "--timestep-shift", "3", "--until", "5"])
    state = json.loads((tmp_path / "checkpoint.json").read_text())
    assert state["step"] == 5  # --until stopped the run; the schedule still ends at 7
    main(base + ["--steps", "7", "--resume", "--schedule-start", "3", "--timestep-shift", "3"])
    meta = json.loads((tmp_path / "mini_flux.json").read_text())
    phases = meta["training"]["phases"]
    assert meta["training"]["steps"] == 7
    assert [(p["from_step"], p["timestep_shift"], p["schedule_start"]) for p in phases] == [(0, 1.0, 0), (3, 3.0, 3)]
    with pytest.raises(SystemExit):
        main(base + ["--steps", "7", "--schedule-start", "8"])
    with pytest.raises(SystemExit):
        main(base + ["--steps", "7", "--timestep-shift", "0"])


def test_category_weights_reach_the_batches_and_the_phase_record(tmp_path):
    args = parse_args(["--out", str(tmp_path), *TINY, "--steps", "2",
                       "--category-weights", "position=1,single_object=0,colors=0,counting=0,two_objects=0,color_attr=0",
                       "--caption-dropout", "0"])
    assert args.category_weights["position"] == 1.0
    _, captions = Trainer(args).batch()
    assert {category_of(c) for c in captions} == {"position"}
    base = ["--out", str(tmp_path), *TINY]
    main(base + ["--steps", "4", "--until", "2"])
    main(base + ["--steps", "4", "--until", "3", "--resume"])  # same settings: no new phase
    main(base + ["--steps", "4", "--resume", "--category-weights", "position=2"])
    phases = json.loads((tmp_path / "mini_flux.json").read_text())["training"]["phases"]
    assert [(p["from_step"], p["category_weights"]) for p in phases] == [(0, None), (3, {"position": 2.0})]


def test_resuming_a_phase_recorded_before_category_weights_adds_no_phase(tmp_path):
    base = ["--out", str(tmp_path), *TINY]
    main(base + ["--steps", "3", "--until", "2"])
    state = json.loads((tmp_path / "checkpoint.json").read_text())
    for phase in state["phases"]:
        del phase["category_weights"]  # as written by the trainer before the option existed
    (tmp_path / "checkpoint.json").write_text(json.dumps(state))
    main(base + ["--steps", "3", "--resume"])
    assert len(json.loads((tmp_path / "mini_flux.json").read_text())["training"]["phases"]) == 1


@pytest.mark.parametrize("bad", ["position", "position=x", "pose=2", "position=-1",
                                 "single_object=0,two_objects=0,counting=0,colors=0,position=0,color_attr=0"])
def test_bad_category_weights_are_rejected(bad, tmp_path):
    with pytest.raises(SystemExit):
        parse_args(["--out", str(tmp_path), "--category-weights", bad])


def test_compiled_training_checkpoints_resume_uncompiled(tmp_path):
    base = ["--out", str(tmp_path), *TINY]
    main(base + ["--steps", "2", "--compile"])
    straight = Trainer(parse_args(base + ["--steps", "3"]))
    straight.load_checkpoint(tmp_path)  # parameter names unchanged by the in-place compile
    assert straight.step == 2 and all(torch.isfinite(v).all() for v in straight.ema.values())
    assert torch.isfinite(torch.tensor(straight.train_step()))
