"""The tiny diffusers FluxTransformer2DModel under the FLUX preset: eager, compiled, saved and reloaded."""

import pytest
import torch

from torch_ternary import TernaryConfig, TernaryTensor, load_quantized, quantize_, save_quantized
from torch_ternary.testing.flux import FLUX_TINY_CONFIG, build_flux, example_inputs


@pytest.fixture(scope="module")
def quantized_tiny_flux():
    model = build_flux(FLUX_TINY_CONFIG, seed=0)
    dense = build_flux(FLUX_TINY_CONFIG, seed=0)
    quantize_(model, TernaryConfig())
    return model, dense


def test_runs_and_stays_close_to_dense_structure(quantized_tiny_flux):
    model, dense = quantized_tiny_flux
    inputs = example_inputs(FLUX_TINY_CONFIG)
    with torch.no_grad():
        y = model(**inputs)[0]
        y_dense = dense(**inputs)[0]
    assert y.shape == y_dense.shape == (1, 64, 4) and torch.isfinite(y).all()
    assert not torch.equal(y, y_dense)  # the weights really changed


def test_compile_fullgraph_matches_eager_with_no_graph_break(quantized_tiny_flux):
    model, _ = quantized_tiny_flux
    inputs = example_inputs(FLUX_TINY_CONFIG)
    torch._dynamo.reset()
    with torch.no_grad():
        explanation = torch._dynamo.explain(model)(**inputs)
        assert explanation.graph_break_count == 0 and explanation.graph_count == 1
        eager = model(**inputs)[0]
        compiled = torch.compile(model, fullgraph=True)(**inputs)[0]
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_save_and_load_into_meta_flux(tmp_path, dtype):
    model = build_flux(FLUX_TINY_CONFIG, dtype=dtype)
    quantize_(model, TernaryConfig())
    path = save_quantized(model, tmp_path / "flux.safetensors")
    fresh = build_flux(FLUX_TINY_CONFIG, device="meta", dtype=dtype)
    load_quantized(fresh, path)
    assert isinstance(fresh.transformer_blocks[0].attn.to_q.weight, TernaryTensor)
    inputs = example_inputs(FLUX_TINY_CONFIG, dtype=dtype)
    with torch.no_grad():
        assert torch.equal(fresh(**inputs)[0], model(**inputs)[0])


def test_small_flux_round_trip_gives_identical_outputs(tmp_path):
    """Bigger than the tiny config: dense layers large enough for CPU GEMMs to care about alignment."""
    from torch_ternary.testing.flux import FLUX_SMALL_CONFIG

    model = build_flux(FLUX_SMALL_CONFIG)
    quantize_(model, TernaryConfig())
    path = save_quantized(model, tmp_path / "small.safetensors")
    fresh = build_flux(FLUX_SMALL_CONFIG, device="meta")
    load_quantized(fresh, path)
    inputs = example_inputs(FLUX_SMALL_CONFIG, height=8, width=8, text_tokens=16)
    with torch.no_grad():
        assert torch.equal(fresh(**inputs)[0], model(**inputs)[0])
