"""The procedural world of Mini FLUX: scene specs, their requests, placement and the renderer.

A *scene* is 1-4 flat, crisp (not anti-aliased) shapes on a black 32x32 RGB canvas. Every shape is
one of :data:`SHAPES` painted in one of the :data:`COLORS` (RGB values in :data:`PALETTE`).

Coordinates are in pixels with the origin at the top-left corner of the canvas: pixel ``(row i,
column j)`` covers ``[j, j+1) x [i, i+1)``, so its centre is ``(j + 0.5, i + 0.5)``. A pixel belongs to
a shape when its centre lies inside it (see :func:`shape_mask`), which makes rendering exact and
deterministic given the spec.

A *request* (:class:`Request`) is what a caption asks for: one or two object descriptions
(:class:`Description`: a shape and an optional colour), how many objects there must be, and an
optional spatial relation. :func:`satisfies` decides whether a list of objects (of a spec, or detected
in pixels by :mod:`torch_ternary.mini.evaluate`) fulfils a request; :func:`realize` draws a scene
that does.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..errors import TernaryError

CANVAS = 32
"""Side of the square canvas in pixels."""

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow")

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 235),
    "yellow": (240, 220, 40),
}
"""Colour name -> RGB (uint8 values) painted by :func:`render`."""

PALETTE_ARRAY = np.array([PALETTE[c] for c in COLORS], dtype=np.uint8)
"""uint8 ``[4, 3]``: the RGB of ``COLORS[k]`` in row ``k``."""

BACKGROUND: tuple[int, int, int] = (0, 0, 0)

RELATIONS: tuple[str, ...] = ("left_of", "right_of", "above", "below")
"""Spatial relations "A <relation> B", judged on the centroids of A and B."""

CATEGORIES: tuple[str, ...] = ("single_object", "two_objects", "counting", "colors", "position", "color_attr")
"""The GenEval-style prompt categories (see :attr:`Request.category`)."""

MAX_OBJECTS = 4

OBJECT_SIZES: tuple[int, ...] = (9, 11, 13)
"""Bounding-box side (px) of objects in scenes of 1-2 objects. Odd, so shapes are symmetric."""

CROWDED_SIZES: tuple[int, ...] = (9, 11)
"""Bounding-box side (px) of objects in scenes of 3-4 objects (a jittered 2x2 grid)."""

MARGIN = 2
"""Empty pixels kept between any object and the canvas border."""

MIN_GAP = 2
"""Empty pixels kept between the bounding boxes of any two objects (they never touch)."""

PLACEMENT_MIN_OFFSET = 10.0
"""Rendered "A left of B": ``B.x - A.x >= 10`` px between centroids (likewise for the other relations)."""

PLACEMENT_DOMINANCE = 2.0
"""Rendered relations: the main-axis offset is at least twice the cross-axis offset."""

JUDGE_MIN_OFFSET = 3.0
"""Judged relations (:func:`satisfies`): the main-axis offset must be at least 3 px ..."""

JUDGE_DOMINANCE = 1.0
"""... and strictly larger than the cross-axis offset (tolerant: generated images are imprecise)."""


class MiniWorldError(TernaryError, ValueError):
    """Base class of the Mini FLUX world's errors (also a ``ValueError``)."""


class SceneError(MiniWorldError):
    """A scene spec, a request or a category is invalid (unknown shape/colour, bad count, ...)."""


# --------------------------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class SceneObject:
    """One shape of a scene.

    ``x, y``: centre of the bounding box in canvas pixels (floats; ``x`` grows rightwards, ``y``
    downwards); ``size``: side of the (square) bounding box in pixels. Triangles point up, with their
    base (``size`` wide) at the bottom of the box and their apex at the top.
    """

    shape: str
    color: str
    x: float
    y: float
    size: int

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise SceneError(f"unknown shape {self.shape!r}; expected one of {SHAPES}")
        if self.color not in COLORS:
            raise SceneError(f"unknown colour {self.color!r}; expected one of {COLORS}")
        if not self.size > 0:
            raise SceneError(f"object size must be positive, got {self.size}")

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """``(x0, y0, x1, y1)``: the bounding box, ``x1``/``y1`` exclusive."""
        h = self.size / 2
        return (self.x - h, self.y - h, self.x + h, self.y + h)

    @property
    def centroid(self) -> tuple[float, float]:
        """``(x, y)`` of the shape's centre of mass (a triangle's lies ``size/6`` below its box centre)."""
        return (self.x, self.y + self.size / 6) if self.shape == "triangle" else (self.x, self.y)


