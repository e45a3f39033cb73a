"""What ``import torch_ternary`` costs on top of ``import torch``, measured in fresh interpreters.

    python benchmarks/import_time.py            # 7 runs -> benchmarks/results/import_time.json

Each run is a new ``python -X importtime -c "import torch_ternary"``; torch-ternary's own cost is the
sum of the self times of its modules (``torch_ternary`` and below), and the total of the modules it
pulls in that ``import torch`` alone does not. The JSON also lists which heavy packages got imported
(diffusers and CuPy must not be).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("diffusers", "cupy", "transformers", "accelerate", "peft", "safetensors", "numpy")


def importtime(module: str) -> dict[str, tuple[int, int]]:
    """``{module: (self us, cumulative us)}`` of one fresh ``python -X importtime -c "import <module>"``."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"], capture_output=True,
                          text=True, check=True, cwd=ROOT)
    out = {}
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, cum_us, name = line[len("import time:"):].split("|")
        out[name.strip()] = (int(self_us), int(cum_us))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "import_time.json"))
    args = parser.parse_args(argv)
    own, extra, torch_alone, total = [], [], [], []
    for _ in range(args.runs):
        base = importtime("torch")
        ours = importtime("torch_ternary")
        torch_alone.append(base["torch"][1] / 1e3)
        total.append(ours["torch_ternary"][1] / 1e3)
        own.append(sum(s for m, (s, _) in ours.items() if m.startswith("torch_ternary")) / 1e3)
        extra.append(sum(s for m, (s, _) in ours.items() if m not in base) / 1e3)
    modules = sorted(ours)
    result = {
        "date": date.today().isoformat(), "python": sys.version.split()[0], "runs": args.runs,
        "torch_ms_median": round(statistics.median(torch_alone), 1),
        "import_torch_ternary_ms_median": round(statistics.median(total), 1),
        "torch_ternary_own_modules_ms_median": round(statistics.median(own), 1),
        "beyond_import_torch_ms_median": round(statistics.median(extra), 1),
        "torch_ternary_modules": [m for m in modules if m.startswith("torch_ternary")],
        "heavy_packages_imported": [m for m in HEAVY if m in ours],
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 1 if {"diffusers", "cupy"} & set(result["heavy_packages_imported"]) else 0


if __name__ == "__main__":
    sys.exit(main())
