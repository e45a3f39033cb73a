"""Training and test data from the procedural world: scenes drawn with their captions, rendered in batches.

The one place that joins :mod:`.grammar` (captions) and :mod:`.world` (scenes, renderer).
"""

from __future__ import annotations

import numpy as np

from .grammar import caption, sample_request, sample_training_example
from .world import CANVAS, Scene, SceneError, realize, render


def sample_scene(category: str, rng: np.random.Generator) -> tuple[Scene, str]:
    """A random ``(scene, caption)`` of ``category``: a request drawn uniformly among all the requests
    of that category (held-out ones included), its canonical caption, and a scene fulfilling it."""
    request = sample_request(category, rng)
    return realize(request, rng), caption(request)


def render_batch(n: int, rng: np.random.Generator,
                 category_weights: dict[str, float] | None = None) -> tuple[np.ndarray, list[str]]:
    """``n`` training examples (:func:`~torch_ternary.mini.grammar.sample_training_example`, categories
    drawn with ``category_weights``, uniform when ``None``): uint8 ``[n, 32, 32, 3]`` RGB images and their
    ``n`` captions (never an evaluation prompt)."""
    if n < 0:
        raise SceneError(f"n must be >= 0, got {n}")
    images = np.zeros((n, CANVAS, CANVAS, 3), dtype=np.uint8)
    captions = []
    for i in range(n):
        scene, text = sample_training_example(rng, category_weights)
        images[i] = render(scene)
        captions.append(text)
    return images, captions