@dataclass(frozen=True)
class Scene:
    """A scene spec: the objects painted on the black canvas (a list is stored as a tuple)."""

    objects: tuple[SceneObject, ...]

    def __post_init__(self) -> None:
        objects = tuple(self.objects)
        if not all(isinstance(o, SceneObject) for o in objects):
            raise SceneError("Scene.objects must contain SceneObject instances")
        object.__setattr__(self, "objects", objects)

    def __len__(self) -> int:
        return len(self.objects)


@dataclass(frozen=True)
class Description:
    """An object description of a caption: a shape and, optionally, a colour."""

    shape: str
    color: str | None = None

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise SceneError(f"unknown shape {self.shape!r}; expected one of {SHAPES}")
        if self.color is not None and self.color not in COLORS:
            raise SceneError(f"unknown colour {self.color!r}; expected one of {COLORS} or None")

    def matches(self, obj: "HasAttributes") -> bool:
        """Whether ``obj`` (anything with ``shape`` and ``color``) fits this description."""
        return obj.shape == self.shape and (self.color is None or obj.color == self.color)


def distinguishable(a: Description, b: Description) -> bool:
    """Whether no object can fit both descriptions: different shapes, or two different colours given."""
    return a.shape != b.shape or (a.color is not None and b.color is not None and a.color != b.color)


@dataclass(frozen=True)
class Request:
    """What a caption asks for.

    - ``objects``: one :class:`Description` (``count`` objects all fitting it) or two (exactly one
      object fitting each; the two must be :func:`distinguishable`);
    - ``count``: the exact number of objects in the image (1-4; 2 when there are two descriptions);
    - ``relation``: ``None`` or one of :data:`RELATIONS`, "objects[0] <relation> objects[1]".

    The category is derived from this structure (:attr:`category`).
    """

    objects: tuple[Description, ...]
    count: int
    relation: str | None = None

    def __post_init__(self) -> None:
        objects = tuple(self.objects)
        object.__setattr__(self, "objects", objects)
        if not all(isinstance(d, Description) for d in objects):
            raise SceneError("Request.objects must contain Description instances")
        if len(objects) not in (1, 2):
            raise SceneError(f"a request describes 1 or 2 objects, got {len(objects)}")
        if self.relation is not None and self.relation not in RELATIONS:
            raise SceneError(f"unknown relation {self.relation!r}; expected one of {RELATIONS}")
        if len(objects) == 1:
            if not 1 <= self.count <= MAX_OBJECTS:
                raise SceneError(f"count must be in 1..{MAX_OBJECTS}, got {self.count}")
            if self.relation is not None:
                raise SceneError("a relation needs two object descriptions")
        else:
            if self.count != 2:
                raise SceneError(f"a request with two descriptions has count 2, got {self.count}")
            if not distinguishable(*objects):
                raise SceneError(
                    f"the two descriptions {objects[0]} and {objects[1]} are not distinguishable: "
                    "use different shapes, or the same shape with two different colours"
                )

    @property
    def category(self) -> str:
        """``position`` (a relation), ``color_attr`` (two descriptions, both coloured), ``two_objects``
        (two descriptions, not both coloured), ``single_object`` / ``colors`` (one object without /
        with a colour) or ``counting`` (2-4 objects of one description)."""
        if self.relation is not None:
            return "position"
        if len(self.objects) == 2:
            return "color_attr" if all(d.color is not None for d in self.objects) else "two_objects"
        if self.count == 1:
            return "colors" if self.objects[0].color is not None else "single_object"
        return "counting"


class HasAttributes(Protocol):
    shape: str
    color: str


class Judgeable(HasAttributes, Protocol):
    @property
    def centroid(self) -> tuple[float, float]: ...


# --------------------------------------------------------------------------------------- relations


