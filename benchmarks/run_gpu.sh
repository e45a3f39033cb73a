#!/usr/bin/env bash
# Every GPU check of torch-ternary in ONE device call of at most 8 minutes (a lent GPU comes for 15
# minutes in all, start-up included, and at most 10 minutes a command: one call, with room for a
# rerun). From the repository root, on the GPU machine (the device tool's `run`):
#
#     bash benchmarks/run_gpu.sh          # the default: every step below, writes to $OUT (else benchmarks/results/gpu_run/)
#     PLAN=1 bash benchmarks/run_gpu.sh   # anywhere, no GPU: print the commands the run would make, run nothing
#
# Default steps (STEPS="compile tests memcheck bench flux"):
#   compile   tests/kernels/test_compile.py: every cuda/*.cu for this GPU's architecture (nvcc if present, else
#             NVRTC; ALL_ARCHS=1: sm_80 and sm_90, which the CPU machine's nvcc run of the same test covers)
#   tests     every GPU test: pytest tests -k "cuda or pin" (tests/kernels/test_cuda_kernels.py,
#             tests/kernels/test_a8_cuda.py, and the GPU branches of the other modules), hypothesis profile "ci"
#   memcheck  compute-sanitizer --tool memcheck over the *memcheck* tests (one call of every kernel, ragged shapes)
#   bench     benchmarks/cuda_kernels.py --reduced: 2 FLUX shapes x M in {1, 16, 512, 4608}, every path (FULL=1: the full sweep)
#   flux      benchmarks/flux.py --modes eager --steps 1 --warmup 1: ONE timed eager FLUX.1-dev step per variant
#             at 1024² (5 variants; COMPILED=1 adds the compiled mode, FLUX_ARGS is appended and wins)
#
# Options: STEPS (a subset, e.g. STEPS=flux), FULL=1, COMPILED=1, ALL_ARCHS=1, FLUX_ARGS, BENCH_ARGS (appended), BUDGET_S
# (the deadline of the whole run, default 480 s: every step runs under `timeout` with its cap below AND what
# is left of the deadline; a step that would start with less than 15 s left is skipped and reported). With
# FULL=1 or COMPILED=1 the run does not fit 8 minutes: give those a call of their own, e.g.
#     STEPS=flux COMPILED=1 FLUX_ARGS="--modes compiled --tag _compiled" BUDGET_S=560 bash benchmarks/run_gpu.sh
# then, on the CPU machine, `python benchmarks/flux.py --merge <json> <json>`.
#
# The 8-minute budget is an ESTIMATE until a GPU has run this: tests/kernels/test_gpu_budget.py counts, on
# CPU, what the default run does (the commands of PLAN=1, the pytest items they collect, hypothesis examples,
# torch.compile calls, NVRTC sources, benchmark rows and kernel calls, FLUX builds and forwards) and checks
# the sum of its per-item estimates against BUDGET_S. Each run appends its measured step times to env.txt:
# use them to replace the estimates.
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
# Outputs (8 files at most, the device tool's limit): env.txt (environment, then the step times),
# pytest_compile.txt, pytest_gpu.txt, memcheck.txt, bench.txt (the logs of both benchmarks),
# kernels_<gpu>.json + .png (when matplotlib exists), flux_<gpu>.json (its .png is left out when the kernel
# benchmark runs in the same call: redo it with `python benchmarks/flux.py --plot <json>`). The exit status
# is non-zero if any step failed, timed out or was skipped; every selected step runs regardless.
set -u
cd "$(dirname "$0")/.."
PLAN="${PLAN:-}"
OUT="${OUT:-benchmarks/results/gpu_run}"
PY="${PYTHON:-$(command -v python3 || command -v python)}"
STEPS="${STEPS:-compile tests memcheck bench flux}"
BUDGET_S="${BUDGET_S:-480}"
#: Per-step caps in seconds (the estimates of tests/kernels/test_gpu_budget.py, with slack); a run of ONE
#: step (e.g. STEPS=flux) gives it the whole budget instead.
CAP_COMPILE="${CAP_COMPILE:-90}"
CAP_TESTS="${CAP_TESTS:-270}"
CAP_MEMCHECK="${CAP_MEMCHECK:-120}"
CAP_BENCH="${CAP_BENCH:-120}"
CAP_FLUX="${CAP_FLUX:-240}"
# shellcheck disable=SC2086  (word count of the step list)
set -- $STEPS
ONE_STEP=$([ "$#" -eq 1 ] && echo 1)
set --
GPU_TESTS_K="cuda or pin"
if [ -n "$PLAN" ]; then
    ARCH="${ARCH:-sm_90}"
else
    CC="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .')"
    ARCH="${ARCH:-sm_${CC:-90}}"
