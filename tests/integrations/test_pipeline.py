"""A ternary transformer inside diffusers' FluxPipeline: generation, save/reload, CPU offload, LoRA, torch.compile."""

import pytest
import torch

from .conftest import require_extras

require_extras()  # skipped, with the reason, without the diffusers extra

from diffusers import FluxPipeline, FluxTransformer2DModel

from torch_ternary import TernaryConfig, TernaryTensor, UnsupportedOperationError, quantize_
from torch_ternary import tensor as ternary_tensor
from torch_ternary.testing.pipelines import build_flux_pipeline

from .conftest import generate

peft = pytest.importorskip("peft")

#: what ``FluxPipeline.save_lora_weights`` writes; named because diffusers < 0.40 cannot guess it offline
LORA_FILE = "pytorch_lora_weights.safetensors"


def ternary_pipeline():
    pipe = build_flux_pipeline()
    quantize_(pipe.transformer, TernaryConfig())
    return pipe


def to_q(pipe):
    return pipe.transformer.transformer_blocks[0].attn.to_q


@pytest.fixture(scope="module")
def baseline():
    """Images of the ternary tiny pipeline with no offload / LoRA / compile (2 steps)."""
    return generate(ternary_pipeline())


# ---------------------------------------------------------------------- generation
def test_generation_runs_and_is_deterministic(baseline):
    pipe = ternary_pipeline()
    assert isinstance(to_q(pipe).weight, TernaryTensor)
    images = generate(pipe)
    assert images.shape == (1, 3, 16, 16) and torch.isfinite(images).all()
    assert 0 <= images.min() and images.max() <= 1 and images.std() > 0
    assert torch.equal(images, baseline)
    dense = generate(build_flux_pipeline())
    assert not torch.equal(dense, images)  # the transformer really is the ternary one


def test_pipeline_with_quantized_on_load_transformer_saves_and_reloads(tmp_path):
    pipe = build_flux_pipeline()
    pipe.transformer.save_pretrained(tmp_path / "dense")
    transformer = FluxTransformer2DModel.from_pretrained(tmp_path / "dense", quantization_config=TernaryConfig(),
                                                         torch_dtype=torch.float32)
    pipe = build_flux_pipeline(transformer=transformer)
    images = generate(pipe)
    pipe.save_pretrained(tmp_path / "pipe")
    reloaded = FluxPipeline.from_pretrained(tmp_path / "pipe")
    assert isinstance(to_q(reloaded).weight, TernaryTensor)
    assert torch.allclose(generate(reloaded), images, atol=1e-5)


# ---------------------------------------------------------------------- offload
def test_model_cpu_offload_hooks(baseline):
    pipe = ternary_pipeline()
    pipe.enable_model_cpu_offload(device="cpu")  # the accelerator is CPU here; the hooks are the real ones
    assert hasattr(pipe.transformer, "_hf_hook") and pipe._offload_device.type == "cpu"
    assert torch.equal(generate(pipe), baseline)
    assert torch.equal(generate(pipe), baseline)
    assert isinstance(to_q(pipe).weight, TernaryTensor)


def test_sequential_offload_moves_ternary_weights_off_and_back(baseline, monkeypatch):
    """accelerate's cpu_offload (what enable_sequential_cpu_offload applies to each model): weights live
    on meta between calls and are streamed in from the CPU copy at each forward, then dropped again."""
    from accelerate import cpu_offload

    pipe = ternary_pipeline()
    before = to_q(pipe).weight
    cpu_offload(pipe.transformer, execution_device=torch.device("cpu"))
    w = to_q(pipe).weight
    assert isinstance(w, TernaryTensor) and w.device.type == "meta" and w.packed.device.type == "meta"
    seen = []
    real_linear = ternary_tensor._ternary_linear

    def spy(x, weight, bias=None):  # every ternary matmul: where are the weight's inner tensors?
        seen.append((weight.device.type, weight.packed.device.type, weight.scale.device.type))
        return real_linear(x, weight, bias)

    monkeypatch.setattr(ternary_tensor, "_ternary_linear", spy)
    assert torch.equal(generate(pipe), baseline)
    assert seen and all(s == ("cpu", "cpu", "cpu") for s in seen)
    assert to_q(pipe).weight.device.type == "meta"
    onloaded = to_q(pipe)._hf_hook.weights_map["weight"]
    assert torch.equal(onloaded, before)


