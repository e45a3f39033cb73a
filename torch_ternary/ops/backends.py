"""Which implementation each ``torch_ternary`` op runs on each device type.

Every op starts with its plain-torch reference on CPU and CUDA. A kernel layer (``torch_ternary.kernels``:
the CUDA kernels; ``torch_ternary.kernels.cpu``: the compiled CPU kernels) installs its implementation
with :func:`set_impl`; one router per op, registered for both device types, calls the implementation of the
device its first tensor argument lives on.

One router rather than one ``torch.library.register_kernel`` per device: ``torch.library.custom_op(...,
device_types=("cpu", "cuda"))`` registers its per-device dispatch entries with a closure over the loop
variable (torch 2.4 - 2.13 at least), so a CPU call reaches whatever was registered for ``"cuda"`` last.
Routing inside one function does not depend on that. The router is registered straight on the CPU and
CUDA dispatch keys (``torch.library.Library.impl``, replacing the custom op's own per-device wrapper, which
costs ~15 us a call: a fifth of a skinny ternary linear on the CPU). The custom op keeps its schema, fake
kernel and autograd formula. Eager calls and ``torch.compile`` graphs (where the ops are opaque calls through
the dispatcher) both reach the router.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

DEVICE_TYPES = ("cpu", "cuda")
#: the ops :mod:`torch_ternary.kernels.cpu` implements
CPU_KERNEL_OPS = ("linear", "linear_a8", "dequantize", "unpack", "linear_grad_input", "linear_grad_scale", "ste_weight",
                  "ste_weight_backward")
_DISPATCH_KEYS = ("CPU", "CUDA")
_LIBRARY = torch.library.Library("torch_ternary", "IMPL")  # kept alive: it holds the routers' registrations
_reference: dict[str, Callable] = {}
_impls: dict[tuple[str, str], Callable] = {}


def route(name: str, opdef) -> None:
    """Register the router of op ``torch_ternary::<name>`` (its ``custom_op`` definition ``opdef``)."""
    _reference[name] = opdef._init_fn

    def router(*args):
        fn = _impls.get((name, args[0].device.type))
        return (fn or _reference[name])(*args)

    router.__name__ = router.__qualname__ = f"{name}_router"
    with warnings.catch_warnings():  # "overriding a previously registered kernel": the custom op's wrapper, on purpose
        warnings.simplefilter("ignore", UserWarning)
        for key in _DISPATCH_KEYS:
            _LIBRARY.impl(name, router, key)


def reference(name: str) -> Callable:
    """The plain-torch implementation of op ``name`` (what runs when no kernel is installed)."""
    return _reference[name]


def set_impl(name: str, device_type: str, fn: Callable | None) -> None:
    """Make ``fn`` (same arguments as the op) the implementation of op ``name`` on ``device_type``; None restores
    the reference."""
    if name not in _reference or device_type not in DEVICE_TYPES:
        raise ValueError(f"unknown op {name!r} or device type {device_type!r}")
    if fn is None:
        _impls.pop((name, device_type), None)
    else:
        _impls[(name, device_type)] = fn


def get_impl(name: str, device_type: str) -> Callable:
    """What op ``name`` runs on ``device_type`` now."""
    return _impls.get((name, device_type)) or _reference[name]