def relation_holds(
    a: tuple[float, float],
    b: tuple[float, float],
    relation: str,
    min_offset: float = JUDGE_MIN_OFFSET,
    dominance: float = JUDGE_DOMINANCE,
) -> bool:
    """Whether "A <relation> B" holds for centroids ``a`` and ``b`` (``(x, y)``, y downwards).

    The offset along the relation's axis must be at least ``min_offset`` px in the right direction,
    and more than ``dominance`` times the absolute offset along the other axis.
    """
    dx, dy = b[0] - a[0], b[1] - a[1]
    if relation == "left_of":
        main, cross = dx, dy
    elif relation == "right_of":
        main, cross = -dx, dy
    elif relation == "above":
        main, cross = dy, dx
    elif relation == "below":
        main, cross = -dy, dx
    else:
        raise SceneError(f"unknown relation {relation!r}; expected one of {RELATIONS}")
    return main >= min_offset and main > dominance * abs(cross)


def satisfies(objects: Sequence[Judgeable], request: Request) -> bool:
    """Whether ``objects`` fulfil ``request`` exactly.

    ``objects`` are :class:`SceneObject` or detected objects (anything with ``shape``, ``color`` and
    ``centroid``); an object whose shape or colour is ``"unknown"`` fits no description. There must
    be exactly ``request.count`` objects: no missing and no extra ones.
    """
    if len(objects) != request.count:
        return False
    if len(request.objects) == 1:
        return all(request.objects[0].matches(o) for o in objects)
    first, second = request.objects
    for a, b in itertools.permutations(objects, 2):
        if first.matches(a) and second.matches(b):
            if request.relation is None or relation_holds(a.centroid, b.centroid, request.relation):
                return True
    return False


# ---------------------------------------------------------------------------------------- renderer


def shape_mask(
    shape: str, x: float, y: float, width: float, height: float | None = None, canvas: int = CANVAS
) -> np.ndarray:
    """bool ``[canvas, canvas]``: the pixels whose centre lies inside the shape.

    The shape fills the box of ``width x height`` (``height`` defaults to ``width``) centred on
    ``(x, y)``: a square/rectangle, a circle/ellipse, or an up-pointing isosceles triangle (apex at the
    top centre, base along the bottom edge).
    """
    height = width if height is None else height
    px = np.arange(canvas, dtype=np.float64)[None, :] + 0.5 - x
    py = np.arange(canvas, dtype=np.float64)[:, None] + 0.5 - y
    hw, hh = width / 2, height / 2
    if shape == "square":
        return (np.abs(px) < hw) & (np.abs(py) < hh)
    if shape == "circle":
        return (px / hw) ** 2 + (py / hh) ** 2 <= 1.0
    if shape == "triangle":
        v = py + hh  # depth below the apex
        return (v >= 0) & (v <= height) & (np.abs(px) <= v / height * hw)
    raise SceneError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def object_mask(obj: SceneObject, canvas: int = CANVAS) -> np.ndarray:
    """bool ``[canvas, canvas]``: the pixels :func:`render` paints for ``obj``."""
    return shape_mask(obj.shape, obj.x, obj.y, obj.size, canvas=canvas)


def render(scene: Scene, canvas: int = CANVAS) -> np.ndarray:
    """uint8 ``[canvas, canvas, 3]`` RGB image of ``scene``: black background, crisp palette shapes.

    Deterministic: a function of the spec only. Objects are painted in order (specs from the
    samplers never overlap, so the order does not matter for them).
    """
    if not isinstance(scene, Scene):
        raise SceneError(f"render expects a Scene, got {type(scene).__name__}")
    image = np.zeros((canvas, canvas, 3), dtype=np.uint8)
    for obj in scene.objects:
        image[object_mask(obj, canvas)] = PALETTE[obj.color]
    return image


# --------------------------------------------------------------------------------------- placement


def _make(shape: str, color: str, left: int, top: int, size: int) -> SceneObject:
    return SceneObject(shape, color, left + size / 2, top + size / 2, size)


def boxes_gap(a: SceneObject, b: SceneObject) -> float:
    """Empty pixels between the bounding boxes of ``a`` and ``b`` (negative when they overlap)."""
    ax0, ay0, ax1, ay1 = a.bbox
    bx0, by0, bx1, by1 = b.bbox
    return max(bx0 - ax1, ax0 - bx1, by0 - ay1, ay0 - by1)


