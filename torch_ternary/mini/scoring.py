"""Mini FLUX's quality score: the fraction of generated images the exact evaluator accepts."""

from __future__ import annotations

from collections import defaultdict

from .evaluate import evaluate
from .grammar import CATEGORIES, category_of
from .pipeline import generate


def score(pipe, prompts: list[str], seeds: list[int], return_images: bool = False, return_hits: bool = False) -> dict:
    """Generate one image per (prompt, seed) and judge each with :func:`evaluate`.

    Args:
        pipe: a Mini FLUX pipeline (full precision or ternary).
        prompts: captions of the grammar (any, not only training ones).
        seeds: one image per seed for every prompt (``torch.Generator`` seeds, CPU).
        return_images: also return the uint8 ``[P * S, 32, 32, 3]`` images under ``"images"``.
        return_hits: also return each image's verdict under ``"hits"`` (``P * S`` bools, prompt-major:
            the image of prompt ``p`` and seed index ``s`` is at ``p * S + s``).

    Returns:
        ``{"overall": fraction, <category>: fraction for each category present, "n": images judged}``.
    """
    images = generate(pipe, list(prompts), list(seeds))
    hits: dict[str, list[bool]] = defaultdict(list)
    flat: list[bool] = []
    i = 0
    for prompt in prompts:
        for _ in seeds:
            flat.append(bool(evaluate(images[i], prompt)))
            hits[category_of(prompt)].append(flat[-1])
            i += 1
    result = {"overall": sum(sum(v) for v in hits.values()) / max(1, i), "n": i}
    result.update({c: sum(hits[c]) / len(hits[c]) for c in CATEGORIES if hits.get(c)})
    if return_images:
        result["images"] = images
    if return_hits:
        result["hits"] = flat
    return result
