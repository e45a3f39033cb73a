"""Shared test set-up: offline hub, deterministic seeds, a CI-sized hypothesis profile, a per-test watchdog."""

import faulthandler
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "ci", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.register_profile("dev", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


#: a test running longer than this, set-up and teardown included (seconds; ``$TORCH_TERNARY_TEST_TIMEOUT``, 0: off),
#: ends the whole run: faulthandler's own thread (it needs no GIL) writes every thread's traceback to stderr and
#: exits, so a hang fails CI at once and says where, instead of using up CI's time limit without a word (the
#: slowest test takes about 2 minutes on the 2-core machine)
TEST_TIMEOUT_S = float(os.environ.get("TORCH_TERNARY_TEST_TIMEOUT", "900"))


_REAL_STDERR: list = []  # the terminal's stderr, outside pytest's capture (a test's own fd 2 is captured)


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    capman = config.pluginmanager.getplugin("capturemanager")
    capman.suspend_global_capture()
    try:
        _REAL_STDERR.append(os.fdopen(os.dup(2), "w"))
    finally:
        capman.resume_global_capture()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    if TEST_TIMEOUT_S > 0:
        faulthandler.dump_traceback_later(TEST_TIMEOUT_S, exit=True, file=_REAL_STDERR[0])
    try:
        yield
    finally:
        if TEST_TIMEOUT_S > 0:
            faulthandler.cancel_dump_traceback_later()


def pytest_unconfigure(config):
    faulthandler.cancel_dump_traceback_later()
    while _REAL_STDERR:
        _REAL_STDERR.pop().close()
