"""Captions of the Mini FLUX world: text <-> :class:`~torch_ternary.mini.world.Request`, prompt sets.

The grammar (case-insensitive; extra spaces and one trailing period allowed)::

    caption  := DET desc                                 single_object / colors
              | NUMBER desc                              NUMBER = one (single_object / colors) or
                                                         two | three | four (counting, plural shape)
              | DET desc "and" DET desc                  color_attr (both coloured) / two_objects
              | DET desc RELATION DET desc               position
    DET      := "a" | "an"
    desc     := [COLOR] SHAPE                            COLOR in red, green, blue, yellow;
                                                         SHAPE in circle, square, triangle (+ "s")
    RELATION := "to the left of" | "left of" | "to the right of" | "right of" | "above" | "below"

Digits ``1``-``4`` are accepted for NUMBER. The two descriptions of a two-object caption must be
distinguishable (different shapes, or one shape in two different colours): "a circle and a circle"
is rejected (say "two circles").

Held-out prompts. :func:`evaluation_prompts` is 12 prompts per category.

- ``two_objects``, ``counting``, ``position``, ``color_attr`` (the compositional categories): the
  training sampler (:func:`sample_training_example`) never emits an evaluation prompt, nor any
  caption with its *meaning* (the pair "a circle and a square" also holds out "a square and a
  circle"; "A left of B" holds out "B right of A"). Every uncoloured pair is held out, so the
  training captions of ``two_objects`` are the half-coloured pairs ("a red circle and a square").
- ``single_object``, ``colors``: there are only 3 and 12 such requests in the whole language, all
  of them evaluated, so nothing can be held out: training writes them with the article or the
  number word at random ("a red circle", "one red circle"), as any text-image corpus would contain
  them. (An earlier sampler used only "one ...": a model trained on it read "a circle" as the start
  of a two-object caption and drew two objects.) These two categories measure rendering, not
  compositional generalization.
"""

from __future__ import annotations

import functools
import itertools
import re

import numpy as np

from .world import (
    CATEGORIES,
    COLORS,
    MAX_OBJECTS,
    RELATIONS,
    SHAPES,
    Description,
    MiniWorldError,
    Request,
    Scene,
    SceneError,
    realize,
)


class CaptionError(MiniWorldError):
    """A caption is outside the grammar (also a ``ValueError``)."""


NUMBER_WORDS: dict[int, str] = {1: "one", 2: "two", 3: "three", 4: "four"}
_NUMBERS: dict[str, int] = {**{w: n for n, w in NUMBER_WORDS.items()}, **{str(n): n for n in NUMBER_WORDS}}
_PLURALS: dict[str, str] = {s + "s": s for s in SHAPES}
_DETERMINERS = ("a", "an")

RELATION_PHRASES: dict[str, str] = {
    "left_of": "to the left of",
    "right_of": "to the right of",
    "above": "above",
    "below": "below",
}
"""Relation -> its canonical phrase in captions."""

_RELATION_ALIASES: tuple[tuple[tuple[str, ...], str], ...] = tuple(
    sorted(
        [(tuple(p.split()), r) for r, p in RELATION_PHRASES.items()]
        + [(("left", "of"), "left_of"), (("right", "of"), "right_of")],
        key=lambda item: -len(item[0]),
    )
)

# --------------------------------------------------------------------------------------------- text


def _desc_text(desc: Description, plural: bool = False) -> str:
    shape = desc.shape + "s" if plural else desc.shape
    return f"{desc.color} {shape}" if desc.color else shape


