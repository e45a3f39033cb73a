"""Load the CUDA sources, compile them with NVRTC through CuPy, launch them on torch's stream.

* Sources: ``cuda/*.cu`` at the top of the repository, shipped inside the wheel as the package data
  ``torch_ternary.kernels.cuda_src`` (pyproject's ``package-dir`` maps it to ``cuda/``; no symlink) and
  read with :mod:`importlib.resources`; an editable install reads the checkout's ``cuda/``. ``#include "x.cuh"`` lines of our own headers are
  inlined here, so NVRTC needs no include path and CuPy's compile cache (keyed by the source
  text, the options and the architecture) sees every byte that is compiled.
* Compilation: ``cupy.RawModule(code=..., options=NVRTC_OPTIONS)``, once per (file, device) in
  this process; CuPy caches the binary on disk per architecture (``~/.cupy/kernel_cache``).
  ``tests/kernels/test_compile.py`` compiles the very same text with ``nvcc -cubin`` for sm_80
  and sm_90 with the same options.
* Launch: on ``torch.cuda.current_stream()`` (wrapped as a CuPy external stream), with raw
  ``tensor.data_ptr()`` arguments: no copies, no CuPy arrays.

Nothing here imports CuPy at module import time.
"""

from __future__ import annotations

import functools
import importlib.resources
import re
import threading
import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import TernaryError

#: Package holding the .cu / .cuh files in an installed wheel (the repository's top-level cuda/ folder).
SOURCE_PACKAGE = "torch_ternary.kernels.cuda_src"
#: Every kernel family, one source file each.
SOURCE_FILES = ("decode.cu", "gemv.cu", "gemm.cu")
#: Options given to NVRTC. The nvcc compile test uses the same, plus CUPY_IMPLICIT_OPTIONS.
NVRTC_OPTIONS = ("--std=c++17", "-DTORCH_TERNARY_KERNELS=1")
#: What CuPy's RawModule adds on its own and nvcc also understands (CuPy further adds the device's
#: -arch, --device-as-default-execution-space, its include folders, and --pch on NVRTC 12.8+).
CUPY_IMPLICIT_OPTIONS = ("-ftz=true",)
#: Lowest compute capability the kernels are written for (bf16x2 fma, mma.sync m16n8k16, cp.async).
MIN_CAPABILITY = (8, 0)



class KernelLoadError(TernaryError, RuntimeError):
    """CuPy could not be imported, or NVRTC could not compile / load a kernel (not a launch error)."""


_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$', re.MULTILINE)
_lock = threading.Lock()


def source_dir():
    """Folder of the CUDA sources (a :class:`~importlib.resources.abc.Traversable`).

    The installed package data ``torch_ternary.kernels.cuda_src`` when importable, else the
    checkout's top-level ``cuda/`` folder.
    """
    try:
        root = importlib.resources.files(SOURCE_PACKAGE)
        if root.joinpath(SOURCE_FILES[0]).is_file():
            return root
    except (ModuleNotFoundError, TypeError):  # not installed with its package data
        pass
    fallback = Path(__file__).resolve().parents[2] / "cuda"
    if (fallback / SOURCE_FILES[0]).is_file():
        return fallback
    raise FileNotFoundError(
        f"torch-ternary CUDA sources not found (package {SOURCE_PACKAGE} or {fallback}); reinstall the package"
    )


def read_source(name: str, folder=None) -> str:
    """Text of ``cuda/<name>`` with our own ``#include "x.cuh"`` lines inlined (each header once).

    Args:
        name: a file of :data:`SOURCE_FILES` (or any file in the source folder).
        folder: read from this folder (a path or Traversable) instead of :func:`source_dir`; the
            CPU tests use it to run their kernel models on edited copies of the sources.

    Returns:
        Self-contained CUDA C++ source; only ``<cuda_bf16.h>`` / ``<cuda_fp16.h>`` remain as includes.
    """
    folder = source_dir() if folder is None else (Path(folder) if isinstance(folder, (str, Path)) else folder)
    seen: set[str] = set()

    def expand(fname: str) -> str:
        text = folder.joinpath(fname).read_text()

        def sub(match: re.Match) -> str:
            inc = match.group(1)
            if inc in seen:
                return f"// (already included: {inc})"
            seen.add(inc)
            body = expand(inc).replace("#pragma once", "")
            return f"// ---- begin {inc}\n{body}\n// ---- end {inc}"

        return _INCLUDE.sub(sub, text)

    return expand(name)


