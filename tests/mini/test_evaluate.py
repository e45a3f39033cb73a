"""The pixel evaluator: exact on ground truth, strict on wrong content, tolerant of mild degradation."""

import importlib
from collections import deque

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from torch_ternary.mini import (
    CATEGORIES,
    COLORS,
    PALETTE,
    SHAPES,
    Description,
    ImageFormatError,
    Request,
    Scene,
    SceneObject,
    describe,
    evaluate,
    evaluation_prompts,
    judge,
    parse,
    render,
    sample_scene,
    satisfies,
)
from torch_ternary.mini.grammar import all_requests, caption
from torch_ternary.mini.world import object_mask, shape_mask

ev = importlib.import_module("torch_ternary.mini.evaluate")  # the attribute is the function

N_PER_CATEGORY = 500
MIRROR = {"left_of": "right_of", "right_of": "left_of", "above": "below", "below": "above"}
ORTHOGONAL = {"left_of": "above", "right_of": "below", "above": "right_of", "below": "left_of"}


@pytest.fixture(scope="module")
def ground_truth():
    """``{category: [(scene, caption, image), ...]}``: 500 seeded renders per category."""
    rng = np.random.default_rng(20240601)
    out = {}
    for category in CATEGORIES:
        items = []
        for _ in range(N_PER_CATEGORY):
            scene, text = sample_scene(category, rng)
            items.append((scene, text, render(scene)))
        out[category] = items
    return out


def _other(values, *exclude, rng):
    choices = [v for v in values if v not in exclude]
    return choices[int(rng.integers(len(choices)))]


def wrong_requests(request: Request, rng) -> list[Request]:
    """Requests a scene realizing ``request`` cannot satisfy: wrong shape, colour, count, relation,
    swapped attributes, a missing object."""
    out = []
    if len(request.objects) == 1:
        (d,) = request.objects
        out.append(Request((Description(_other(SHAPES, d.shape, rng=rng), d.color),), request.count))
        if d.color is not None:
            out.append(Request((Description(d.shape, _other(COLORS, d.color, rng=rng)),), request.count))
        out.append(Request((d,), request.count + 1 if request.count < 4 else request.count - 1))
        if request.count == 1:
            out.append(Request((d, Description(_other(SHAPES, d.shape, rng=rng))), 2))  # a missing object
        return out
    a, b = request.objects
    rel = request.relation
    if rel is not None:
        out += [Request((a, b), 2, MIRROR[rel]), Request((b, a), 2, rel), Request((a, b), 2, ORTHOGONAL[rel])]
    if a.color is not None and b.color is not None and a.shape != b.shape and a.color != b.color:
        out.append(Request((Description(a.shape, b.color), Description(b.shape, a.color)), 2, rel))  # swapped
    third = _other(SHAPES, a.shape, b.shape, rng=rng)
    out.append(Request((a, Description(third, b.color)), 2, rel))
    if b.color is not None:
        out.append(Request((a, Description(b.shape, _other(COLORS, a.color, b.color, rng=rng))), 2, rel))
    out.append(Request((a,), 1))  # the image has an extra object
    out.append(Request((a,), 2) if a.shape != b.shape else Request((Description(a.shape),), 3))
    return out


# ------------------------------------------------------------------------------- ground truth


def test_ground_truth_is_judged_correct(ground_truth):
    rates = {}
    for category, items in ground_truth.items():
        rates[category] = np.mean([evaluate(image, text) for _, text, image in items])
    print("\nground-truth acceptance:", {c: f"{r:.1%}" for c, r in rates.items()})
    for category, rate in rates.items():
        assert rate >= 0.99, (category, rate)


def test_wrong_requests_are_rejected(ground_truth):
    rng = np.random.default_rng(77)
    rates, counts = {}, {}
    for category, items in ground_truth.items():
        rejected = total = 0
        for scene, text, image in items:
            objects = describe(image)
            for wrong in wrong_requests(parse(text), rng):
                assert not satisfies(scene.objects, wrong), (text, caption(wrong))  # truly wrong
                total += 1
                rejected += not judge(objects, wrong)
        rates[category] = rejected / total
        counts[category] = total
    print("\nrejection of wrong requests:", {c: f"{r:.1%} of {counts[c]}" for c, r in rates.items()})
    for category, rate in rates.items():
        assert rate >= 0.99, (category, rate)


