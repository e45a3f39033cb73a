"""Mini FLUX as a diffusers ``FluxPipeline``: building, loading the shipped weights, generating.

``MiniFluxPipeline`` is ``FluxPipeline`` with Mini FLUX's defaults (32x32, 20 Euler steps,
classifier-free guidance against the empty prompt, 12 text tokens); everything else — encoders,
packing, scheduler, the transformer call — is diffusers' own code path.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

from .model import IMAGE_SIZE, TRANSFORMER_CONFIG, PixelSpaceVAE
from .text import MAX_TOKENS, build_clip, build_t5, build_tokenizer

WEIGHTS_FILE = "mini_flux.safetensors"
TERNARY_WEIGHTS_FILE = "mini_flux_ternary.safetensors"
META_FILE = "mini_flux.json"
COMPONENTS = ("transformer", "text_encoder", "text_encoder_2")

#: Sampling defaults (overridden by the shipped weights' metadata when present).
DEFAULT_SAMPLING = dict(num_inference_steps=20, true_cfg_scale=4.0, scheduler_shift=1.0)


class MiniFluxPipeline(FluxPipeline):
    """``FluxPipeline`` with Mini FLUX defaults; ``negative_prompt`` defaults to the empty prompt for every image."""

    def __call__(self, prompt=None, height: int = IMAGE_SIZE, width: int = IMAGE_SIZE, num_inference_steps: int | None = None,
                 true_cfg_scale: float | None = None, negative_prompt=None, max_sequence_length: int = MAX_TOKENS, **kwargs):
        sampling = getattr(self, "mini_sampling", DEFAULT_SAMPLING)
        n = 1 if isinstance(prompt, str) else len(prompt or [])
        if negative_prompt is None and kwargs.get("negative_prompt_embeds") is None:
            negative_prompt = [""] * n if n > 1 or not isinstance(prompt, str) else ""
        kwargs.setdefault("guidance_scale", 1.0)
        return super().__call__(
            prompt=prompt, height=height, width=width,
            num_inference_steps=num_inference_steps or sampling["num_inference_steps"],
            true_cfg_scale=sampling["true_cfg_scale"] if true_cfg_scale is None else true_cfg_scale,
            negative_prompt=negative_prompt, max_sequence_length=max_sequence_length, **kwargs,
        )


def build_pipeline(transformer=None, text_encoder=None, text_encoder_2=None, vae_scaling: float = 1.0,
                   vae_shift: float = 0.0, sampling: dict | None = None) -> MiniFluxPipeline:
    """A Mini FLUX pipeline; components not given are freshly initialized (random weights)."""
    pipe = MiniFluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, use_dynamic_shifting=False),
        vae=PixelSpaceVAE(scaling_factor=vae_scaling, shift_factor=vae_shift),
        text_encoder=text_encoder if text_encoder is not None else build_clip(),
        tokenizer=build_tokenizer(with_bos=True),
        text_encoder_2=text_encoder_2 if text_encoder_2 is not None else build_t5(),
        tokenizer_2=build_tokenizer(with_bos=False),
        transformer=transformer if transformer is not None else FluxTransformer2DModel(**TRANSFORMER_CONFIG),
    )
    set_sampling(pipe, sampling or {})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def set_sampling(pipe: MiniFluxPipeline, sampling: dict) -> None:
    """Give ``pipe`` sampler settings (``true_cfg_scale``, ``num_inference_steps``, ``scheduler_shift``;
    missing keys take :data:`DEFAULT_SAMPLING`): a scheduler with that shift and the call defaults."""
    sampling = {**DEFAULT_SAMPLING, **sampling}
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=sampling["scheduler_shift"],
                                                     use_dynamic_shifting=False)
    pipe.mini_sampling = sampling


def weights_dir() -> Path:
    """Folder of the shipped Mini FLUX weights (package data)."""
    return Path(str(resources.files("torch_ternary.mini") / "weights"))


def _split_state(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    parts: dict[str, dict[str, torch.Tensor]] = {c: {} for c in COMPONENTS}
    for key, value in state.items():
        comp, _, name = key.partition(".")
        if comp not in parts:
            raise ValueError(f"unexpected key {key!r} in Mini FLUX weights")
        parts[comp][name] = value
    return parts


def load_pipeline(device: str | torch.device = "cpu", quantized: bool = False, path: str | Path | None = None) -> MiniFluxPipeline:
    """The trained Mini FLUX pipeline (float32), ready to generate.

    Args:
        device: where to put it (``"cpu"`` or ``"cuda"``).
        quantized: return the shipped ternary model (calibrated; see docs/calibration.md) instead
            of the full-precision one.
        path: a weights folder other than the shipped one (holding ``mini_flux.safetensors`` and ``mini_flux.json``).
    """
    from safetensors.torch import load_file

    folder = Path(path) if path is not None else weights_dir()
    meta = json.loads((folder / META_FILE).read_text())
    parts = _split_state({k: v.float() for k, v in load_file(str(folder / WEIGHTS_FILE)).items()})
    # Built on CPU, not meta: the encoders have non-persistent buffers (CLIP's position ids) that
    # the weights file does not hold. The model is small; initialization costs a fraction of a second.
    pipe_parts = dict(transformer=FluxTransformer2DModel(**TRANSFORMER_CONFIG), text_encoder=build_clip(),
                      text_encoder_2=build_t5())
    for name, module in pipe_parts.items():
        module.load_state_dict(parts[name], strict=True)
        module.eval()
    pipe = build_pipeline(**pipe_parts, vae_scaling=meta["vae_scaling"], vae_shift=meta["vae_shift"],
                          sampling=meta.get("sampling"))
    if quantized:
        from ..format.single_file import load_quantized

        load_quantized(pipe.transformer, folder / TERNARY_WEIGHTS_FILE)
    return pipe.to(device)


def generate(pipe: MiniFluxPipeline, prompts: list[str], seeds: list[int], batch_size: int = 64) -> np.ndarray:
    """Images for every (prompt, seed) pair, prompt-major: uint8 ``[len(prompts) * len(seeds), 32, 32, 3]``."""
    pairs = [(p, s) for p in prompts for s in seeds]
    out = []
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i:i + batch_size]
        gens = [torch.Generator(device="cpu").manual_seed(s) for _, s in chunk]
        with torch.no_grad():
            images = pipe([p for p, _ in chunk], generator=gens, output_type="np").images
        out.append((np.clip(images, 0, 1) * 255).round().astype(np.uint8))
    return np.concatenate(out, axis=0)
