"""The diffusers quantizer: registration, quantize-on-load, save_pretrained, reload with no config, bad folders."""

import json
import os
import subprocess
import sys

import pytest
import torch

from .conftest import require_extras

require_extras()  # skipped, with the reason, without the diffusers extra

from diffusers import FluxTransformer2DModel
from safetensors import safe_open

from torch_ternary import (
    ArchitectureMismatchError,
    TernaryConfig,
    TernaryConfigError,
    TernaryFormatError,
    TernaryTensor,
    quantize_,
)
from torch_ternary.format.folder import load_quantized_folder, read_folder_header, save_quantized_folder
from torch_ternary.format.header import HEADER_KEY
from torch_ternary.integrations import TernaryQuantizationConfig
from torch_ternary.testing.flux import FLUX_TINY_CONFIG, build_flux, example_inputs


def ternary_names(model):
    return sorted(n for n, p in model.named_parameters() if isinstance(p, TernaryTensor))


def run(model, inputs):
    with torch.no_grad():
        return model(**inputs)[0]


def _python(code: str) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


# ---------------------------------------------------------------------- registration
def test_import_does_not_import_diffusers_but_registers_before_from_pretrained():
    out = _python(
        "import sys, torch_ternary\n"
        "print('diffusers' in sys.modules)\n"
        "from diffusers import FluxTransformer2DModel\n"
        "from diffusers.quantizers.auto import AUTO_QUANTIZER_MAPPING as Q, AUTO_QUANTIZATION_CONFIG_MAPPING as C\n"
        "print(Q['torch_ternary'].__name__, C['torch_ternary'].__name__)\n"
    )
    assert out.splitlines() == ["False", "TernaryDiffusersQuantizer TernaryQuantizationConfig"]


def test_registers_when_diffusers_was_imported_first():
    out = _python(
        "import diffusers.quantizers.auto as a\n"
        "assert 'torch_ternary' not in a.AUTO_QUANTIZER_MAPPING\n"
        "import torch_ternary\n"
        "print(a.AUTO_QUANTIZER_MAPPING['torch_ternary'].__name__)\n"
    )
    assert out == "TernaryDiffusersQuantizer"


def test_registration_is_a_no_op_without_diffusers():
    out = _python(
        "import importlib.util, sys\n"
        "real = importlib.util.find_spec\n"
        "importlib.util.find_spec = lambda name, *a: None if name.split('.')[0] == 'diffusers' else real(name, *a)\n"
        "import torch_ternary, torch_ternary.integrations as i\n"
        "print(i._hook is None, i._registered, any(type(f).__name__ == '_DiffusersHook' for f in sys.meta_path))\n"
    )
    assert out == "True False False"


# ---------------------------------------------------------------------- quantize on load, save, reload
def test_quantize_on_load_matches_quantize_(dense_folder, inputs):
    model = FluxTransformer2DModel.from_pretrained(dense_folder, quantization_config=TernaryConfig(),
                                                   torch_dtype=torch.bfloat16)
    ref = build_flux(FLUX_TINY_CONFIG, dtype=torch.bfloat16)
    report = quantize_(ref, TernaryConfig())
    assert ternary_names(model) == ternary_names(ref) and len(ternary_names(model)) == len(report.layers_converted) > 0
    for (name, a), (_, b) in zip(model.state_dict().items(), ref.state_dict().items()):
        assert type(a) is type(b) and a.dtype == b.dtype and torch.equal(a, b), name
    assert torch.equal(run(model, inputs), run(ref, inputs))
    assert model.is_quantized and model._torch_ternary_config == TernaryConfig()
    assert not model.transformer_blocks[0].attn.to_q.weight.requires_grad
    assert type(model.x_embedder.weight) is torch.nn.Parameter  # FLUX preset keeps the embedders dense


