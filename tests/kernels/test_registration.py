"""CPU tests of the kernels' Python side: safe registration, dispatch, fallbacks, typed errors, packaging."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import torch_ternary.kernels as K
from torch_ternary.errors import UnsupportedDeviceError
from torch_ternary.format import packing
from torch_ternary.kernels import dispatch, loader
from torch_ternary.ops import backends
from torch_ternary.ops import ternary_linear as ops

ROOT = Path(__file__).resolve().parents[2]


def _weight(n=8, k=40, rows=8, cols=1):
    codes = torch.randint(-1, 2, (n, k), dtype=torch.int8)
    return packing.pack_codes(codes), torch.rand(rows, cols) + 0.1


def test_import_and_register_are_noops_without_cuda():
    if torch.version.cuda is not None and importlib.util.find_spec("cupy") is not None:
        pytest.skip("this torch has CUDA and CuPy is installed: registration is expected")
    assert K.register() is False
    assert not K.registered()
    assert not K.available()
    packed, scale = _weight()
    y = torch.ops.torch_ternary.linear(torch.randn(2, 40), packed, scale, None, 40, 40)
    assert y.shape == (2, 8)


@pytest.fixture
def fake_cuda_build(monkeypatch):
    """Pretend torch has CUDA and CuPy is installed; restore the op registrations afterwards."""
    saved = {name: backends.get_impl(name, "cuda") for name in ("linear", "unpack", "dequantize", "linear_a8")}
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(K, "_cupy_installed", lambda: True)
    monkeypatch.setattr(K, "_registered", False)
    monkeypatch.setattr(K, "capability", lambda index: (9, 0))
    monkeypatch.setattr(K, "device_index", lambda t: 0)
    dispatch.STATS.clear()
    yield
    for name, fn in saved.items():
        backends.set_impl(name, "cuda", None if fn is backends.reference(name) else fn)


def test_register_installs_cuda_kernels_once(fake_cuda_build):
    before = backends.get_impl("linear", "cuda")
    assert before is backends.reference("linear")
    assert K.register() is True and K.registered()
    after = backends.get_impl("linear", "cuda")
    assert after is K._linear_cuda
    assert K.register() is True  # idempotent
    assert backends.get_impl("linear", "cuda") is after
    assert K._reference["linear"] is ops.linear._init_fn
    assert backends.get_impl("linear", "cpu") is not K._linear_cuda  # CPU calls never reach the CUDA kernels


def test_cuda_impl_falls_back_to_reference(fake_cuda_build, monkeypatch):
    """The registered function's decisions, driven with CPU tensors (no kernel is launched)."""
    K.register()
    packed, scale = _weight()
    x = torch.randn(3, 40)
    ref = ops.linear._init_fn(x, packed, scale, None, 40, 40)
    torch.testing.assert_close(K._linear_cuda(x, packed, scale, None, 40, 40), ref)  # fp32 -> reference
    assert dispatch.STATS["linear:reference(dtype)"] == 1
    monkeypatch.setattr(K, "capability", lambda index: (7, 5))
    xb = x.bfloat16()
    torch.testing.assert_close(K._linear_cuda(xb, packed, scale, None, 40, 40),
                               ops.linear._init_fn(xb, packed, scale, None, 40, 40))
    assert dispatch.STATS["linear:reference(capability)"] == 1
    monkeypatch.setattr(K, "capability", lambda index: (9, 0))
    packed2, scale2 = _weight(k=40, cols=2)  # group size 20: not a multiple of 16
    K._linear_cuda(xb, packed2, scale2, None, 40, 20)
    assert dispatch.STATS["linear:reference(weight)"] == 1
    with dispatch.forced(dispatch.REFERENCE):
        K._linear_cuda(xb, packed, scale, None, 40, 40)
    assert dispatch.STATS["linear:reference(table)"] == 1
    with pytest.raises(UnsupportedDeviceError):  # a kernel path with CPU tensors: typed error
        K._linear_cuda(xb, packed, scale, None, 40, 40)
    with pytest.raises(TypeError):  # the reference's argument checks run first
        K._linear_cuda(x.to(torch.int32), packed, scale, None, 40, 40)


