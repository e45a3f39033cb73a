"""``torch_ternary.mini.score`` stays the scoring function however it is imported."""

import subprocess
import sys


def test_from_import_gives_the_function_not_the_module():
    # `from pkg import a, b` looks `b` up twice; a lazily imported submodule of the same name used to win
    # the second lookup, so `score` came back as the module `torch_ternary.mini.score`.
    code = ("from torch_ternary.mini import load_pipeline, score\n"
            "import torch_ternary.mini as mini\n"
            "assert callable(score) and score.__name__ == 'score', score\n"
            "assert mini.score is score and callable(mini.load_pipeline)\n")
    subprocess.run([sys.executable, "-c", code], check=True)
