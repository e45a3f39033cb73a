"""``TernaryTensor``: a weight in {-1, 0, +1} times a scale, stored 2-bit packed.

The tensor looks like the dense ``[N, K]`` weight it replaces (shape, dtype, device), holds
only the packed codes and the float32 scales, and routes ``F.linear`` to the
``torch_ternary::linear`` custom op. ``__tensor_flatten__`` / ``__tensor_unflatten__`` let
``torch.compile`` trace through it.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import return_and_correct_aliasing

from .errors import TernaryFormatError, UnsupportedDeviceError, UnsupportedOperationError
from .format import packing
from .ops import ternary_linear as _ops  # registers torch.ops.torch_ternary.*
from .ops import ternary_linear_a8 as _ops_a8  # registers torch.ops.torch_ternary.linear_a8
from .quantization.absmean import absmean_scale, check_weight, num_groups, resolve_group_size, ternary_codes

aten = torch.ops.aten
SUPPORTED_DEVICE_TYPES = ("cpu", "cuda", "meta")
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_device(device: torch.device | str | None) -> None:
    """Raise :class:`UnsupportedDeviceError` unless the device type is CPU, CUDA or meta."""
    if device is None:
        return
    dtype_ = torch.device(device).type
    if dtype_ not in SUPPORTED_DEVICE_TYPES:
        raise UnsupportedDeviceError(
            f"torch-ternary has kernels for {SUPPORTED_DEVICE_TYPES[:2]} only; cannot place ternary weights on {dtype_!r}"
        )


class TernaryTensor(torch.Tensor):
    """A ternary weight ``W_hat = scale * codes`` of logical shape ``[N, K]``.

    Inner tensors (what ``__tensor_flatten__`` exposes):

    * ``packed``: uint8 ``[N, ceil(K/16) * 4]``, the layout of :mod:`torch_ternary.format.packing`.
    * ``scale``: float32 ``[1, 1]`` (per tensor), ``[N, 1]`` (per channel) or
      ``[N, ceil(K/G)]`` (per group of ``G`` inputs).

    Metadata: logical ``shape`` ``(N, K)``, logical ``dtype`` (what ``dequantize()`` returns
    and what the module reports), ``group_size`` ``G`` (``K`` unless per group), and
    ``activations``: ``"16bit"`` (default), ``"int8"`` or ``"fp8"``, how ``F.linear`` treats the
    activations (8-bit: per-token quantized, ``torch_ternary::linear_a8``; see :mod:`torch_ternary.ops.ternary_linear_a8`).
    """

    packed: torch.Tensor
    scale: torch.Tensor
    group_size: int
    activations: str = "16bit"  # class default: instances built by older code paths read as 16-bit

    @staticmethod
    def __new__(cls, packed: torch.Tensor, scale: torch.Tensor | None = None, shape=None, dtype: torch.dtype | None = None,
                group_size: int | None = None, requires_grad: bool = False, activations: str = "16bit"):
        if requires_grad:
            raise UnsupportedOperationError(
                "a TernaryTensor cannot require grad: its codes are fixed and gradients reach only activations, "
                "biases and the scales (train the scales through torch_ternary.calibration, or dequantize() first)"
            )
        if scale is None and isinstance(packed, TernaryTensor):
            # ``type(param)(param, requires_grad=...)``: how accelerate's offload hooks (and other code that
            # rebuilds parameters by class) re-wrap a parameter; ``nn.Parameter`` of a tensor subclass is the
            # subclass itself, so this must give back a parameter sharing the same packed data and scales.
            return nn.Parameter(packed.detach(), requires_grad=False)
        return torch.Tensor._make_wrapper_subclass(
            cls, tuple(shape), dtype=dtype, device=packed.device, requires_grad=False
        )

    def __init__(self, packed: torch.Tensor, scale: torch.Tensor | None = None, shape=None,
                 dtype: torch.dtype | None = None, group_size: int | None = None, requires_grad: bool = False,
                 activations: str = "16bit"):
        """Args: ``packed`` uint8 ``[N, ceil(K/16)*4]``; ``scale`` float32 ``[1 or N, S_k]``; ``shape`` ``(N, K)``;
        ``dtype`` the logical dtype; ``group_size`` ``G``; ``activations`` ``"16bit"`` / ``"int8"`` / ``"fp8"``
        (8-bit modes need ``S_k == 1``). ``TernaryTensor(ternary_param, requires_grad=False)``
        (``scale`` omitted) returns a parameter aliasing ``ternary_param``. ``requires_grad=True`` raises
        :class:`UnsupportedOperationError`: the codes are fixed (gradients reach the scales through the ops)."""
        if scale is None and isinstance(packed, TernaryTensor):
            return
        if scale is None or shape is None or dtype is None or group_size is None:
            raise TernaryFormatError("TernaryTensor(packed, scale, shape, dtype, group_size) needs all five arguments")
        n, k = shape
        packing.check_packed(packed, k)
        if packed.shape[0] != n:
            raise TernaryFormatError(f"packed weights have {packed.shape[0]} rows, shape says {n}")
        if dtype not in _FLOAT_DTYPES:
            raise TernaryFormatError(f"logical dtype must be float32, float16 or bfloat16, got {dtype}")
        groups = num_groups(k, group_size) if group_size > 0 else -1
        if scale.dtype != torch.float32 or scale.dim() != 2 or scale.shape[0] not in (1, n) or scale.shape[1] != groups:
            raise TernaryFormatError(
                f"scale must be float32 [1 or {n}, {groups}] for shape {tuple(shape)} and group_size "
                f"{group_size}, got {scale.dtype} {tuple(scale.shape)}"
            )
        _ops_a8.check_activation_mode(activations)
        if activations != "16bit" and groups > 1:
            raise UnsupportedOperationError(_ops_a8.per_group_refusal(f"{groups} groups of {group_size}"))
        self.packed = packed
        self.scale = scale
        self.group_size = int(group_size)
        self.activations = activations

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_float(
        cls,
        weight: torch.Tensor,
        granularity: str = "per_channel",
        group_size: int = 128,
        dtype: torch.dtype | None = None,
        activations: str = "16bit",
    ) -> "TernaryTensor":
        """Quantize a dense weight with absmean ternarization (see :mod:`torch_ternary.quantization.absmean`).

        Works row block by row block, so it never holds more than a bounded slice of float32
        copies of ``weight``. A meta ``weight`` gives a meta ``TernaryTensor`` of the right shapes.

        Args:
            weight: floating ``[N, K]``, finite.
            granularity: ``per_tensor``, ``per_channel`` or ``per_group``.
            group_size: ``G`` for ``per_group`` (multiple of 16; clipped to ``K``).
            dtype: logical dtype of the result (default: ``weight.dtype``).
            activations: ``"16bit"``, ``"int8"`` or ``"fp8"`` (see :mod:`torch_ternary.ops.ternary_linear_a8`).
        """
        _ops_a8.check_activation_mode(activations)
        check_weight(weight)
        check_device(weight.device)
        n, k = weight.shape
        g = resolve_group_size(granularity, group_size, k)
        dtype = dtype or weight.dtype
        s_rows = 1 if granularity == "per_tensor" else n
        if weight.device.type == "meta":
            packed = torch.empty(packing.packed_shape(n, k), dtype=torch.uint8, device="meta")
            scale = torch.empty((s_rows, num_groups(k, g)), dtype=torch.float32, device="meta")
            return cls(packed, scale, (n, k), dtype, g, activations=activations)
        with torch.no_grad():
            tensor_scale = absmean_scale(weight, "per_tensor") if granularity == "per_tensor" else None
            packed = torch.empty(packing.packed_shape(n, k), dtype=torch.uint8, device=weight.device)
            scales = []
            for n0, n1 in _ops._row_blocks(n, k):
                rows = weight[n0:n1]
                s = tensor_scale if tensor_scale is not None else absmean_scale(rows, granularity, g)
                packed[n0:n1] = packing.pack_codes(ternary_codes(rows, s, g))
                scales.append(s)
            scale = tensor_scale if tensor_scale is not None else torch.cat(scales, dim=0)
        return cls(packed, scale.contiguous(), (n, k), dtype, g, activations=activations)

    @classmethod
    def from_codes(cls, codes: torch.Tensor, scale: torch.Tensor, group_size: int, dtype: torch.dtype,
                   activations: str = "16bit") -> "TernaryTensor":
        """Build from explicit codes.

        Args:
            codes: integer ``[N, K]`` in {-1, 0, 1}.
            scale: float32 ``[1 or N, ceil(K/G)]``.
            group_size: ``G``.
            dtype: logical dtype.
            activations: ``"16bit"``, ``"int8"`` or ``"fp8"``.
        """
        if codes.dim() != 2 or codes.dtype.is_floating_point:
            raise TernaryFormatError(f"codes must be an integer [N, K] tensor, got {codes.dtype} {tuple(codes.shape)}")
        if bool(((codes < -1) | (codes > 1)).any()):
            raise TernaryFormatError("codes must lie in {-1, 0, 1}")
        return cls(packing.pack_codes(codes), scale.float().contiguous(), tuple(codes.shape), dtype, group_size,
                   activations=activations)

    # ------------------------------------------------------------------ views of the data
    @property
    def in_features(self) -> int:
        return self.shape[1]

    @property
    def out_features(self) -> int:
        return self.shape[0]

    @property
    def granularity(self) -> str:
        """``per_tensor``, ``per_channel`` or ``per_group``, read off the scale's shape."""
        if self.scale.shape[0] == 1 and self.shape[0] != 1:
            return "per_tensor"
        return "per_channel" if self.scale.shape[1] == 1 else "per_group"

    @property
    def nbytes_packed(self) -> int:
        """Bytes held in memory: packed codes plus scales."""
        return self.packed.numel() + self.scale.numel() * self.scale.element_size()

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Dense ``W_hat = scale * codes`` as a plain ``[N, K]`` tensor of ``dtype`` (default: logical dtype)."""
        return torch.ops.torch_ternary.dequantize(self.packed, self.scale, self.shape[1], self.group_size, dtype or self.dtype)

    def codes(self) -> torch.Tensor:
        """int8 ``[N, K]`` codes in {-1, 0, 1}."""
        return torch.ops.torch_ternary.unpack(self.packed, self.shape[1])

    def __repr__(self, *, tensor_contents=None) -> str:  # noqa: D105
        return (
            f"TernaryTensor(shape={tuple(self.shape)}, dtype={self.dtype}, device={self.device}, "
            f"granularity={self.granularity}, group_size={self.group_size}, activations={self.activations}, "
            f"packed=uint8{tuple(self.packed.shape)}, scale=float32{tuple(self.scale.shape)})"
        )

    # ------------------------------------------------------------------ torch.compile
    def __tensor_flatten__(self):
        return ["packed", "scale"], (tuple(self.shape), self.dtype, self.group_size, self.activations)

    @classmethod
    def __tensor_unflatten__(cls, inner_tensors, meta, outer_size, outer_stride):
        shape, dtype, group_size, *rest = meta  # 3-tuples predate the activation mode
        return cls(inner_tensors["packed"], inner_tensors["scale"], shape, dtype, group_size,
                   activations=rest[0] if rest else "16bit")

    def _stable_hash_for_caching(self) -> str:
        """Compile-cache key: the layout (shapes, dtypes, group size, device type), not the values."""
        key = (tuple(self.shape), str(self.dtype), self.group_size, tuple(self.packed.shape),
               tuple(self.scale.shape), self.device.type, self.activations)
        return hashlib.sha256(repr(key).encode()).hexdigest()

    def _with(self, packed: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype | None = None) -> "TernaryTensor":
        return TernaryTensor(packed, scale, tuple(self.shape), dtype or self.dtype, self.group_size,
                             activations=self.activations)

    # ------------------------------------------------------------------ dispatch
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            return _ternary_linear(*args, **kwargs)
        if func is torch.Tensor.to:
            check_device(torch._C._nn._parse_to(*args[1:], **kwargs)[0])
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **kwargs)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        handler = _DISPATCH.get(func)
        if handler is None and func._schema.is_mutable:
            raise UnsupportedOperationError(
                f"a TernaryTensor holds fixed ternary codes and cannot be modified in place ({func}). This is what "
                "fuse_lora / merging an adapter into a ternary weight would need: keep the LoRA unfused (it runs as a "
                "side path over the ternary weight), or dequantize the model first (.dequantize())"
            )
        if handler is None:
            raise UnsupportedOperationError(
                f"TernaryTensor does not implement {func}; call .dequantize() for a dense tensor first"
            )
        return handler(func, args, kwargs)


def _ternary_linear(input: torch.Tensor, weight: TernaryTensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` for a ternary weight: the activation dtype (after autocast) is the compute dtype."""
    if not isinstance(weight, TernaryTensor):  # input is a TernaryTensor; not a supported use
        raise UnsupportedOperationError("F.linear with a TernaryTensor as input is not supported; dequantize() it first")
    x = input
    if torch.is_autocast_enabled(x.device.type):
        x = x.to(torch.get_autocast_dtype(x.device.type))
    if bias is not None and bias.dtype != x.dtype:
        bias = bias.to(x.dtype)
    if _ops_a8.uses_a8(weight.activations, x, weight.shape[1]):  # 8-bit activations, >= A8_MIN_ROWS rows
        return torch.ops.torch_ternary.linear_a8(x, weight.packed, weight.scale, bias, weight.shape[1],
                                                 weight.group_size, weight.activations)
    return torch.ops.torch_ternary.linear(x, weight.packed, weight.scale, bias, weight.shape[1], weight.group_size)