@pytest.mark.parametrize("codec", ["base3", "2bit"])
def test_save_pretrained_then_reload_without_config_is_identical(dense_folder, tmp_path, inputs, codec):
    config = TernaryQuantizationConfig(codec=codec, granularity="per_group", group_size=16)
    model = FluxTransformer2DModel.from_pretrained(dense_folder, quantization_config=config, torch_dtype=torch.bfloat16)
    out = run(model, inputs)
    model.save_pretrained(tmp_path / "ternary", max_shard_size="10KB")
    files = sorted(os.listdir(tmp_path / "ternary"))
    assert "diffusion_pytorch_model.safetensors.index.json" in files and len(files) > 3
    saved = json.loads((tmp_path / "ternary" / "config.json").read_text())["quantization_config"]
    assert saved["quant_method"] == "torch_ternary" and saved["codec"] == codec and saved["torch_dtype"] == "bfloat16"
    assert saved["granularity"] == "per_group" and saved["group_size"] == 16
    header = read_folder_header(tmp_path / "ternary")
    assert header["codec"] == codec and len(header["ternary"]) == len(ternary_names(model))

    fresh = FluxTransformer2DModel.from_pretrained(tmp_path / "ternary")  # no config, no dtype: both recorded
    assert fresh.dtype == torch.bfloat16 and ternary_names(fresh) == ternary_names(model)
    for (name, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items()):
        assert type(a) is type(b) and a.dtype == b.dtype and torch.equal(a, b), name
    assert torch.equal(run(fresh, inputs), out)
    assert fresh._torch_ternary_config == config.ternary
    assert fresh.hf_quantizer.quantization_config == model.hf_quantizer.quantization_config


def test_save_pretrained_single_file_and_second_round_trip(dense_folder, tmp_path, inputs):
    model = FluxTransformer2DModel.from_pretrained(dense_folder, quantization_config=TernaryConfig(),
                                                   torch_dtype=torch.bfloat16)
    model.save_pretrained(tmp_path / "a")
    assert sorted(os.listdir(tmp_path / "a")) == ["config.json", "diffusion_pytorch_model.safetensors"]
    again = FluxTransformer2DModel.from_pretrained(tmp_path / "a", torch_dtype=torch.bfloat16)
    again.save_pretrained(tmp_path / "b")
    third = FluxTransformer2DModel.from_pretrained(tmp_path / "b")
    assert torch.equal(run(third, inputs), run(model, inputs))


def test_streaming_folder_writer_and_save_pretrained_agree(dense_folder, tmp_path, inputs):
    model = FluxTransformer2DModel.from_pretrained(dense_folder, quantization_config=TernaryConfig(),
                                                   torch_dtype=torch.bfloat16)
    model.save_pretrained(tmp_path / "diffusers", max_shard_size="15KB")
    save_quantized_folder(model, tmp_path / "streamed", max_shard_size="15KB")
    a, b = read_folder_header(tmp_path / "diffusers"), read_folder_header(tmp_path / "streamed")
    for key in ("crc32", "ternary", "aliases", "codec", "config", "architecture"):
        assert a[key] == b[key], key
    # streamed folder -> diffusers from_pretrained, and diffusers folder -> load_quantized_folder
    reloaded = FluxTransformer2DModel.from_pretrained(tmp_path / "streamed")
    assert torch.equal(run(reloaded, inputs), run(model, inputs))
    meta = build_flux(FLUX_TINY_CONFIG, device="meta", dtype=torch.bfloat16)
    load_quantized_folder(meta, tmp_path / "diffusers")
    assert torch.equal(run(meta, inputs), run(model, inputs))


def test_quantize_then_save_quantized_folder_reloads_with_diffusers(tmp_path, inputs):
    model = build_flux(FLUX_TINY_CONFIG, dtype=torch.bfloat16)
    quantize_(model, TernaryConfig(granularity="per_tensor"))
    save_quantized_folder(model, tmp_path / "t", codec="2bit")
    reloaded = FluxTransformer2DModel.from_pretrained(tmp_path / "t")
    assert reloaded.hf_quantizer.quantization_config.codec == "2bit"
    assert reloaded.transformer_blocks[0].attn.to_q.weight.granularity == "per_tensor"
    assert torch.equal(run(reloaded, inputs), run(model, inputs))


def test_float32_load_and_dequantize(dense_folder, inputs):
    model = FluxTransformer2DModel.from_pretrained(dense_folder, quantization_config=TernaryConfig(),
                                                   torch_dtype=torch.float32)
    w = model.transformer_blocks[0].attn.to_q.weight
    assert isinstance(w, TernaryTensor) and w.dtype == torch.float32
    x = example_inputs(FLUX_TINY_CONFIG, dtype=torch.float32)
    out = run(model, x)
    model.dequantize()
    assert not ternary_names(model) and not getattr(model, "is_quantized", False)
    assert torch.allclose(run(model, x), out, atol=1e-5)


