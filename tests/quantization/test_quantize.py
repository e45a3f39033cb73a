import pytest
import torch
from torch import nn

from torch_ternary import InvalidWeightError, TernaryConfig, TernaryConfigError, TernaryTensor, quantize_
from torch_ternary.testing.flux import FLUX_DEV_CONFIG, FLUX_TINY_CONFIG, build_flux


def mlp():
    return nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64), nn.LayerNorm(64), nn.Linear(64, 10))


def test_swaps_in_place_and_reports():
    m = mlp()
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    report = quantize_(m, TernaryConfig(exclude=("4",)))
    assert isinstance(m[0].weight, TernaryTensor) and isinstance(m[2].weight, TernaryTensor)
    assert type(m[4].weight) is nn.Parameter and torch.equal(m[4].weight, before["4.weight"])
    assert torch.equal(m[0].bias, before["0.bias"]) and not m[0].weight.requires_grad
    assert report.layers_converted == ["0", "2"] and report.layers_kept == ["4"]
    assert report.params_quantized == 64 * 128 * 2
    assert report.params_total == sum(t.numel() for t in before.values())
    dense_bytes = sum(t.numel() * 4 for t in before.values())
    assert report.bytes_before == dense_bytes
    packed = (128 * 64 // 4 + 128 * 4) + (64 * 128 // 4 + 64 * 4)
    assert report.bytes_after == dense_bytes - 2 * 64 * 128 * 4 + packed
    assert report.ratio == pytest.approx(report.bytes_before / report.bytes_after)
    assert "ternarized 2 linears" in str(report)


def test_quantized_output_is_ternary_linear_of_original():
    m = mlp()
    x = torch.randn(3, 64)
    w = m[0].weight.detach().clone()
    quantize_(m, TernaryConfig(granularity="per_tensor"))
    s = w.abs().mean()
    q = torch.clamp(torch.round(w / s), -1, 1)
    torch.testing.assert_close(m[0](x), x @ (s * q).T + m[0].bias, rtol=1e-5, atol=1e-5)


def test_nan_weight_rejected_and_model_untouched():
    m = mlp()
    with torch.no_grad():
        m[2].weight[3, 4] = float("nan")
    with pytest.raises(InvalidWeightError, match="2.weight"):
        quantize_(m)
    assert not any(isinstance(p, TernaryTensor) for p in m.parameters())


def test_bad_config_type():
    with pytest.raises(TernaryConfigError):
        quantize_(mlp(), {"granularity": "per_tensor"})


def test_idempotent_second_call_converts_nothing():
    m = mlp()
    quantize_(m)
    report = quantize_(m)
    assert report.layers_converted == [] and report.layers_kept == []


def test_flux_preset_by_default_on_tiny_flux():
    model = build_flux(FLUX_TINY_CONFIG)
    report = quantize_(model, TernaryConfig())
    kept = set(report.layers_kept)
    assert kept == {
        "time_text_embed.timestep_embedder.linear_1", "time_text_embed.timestep_embedder.linear_2",
        "time_text_embed.text_embedder.linear_1", "time_text_embed.text_embedder.linear_2",
        "context_embedder", "x_embedder", "norm_out.linear", "proj_out",
    }
    assert "transformer_blocks.0.norm1.linear" in report.layers_converted  # AdaLN modulation
    assert "single_transformer_blocks.0.norm.linear" in report.layers_converted
    assert all(n.startswith(("transformer_blocks.", "single_transformer_blocks.")) for n in report.layers_converted)
    assert len(report.layers_converted) == 20


def test_flux_dev_on_meta_matches_published_arithmetic():
    """FLUX.1-dev: 11,901,408,320 parameters, 99.46 % in block linears, ratio ~7.7x (anchors.md)."""
    model = build_flux(FLUX_DEV_CONFIG, device="meta", dtype=torch.bfloat16)
    report = quantize_(model, TernaryConfig())
    assert report.params_total == 11_901_408_320
    quant_with_bias = report.params_quantized + sum(
        m.bias.numel() for n, m in model.named_modules() if n in set(report.layers_converted)
    )
    assert quant_with_bias / report.params_total == pytest.approx(0.9946, abs=5e-5)
    assert 7.6 < report.ratio < 7.75
