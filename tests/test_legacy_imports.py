"""Every import path that README, docs, benchmarks and tests used at 0.1.0 (before the package was grouped
by layer) still works, and gives the same objects as the new paths (``torch_ternary/_legacy.py``).

:data:`USED_AT_0_1_0` was collected from that tree (commit 814bbfc): ``from X import names`` statements,
``import X`` statements, attributes read off the modules (``ops_a8.set_activations``) and ``python -m`` targets.
"""

import importlib
import importlib.util
import subprocess
import sys

import pytest

#: module -> names taken from it (an empty tuple: the module itself)
USED_AT_0_1_0 = {
    "torch_ternary": ("ArchitectureMismatchError", "InvalidWeightError", "TernaryConfig", "TernaryConfigError",
                      "TernaryError", "TernaryFormatError", "TernaryTensor", "UnsupportedDeviceError",
                      "UnsupportedOperationError", "load_quantized", "quantize_", "save_quantized", "demo", "flux",
                      "ops", "ops_a8", "packing", "tensor", "calibration", "errors", "integrations", "kernels", "mini"),
    "torch_ternary.base3": ("decode_base3", "encode_base3", "encoded_nbytes"),
    "torch_ternary.packing": ("PAD_CODE", "pack_codes", "packed_shape", "unpack_codes", "unpack_raw", "validate_packed_codes"),
    "torch_ternary.quant_math": ("SCALE_EPS", "absmean_scale", "dequantize_codes", "num_groups"),
    "torch_ternary.ops": ("CHUNK_ELEMENTS", "dequantize", "linear", "rows_per_chunk", "unpack"),
    "torch_ternary.ops_a8": ("A8_FORMATS", "A8_MIN_ROWS", "ACTIVATION_MODES", "EXACT_F32_MAX_K", "QMAX", "TINY_AMAX",
                             "fp8_dtype", "linear_a8", "quantize_activations", "set_activations"),
    "torch_ternary.quantize": ("select_linears",),
    "torch_ternary.report": ("model_nbytes", "QuantizationReport"),
    "torch_ternary.config": ("TernaryConfig", "PRESETS"),
    "torch_ternary.serialization": ("CODES_SUFFIX", "HEADER_KEY", "INDEX_SUFFIX", "WEIGHTS_NAME", "_Planned",
                                    "_model_config_dict", "_shard_names", "_split", "atomic_write", "load_quantized_folder",
                                    "parse_size", "payload_nbytes", "read_folder_header", "read_header",
                                    "save_quantized_folder", "write_safetensors_streaming", "quantize_file"),
    "torch_ternary.flux": ("FLUX_DEV_CONFIG", "FLUX_SMALL_CONFIG", "FLUX_TINY_CONFIG", "build_flux", "example_inputs"),
    "torch_ternary.pipelines": ("build_flux_pipeline",),
    "torch_ternary.errors": ("InvalidWeightError", "TernaryConfigError", "TernaryError", "TernaryFormatError",
                             "UnsupportedDeviceError", "UnsupportedOperationError"),
    "torch_ternary.cli": ("main",),
    "torch_ternary.demo": (),
    "torch_ternary.demo_flux": (),
    "torch_ternary.tensor": ("TernaryTensor",),
    "torch_ternary.integrations": ("TernaryQuantizationConfig", "register_diffusers"),
    "torch_ternary.integrations.diffusers_quantizer": ("TernaryDiffusersQuantizer",),
    "torch_ternary.kernels": ("a8", "common", "decode", "dispatch", "gemm", "gemv", "loader", "disabled_reason", "register"),
    "torch_ternary.kernels.common": ("check_half_linear", "emulate_group_div", "group_div"),
    "torch_ternary.calibration": ("CalibrationConfig", "DistillConfig", "TrajectoryDataset", "TrajectoryError",
                                  "builtin_prompts", "calibrate", "load_prompts", "record_trajectories"),
    "torch_ternary.calibration.distill": ("distill",),
    "torch_ternary.calibration.encoder_data": ("EncoderDistillData", "mean_pooled"),
    "torch_ternary.calibration.layerwise": ("GramRecorder", "alternate", "calibrate_weight", "layerwise_calibrate",
                                            "relative_output_error"),
    "torch_ternary.calibration.prompts": ("CATEGORIES", "PromptSourceError", "builtin_prompts", "compositional_prompt",
                                          "load_prompts", "mini_prompts", "prompts_from_file"),
    "torch_ternary.calibration.trainable": ("TrainableTernaryLinear", "export_ternary", "make_trainable", "round_ste",
                                            "ste_ternary_weight"),
    "torch_ternary.mini": ("CATEGORIES", "COLORS", "CaptionError", "Description", "ImageFormatError", "PALETTE",
                           "RELATIONS", "Request", "SHAPES", "Scene", "SceneError", "SceneObject", "caption", "category_of",
                           "describe", "evaluate", "evaluation_prompts", "is_held_out", "judge", "load_pipeline", "parse",
                           "render", "render_batch", "sample_scene", "sample_training_caption",
                           "sample_training_example", "satisfies", "score"),
    "torch_ternary.mini.binding": ("BindingHeads", "IGNORE", "SIDES", "binding_targets", "pretrain_text_encoder",
                                   "swap_pairs", "word_state_similarity"),
    "torch_ternary.mini.evaluate": (),
    "torch_ternary.mini.grammar": ("CaptionError", "_meaning_key", "all_requests", "caption", "category_of",
                                   "category_probabilities", "parse", "sample_training_caption", "sample_training_example"),
    "torch_ternary.mini.model": ("PixelSpaceVAE",),
    "torch_ternary.mini.pipeline": ("META_FILE", "TERNARY_WEIGHTS_FILE", "WEIGHTS_FILE", "build_pipeline", "generate",
                                    "load_pipeline", "set_sampling", "weights_dir"),
    "torch_ternary.mini.text": ("MAX_TOKENS", "build_t5", "build_tokenizer", "vocabulary"),
    "torch_ternary.mini.train": ("Trainer", "main", "parse_args", "shifted_timesteps", "training_device"),
    "torch_ternary.mini.world": ("CANVAS", "COLORS", "Description", "MARGIN", "MIN_GAP", "PALETTE_ARRAY",
                                 "PLACEMENT_DOMINANCE", "PLACEMENT_MIN_OFFSET", "Request", "SHAPES", "Scene", "SceneError",
                                 "SceneObject", "boxes_gap", "distinguishable", "object_mask", "place_objects", "realize",
                                 "relation_holds", "satisfies", "shape_mask"),
    "torch_ternary.mini.score": (),
}
#: modules run with ``python -m`` at 0.1.0 (README, Makefile, docs)
RUN_AT_0_1_0 = ("torch_ternary.cli", "torch_ternary.demo", "torch_ternary.mini.train")
#: names that 0.1.0 had and that were removed on purpose as dead code (docs/architecture.md)
REMOVED = {"torch_ternary.quant_math": ("ternarize",), "torch_ternary.ops_a8": ("dequantize_activations",),
           "torch_ternary.serialization": ("architecture_fingerprint",), "torch_ternary.kernels.loader": ("clear_caches",)}

