"""Mini FLUX: a tiny text-to-image world with a caption grammar and an exact pixel evaluator.

- :mod:`.world`: 32x32 scenes of coloured circles, squares and triangles; specs, placement, renderer.
- :mod:`.grammar`: captions <-> requests, the 72 evaluation prompts, the held-out training sampler.
- :mod:`.data`: scenes drawn with their captions, training batches (``sample_scene``, ``render_batch``).
- :mod:`.evaluate`: decides from pixels alone whether an image satisfies a caption.
- :mod:`.text`, :mod:`.model`, :mod:`.pipeline`: the tiny CLIP/T5 encoders, the transformer config and
  pixel-space VAE, and the diffusers ``FluxPipeline`` around them (``load_pipeline``).
- :mod:`.scoring`: ``score(pipe, prompts, seeds)``, the exact benchmark. :mod:`.train`: the training script.

``load_pipeline`` and ``score`` import diffusers, so they are loaded on first use.

See ``docs/mini.md``.
"""

from .data import render_batch, sample_scene
from .evaluate import DetectedObject, ImageFormatError, describe, evaluate, judge
from .grammar import (
    CaptionError,
    all_requests,
    caption,
    category_of,
    evaluation_prompts,
    is_held_out,
    parse,
    sample_request,
    sample_training_caption,
    sample_training_example,
)
from .world import (
    CANVAS,
    CATEGORIES,
    COLORS,
    PALETTE,
    RELATIONS,
    SHAPES,
    Description,
    MiniWorldError,
    Request,
    Scene,
    SceneError,
    SceneObject,
    realize,
    render,
    satisfies,
)

_LAZY = {"load_pipeline": ".pipeline", "build_pipeline": ".pipeline", "generate": ".pipeline", "score": ".scoring"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "build_pipeline",
    "generate",
    "load_pipeline",
    "score",
    "CANVAS",
    "CATEGORIES",
    "COLORS",
    "PALETTE",
    "RELATIONS",
    "SHAPES",
    "CaptionError",
    "Description",
    "DetectedObject",
    "ImageFormatError",
    "MiniWorldError",
    "Request",
    "Scene",
    "SceneError",
    "SceneObject",
    "all_requests",
    "caption",
    "category_of",
    "describe",
    "evaluate",
    "evaluation_prompts",
    "is_held_out",
    "judge",
    "parse",
    "realize",
    "render",
    "render_batch",
    "sample_request",
    "sample_scene",
    "sample_training_caption",
    "sample_training_example",
    "satisfies",
]