def test_group_offload(baseline):
    import diffusers
    from packaging.version import Version

    if Version(diffusers.__version__) < Version("0.41.0") and torch.accelerator.current_accelerator() is None:
        pytest.skip(f"diffusers {diffusers.__version__} (< 0.41) group offloading needs an accelerator; this machine has none")
    pipe = ternary_pipeline()
    pipe.transformer.enable_group_offload(onload_device=torch.device("cpu"), offload_device=torch.device("cpu"),
                                          offload_type="block_level", num_blocks_per_group=1)
    assert torch.equal(generate(pipe), baseline)
    assert isinstance(to_q(pipe).weight, TernaryTensor)


def test_module_to_meta_and_back_keeps_inner_tensors_together():
    from accelerate.utils import set_module_tensor_to_device

    pipe = ternary_pipeline()
    layer = to_q(pipe)
    w = layer.weight
    set_module_tensor_to_device(layer, "weight", "meta")
    assert layer.weight.packed.device.type == "meta" and layer.weight.scale.device.type == "meta"
    set_module_tensor_to_device(layer, "weight", "cpu", value=w)
    assert isinstance(layer.weight, TernaryTensor) and torch.equal(layer.weight, w)
    assert isinstance(layer.weight, torch.nn.Parameter) and not layer.weight.requires_grad


# ---------------------------------------------------------------------- LoRA
@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory):
    """A FLUX transformer LoRA (rank 4 on the attention projections, random A and B) in diffusers' format."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    src = build_flux_pipeline(seed=1).transformer
    src.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                               target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    path = tmp_path_factory.mktemp("lora")
    FluxPipeline.save_lora_weights(path, transformer_lora_layers=get_peft_model_state_dict(src))
    return path


def test_lora_load_changes_output_and_unload_restores_exactly(baseline, lora_dir):
    pipe = ternary_pipeline()
    base_weight = to_q(pipe).weight
    pipe.load_lora_weights(lora_dir, weight_name=LORA_FILE, adapter_name="style")
    layer = to_q(pipe)
    assert isinstance(layer, peft.tuners.lora.Linear)
    assert layer.base_layer.weight is base_weight  # the base stays ternary, untouched
    assert not isinstance(layer.lora_A["style"].weight, TernaryTensor)  # the low-rank side path is dense
    with_lora = generate(pipe)
    assert (with_lora - baseline).abs().max() > 1e-3

    pipe.set_adapters("style", adapter_weights=0.0)
    assert torch.allclose(generate(pipe), baseline, atol=1e-6)
    pipe.set_adapters("style", adapter_weights=1.0)
    assert torch.equal(generate(pipe), with_lora)

    pipe.unload_lora_weights()
    assert type(to_q(pipe)) is torch.nn.Linear and to_q(pipe).weight is base_weight
    assert torch.equal(generate(pipe), baseline)


def test_fuse_lora_on_ternary_base_raises_and_changes_nothing(lora_dir):
    pipe = ternary_pipeline()
    pipe.load_lora_weights(lora_dir, weight_name=LORA_FILE, adapter_name="style")
    with_lora = generate(pipe)
    codes = to_q(pipe).base_layer.weight.packed.clone()
    with pytest.raises(UnsupportedOperationError, match="fuse_lora"):
        pipe.fuse_lora()
    assert torch.equal(to_q(pipe).base_layer.weight.packed, codes)
    assert not to_q(pipe).merged
    assert torch.equal(generate(pipe), with_lora)


# ---------------------------------------------------------------------- torch.compile
def test_compile_full_denoising_loop_zero_recompiles(baseline):
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    pipe = ternary_pipeline()
    eager4 = generate(pipe, steps=4)
    pipe.transformer.compile(fullgraph=True)
    with torch._dynamo.config.patch(error_on_recompile=True):  # a recompile raises
        compiled4 = generate(pipe, steps=4)  # 4 transformer calls: one compile, three cache hits
        assert counters["stats"]["unique_graphs"] == 1
        assert torch.allclose(compiled4, eager4, atol=1e-4)
        assert torch.equal(generate(pipe, steps=4), compiled4)  # a second loop: still the same graph
        assert counters["stats"]["unique_graphs"] == 1
    torch._dynamo.reset()
