"""Disjoint caption sets for calibration, validation and evaluation: no meaning in two of them.

Every caption of the grammar has a *meaning* (pairs are unordered, "A right of B" is "B left of A";
:func:`~torch_ternary.mini.grammar.meaning_key`). The three sets partition meanings, never captions:

- **evaluation**: the 72 :func:`~torch_ternary.mini.grammar.evaluation_prompts` (57 distinct captions)
  and every meaning they hold — among them all 3 single-object and all 12 one-coloured-object
  meanings of the language, so neither other set has a single-object caption;
- **validation**: :data:`VALIDATION_FRACTION` of the remaining meanings of each compositional
  category (two_objects, counting, position, color_attr), drawn once by a fixed permutation
  (:data:`SPLIT_SEED`); recipes and hyper-parameters are chosen on these, with seeds 100-199;
- **calibration**: the rest; :func:`calibration_captions` samples prompts from them.

Sizes (meanings): two_objects 24 -> 6 validation / 18 calibration, counting 33 -> 8 / 25,
position 360 -> 90 / 270, color_attr 54 -> 13 / 41.
"""

from __future__ import annotations

import functools

import numpy as np

from .grammar import all_requests, caption, category_probabilities, evaluation_prompts, meaning_key, parse
from .world import CATEGORIES, SceneError

#: The categories that have meanings outside the evaluation set.
SPLIT_CATEGORIES = ("two_objects", "counting", "position", "color_attr")
#: Share of each category's non-evaluation meanings that goes to validation (rounded down).
VALIDATION_FRACTION = 0.25
#: Seed of the permutation that assigns meanings to validation; fixed forever (changing it leaks).
SPLIT_SEED = 20261201
#: Validation seeds: recipes are chosen on these, never on the evaluation seeds 0-11.
VALIDATION_SEEDS = tuple(range(100, 200))
#: Validation captions per category in :func:`validation_captions` (fewer if the category has fewer).
VALIDATION_PER_CATEGORY = 12


@functools.cache
def _split() -> dict[str, tuple[tuple[tuple[str, ...], ...], tuple[tuple[str, ...], ...]]]:
    """category -> (validation meanings, calibration meanings); each meaning is the tuple of its captions."""
    held = {meaning_key(parse(p)) for p in evaluation_prompts()}
    out = {}
    for i, category in enumerate(SPLIT_CATEGORIES):
        meanings: dict[tuple, list[str]] = {}
        for request in all_requests(category):
            key = meaning_key(request)
            if key not in held:
                meanings.setdefault(key, []).append(caption(request))
        groups = sorted(tuple(sorted(c)) for c in meanings.values())
        order = np.random.default_rng(SPLIT_SEED + i).permutation(len(groups))
        n_val = int(len(groups) * VALIDATION_FRACTION)
        out[category] = (tuple(groups[j] for j in order[:n_val]), tuple(groups[j] for j in order[n_val:]))
    return out


def validation_meanings(category: str) -> tuple[tuple[str, ...], ...]:
    """The validation meanings of ``category`` (each a tuple of the captions that say it)."""
    return _split()[_checked(category)][0]


def calibration_meanings(category: str) -> tuple[tuple[str, ...], ...]:
    """The calibration meanings of ``category`` (each a tuple of the captions that say it)."""
    return _split()[_checked(category)][1]


def _checked(category: str) -> str:
    if category not in SPLIT_CATEGORIES:
        raise SceneError(f"category {category!r} has no calibration/validation split; expected one of {SPLIT_CATEGORIES}"
                         + (" (all its meanings are evaluation prompts)" if category in CATEGORIES else ""))
    return category


def validation_captions(per_category: int = VALIDATION_PER_CATEGORY) -> list[str]:
    """The fixed validation captions: up to ``per_category`` of each split category, in
    :data:`SPLIT_CATEGORIES` order, cycling through the category's meanings and, on later rounds,
    through each meaning's other wordings (two_objects: 6 meanings x 2 orders)."""
    out = []
    for category in SPLIT_CATEGORIES:
        groups = validation_meanings(category)
        picked: list[str] = []
        for rnd in range(max(len(g) for g in groups)):
            picked += [g[rnd] for g in groups if rnd < len(g)]
        out += picked[:per_category]
    return out


def calibration_captions(n: int, seed: int = 0, category_weights: dict[str, float] | None = None) -> list[str]:
    """``n`` calibration prompts: category drawn with ``category_weights`` (category -> relative weight,
    missing ones weigh 1; default uniform over :data:`SPLIT_CATEGORIES`), then a calibration meaning
    uniformly, then one of its wordings; deterministic in ``seed``. Never an evaluation or validation meaning."""
    weights = dict(category_weights or {})
    unknown = set(weights) - set(SPLIT_CATEGORIES)
    if unknown:
        raise SceneError(f"unknown or unsplit categories {sorted(unknown)}; expected some of {SPLIT_CATEGORIES}")
    # the training sampler's checked weights, with the unsplit categories (no calibration meaning) at 0
    probs = category_probabilities({**{c: 0.0 for c in CATEGORIES if c not in SPLIT_CATEGORIES}, **weights})
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        groups = calibration_meanings(CATEGORIES[int(rng.choice(len(probs), p=probs))])
        group = groups[int(rng.integers(len(groups)))]
        out.append(group[int(rng.integers(len(group)))])
    return out


def split_of(prompt: str) -> str:
    """``"evaluation"``, ``"validation"`` or ``"calibration"``: the set whose meanings hold ``prompt``."""
    key = meaning_key(parse(prompt))
    if key in {meaning_key(parse(p)) for p in evaluation_prompts()}:
        return "evaluation"
    for category in SPLIT_CATEGORIES:
        if any(key == meaning_key(parse(g[0])) for g in validation_meanings(category)):
            return "validation"
    return "calibration"
