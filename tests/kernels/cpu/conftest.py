"""Shared set-up of the CPU kernel tests: the ISAs this machine runs, and forcing one of them."""

from __future__ import annotations

import contextlib
import os

import pytest

from torch_ternary.kernels import cpu

#: every ISA variant of ternary_cpu.cpp
ALL_ISAS = cpu.ISAS


def machine_isas() -> tuple[str, ...]:
    """The ISA variants this CPU runs (building the extension); under ``$TORCH_TERNARY_CPU_KERNELS=require``
    a failed build is an error, not a skip."""
    try:
        return cpu.available_isas()
    except Exception:
        if cpu._mode() == "require":
            raise
        return ()


@contextlib.contextmanager
def forced_isa(isa: str):
    """Run the block with ``$TORCH_TERNARY_CPU_ISA=isa`` (restored afterwards)."""
    old = os.environ.get(cpu.ENV_ISA)
    os.environ[cpu.ENV_ISA] = isa
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(cpu.ENV_ISA, None)
        else:
            os.environ[cpu.ENV_ISA] = old


def require_isa(isa: str) -> None:
    """Skip unless this CPU runs ``isa`` (the compiled kernels are installed for the test either way)."""
    cpu.install()
    if isa not in machine_isas():
        pytest.skip(f"this CPU does not run the {isa} variant (it runs {machine_isas()})")
