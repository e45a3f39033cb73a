"""Exact, pixel-only evaluator of Mini FLUX images: does an image satisfy a caption?

Pipeline (all numpy, on a 32x32 image; larger square images whose side is a multiple of 32 are
block-averaged down first):

1. **Pixel classes** (:func:`classify_pixels`). Each RGB pixel ``p`` is compared with the ray
   ``t * c`` of every palette colour ``c`` (``t = p.c / c.c``; the residual ``|p - t c|`` measures
   the hue/saturation error, ``t`` the brightness relative to the palette). A pixel is colour ``c``
   when its smallest residual is ``<= COLOR_RESIDUAL`` and ``t >= MIN_BRIGHTNESS``; it is background
   when it is dark (``|p| <= DARK_NORM``) or a dim version of a palette colour (a blurred edge); any
   other pixel (white, grey, other hues) is *unknown*. One-pixel holes inside a colour are filled.
2. **Components**: 8-connected components of equal class (:func:`connected_components`). Colour
   components below ``NOISE_AREA`` pixels (unknown ones below ``UNKNOWN_NOISE_AREA``) are specks
   and ignored; every other component is an object.
3. **Shapes** (:func:`classify_shape`): a colour component is compared (IoU) with a circle, a square
   and an up-pointing triangle fitted to its bounding box and to its area and centroid; each
   shape's score is its best IoU minus penalties for a row profile (:func:`row_profile`: widths of
   the top and bottom thirds) and a box fill ratio unlike that shape's. The best score wins if it is
   ``>= MIN_SHAPE_SCORE``, the box is at most ``MAX_ASPECT`` elongated and its sides are 6-20 px;
   otherwise the shape is ``"unknown"``. Unknown-colour components have an unknown shape.
4. **Judgement** (:func:`~torch_ternary.mini.world.satisfies`): exactly the requested number of
   objects, none unknown, descriptions matched (for pairs: some assignment), relations on centroids
   (main-axis offset ``>= 3`` px and larger than the cross-axis offset).

Rendered ground truth scores >= 0.94 for its own shape and <= 0.70 for the others; the thresholds
leave room for blur, noise and slightly wrong colours or outlines (see ``docs/mini.md``).

Note: ``torch_ternary.mini.evaluate`` the *attribute* is the :func:`evaluate` function; reach this
module with ``importlib.import_module("torch_ternary.mini.evaluate")`` or ``from
torch_ternary.mini.evaluate import ...``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .grammar import parse
from .world import CANVAS, COLORS, PALETTE_ARRAY, SHAPES, MiniWorldError, Request, satisfies, shape_mask


class ImageFormatError(MiniWorldError):
    """An image the evaluator cannot read: wrong rank/channels/size, or float values outside [0, 1]."""


DARK_NORM = 80.0
"""Pixels with RGB norm (0-255 scale) at most this are background."""

COLOR_RESIDUAL = 70.0
"""Largest distance (0-255 scale) from a palette colour's brightness ray for a pixel of that colour."""

MIN_BRIGHTNESS = 0.5
"""Smallest brightness ``t`` (relative to the palette colour) of an object pixel; dimmer is background."""

NOISE_AREA = 12
"""Colour components with fewer pixels are specks (noise), not objects."""

UNKNOWN_NOISE_AREA = 20
"""Components of unknown-class pixels with fewer pixels are ignored; larger ones are unknown objects."""

MIN_SHAPE_SCORE = 0.65
"""Smallest shape score (template IoU minus the profile and fill penalties) for a component to get a shape."""

EXPECTED_PROFILE: dict[str, tuple[float, float]] = {
    "circle": (0.7, 0.7),
    "square": (1.0, 1.0),
    "triangle": (0.17, 0.86),
}
"""Typical :func:`row_profile` of each shape."""

PROFILE_WEIGHT = 0.3
"""A shape's score is its best template IoU minus ``PROFILE_WEIGHT * |profile - EXPECTED_PROFILE|_1`` ..."""

EXPECTED_FILL: dict[str, float] = {"circle": 0.81, "square": 1.0, "triangle": 0.5}
"""Typical fraction of its bounding box a shape fills (rendered circles: 0.80-0.85)."""