def caption(x: Request | Scene | str, *, determiner: str = "a") -> str:
    """The canonical caption of a request, a scene spec, or (re-canonicalized) a caption string.

    - request: ``"a red circle"``, ``"three green circles"``, ``"a circle and a square"``,
      ``"a red circle to the left of a blue square"``. ``determiner="one"`` writes single-object
      requests as ``"one red circle"`` (the training form of those categories).
    - scene: a full description with colours: one object -> ``"a red circle"``; 2-4 identical
      objects -> ``"two red circles"``; two different objects -> ``"a red circle and a blue square"``
      (in spec order). Raises :class:`CaptionError` for scenes the grammar cannot describe (empty,
      or 3-4 objects not all of one shape and colour).
    """
    if isinstance(x, str):
        x = parse(x)
    elif isinstance(x, Scene):
        x = request_of_scene(x)
    if not isinstance(x, Request):
        raise CaptionError(f"caption expects a Request, Scene or str, got {type(x).__name__}")
    if determiner not in ("a", "one"):
        raise CaptionError(f"determiner must be 'a' or 'one', got {determiner!r}")
    if len(x.objects) == 1:
        desc = x.objects[0]
        if x.count == 1:
            return f"{determiner} {_desc_text(desc)}"
        return f"{NUMBER_WORDS[x.count]} {_desc_text(desc, plural=True)}"
    a, b = (_desc_text(d) for d in x.objects)
    joint = "and" if x.relation is None else RELATION_PHRASES[x.relation]
    return f"a {a} {joint} a {b}"


def request_of_scene(scene: Scene) -> Request:
    """The fully coloured :class:`Request` describing ``scene`` (see :func:`caption`)."""
    kinds = [(o.shape, o.color) for o in scene.objects]
    if not kinds:
        raise CaptionError("an empty scene has no caption")
    if len(set(kinds)) == 1:
        return Request((Description(*kinds[0]),), len(kinds))
    if len(kinds) == 2:
        return Request(tuple(Description(*k) for k in kinds), 2)
    raise CaptionError(f"the grammar cannot describe a scene of {len(kinds)} objects of different kinds")


def _normalize(text: str) -> list[str]:
    """Lower-case words of ``text``, without one trailing period."""
    if not isinstance(text, str):
        raise CaptionError(f"a caption must be a str, got {type(text).__name__}")
    body = text.strip().lower()
    if body.endswith("."):
        body = body[:-1]
    if not re.fullmatch(r"[a-z0-9\s]*", body):
        raise CaptionError(f"unexpected characters in caption {text!r}: only words, spaces and a final period")
    return body.split()


class _Tokens:
    """A cursor over the tokens of one caption, raising :class:`CaptionError` with context."""

    def __init__(self, text: str, tokens: list[str]):
        self.text, self.tokens, self.i = text, tokens, 0

    def peek(self, k: int = 0) -> str | None:
        j = self.i + k
        return self.tokens[j] if j < len(self.tokens) else None

    def take(self) -> str:
        tok = self.peek()
        if tok is None:
            self.fail("unexpected end of caption")
        self.i += 1
        return tok

    def done(self) -> bool:
        return self.i == len(self.tokens)

    def fail(self, why: str) -> None:
        at = " ".join(self.tokens[self.i:]) or "<end>"
        raise CaptionError(f"{why} in caption {self.text!r} (at {at!r})")


def _parse_desc(tok: _Tokens, plural: bool) -> Description:
    color = None
    if tok.peek() in COLORS:
        color = tok.take()
    word = tok.take()
    if plural and word in _PLURALS:
        return Description(_PLURALS[word], color)
    if not plural and word in SHAPES:
        return Description(word, color)
    if word in _PLURALS or word in SHAPES:
        tok.i -= 1
        tok.fail(f"expected a {'plural' if plural else 'singular'} shape, got {word!r}")
    tok.i -= 1
    tok.fail(f"expected {'a colour or ' if color is None else ''}a shape ({', '.join(SHAPES)}), got {word!r}")
    raise AssertionError  # unreachable


def _parse_relation(tok: _Tokens) -> str | None:
    for words, relation in _RELATION_ALIASES:
        if tuple(tok.tokens[tok.i: tok.i + len(words)]) == words:
            tok.i += len(words)
            return relation
    return None