def test_evaluator_agrees_with_the_spec_on_other_scenes(ground_truth):
    """Images of one request judged against random requests (two of its category, one of any), vs
    the spec oracle: images of *different* requests are rejected, coincidental matches accepted."""
    rng = np.random.default_rng(5)
    everything = [r for c in CATEGORIES for r in all_requests(c)]
    agree = total = positives = 0
    for category, items in ground_truth.items():
        same = all_requests(category)
        for scene, _, image in items[:200]:
            objects = describe(image)
            for pool in (same, same, everything):
                request = pool[int(rng.integers(len(pool)))]
                truth = satisfies(scene.objects, request)
                positives += truth
                agree += judge(objects, request) == truth
                total += 1
    print(f"\nagreement with the spec on {total} random requests: {agree / total:.2%} ({positives} satisfied)")
    assert agree / total >= 0.99


def test_describe_recovers_the_spec(ground_truth):
    for category in ("counting", "position", "color_attr"):
        for scene, _, image in ground_truth[category][:100]:
            found = describe(image)
            assert len(found) == len(scene.objects)
            for obj in scene.objects:
                mask = object_mask(obj)
                ys, xs = np.nonzero(mask)
                match = [d for d in found if d.bbox == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)]
                assert len(match) == 1
                d = match[0]
                assert (d.shape, d.color, d.area) == (obj.shape, obj.color, mask.sum())
                assert abs(d.centroid[0] - obj.centroid[0]) < 0.25 and abs(d.centroid[1] - obj.centroid[1]) < 0.25
                assert d.scores[0][0] == obj.shape and d.scores[0][1] >= 0.9
                assert d.scores[0][1] - d.scores[1][1] >= 0.25  # a wide margin over the runner-up


# ------------------------------------------------------------------------------- junk images


def _junk_images():
    rng = np.random.default_rng(0)
    return {
        "black": np.zeros((32, 32, 3), np.uint8),
        "white": np.full((32, 32, 3), 255, np.uint8),
        "grey": np.full((32, 32, 3), 128, np.uint8),
        "noise_uint8": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
        "noise_float": rng.random((32, 32, 3)),
        "noise_64": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
        "red_everywhere": np.broadcast_to(np.array(PALETTE["red"], np.uint8), (32, 32, 3)).copy(),
    }


@pytest.mark.parametrize("name", list(_junk_images()))
def test_junk_images_are_rejected_for_every_prompt(name):
    image = _junk_images()[name]
    for prompt in evaluation_prompts():
        assert not evaluate(image, prompt), (name, prompt)