def test_load_failure_disables_kernels_with_a_warning(fake_cuda_build, monkeypatch):
    K.register()
    monkeypatch.setattr(K, "_disabled", None)

    def boom(*a, **k):
        raise loader.KernelLoadError("no libnvrtc")

    monkeypatch.setattr(K, "skinny_linear", boom)
    packed, scale = _weight()
    xb = torch.randn(2, 40).bfloat16()
    with pytest.warns(RuntimeWarning, match="CUDA kernels disabled"):
        y = K._linear_cuda(xb, packed, scale, None, 40, 40)
    torch.testing.assert_close(y, ops.linear._init_fn(xb, packed, scale, None, 40, 40))
    assert K.disabled_reason() is not None
    K._linear_cuda(xb, packed, scale, None, 40, 40)
    assert dispatch.STATS["linear:reference(disabled)"] == 2


def test_kernel_entries_raise_typed_errors_on_cpu():
    packed, scale = _weight()
    x = torch.randn(2, 40).bfloat16()
    for call in (
        lambda: K.skinny_linear(x, packed, scale, None, 40, 40),
        lambda: K.fused_linear(x, packed, scale, None, 40, 40),
        lambda: K.decode_cublas_linear(x, packed, scale, None, 40, 40),
        lambda: K.dequantize_cuda(packed, scale, 40, 40, torch.bfloat16),
        lambda: K.unpack_cuda(packed, 40),
    ):
        with pytest.raises(UnsupportedDeviceError):
            call()


def test_dispatch_table_and_overrides(monkeypatch):
    monkeypatch.delenv(dispatch.ENV_FORCE, raising=False)
    for m in (1, 8, 16):
        assert dispatch.choose(m, 3072, 3072, (9, 0)).path == dispatch.SKINNY
    for m in (17, 512, 4608):
        assert dispatch.choose(m, 3072, 3072, (9, 0)).path == dispatch.DECODE_CUBLAS
    assert dispatch.choose(1, 3072, 3072, (8, 6)).path == dispatch.SKINNY  # falls back to "default"
    with dispatch.forced(dispatch.FUSED_MMA):
        assert dispatch.choose(1, 8, 8, (9, 0)).path == dispatch.FUSED_MMA
        with dispatch.forced(dispatch.SKINNY, rows_per_warp=2, warps=4) as c:
            assert dispatch.choose(4096, 8, 8, (9, 0)) == c == dispatch.Choice(dispatch.SKINNY, 2, 4)
    assert dispatch.choose(4096, 8, 8, (9, 0)).path == dispatch.DECODE_CUBLAS
    monkeypatch.setenv(dispatch.ENV_FORCE, dispatch.FUSED_MMA)
    assert dispatch.choose(1, 8, 8, (9, 0)).path == dispatch.FUSED_MMA
    monkeypatch.setenv(dispatch.ENV_FORCE, "nope")
    with pytest.raises(ValueError):
        dispatch.choose(1, 8, 8, (9, 0))
    with pytest.raises(ValueError):
        with dispatch.forced("nope"):
            pass


def test_sources_found_and_includes_inlined():
    folder = loader.source_dir()
    for name in loader.SOURCE_FILES:
        assert folder.joinpath(name).is_file()
        text = loader.read_source(name)
        assert '#include "' not in text and "namespace tt" in text
        assert text.count("struct Half2Traits<__nv_bfloat16>") == 1
    # no symlink in the package: the sources ship through pyproject's package-dir mapping
    assert not [p for p in (ROOT / "torch_ternary").rglob("*") if p.is_symlink()]


def test_wheel_ships_cuda_sources(tmp_path):
    """Build a wheel from a copy of the project: the .cu / .cuh files are inside, next to the code."""
    pytest.importorskip("setuptools")
    pytest.importorskip("wheel")
    src = tmp_path / "src"
    src.mkdir()
    for item in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / item, src / item)
    for folder in ("torch_ternary", "cuda"):
        shutil.copytree(ROOT / folder, src / folder, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path / "wheel"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(src)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (whl,) = out.glob("torch_ternary-*.whl")
    names = set(zipfile.ZipFile(whl).namelist())
    for name in (*loader.SOURCE_FILES, "common.cuh"):
        assert f"torch_ternary/kernels/cuda_src/{name}" in names, sorted(names)
    assert "torch_ternary/kernels/loader.py" in names
    from torch_ternary.kernels import cpu  # the CPU kernels' sources and header, compiled on first use
    for path in (*cpu._sources(), cpu.AMX_HEADER):
        assert f"torch_ternary/kernels/cpu/{path.name}" in names, sorted(names)
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "torch_ternary").rglob("*.py")}
    assert modules <= names, sorted(modules - names)  # pyproject lists every package
    assert not any(n.startswith("cuda/") for n in names)  # no top-level package named cuda