FILL_WEIGHT = 0.2
"""... minus ``FILL_WEIGHT * |fill - EXPECTED_FILL|``."""

MAX_ASPECT = 1.4
"""Largest bounding-box aspect ratio (long side / short side) of a shaped object."""

MIN_OBJECT_SIDE = 6
MAX_OBJECT_SIDE = 20
"""Shaped objects have a bounding box whose sides are 6-20 px (rendered: 9-13); others are unknown."""

MOMENT_SIDE_TOLERANCE = 2.0
"""The area-and-centroid fit counts only when its side is within 2 px of the box's mean side."""

UNKNOWN = "unknown"
_UNKNOWN_CLASS = len(COLORS) + 1


@dataclass(frozen=True)
class DetectedObject:
    """An object found in an image.

    ``shape``: one of SHAPES or ``"unknown"``; ``color``: one of COLORS or ``"unknown"``; ``area``:
    pixels; ``bbox``: ``(x0, y0, x1, y1)`` in pixels, exclusive ends; ``centroid``: ``(x, y)`` in
    pixels (y downwards, pixel centres at +0.5); ``scores``: ``(shape, score)`` for each shape, best
    first (see :func:`classify_shape`; empty for unknown-colour objects).
    """

    shape: str
    color: str
    area: int
    bbox: tuple[int, int, int, int]
    centroid: tuple[float, float]
    scores: tuple[tuple[str, float], ...] = ()


# ------------------------------------------------------------------------------------------- input


