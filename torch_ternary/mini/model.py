"""Mini FLUX's image side: the transformer config and the pixel-space "VAE".

Mini FLUX works in pixel space (a documented choice: a learned VAE would cost training time and
blur the exact evaluator's colours). :class:`PixelSpaceVAE` is a fixed, parameter-free
space-to-depth transform with the interface ``FluxPipeline`` uses (``config.block_out_channels``,
``latent_channels``, ``scaling_factor``, ``shift_factor``, ``decode``): a 32x32x3 image in [-1, 1]
is a 16x16x12 latent, which ``FluxPipeline`` packs 2x2 into 64 tokens of 48 channels — i.e. the
transformer sees 4x4-pixel patches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

IMAGE_SIZE = 32

#: The transformer: 2 double-stream + 4 single-stream blocks, 4 heads x 64, text width 128.
TRANSFORMER_CONFIG = dict(
    patch_size=1,
    in_channels=48,
    out_channels=None,
    num_layers=2,
    num_single_layers=4,
    attention_head_dim=64,
    num_attention_heads=4,
    joint_attention_dim=128,
    pooled_projection_dim=64,
    guidance_embeds=False,
    axes_dims_rope=(8, 28, 28),
)


class PixelSpaceVAE(ModelMixin, ConfigMixin):
    """Space-to-depth by ``2**(len(block_out_channels)-1)``: images ``[B, 3, H, W]`` <-> latents ``[B, 3 f^2, H/f, W/f]``.

    ``encode`` returns ``(pixels - shift_factor) * scaling_factor`` rearranged; ``decode`` inverts
    the rearrangement (the pipeline itself undoes scale and shift before calling it), so
    ``decode((encode(x) / scaling_factor) + shift_factor)`` is ``x`` up to float rounding.
    """

    @register_to_config
    def __init__(self, block_out_channels: tuple[int, ...] = (3, 3), in_channels: int = 3, latent_channels: int = 12,
                 scaling_factor: float = 1.0, shift_factor: float = 0.0):
        super().__init__()
        if latent_channels != in_channels * 4 ** (len(block_out_channels) - 1):
            raise ValueError(f"latent_channels must be in_channels * f^2 = {in_channels * 4 ** (len(block_out_channels) - 1)}")
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)  # gives the module a device/dtype

    @property
    def factor(self) -> int:
        return 2 ** (len(self.config.block_out_channels) - 1)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``images``: float ``[B, 3, H, W]`` in [-1, 1] -> scaled latents ``[B, 3 f^2, H/f, W/f]``."""
        z = F.pixel_unshuffle(images, self.factor)
        return (z - self.config.shift_factor) * self.config.scaling_factor

    def decode(self, latents: torch.Tensor, return_dict: bool = True):
        """``latents``: float ``[B, 3 f^2, h, w]`` (already unscaled by the pipeline) -> images ``[B, 3, h f, w f]``."""
        images = F.pixel_shuffle(latents, self.factor)
        return (images,) if not return_dict else {"sample": images}
