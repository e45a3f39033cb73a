"""CPU tests of the A8 CUDA registration: ``register()`` installs ``linear_a8`` too, and the CUDA
implementation's fallbacks and typed errors (driven with CPU tensors; no kernel is launched)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

import torch_ternary.kernels as K
from torch_ternary.errors import UnsupportedDeviceError, UnsupportedOperationError
from torch_ternary.format import packing
from torch_ternary.kernels import a8, dispatch
from torch_ternary.ops import backends
from torch_ternary.ops import ternary_linear as ops
from torch_ternary.ops import ternary_linear_a8 as ops_a8

_OPDEFS = {"linear": ops.linear, "unpack": ops.unpack, "dequantize": ops.dequantize, "linear_a8": ops_a8.linear_a8}


def _weight(n=24, k=40):
    codes = torch.randint(-1, 2, (n, k), dtype=torch.int8)
    return packing.pack_codes(codes), torch.rand(n, 1) + 0.1


@pytest.fixture
def fake_cuda_build(monkeypatch):
    """Pretend torch has CUDA and CuPy is installed; restore the op registrations afterwards."""
    saved = {name: backends.get_impl(name, "cuda") for name in _OPDEFS}
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(K, "_cupy_installed", lambda: True)
    monkeypatch.setattr(K, "_registered", False)
    monkeypatch.setattr(K, "_disabled", None)
    monkeypatch.setattr(K, "capability", lambda index: (9, 0))
    monkeypatch.setattr(K, "device_index", lambda t: 0)
    monkeypatch.delenv(dispatch.ENV_FORCE, raising=False)
    dispatch.STATS.clear()
    yield
    for name, fn in saved.items():
        backends.set_impl(name, "cuda", None if fn is backends.reference(name) else fn)


def test_register_is_a_noop_without_cuda_or_cupy():
    if torch.version.cuda is not None and importlib.util.find_spec("cupy") is not None:
        pytest.skip("this torch has CUDA and CuPy is installed: registration is expected")
    assert K.register() is False
    assert backends.get_impl("linear_a8", "cuda") is backends.reference("linear_a8")


def test_register_installs_linear_a8(fake_cuda_build):
    assert K.register() is True
    assert backends.get_impl("linear_a8", "cuda") is K._linear_a8_cuda
    assert K._reference["linear_a8"] is ops_a8.linear_a8._init_fn


def test_a8_cuda_impl_fallbacks(fake_cuda_build, monkeypatch):
    K.register()
    packed, scale = _weight()
    x = torch.randn(20, 40, dtype=torch.bfloat16)
    args = (x, packed, scale, None, 40, 40)
    for fmt in ops_a8.A8_FORMATS:
        ref = ops_a8.linear_a8._init_fn(*args, fmt)
        with dispatch.forced(dispatch.REFERENCE):
            assert torch.equal(K._linear_a8_cuda(*args, fmt), ref)
        assert dispatch.STATS["linear_a8:reference(table)"] >= 1
        with dispatch.forced(dispatch.SKINNY), pytest.raises(UnsupportedDeviceError):  # not a linear_a8 path
            K._linear_a8_cuda(*args, fmt)  # kernel path with CPU tensors: typed error
    monkeypatch.setenv(dispatch.ENV_FORCE, dispatch.REFERENCE)
    K._linear_a8_cuda(*args, "int8")
    assert dispatch.STATS["linear_a8:reference(table)"] == 3
    monkeypatch.delenv(dispatch.ENV_FORCE)
    monkeypatch.setattr(K, "capability", lambda index: (8, 6))  # Ampere: int8 yes, fp8 no
    assert torch.equal(K._linear_a8_cuda(*args, "fp8"), ops_a8.linear_a8._init_fn(*args, "fp8"))
    assert dispatch.STATS["linear_a8:reference(capability)"] == 1
    with pytest.raises(UnsupportedDeviceError):
        K._linear_a8_cuda(*args, "int8")
    K._linear_a8_cuda(torch.randn(0, 40, dtype=torch.bfloat16), packed, scale, None, 40, 40, "int8")
    assert dispatch.STATS["linear_a8:reference(empty)"] == 1
    grouped = torch.rand(24, 3)
    with pytest.raises(UnsupportedOperationError, match="per-group"):  # the op's checks run first
        K._linear_a8_cuda(x, packed, grouped, None, 40, 16, "int8")
    with pytest.raises(ValueError):
        K._linear_a8_cuda(*args, "int4")


def test_choose_a8(monkeypatch):
    monkeypatch.delenv(dispatch.ENV_FORCE, raising=False)
    assert dispatch.choose_a8("int8", (8, 0)) == dispatch.A8_GEMM
    assert dispatch.choose_a8("fp8", (8, 6)) == dispatch.REFERENCE
    assert dispatch.choose_a8("fp8", (8, 9)) == dispatch.A8_GEMM
    assert dispatch.choose_a8("int8", (7, 5)) == dispatch.REFERENCE
    with dispatch.forced(dispatch.DECODE_CUBLAS):
        assert dispatch.choose_a8("int8", (9, 0)) == dispatch.A8_GEMM
    with dispatch.forced(dispatch.REFERENCE):
        assert dispatch.choose_a8("int8", (9, 0)) == dispatch.REFERENCE


def test_a8_entries_raise_typed_errors_on_cpu():
    packed, scale = _weight()
    x = torch.randn(20, 40, dtype=torch.bfloat16)
    for call in (
        lambda: a8.a8_linear(x, packed, scale, None, 40, 40, "int8"),
        lambda: a8.quantize_activations_cuda(x, "int8"),
        lambda: a8.a8_weight_workspace(packed, "int8"),
        lambda: a8.a8_epilogue(torch.zeros(20, 24, dtype=torch.int32), torch.ones(20), torch.ones(24), None, 24,
                               torch.empty(20, 24)),
    ):
        with pytest.raises(UnsupportedDeviceError):
            call()


def test_cpu_calls_never_reach_the_cuda_kernels(fake_cuda_build, monkeypatch):
    """torch's custom_op routes CPU calls to the last-registered device's function (a late-binding
    closure); the routing table of torch_ternary.ops.backends sends CPU tensors to the CPU implementation
    (here the reference: the compiled CPU kernels are switched off for this test)."""
    for name in _OPDEFS:
        monkeypatch.setitem(backends._impls, (name, "cpu"), backends.reference(name))
    K.register()
    packed, scale = _weight()
    x = torch.randn(20, 40, dtype=torch.bfloat16)
    for fmt in ops_a8.A8_FORMATS:
        y = torch.ops.torch_ternary.linear_a8(x, packed, scale, None, 40, 40, fmt)
        assert torch.equal(y, ops_a8.linear_a8._init_fn(x, packed, scale, None, 40, 40, fmt))
    y = torch.ops.torch_ternary.linear(x, packed, scale, None, 40, 40)
    assert torch.equal(y, ops.linear._init_fn(x, packed, scale, None, 40, 40))
    assert torch.equal(torch.ops.torch_ternary.unpack(packed, 40), ops.unpack._init_fn(packed, 40))
    assert not dispatch.STATS  # no CUDA implementation was entered
