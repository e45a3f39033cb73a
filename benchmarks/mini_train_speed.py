"""Mini FLUX training step time, eager against ``--compile`` (the trainer's own step, default settings).

    python benchmarks/mini_train_speed.py                 # CPU, 2 threads; writes benchmarks/results/mini_train_speed.json
    python benchmarks/mini_train_speed.py --device cuda --batch 256

Each variant builds a fresh :class:`~torch_ternary.mini.train.Trainer`, runs ``--warmup`` steps
(compilation happens there and is timed separately) and then times ``--steps`` steps.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402

from torch_ternary.mini.train import Trainer, parse_args  # noqa: E402


def time_variant(compiled: bool, argv: list[str], warmup: int, steps: int) -> dict:
    trainer = Trainer(parse_args(argv))
    if compiled:
        trainer.models["transformer"].compile()
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    for _ in range(warmup):
        trainer.train_step()
    sync()
    t1 = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    sync()
    t2 = time.perf_counter()
    return {"compiled": compiled, "warmup_seconds": round(t1 - t0, 2), "seconds_per_step": round((t2 - t1) / steps, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", default="mini_train_speed")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["--out", tmp, "--device", args.device, "--batch", str(args.batch), "--threads", str(args.threads)]
        rows = [time_variant(c, argv, args.warmup, args.steps) for c in (False, True)]
    for row in rows:
        print(row, flush=True)
    write_results(args.out, {"batch": args.batch, "threads": args.threads, "steps": args.steps, "rows": rows,
                             "speedup": round(rows[0]["seconds_per_step"] / rows[1]["seconds_per_step"], 2)})


if __name__ == "__main__":
    main()
