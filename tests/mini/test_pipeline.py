"""Mini FLUX's model side: tokenizers, pixel-space VAE, the FluxPipeline wrapper, the trainer."""

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline

from torch_ternary.mini import evaluation_prompts, sample_training_example
from torch_ternary.mini.model import PixelSpaceVAE
from torch_ternary.mini.pipeline import build_pipeline, generate
from torch_ternary.mini.text import MAX_TOKENS, build_tokenizer, vocabulary


def test_tokenizers_cover_every_caption():
    rng = np.random.default_rng(0)
    captions = evaluation_prompts() + [sample_training_example(rng)[1] for _ in range(500)]
    unk = vocabulary()["[UNK]"]
    for with_bos in (True, False):
        tok = build_tokenizer(with_bos)
        ids = tok(captions, padding="max_length", max_length=MAX_TOKENS, truncation=False).input_ids
        assert all(len(row) == MAX_TOKENS for row in ids), "a caption is longer than MAX_TOKENS"
        assert not any(unk in row for row in ids)
        assert all(row.count(vocabulary()["[EOS]"]) == 1 for row in ids)


def test_pixel_vae_matches_flux_packing():
    """Image -> encode -> FluxPipeline._pack/_unpack -> pipeline-style unscale -> decode gives the image back."""
    vae = PixelSpaceVAE(scaling_factor=2.0, shift_factor=-0.5)
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    packed = FluxPipeline._pack_latents(vae.encode(x), 3, 12, 16, 16)
    assert packed.shape == (3, 64, 48)
    pipe = build_pipeline(vae_scaling=2.0, vae_shift=-0.5)
    assert pipe.vae_scale_factor == 2
    latents = FluxPipeline._unpack_latents(packed, 32, 32, pipe.vae_scale_factor)
    back = pipe.vae.decode(latents / 2.0 - 0.5, return_dict=False)[0]
    torch.testing.assert_close(back, x, rtol=0, atol=1e-6)
    with pytest.raises(ValueError):
        PixelSpaceVAE(latent_channels=5)


def test_generate_shapes_and_determinism():
    torch.manual_seed(0)
    pipe = build_pipeline()
    a = generate(pipe, ["a red circle", "two squares"], [0, 1])
    b = generate(pipe, ["a red circle", "two squares"], [0, 1])
    assert a.shape == (4, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a[0], a[1])


def test_trainer_resume_is_exact(tmp_path):
    from torch_ternary.mini.train import Trainer, parse_args

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
    from torch_ternary.mini.train import main, training_device

    assert training_device("cpu") == torch.device("cpu")
    for bad in ("meta", "tpu0", "mps"):
        with pytest.raises(UnsupportedDeviceError):
            training_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(UnsupportedDeviceError, match="CUDA"):
            main(["--out", "/nonexistent/never-created", "--device", "cuda"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_trainer_on_cuda_resumes_on_cpu(tmp_path):
    from torch_ternary.mini.train import Trainer, parse_args

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
