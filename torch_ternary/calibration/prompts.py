"""Prompt sources for calibration: a built-in compositional generator and user files. No image is ever read.

The built-in generator composes T2I-CompBench-style prompts from objects x attributes (colour,
shape, texture) x spatial / non-spatial relations x counts, deterministically from a seed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import TernaryError

OBJECTS = (
    "apple", "backpack", "ball", "banana", "bear", "bench", "bicycle", "bird", "boat", "book", "bottle", "bowl",
    "bus", "cake", "car", "cat", "chair", "clock", "cup", "dog", "flower", "giraffe", "guitar", "hat", "horse",
    "house", "kite", "lamp", "laptop", "mug", "orange", "phone", "pillow", "rabbit", "sheep", "shoe", "sofa",
    "table", "teddy bear", "train", "tree", "truck", "umbrella", "vase", "violin", "wallet",
)
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white", "gray")
SHAPES = ("round", "square", "triangular", "oval", "rectangular", "heart-shaped")
TEXTURES = ("wooden", "metallic", "glass", "plastic", "leather", "fluffy", "rubber", "fabric", "stone")
SPATIAL = ("on the left of", "on the right of", "on top of", "below", "next to", "in front of", "behind")
ACTIONS = ("looking at", "sitting next to", "playing with", "standing near", "leaning against")
COUNTS = ("two", "three", "four", "five")
SCENES = ("in a sunny park", "on a kitchen table", "in a snowy street", "at the beach", "in a cozy living room")
CATEGORIES = ("color", "shape", "texture", "spatial", "non_spatial", "counting", "complex")


class PromptSourceError(TernaryError, ValueError):
    """A prompt file that cannot be read, or a prompt source that is not known."""


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _plural(noun: str) -> str:
    if noun.endswith(("s", "sh", "ch")):
        return noun + "es"
    if noun == "sheep":
        return noun
    return noun + "s"


def compositional_prompt(category: str, rng: np.random.Generator) -> str:
    """One prompt of a T2I-CompBench-like category (see :data:`CATEGORIES`)."""
    pick = lambda seq: seq[int(rng.integers(len(seq)))]  # noqa: E731
    a, b = pick(OBJECTS), pick(OBJECTS)
    while b == a:
        b = pick(OBJECTS)
    if category in ("color", "shape", "texture"):
        attrs = {"color": COLORS, "shape": SHAPES, "texture": TEXTURES}[category]
        x, y = pick(attrs), pick(attrs)
        return f"{_article(x)} {x} {a} and {_article(y)} {y} {b}"
    if category == "spatial":
        return f"{_article(a)} {a} {pick(SPATIAL)} {_article(b)} {b}"
    if category == "non_spatial":
        return f"{_article(a)} {a} {pick(ACTIONS)} {_article(b)} {b}"
    if category == "counting":
        return f"{pick(COUNTS)} {_plural(a)} and {_article(b)} {b}"
    if category == "complex":
        c, t = pick(COLORS), pick(TEXTURES)
        return f"{_article(c)} {c} {a} {pick(SPATIAL)} {_article(t)} {t} {b} {pick(SCENES)}"
    raise PromptSourceError(f"unknown prompt category {category!r}; expected one of {CATEGORIES}")


def builtin_prompts(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct compositional prompts, categories round-robin, deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    out: list[str] = []
    seen: set[str] = set()
    attempts = 0
    while len(out) < n:
        p = compositional_prompt(CATEGORIES[len(out) % len(CATEGORIES)], rng)
        attempts += 1
        if p not in seen or attempts > 50 * n:
            seen.add(p)
            out.append(p)
    return out


def mini_prompts(n: int, seed: int = 0) -> list[str]:
    """``n`` Mini FLUX training captions (the grammar's sampler: evaluation prompts are never drawn)."""
    from ..mini.grammar import sample_training_caption

    rng = np.random.default_rng(seed)
    return [sample_training_caption(rng)[1] for _ in range(n)]


def mini_calibration_prompts(n: int, seed: int = 0, category_weights: dict[str, float] | None = None) -> list[str]:
    """``n`` Mini FLUX calibration prompts: meanings of the calibration split only (disjoint from the
    validation captions and the evaluation prompts; :mod:`torch_ternary.mini.splits`), categories drawn
    with ``category_weights`` (default uniform)."""
    from ..mini.splits import calibration_captions

    return calibration_captions(n, seed, category_weights)


def prompts_from_file(path: str | Path, column: str | None = None) -> list[str]:
    """Prompts from a file: ``.txt`` (one a line), ``.tsv`` (a header row; ``column`` names the field)
    or ``.jsonl`` (one object a line; ``column`` names the key). Blank lines are skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise PromptSourceError(f"prompt file not found: {path}")
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError as e:
        raise PromptSourceError(f"{path}: not UTF-8 text: {e}") from e
    suffix = path.suffix.lower()
    if suffix == ".txt":
        prompts = [line.strip() for line in lines]
    elif suffix == ".tsv":
        if not lines:
            raise PromptSourceError(f"{path}: empty file")
        header = lines[0].split("\t")
        col = column or "prompt"
        if col not in header:
            raise PromptSourceError(f"{path}: no column {col!r}; columns are {header}")
        i = header.index(col)
        rows = [line.split("\t") for line in lines[1:]]
        bad = [n + 2 for n, r in enumerate(rows) if len(r) <= i]
        if bad:
            raise PromptSourceError(f"{path}: line {bad[0]} has no {col!r} field")
        prompts = [r[i].strip() for r in rows]
    elif suffix == ".jsonl":
        col = column or "prompt"
        prompts = []
        for n, line in enumerate(lines, 1):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise PromptSourceError(f"{path}: line {n} is not JSON: {e}") from e
            if not isinstance(obj, dict) or not isinstance(obj.get(col), str):
                raise PromptSourceError(f"{path}: line {n} has no string field {col!r}")
            prompts.append(obj[col].strip())
    else:
        raise PromptSourceError(f"{path}: unsupported prompt file type {suffix!r} (use .txt, .tsv or .jsonl)")
    prompts = [p for p in prompts if p]
    if not prompts:
        raise PromptSourceError(f"{path}: no prompts found")
    return prompts


def load_prompts(source: str, n: int | None = None, seed: int = 0, column: str | None = None,
                 category_weights: dict[str, float] | None = None) -> list[str]:
    """``"builtin"``, ``"mini"`` (Mini FLUX training captions), ``"mini-calibration"`` (Mini FLUX's
    calibration split: no validation or evaluation meaning) or a file path -> a list of prompts (the
    first ``n`` of a file). ``category_weights`` (category -> relative weight) applies to
    ``"mini-calibration"`` only."""
    if category_weights and source != "mini-calibration":
        raise PromptSourceError(f"category weights apply to the 'mini-calibration' prompts, not {source!r}")
    if source == "builtin":
        return builtin_prompts(n or 256, seed)
    if source == "mini":
        return mini_prompts(n or 256, seed)
    if source == "mini-calibration":
        try:
            return mini_calibration_prompts(n or 256, seed, category_weights)
        except ValueError as e:  # the split's SceneError: unknown category or bad weight
            raise PromptSourceError(str(e)) from e
    prompts = prompts_from_file(source, column)
    return prompts[:n] if n else prompts
