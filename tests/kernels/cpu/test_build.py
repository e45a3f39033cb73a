"""Building the CPU kernels: cached per source / torch version / flags, a clear fallback without a compiler,
an error instead under ``$TORCH_TERNARY_CPU_KERNELS=require`` (what CI sets), and proof the compiled code ran."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from tests.ops.test_ternary_linear import make_weight

from torch_ternary.kernels import cpu
from torch_ternary.kernels.loader import KernelLoadError
from torch_ternary.ops import backends

ROOT = Path(__file__).resolve().parents[3]


def _has_compiler() -> bool:
    return shutil.which(os.environ.get("CXX", "c++")) is not None


def test_compiled_kernel_ran():
    """With a compiler (always in CI, where ``$TORCH_TERNARY_CPU_KERNELS=require``) the ops run compiled code."""
    if not _has_compiler() and cpu._mode() != "require":
        pytest.skip("no C++ compiler on this machine")
    packed, scale, gs, _, _ = make_weight(16, 64)
    torch.ops.torch_ternary.linear(torch.randn(2, 64), packed, scale, None, 64, gs)  # installs on first CPU call
    assert backends.get_impl("linear", "cpu") is cpu.linear_cpu
    before = sum(v for key, v in cpu.STATS.items() if key.startswith("linear:") and key != "linear:reference")
    torch.ops.torch_ternary.linear(torch.randn(2, 64), packed, scale, None, 64, gs)
    after = sum(v for key, v in cpu.STATS.items() if key.startswith("linear:") and key != "linear:reference")
    assert cpu.load() is not None and cpu.failure() is None
    assert after == before + 1
    assert set(cpu.available_isas()) >= {"scalar"}


def test_ci_requires_the_compiled_kernels():
    if os.environ.get("CI", "").lower() == "true":
        assert cpu._mode() == "require", "CI must set TORCH_TERNARY_CPU_KERNELS=require (.ci/run)"


def test_build_key_follows_source_torch_version_and_flags(monkeypatch, tmp_path):
    key = cpu.build_key()
    edited = tmp_path / "ternary_cpu.cpp"
    edited.write_bytes(cpu.SOURCE.read_bytes() + b"\n// edited\n")
    monkeypatch.setattr(cpu, "SOURCE", edited)
    assert cpu.build_key() != key
    monkeypatch.setattr(cpu, "SOURCE", ROOT / "torch_ternary" / "kernels" / "cpu" / "ternary_cpu.cpp")
    assert cpu.build_key() == key
    header = tmp_path / "amx_tiles.h"  # an included header is part of the sources
    header.write_bytes(cpu.AMX_HEADER.read_bytes() + b"\n// edited\n")
    monkeypatch.setattr(cpu, "AMX_HEADER", header)
    assert cpu.build_key() != key
    monkeypatch.undo()
    monkeypatch.setattr(torch, "__version__", "0.0.0")
    assert cpu.build_key() != key
    monkeypatch.undo()
    monkeypatch.setattr(cpu, "CFLAGS", cpu.CFLAGS + ("-march=native",))
    assert cpu.build_key() != key
    monkeypatch.undo()
    assert cpu.cache_dir() == Path(os.environ.get(cpu.ENV_CACHE) or Path.home() / ".cache" / "torch_ternary") / "cpu_kernels"


def _fresh_build_state(monkeypatch, tmp_path):
    """Forget this process's build (restored by monkeypatch) and build into an empty cache."""
    monkeypatch.setattr(cpu, "_module", None)
    monkeypatch.setattr(cpu, "_failure", None)
    monkeypatch.setenv(cpu.ENV_CACHE, str(tmp_path / "cache"))


def test_no_compiler_falls_back_to_the_reference_with_one_warning(monkeypatch, tmp_path):
    _fresh_build_state(monkeypatch, tmp_path)
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv(cpu.ENV_MODE, "auto")
    packed, scale, gs, _, _ = make_weight(16, 64)
    x = torch.randn(3, 64)
    with pytest.warns(RuntimeWarning, match="CPU kernels unavailable, using the plain-torch reference") as record:
        y = cpu.linear_cpu(x, packed, scale, None, 64, gs)
    assert len([w for w in record if issubclass(w.category, RuntimeWarning)]) == 1
    assert torch.equal(y, backends.reference("linear")(x, packed, scale, None, 64, gs))
    assert cpu.failure() is not None and cpu.available_isas() == ()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: later calls are silent
        cpu.linear_cpu(x, packed, scale, None, 64, gs)
        cpu.dequantize_cpu(packed, scale, 64, gs, torch.float32)


