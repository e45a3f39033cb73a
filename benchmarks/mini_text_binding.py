"""Does Mini FLUX's T5 encoder tell which object a word belongs to? Cosine of a noun's T5 state across swaps.

    python benchmarks/mini_text_binding.py --weights shipped=torch_ternary/mini/weights v5=runs/v5 --out mini_text_binding

``FluxPipeline`` gives text tokens position 0, so the transformer sees T5's states as a set: two
captions with the same words in another order reach it as one prompt unless T5 itself makes the
states differ. Two swaps of the evaluation prompts (pairs whose two nouns differ):

- colour swap: "a red circle and a blue square" vs "a blue circle and a red square" — the state of
  "circle" (its colour changed);
- order swap: "a red circle above a blue square" vs "a blue square above a red circle" — the state
  of "circle" (its side of the relation changed).

1.000 means the state ignores the change (a bag of words); lower means the word carries its object's
binding. Results: ``benchmarks/results/<out>.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402

from torch_ternary.mini import load_pipeline  # noqa: E402
from torch_ternary.mini.binding import swap_pairs, word_state_similarity  # noqa: E402
from torch_ternary.mini.text import MAX_TOKENS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", nargs="+", required=True, help="NAME=FOLDER, one per model")
    parser.add_argument("--out", required=True, help="results name (benchmarks/results/<out>.json)")
    args = parser.parse_args()
    pairs = swap_pairs()
    rows = []
    for item in args.weights:
        name, _, folder = item.partition("=")
        pipe = load_pipeline(path=folder)
        row = {"name": name, "weights": folder}
        for kind, items in pairs.items():
            sims = [word_state_similarity(pipe.text_encoder_2, pipe.tokenizer_2, a, b, w, MAX_TOKENS) for a, b, w in items]
            row[kind] = {"mean": sum(sims) / len(sims), "max": max(sims), "n": len(sims)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    write_results(args.out, {"pairs": pairs, "rows": rows})


if __name__ == "__main__":
    main()