def parse(text: str | Request) -> Request:
    """The :class:`Request` of a caption of the grammar (module docstring); a Request passes through.

    Raises :class:`CaptionError` (a ``ValueError``) for anything outside the grammar: unknown words,
    wrong number agreement, counts outside 1-4, indistinguishable pairs, trailing words, ...
    """
    if isinstance(text, Request):
        return text
    tok = _Tokens(text, _normalize(text))
    if tok.done():
        tok.fail("empty caption")
    first = tok.take()
    try:
        if first in _NUMBERS:
            count = _NUMBERS[first]
            desc = _parse_desc(tok, plural=count > 1)
            if not tok.done():
                tok.fail("expected the end of the caption")
            return Request((desc,), count)
        if first not in _DETERMINERS:
            tok.i -= 1
            tok.fail(f"a caption starts with 'a', 'an' or a number 1-{MAX_OBJECTS}")
        desc = _parse_desc(tok, plural=False)
        if tok.done():
            return Request((desc,), 1)
        relation = None
        if tok.peek() == "and":
            tok.take()
        else:
            relation = _parse_relation(tok)
            if relation is None:
                tok.fail("expected 'and', a relation (to the left of, to the right of, above, below) or the end")
        if tok.take() not in _DETERMINERS:
            tok.i -= 1
            tok.fail("expected 'a' or 'an'")
        second = _parse_desc(tok, plural=False)
        if not tok.done():
            tok.fail("expected the end of the caption")
        return Request((desc, second), 2, relation)
    except SceneError as exc:  # structural: e.g. indistinguishable descriptions
        raise CaptionError(f"{exc} (caption {text!r})") from exc


def category_of(prompt: str | Request) -> str:
    """The category (one of :data:`CATEGORIES`) of a caption; raises :class:`CaptionError` if invalid."""
    return parse(prompt).category


# --------------------------------------------------------------------------------- request space


def _descriptions() -> list[Description]:
    return [Description(s, c) for c in (None, *COLORS) for s in SHAPES]


@functools.cache
def all_requests(category: str) -> tuple[Request, ...]:
    """Every request of ``category`` (ordered pairs count twice), in a fixed order.

    Sizes: single_object 3, colors 12, counting 45, two_objects 54, color_attr 132, position 744.
    """
    if category not in CATEGORIES:
        raise SceneError(f"unknown category {category!r}; expected one of {CATEGORIES}")
    descs = _descriptions()
    out: list[Request] = []
    if category in ("single_object", "colors", "counting"):
        counts = range(2, MAX_OBJECTS + 1) if category == "counting" else (1,)
        out = [Request((d,), n) for n in counts for d in descs]
    else:
        relations = RELATIONS if category == "position" else (None,)
        for rel in relations:
            for a, b in itertools.permutations(descs, 2):
                try:
                    out.append(Request((a, b), 2, rel))
                except SceneError:  # indistinguishable pair
                    pass
    return tuple(r for r in out if r.category == category)


def sample_request(category: str, rng: np.random.Generator) -> Request:
    """A request drawn uniformly from :func:`all_requests` ``(category)``."""
    pool = all_requests(category)
    return pool[int(rng.integers(len(pool)))]


# ------------------------------------------------------------------------------ evaluation prompts

_EVALUATION_PROMPTS: dict[str, tuple[str, ...]] = {
    # Only 3 single-object and 6 two-object captions exist: each appears 4 and 2 times.
    "single_object": ("a circle", "a square", "a triangle") * 4,
    "two_objects": (
        "a circle and a square", "a square and a triangle", "a triangle and a circle",
        "a square and a circle", "a triangle and a square", "a circle and a triangle",
    ) * 2,
    "counting": (
        "two circles", "two red circles", "two blue squares", "two yellow triangles",
        "three squares", "three green squares", "three red triangles", "three blue circles",
        "four triangles", "four yellow triangles", "four green circles", "four squares",
    ),
    "colors": tuple(f"a {c} {s}" for c in COLORS for s in SHAPES),
    "position": (
        "a red circle to the left of a blue square",
        "a green triangle to the left of a yellow circle",
        "a square to the left of a triangle",
        "a blue triangle to the right of a red square",
        "a yellow square to the right of a green circle",
        "a circle to the right of a square",
        "a yellow circle above a blue triangle",
        "a red square above a green square",
        "a triangle above a circle",
        "a green circle below a red triangle",
        "a blue square below a yellow triangle",
        "a circle below a red square",
    ),
    "color_attr": (
        "a red circle and a blue square",
        "a blue circle and a red square",
        "a green triangle and a yellow circle",
        "a blue circle and a red triangle",
        "a yellow square and a green triangle",
        "a red square and a green circle",
        "a blue triangle and a yellow square",
        "a green square and a red triangle",
        "a yellow triangle and a blue circle",
        "a red circle and a green circle",
        "a blue square and a yellow square",
        "a green triangle and a red triangle",
    ),
}