def _random_corner(size: int, rng: np.random.Generator) -> tuple[int, int]:
    hi = CANVAS - MARGIN - size  # inclusive upper bound of the box's left/top edge
    return int(rng.integers(MARGIN, hi + 1)), int(rng.integers(MARGIN, hi + 1))


def _place_one(kind: tuple[str, str], rng: np.random.Generator) -> list[SceneObject]:
    size = OBJECT_SIZES[int(rng.integers(len(OBJECT_SIZES)))]
    return [_make(*kind, *_random_corner(size, rng), size)]


def _place_two(kinds: Sequence[tuple[str, str]], relation: str | None, rng: np.random.Generator,
               max_tries: int = 100_000) -> list[SceneObject]:
    """Rejection sampling of sizes and positions: boxes ``MIN_GAP`` apart, relation clear-cut."""
    for _ in range(max_tries):
        objs = []
        for kind in kinds:
            size = OBJECT_SIZES[int(rng.integers(len(OBJECT_SIZES)))]
            objs.append(_make(*kind, *_random_corner(size, rng), size))
        if boxes_gap(*objs) < MIN_GAP:
            continue
        if relation is not None and not relation_holds(
            objs[0].centroid, objs[1].centroid, relation, PLACEMENT_MIN_OFFSET, PLACEMENT_DOMINANCE
        ):
            continue
        return objs
    raise RuntimeError("could not place two objects")  # pragma: no cover - probability ~0


def _place_grid(kinds: Sequence[tuple[str, str]], rng: np.random.Generator) -> list[SceneObject]:
    """3-4 objects in distinct cells of a 2x2 grid, jittered inside their cell."""
    cell = (CANVAS - 2 * MARGIN - MIN_GAP) // 2  # 13 px: cells [2, 15) and [17, 30)
    cells = rng.permutation(4)[: len(kinds)]
    objs = []
    for kind, c in zip(kinds, cells):
        size = CROWDED_SIZES[int(rng.integers(len(CROWDED_SIZES)))]
        row, col = divmod(int(c), 2)
        left = MARGIN + col * (cell + MIN_GAP) + int(rng.integers(0, cell - size + 1))
        top = MARGIN + row * (cell + MIN_GAP) + int(rng.integers(0, cell - size + 1))
        objs.append(_make(*kind, left, top, size))
    return objs


def place_objects(kinds: Sequence[tuple[str, str]], rng: np.random.Generator,
                  relation: str | None = None) -> Scene:
    """A scene with one object per ``(shape, colour)`` in ``kinds`` (1-4 of them), in that order.

    Objects stay ``MARGIN`` px inside the canvas and ``MIN_GAP`` px apart. With ``relation`` (two
    objects only), "kinds[0] <relation> kinds[1]" holds with a centroid offset of at least
    ``PLACEMENT_MIN_OFFSET`` px that dominates the cross-axis offset ``PLACEMENT_DOMINANCE`` times.
    """
    n = len(kinds)
    if not 1 <= n <= MAX_OBJECTS:
        raise SceneError(f"a scene has 1..{MAX_OBJECTS} objects, got {n}")
    if relation is not None and n != 2:
        raise SceneError("a relation needs exactly two objects")
    if n == 1:
        objs = _place_one(kinds[0], rng)
    elif n == 2:
        objs = _place_two(kinds, relation, rng)
    else:
        objs = _place_grid(kinds, rng)
    return Scene(tuple(objs))


def realize(request: Request, rng: np.random.Generator) -> Scene:
    """A random scene fulfilling ``request`` (``satisfies(scene.objects, request)`` holds).

    Unspecified colours are drawn uniformly and independently per object.
    """
    def pick(desc: Description) -> tuple[str, str]:
        return desc.shape, desc.color if desc.color is not None else COLORS[int(rng.integers(len(COLORS)))]

    if len(request.objects) == 1:
        kinds = [pick(request.objects[0]) for _ in range(request.count)]
    else:
        kinds = [pick(d) for d in request.objects]
    return place_objects(kinds, rng, request.relation)
