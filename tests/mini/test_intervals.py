"""Bootstrap intervals of score ratios over prompts and seeds (mini/intervals.py)."""

import numpy as np
import pytest

from torch_ternary.mini import evaluation_prompts
from torch_ternary.mini.intervals import category_ratio_intervals, hits_grid, ratio_interval


def test_identical_models_and_a_known_gap():
    prompts = evaluation_prompts()
    rng = np.random.default_rng(0)
    a = rng.random((72, 12)) < 0.85
    same = ratio_interval(a, a, prompts, replicates=500)
    assert same["ratio"] == 1.0 and same["low"] == same["high"] == 1.0
    assert same["distinct_prompts"] == 57 and same["images"] == 864
    b = a.copy()
    b[:, :6] &= rng.random((72, 6)) < 0.8  # B loses ~10 % of A's hits
    r = ratio_interval(a, b, prompts, replicates=2000)
    assert r["ratio"] == pytest.approx(b.sum() / a.sum())
    assert r["low"] < r["ratio"] < r["high"] < 1.0
    wider = ratio_interval(a[:, :3], b[:, :3], prompts, replicates=2000)  # fewer seeds: a wider interval
    assert wider["high"] - wider["low"] > r["high"] - r["low"]


def test_rows_of_one_caption_move_together_and_categories():
    prompts = ["x", "x", "y", "z"]
    a = np.ones((4, 2), bool)
    b = np.array([[0, 0], [0, 0], [1, 1], [1, 1]], bool)
    r = ratio_interval(a, b, prompts, replicates=3000, seed=1)
    # distinct captions x, y, z (x counted twice): ratio 0.5; a replicate with no x has ratio 1
    assert r["ratio"] == 0.5 and r["high"] == 1.0 and r["distinct_prompts"] == 3
    cats = category_ratio_intervals(np.ones((72, 2), bool), np.ones((72, 2), bool), evaluation_prompts(), replicates=50)
    assert len(cats) == 6 and all(v["ratio"] == 1.0 for v in cats.values())
    assert hits_grid([True, False] * 3, 3, 2).shape == (3, 2)
    with pytest.raises(ValueError):
        hits_grid([True] * 5, 3, 2)
    with pytest.raises(ValueError):
        ratio_interval(a, b[:3], prompts)
