"""diffusers' pipeline-level API: ``FluxPipeline.from_pretrained(..., quantization_config=PipelineQuantizationConfig(...))``."""

import pytest
import torch

from .conftest import generate, require_extras

require_extras()  # skipped, with the reason, without the diffusers extra

from diffusers import FluxPipeline, PipelineQuantizationConfig

from torch_ternary import TernaryConfig, TernaryConfigError, TernaryTensor, quantize_
from torch_ternary.format.folder import read_folder_header
from torch_ternary.integrations import TernaryQuantizationConfig
from torch_ternary.testing.pipelines import build_flux_pipeline


@pytest.fixture(scope="module")
def pipe_folder(tmp_path_factory):
    """The dense tiny pipeline (float32), saved the usual way."""
    path = tmp_path_factory.mktemp("pipe") / "flux"
    build_flux_pipeline().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def reference():
    """Images of the same tiny pipeline with its transformer ternarized by ``quantize_`` (per-channel)."""
    pipe = build_flux_pipeline()
    quantize_(pipe.transformer, TernaryConfig())
    return generate(pipe)


def ternary(module):
    return sorted(n for n, p in module.named_parameters() if isinstance(p, TernaryTensor))


def check_ternary_transformer_only(pipe):
    assert ternary(pipe.transformer), "the transformer is not ternary"
    for name in ("text_encoder", "text_encoder_2", "vae"):
        assert not ternary(getattr(pipe, name)), name


@pytest.mark.parametrize("config", [TernaryConfig(), TernaryQuantizationConfig()], ids=["TernaryConfig", "wrapper"])
def test_quant_mapping(pipe_folder, reference, config):
    quantization_config = PipelineQuantizationConfig(quant_mapping={"transformer": config})
    pipe = FluxPipeline.from_pretrained(pipe_folder, quantization_config=quantization_config)
    check_ternary_transformer_only(pipe)
    assert pipe.transformer.hf_quantizer.quantization_config.ternary == TernaryConfig()
    images = generate(pipe)
    assert images.shape == (1, 3, 16, 16) and torch.isfinite(images).all()
    assert torch.equal(images, reference)  # quantize-on-load in a pipeline == quantize_ on the same weights


def test_quant_backend_with_kwargs(pipe_folder, tmp_path):
    quantization_config = PipelineQuantizationConfig(
        quant_backend="torch_ternary",
        quant_kwargs={"granularity": "per_group", "group_size": 16, "codec": "2bit"},
        components_to_quantize=["transformer"],
    )
    pipe = FluxPipeline.from_pretrained(pipe_folder, quantization_config=quantization_config)
    check_ternary_transformer_only(pipe)
    w = pipe.transformer.transformer_blocks[0].attn.to_q.weight
    assert w.granularity == "per_group" and w.group_size == 16
    images = generate(pipe)
    assert images.shape == (1, 3, 16, 16) and torch.isfinite(images).all() and images.std() > 0

    pipe.save_pretrained(tmp_path / "saved")  # and the result saves ternary, with the codec asked for
    assert read_folder_header(tmp_path / "saved" / "transformer")["codec"] == "2bit"
    again = FluxPipeline.from_pretrained(tmp_path / "saved")
    assert ternary(again.transformer) == ternary(pipe.transformer)
    assert torch.equal(generate(again), images)


def test_quant_backend_for_a_transformers_component_fails_clearly(pipe_folder):
    """With no components_to_quantize every component is asked for, text encoders included."""
    quantization_config = PipelineQuantizationConfig(quant_backend="torch_ternary", quant_kwargs={"codec": "base3"})
    with pytest.raises(TernaryConfigError, match="components_to_quantize"):
        FluxPipeline.from_pretrained(pipe_folder, quantization_config=quantization_config)


def test_unknown_field_in_quant_kwargs_is_a_config_error(pipe_folder):
    quantization_config = PipelineQuantizationConfig(quant_backend="torch_ternary", quant_kwargs={"bits": 2},
                                                     components_to_quantize=["transformer"])
    with pytest.raises(TernaryConfigError):
        FluxPipeline.from_pretrained(pipe_folder, quantization_config=quantization_config)


def test_ternary_config_counts_as_the_registered_config_class():
    assert isinstance(TernaryConfig(), TernaryQuantizationConfig)  # what quant_mapping checks
    assert TernaryQuantizationConfig() != TernaryConfig() and TernaryQuantizationConfig() == TernaryQuantizationConfig()
