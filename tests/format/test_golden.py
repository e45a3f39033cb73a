"""Files written by torch-ternary 0.1.0 load bit-identically today (``tests/fixtures/golden_0_1_0``).

The fixtures were written once by ``tests/fixtures/make_golden.py`` with release 0.1.0 (commit 4ea21c8),
before the package was restructured; ``expected.*`` holds what loading them gave then.
"""

import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from torch_ternary import TernaryTensor, load_quantized

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "golden_0_1_0"
EXPECTED = json.loads((GOLDEN / "expected.json").read_text())
sys.path.insert(0, str(GOLDEN.parent))
from make_golden import Net  # noqa: E402  (the module class the files were saved from)

sys.path.pop(0)

DTYPES = {str(d): d for d in (torch.float32, torch.float16, torch.bfloat16)}


@pytest.fixture
def reference_ops(monkeypatch):
    """The outputs stored in 0.1.0 came from the plain-torch ops: compare bit for bit with those (the compiled
    CPU kernels round differently; :func:`check_kernel_output` compares them within tolerance)."""
    monkeypatch.setenv("TORCH_TERNARY_CPU_ISA", "reference")


def check_stored_output(out: torch.Tensor, stored: torch.Tensor) -> None:
    """The plain-torch ops reproduce the stored output: bit for bit in 16-bit dtypes; in float32 within 1e-6
    relative, since the dense float32 layers go to torch's CPU GEMM, which sums in an ISA-dependent order (on an
    AVX2-only host the float32 file's output was 1.8e-7 off at most; 16-bit outputs stay identical)."""
    if stored.dtype == torch.float32:
        assert out.dtype == stored.dtype and out.shape == stored.shape
        assert float((out.double() - stored.double()).norm() / stored.double().norm()) <= 1e-6
    else:
        assert torch.equal(out, stored)


def check_kernel_output(monkeypatch, forward, stored: torch.Tensor) -> None:
    """With the compiled CPU kernels (when built) the output matches the stored one within the dtype's rounding."""
    monkeypatch.delenv("TORCH_TERNARY_CPU_ISA")
    with torch.no_grad():
        out = forward()
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[stored.dtype]
    assert float((out.double() - stored.double()).norm() / stored.double().norm()) <= tol


@pytest.fixture(scope="module")
def plain():
    return load_file(str(GOLDEN / "expected.safetensors"))


def check_entries(model, prefix: str, entries: dict, plain: dict) -> None:
    state = model.state_dict(keep_vars=True)
    assert sorted(state) == sorted(entries)
    for name, entry in entries.items():
        t = state[name]
        assert str(t.dtype) == entry["dtype"] and list(t.shape) == entry["shape"], name
        assert bool(t.requires_grad) == entry["requires_grad"], name
        source = entry["tied_to"] or name
        if entry["tied_to"] is not None:
            assert t is state[entry["tied_to"]], f"{name} should be tied to {entry['tied_to']}"
        if entry["kind"] == "ternary":
            assert isinstance(t, TernaryTensor), name
            assert (t.group_size, t.activations) == (entry["group_size"], entry["activations"]), name
            assert torch.equal(t.packed, plain[f"{prefix}/{source}.packed"]), name
            assert torch.equal(t.scale, plain[f"{prefix}/{source}.scale"]), name
        else:
            assert not isinstance(t, TernaryTensor), name
            assert torch.equal(t, plain[f"{prefix}/{source}"]), name


@pytest.mark.parametrize("case", sorted(EXPECTED["cases"]))
def test_single_file_loads_bit_identically(case, plain, reference_ops, monkeypatch):
    spec = EXPECTED["cases"][case]
    dtype = DTYPES[spec["dtype"]]
    with torch.device("meta"):
        model = Net(tie=spec["tie"]).to(dtype)
    load_quantized(model, GOLDEN / spec["file"])
    check_entries(model, case, spec["entries"], plain)
    x = torch.randn(3, 20, generator=torch.Generator().manual_seed(1)).to(dtype)
    with torch.no_grad():
        check_stored_output(model(x), plain[f"{case}/__output__"])
    check_kernel_output(monkeypatch, lambda: model(x), plain[f"{case}/__output__"])


def test_sharded_folder_loads_bit_identically(plain):
    from torch_ternary.format.folder import load_quantized_folder

    spec = EXPECTED["folder"]
    same = EXPECTED["cases"][spec["same_as"]]
    assert sorted(p.name for p in (GOLDEN / spec["folder"]).iterdir()) == spec["files"]
    with torch.device("meta"):
        model = Net().to(torch.bfloat16)
    load_quantized_folder(model, GOLDEN / spec["folder"])
    check_entries(model, spec["same_as"], same["entries"], plain)


@pytest.mark.skipif(importlib.util.find_spec("diffusers") is None, reason="needs diffusers (the diffusers extra)")
def test_diffusers_folder_loads_bit_identically(plain, reference_ops, monkeypatch):
    from diffusers import FluxTransformer2DModel

    from torch_ternary.testing.flux import FLUX_TINY_CONFIG, example_inputs

    spec = EXPECTED["diffusers"]
    model = FluxTransformer2DModel.from_pretrained(GOLDEN / spec["folder"])
    check_entries(model, spec["folder"], spec["entries"], plain)
    inputs = example_inputs(FLUX_TINY_CONFIG, dtype=torch.bfloat16)
    with torch.no_grad():
        out = model(**inputs)[0]
    check_stored_output(out, plain[f"{spec['folder']}/__output__"])
    check_kernel_output(monkeypatch, lambda: model(**inputs)[0], plain[f"{spec['folder']}/__output__"])


def sha(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


@pytest.mark.skipif(importlib.util.find_spec("diffusers") is None, reason="needs diffusers (the diffusers extra)")
@pytest.mark.parametrize("which", ["full_precision", "ternary"])
def test_shipped_mini_flux_loads_bit_identically(which):
    from torch_ternary.mini import load_pipeline

    pipe = load_pipeline(quantized=which == "ternary")
    state = pipe.transformer.state_dict(keep_vars=True)
    expected = EXPECTED["mini_flux"][which]
    assert sorted(state) == sorted(expected)
    for name, want in expected.items():
        t = state[name]
        assert str(t.dtype) == want["dtype"], name
        if "packed" in want:
            assert isinstance(t, TernaryTensor) and (t.group_size, t.activations) == (want["group_size"], want["activations"])
            assert (sha(t.packed), sha(t.scale)) == (want["packed"], want["scale"]), name
        else:
            assert sha(t) == want["data"], name
