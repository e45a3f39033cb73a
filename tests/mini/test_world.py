"""The Mini FLUX world: palette, rasterizer, renderer, placement, requests and the spec-level oracle."""

import numpy as np
import pytest

from torch_ternary.mini import CATEGORIES, COLORS, PALETTE, SHAPES, caption, parse, render, sample_scene
from torch_ternary.mini.grammar import all_requests
from torch_ternary.mini.world import (
    CANVAS,
    MARGIN,
    MIN_GAP,
    PALETTE_ARRAY,
    PLACEMENT_DOMINANCE,
    PLACEMENT_MIN_OFFSET,
    Description,
    Request,
    Scene,
    SceneError,
    SceneObject,
    boxes_gap,
    object_mask,
    place_objects,
    realize,
    relation_holds,
    satisfies,
    shape_mask,
)

N_SCENES = 300


def _pixel_centroid(mask):
    ys, xs = np.nonzero(mask)
    return xs.mean() + 0.5, ys.mean() + 0.5


@pytest.fixture(scope="module")
def scenes():
    """``{category: [(scene, caption), ...]}``, seeded."""
    rng = np.random.default_rng(1234)
    return {c: [sample_scene(c, rng) for _ in range(N_SCENES)] for c in CATEGORIES}


def test_palette_is_saturated_and_distinct():
    assert PALETTE_ARRAY.dtype == np.uint8 and PALETTE_ARRAY.shape == (len(COLORS), 3)
    for name, rgb in PALETTE.items():
        assert max(rgb) >= 200 and min(rgb) <= 60, name  # saturated, bright
    pal = PALETTE_ARRAY.astype(float)
    dist = np.linalg.norm(pal[:, None] - pal[None], axis=-1)
    assert dist[~np.eye(len(COLORS), dtype=bool)].min() > 150


@pytest.mark.parametrize("size, areas", [(9, (69, 81, 41)), (11, (97, 121, 61)), (13, (137, 169, 85))])
def test_shape_rasterization_is_exact(size, areas):
    left = 5
    x = y = left + size / 2
    for shape, area in zip(SHAPES, areas):
        mask = shape_mask(shape, x, y, size)
        assert mask.sum() == area, shape
        ys, xs = np.nonzero(mask)
        assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == (left, left + size, left, left + size), shape
    tri = shape_mask("triangle", x, y, size)
    widths = tri.sum(axis=1)[left: left + size]
    assert widths[0] == 1 and widths[-1] == size  # apex on top, base at the bottom
    assert np.all(np.diff(widths) >= 0)  # up-pointing: widths never shrink downwards
    # symmetric about the vertical axis through the centre (odd sizes sit on a pixel centre)
    for shape in SHAPES:
        crop = shape_mask(shape, x, y, size)[left: left + size, left: left + size]
        assert np.array_equal(crop, crop[:, ::-1]), shape


def test_render_is_deterministic_and_only_paints_palette_colours(scenes):
    allowed = {(0, 0, 0), *PALETTE.values()}
    for scene, _ in scenes["counting"][:50] + scenes["position"][:50]:
        img = render(scene)
        assert img.dtype == np.uint8 and img.shape == (CANVAS, CANVAS, 3)
        assert np.array_equal(img, render(scene))
        assert {tuple(p) for p in img.reshape(-1, 3)} <= allowed
        for obj in scene.objects:  # every object's pixels carry its colour
            assert np.all(img[object_mask(obj)] == PALETTE[obj.color])
        painted = np.any(img > 0, axis=-1)
        union = np.any([object_mask(o) for o in scene.objects], axis=0)
        assert np.array_equal(painted, union)


def test_render_of_equal_specs_is_identical():
    a = Scene([SceneObject("circle", "red", 10.5, 12.5, 9)])
    b = Scene((SceneObject("circle", "red", 10.5, 12.5, 9),))
    assert a == b and hash(a) == hash(b)
    assert np.array_equal(render(a), render(b))


@pytest.mark.parametrize("category", CATEGORIES)
def test_sampled_scenes_fit_their_caption_without_overlap(scenes, category):
    for scene, text in scenes[category]:
        assert 1 <= len(scene) <= 4
        assert satisfies(scene.objects, parse(text)), text
        masks = [object_mask(o) for o in scene.objects]
        for obj, mask in zip(scene.objects, masks):
            ys, xs = np.nonzero(mask)
            assert xs.min() >= MARGIN and ys.min() >= MARGIN
            assert xs.max() < CANVAS - MARGIN and ys.max() < CANVAS - MARGIN
            assert 9 <= obj.size <= 13
        for i in range(len(masks)):
            for j in range(i + 1, len(masks)):
                assert boxes_gap(scene.objects[i], scene.objects[j]) >= MIN_GAP
                assert not np.any(masks[i] & masks[j])
                # no pixel of one object touches the other, even diagonally (gap >= 2 px)
                grown = np.zeros((CANVAS + 2, CANVAS + 2), dtype=bool)
                for dy in range(3):
                    for dx in range(3):
                        grown[dy: dy + CANVAS, dx: dx + CANVAS] |= masks[i]
                assert not np.any(grown[1:-1, 1:-1] & masks[j])


