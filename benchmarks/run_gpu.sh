#!/usr/bin/env bash
# Run every GPU check of torch-ternary in one go: the kernel compile test, the GPU property tests,
# compute-sanitizer memcheck over small kernel tests, the kernel benchmark, and the full-size FLUX
# benchmark (benchmarks/flux.py). Meant for a session that has a GPU machine (the device tool's
# `run`), from the repository root:
#
#     bash benchmarks/run_gpu.sh                 # every step; writes to $OUT if set, else benchmarks/results/gpu_run/
#     QUICK=1 bash benchmarks/run_gpu.sh         # kernel benchmark on two shapes only (a few minutes less)
#     STEPS="compile tests memcheck bench" bash benchmarks/run_gpu.sh    # the kernel steps only
#     STEPS=flux FLUX_ARGS="--modes eager" bash benchmarks/run_gpu.sh    # the FLUX benchmark, eager only
#
# STEPS (default "compile tests memcheck bench flux") picks the steps; FLUX_ARGS is passed to
# benchmarks/flux.py. One device call runs at most 10 minutes: run the kernel steps and the FLUX
# benchmark in separate calls, and split the FLUX benchmark if needed (e.g. FLUX_ARGS="--modes eager"
# then FLUX_ARGS="--modes compiled --tag _compiled"), then, on this machine,
# `python benchmarks/flux.py --merge <json> <json>` builds the combined results, plot and table.
#
# What the GPU image lacks, carried as wheels. The image (python3 = Python 3.12, torch 2.11 + CUDA 13,
# CuPy 14 cuda13x, triton, numpy, pytest, hypothesis, safetensors, huggingface_hub, pillow, matplotlib)
# has no diffusers, and no internet. On this (CPU) machine, once, in the repository root:
#
#     echo /.gpu_deps/ >> .git/info/exclude
#     python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#         --platform manylinux2014_x86_64 -d .gpu_deps diffusers==0.42.1      # 6.4 MB, pure Python
#     # (add any other missing package the same way: its wheel, --no-deps, one version each; the Mini
#     # FLUX tests and GPU training also need transformers, tokenizers (binary, cp312) and regex)
#     # device tool: run(command="bash benchmarks/run_gpu.sh", carry=[".gpu_deps"], timeout_s=600)
#
# This script installs the carried wheels (.gpu_deps/*.whl) with `pip install --no-index --no-deps
# --target` into a scratch folder and puts it on PYTHONPATH *after* the image's own site-packages,
# so the image's torch / CuPy / numpy / huggingface_hub win. A .gpu_deps folder of already-extracted
# packages (an older way: `pip install --target .gpu_deps ...`) is put on the path the same way. Do
# NOT carry .venv (a CPU build of torch). torch_ternary is imported from the checkout (PYTHONPATH=.).
#
# Outputs (at most 8 files, the device tool's limit): env.txt, pytest_compile.txt, pytest_gpu.txt,
# memcheck.txt, bench.txt (the logs of both benchmarks), kernels_<gpu>.json and .png (when matplotlib
# exists), flux_<gpu>*.json (+ .png when the kernel benchmark is not run in the same call; else redo
# it here with `python benchmarks/flux.py --plot <json>`). The exit status is non-zero if any
# step failed; every selected step runs regardless.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results/gpu_run}"
mkdir -p "$OUT"
PY="${PYTHON:-$(command -v python3 || command -v python)}"
STEPS="${STEPS:-compile tests memcheck bench flux}"
want() { case " $STEPS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
IMAGE_SITE="$("$PY" -c 'import site; print(":".join(site.getsitepackages()))')"
CARRIED=""
if ls .gpu_deps/*.whl > /dev/null 2>&1; then
    CARRIED="${TMPDIR:-/tmp}/tt_gpu_site"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$CARRIED" .gpu_deps/*.whl \
        || echo "WARNING: installing the carried wheels failed"
elif [ -d .gpu_deps ]; then
    CARRIED="$PWD/.gpu_deps"
fi
if [ -n "$CARRIED" ]; then
    # the image's site-packages first, then the carried packages fill the gaps
    export PYTHONPATH="$PYTHONPATH:$IMAGE_SITE:$CARRIED"
fi
export HYPOTHESIS_PROFILE="${HYPOTHESIS_PROFILE:-ci}"
status=0

{
    echo "== $(date -u)  steps: $STEPS"; nvidia-smi || true
    "$PY" - <<'EOF'
import importlib, sys
print("python", sys.version)
for mod in ("torch", "cupy", "numpy", "pytest", "hypothesis", "safetensors", "triton", "matplotlib", "diffusers",
            "huggingface_hub", "torchao"):
    try:
        m = importlib.import_module(mod)
        print(f"{mod:16s} {getattr(m, '__version__', '?')}  {getattr(m, '__file__', '')}")
    except Exception as exc:
        print(f"{mod:16s} MISSING ({type(exc).__name__}: {exc})")
import torch
print("cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(), torch.cuda.get_device_capability())
import torch_ternary.kernels as K
print("kernels registered", K.registered(), "available", K.available())
EOF
    which nvcc compute-sanitizer 2>&1 || true
} > "$OUT/env.txt" 2>&1 || status=1
cat "$OUT/env.txt"

if want compile; then
    echo "== compile test (nvcc if present, else NVRTC)"
    "$PY" -m pytest -q tests/kernels/test_compile.py -rs > "$OUT/pytest_compile.txt" 2>&1 || status=1
    tail -5 "$OUT/pytest_compile.txt"
fi

if want tests; then
    echo "== GPU tests"
    # a test module whose optional dependency the image lacks (Mini FLUX needs transformers + tokenizers)
    # shows up as a collection error in the log instead of stopping every other GPU test
    "$PY" -m pytest -q tests -k "cuda or kernel" -rs --durations=15 --continue-on-collection-errors \
        > "$OUT/pytest_gpu.txt" 2>&1 || status=1
    tail -25 "$OUT/pytest_gpu.txt"
fi

if want memcheck; then
    echo "== compute-sanitizer memcheck"
    SAN="$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)"
    if [ -n "$SAN" ]; then
        # no caching allocator: every tensor is its own allocation, so memcheck sees out-of-bounds accesses
        PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SAN" --tool memcheck --error-exitcode 7 --target-processes all \
            "$PY" -m pytest -q -p no:cacheprovider tests/kernels/test_cuda_kernels.py tests/kernels/test_a8_cuda.py \
            -k memcheck > "$OUT/memcheck.txt" 2>&1 || status=1
    else
        echo "compute-sanitizer not found on this image" > "$OUT/memcheck.txt"; status=1
    fi
    tail -15 "$OUT/memcheck.txt"
fi

if want bench; then
    echo "== kernel benchmark"
    BENCH_ARGS=(--out-dir "$OUT")
    [ -n "${QUICK:-}" ] && BENCH_ARGS+=(--quick)
    "$PY" benchmarks/kernels.py "${BENCH_ARGS[@]}" > "$OUT/bench.txt" 2>&1 || status=1
    tail -40 "$OUT/bench.txt"
fi

if want flux; then
    echo "== FLUX.1-dev benchmark (benchmarks/flux.py ${FLUX_ARGS:-})"
    FLUX_OPTS=(--out-dir "$OUT")
    want bench && FLUX_OPTS+=(--no-plot)
    # shellcheck disable=SC2086  (FLUX_ARGS is a list of options)
    "$PY" benchmarks/flux.py "${FLUX_OPTS[@]}" ${FLUX_ARGS:-} >> "$OUT/bench.txt" 2>&1 || status=1
    tail -30 "$OUT/bench.txt"
fi

echo "== done, status $status; outputs in $OUT"
ls -la "$OUT"
exit $status
