"""``quantize_`` then diffusers' own ``save_pretrained`` (a model's or a pipeline's): ternary format, reload with no config."""

import json
import warnings

import pytest
import torch

from .conftest import generate, require_extras

require_extras()  # skipped, with the reason, without the diffusers extra

from diffusers import FluxPipeline, FluxTransformer2DModel

from torch_ternary import TernaryConfig, TernaryTensor, quantize_
from torch_ternary.format.folder import read_folder_header, save_quantized_folder
from torch_ternary.format.single_file import load_quantized, save_quantized
from torch_ternary.integrations.diffusers_quantizer import TernaryDiffusersQuantizer
from torch_ternary.quantization import quantize as quantize_module
from torch_ternary.testing.flux import FLUX_TINY_CONFIG, build_flux, example_inputs
from torch_ternary.testing.pipelines import build_flux_pipeline


def ternary_names(model):
    return sorted(n for n, p in model.named_parameters() if isinstance(p, TernaryTensor))


def run(model, inputs):
    with torch.no_grad():
        return model(**inputs)[0]


def assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for name in sa:
        assert type(sa[name]) is type(sb[name]) and sa[name].dtype == sb[name].dtype, name
        assert torch.equal(sa[name], sb[name]), name


# ---------------------------------------------------------------------- a model
@pytest.mark.parametrize("shard", [None, "10KB"])
def test_quantize_then_save_pretrained_reloads_ternary_with_no_config(tmp_path, inputs, shard):
    model = build_flux(FLUX_TINY_CONFIG, dtype=torch.bfloat16)
    config = TernaryConfig(granularity="per_group", group_size=16)
    report = quantize_(model, config)
    out = run(model, inputs)
    kwargs = {} if shard is None else {"max_shard_size": shard}
    model.save_pretrained(tmp_path / "t", **kwargs)  # diffusers' own save: crashed on TernaryTensor before

    saved = json.loads((tmp_path / "t" / "config.json").read_text())["quantization_config"]
    assert saved["quant_method"] == "torch_ternary" and saved["codec"] == "base3"
    assert saved["granularity"] == "per_group" and saved["group_size"] == 16 and saved["torch_dtype"] == "bfloat16"
    header = read_folder_header(tmp_path / "t")
    assert sorted(header["ternary"]) == ternary_names(model) and len(header["ternary"]) == len(report.layers_converted)
    assert header["config"] == config.to_dict()

    fresh = FluxTransformer2DModel.from_pretrained(tmp_path / "t")  # no quantization_config, no torch_dtype
    assert fresh.dtype == torch.bfloat16 and isinstance(fresh.hf_quantizer, TernaryDiffusersQuantizer)
    assert fresh.transformer_blocks[0].attn.to_q.weight.granularity == "per_group"
    assert_same_state(fresh, model)
    assert torch.equal(run(fresh, inputs), out)
    assert fresh._torch_ternary_config == config


def test_quantize_gives_what_quantize_on_load_gives(tmp_path, dense_folder):
    """The attributes diffusers looks at are those of a model quantized while loading."""
    loaded = FluxTransformer2DModel.from_pretrained(dense_folder, quantization_config=TernaryConfig(),
                                                    torch_dtype=torch.bfloat16)
    model = build_flux(FLUX_TINY_CONFIG, dtype=torch.bfloat16)
    quantize_(model, TernaryConfig())
    assert model.is_quantized and model.quantization_method == loaded.quantization_method == "torch_ternary"
    assert model.hf_quantizer.quantization_config == loaded.hf_quantizer.quantization_config
    assert model.config.quantization_config == loaded.config.quantization_config
    model.save_pretrained(tmp_path / "a")
    loaded.save_pretrained(tmp_path / "b")
    a, b = read_folder_header(tmp_path / "a"), read_folder_header(tmp_path / "b")
    for key in ("crc32", "ternary", "aliases", "codec", "config", "architecture"):
        assert a[key] == b[key], key
    ja, jb = (json.loads((tmp_path / d / "config.json").read_text()) for d in "ab")
    ja.pop("_name_or_path", None), jb.pop("_name_or_path", None)
    assert ja == jb