PROMPTS_PER_CATEGORY = 12


def evaluation_prompts(category: str | None = None) -> list[str]:
    """The fixed evaluation prompts: 12 per category, 72 in :data:`CATEGORIES` order (or the 12 of
    ``category``). single_object and two_objects repeat their 3 / 6 possible captions (4x / 2x)."""
    if category is not None:
        if category not in CATEGORIES:
            raise SceneError(f"unknown category {category!r}; expected one of {CATEGORIES}")
        return list(_EVALUATION_PROMPTS[category])
    return [p for c in CATEGORIES for p in _EVALUATION_PROMPTS[c]]


def meaning_key(request: Request) -> tuple:
    """Equal for requests with the same meaning: pairs are unordered, right_of/below are mirrored."""
    if len(request.objects) == 1:
        return ("one", request.objects[0], request.count)
    a, b = request.objects
    if request.relation is None:
        return ("pair", frozenset((a, b)))
    mirror = {"right_of": "left_of", "below": "above"}
    if request.relation in mirror:
        return ("rel", mirror[request.relation], b, a)
    return ("rel", request.relation, a, b)


_meaning_key = meaning_key  # the private name older modules use


@functools.cache
def _held_out() -> frozenset[tuple]:
    return frozenset(_meaning_key(parse(p)) for p in evaluation_prompts() if parse(p).count > 1)


def is_held_out(prompt: str) -> bool:
    """Whether the training sampler never emits this caption: it asks for 2-4 objects with the meaning
    of an evaluation prompt. (Single-object captions are never held out: see the module docstring.)"""
    request = parse(prompt)
    return request.count > 1 and _meaning_key(request) in _held_out()


# ----------------------------------------------------------------------------------------- training


def category_probabilities(weights: dict[str, float] | None) -> np.ndarray | None:
    """float64 ``[len(CATEGORIES)]`` sampling probabilities from relative ``weights`` (category -> weight,
    missing categories weigh 1), or ``None`` for ``None`` (uniform). Raises ``SceneError`` on an unknown
    category, a negative or non-finite weight, or all weights zero."""
    return None if weights is None else _normalized(tuple(sorted(weights.items())))


@functools.cache
def _normalized(items: tuple[tuple[str, float], ...]) -> np.ndarray:
    """Checked and normalized once per distinct weights (the training sampler asks for every caption)."""
    weights = dict(items)
    unknown = set(weights) - set(CATEGORIES)
    if unknown:
        raise SceneError(f"unknown categories {sorted(unknown)}; expected some of {CATEGORIES}")
    w = np.array([float(weights.get(c, 1.0)) for c in CATEGORIES])
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise SceneError(f"category weights must be finite, >= 0 and not all 0, got {weights}")
    w /= w.sum()
    w.flags.writeable = False  # shared by every caller
    return w


def sample_training_caption(rng: np.random.Generator,
                            category_weights: dict[str, float] | None = None) -> tuple[Request, str]:
    """A training ``(request, caption)``: category uniform over :data:`CATEGORIES` (or drawn with
    ``category_weights``, see :func:`category_probabilities`), request uniform among that category's
    requests that are not held out; single-object requests are written with "a" or "one" at random.
    Never returns a 2-4-object evaluation prompt nor its meaning."""
    probs = category_probabilities(category_weights)
    if probs is None:  # the original stream: keeps earlier training phases reproducible
        category = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
    else:
        category = CATEGORIES[int(rng.choice(len(CATEGORIES), p=probs))]
    pool = _training_pool(category)
    request = pool[int(rng.integers(len(pool)))]
    if request.count == 1:
        return request, caption(request, determiner="one" if rng.random() < 0.5 else "a")
    return request, caption(request)


@functools.cache
def _training_pool(category: str) -> tuple[Request, ...]:
    keys = _held_out()
    return tuple(r for r in all_requests(category) if r.count == 1 or _meaning_key(r) not in keys)


def sample_training_example(rng: np.random.Generator,
                            category_weights: dict[str, float] | None = None) -> tuple[Scene, str]:
    """A training ``(scene spec, caption)`` pair (see :func:`sample_training_caption`)."""
    request, text = sample_training_caption(rng, category_weights)
    return realize(request, rng), text
