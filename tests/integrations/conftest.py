"""Fixtures for the diffusers integration tests: tiny FLUX folders and pipelines built offline.

Without the diffusers extra (diffusers, accelerate, peft), or with a diffusers older than the
quantizer's minimum, every test module here that needs them calls :func:`require_extras` before
importing them and is reported as skipped, with the reason (``pytest -rs`` lists them).
"""

import functools
import importlib
import os

import pytest
import torch

#: What the integration tests import; the ``diffusers`` extra of pyproject.toml installs them.
EXTRAS = ("diffusers", "accelerate", "peft")


@functools.cache
def missing_extras(compatible: bool = True) -> str | None:
    """Why the integration tests cannot run here, or None.

    Args:
        compatible: also require a diffusers recent enough for the quantizer (``MIN_DIFFUSERS``).
    """
    for name in EXTRAS:
        try:
            importlib.import_module(name)
        except ImportError as e:  # missing, or present but broken
            return f"the diffusers extra is missing: cannot import {name} ({e}); pip install 'torch-ternary[diffusers]'"
    if compatible:
        from torch_ternary.integrations.registration import diffusers_problem

        return diffusers_problem()
    return None


def require_extras(compatible: bool = True) -> None:
    """Skip the calling test module (at import, reported with the reason) if :func:`missing_extras` says so.

    With ``TORCH_TERNARY_REQUIRE_EXTRAS=1`` (min_diffusers.py sets it) an extra that cannot be imported is an
    error instead: a run meant to test a diffusers release must not pass by skipping it."""
    __tracebackhide__ = True  # the skip is reported at the calling module's line, not here
    reason = missing_extras(compatible)
    if reason is None:
        return
    if os.environ.get("TORCH_TERNARY_REQUIRE_EXTRAS") == "1" and missing_extras(False) is not None:
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason, allow_module_level=True)


PIPE_KW = {"prompt": "a red cube on a table", "height": 16, "width": 16, "max_sequence_length": 32, "output_type": "pt"}


def generate(pipe, steps=2, seed=0, **kw):
    """Images (float ``[B, 3, H, W]`` in [0, 1]) from the tiny pipeline, seeded."""
    return pipe(**{**PIPE_KW, **kw}, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed)).images


@pytest.fixture(scope="session")
def dense_folder(tmp_path_factory):
    """A dense bf16 tiny FLUX transformer saved by diffusers in the sharded layout (8 shards)."""
    from torch_ternary.testing.flux import FLUX_TINY_CONFIG, build_flux

    path = tmp_path_factory.mktemp("dense") / "transformer"
    build_flux(FLUX_TINY_CONFIG, dtype=torch.bfloat16).save_pretrained(path, max_shard_size="20KB")
    return path


@pytest.fixture
def inputs():
    """One transformer step's inputs for the tiny config, bf16."""
    from torch_ternary.testing.flux import FLUX_TINY_CONFIG, example_inputs

    return example_inputs(FLUX_TINY_CONFIG, dtype=torch.bfloat16)