def test_more_noise_images_are_rejected():
    rng = np.random.default_rng(1)
    prompts = evaluation_prompts()
    for _ in range(20):
        objects = describe(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
        assert not any(judge(objects, p) for p in prompts)


# ------------------------------------------------------------------------------- strictness


def _paint(*items):
    """uint8 image of ``(mask, colour name)`` items on black."""
    image = np.zeros((32, 32, 3), np.uint8)
    for mask, color in items:
        image[mask] = PALETTE[color]
    return image


def _grid():
    px = np.arange(32) + 0.5
    return np.meshgrid(px, px)


@pytest.mark.parametrize("size", [9, 11, 13])
def test_shapes_outside_the_world_are_not_recognized(size):
    x, y = _grid()
    c = 16.5
    tri = shape_mask("triangle", c, c, size)
    outsiders = {
        "inverted triangle": tri[::-1],
        "left triangle": tri.T,
        "diamond": (abs(x - c) + abs(y - c)) <= size / 2,
        "ring": shape_mask("circle", c, c, size) & ~shape_mask("circle", c, c, size - 4),
        "hollow square": shape_mask("square", c, c, size) & ~shape_mask("square", c, c, size - 4),
        "cross": ((abs(x - c) < 2) & (abs(y - c) < size / 2)) | ((abs(y - c) < 2) & (abs(x - c) < size / 2)),
        "bar": shape_mask("square", c, c, size, 4),
        "ellipse": shape_mask("circle", c, c, size, size * 0.6),
    }
    for name, mask in outsiders.items():
        found = describe(_paint((mask, "red")))
        assert [d.shape for d in found] == ["unknown"], (name, found)
        for shape in SHAPES:
            assert not evaluate(_paint((mask, "red")), f"a {shape}"), name


def test_touching_objects_merge_and_fail():
    a = shape_mask("circle", 11.5, 16.5, 11)
    b = shape_mask("circle", 21.5, 16.5, 11)
    image = _paint((a, "blue"), (b, "blue"))
    assert not evaluate(image, "two blue circles")
    assert not evaluate(image, "a blue circle")


def test_specks_are_ignored_but_extra_objects_are_not():
    circle = shape_mask("circle", 8.5, 8.5, 11)
    speck = np.zeros((32, 32), bool)
    speck[25:27, 25:27] = True  # 4 px
    small_square = shape_mask("square", 24, 24, 5)  # 25 px: small, but an object
    assert evaluate(_paint((circle, "red")), "a red circle")
    assert evaluate(_paint((circle, "red"), (speck, "green")), "a red circle")
    assert not evaluate(_paint((circle, "red"), (small_square, "green")), "a red circle")
    white_blob = np.zeros((32, 32), bool)
    white_blob[22:28, 22:28] = True
    image = _paint((circle, "red"))
    image[white_blob] = 255
    assert not evaluate(image, "a red circle")  # an unrecognized blob is an extra object


def test_relations_are_judged_on_centroids():
    left = shape_mask("circle", 8.5, 16.5, 11)
    right = shape_mask("square", 24.5, 14.5, 11)
    image = _paint((left, "red"), (right, "blue"))
    assert evaluate(image, "a red circle to the left of a blue square")
    assert evaluate(image, "a blue square to the right of a red circle")
    assert evaluate(image, "a circle left of a square")
    assert not evaluate(image, "a red circle to the right of a blue square")
    assert not evaluate(image, "a red circle above a blue square")
    assert not evaluate(image, "a red circle below a blue square")
    assert not evaluate(image, "a blue circle to the left of a red square")
    diagonal = _paint((shape_mask("circle", 8.5, 8.5, 11), "red"), (shape_mask("square", 23.5, 23.5, 11), "blue"))
    for rel in ("to the left of", "to the right of", "above", "below"):
        assert not evaluate(diagonal, f"a red circle {rel} a blue square")  # no axis dominates
    assert evaluate(diagonal, "a red circle and a blue square")


# ------------------------------------------------------------------------------- robustness


def _blur(image, sigma):
    r = int(3 * sigma) + 1
    k = np.exp(-np.arange(-r, r + 1) ** 2 / (2 * sigma**2))
    k /= k.sum()
    f = np.pad(image.astype(np.float64), ((r, r), (r, r), (0, 0)))
    f = sum(k[i] * f[i: i + image.shape[0]] for i in range(2 * r + 1))
    return sum(k[i] * f[:, i: i + image.shape[1]] for i in range(2 * r + 1))


def test_mildly_blurred_noisy_images_are_still_accepted(ground_truth):
    rng = np.random.default_rng(3)
    rates = {}
    for category, items in ground_truth.items():
        ok = 0
        for _, text, image in items[:100]:
            degraded = _blur(image, 0.7) + rng.normal(0, 15, image.shape)
            ok += evaluate(np.clip(degraded, 0, 255).astype(np.uint8), text)
        rates[category] = ok / 100
    print("\nacceptance under blur 0.7 px + noise 15:", rates)
    assert min(rates.values()) >= 0.97


def test_colour_shifts_and_dim_backgrounds_are_tolerated(ground_truth):
    rng = np.random.default_rng(4)
    for _, text, image in ground_truth["color_attr"][:100]:
        shifted = image.astype(np.float64)
        painted = image.sum(-1) > 0
        shifted[painted] += rng.uniform(-30, 30, 3)
        shifted[~painted] += 30  # dark grey background
        assert evaluate(np.clip(shifted, 0, 255).astype(np.uint8), text), text


# ------------------------------------------------------------------------------- inputs


def test_input_formats(ground_truth):
    from PIL import Image

    _, text, image = ground_truth["position"][0]
    assert evaluate(image, text)
    assert evaluate(Image.fromarray(image), text)
    assert evaluate(image / 255.0, text)
    assert evaluate((image / 255.0).astype(np.float32), text)
    assert evaluate(image.astype(np.int64), text)
    assert evaluate(np.kron(image, np.ones((2, 2, 1), np.uint8)), text)  # 64x64
    assert evaluate(Image.fromarray(image).resize((128, 128), Image.BICUBIC), text)
    assert evaluate(Image.fromarray(image).convert("RGBA"), text)
    assert evaluate(image, parse(text))  # a Request works too


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((32, 32), np.uint8),
        np.zeros((32, 32, 4), np.uint8),
        np.zeros((3, 32, 32), np.uint8),
        np.zeros((33, 33, 3), np.uint8),
        np.zeros((32, 64, 3), np.uint8),
        np.zeros((0, 0, 3), np.uint8),
        np.full((32, 32, 3), 2.0),
        np.full((32, 32, 3), -1.0),
        np.full((32, 32, 3), np.nan),
        np.full((32, 32, 3), 300, np.int32),
        np.zeros((32, 32, 3), bool),
        np.zeros((32, 32, 3), complex),
    ],
)
def test_unreadable_images_raise(bad):
    with pytest.raises(ImageFormatError) as info:
        evaluate(bad, "a circle")
    assert isinstance(info.value, ValueError)


