"""Without the diffusers extra the integration tests are reported as skipped, with the reason (not hidden).

Needs none of the extras itself: it runs pytest on this folder in a subprocess whose ``diffusers``
cannot be imported (a ``diffusers/`` package first on ``PYTHONPATH`` whose ``__init__`` raises).
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
INNER = "TORCH_TERNARY_EXTRAS_SKIP_INNER"


def run_without_diffusers(tmp_path: Path, target: Path, require: bool) -> subprocess.CompletedProcess:
    """pytest on ``target`` in a subprocess whose diffusers cannot be imported; ``require``: with
    ``TORCH_TERNARY_REQUIRE_EXTRAS=1`` (min_diffusers.py's), else without it."""
    if os.environ.get(INNER):
        pytest.skip("the inner run of this very test")
    fake = tmp_path / "site" / "diffusers"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise ImportError("diffusers made unimportable by test_extras_skip")\n')
    path = os.pathsep.join(p for p in (str(tmp_path / "site"), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", INNER: "1"}
    env.pop("TORCH_TERNARY_REQUIRE_EXTRAS", None)
    if require:
        env["TORCH_TERNARY_REQUIRE_EXTRAS"] = "1"
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs", "-q", str(target)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)


def test_integration_tests_are_reported_skipped_without_diffusers(tmp_path):
    out = run_without_diffusers(tmp_path, HERE, require=False)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text  # 5 would be "no tests ran", 2 a collection error
    assert "no tests ran" not in text and "error" not in text.lower(), text
    needing = sorted(p.name for p in HERE.glob("test_*.py") if p != Path(__file__).resolve() and "\nrequire_extras(" in p.read_text())
    assert len(needing) >= 5, needing
    for name in needing:  # each module reported skipped, with why and what to install
        assert re.search(rf"SKIPPED \[\d+\] \S*{re.escape(name)}:\d+: the diffusers extra is missing: cannot import "
                         r"diffusers \(diffusers made unimportable by test_extras_skip\); pip install", text), (name, text)
    skipped = int(re.search(r"(\d+) skipped", text).group(1))
    own = Path(__file__).read_text().count("\ndef test_")
    assert skipped == len(needing) + own  # + this file's tests, skipped in the inner run


def test_a_run_that_requires_the_extras_fails_without_them(tmp_path):
    """min_diffusers.py's TORCH_TERNARY_REQUIRE_EXTRAS=1: the same unimportable diffusers is an error, not a skip."""
    out = run_without_diffusers(tmp_path, HERE / "test_pipeline.py", require=True)
    text = out.stdout + out.stderr
    assert out.returncode != 0 and "the diffusers extra is missing: cannot import diffusers" in text, text
