"""`torch-ternary calibrate` in one process: linears kept dense with --exclude (trained in micro-batches), and a glob
that names none."""

import json

import torch
from safetensors.torch import load_file

from torch_ternary import TernaryTensor, load_quantized
from torch_ternary.cli import main
from torch_ternary.mini import load_pipeline

FAST = ["--pipeline", "mini", "--method", "distill_qat", "--gptq-init", "--prompts", "mini-calibration",
        "--num-prompts", "2", "--sampling-steps", "2", "--steps", "2", "--batch-size", "4", "--trajectory-batch", "2"]
KEPT = "single_transformer_blocks.3.attn.to_v"


def test_exclude_keeps_the_teacher_weight_dense(tmp_path):
    out = tmp_path / "m.safetensors"
    assert main(["calibrate", *FAST, "--exclude", KEPT, "--micro-batch", "2", "--workdir", str(tmp_path / "w"),
                 "--out", str(out)]) == 0
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["exclude"] == [KEPT] and summary["distill"]["micro_batch"] == 2
    teacher = load_pipeline().transformer
    pipe = load_pipeline()
    load_quantized(pipe.transformer, out)
    modules = dict(pipe.transformer.named_modules())
    assert not isinstance(modules[KEPT].weight, TernaryTensor)
    torch.testing.assert_close(modules[KEPT].weight, dict(teacher.named_modules())[KEPT].weight, rtol=0, atol=0)
    assert sum(isinstance(p, TernaryTensor) for p in pipe.transformer.parameters()) == 51  # the preset's 52, less one
    assert any(k.startswith(KEPT + ".weight") for k in load_file(str(out)))


def test_exclude_glob_naming_no_linear_is_refused(tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    code = main(["calibrate", *FAST, "--exclude", "single_blocks.*.to_v", "--workdir", str(tmp_path / "w"), "--out", str(out)])
    assert code != 0 and not out.exists() and not (tmp_path / "w").exists()
    assert "matches no linear" in capsys.readouterr().err
