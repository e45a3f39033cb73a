"""Helpers shared by the benchmark scripts: environment stamp and JSON output."""

from __future__ import annotations

import datetime
import json
import platform
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def environment() -> dict:
    """Device name, torch / CUDA versions, host and date, for every results file."""
    cuda = torch.cuda.is_available()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if cuda else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "python": platform.python_version(),
    }


def write_results(name: str, payload: dict) -> Path:
    """Write ``payload`` plus the environment stamp to ``benchmarks/results/<name>.json``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"environment": environment(), **payload}, indent=2) + "\n")
    return path


def mini_validation_captions(n: int) -> list[str]:
    """``n`` Mini FLUX validation captions: drawn by the training-caption sampler with seed 123 (no
    compositional evaluation prompt, nor its meaning, ever appears). Sampler and recipe choices are made on these."""
    import numpy as np

    from torch_ternary.mini.grammar import sample_training_caption

    rng = np.random.default_rng(123)
    return [sample_training_caption(rng)[1] for _ in range(n)]
