"""Which CUDA path computes a ternary linear, per shape and GPU: one small table.

Paths:

* ``skinny``: ``cuda/gemv.cu``, the tensor-core GEMV / skinny GEMM (weights decoded in registers,
  fp32 accumulation); memory bound, reads 1/8 of the bytes of a bf16 weight. Works for any M (it
  tiles M by 16), meant for M <= 16.
* ``decode_cublas``: ``cuda/decode.cu`` writes ``s * q`` into a bf16/fp16 workspace ``[N, K]``,
  then ``F.linear`` (cuBLAS). Compute bound for large M; the decode costs one pass over the
  weight (0.25 + 2 bytes a weight).
* ``fused_mma``: ``cuda/gemm.cu``, decode in shared memory feeding mma.sync (no workspace).
* ``reference``: the plain-torch kernel of :mod:`torch_ternary.ops`.

``torch_ternary::linear_a8`` (8-bit activations, :mod:`torch_ternary.kernels.a8`) has one CUDA
path, ``a8_gemm`` (activation quantization + 8-bit weight workspace + ``torch._int_mm`` /
``torch._scaled_mm`` + epilogue); :func:`choose_a8` only decides between it and the reference.

THE TABLE IS UNMEASURED. No GPU was available when it was written: the entries follow from the
kernels' design (memory-bound skinny kernel while M is small, cuBLAS after a decode for large M,
the fused kernel off until a benchmark shows it winning). ``benchmarks/cuda_kernels.py`` times every
path for the FLUX.1-dev shapes at M in {1, 16, 512, 4096, 4608}; update the rows from its JSON
(``benchmarks/results/kernels_<gpu>.json``) and note the source of each row in ``docs/kernels.md``.

Rows are ``(max_m, min_n, choice)``; the first row with ``m <= max_m`` (``None``: any) and
``n >= min_n`` wins. A table is picked by the GPU's compute capability (``"sm_90"``, ``"sm_80"``...),
falling back to ``"default"``.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from dataclasses import dataclass, replace
from typing import Iterator, Optional

SKINNY = "skinny"
DECODE_CUBLAS = "decode_cublas"
FUSED_MMA = "fused_mma"
REFERENCE = "reference"
PATHS = (SKINNY, DECODE_CUBLAS, FUSED_MMA, REFERENCE)
#: The CUDA path of ``linear_a8`` (not a ``linear`` path: forcing skinny / decode_cublas / fused_mma leaves it alone).
A8_GEMM = "a8_gemm"
#: Lowest compute capability per 8-bit format (int8 IMMA: Ampere; fp8: Ada / Hopper).
A8_MIN_CAPABILITY = {"int8": (8, 0), "fp8": (8, 9)}

#: Environment variable forcing one path for every eligible call (benchmarks, debugging).
ENV_FORCE = "TORCH_TERNARY_KERNEL"


@dataclass(frozen=True)
class Choice:
    """A path and its launch configuration.

    Attributes:
        path: one of :data:`PATHS`.
        rows_per_warp: ``skinny`` only: m16 tiles of output rows a warp owns (1 or 2).
        warps: ``skinny`` only: warps splitting K in a block (1..8); 0 picks
            ``clamp(chunks // 2, 1, 8)`` so that each warp streams at least two chunks of the row.
    """

    path: str
    rows_per_warp: int = 1
    warps: int = 0


Rule = tuple[Optional[int], int, Choice]

# UNMEASURED starting points (see the module docstring); "benchmarks/cuda_kernels.py" decides.
TABLE: dict[str, list[Rule]] = {
    "default": [
        (16, 0, Choice(SKINNY)),
        (None, 0, Choice(DECODE_CUBLAS)),
    ],
}

#: Calls per path, e.g. ``STATS["linear:skinny"]``; tests check that eager and compiled calls
#: reach the kernels.
STATS: Counter = Counter()

_forced: list[Choice] = []


def arch_key(capability: tuple[int, int]) -> str:
    """``"sm_90"`` for capability (9, 0)."""
    return f"sm_{capability[0]}{capability[1]}"


def choose(m: int, n: int, k: int, capability: tuple[int, int]) -> Choice:
    """The path for a linear of ``m`` activation rows, ``n`` outputs, ``k`` inputs on a GPU.

    Args:
        m: rows of ``x`` (product of its leading dimensions).
        n: output features. k: input features (unused by the current rows; kept so rows can use it).
        capability: ``torch.cuda.get_device_capability()``.

    Returns:
        A forced choice (:func:`forced` or ``$TORCH_TERNARY_KERNEL``) if any, else the table's.
    """
    if _forced:
        return _forced[-1]
    env = os.environ.get(ENV_FORCE, "").strip()
    if env:
        if env not in PATHS:
            raise ValueError(f"${ENV_FORCE} must be one of {PATHS}, got {env!r}")
        return Choice(env)
    rules = TABLE.get(arch_key(capability), TABLE["default"])
    for max_m, min_n, choice in rules:
        if (max_m is None or m <= max_m) and n >= min_n:
            return choice
    return Choice(REFERENCE)


@contextlib.contextmanager
def forced(path: str, **config) -> Iterator[Choice]:
    """Force one path (and launch configuration) inside a ``with`` block: tests and benchmarks.

    Args:
        path: one of :data:`PATHS`.
        config: fields of :class:`Choice` (``rows_per_warp``, ``warps``).
    """
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    choice = replace(Choice(path), **config)
    _forced.append(choice)
    try:
        yield choice
    finally:
        _forced.pop()


def choose_a8(fmt: str, capability: tuple[int, int]) -> str:
    """:data:`A8_GEMM` or :data:`REFERENCE` for a ``linear_a8`` call.

    The reference when it is forced (:func:`forced` / ``$TORCH_TERNARY_KERNEL=reference``) or the GPU
    is below :data:`A8_MIN_CAPABILITY` for ``fmt``; other forced paths do not apply to 8-bit activations.
    """
    if _forced:
        if _forced[-1].path == REFERENCE:
            return REFERENCE
    elif os.environ.get(ENV_FORCE, "").strip() == REFERENCE:
        return REFERENCE
    return A8_GEMM if capability >= A8_MIN_CAPABILITY[fmt] else REFERENCE
