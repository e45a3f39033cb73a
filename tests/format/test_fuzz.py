"""Fuzzing the loaders (``torch_ternary/testing/format_fuzz.py``): a few hundred mutated files in CI.

Every outcome must be a load equal to the original, a ``TernaryError`` with the model untouched, or,
with ``verify=False`` only, a load that differs where only tensor data bytes were changed; never
another exception, a hang or a changed model. ``benchmarks/fuzz_format.py`` runs 10,000 cases.
"""

from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torch_ternary.testing import format_fuzz as fz


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    return fz.make_originals(tmp_path_factory.mktemp("fuzz_originals"))


OUTCOMES: Counter = Counter()


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=st.sampled_from(fz.CASES), seed=st.integers(0, 2**31), verify=st.booleans())
def test_every_mutation_is_refused_cleanly_or_loads_the_original(originals, tmp_path, case, seed, verify):
    target, kind = case
    outcome = fz.run_case(originals, target, kind, seed, verify, tmp_path / "case")
    OUTCOMES[outcome] += 1
    assert not fz.is_failure(outcome), (target, kind, seed, verify, outcome)
    if outcome == "loaded_differs_unverified":
        assert not verify


def test_unmutated_originals_load_equal(originals, tmp_path):
    from torch_ternary.format.folder import load_quantized_folder
    from torch_ternary.format.single_file import load_quantized

    for path, load in ((originals.file_base3, load_quantized), (originals.file_2bit, load_quantized),
                       (originals.folder, load_quantized_folder)):
        model = fz.build_model(1)
        load(model, path)
        assert fz.state_of(model) == originals.expected
    for seed in range(6):  # plain, --json, --layers
        assert fz._run_info(originals.file_base3, seed) == "info_ok"
        assert fz._run_info(originals.folder, seed) == "info_ok"


def test_the_harness_sees_a_changed_model(originals, tmp_path, monkeypatch):
    """The harness itself can fail: a loader that assigns before it fails is reported as ``changed_model``."""
    from torch_ternary.format import loading

    real = loading.check_checkpoint

    def sloppy(model, header, files, where):
        model.dense.bias.data.add_(1)  # a loader bug: touching the model, then failing
        return real(model, header, files, where)

    monkeypatch.setattr(loading, "check_checkpoint", sloppy)
    outcomes = {fz.run_case(originals, "file_base3", "tt_drop", s, True, tmp_path / "c") for s in range(20)}
    assert "changed_model" in outcomes
