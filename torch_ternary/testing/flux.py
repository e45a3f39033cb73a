"""FLUX transformer configs (diffusers ``FluxTransformer2DModel``) and builders used by tests, demo and benchmarks.

Needs diffusers (the ``diffusers`` extra). Nothing here downloads anything.
"""

from __future__ import annotations

import torch

#: FLUX.1-dev's transformer config (black-forest-labs/FLUX.1-dev, transformer/config.json).
FLUX_DEV_CONFIG = dict(
    patch_size=1,
    in_channels=64,
    out_channels=None,
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)

#: The tiny config of diffusers' own FluxTransformer2DModel tests.
FLUX_TINY_CONFIG = dict(
    patch_size=1,
    in_channels=4,
    num_layers=1,
    num_single_layers=1,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=32,
    pooled_projection_dim=32,
    axes_dims_rope=(4, 4, 8),
)

#: A small FLUX-architecture config whose block linears are big enough to ternarize meaningfully (K >= 256).
FLUX_SMALL_CONFIG = dict(
    patch_size=1,
    in_channels=16,
    num_layers=2,
    num_single_layers=4,
    attention_head_dim=64,
    num_attention_heads=4,
    joint_attention_dim=128,
    pooled_projection_dim=64,
    guidance_embeds=False,
    axes_dims_rope=(8, 28, 28),
)


def build_flux(config: dict, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0):
    """A ``FluxTransformer2DModel`` with seeded random weights (or on ``meta``: no memory at all)."""
    from diffusers import FluxTransformer2DModel
    from diffusers.utils import logging as diffusers_logging

    torch.manual_seed(seed)
    with torch.device(device):
        model = FluxTransformer2DModel(**config)
    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # .to(dtype) on a fresh model warns about fp32 modules it does not have
    try:
        return model.to(dtype).eval()
    finally:
        diffusers_logging.set_verbosity(level)


def example_inputs(config: dict, height: int = 8, width: int = 8, text_tokens: int = 7, batch: int = 1,
                   dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", seed: int = 0) -> dict:
    """Keyword inputs for one transformer step on ``height x width`` latent tokens and ``text_tokens`` text tokens."""
    g = torch.Generator().manual_seed(seed)
    image_tokens = height * width

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    img_ids = torch.zeros(height, width, 3)
    img_ids[..., 1] = torch.arange(height)[:, None]
    img_ids[..., 2] = torch.arange(width)[None, :]
    inputs = dict(
        hidden_states=rnd(batch, image_tokens, config["in_channels"]),
        encoder_hidden_states=rnd(batch, text_tokens, config["joint_attention_dim"]),
        pooled_projections=rnd(batch, config["pooled_projection_dim"]),
        timestep=torch.full((batch,), 0.5, device=device, dtype=dtype),
        img_ids=img_ids.reshape(image_tokens, 3).to(device=device, dtype=dtype),
        txt_ids=torch.zeros(text_tokens, 3, device=device, dtype=dtype),
        return_dict=False,
    )
    if config.get("guidance_embeds"):
        inputs["guidance"] = torch.full((batch,), 3.5, device=device, dtype=dtype)
    return inputs
