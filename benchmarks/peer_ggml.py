"""Peer benchmark: llama.cpp/ggml's ternary CPU matmul (``GGML_TYPE_TQ2_0``) on our shapes.

Builds ggml's CPU library from a llama.cpp source tree on this machine (nothing of llama.cpp is
committed: only our harness ``benchmarks/peers/ggml_tq2_0.c`` and this driver), compiles the
harness against it, and runs it. The harness times ``ggml_mul_mat`` of a K x N TQ2_0 weight
with an F32 [K, M] activation (ggml quantizes the activation to Q8_K inside the op) over
``layers`` distinct weights, and prints one JSON line; see the header of the C file.

    from peer_ggml import find_source, build, run
    src = find_source()
    binary = build(src, Path("/tmp/peer/build"), Path("/tmp/peer/build/build.log")) if src else None
    if binary:
        print(run(binary, 3072, 3072, 1, layers=16, repeats=5, threads=2))

    python benchmarks/peer_ggml.py 3072 3072 1 --layers 16 --repeats 5 --threads 2

Source lookup: ``$TORCH_TERNARY_PEER_SRC``, then ``/tmp/peer/llama.cpp``, then extraction from a
``/work/.mirror/*llama.cpp*/`` bare git directory (``git archive``, the ``models/`` directory,
whose large files may be absent from a mirror, left out). The commit is recorded in
``<tree>/.peer_commit`` and baked into the binary (``ggml_commit`` in the JSON).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

HARNESS = Path(__file__).resolve().parent / "peers" / "ggml_tq2_0.c"
DEFAULT_SRC = Path("/tmp/peer/llama.cpp")
DEFAULT_OUT = Path("/tmp/peer/build")
COMMIT_FILE = ".peer_commit"
#: ggml CPU-only configuration: Release, native ISA, no GPU/BLAS backends, ggml's own tests and
#: examples off. OpenMP and llamafile's sgemm stay at llama.cpp's defaults (ON), as a llama.cpp
#: user gets them (sgemm has no TQ2_0 kernel, so it falls through to ggml's vec_dot path).
CMAKE_OPTIONS = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=ON",
    "-DGGML_CUDA=OFF",
    "-DGGML_METAL=OFF",
    "-DGGML_VULKAN=OFF",
    "-DGGML_BLAS=OFF",
    "-DGGML_OPENMP=ON",
    "-DGGML_LLAMAFILE=ON",
    "-DGGML_BUILD_TESTS=OFF",
    "-DGGML_BUILD_EXAMPLES=OFF",
    "-DBUILD_SHARED_LIBS=ON",
]
TARGETS = ["ggml", "ggml-cpu", "ggml-base"]
LLAMA_OFF = [
    "-DLLAMA_BUILD_COMMON=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_CURL=OFF",
]


def _git(git_dir: Path, *args: str) -> str:
    return subprocess.run(
        ["git", f"--git-dir={git_dir}", *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def extract(git_dir: Path, dest: Path) -> Path:
    """Extract ``HEAD`` of the bare git directory ``git_dir`` into ``dest`` (without ``models/``)
    and record the commit in ``dest/.peer_commit``. Returns ``dest``; raises on failure."""
    commit = _git(git_dir, "rev-parse", "HEAD")
    dest.mkdir(parents=True, exist_ok=True)
    # A mirror may lack the large models/*.gguf blobs; git then prints "invalid object" for them even
    # though they are excluded (exit status 0, archive complete), hence stderr is dropped.
    archive = subprocess.Popen(
        ["git", f"--git-dir={git_dir}", "archive", "HEAD", "--", ".", ":(exclude)models"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    tar = subprocess.run(["tar", "-x", "-C", str(dest)], check=False, stdin=archive.stdout)
    archive.stdout.close()
    if archive.wait() != 0 or tar.returncode != 0:
        raise RuntimeError(f"git archive of {git_dir} into {dest} failed")
    (dest / COMMIT_FILE).write_text(commit + "\n")
    return dest


def _is_tree(path: Path) -> bool:
    return (path / "ggml" / "CMakeLists.txt").is_file() and (path / "ggml" / "include" / "ggml.h").is_file()


def find_source() -> Path | None:
    """A llama.cpp source tree: ``$TORCH_TERNARY_PEER_SRC``, else ``/tmp/peer/llama.cpp``, else one
    extracted (to ``/tmp/peer/llama.cpp``) from a ``/work/.mirror/*llama.cpp*/`` git directory.
    ``None`` when there is none."""
    env = os.environ.get("TORCH_TERNARY_PEER_SRC")
    for candidate in ([Path(env)] if env else []) + [DEFAULT_SRC]:
        if _is_tree(candidate):
            return candidate
    for mirror in sorted(glob.glob("/work/.mirror/*llama.cpp*/")):
        for git_dir in (Path(mirror) / "repo", Path(mirror)):
            if (git_dir / "HEAD").is_file() and (git_dir / "objects").is_dir():
                try:
                    tree = extract(git_dir, DEFAULT_SRC)
                except (OSError, RuntimeError, subprocess.CalledProcessError):
                    continue
                if _is_tree(tree):
                    return tree
    return None


def source_commit(src: Path) -> str:
    """The llama.cpp commit of ``src``: ``.peer_commit``, else ``git rev-parse``, else ``unknown``."""
    marker = src / COMMIT_FILE
    if marker.is_file():
        return marker.read_text().strip()
    try:
        return subprocess.run(
            ["git", "-C", str(src), "rev-parse", "HEAD"], check=True, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _step(cmd: list[str], log: IO[str], cwd: Path | None = None) -> bool:
    """Run ``cmd``, appending the command line, its output and its duration to ``log``."""
    log.write(f"$ {shlex.join(cmd)}\n")
    log.flush()
    t0 = time.monotonic()
    rc = subprocess.run(cmd, check=False, stdout=log, stderr=subprocess.STDOUT, cwd=cwd).returncode
    log.write(f"# rc={rc} in {time.monotonic() - t0:.1f} s\n")
    log.flush()
    return rc == 0


def _cmake_source(src: Path) -> list[str]:
    """``-S`` arguments: ggml's own CMakeLists when it can configure standalone; otherwise (llama.cpp
    trees whose ``ggml/`` lacks ``ggml.pc.in``, which ggml's standalone configure requires) the
    top-level llama.cpp one with llama's tests, examples, server and curl off. Either way only the
    ggml targets are built."""
    if (src / "ggml" / "ggml.pc.in").is_file() or not (src / "CMakeLists.txt").is_file():
        return ["-S", str(src / "ggml")]
    return ["-S", str(src), *LLAMA_OFF]


def build(src: Path, out_dir: Path, log: Path, jobs: int = 2) -> Path | None:
    """Configure and build ggml's CPU libraries (targets ggml, ggml-cpu, ggml-base only) from the
    llama.cpp tree ``src`` into ``out_dir/build`` (see ``_cmake_source`` for which CMakeLists), then
    compile the harness against them into ``out_dir/ggml_tq2_0`` (rpath set). Incremental when
    ``out_dir`` was built before. The full log goes to ``log``. Returns the harness binary, or ``None`` on any failure (log kept)."""
    src, out_dir = Path(src).resolve(), Path(out_dir).resolve()
    build_dir = out_dir / "build"
    binary = out_dir / "ggml_tq2_0"
    out_dir.mkdir(parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        try:
            commit = source_commit(src)
            f.write(f"# llama.cpp source {src} at commit {commit}\n")
            if not _step(["cmake", *_cmake_source(src), "-B", str(build_dir), *CMAKE_OPTIONS], f):
                return None
            if not _step(["cmake", "--build", str(build_dir), "--target", *TARGETS, f"-j{jobs}"], f):
                return None
            libs = sorted(
                {str(Path(p).parent) for p in glob.glob(str(build_dir / "**" / "libggml*.so"), recursive=True)}
            )
            if not libs:
                f.write("# no libggml*.so found under the build directory\n")
                return None
            cmd = [
                "gcc",
                "-O2",
                "-std=c11",
                "-Wall",
                f'-DGGML_COMMIT="{commit}"',
                "-I",
                str(src / "ggml" / "include"),
                str(HARNESS),
                "-o",
                str(binary),
            ]
            for d in libs:
                cmd += ["-L", d, f"-Wl,-rpath,{d}"]
            cmd += ["-lggml", "-lggml-cpu", "-lggml-base", "-lm"]
            if not _step(cmd, f):
                return None
        except OSError as e:
            f.write(f"# error: {e}\n")
            return None
    return binary if binary.is_file() else None


def run(
    binary: Path, k: int, n: int, m: int, layers: int, repeats: int, threads: int, timeout: float | None = None
) -> dict:
    """Run the harness once and return its JSON line as a dict (keys: K, N, M, layers, repeats,
    threads, median_ms_per_call, min_ms_per_call, rel_err, weight_type, act_type, ggml_commit),
    plus ``host_loadavg_1m`` read just before the run: ggml's threads meet at a barrier after every
    op, so with ``threads`` = all cores, one core taken by another process stretches each call by
    a scheduler time slice (milliseconds). Raises ``RuntimeError`` when it fails or prints no JSON."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    proc = subprocess.run(
        [str(binary), str(k), str(n), str(m), str(layers), str(repeats), str(threads)],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{binary} failed (rc={proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return {**json.loads(lines[-1]), "host_loadavg_1m": load}


def main(argv: list[str] | None = None) -> int:
    """CLI: find the source, build (incrementally) and run one shape, printing the JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("k", type=int)
    p.add_argument("n", type=int)
    p.add_argument("m", type=int)
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    a = p.parse_args(argv)
    src = find_source()
    if src is None:
        print("no llama.cpp source found", file=sys.stderr)
        return 1
    log = a.out_dir / "build.log"
    binary = build(src, a.out_dir, log)
    if binary is None:
        print(f"build failed; see {log}", file=sys.stderr)
        return 1
    print(json.dumps(run(binary, a.k, a.n, a.m, a.layers, a.repeats, a.threads)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