def test_position_scenes_have_clear_cut_relations(scenes):
    for scene, text in scenes["position"]:
        request = parse(text)
        a, b = scene.objects  # realize keeps description order
        assert request.objects[0].matches(a) and request.objects[1].matches(b)
        ca, cb = _pixel_centroid(object_mask(a)), _pixel_centroid(object_mask(b))
        dx, dy = cb[0] - ca[0], cb[1] - ca[1]
        main, cross = {
            "left_of": (dx, dy), "right_of": (-dx, dy), "above": (dy, dx), "below": (-dy, dx)
        }[request.relation]
        assert main >= PLACEMENT_MIN_OFFSET - 0.25, text  # pixel vs analytic centroid: < 0.25 px apart
        assert main >= PLACEMENT_DOMINANCE * abs(cross) - 0.5, text


def test_analytic_centroids_match_pixels():
    for shape in SHAPES:
        for size in (9, 11, 13):
            obj = SceneObject(shape, "red", 10 + size / 2, 8 + size / 2, size)
            px = _pixel_centroid(object_mask(obj))
            assert abs(px[0] - obj.centroid[0]) < 1e-9
            assert abs(px[1] - obj.centroid[1]) < 0.25


def test_every_request_can_be_realized():
    rng = np.random.default_rng(7)
    for category in CATEGORIES:
        for request in all_requests(category):
            scene = realize(request, rng)
            assert satisfies(scene.objects, request), caption(request)


def test_placement_is_deterministic_given_the_generator():
    kinds = [("circle", "red"), ("square", "blue"), ("triangle", "green")]
    a = place_objects(kinds, np.random.default_rng(3))
    b = place_objects(kinds, np.random.default_rng(3))
    assert a == b
    assert [(o.shape, o.color) for o in a.objects] == kinds


def test_relation_holds():
    assert relation_holds((5, 10), (20, 12), "left_of")
    assert relation_holds((20, 12), (5, 10), "right_of")
    assert not relation_holds((5, 10), (20, 12), "right_of")
    assert relation_holds((10, 3), (12, 20), "above")
    assert relation_holds((12, 20), (10, 3), "below")
    assert not relation_holds((5, 5), (15, 15), "left_of")  # diagonal: the offset must dominate
    assert not relation_holds((5, 5), (7, 5), "left_of")  # too close
    with pytest.raises(SceneError):
        relation_holds((0, 0), (1, 1), "beside")


def test_satisfies_is_exact_about_counts_and_bindings():
    red_circle = SceneObject("circle", "red", 8.5, 8.5, 9)
    blue_square = SceneObject("square", "blue", 22.5, 9.5, 9)
    req = Request((Description("circle", "red"), Description("square", "blue")), 2)
    assert satisfies([red_circle, blue_square], req)
    assert satisfies([blue_square, red_circle], req)  # order of objects is irrelevant
    swapped = Request((Description("circle", "blue"), Description("square", "red")), 2)
    assert not satisfies([red_circle, blue_square], swapped)
    assert not satisfies([red_circle], req)
    assert not satisfies([red_circle, blue_square, SceneObject("triangle", "green", 16.5, 24.5, 9)], req)
    left = Request((Description("circle"), Description("square")), 2, "left_of")
    assert satisfies([red_circle, blue_square], left)
    assert not satisfies([red_circle, blue_square], Request(left.objects, 2, "right_of"))
    assert not satisfies([red_circle, blue_square], Request(left.objects, 2, "above"))


@pytest.mark.parametrize(
    "make",
    [
        lambda: SceneObject("hexagon", "red", 5, 5, 9),
        lambda: SceneObject("circle", "purple", 5, 5, 9),
        lambda: SceneObject("circle", "red", 5, 5, 0),
        lambda: Scene(["not an object"]),
        lambda: Description("blob"),
        lambda: Description("circle", "pink"),
        lambda: Request((Description("circle"),), 5),
        lambda: Request((Description("circle"),), 0),
        lambda: Request((Description("circle"),), 1, "above"),
        lambda: Request((Description("circle"), Description("circle")), 2),
        lambda: Request((Description("circle", "red"), Description("circle")), 2, "above"),
        lambda: Request((Description("circle"), Description("square")), 3),
        lambda: Request((Description("circle"), Description("square")), 2, "near"),
        lambda: Request((), 1),
        lambda: render("not a scene"),
        lambda: sample_scene("colours", np.random.default_rng(0)),
        lambda: place_objects([("circle", "red")] * 5, np.random.default_rng(0)),
        lambda: place_objects([("circle", "red")] * 3, np.random.default_rng(0), relation="above"),
    ],
)
def test_invalid_specs_raise_typed_errors(make):
    with pytest.raises(SceneError) as info:
        make()
    assert isinstance(info.value, ValueError)