def test_require_turns_a_failed_build_into_an_error(monkeypatch, tmp_path):
    _fresh_build_state(monkeypatch, tmp_path)
    broken = tmp_path / "ternary_cpu.cpp"
    broken.write_text("#error deliberately broken\n")
    monkeypatch.setattr(cpu, "SOURCE", broken)
    monkeypatch.setenv(cpu.ENV_MODE, "require")
    packed, scale, gs, _, _ = make_weight(16, 64)
    with pytest.raises(KernelLoadError, match="require"):
        cpu.linear_cpu(torch.randn(3, 64), packed, scale, None, 64, gs)


def test_bad_mode_is_an_error(monkeypatch):
    monkeypatch.setenv(cpu.ENV_MODE, "sometimes")
    with pytest.raises(ValueError, match=cpu.ENV_MODE):
        cpu.install()


def test_off_keeps_the_reference_in_a_fresh_process():
    code = ("import torch, torch_ternary\n"
            "from torch_ternary.ops import backends\n"
            "from torch_ternary.format import packing\n"
            "p = packing.pack_codes(torch.zeros(4, 16, dtype=torch.int8))\n"
            "torch.ops.torch_ternary.linear(torch.ones(1, 16), p, torch.ones(4, 1), None, 16, 16)\n"
            "from torch_ternary.kernels import cpu\n"
            "assert cpu._module is None and cpu.STATS == {}, cpu.STATS\n"
            "assert backends.get_impl('linear', 'cpu') is backends.reference('linear')\n")
    env = dict(os.environ, **{cpu.ENV_MODE: "off"})
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr


def _built_stamps() -> list[tuple[Path, int]]:
    """The cached build's shared objects with their modification times (the build made or loaded first)."""
    if not _has_compiler() and cpu._mode() != "require":
        pytest.skip("no C++ compiler on this machine")
    assert cpu.load() is not None
    built = sorted((cpu.cache_dir() / cpu.build_key()).glob("*.so"))
    assert built, "no shared object in the cache folder"
    return [(p, p.stat().st_mtime_ns) for p in built]


def _load_in_a_subprocess(code: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_a_second_process_loads_the_cached_build_without_compiling():
    stamps = _built_stamps()
    proc = _load_in_a_subprocess("import time, torch_ternary\n"
                                 "from torch_ternary.kernels import cpu\n"
                                 "t = time.perf_counter(); m = cpu.load(); dt = time.perf_counter() - t\n"
                                 "assert m is not None\n"
                                 "print(dt)\n")
    assert all(p.stat().st_mtime_ns == t for p, t in stamps), "the cached build was rebuilt"
    assert float(proc.stdout.split()[-1]) < 10.0  # a load, not a ~35 s compile


def test_another_checkout_of_the_same_sources_loads_the_cached_build(tmp_path):
    """Two checkouts (or an install and a checkout) of the same sources share one cache: the build reads copies
    staged in the cache folder, so a process whose sources lie elsewhere loads the cached build instead of
    rebuilding it under the other's feet (ninja rebuilds when a source's path changes)."""
    stamps = _built_stamps()
    staged = cpu.cache_dir() / cpu.build_key() / "src"
    assert all((staged / p.name).read_bytes() == p.read_bytes() for p in cpu._sources() + [cpu.AMX_HEADER])
    other = tmp_path / "other_checkout"
    other.mkdir()
    for p in cpu._sources() + [cpu.AMX_HEADER]:
        shutil.copy(p, other / p.name)
    _load_in_a_subprocess("from pathlib import Path\n"
                          "from torch_ternary.kernels import cpu\n"
                          f"d = Path({str(other)!r})\n"
                          "for name in ('SOURCE', 'STE_SOURCE', 'AMX_BF16_SOURCE', 'AMX_HEADER'):\n"
                          "    setattr(cpu, name, d / getattr(cpu, name).name)\n"
                          "assert all(str(p).startswith(str(d)) for p in cpu._sources())\n"
                          "assert cpu.load() is not None\n")
    assert all(p.stat().st_mtime_ns == t for p, t in stamps), "the other checkout rebuilt the cached build"