def test_save_pretrained_and_save_quantized_folder_write_the_same_format(tmp_path, inputs):
    model = build_flux(FLUX_TINY_CONFIG, dtype=torch.bfloat16)
    quantize_(model, TernaryConfig())
    model.save_pretrained(tmp_path / "diffusers", max_shard_size="15KB")
    save_quantized_folder(model, tmp_path / "streamed", max_shard_size="15KB")
    a, b = read_folder_header(tmp_path / "diffusers"), read_folder_header(tmp_path / "streamed")
    for key in ("crc32", "ternary", "aliases", "codec", "config", "architecture"):
        assert a[key] == b[key], key


def test_a_second_quantize_replaces_the_quantizer_config(tmp_path, inputs):
    """Quantizing in two steps: the saved config is the last one, never a stale first one."""
    model = build_flux(FLUX_TINY_CONFIG, dtype=torch.bfloat16)
    quantize_(model, TernaryConfig(include=("transformer_blocks.*",)))
    first = model.hf_quantizer
    second_config = TernaryConfig(granularity="per_tensor")
    quantize_(model, second_config)
    assert model.hf_quantizer is not first and model.hf_quantizer.quantization_config.ternary == second_config
    model.save_pretrained(tmp_path / "t")
    assert read_folder_header(tmp_path / "t")["config"] == second_config.to_dict()
    fresh = FluxTransformer2DModel.from_pretrained(tmp_path / "t")
    assert torch.equal(run(fresh, inputs), run(model, inputs))


def test_codec_of_a_reloaded_model_is_kept_by_a_later_quantize(tmp_path, inputs):
    model = build_flux(FLUX_TINY_CONFIG, dtype=torch.bfloat16)
    quantize_(model, TernaryConfig(include=("transformer_blocks.*",)))
    model.hf_quantizer.quantization_config.codec = "2bit"
    model.save_pretrained(tmp_path / "a")
    reloaded = FluxTransformer2DModel.from_pretrained(tmp_path / "a")
    assert reloaded.hf_quantizer.quantization_config.codec == "2bit"
    quantize_(reloaded, TernaryConfig())  # the rest of the linears
    assert reloaded.hf_quantizer.quantization_config.codec == "2bit"
    reloaded.save_pretrained(tmp_path / "b")
    assert read_folder_header(tmp_path / "b")["codec"] == "2bit"


def test_dequantize_after_quantize_saves_and_reloads_dense(tmp_path):
    model = build_flux(FLUX_TINY_CONFIG, dtype=torch.float32)
    quantize_(model, TernaryConfig())
    model.dequantize()
    assert not ternary_names(model) and not model.is_quantized and not hasattr(model, "hf_quantizer")
    model.save_pretrained(tmp_path / "d")
    assert json.loads((tmp_path / "d" / "config.json").read_text()).get("quantization_config") is None
    fresh = FluxTransformer2DModel.from_pretrained(tmp_path / "d")
    assert not ternary_names(fresh) and getattr(fresh, "hf_quantizer", None) is None
    assert_same_state(fresh, model)
    # the same weights compute the same output up to float32 summation order: from_pretrained's tensors lie at the
    # file's offsets (not 64-byte aligned), and on an AVX2-only host torch's float32 GEMM then sums in another
    # order (2.4e-7 apart; bit-equal once the weights are copied to aligned memory)
    x = example_inputs(FLUX_TINY_CONFIG, dtype=torch.float32)
    torch.testing.assert_close(run(fresh, x), run(model, x), rtol=1e-5, atol=1e-6)


def test_nothing_attached_when_nothing_is_ternary_or_not_a_diffusers_model():
    model = build_flux(FLUX_TINY_CONFIG, dtype=torch.bfloat16)
    report = quantize_(model, TernaryConfig(include=("no_such_layer",)))
    assert not report.layers_converted
    assert getattr(model, "hf_quantizer", None) is None and not getattr(model, "is_quantized", False)
    assert "quantization_config" not in model.config
    plain = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64))
    quantize_(plain, TernaryConfig())
    assert ternary_names(plain) and not hasattr(plain, "hf_quantizer")


