"""Captions <-> requests, the evaluation prompts, and the held-out training sampler."""

from collections import Counter

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from torch_ternary.mini import (
    CATEGORIES,
    COLORS,
    RELATIONS,
    SHAPES,
    CaptionError,
    Description,
    Request,
    Scene,
    SceneObject,
    caption,
    category_of,
    evaluation_prompts,
    is_held_out,
    parse,
    render_batch,
    sample_training_caption,
    sample_training_example,
    satisfies,
)
from torch_ternary.mini.grammar import _meaning_key, all_requests, category_probabilities
from torch_ternary.mini.world import distinguishable

descriptions = st.builds(Description, st.sampled_from(SHAPES), st.none() | st.sampled_from(COLORS))
single_requests = st.builds(lambda d, n: Request((d,), n), descriptions, st.integers(1, 4))
pair_requests = (
    st.tuples(descriptions, descriptions, st.none() | st.sampled_from(RELATIONS))
    .filter(lambda t: distinguishable(t[0], t[1]))
    .map(lambda t: Request((t[0], t[1]), 2, t[2]))
)
requests = single_requests | pair_requests


def _perturb_surface(text: str, draw) -> str:
    """The same caption with random case, spacing, "an" for "a" and a trailing period."""
    words = ["an" if w == "a" and draw(st.booleans()) else w for w in text.split()]
    words = [w.upper() if draw(st.booleans()) else w.capitalize() if draw(st.booleans()) else w for w in words]
    seps = [" " * draw(st.integers(1, 3)) for _ in words]
    out = "".join(w + s for w, s in zip(words, seps)).rstrip()
    return " " * draw(st.integers(0, 2)) + out + ("." if draw(st.booleans()) else "")


@given(requests)
def test_parse_caption_round_trip(request):
    text = caption(request)
    assert parse(text) == request
    assert category_of(text) == request.category
    if request.count == 1:
        assert parse(caption(request, determiner="one")) == request


@given(requests, st.data())
def test_parse_accepts_surface_variants(request, data):
    noisy = _perturb_surface(caption(request), data.draw)
    assert parse(noisy) == request
    assert caption(noisy) == caption(request)


@pytest.mark.parametrize(
    "category, size", [("single_object", 3), ("two_objects", 54), ("counting", 45), ("colors", 12),
                       ("position", 744), ("color_attr", 132)]
)
def test_every_request_of_every_category_round_trips(category, size):
    pool = all_requests(category)
    assert len(pool) == size == len(set(pool))
    for request in pool:
        assert request.category == category
        assert parse(caption(request)) == request


def test_categories_of_examples():
    examples = {
        "a circle": "single_object",
        "one triangle": "single_object",
        "a circle and a square": "two_objects",
        "a red circle and a square": "two_objects",
        "two triangles": "counting",
        "three green circles": "counting",
        "4 squares": "counting",
        "a red circle": "colors",
        "one blue square": "colors",
        "a red circle to the left of a blue square": "position",
        "a circle above a square": "position",
        "a yellow triangle right of a square": "position",
        "a red circle and a blue square": "color_attr",
        "a red circle and a blue circle": "color_attr",
    }
    for text, category in examples.items():
        assert category_of(text) == category, text
    assert parse("a circle below a red square") == Request(
        (Description("circle"), Description("square", "red")), 2, "below")
    assert parse("A Red Circle To The Right Of A Square.") == Request(
        (Description("circle", "red"), Description("square")), 2, "right_of")
    assert parse("three green circles") == Request((Description("circle", "green"),), 3)


@pytest.mark.parametrize(
    "text",
    [
        "", "   ", ".", "a", "circle", "a dog", "a purple square", "a red red circle", "five circles",
        "zero circles", "0 circles", "two circle", "a circles", "one circles", "three", "a circle and",
        "a circle and a circle", "a red circle and a red circle", "a circle and a red circle",
        "a red circle to the left of a red circle", "a circle beside a square", "a circle a square",
        "two circles and a square", "a circle!", "a circle..", "the circle", "a circle above",
        "a circle to the left a square", "a circle to the left of two squares", "red circle",
        "a circle and a square and a triangle", "an", "a square, a circle",
    ],
)
def test_captions_outside_the_grammar_raise(text):
    with pytest.raises(CaptionError) as info:
        parse(text)
    assert isinstance(info.value, ValueError)
    assert repr(text) in str(info.value)  # the message quotes the caption


def test_non_string_captions_raise():
    for bad in (None, 3, ["a", "circle"]):
        with pytest.raises(CaptionError):
            parse(bad)
    with pytest.raises(CaptionError):
        caption(42)
    with pytest.raises(CaptionError):
        caption(Request((Description("circle"),), 1), determiner="the")


def test_caption_of_scenes():
    def obj(shape, color, x=8.5):
        return SceneObject(shape, color, x, 8.5, 9)

    assert caption(Scene([obj("circle", "red")])) == "a red circle"
    assert caption(Scene([obj("circle", "red"), obj("circle", "red", 22.5)])) == "two red circles"
    assert caption(Scene([obj("circle", "red"), obj("square", "blue", 22.5)])) == "a red circle and a blue square"
    assert caption(Scene([obj("circle", "red"), obj("circle", "blue", 22.5)])) == "a red circle and a blue circle"
    with pytest.raises(CaptionError):
        caption(Scene([obj("circle", "red"), obj("square", "blue"), obj("square", "blue")]))
    with pytest.raises(CaptionError):
        caption(Scene([]))
    rng = np.random.default_rng(0)
    for _ in range(50):
        scene, _ = sample_training_example(rng)
        try:
            text = caption(scene)
        except CaptionError:
            continue
        assert satisfies(scene.objects, parse(text))


