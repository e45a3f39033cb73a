"""Mini FLUX's model side: tokenizers, pixel-space VAE, the FluxPipeline wrapper."""

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