def to_array(image) -> np.ndarray:
    """float32 ``[32, 32, 3]`` RGB on a 0-255 scale from ``image``.

    ``image``: a ``PIL.Image`` (any mode, converted to RGB) or an array ``[H, W, 3]`` (uint8 / integer
    0-255, or float in [0, 1]), ``H == W`` a multiple of 32; larger images are averaged over
    ``(H/32) x (W/32)`` blocks. Raises :class:`ImageFormatError` otherwise.
    """
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL.Image, without importing PIL
        image = np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ImageFormatError(f"expected an RGB image [H, W, 3], got shape {arr.shape}")
    h, w = arr.shape[:2]
    if h != w or h == 0 or h % CANVAS:
        raise ImageFormatError(f"expected a square image whose side is a multiple of {CANVAS}, got {h}x{w}")
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ImageFormatError(f"unsupported image dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise ImageFormatError("float image contains NaN or Inf")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < -0.1 or hi > 1.1:
            raise ImageFormatError(f"float images must be in [0, 1], got values in [{lo:.3g}, {hi:.3g}]")
        arr = np.clip(arr.astype(np.float32), 0.0, 1.0) * 255.0
    else:
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ImageFormatError("integer images must be in 0..255")
        arr = arr.astype(np.float32)
    if h != CANVAS:
        k = h // CANVAS
        arr = arr.reshape(CANVAS, k, CANVAS, k, 3).mean(axis=(1, 3))
    return arr


# ----------------------------------------------------------------------------------------- pixels


def classify_pixels(rgb: np.ndarray) -> np.ndarray:
    """int8 ``[H, W]`` pixel classes of float ``[H, W, 3]`` (0-255): 0 background, ``k + 1`` for
    ``COLORS[k]``, ``len(COLORS) + 1`` unknown (see the module docstring)."""
    p = rgb.reshape(-1, 3).astype(np.float64)
    c = PALETTE_ARRAY.astype(np.float64)
    dots = p @ c.T  # [N, 4]
    cc = (c * c).sum(1)
    t = dots / cc
    pp = (p * p).sum(1)
    residual = np.sqrt(np.maximum(pp[:, None] - t * dots, 0.0))
    best = residual.argmin(1)
    best_res = residual[np.arange(len(p)), best]
    best_t = t[np.arange(len(p)), best]
    norm = np.sqrt(pp)
    hue_ok = best_res <= COLOR_RESIDUAL
    cls = np.full(len(p), _UNKNOWN_CLASS, dtype=np.int8)
    cls[hue_ok & (best_t < MIN_BRIGHTNESS)] = 0
    cls[norm <= DARK_NORM] = 0
    colored = hue_ok & (best_t >= MIN_BRIGHTNESS) & (norm > DARK_NORM)
    cls[colored] = best[colored] + 1
    return cls.reshape(rgb.shape[:2])


def fill_pinholes(classes: np.ndarray) -> np.ndarray:
    """int8 ``[H, W]``: ``classes`` where every background/unknown pixel whose 4 neighbours all have
    the same colour class takes that class (one pass; noise punches such holes into shapes; the
    renderer's convex shapes have none, so ground truth is unchanged)."""
    h, w = classes.shape
    pad = np.pad(classes, 1, constant_values=0)
    up, down = pad[:-2, 1:-1], pad[2:, 1:-1]
    left, right = pad[1:-1, :-2], pad[1:-1, 2:]
    hole = ((classes == 0) | (classes == _UNKNOWN_CLASS)) & (up > 0) & (up < _UNKNOWN_CLASS)
    hole &= (up == down) & (up == left) & (up == right)
    out = classes.copy()
    out[hole] = up[hole]
    return out


_NEIGHBOURS_8 = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
_NEIGHBOURS_4 = ((-1, 0), (0, -1), (0, 1), (1, 0))


def connected_components(classes: np.ndarray, connectivity: int = 8) -> tuple[np.ndarray, int]:
    """Label the connected regions of equal non-zero class.

    ``classes``: integer ``[H, W]`` (0 = background). Returns int32 ``[H, W]`` labels (0 background,
    ``1..n`` components numbered in raster order of their first pixel) and ``n``. Min-label
    propagation with pointer jumping, so it converges in a few dozen vectorized steps.
    """
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    offsets = _NEIGHBOURS_8 if connectivity == 8 else _NEIGHBOURS_4
    h, w = classes.shape
    fg = classes != 0
    big = h * w + 1
    lab = np.where(fg, np.arange(1, h * w + 1, dtype=np.int64).reshape(h, w), big)
    cls_pad = np.pad(classes, 1, constant_values=0)
    same = []
    for dy, dx in offsets:
        nb = cls_pad[1 + dy: 1 + dy + h, 1 + dx: 1 + dx + w]
        same.append(fg & (nb == classes))
    while True:
        lab_pad = np.pad(lab, 1, constant_values=big)
        new = lab.copy()
        for (dy, dx), ok in zip(offsets, same):
            nb = lab_pad[1 + dy: 1 + dy + h, 1 + dx: 1 + dx + w]
            np.minimum(new, np.where(ok, nb, big), out=new)
        flat = new.ravel()
        idx = np.flatnonzero(fg)
        flat[idx] = np.minimum(flat[idx], flat[flat[idx] - 1])  # pointer jumping: label of my label
        if np.array_equal(new, lab):
            break
        lab = new
    roots, labels = np.unique(lab[fg], return_inverse=True)
    out = np.zeros((h, w), dtype=np.int32)
    out[fg] = labels.astype(np.int32) + 1
    return out, len(roots)


# ----------------------------------------------------------------------------------------- shapes


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 0.0


def classify_shape(mask: np.ndarray) -> tuple[str, tuple[tuple[str, float], ...]]:
    """Shape of one component: bool ``[H, W]`` mask -> ``(shape or "unknown", ((shape, score), ...))``.

    Templates of every shape are fitted to the component's bounding box and to its area and
    centroid (snapped to the pixel grid; used only when its side is within
    ``MOMENT_SIDE_TOLERANCE`` of the box's); a shape's score is the better IoU minus the row-profile
    and fill-ratio penalties. Scores are sorted best first.
    """
    ys, xs = np.nonzero(mask)
    area = len(xs)
    canvas = mask.shape[0]
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    bw, bh = x1 - x0, y1 - y0
    cx, cy = xs.mean() + 0.5, ys.mean() + 0.5
    bx, by = (x0 + x1) / 2, (y0 + y1) / 2
    moment_fit = {  # side of the shape of this area; its box centre from the centroid
        "circle": (np.sqrt(4 * area / np.pi), 0.0),
        "square": (np.sqrt(area), 0.0),
        "triangle": (np.sqrt(2 * area), -1 / 6),
    }
    profile = row_profile(mask[y0:y1, x0:x1])
    fill = area / (bw * bh)
    scores = []
    for shape in SHAPES:
        side, shift = moment_fit[shape]
        by_box = _iou(mask, shape_mask(shape, bx, by, bw, bh, canvas))
        side = max(1, round(side))  # snapped to the pixel grid, like rendered shapes
        left, top = round(cx - side / 2), round(cy + shift * side - side / 2)
        by_moments = _iou(mask, shape_mask(shape, left + side / 2, top + side / 2, side, side, canvas))
        if abs(side - (bw + bh) / 2) > MOMENT_SIDE_TOLERANCE:
            by_moments = 0.0
        expected = EXPECTED_PROFILE[shape]
        penalty = PROFILE_WEIGHT * (abs(profile[0] - expected[0]) + abs(profile[1] - expected[1]))
        penalty += FILL_WEIGHT * abs(fill - EXPECTED_FILL[shape])
        scores.append((shape, round(float(max(by_box, by_moments) - penalty), 4)))
    scores.sort(key=lambda s: -s[1])
    short, long = min(bw, bh), max(bw, bh)
    plausible = long / short <= MAX_ASPECT and MIN_OBJECT_SIDE <= short and long <= MAX_OBJECT_SIDE
    shape = scores[0][0] if scores[0][1] >= MIN_SHAPE_SCORE and plausible else UNKNOWN
    return shape, tuple(scores)


def row_profile(crop: np.ndarray) -> tuple[float, float]:
    """``(top, bottom)``: mean width of the top / bottom third of the rows of a bool ``[h, w]``
    component cropped to its bounding box, as a fraction of the box width. Rendered shapes: circle
    about (0.7, 0.7), square (1, 1), up-pointing triangle (0.17, 0.86); a diamond is (0.3, 0.3)."""
    widths = crop.sum(axis=1)
    k = max(1, len(widths) // 3)
    return float(widths[:k].mean() / crop.shape[1]), float(widths[-k:].mean() / crop.shape[1])


# ----------------------------------------------------------------------------------------- public


def describe(image) -> list[DetectedObject]:
    """The objects detected in ``image`` (see :func:`to_array` for accepted inputs), sorted by
    centroid (top to bottom, then left to right). Specks below the noise areas are left out."""
    classes = fill_pinholes(classify_pixels(to_array(image)))
    labels, n = connected_components(classes)
    if n == 0:
        return []
    flat_labels = labels.ravel()
    areas = np.bincount(flat_labels, minlength=n + 1)
    objects = []
    for k in range(1, n + 1):
        cls = int(classes.ravel()[np.argmax(flat_labels == k)])
        unknown_colour = cls == _UNKNOWN_CLASS
        if areas[k] < (UNKNOWN_NOISE_AREA if unknown_colour else NOISE_AREA):
            continue
        mask = labels == k
        ys, xs = np.nonzero(mask)
        bbox = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        centroid = (float(xs.mean()) + 0.5, float(ys.mean()) + 0.5)
        if unknown_colour:
            shape, scores = UNKNOWN, ()
        else:
            shape, scores = classify_shape(mask)
        color = UNKNOWN if unknown_colour else COLORS[cls - 1]
        objects.append(DetectedObject(shape, color, int(areas[k]), bbox, centroid, scores))
    objects.sort(key=lambda o: (o.centroid[1], o.centroid[0]))
    return objects


def judge(objects: list[DetectedObject], prompt: str | Request) -> bool:
    """Whether already :func:`describe`-d objects satisfy ``prompt`` (a caption or a Request)."""
    return satisfies(objects, parse(prompt))


def evaluate(image, prompt: str | Request) -> bool:
    """Whether ``image`` satisfies ``prompt``, decided from pixels alone.

    ``image``: ``PIL.Image`` or array ``[H, W, 3]`` (uint8 0-255 or float in [0, 1]), ``H == W`` a
    multiple of 32. ``prompt``: a caption of the grammar (:class:`~.grammar.CaptionError` otherwise)
    or a :class:`~.world.Request`. Exactly the requested objects must be present: nothing missing,
    nothing extra, no unrecognized blob.
    """
    request = parse(prompt)
    return satisfies(describe(image), request)
