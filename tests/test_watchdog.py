"""tests/conftest.py's watchdog: a test that runs too long ends the run with its traceback instead of hanging CI."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_hanging_test_ends_the_run_with_its_traceback(tmp_path):
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "conftest.py").write_text((ROOT / "tests" / "conftest.py").read_text())
    (tests / "test_sleeps.py").write_text("import time\n\ndef test_fine():\n    pass\n\n"
                                          "def test_sleeps_past_the_watchdog():\n    time.sleep(120)\n")
    env = {**os.environ, "TORCH_TERNARY_TEST_TIMEOUT": "3"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=100, env=env)
    assert proc.returncode != 0
    assert "Timeout (0:00:03)!" in proc.stderr
    assert "test_sleeps.py\", line 7 in test_sleeps_past_the_watchdog" in proc.stderr
