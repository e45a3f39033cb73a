"""Calibration / validation / evaluation captions share no meaning (mini/splits.py)."""

import pytest

from torch_ternary.calibration import load_prompts
from torch_ternary.mini import SceneError, evaluation_prompts, parse
from torch_ternary.mini.grammar import meaning_key
from torch_ternary.mini.splits import (
    SPLIT_CATEGORIES,
    calibration_captions,
    calibration_meanings,
    split_of,
    validation_captions,
    validation_meanings,
)


def keys(captions):
    return {meaning_key(parse(c)) for c in captions}


def test_the_three_sets_are_disjoint_in_meaning():
    evaluation = keys(evaluation_prompts())
    validation = keys(validation_captions(per_category=10_000))
    calibration = keys(calibration_captions(5000, seed=3))
    assert evaluation.isdisjoint(validation) and evaluation.isdisjoint(calibration) and validation.isdisjoint(calibration)
    for category in SPLIT_CATEGORIES:  # every caption of a meaning says the same thing
        for group in validation_meanings(category) + calibration_meanings(category):
            assert len(keys(group)) == 1 and all(parse(c).category == category for c in group)


def test_sizes_and_split_of():
    sizes = {c: (len(validation_meanings(c)), len(calibration_meanings(c))) for c in SPLIT_CATEGORIES}
    assert sizes == {"two_objects": (6, 18), "counting": (8, 25), "position": (90, 270), "color_attr": (13, 41)}
    v = validation_captions()
    assert len(v) == 12 + 8 + 12 + 12 and len(set(v)) == len(v)
    assert {split_of(c) for c in v} == {"validation"}
    assert {split_of(c) for c in evaluation_prompts()} == {"evaluation"}
    assert {split_of(c) for c in calibration_captions(300)} == {"calibration"}
    assert split_of("a square to the right of a red circle") == split_of("a red circle to the left of a square")


def test_calibration_sampler():
    a = calibration_captions(400, seed=0)
    assert a == calibration_captions(400, seed=0) and a != calibration_captions(400, seed=1)
    assert load_prompts("mini-calibration", 400) == a
    only = calibration_captions(200, category_weights={"two_objects": 0, "counting": 0, "position": 0})
    assert {parse(c).category for c in only} == {"color_attr"}
    with pytest.raises(SceneError):
        calibration_captions(3, category_weights={"colors": 1})
    with pytest.raises(SceneError):
        calibration_captions(3, category_weights={"position": -1})
    with pytest.raises(SceneError, match="evaluation"):
        validation_meanings("colors")