# ---------------------------------------------------------------------- memory: the shard dict is never touched
def test_shards_are_read_tensor_by_tensor_not_through_diffusers_dict(dense_folder):
    from torch_ternary.integrations.diffusers_quantizer import TernaryDiffusersQuantizer

    q = TernaryDiffusersQuantizer(TernaryConfig(), pre_quantized=False)
    shards = sorted(str(p) for p in dense_folder.glob("*.safetensors"))
    with safe_open(shards[0], framework="pt") as f:
        keys = list(f.keys())
        expected = {k: f.get_tensor(k) for k in keys}
    q.maybe_update_loaded_keys(keys, shards)

    class Untouchable:  # what diffusers hands over is a dict of mmap'd tensors; the quantizer must not use them
        def __getattr__(self, name):
            raise AssertionError("the memory-mapped shard was touched")

    lazy = q.maybe_update_state_dict({k: Untouchable() for k in keys})
    assert list(lazy) == keys
    for k, v in lazy.items():
        assert torch.equal(v, expected[k])
    q._close()


# ---------------------------------------------------------------------- bad input
def test_config_validation():
    with pytest.raises(TernaryConfigError):
        TernaryQuantizationConfig(codec="3bit")
    with pytest.raises(TernaryConfigError):
        TernaryQuantizationConfig(granularity="per_row")
    with pytest.raises(TernaryConfigError):
        TernaryQuantizationConfig(quant_method="torchao")
    with pytest.raises(TernaryConfigError):
        TernaryQuantizationConfig(TernaryConfig(), granularity="per_tensor")
    with pytest.raises(TernaryFormatError, match="upgrade"):
        TernaryQuantizationConfig(format_version=99)
    c = TernaryQuantizationConfig(granularity="per_group", group_size=32, codec="2bit")
    assert TernaryQuantizationConfig.from_dict(c.to_dict()) == c and c.ternary.group_size == 32


@pytest.fixture
def ternary_folder(dense_folder, tmp_path):
    model = FluxTransformer2DModel.from_pretrained(dense_folder, quantization_config=TernaryConfig(),
                                                   torch_dtype=torch.bfloat16)
    model.save_pretrained(tmp_path / "t", max_shard_size="15KB")
    return tmp_path / "t"


def test_corrupt_shard_is_rejected(ternary_folder):
    shard = sorted(ternary_folder.glob("*.safetensors"))[1]
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0x10  # a bit flip in the last tensor's data
    shard.write_bytes(bytes(data))
    with pytest.raises(TernaryFormatError, match="checksum"):
        FluxTransformer2DModel.from_pretrained(ternary_folder)


def test_newer_format_version_is_rejected(ternary_folder):
    cfg_path = ternary_folder / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["quantization_config"]["format_version"] = 7
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(TernaryFormatError, match="upgrade"):
        FluxTransformer2DModel.from_pretrained(ternary_folder)


def test_wrong_architecture_is_rejected(ternary_folder):
    cfg_path = ternary_folder / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["attention_head_dim"] = 8
    cfg["axes_dims_rope"] = [2, 2, 4]
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ArchitectureMismatchError):
        FluxTransformer2DModel.from_pretrained(ternary_folder)


def test_missing_tensor_is_rejected(ternary_folder):
    from safetensors.torch import load_file, save_file

    index_path = ternary_folder / "diffusion_pytorch_model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    name = next(k for k in index["weight_map"] if k.endswith(".ternary_scale"))
    shard = ternary_folder / index["weight_map"].pop(name)
    with safe_open(str(shard), framework="pt") as f:
        metadata = f.metadata()
    tensors = {k: v for k, v in load_file(shard).items() if k != name}
    save_file(tensors, shard, metadata=metadata)
    index_path.write_text(json.dumps(index))
    with pytest.raises(TernaryFormatError, match="has no stored ternary_scale"):
        FluxTransformer2DModel.from_pretrained(ternary_folder)


def test_pickle_save_is_refused(dense_folder, tmp_path):
    model = FluxTransformer2DModel.from_pretrained(dense_folder, quantization_config=TernaryConfig(),
                                                   torch_dtype=torch.bfloat16)
    with pytest.raises(TernaryFormatError, match="safetensors"):
        model.save_pretrained(tmp_path / "p", safe_serialization=False)


def test_every_shard_carries_the_header(ternary_folder):
    headers = set()
    for shard in ternary_folder.glob("*.safetensors"):
        with safe_open(str(shard), framework="pt") as f:
            headers.add(f.metadata()[HEADER_KEY])
    assert len(headers) == 1
