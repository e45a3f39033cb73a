"""benchmarks/linear_sensitivity.py's measures on an untrained Mini FLUX (its figures come from the real run)."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch

from torch_ternary import TernaryConfig, TernaryTensor, quantize_
from torch_ternary.mini.pipeline import build_pipeline

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))
import linear_sensitivity

sys.path.remove(str(BENCH))


def test_dense_copy_is_the_ternary_product_and_the_teacher_has_no_error(tmp_path):
    torch.manual_seed(0)
    pipe = build_pipeline()
    probes, recorded, used = linear_sensitivity.probe_set(pipe, ["one red circle", "two squares", "a blue square"],
                                                          records=6, seed=3, folder=tmp_path, num_inference_steps=2)
    assert recorded == 12 and used == 6  # 3 prompts x 2 steps x (conditional, unconditional), every 2nd kept
    assert linear_sensitivity.relative_error(pipe.transformer, probes) < 1e-10  # float32 records of its own output
    ternary = copy.deepcopy(pipe.transformer)
    quantize_(ternary, TernaryConfig())
    dense, weights = linear_sensitivity.dense_copy(ternary)
    assert len(weights) == sum(isinstance(p, TernaryTensor) for p in ternary.parameters()) > 0
    assert not any(isinstance(p, TernaryTensor) for p in dense.parameters())
    with torch.inference_mode():
        for kwargs, _ in probes:
            torch.testing.assert_close(dense(**kwargs)[0], ternary(**kwargs)[0], rtol=1e-4, atol=1e-5)
    err, ref = linear_sensitivity.relative_error(dense, probes), linear_sensitivity.relative_error(ternary, probes)
    assert err > 0 and abs(err - ref) <= 1e-3 * ref
