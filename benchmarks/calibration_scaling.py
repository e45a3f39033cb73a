"""CPU scaling of distributed calibration on Mini FLUX: 2 ranks x 1 thread vs 1 rank x 1 thread vs 1 rank x 2 threads.

    python benchmarks/calibration_scaling.py [--prompts 64] [--steps 60] [--repeats 1]

Each configuration runs the shipped recipe's phases, shrunk (teacher trajectories of ``--prompts``
prompts of the recipe's ``mini`` sampler, GPTQ layer-wise calibration, ``--steps`` QAT distillation
steps at the recipe's global batch of 32, FSDP2 on 2 ranks) with ``torch-ternary calibrate`` under
``torchrun --standalone``, in a fresh workdir, one after the other (``--repeats`` rounds of the three,
in turn); the wall time of each whole job (start-up included) and of each phase (rank 0's summary) are
recorded, and the ratios use the median over rounds. Run it with nothing else on the cores. Writes
``calibration_scaling.json`` in the results folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from statistics import median
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402

CONFIGS = (("1 rank x 1 thread", 1, 1), ("2 ranks x 1 thread", 2, 1), ("1 rank x 2 threads", 1, 2))


def run(nproc: int, threads: int, workdir: Path, prompts: int, steps: int) -> dict:
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    cli = str(Path(sys.executable).with_name("torch-ternary"))
    cmd = [torchrun, "--standalone", "--nproc-per-node", str(nproc), "--no-python", cli, "calibrate",
           "--pipeline", "mini", "--method", "distill_qat", "--gptq-init", "--prompts", "mini",
           "--num-prompts", str(prompts), "--steps", str(steps), "--workdir", str(workdir / "w"),
           "--out", str(workdir / "out.safetensors")]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise RuntimeError(proc.stdout[-2000:] + proc.stderr[-4000:])
    summary = json.loads((workdir / "out.json").read_text())
    return {"wall_seconds": round(wall, 1), "phase_seconds": {k: round(v, 1) for k, v in summary["seconds"].items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    runs = {name: [] for name, _, _ in CONFIGS}
    for _ in range(args.repeats):
        for name, nproc, threads in CONFIGS:
            with tempfile.TemporaryDirectory() as tmp:
                runs[name].append(run(nproc, threads, Path(tmp), args.prompts, args.steps))
            print(name, json.dumps(runs[name][-1]), flush=True)
    rows = {}
    for name, nproc, threads in CONFIGS:
        rows[name] = {"ranks": nproc, "threads_per_rank": threads, "wall_seconds": median(r["wall_seconds"] for r in runs[name]),
                      "phase_seconds": {k: median(r["phase_seconds"][k] for r in runs[name]) for k in runs[name][0]["phase_seconds"]},
                      "runs": runs[name]}
    base = rows["1 rank x 1 thread"]
    for row in rows.values():
        row["wall_vs_1x1"] = round(row["wall_seconds"] / base["wall_seconds"], 3)
        row["phase_vs_1x1"] = {k: round(v / base["phase_seconds"][k], 3) for k, v in row["phase_seconds"].items()
                               if base["phase_seconds"].get(k)}
    two = rows["2 ranks x 1 thread"]
    print(f"2 ranks x 1 thread: {two['wall_vs_1x1']:.2f}x the wall time of 1 x 1 (goal <= 0.6); "
          f"1 rank x 2 threads: {rows['1 rank x 2 threads']['wall_vs_1x1']:.2f}x")
    path = write_results("calibration_scaling", {"prompts": args.prompts, "distill_steps": args.steps, "repeats": args.repeats,
                                                 "batch_size": 32, "method": "distill_qat --gptq-init", "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