fi
COMPILE_K="$ARCH or nvrtc_clean"
[ -n "${ALL_ARCHS:-}" ] && COMPILE_K="compiles or nvrtc_clean"
BENCH_OPTS=(--out-dir "$OUT")
[ -z "${FULL:-}" ] && BENCH_OPTS+=(--reduced)
# shellcheck disable=SC2206  (BENCH_ARGS is a list of options)
BENCH_OPTS+=(${BENCH_ARGS:-})
FLUX_OPTS=(--out-dir "$OUT" --steps 1 --warmup 1)
if [ -n "${COMPILED:-}" ]; then FLUX_OPTS+=(--modes eager compiled); else FLUX_OPTS+=(--modes eager); fi
want() { case " $STEPS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
want bench && FLUX_OPTS+=(--no-plot)
# shellcheck disable=SC2206  (FLUX_ARGS is a list of options; later options win in argparse)
FLUX_OPTS+=(${FLUX_ARGS:-})
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export HYPOTHESIS_PROFILE="${HYPOTHESIS_PROFILE:-ci}"
status=0
START=$(date +%s)
TIMES=""

# step NAME CAP LOG MODE CMD... : run CMD under the cap and the deadline, output to $OUT/LOG (MODE: new|append)
step() {
    local name=$1 cap=$2 log=$3 mode=$4
    shift 4
    [ -n "$ONE_STEP" ] && cap=$BUDGET_S
    if [ -n "$PLAN" ]; then
        printf 'PLAN\t%s\t%s\t%s\t' "$name" "$cap" "$log"
        printf '%q ' "$@"
        echo
        return 0
    fi
    local left=$((START + BUDGET_S - $(date +%s)))
    local limit=$((cap < left - 5 ? cap : left - 5))
    if [ "$limit" -lt 15 ]; then
        echo "== $name SKIPPED: ${left}s left of the ${BUDGET_S}s budget" | tee -a "$OUT/$log"
        TIMES="$TIMES $name=skipped"
        status=1
        return 0
    fi
    echo "== $name (cap ${limit}s): $*"
    local t0 rc
    t0=$(date +%s)
    if [ "$mode" = new ]; then
        timeout -k 10 "$limit" "$@" > "$OUT/$log" 2>&1
    else
        timeout -k 10 "$limit" "$@" >> "$OUT/$log" 2>&1
    fi
    rc=$?
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        echo "== $name TIMED OUT after ${limit}s" | tee -a "$OUT/$log"
    fi
    [ "$rc" -ne 0 ] && status=1
    TIMES="$TIMES $name=$(($(date +%s) - t0))s(rc=$rc)"
    tail -25 "$OUT/$log"
}

if [ -z "$PLAN" ]; then
    mkdir -p "$OUT"
    IMAGE_SITE="$("$PY" -c 'import site; print(":".join(site.getsitepackages()))')"
    CARRIED=""
    if ls .gpu_deps/*.whl > /dev/null 2>&1; then
        CARRIED="${TMPDIR:-/tmp}/tt_gpu_site"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$CARRIED" \
            .gpu_deps/*.whl || echo "WARNING: installing the carried wheels failed"
    elif [ -d .gpu_deps ]; then
        CARRIED="$PWD/.gpu_deps"
    fi
    if [ -n "$CARRIED" ]; then
        # the image's site-packages first, then the carried packages fill the gaps
        export PYTHONPATH="$PYTHONPATH:$IMAGE_SITE:$CARRIED"
    fi
    {
        echo "== $(date -u)  steps: $STEPS  budget: ${BUDGET_S}s  FULL=${FULL:-} COMPILED=${COMPILED:-}"
        nvidia-smi || true
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
    TIMES="setup=$(($(date +%s) - START))s"
else
    printf 'PLAN\tsetup\t0\tenv.txt\t\n'
fi

if want compile; then
    step compile "$CAP_COMPILE" pytest_compile.txt new "$PY" -m pytest -q -p no:cacheprovider tests/kernels/test_compile.py \
        -k "$COMPILE_K" -rs
fi

if want tests; then
    # a test module whose optional dependency the image lacks (Mini FLUX needs transformers + tokenizers)
    # shows up as a collection error in the log instead of stopping every other GPU test
    step tests "$CAP_TESTS" pytest_gpu.txt new "$PY" -m pytest -q -p no:cacheprovider tests -k "$GPU_TESTS_K" -rs \
        --durations=25 --continue-on-collection-errors
fi

if want memcheck; then
    SAN="$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)"
    if [ -n "$SAN" ] || [ -n "$PLAN" ]; then
        # no caching allocator: every tensor is its own allocation, so memcheck sees out-of-bounds accesses
        step memcheck "$CAP_MEMCHECK" memcheck.txt new env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "${SAN:-compute-sanitizer}" \
            --tool memcheck --error-exitcode 7 --target-processes all \
            "$PY" -m pytest -q -p no:cacheprovider tests/kernels/test_cuda_kernels.py tests/kernels/test_a8_cuda.py \
            -k memcheck
    else
        echo "compute-sanitizer not found on this image" > "$OUT/memcheck.txt"
        status=1
    fi
fi

if want bench; then
    step bench "$CAP_BENCH" bench.txt new "$PY" benchmarks/cuda_kernels.py "${BENCH_OPTS[@]}"
fi

if want flux; then
    step flux "$CAP_FLUX" bench.txt append "$PY" benchmarks/flux.py "${FLUX_OPTS[@]}"
fi

if [ -z "$PLAN" ]; then
    echo "== step times (s, measured on $(date -u)):$TIMES total=$(($(date +%s) - START))s" | tee -a "$OUT/env.txt"
    echo "== done, status $status; outputs in $OUT"
    ls -la "$OUT"
fi
exit $status