def test_a_model_quantized_by_another_method_is_left_alone():
    model = build_flux(FLUX_TINY_CONFIG, dtype=torch.bfloat16)

    class Other:
        quantization_config = type("C", (), {"quant_method": "other"})()

    model.hf_quantizer = other = Other()
    with pytest.warns(UserWarning, match="already quantized with other"):
        quantize_(model, TernaryConfig())
    assert model.hf_quantizer is other


def test_a_failing_post_quantize_hook_warns_and_quantization_stands():
    def broken(model, config, **info):
        raise RuntimeError("boom")

    remove = quantize_module.register_post_quantize_hook(broken)
    try:
        assert quantize_module.register_post_quantize_hook(broken) and quantize_module._post_quantize_hooks.count(broken) == 1
        model = build_flux(FLUX_TINY_CONFIG, dtype=torch.bfloat16)
        with pytest.warns(UserWarning, match="boom"):
            report = quantize_(model, TernaryConfig())
        assert ternary_names(model) and len(report.layers_converted) == len(ternary_names(model))
        assert isinstance(model.hf_quantizer, TernaryDiffusersQuantizer)  # the other hooks still ran
    finally:
        remove()
    assert broken not in quantize_module._post_quantize_hooks


# ---------------------------------------------------------------------- load_quantized into a model
def test_loading_ternary_weights_then_running_the_hooks_replaces_a_stale_quantizer(tmp_path, inputs):
    """What format's loaders should do (run_post_quantize_hooks after loading): the quantizer then
    carries the loaded file's config and codec, and save_pretrained writes them."""
    source = build_flux(FLUX_TINY_CONFIG, dtype=torch.bfloat16)
    file_config = TernaryConfig(granularity="per_tensor")
    quantize_(source, file_config)
    save_quantized(source, tmp_path / "w.safetensors", codec="2bit")

    model = build_flux(FLUX_TINY_CONFIG, dtype=torch.bfloat16, seed=3)
    quantize_(model, TernaryConfig())  # per-channel quantizer attached
    load_quantized(model, tmp_path / "w.safetensors")
    quantize_module.run_post_quantize_hooks(model, model._torch_ternary_config, codec="2bit")
    assert model.hf_quantizer.quantization_config.ternary == file_config
    assert model.hf_quantizer.quantization_config.codec == "2bit"
    model.save_pretrained(tmp_path / "t")
    header = read_folder_header(tmp_path / "t")
    assert header["config"] == file_config.to_dict() and header["codec"] == "2bit"
    assert torch.equal(run(FluxTransformer2DModel.from_pretrained(tmp_path / "t"), inputs), run(source, inputs))


def test_load_quantized_into_a_dense_diffusers_model_then_save_pretrained(tmp_path, inputs):
    source = build_flux(FLUX_TINY_CONFIG, dtype=torch.bfloat16)
    file_config = TernaryConfig(granularity="per_tensor")
    quantize_(source, file_config)
    save_quantized(source, tmp_path / "w.safetensors", codec="2bit")
    with torch.device("meta"):
        model = FluxTransformer2DModel(**FLUX_TINY_CONFIG).to(torch.bfloat16)
    load_quantized(model, tmp_path / "w.safetensors")
    assert model.hf_quantizer.quantization_config.ternary == file_config
    model.save_pretrained(tmp_path / "t")
    assert torch.equal(run(FluxTransformer2DModel.from_pretrained(tmp_path / "t"), inputs), run(source, inputs))


# ---------------------------------------------------------------------- a pipeline
def test_pipeline_quantize_then_save_pretrained_then_from_pretrained(tmp_path):
    pipe = build_flux_pipeline()
    quantize_(pipe.transformer, TernaryConfig())
    images = generate(pipe)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "could not save" / "not serializable" warning on the way
        pipe.save_pretrained(tmp_path / "pipe")
    config = json.loads((tmp_path / "pipe" / "transformer" / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "torch_ternary"
    assert "quantization_config" not in json.loads((tmp_path / "pipe" / "vae" / "config.json").read_text())

    reloaded = FluxPipeline.from_pretrained(tmp_path / "pipe")  # no config of any kind
    w = reloaded.transformer.transformer_blocks[0].attn.to_q.weight
    assert isinstance(w, TernaryTensor)
    assert_same_state(reloaded.transformer, pipe.transformer)
    assert torch.equal(generate(reloaded), images)
