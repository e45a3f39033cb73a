"""The default ``benchmarks/run_gpu.sh`` fits one 8-minute device call: counted here, on CPU.

A lent GPU comes for 15 minutes in all (start-up included) and at most 10 minutes a command, so the
default run must finish in 8 minutes (one call, room for a rerun) and leave at most 8 files. What
can be counted without a GPU is counted from the real commands (``PLAN=1 bash benchmarks/run_gpu.sh``
prints them): the pytest items each command collects (``pytest --collect-only``), hypothesis examples
(the profile the script sets), ``torch.compile`` calls in the selected tests, NVRTC sources, the
kernel benchmark's rows / kernel calls / FLOPs (``benchmarks/cuda_kernels.py --plan``) and the FLUX
benchmark's builds / forwards / compilations (``benchmarks/flux.py --plan``). Those counts are
multiplied by the per-item times of :data:`ESTIMATES`.

THE ESTIMATES ARE NOT MEASUREMENTS: no GPU has run this script yet. They are guesses for one
H100 / H200 (pessimistic where a path is unmeasured, e.g. the fused GEMM at 30 TFLOP/s). What this
test proves is the arithmetic: the default plan's counts times these estimates stay under the
budget, every step's estimate stays under its cap, and the outputs fit the device's 8 files. The
GPU timing itself is unverified until a GPU runs the script; its step times land in ``env.txt``
and should replace the estimates below.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import re
import shlex
import subprocess
import sys
from importlib import import_module
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "run_gpu.sh"
#: Seconds the device tool allows one command; the run must end well before.
COMMAND_LIMIT_S = 600
#: Files the device tool brings back.
MAX_OUTPUT_FILES = 8

#: Per-item time ESTIMATES in seconds for one H100 / H200 (unverified until a GPU runs run_gpu.sh).
ESTIMATES = {
    "setup": 20.0,               # carried wheels installed, nvidia-smi, the environment probe
    "pytest_process": 15.0,      # one pytest process: interpreter, torch, CUDA context, collection
    "compile_item": 3.0,         # test_compile.py: one nvcc -cubin (or NVRTC) of one file for one arch
    "nvrtc_cold": 5.0,           # first NVRTC compile of one .cu on a fresh machine (then CuPy's disk cache)
    "nvrtc_cached": 1.0,         # loading one .cu from CuPy's disk cache in a later process
    "gpu_item": 0.5,             # one non-hypothesis GPU test item at small shapes
    "gpu_item_flux_size": 2.0,   # an item at FLUX sizes (3072 / 12288 / 15360 / 18432, M = 4608): quantization, references
    "hypothesis_example": 0.05,  # one hypothesis example (a few kernel launches and a reference)
    "torch_compile_first": 25.0,  # the first torch.compile of the process (inductor import, triton warm-up)
    "torch_compile_next": 6.0,   # every further small graph (one custom-op call)
    "memcheck_process": 30.0,    # compute-sanitizer start-up and CUDA initialization under it
    "memcheck_item": 15.0,       # one memcheck test (kernels run 10-100x slower under the sanitizer)
    "bench_process": 15.0,       # benchmarks/cuda_kernels.py: imports, kernels from the disk cache
    "bench_shape_setup": 8.0,    # per (K, N): CPU quantization, weight copies for cold L2
    "host_launch_us": 30.0,      # per eager launch from Python (CuPy launch path)
    "graph_capture_s": 0.05,     # per CUDA graph capture
    "flux_process": 20.0,        # benchmarks/flux.py: imports (diffusers), inputs
    "flux_build": 15.0,          # per variant: FLUX.1-dev built on meta, materialized and converted block by block
    "flux_forward_eager": 1.0,   # one eager 1024² transformer step (74 TFLOP; ~0.1-0.4 s expected), any variant
    "flux_forward_compiled": 0.5,
    "flux_compile_graph": 60.0,  # per regional compilation graph (two block classes a variant)
}
#: GEMM throughput ESTIMATES (TFLOP/s) per benchmark path; bytes-bound rows use ``BYTES_PER_S``.
TFLOPS = {"cublas_bf16": 300.0, "decode_cublas": 150.0, "dispatched": 150.0, "fused_mma": 30.0, "skinny": 30.0}
BYTES_PER_S = 1.0e12  # weight streaming of the memory-bound paths (cold L2), pessimistic


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable, HF_HUB_OFFLINE="1", **kw.pop("env", {}))
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=600, check=False, **kw)


def script_plan(**env) -> list[dict]:
    """The steps of ``PLAN=1 bash benchmarks/run_gpu.sh`` (name, cap, log file, argv)."""
    proc = _run(["bash", str(SCRIPT)], env={"PLAN": "1", **env})
    assert proc.returncode == 0, proc.stderr
    steps = []
    for line in proc.stdout.splitlines():
        if line.startswith("PLAN\t"):
            _, name, cap, log, cmd = line.split("\t", 4)
            steps.append({"name": name, "cap": int(cap), "log": log, "argv": shlex.split(cmd)})
    return steps


def _script_default(var: str) -> str:
    m = re.search(rf'^(?:export )?{var}="\$\{{{var}:-([^}}]*)\}}"', SCRIPT.read_text(), re.M)
    assert m, f"{var} has no default in run_gpu.sh"
    return m.group(1)


def pytest_args(argv: list[str]) -> list[str]:
    """The arguments after ``-m pytest`` (for a collection), minus report-only options."""
    i = argv.index("pytest")
    out, skip = [], False
    for a in argv[i + 1:]:
        if skip:
            skip = False
            continue
        if a in ("-q", "-rs") or a.startswith("--durations"):
            continue
        out.append(a)
    return out


@functools.lru_cache(maxsize=None)
def _collect(args: tuple[str, ...]) -> tuple[str, ...]:
    proc = _run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args])
    return tuple(ln for ln in proc.stdout.splitlines() if "::" in ln) or (proc.stdout[-2000:] + proc.stderr[-2000:],)


def collect(args: list[str]) -> list[str]:
    """Node ids ``pytest --collect-only`` finds for ``args`` (cached)."""
    ids = list(_collect(tuple(args)))
    assert "::" in ids[0], ids[0]
    return ids


def _function(node_id: str):
    path, rest = node_id.split("::", 1)
    mod = import_module(path[:-3].replace("/", "."))
    return getattr(mod, rest.split("[", 1)[0])


_FLUX_SIZE = re.compile(r"\b(3072|12288|15360|18432|4608)\b")


def pytest_estimate(ids: list[str], profile_examples: int, cold_sources: int, cached_sources: int) -> dict:
    """Seconds and counts of one pytest process over ``ids``."""
    hyp = plain = big = compiles = 0
    for nid in ids:
        fn = _function(nid)
        src = inspect.getsource(fn)
        assert "@settings(" not in src, f"{nid} sets its own hypothesis settings: count its examples here"
        compiles += src.count("torch.compile(")
        if getattr(fn, "is_hypothesis_test", False):
            hyp += 1
        elif _FLUX_SIZE.search(nid.split("[", 1)[-1]) or "flux_shapes" in nid:
            big += 1
        else:
            plain += 1
    e = ESTIMATES
    seconds = (e["pytest_process"] + cold_sources * e["nvrtc_cold"] + cached_sources * e["nvrtc_cached"]
               + hyp * profile_examples * e["hypothesis_example"] + plain * e["gpu_item"]
               + big * e["gpu_item_flux_size"]
               + (e["torch_compile_first"] + (compiles - 1) * e["torch_compile_next"] if compiles else 0.0))
    return {"items": len(ids), "hypothesis_tests": hyp, "examples": hyp * profile_examples, "plain_items": plain,
            "flux_size_items": big, "torch_compile": compiles, "seconds": seconds}


def bench_estimate(plan: dict) -> dict:
    e = ESTIMATES
    gpu = 0.0
    for r in plan["rows"]:
        flop = 2.0 * r["M"] * r["N"] * r["K"]
        weight_bytes = r["N"] * r["K"] * (2 if r["path"] == "cublas_bf16" else 0.25)
        t = weight_bytes / BYTES_PER_S
        if r["path"] != "decode_only":
            t = max(t, flop / (TFLOPS[r["path"]] * 1e12))
        else:
            t = r["N"] * r["K"] * 2.25 / BYTES_PER_S  # read codes, write bf16
        gpu += r["gpu_calls"] * t
    host = sum(r["host_launches"] for r in plan["rows"]) * e["host_launch_us"] * 1e-6
    seconds = (e["bench_process"] + len(plan["nvrtc_sources"]) * e["nvrtc_cached"]
               + len(plan["shapes"]) * e["bench_shape_setup"] + gpu + host + plan["timed_rows"] * e["graph_capture_s"])
    return {"rows": plan["timed_rows"], "kernel_calls": plan["kernel_calls"], "gpu_s": gpu, "host_s": host,
            "seconds": seconds}


def flux_estimate(plan: dict) -> dict:
    e = ESTIMATES
    forwards = plan["forwards_per_variant_mode"]
    per_variant = sum(n * (e["flux_forward_compiled"] if m == "compiled" else e["flux_forward_eager"])
                      for m, n in forwards.items())
    seconds = (e["flux_process"] + plan["builds"] * (e["flux_build"] + per_variant)
               + plan["torch_compile_compilations"] * e["flux_compile_graph"])
    return {"builds": plan["builds"], "forwards": plan["forwards"], "timed_steps": plan["timed_steps"],
            "compilations": plan["torch_compile_compilations"], "seconds": seconds}


def estimate(steps: list[dict]) -> tuple[dict, list[str]]:
    """Per-step estimates (seconds and counts) and the output files of a plan."""
    from hypothesis import settings

    import tests.conftest  # noqa: F401  (registers the hypothesis profiles)
    from torch_ternary.kernels import a8, loader

    profile = _script_default("HYPOTHESIS_PROFILE")
    examples = settings.get_profile(profile).max_examples
    sources = len(loader.SOURCE_FILES + a8.SOURCE_FILES)
    out, files, nvrtc_cold_done = {}, [], False
    for s in steps:
        files.append(s["log"])
        argv = s["argv"]
        if s["name"] == "setup":
            out["setup"] = {"seconds": ESTIMATES["setup"]}
        elif s["name"] == "compile":
            ids = collect(pytest_args(argv))
            out["compile"] = {"items": len(ids), "seconds": ESTIMATES["pytest_process"] + sum(
                ESTIMATES["compile_item"] for i in ids if "compiles[" in i)}
        elif s["name"] in ("tests", "memcheck"):
            ids = collect(pytest_args(argv))
            cold = 0 if nvrtc_cold_done else sources
            nvrtc_cold_done = True
            est = pytest_estimate(ids, examples, cold, sources - cold)
            if s["name"] == "memcheck":
                est["seconds"] = (ESTIMATES["memcheck_process"] + len(ids) * ESTIMATES["memcheck_item"]
                                  + (sources - cold) * ESTIMATES["nvrtc_cached"] + cold * ESTIMATES["nvrtc_cold"])
            out[s["name"]] = est
        elif s["name"] == "bench":
            plan = json.loads(_run([*argv, "--plan"]).stdout)
            out["bench"] = {**bench_estimate(plan), "plan": plan}
            files += plan["outputs"]
        elif s["name"] == "flux":
            proc = _run([*argv, "--plan"])
            plan = json.loads(proc.stdout)
            out["flux"] = {**flux_estimate(plan), "plan": plan}
            files += plan["outputs"]
        else:  # pragma: no cover
            raise AssertionError(f"unknown step {s['name']}: add its estimate")
    return out, sorted(set(files))


@pytest.fixture(scope="module")
def default_plan():
    steps = script_plan()
    return steps, *estimate(steps)


def test_script_is_valid_bash():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, check=False).returncode == 0


def test_default_run_does_every_step(default_plan):
    steps, est, _ = default_plan
    assert [s["name"] for s in steps] == ["setup", "compile", "tests", "memcheck", "bench", "flux"]
    argv = {s["name"]: s["argv"] for s in steps}
    assert "--reduced" in argv["bench"]
    flux = est["flux"]["plan"]
    assert flux["modes"] == ["eager"] and flux["timed_steps"] == 5 and flux["tokens"]["image"] == 4096
    assert flux["variants"] == ["bf16", "ternary_16bit", "ternary_int8", "ternary_fp8", "peer_fp8"]
    assert est["compile"]["items"] == 6 + 1  # every source for the GPU's architecture, and the NVRTC-clean check
    gpu_modules = {i.split("::")[0] for i in collect(pytest_args(argv["tests"]))}
    assert {"tests/kernels/test_cuda_kernels.py", "tests/kernels/test_a8_cuda.py"} <= gpu_modules
    for path in ("tests/kernels/test_cuda_kernels.py", "tests/kernels/test_a8_cuda.py"):  # every item of both
        assert set(collect([path])) <= set(collect(pytest_args(argv["tests"])))
    assert est["memcheck"]["items"] >= 2


def test_default_run_fits_the_budget(default_plan):
    steps, est, _ = default_plan
    budget = int(_script_default("BUDGET_S"))
    assert budget <= 480 and budget + 30 < COMMAND_LIMIT_S  # the deadline, plus timeout's kill grace, fits a call
    caps = {s["name"]: s["cap"] for s in steps}
    lines = [f"{'step':10s} {'estimate s':>10s} {'cap s':>6s}  counts"]
    for name, e in est.items():
        counts = {k: (round(v, 1) if isinstance(v, float) else v) for k, v in e.items() if k not in ("seconds", "plan")}
        lines.append(f"{name:10s} {e['seconds']:10.1f} {caps.get(name, 0):6d}  {counts}")
        if name != "setup":
            assert e["seconds"] <= caps[name], f"{name}: estimate {e['seconds']:.0f} s above its cap {caps[name]} s"
    total = sum(e["seconds"] for e in est.values())
    lines.append(f"{'total':10s} {total:10.1f} {budget:6d}  (estimates; GPU timing unverified)")
    print("\n".join(lines))
    assert total <= budget, "\n".join(lines)


def test_outputs_fit_the_device_limit(default_plan):
    _, _, files = default_plan
    assert len(files) <= MAX_OUTPUT_FILES, files
    assert "env.txt" in files and any(f.startswith("flux_") for f in files)


def test_full_and_compiled_are_options():
    """FULL=1 runs the full sweep, COMPILED=1 adds the compiled FLUX mode; neither is in the default."""
    argv = {s["name"]: s["argv"] for s in script_plan(FULL="1", COMPILED="1", ALL_ARCHS="1")}
    assert "--reduced" not in argv["bench"]
    assert len(collect(pytest_args(argv["compile"]))) == 12 + 1
    plan = json.loads(_run([*argv["flux"], "--plan"]).stdout)
    assert plan["modes"] == ["eager", "compiled"] and plan["torch_compile_compilations"] == 10
    full = json.loads(_run([*argv["bench"], "--plan"]).stdout)
    assert full["timed_rows"] > 3 * json.loads(_run([sys.executable, "benchmarks/cuda_kernels.py", "--reduced", "--plan"]).stdout)[
        "timed_rows"]