# ---------------------------------------------------------------------- aten handlers
_DISPATCH: dict[Any, Callable] = {}


def _implements(*funcs):
    def deco(fn):
        for f in funcs:
            _DISPATCH[f] = fn
        return fn

    return deco


@_implements(aten.detach.default, aten.alias.default)
def _detach(func, args, kwargs):
    t = args[0]
    return return_and_correct_aliasing(func, args, kwargs, t._with(func(t.packed), func(t.scale)))


@_implements(aten.clone.default)
def _clone(func, args, kwargs):
    t = args[0]
    return t._with(t.packed.clone(), t.scale.clone())


@_implements(aten._to_copy.default)
def _to_copy(func, args, kwargs):
    t = args[0]
    device = kwargs.get("device")
    check_device(device)
    dtype = kwargs.get("dtype") or t.dtype
    if dtype not in _FLOAT_DTYPES:
        raise UnsupportedOperationError(f"a TernaryTensor's dtype must stay floating; cannot convert to {dtype}")
    move = {k: kwargs[k] for k in ("device", "non_blocking") if kwargs.get(k) is not None}
    packed, scale = t.packed.to(copy=True, **move), t.scale.to(copy=True, **move)
    if kwargs.get("pin_memory"):  # Tensor.to has no pin_memory argument: pin the copies
        packed, scale = packed.pin_memory(), scale.pin_memory()
    return t._with(packed, scale, dtype)


