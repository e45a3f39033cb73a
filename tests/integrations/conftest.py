"""Fixtures for the diffusers integration tests: tiny FLUX folders and pipelines built offline."""

import importlib.util

import pytest
import torch

# Without the diffusers extra there is nothing to integrate with: skip the whole folder.
if any(importlib.util.find_spec(m) is None for m in ("diffusers", "accelerate", "peft")):
    collect_ignore_glob = ["test_*.py"]

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
