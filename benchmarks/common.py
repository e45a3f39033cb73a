"""Helpers shared by the benchmark scripts: environment stamp and JSON output."""

from __future__ import annotations

import datetime
import json
import platform
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else the platform's processor / machine string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend, or None (with a note on stderr) when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: JSON only (plot later with --plot)", file=sys.stderr)
        return None
    return plt


def save_figure(fig, path: Path, title: str, dpi: int = 110) -> Path:
    """``fig`` titled ``title``, laid out and written to ``path`` (the last step of every benchmark's plot)."""
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    print(f"wrote {path}")
    return path


def environment() -> dict:
    """Device name, torch / CUDA versions, host and date, for every results file."""
    cuda = torch.cuda.is_available()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if cuda else f"cpu ({cpu_name()}, {torch.get_num_threads()} threads)",
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
    """``n`` Mini FLUX validation captions: every wording of the validation split's meanings
    (:mod:`torch_ternary.mini.splits`; no calibration or evaluation meaning), shuffled once with seed 123
    and repeated as needed. Sampler and recipe choices are made on these.

    (Before the splits existed this drew ``n`` captions from the training-caption sampler with seed 123,
    which overlapped the calibration prompts; ``benchmarks/results/mini_sampling.json`` and the
    ``mini_compare`` results were measured that way.)"""
    import numpy as np

    from torch_ternary.mini.splits import SPLIT_CATEGORIES, validation_meanings

    pool = [c for cat in SPLIT_CATEGORIES for group in validation_meanings(cat) for c in group]
    pool = [pool[i] for i in np.random.default_rng(123).permutation(len(pool))]
    return [pool[i % len(pool)] for i in range(n)]