NEEDS_DIFFUSERS = ("torch_ternary.integrations.diffusers_quantizer", "torch_ternary.mini.score")


def _skip_without_diffusers(module):
    if module in NEEDS_DIFFUSERS and importlib.util.find_spec("diffusers") is None:
        pytest.skip("needs diffusers")


@pytest.mark.parametrize("module", sorted(USED_AT_0_1_0))
def test_old_import_path_still_works(module):
    _skip_without_diffusers(module)
    if module == "torch_ternary.mini.score":  # a function of torch_ternary.mini read as an attribute
        import torch_ternary.mini

        assert callable(torch_ternary.mini.score)
        return
    mod = importlib.import_module(module)
    for name in USED_AT_0_1_0[module]:
        if name == "load_pipeline" or name == "score":
            _skip_without_diffusers("torch_ternary.mini.score")
        namespace: dict = {}
        exec(f"from {module} import {name}", namespace)
        assert namespace[name] is getattr(mod, name), f"{module}.{name}"


# (old path, the module it is now): moved whole, so the very same module object
MOVED = {
    "torch_ternary.base3": "torch_ternary.format.base3",
    "torch_ternary.packing": "torch_ternary.format.packing",
    "torch_ternary.quant_math": "torch_ternary.quantization.absmean",
    "torch_ternary.config": "torch_ternary.quantization.config",
    "torch_ternary.quantize": "torch_ternary.quantization.quantize",
    "torch_ternary.report": "torch_ternary.quantization.report",
    "torch_ternary.flux": "torch_ternary.testing.flux",
    "torch_ternary.pipelines": "torch_ternary.testing.pipelines",
}


@pytest.mark.parametrize("old,new", sorted(MOVED.items()))
def test_moved_module_is_the_new_module(old, new):
    a, b = importlib.import_module(old), importlib.import_module(new)
    assert a is b and a.__name__ == new and a.__spec__.name == new  # the import system did not re-label it


def test_split_modules_resolve_to_the_new_objects():
    import torch_ternary
    from torch_ternary.format import folder, single_file
    from torch_ternary.ops import ternary_linear, ternary_linear_a8
    from torch_ternary.quantization import activations

    assert torch_ternary.serialization.save_quantized is single_file.save_quantized
    assert torch_ternary.serialization.load_quantized_folder is folder.load_quantized_folder
    assert torch_ternary.ops_a8.linear_a8 is ternary_linear_a8.linear_a8
    assert torch_ternary.ops_a8.set_activations is activations.set_activations
    assert torch_ternary.ops.rows_per_chunk is ternary_linear.rows_per_chunk
    with pytest.raises(AttributeError):
        torch_ternary.serialization.no_such_name  # noqa: B018


def test_removed_names_are_gone():
    for module, names in REMOVED.items():
        mod = importlib.import_module(module)
        for name in names:
            assert not hasattr(mod, name), f"{module}.{name} was meant to be removed"


def test_fresh_interpreter_imports_every_old_path():
    """The finder works before anything else of torch-ternary is imported, and ``python -m`` targets resolve."""
    lines = [f"from {m} import {', '.join(n)}" if n else f"import {m}" for m, n in USED_AT_0_1_0.items()
             if m not in NEEDS_DIFFUSERS and not any(x in ("load_pipeline", "score") for x in n)]
    lines += [f"import importlib.util; assert importlib.util.find_spec({m!r}) is not None" for m in RUN_AT_0_1_0]
    proc = subprocess.run([sys.executable, "-c", "\n".join(lines)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