def toolkit_include_dirs() -> list[str]:
    """Folders holding ``cuda_bf16.h`` that NVRTC can be pointed at.

    NVRTC 13 ships no ``cuda_bf16.h`` / ``cuda_fp16.h`` of its own: CuPy normally adds the CUDA
    include folder it finds; when it does not, the loader retries with these: ``$CUDA_PATH``,
    ``$CUDA_HOME``, ``/usr/local/cuda`` and the NVIDIA pip wheels (``nvidia/cu13/include``,
    ``nvidia/cuda_runtime/include``) on ``sys.path``.
    """
    import glob
    import os
    import sys

    candidates = [os.path.join(r, "include") for r in (os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME"),
                                                       "/usr/local/cuda") if r]
    for entry in sys.path:
        for pattern in ("nvidia/cu*/include", "nvidia/cuda_runtime/include"):
            candidates += sorted(glob.glob(os.path.join(entry, pattern)))
    found: list[str] = []
    for inc in candidates:
        if (Path(inc) / "cuda_bf16.h").is_file() and inc not in found:
            found.append(inc)
    return found


@functools.lru_cache(maxsize=None)
def _module(name: str, device_index: int):
    import cupy

    code = read_source(name)
    with cupy.cuda.Device(device_index):
        try:
            module = cupy.RawModule(code=code, options=NVRTC_OPTIONS)
            module.compile()
        except Exception as exc:  # NVRTC without its bundled cuda_bf16.h: point it at a toolkit
            includes = toolkit_include_dirs()
            if "cuda_bf16.h" not in str(exc) and "cuda_fp16.h" not in str(exc) or not includes:
                raise
            module = cupy.RawModule(code=code, options=NVRTC_OPTIONS + tuple(f"-I{d}" for d in includes))
            module.compile()
    return module


def get_kernel(name: str, entry: str, device: torch.device, max_dynamic_smem: int = 0):
    """The compiled ``extern "C"`` kernel ``entry`` of ``cuda/<name>`` for ``device`` (cached).

    Args:
        name: source file, e.g. ``"gemv.cu"``.
        entry: kernel name, e.g. ``"tt_skinny_bf16_r1_n1_v4"``.
        device: a CUDA device.
        max_dynamic_smem: dynamic shared memory the launches need; above 48 KiB the kernel's
            limit is raised once.
    """
    index = device.index if device.index is not None else torch.cuda.current_device()
    try:
        return _kernel(name, entry, index, max_dynamic_smem)
    except Exception as exc:  # ImportError, NVRTC CompileException, missing libnvrtc, CUDA driver errors
        raise KernelLoadError(f"cannot load kernel {entry} of {name}: {type(exc).__name__}: {exc}") from exc


@functools.lru_cache(maxsize=None)
def _kernel(name: str, entry: str, device_index: int, max_dynamic_smem: int):
    import cupy

    with _lock:
        module = _module(name, device_index)
        with cupy.cuda.Device(device_index):
            kernel = module.get_function(entry)
            if max_dynamic_smem > 48 * 1024:
                kernel.max_dynamic_shared_size_bytes = max_dynamic_smem
    return kernel


_streams: dict[tuple[int, int], object] = {}


def _cupy_stream(device_index: int):
    import cupy

    ptr = torch.cuda.current_stream(device_index).cuda_stream
    key = (ptr, device_index)
    stream = _streams.get(key)
    if stream is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # CuPy 14 prefers Stream.from_external
            if hasattr(cupy.cuda, "ExternalStream"):
                stream = cupy.cuda.ExternalStream(ptr, device_index)
            else:  # pragma: no cover - future CuPy
                stream = cupy.cuda.Stream.from_external(torch.cuda.current_stream(device_index))
        _streams[key] = stream
    return stream


def launch(kernel, grid: tuple[int, int, int], block: tuple[int, int, int], args: tuple, device: torch.device,
           shared_mem: int = 0) -> None:
    """Launch ``kernel`` on torch's current stream of ``device``.

    Args:
        kernel: from :func:`get_kernel`.
        grid, block: launch shape.
        args: kernel arguments already converted with :func:`ptr`, :func:`i32`, :func:`u32`.
        device: CUDA device of the tensors.
        shared_mem: dynamic shared memory in bytes.
    """
    import cupy

    index = device.index if device.index is not None else torch.cuda.current_device()
    with cupy.cuda.Device(index), _cupy_stream(index):
        kernel(grid, block, args, shared_mem=shared_mem)


def ptr(t: torch.Tensor | None) -> np.uint64:
    """Kernel argument for a tensor's device pointer (0 for None)."""
    return np.uint64(0 if t is None else t.data_ptr())


def i32(v: int) -> np.int32:
    """Kernel argument for a C ``int``."""
    return np.int32(v)


def u32(v: int) -> np.uint32:
    """Kernel argument for a C ``unsigned int``."""
    return np.uint32(v)