def test_evaluation_prompts_are_fixed_balanced_and_valid():
    prompts = evaluation_prompts()
    assert prompts == evaluation_prompts()  # deterministic
    assert len(prompts) == 72
    assert Counter(category_of(p) for p in prompts) == {c: 12 for c in CATEGORIES}
    for category in CATEGORIES:
        ps = evaluation_prompts(category)
        assert len(ps) == 12 and all(category_of(p) == category for p in ps)
        assert prompts[CATEGORIES.index(category) * 12:][:12] == ps
    for p in prompts:
        assert caption(p) == p  # canonical form
        assert is_held_out(p) == (parse(p).count > 1)  # single-object captions cannot be held out
    # coverage: every shape, colour, count and relation is evaluated
    reqs = [parse(p) for p in prompts]
    assert {d.shape for r in reqs for d in r.objects} == set(SHAPES)
    assert {d.color for r in reqs for d in r.objects} - {None} == set(COLORS)
    assert {r.count for r in reqs if r.category == "counting"} == {2, 3, 4}
    assert {r.relation for r in reqs} - {None} == set(RELATIONS)
    assert len(set(evaluation_prompts("single_object"))) == 3
    assert len(set(evaluation_prompts("two_objects"))) == 6
    for c in ("counting", "colors", "position", "color_attr"):
        assert len(set(evaluation_prompts(c))) == 12


def test_held_out_meanings():
    assert is_held_out("a red circle to the left of a blue square")
    assert is_held_out("a blue square to the right of a red circle")  # same meaning
    assert is_held_out("A Blue Square and a Red Circle.")  # pair order does not matter
    assert is_held_out("a square and a circle")
    assert not is_held_out("a red circle to the right of a blue square")
    assert not is_held_out("one circle") and not is_held_out("a circle") and not is_held_out("a red circle")
    assert not is_held_out("a red circle and a square")


def test_training_sampler_never_yields_compositional_evaluation_prompts():
    rng = np.random.default_rng(2024)
    prompts = set(evaluation_prompts())
    held_keys = {_meaning_key(parse(p)) for p in prompts if parse(p).count > 1}
    seen, categories = set(), Counter()
    n = 20_000
    for _ in range(n):
        request, text = sample_training_caption(rng)
        seen.add(text)
        categories[request.category] += 1
    for text in seen:  # 20k draws, checked once per distinct caption
        request = parse(text)
        assert not is_held_out(text)
        if request.count > 1:
            assert text not in prompts
            assert caption(text) == text and _meaning_key(request) not in held_keys
        else:  # the whole single-object language: "a red circle" and "one red circle"
            assert text.split()[0] in ("a", "an", "one")
    singles = {t for t in seen if parse(t).count == 1}
    assert {t for t in singles if t.startswith("one ")} and {t for t in singles if not t.startswith("one ")}
    assert set(categories) == set(CATEGORIES)
    for category in CATEGORIES:
        assert abs(categories[category] / n - 1 / 6) < 0.015, categories
    # every non-held-out caption of a small category shows up
    assert {t for t in seen if category_of(t) == "counting"} == {
        caption(r) for r in all_requests("counting") if not is_held_out(caption(r))}


def test_category_weights_shape_the_training_stream():
    assert category_probabilities(None) is None
    probs = category_probabilities({"position": 3, "single_object": 0})
    assert probs.shape == (len(CATEGORIES),) and probs.sum() == pytest.approx(1.0)
    assert probs[CATEGORIES.index("position")] == pytest.approx(3 / 7) and probs[CATEGORIES.index("single_object")] == 0
    rng = np.random.default_rng(11)
    weights = {"position": 3.0, "color_attr": 1.0, **{c: 0.0 for c in CATEGORIES if c not in ("position", "color_attr")}}
    drawn = Counter(sample_training_caption(rng, weights)[0].category for _ in range(4000))
    assert set(drawn) == {"position", "color_attr"}
    assert drawn["position"] / 4000 == pytest.approx(0.75, abs=0.03)
    for _ in range(50):  # weighted draws still never yield held-out meanings and fit their scenes
        scene, text = sample_training_example(rng, weights)
        assert not is_held_out(text) and satisfies(scene.objects, parse(text))
    _, captions = render_batch(32, rng, {"counting": 1.0, **{c: 0.0 for c in CATEGORIES if c != "counting"}})
    assert {category_of(c) for c in captions} == {"counting"}


@pytest.mark.parametrize("bad", [{"pose": 1.0}, {"position": -1.0}, {"position": float("nan")},
                                 {c: 0.0 for c in CATEGORIES}])
def test_bad_category_weights_raise(bad):
    from torch_ternary.mini import SceneError

    with pytest.raises(SceneError):
        category_probabilities(bad)
    with pytest.raises(SceneError):
        sample_training_caption(np.random.default_rng(0), bad)


def test_training_examples_fit_their_captions():
    rng = np.random.default_rng(5)
    for _ in range(300):
        scene, text = sample_training_example(rng)
        assert satisfies(scene.objects, parse(text)), text


def test_render_batch():
    images, captions = render_batch(16, np.random.default_rng(9))
    assert images.dtype == np.uint8 and images.shape == (16, 32, 32, 3)
    assert len(captions) == 16 and all(isinstance(c, str) for c in captions)
    again, captions2 = render_batch(16, np.random.default_rng(9))
    assert np.array_equal(images, again) and captions == captions2
    empty, none = render_batch(0, np.random.default_rng(9))
    assert empty.shape == (0, 32, 32, 3) and none == []
