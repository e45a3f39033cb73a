"""Fuzz the ternary file loaders with 10,000 mutated files and record every outcome.

    python benchmarks/fuzz_format.py                    # 10,000 cases -> benchmarks/results/fuzz_format.json
    python benchmarks/fuzz_format.py --cases 500 --out /tmp/fuzz.json

Cases cycle through every (target, mutation class) pair with fresh seeds, ``verify`` on and off in turn
(:mod:`torch_ternary.testing.format_fuzz` describes the targets, mutations and outcomes). The JSON holds
the counts per mutation class, per target and per outcome, and every failing case (none is allowed);
the exit status is 1 if any case failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter, defaultdict
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from torch_ternary.format.atomic import atomic_write  # noqa: E402
from torch_ternary.testing import format_fuzz as fz  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0, help="first seed (case i uses seed + i)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fuzz_format.json"))
    args = parser.parse_args(argv)
    pairs = list(fz.CASES)
    by_mutation: dict[str, Counter] = defaultdict(Counter)
    by_target: dict[str, Counter] = defaultdict(Counter)
    outcomes: Counter = Counter()
    failures = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        originals = fz.make_originals(Path(tmp) / "originals")
        for i in range(args.cases):
            target, kind = pairs[i % len(pairs)]
            seed, verify = args.seed + i, (i // len(pairs)) % 2 == 0
            outcome = fz.run_case(originals, target, kind, seed, verify, Path(tmp) / "case")
            outcomes[outcome] += 1
            by_mutation[kind][outcome] += 1
            by_target[target][outcome] += 1
            if fz.is_failure(outcome):
                failures.append({"target": target, "mutation": kind, "seed": seed, "verify": verify, "outcome": outcome})
            if (i + 1) % 1000 == 0:
                print(f"{i + 1:6d} cases, {len(failures)} failures, {time.perf_counter() - t0:.0f} s", flush=True)
    seconds = time.perf_counter() - t0
    result = {
        "date": date.today().isoformat(), "command": "python benchmarks/fuzz_format.py " + " ".join(argv or sys.argv[1:]),
        "env": fz.env_summary(), "cases": args.cases, "seconds": round(seconds, 1),
        "failures": len(failures), "failing_cases": failures[:100],
        "untyped_errors": sum(v for k, v in outcomes.items() if k.startswith("untyped")),
        "changed_models": outcomes.get("changed_model", 0), "hangs": outcomes.get("hang", 0),
        "outcomes": dict(sorted(outcomes.items())),
        "by_mutation": {k: dict(sorted(v.items())) for k, v in sorted(by_mutation.items())},
        "by_target": {k: dict(sorted(v.items())) for k, v in sorted(by_target.items())},
    }
    atomic_write(Path(args.out), lambda p: p.write_text(json.dumps(result, indent=1) + "\n"))
    print(json.dumps({k: result[k] for k in ("cases", "seconds", "failures", "untyped_errors", "changed_models",
                                             "hangs", "outcomes")}, indent=1))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
