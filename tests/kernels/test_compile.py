"""Every cuda/*.cu compiles for sm_80 and sm_90, with the options the runtime NVRTC path uses.

The text compiled is ``loader.read_source(name)`` (our headers inlined), exactly what CuPy hands
to NVRTC, with ``loader.NVRTC_OPTIONS`` and the options CuPy adds itself
(``loader.CUPY_IMPLICIT_OPTIONS``; NVRTC also gets ``--device-as-default-execution-space``, which
nvcc lacks). With nvcc (``-cubin -arch=sm_XX``) warnings are errors, every entry point the Python
wrappers launch must exist, and no kernel may spill registers. Without nvcc the test compiles with
NVRTC through CuPy's bindings; without either it is skipped, except under ``CI=true`` where it
fails (a broken kernel must not land).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from torch_ternary.kernels import a8, loader

ARCHS = ("sm_80", "sm_90")
#: Every CUDA source: the 16-bit kernels (loader) and the W1.58A8 ones (kernels/a8.py).
SOURCES = loader.SOURCE_FILES + a8.SOURCE_FILES

#: The extern "C" kernels each source must define (what decode.py / gemv.py / gemm.py launch).
EXPECTED_ENTRIES = {
    "decode.cu": {"tt_unpack_i8", "tt_dequant_bf16", "tt_dequant_f16", "tt_dequant_f32"},
    "gemv.cu": {
        f"tt_skinny_{t}_r{r}_n{n}_v{v}" for t in ("bf16", "f16") for r in (1, 2) for n in (1, 2) for v in (1, 4)
    },
    "gemm.cu": {"tt_gemm_bf16", "tt_gemm_f16"},
    "act_quant.cu": {f"tt_act_quant_{t}_{f}" for t in ("bf16", "f16", "f32") for f in ("i8", "e4m3")},
    "a8_weights.cu": {"tt_a8_weight_i8", "tt_a8_weight_e4m3"},
    "a8_epilogue.cu": {f"tt_a8_epilogue_{a}_{t}" for a in ("i32", "f32") for t in ("bf16", "f16", "f32")},
}


def find_nvcc() -> str | None:
    for cand in (shutil.which("nvcc"), os.environ.get("CUDA_HOME") and f"{os.environ['CUDA_HOME']}/bin/nvcc",
                 "/usr/local/cuda/bin/nvcc", "/usr/local/bin/nvcc"):
        if cand and Path(cand).is_file():
            return cand
    return None


def nvrtc_compile(source: str, name: str, arch: str) -> None:
    """Compile with NVRTC as CuPy's RawModule would (its implicit options included); raise on failure."""
    from cupy_backends.cuda.libs import nvrtc

    options = [*loader.NVRTC_OPTIONS, *loader.CUPY_IMPLICIT_OPTIONS, f"-arch={arch}",
               "--device-as-default-execution-space", *(f"-I{d}" for d in loader.toolkit_include_dirs())]
    prog = nvrtc.createProgram(source, name, (), ())
    try:
        nvrtc.compileProgram(prog, options)
        assert nvrtc.getCUBIN(prog)
    except nvrtc.NVRTCError as exc:
        raise AssertionError(f"NVRTC failed for {name} ({arch}):\n{nvrtc.getProgramLog(prog)}") from exc
    finally:
        nvrtc.destroyProgram(prog)


def nvrtc_available() -> bool:
    try:
        from cupy_backends.cuda.libs import nvrtc

        nvrtc.getVersion()
        return True
    except Exception:  # CuPy missing, or libnvrtc not found
        return False


def _unavailable():
    msg = "neither nvcc nor NVRTC is available to compile the CUDA kernels"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(msg + " (CI=true: the compile check is mandatory)")
    pytest.skip(msg)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", SOURCES)
def test_kernel_source_compiles(name, arch, tmp_path):
    source = loader.read_source(name)
    nvcc = find_nvcc()
    if nvcc is None:
        if not nvrtc_available():
            _unavailable()
        nvrtc_compile(source, name, arch)
        return
    src = tmp_path / name
    src.write_text(source)
    cmd = [nvcc, "-cubin", f"-arch={arch}", *loader.NVRTC_OPTIONS, *loader.CUPY_IMPLICIT_OPTIONS,
           "-Werror", "all-warnings", "-Xptxas", "-v",
           "-o", str(tmp_path / f"{name}.{arch}.cubin"), str(src)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{log}"
    entries = re.findall(r"Compiling entry function '(\w+)' for '" + arch + "'", log)
    differ = sorted(set(entries) ^ EXPECTED_ENTRIES[name])
    assert not differ, f"entry points differ: {differ}"
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    assert len(spills) == len(entries) and all(s == ("0", "0") for s in spills), f"register spills:\n{log}"


def test_sources_are_nvrtc_clean():
    """Only cuda_bf16.h / cuda_fp16.h are included (NVRTC has no host headers); entry points are extern "C"."""
    for name in SOURCES:
        text = loader.read_source(name)
        includes = set(re.findall(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]', text, re.M))
        assert includes <= {"cuda_bf16.h", "cuda_fp16.h"}, (name, includes)
        assert 'extern "C" __global__' in text, name
