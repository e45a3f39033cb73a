"""The ``torch-ternary`` command: quantize (folder, pipeline, plain file), info, generate, demo, and user errors."""

import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("accelerate")

from safetensors.torch import save_file

from torch_ternary import TernaryConfig, load_quantized, quantize_
from torch_ternary.cli import main
from torch_ternary.testing.flux import FLUX_TINY_CONFIG, build_flux, example_inputs


def cli(*args):
    return main([str(a) for a in args])


def one_line_error(capsys, rc, *fragments):
    out = capsys.readouterr()
    assert rc == 2
    lines = [line for line in out.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("torch-ternary: error: "), out.err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    from torch_ternary.testing.pipelines import build_flux_pipeline

    path = tmp_path_factory.mktemp("cli") / "pipe"
    build_flux_pipeline().save_pretrained(path)
    return path


@pytest.fixture
def plain_file(tmp_path):
    model = build_flux(FLUX_TINY_CONFIG, dtype=torch.bfloat16)
    path = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return path, model


def test_quantize_plain_file_then_load_quantized(plain_file, tmp_path, capsys):
    src, _ = plain_file
    dst = tmp_path / "out.safetensors"
    assert cli("quantize", src, dst, "--granularity", "per_group", "--group-size", "16", "-q") == 0
    assert "20 ternary layers" in capsys.readouterr().out
    ref = build_flux(FLUX_TINY_CONFIG, dtype=torch.bfloat16)
    quantize_(ref, TernaryConfig(granularity="per_group", group_size=16))
    fresh = build_flux(FLUX_TINY_CONFIG, device="meta", dtype=torch.bfloat16)
    load_quantized(fresh, dst)
    for (name, a), (_, b) in zip(ref.state_dict().items(), fresh.state_dict().items()):
        assert type(a) is type(b) and torch.equal(a, b), name
    x = example_inputs(FLUX_TINY_CONFIG, dtype=torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(ref(**x)[0], fresh(**x)[0])


def test_quantize_model_folder_reloads_with_diffusers(tmp_path, capsys):
    from diffusers import FluxTransformer2DModel

    model = build_flux(FLUX_TINY_CONFIG, dtype=torch.bfloat16)
    model.save_pretrained(tmp_path / "dense", max_shard_size="20KB")
    rc = cli("quantize", tmp_path / "dense", tmp_path / "t", "--format", "2bit", "--dtype", "bfloat16",
             "--max-shard-size", "30KB", "-q")
    assert rc == 0, capsys.readouterr().err
    reloaded = FluxTransformer2DModel.from_pretrained(tmp_path / "t")
    assert reloaded.hf_quantizer.quantization_config.codec == "2bit"
    quantize_(model, TernaryConfig())
    x = example_inputs(FLUX_TINY_CONFIG, dtype=torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(reloaded(**x)[0], model(**x)[0])

    capsys.readouterr()
    assert cli("info", tmp_path / "t", "--json", "--layers") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "torch-ternary diffusers model" and info["codec"] == "2bit"
    assert info["ternary_layers"] == len(info["layers"]) == 20 and info["shards"] > 1
    assert info["quantization_config"]["quant_method"] == "torch_ternary"


def test_quantize_pipeline_then_generate_png(pipeline_dir, tmp_path, capsys):
    from PIL import Image

    out_dir = tmp_path / "pipe_t"
    assert cli("quantize", pipeline_dir, out_dir, "--dtype", "float32", "-q") == 0
    assert (out_dir / "model_index.json").is_file() and (out_dir / "text_encoder_2").is_dir()
    png = tmp_path / "cube.png"
    rc = cli("generate", out_dir, "--prompt", "a red cube", "-o", png, "--steps", "2", "--seed", "3",
             "--height", "32", "--width", "32", "--guidance", "2.0", "-q")
    assert rc == 0, capsys.readouterr().err
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size == (32, 32)
        first = im.tobytes()
    assert cli("generate", out_dir, "-p", "a red cube", "-o", png, "--steps", "2", "--seed", "3",
               "--height", "32", "--width", "32", "--guidance", "2.0", "-q") == 0
    with Image.open(png) as im:
        assert im.tobytes() == first  # seeded: the same image

    capsys.readouterr()
    assert cli("info", out_dir) == 0
    text = capsys.readouterr().out
    assert "diffusers pipeline" in text and "torch-ternary diffusers model" in text and "codec: base3" in text


def test_info_on_plain_and_ternary_files(plain_file, tmp_path, capsys):
    src, _ = plain_file
    assert cli("info", src, "--json") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "plain safetensors" and info["linear_weight_candidates"] > 0
    dst = tmp_path / "t.safetensors"
    assert cli("quantize", src, dst, "-q") == 0
    capsys.readouterr()
    assert cli("info", dst, "--layers") == 0
    text = capsys.readouterr().out
    assert "kind: torch-ternary file" in text and "ternary_layers: 20" in text
    assert "transformer_blocks.0.attn.to_q.weight: 32x32 bfloat16" in text


def _demo_options(parser) -> dict:
    return {a.option_strings[0]: (a.default, a.nargs, type(a).__name__) for a in parser._actions if a.option_strings
            and a.dest != "help"}


def test_demo_subcommand_has_the_demo_options():
    """``torch-ternary demo`` and ``python -m torch_ternary.demo`` take the same options, same defaults."""
    from torch_ternary import demo
    from torch_ternary.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["demo"]
    assert _demo_options(sub) == _demo_options(demo.build_parser())
    assert set(_demo_options(sub)) == {"--out", "--flux", "--no-compile"}


def test_demo_subcommand_passes_its_flags(monkeypatch, tmp_path):
    from torch_ternary import demo

    calls = []
    monkeypatch.setattr(demo, "main", lambda argv=None: calls.append(argv))
    assert cli("demo") == 0 and calls[-1] == ["--out", "demo_mini_flux.png"]
    out = tmp_path / "side.png"
    assert cli("demo", "--out", out, "--flux", "--no-compile") == 0
    assert calls[-1] == ["--out", str(out), "--flux", "--no-compile"]
    assert cli("demo", "--flux") == 0 and calls[-1] == ["--out", "demo_mini_flux.png", "--flux"]


def test_demo_flags_reach_the_flux_check(monkeypatch, tmp_path):
    """``--flux`` runs ``demo_flux`` after the Mini FLUX demo, ``--no-compile`` reaches it; the PNG goes to ``--out``."""
    from torch_ternary import demo, demo_flux

    runs, flux = [], []
    monkeypatch.setattr(demo, "run_mini_flux", lambda out: runs.append(out))
    monkeypatch.setattr(demo_flux, "main", lambda argv=None: flux.append(argv))
    out = tmp_path / "x.png"
    assert cli("demo", "--out", out, "--flux", "--no-compile") == 0
    assert runs == [str(out)] and flux == [["--no-compile"]]
    assert cli("demo", "--flux") == 0 and flux[-1] == [] and runs[-1] == "demo_mini_flux.png"
    assert cli("demo") == 0 and len(flux) == 2 and len(runs) == 3


def test_demo_bad_flags_are_user_errors(monkeypatch, tmp_path, capsys):
    from torch_ternary import demo

    calls = []
    monkeypatch.setattr(demo, "run_mini_flux", lambda out: calls.append(out))
    one_line_error(capsys, cli("demo", "--no-compile"), "--no-compile only applies with --flux")
    one_line_error(capsys, cli("demo", "--out", tmp_path / "x.jpg"), "PNG")
    one_line_error(capsys, cli("demo", "--out", tmp_path / "missing" / "x.png"), "no such folder")
    with pytest.raises(SystemExit) as e:  # python -m torch_ternary.demo: argparse's usage error, status 2
        demo.main(["--no-compile"])
    assert e.value.code == 2 and "--no-compile only applies with --flux" in capsys.readouterr().err
    assert calls == []  # nothing ran


# ---------------------------------------------------------------------- user errors: one line, exit 2
def test_missing_paths(tmp_path, capsys):
    one_line_error(capsys, cli("quantize", tmp_path / "nope", tmp_path / "out"), "no such file or folder")
    one_line_error(capsys, cli("info", tmp_path / "nope.safetensors"), "no such file or folder")
    one_line_error(capsys, cli("generate", tmp_path / "nope", "-p", "x"), "no such pipeline folder")


def test_bad_files(tmp_path, capsys):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00\x01not a safetensors file at all" * 10)
    one_line_error(capsys, cli("info", junk), "not a readable safetensors file")
    one_line_error(capsys, cli("quantize", junk, tmp_path / "o.safetensors"), "not a readable safetensors file")
    (tmp_path / "folder").mkdir()
    one_line_error(capsys, cli("quantize", tmp_path / "folder", tmp_path / "o"), "neither a diffusers model")
    one_line_error(capsys, cli("generate", tmp_path / "folder", "-p", "x"), "model_index.json")
    (tmp_path / "folder" / "config.json").write_text("{not json")
    one_line_error(capsys, cli("info", tmp_path / "folder"), "not a readable JSON file")


def test_bad_options_and_existing_outputs(plain_file, tmp_path, capsys):
    src, _ = plain_file
    one_line_error(capsys, cli("quantize", src, tmp_path / "o.safetensors", "--granularity", "per_group",
                               "--group-size", "20"), "multiple of 16")
    one_line_error(capsys, cli("quantize", src, tmp_path / "out_folder"), "*.safetensors")
    dst = tmp_path / "o.safetensors"
    dst.write_bytes(b"x")
    one_line_error(capsys, cli("quantize", src, dst), "already exists", "--force")
    assert cli("quantize", src, dst, "--force", "-q") == 0
    capsys.readouterr()
    one_line_error(capsys, cli("quantize", dst, tmp_path / "again.safetensors"), "already a torch-ternary file")
    with pytest.raises(SystemExit) as e:
        cli("quantize", src, dst, "--format", "3bit")
    assert e.value.code == 2


def test_already_quantized_folder_and_bad_generate_options(pipeline_dir, tmp_path, capsys):
    out_dir = tmp_path / "p"
    assert cli("quantize", pipeline_dir, out_dir, "-q") == 0
    capsys.readouterr()
    one_line_error(capsys, cli("quantize", out_dir / "transformer", tmp_path / "again"), "already quantized")
    one_line_error(capsys, cli("generate", out_dir, "-p", "x", "--steps", "0"), "--steps must be positive")
    one_line_error(capsys, cli("generate", out_dir, "-p", "x", "-o", tmp_path / "x.jpg"), "PNG")


def test_console_entry_point_exits_2_without_traceback(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "torch_ternary.cli", "info", str(tmp_path / "missing")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().startswith("torch-ternary: error:") and len(out.stderr.strip().splitlines()) == 1
    from importlib.metadata import entry_points

    scripts = {e.name: e.value for e in entry_points(group="console_scripts")}
    if "torch-ternary" in scripts:  # installed (pip install -e .): the script points at cli.main
        assert scripts["torch-ternary"] == "torch_ternary.cli:main"