def test_invalid_prompts_raise():
    with pytest.raises(ValueError):
        evaluate(np.zeros((32, 32, 3), np.uint8), "a purple dog")


# ------------------------------------------------------------------------------- internals


def _reference_components(classes, connectivity):
    h, w = classes.shape
    labels = np.zeros((h, w), int)
    n = 0
    nbrs = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    if connectivity == 8:
        nbrs += [(-1, -1), (-1, 1), (1, -1), (1, 1)]
    for i in range(h):
        for j in range(w):
            if classes[i, j] and not labels[i, j]:
                n += 1
                labels[i, j] = n
                queue = deque([(i, j)])
                while queue:
                    y, x = queue.popleft()
                    for dy, dx in nbrs:
                        v, u = y + dy, x + dx
                        if 0 <= v < h and 0 <= u < w and not labels[v, u] and classes[v, u] == classes[y, x]:
                            labels[v, u] = n
                            queue.append((v, u))
    return labels, n


@given(arrays(np.int8, (12, 12), elements=st.integers(0, 3)), st.sampled_from([4, 8]))
def test_connected_components_match_bfs(classes, connectivity):
    labels, n = ev.connected_components(classes, connectivity)
    ref, ref_n = _reference_components(classes, connectivity)
    assert n == ref_n
    assert np.array_equal(labels == 0, ref == 0)
    # same partition: labels map one-to-one onto the reference labels
    pairs = {(a, b) for a, b in zip(labels[ref > 0], ref[ref > 0])}
    assert len(pairs) == n == len({a for a, _ in pairs}) == len({b for _, b in pairs})


def test_connected_components_on_a_serpentine():
    """One long winding 4-connected path (~500 px) converges and stays one component."""
    grid = np.zeros((32, 32), np.int8)
    grid[::2] = 1
    for row in range(1, 32, 2):
        grid[row, 31 if row % 4 == 1 else 0] = 1
    labels, n = ev.connected_components(grid, 4)
    assert n == 1 and np.array_equal(labels > 0, grid > 0)
    grid[5, 31] = 0  # cut the path: two components
    assert ev.connected_components(grid, 4)[1] == 2


def test_detected_objects_of_a_known_scene():
    scene = Scene([
        SceneObject("triangle", "yellow", 8.5, 8.5, 11),
        SceneObject("square", "green", 23.5, 8.5, 9),
        SceneObject("circle", "blue", 16.5, 23.5, 13),
    ])
    found = describe(render(scene))
    assert [(d.shape, d.color) for d in found] == [("square", "green"), ("triangle", "yellow"), ("circle", "blue")]
    assert all(d.scores[0][1] >= 0.9 for d in found)
    assert evaluate(render(scene), "a yellow triangle and a green square") is False  # a third object