@_implements(aten.copy_.default)
def _copy_(func, args, kwargs):
    dst, src = args[0], args[1]
    if not isinstance(src, TernaryTensor):
        raise UnsupportedOperationError(
            "cannot copy a dense tensor into a TernaryTensor; quantize it with TernaryTensor.from_float "
            "or quantize_(), or load a ternary checkpoint"
        )
    if src.shape != dst.shape or src.group_size != dst.group_size or src.scale.shape != dst.scale.shape:
        raise UnsupportedOperationError(
            f"copy_ needs the same ternary layout: {tuple(dst.shape)}/G={dst.group_size}/scale{tuple(dst.scale.shape)} "
            f"vs {tuple(src.shape)}/G={src.group_size}/scale{tuple(src.scale.shape)}"
        )
    dst.packed.copy_(src.packed, non_blocking=kwargs.get("non_blocking", False))
    dst.scale.copy_(src.scale, non_blocking=kwargs.get("non_blocking", False))
    return dst


@_implements(aten.is_pinned.default)
def _is_pinned(func, args, kwargs):
    t = args[0]
    return t.packed.is_pinned() and t.scale.is_pinned()


@_implements(aten._pin_memory.default)
def _pin_memory(func, args, kwargs):
    t = args[0]
    return t._with(t.packed.pin_memory(), t.scale.pin_memory())


@_implements(aten.equal.default)
def _equal(func, args, kwargs):
    a, b = args[0], args[1]
    if not (isinstance(a, TernaryTensor) and isinstance(b, TernaryTensor)):
        return False
    return (
        a.shape == b.shape and a.group_size == b.group_size and a.dtype == b.dtype and a.activations == b.activations
        and a.scale.shape == b.scale.shape and torch.equal(a.packed, b.packed) and torch.equal(a.scale, b.scale)
    )


@_implements(aten.empty_like.default)
def _empty_like(func, args, kwargs):
    t = args[0]
    device = kwargs.get("device") or t.device
    check_device(device)
    return t._with(torch.empty_like(t.packed, device=device), torch.empty_like(t.scale, device=device), kwargs.get("dtype"))
