"""Run every example of docs/diffusers.md, docs/cli.md and the README's "With diffusers" section.

The examples are extracted from the Markdown (so they cannot drift) and run in order in a temporary
folder that holds what they refer to, built offline: ``FLUX.1-dev`` (a tiny FluxPipeline saved in bf16,
with a 4-block VAE so 512x512 images stay cheap), ``my-flux-lora`` (a LoRA for its transformer),
``transformer.safetensors`` (a plain state dict) and ``broken.safetensors``.
"""

import re
import shlex
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("accelerate")
pytest.importorskip("peft")

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)
#: lines of a bash block that set things up outside torch-ternary (they need a network) and are not run
SETUP_PREFIXES = ("pip install", "hf download", "huggingface-cli")

DOCS_VAE = dict(
    in_channels=3, out_channels=3, block_out_channels=(8, 8, 8, 8), layers_per_block=1, latent_channels=1,
    norm_num_groups=4, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035, sample_size=64,
)


def blocks(path: Path, text: str | None = None) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(text if text is not None else path.read_text())]


def readme_diffusers_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## With diffusers")
    end = text.find("\n## ", start + 3)
    return text[start:end if end != -1 else None]


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    from diffusers import FluxPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    from torch_ternary.testing.pipelines import build_flux_pipeline

    root = tmp_path_factory.mktemp("docs")
    pipe = build_flux_pipeline(vae_config=DOCS_VAE, t5_max_length=512, dtype=torch.bfloat16)
    pipe.save_pretrained(root / "FLUX.1-dev")
    save_file({k: v.contiguous() for k, v in pipe.transformer.state_dict().items()}, root / "transformer.safetensors")
    (root / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json" + bytes(64))
    lora_src = build_flux_pipeline(seed=1).transformer
    lora_src.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                    target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    FluxPipeline.save_lora_weights(root / "my-flux-lora", transformer_lora_layers=get_peft_model_state_dict(lora_src))
    return root


@pytest.fixture
def workspace(template, tmp_path):
    """A fresh copy of the template folder for each doc, so each runs as a reader would run it."""
    import shutil

    shutil.copytree(template, tmp_path / "work")
    return tmp_path / "work"


def run_python_blocks(source: list[tuple[str, str]], where: str) -> dict:
    namespace: dict = {"__name__": "__docs__"}
    code_blocks = [code for lang, code in source if lang == "python"]
    assert code_blocks, f"no python example in {where}"
    for i, code in enumerate(code_blocks):
        exec(compile(code, f"{where} [python block {i + 1}]", "exec"), namespace)
    return namespace


def test_diffusers_md_examples(workspace, monkeypatch, capsys):
    import torch._dynamo

    monkeypatch.chdir(workspace)
    torch._dynamo.reset()
    with torch._dynamo.config.patch(error_on_recompile=True):  # the compile example must not recompile
        ns = run_python_blocks(blocks(ROOT / "docs" / "diffusers.md"), "docs/diffusers.md")
    out = capsys.readouterr().out
    assert "TernaryTensor(shape=" in out and "torch.bfloat16 TernaryTensor" in out and "kept unfused:" in out
    assert (workspace / "fox.png").is_file() and (workspace / "FLUX.1-dev-ternary-2bit" / "model_index.json").is_file()
    assert ns["pipe"].transformer.hf_quantizer.quantization_config.quant_method == "torch_ternary"
    torch._dynamo.reset()


def run_shell_blocks(source: list[tuple[str, str]], where: str, capsys) -> int:
    """Run the ``torch-ternary`` lines of ``bash`` blocks (exit 0) and the ``$ ...`` lines of ``text`` blocks
    (exit 2, with the stderr line shown under them; ``...`` ends a prefix). Returns how many ran."""
    from torch_ternary.cli import main

    ran = 0
    for lang, code in source:
        if lang == "bash":
            for line in code.splitlines():
                line = line.split(" #")[0].strip() if not line.lstrip().startswith("#") else ""
                if not line or line.startswith(SETUP_PREFIXES):
                    continue
                argv = shlex.split(line)
                assert argv[0] == "torch-ternary", f"{where}: not a torch-ternary command: {line}"
                assert main(argv[1:]) == 0, f"{where}: {line}\n{capsys.readouterr().err}"
                ran += 1
        elif lang == "text":
            lines = code.strip().splitlines()
            for i, line in enumerate(lines):
                if not line.startswith("$ "):
                    continue
                capsys.readouterr()
                assert main(shlex.split(line[2:])[1:]) == 2, line
                err = capsys.readouterr().err.strip()
                expected = lines[i + 1].split("...")[0].strip()
                assert err.startswith(expected), (line, err, expected)
                assert len(err.splitlines()) == 1 and "Traceback" not in err
                ran += 1
    return ran


def test_readme_diffusers_section(workspace, monkeypatch, capsys):
    monkeypatch.chdir(workspace)
    section = blocks(ROOT / "README.md", readme_diffusers_section())
    run_python_blocks(section, "README.md#with-diffusers")
    assert run_shell_blocks(section, "README.md#with-diffusers", capsys) == 3
    assert (workspace / "fox.png").is_file() and (workspace / "flux-ternary" / "model_index.json").is_file()


def test_cli_md_examples(workspace, monkeypatch, capsys):
    monkeypatch.chdir(workspace)
    assert run_shell_blocks(blocks(ROOT / "docs" / "cli.md"), "docs/cli.md", capsys) >= 10
    assert (workspace / "fox.png").is_file() and (workspace / "transformer-ternary.safetensors").is_file()
    assert (workspace / "mini-gptq.safetensors").is_file() and (workspace / "mini-gptq.json").is_file()
