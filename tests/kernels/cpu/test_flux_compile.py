"""The quantized tiny FLUX on the CPU: eager and ``torch.compile(fullgraph=True)`` both run the compiled kernels
(counted by ``kernels.cpu.STATS``) and agree."""

from __future__ import annotations

import pytest
import torch

from torch_ternary import TernaryConfig, quantize_
from torch_ternary.kernels import cpu

from .conftest import require_isa


def _kernel_calls(op: str) -> int:
    return sum(v for key, v in cpu.STATS.items() if key.startswith(f"{op}:") and key != f"{op}:reference")


def _sqnr_db(ref, out):
    return float(10 * torch.log10(ref.double().pow(2).sum() / (out.double() - ref.double()).pow(2).sum().clamp_min(1e-300)))


@pytest.mark.parametrize("activations", ["16bit", "int8"])
def test_tiny_flux_compiled_fullgraph_reaches_the_cpu_kernels(activations):
    pytest.importorskip("diffusers")
    from torch_ternary.testing.flux import FLUX_TINY_CONFIG, build_flux, example_inputs

    require_isa("scalar")
    model = build_flux(FLUX_TINY_CONFIG, seed=0)
    quantize_(model, TernaryConfig(activations=activations))
    inputs = example_inputs(FLUX_TINY_CONFIG, height=8, width=8, text_tokens=7)  # 71 tokens: A8 applies
    op = "linear" if activations == "16bit" else "linear_a8"
    torch._dynamo.reset()
    try:
        with torch.no_grad():
            before = _kernel_calls(op)
            eager = model(**inputs)[0]
            eager_calls = _kernel_calls(op) - before
            compiled_model = torch.compile(model, fullgraph=True)
            compiled_model(**inputs)  # compiles
            before = _kernel_calls(op)
            compiled = compiled_model(**inputs)[0]
            compiled_calls = _kernel_calls(op) - before
    finally:
        torch._dynamo.reset()
    assert eager_calls > 0 and compiled_calls == eager_calls, (eager_calls, compiled_calls)
    # inductor fuses the norms and adds around the ops (last-bit differences; with int8 activations one can move
    # a token's code by a step): close, not bit-equal
    assert _sqnr_db(eager, compiled) > (90.0 if activations == "16bit" else 60.0)
