"""Custom ops in the ``torch_ternary`` namespace, with fake (meta) kernels and autograd.

Layering (as in flash-attention's python side): these ops → :class:`~torch_ternary.TernaryTensor`
→ ``quantize_``. Every op here has

* a reference kernel in plain torch, registered for CPU and CUDA, that never holds more than
  :data:`CHUNK_ELEMENTS` unpacked weights at once (it walks the output features in row blocks);
  the CuPy kernels of ``torch_ternary.kernels`` replace the CUDA registration when available;
* a fake kernel, so ``torch.compile`` and meta tensors see shapes and dtypes without running it;
* an autograd formula where a float input can require grad (``x``, ``scale``, ``bias``).

Argument conventions shared by all ops:

* ``packed``: uint8 ``[N, Kp / 4]``, the 2-bit layout of :mod:`torch_ternary.format.packing`.
* ``scale``: float32 ``[S_n, S_k]`` with ``S_n`` in {1, N} and ``S_k = ceil(K / group_size)``.
* ``in_features``: ``K``. ``group_size``: ``G`` (``K`` for per-tensor and per-channel scales).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..format import packing
from . import backends as _backends
from ..quantization.absmean import dequantize_codes, num_groups, reduce_to_granules

#: Most unpacked weights a reference kernel materializes at once (4 Mi: 8 MB in bf16).
CHUNK_ELEMENTS = 1 << 22
_DEVICES = ("cpu", "cuda")
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check_weight_args(packed: Tensor, scale: Tensor, in_features: int, group_size: int) -> None:
    packing.check_packed(packed, in_features)
    n = packed.shape[0]
    if group_size <= 0:
        raise ValueError(f"group_size must be positive, got {group_size}")
    expect_k = num_groups(in_features, group_size)
    if scale.dtype != torch.float32 or scale.dim() != 2 or scale.shape[0] not in (1, n) or scale.shape[1] != expect_k:
        raise ValueError(
            f"scale must be float32 [1 or {n}, {expect_k}] for in_features={in_features}, "
            f"group_size={group_size}; got {scale.dtype} {tuple(scale.shape)}"
        )
    if scale.device != packed.device:
        raise ValueError(f"scale is on {scale.device} but packed weights are on {packed.device}")


def _check_activation(x: Tensor, in_features: int, what: str = "x") -> None:
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{what} must be float32, float16 or bfloat16, got {x.dtype}")
    if x.dim() < 1 or x.shape[-1] != in_features:
        raise ValueError(f"{what} must have last dimension {in_features}, got shape {tuple(x.shape)}")


def _check_linear_args(x: Tensor, packed: Tensor, scale: Tensor, bias: Optional[Tensor], in_features: int, group_size: int) -> None:
    _check_weight_args(packed, scale, in_features, group_size)
    _check_activation(x, in_features)
    if x.device != packed.device:
        raise ValueError(f"x is on {x.device} but the ternary weight is on {packed.device}")
    if bias is not None and (bias.shape != (packed.shape[0],) or bias.device != x.device or bias.dtype != x.dtype):
        raise ValueError(
            f"bias must be {x.dtype} of shape ({packed.shape[0]},) on {x.device}, "
            f"got {bias.dtype} {tuple(bias.shape)} on {bias.device}"
        )


def rows_per_chunk(in_features: int) -> int:
    """Output rows a reference kernel unpacks at once: ``max(1, CHUNK_ELEMENTS // K)``."""
    return max(1, CHUNK_ELEMENTS // max(in_features, 1))


def _row_blocks(n: int, in_features: int):
    step = rows_per_chunk(in_features)
    for n0 in range(0, n, step):
        yield n0, min(n, n0 + step)


def _scale_rows(scale: Tensor, n0: int, n1: int) -> Tensor:
    return scale if scale.shape[0] == 1 else scale[n0:n1]


def _dequant_rows(packed: Tensor, scale: Tensor, n0: int, n1: int, in_features: int, group_size: int, dtype: torch.dtype) -> Tensor:
    codes = packing.unpack_codes(packed[n0:n1], in_features)
    s = _scale_rows(scale, n0, n1).expand(n1 - n0, -1)
    return dequantize_codes(codes, s, group_size, dtype)


# ---------------------------------------------------------------------------------------- unpack
@torch.library.custom_op("torch_ternary::unpack", mutates_args=(), device_types=_DEVICES)
def unpack(packed: Tensor, in_features: int) -> Tensor:
    """Ternary codes of a packed weight.

    Args:
        packed: uint8 ``[N, Kp / 4]``.
        in_features: ``K``.

    Returns:
        int8 ``[N, K]`` in {-1, 0, 1}.
    """
    packing.check_packed(packed, in_features)
    out = torch.empty((packed.shape[0], in_features), dtype=torch.int8, device=packed.device)
    for n0, n1 in _row_blocks(packed.shape[0], in_features):
        out[n0:n1] = packing.unpack_codes(packed[n0:n1], in_features)
    return out


@unpack.register_fake
def _unpack_fake(packed: Tensor, in_features: int) -> Tensor:
    packing.check_packed(packed, in_features)
    return packed.new_empty((packed.shape[0], in_features), dtype=torch.int8)


# ------------------------------------------------------------------------------------ dequantize
@torch.library.custom_op("torch_ternary::dequantize", mutates_args=(), device_types=_DEVICES)
def dequantize(packed: Tensor, scale: Tensor, in_features: int, group_size: int, dtype: torch.dtype) -> Tensor:
    """Dense weight ``W_hat = s * q``.

    Args:
        packed: uint8 ``[N, Kp / 4]``. scale: float32 ``[S_n, S_k]``.
        in_features: ``K``. group_size: ``G``. dtype: output floating dtype.

    Returns:
        ``dtype`` ``[N, K]`` (product in float32, cast once).
    """
    _check_weight_args(packed, scale, in_features, group_size)
    out = torch.empty((packed.shape[0], in_features), dtype=dtype, device=packed.device)
    for n0, n1 in _row_blocks(packed.shape[0], in_features):
        out[n0:n1] = _dequant_rows(packed, scale, n0, n1, in_features, group_size, dtype)
    return out


@dequantize.register_fake
def _dequantize_fake(packed, scale, in_features, group_size, dtype):
    _check_weight_args(packed, scale, in_features, group_size)
    return packed.new_empty((packed.shape[0], in_features), dtype=dtype)


def reduce_to_scale(grad_weight: Tensor, codes: Tensor, scale_shape: tuple[int, int], group_size: int) -> Tensor:
    """``dL/ds`` from ``dL/dW_hat``: per-granule sums of ``grad_weight * q``.

    Args:
        grad_weight: ``[rows, K]`` gradient w.r.t. the dequantized rows (any float dtype).
        codes: int8 ``[rows, K]``.
        scale_shape: ``(S_n, S_k)``; ``S_n == 1`` sums over rows too.
        group_size: ``G``.

    Returns:
        float32 ``[rows or 1, S_k]``.
    """
    return reduce_to_granules(grad_weight.float() * codes.float(), scale_shape, group_size)


def _dequantize_setup(ctx, inputs, output):
    packed, scale, in_features, group_size, _ = inputs
    ctx.save_for_backward(packed)
    ctx.meta = (tuple(scale.shape), in_features, group_size)


def _dequantize_backward(ctx, grad):
    (packed,) = ctx.saved_tensors
    scale_shape, in_features, group_size = ctx.meta
    grad_scale = None
    if ctx.needs_input_grad[1]:
        codes = torch.ops.torch_ternary.unpack(packed, in_features)
        grad_scale = reduce_to_scale(grad, codes, scale_shape, group_size)
    return None, grad_scale, None, None, None


dequantize.register_autograd(_dequantize_backward, setup_context=_dequantize_setup)


# ---------------------------------------------------------------------------------------- linear
@torch.library.custom_op("torch_ternary::linear", mutates_args=(), device_types=_DEVICES)
def linear(x: Tensor, packed: Tensor, scale: Tensor, bias: Optional[Tensor], in_features: int, group_size: int) -> Tensor:
    """``y = x @ (s * q).T + bias``.

    Args:
        x: float32 / float16 / bfloat16 ``[..., K]``.
        packed: uint8 ``[N, Kp / 4]``. scale: float32 ``[S_n, S_k]``.
        bias: ``x.dtype`` ``[N]`` or None.
        in_features: ``K``. group_size: ``G``.

    Returns:
        ``x.dtype`` ``[..., N]``. The reference kernel casts ``s * q`` to ``x.dtype`` and multiplies
        with torch's matmul for that dtype (fp32 accumulation on CPU/CUDA).
    """
    _check_linear_args(x, packed, scale, bias, in_features, group_size)
    n = packed.shape[0]
    x2 = x.reshape(-1, in_features)
    blocks = list(_row_blocks(n, in_features))
    if len(blocks) == 1:
        w = _dequant_rows(packed, scale, 0, n, in_features, group_size, x.dtype)
        out = torch.nn.functional.linear(x2, w, bias)
    else:
        out = x2.new_empty((x2.shape[0], n))
        for n0, n1 in blocks:
            w = _dequant_rows(packed, scale, n0, n1, in_features, group_size, x.dtype)
            out[:, n0:n1] = torch.nn.functional.linear(x2, w, None if bias is None else bias[n0:n1])
    return out.reshape(*x.shape[:-1], n)


@linear.register_fake
def _linear_fake(x, packed, scale, bias, in_features, group_size):
    _check_linear_args(x, packed, scale, bias, in_features, group_size)
    return x.new_empty((*x.shape[:-1], packed.shape[0]))


@torch.library.custom_op("torch_ternary::linear_grad_input", mutates_args=(), device_types=_DEVICES)
def linear_grad_input(grad_out: Tensor, packed: Tensor, scale: Tensor, in_features: int, group_size: int) -> Tensor:
    """``dL/dx = grad_out @ (s * q)``.

    Args:
        grad_out: float ``[..., N]``. packed: uint8 ``[N, Kp / 4]``. scale: float32 ``[S_n, S_k]``.
        in_features: ``K``. group_size: ``G``.

    Returns:
        ``grad_out.dtype`` ``[..., K]``, accumulated over row blocks in float32.
    """
    _check_weight_args(packed, scale, in_features, group_size)
    _check_activation(grad_out, packed.shape[0], "grad_out")
    g2 = grad_out.reshape(-1, packed.shape[0])
    blocks = list(_row_blocks(packed.shape[0], in_features))
    if len(blocks) == 1:
        w = _dequant_rows(packed, scale, 0, packed.shape[0], in_features, group_size, grad_out.dtype)
        out = g2 @ w
    else:
        acc = torch.zeros((g2.shape[0], in_features), dtype=torch.float32, device=g2.device)
        for n0, n1 in blocks:
            w = _dequant_rows(packed, scale, n0, n1, in_features, group_size, grad_out.dtype)
            acc += (g2[:, n0:n1] @ w).float()
        out = acc.to(grad_out.dtype)
    return out.reshape(*grad_out.shape[:-1], in_features)


@linear_grad_input.register_fake
def _linear_grad_input_fake(grad_out, packed, scale, in_features, group_size):
    _check_weight_args(packed, scale, in_features, group_size)
    return grad_out.new_empty((*grad_out.shape[:-1], in_features))


@torch.library.custom_op("torch_ternary::linear_grad_scale", mutates_args=(), device_types=_DEVICES)
def linear_grad_scale(grad_out: Tensor, x: Tensor, packed: Tensor, scale: Tensor, in_features: int, group_size: int) -> Tensor:
    """``dL/ds``: per-granule sums of ``(grad_out^T x) * q``.

    Args:
        grad_out: float ``[..., N]``. x: float ``[..., K]`` (same leading shape).
        packed: uint8 ``[N, Kp / 4]``. scale: float32 ``[S_n, S_k]``.
        in_features: ``K``. group_size: ``G``.

    Returns:
        float32 tensor shaped like ``scale``.
    """
    _check_weight_args(packed, scale, in_features, group_size)
    n = packed.shape[0]
    g2 = grad_out.reshape(-1, n).float()
    x2 = x.reshape(-1, in_features).float()
    parts = []
    for n0, n1 in _row_blocks(n, in_features):
        gw = g2[:, n0:n1].t() @ x2
        codes = packing.unpack_codes(packed[n0:n1], in_features)
        parts.append(reduce_to_scale(gw, codes, tuple(scale.shape), group_size))
    if scale.shape[0] == 1:
        return torch.stack(parts).sum(dim=0)
    return torch.cat(parts, dim=0)


@linear_grad_scale.register_fake
def _linear_grad_scale_fake(grad_out, x, packed, scale, in_features, group_size):
    _check_weight_args(packed, scale, in_features, group_size)
    return torch.empty_like(scale)


def _linear_setup(ctx, inputs, output):
    x, packed, scale, bias, in_features, group_size = inputs
    ctx.save_for_backward(x, packed, scale)
    ctx.meta = (in_features, group_size, bias is not None)


def _linear_backward(ctx, grad):
    x, packed, scale = ctx.saved_tensors
    in_features, group_size, has_bias = ctx.meta
    grad_x = grad_scale = grad_bias = None
    if ctx.needs_input_grad[0]:
        grad_x = torch.ops.torch_ternary.linear_grad_input(grad, packed, scale, in_features, group_size)
    if ctx.needs_input_grad[2]:
        grad_scale = torch.ops.torch_ternary.linear_grad_scale(grad, x, packed, scale, in_features, group_size)
    if has_bias and ctx.needs_input_grad[3]:
        grad_bias = grad.reshape(-1, packed.shape[0]).sum(dim=0)
    return grad_x, None, grad_scale, grad_bias, None, None


linear.register_autograd(_linear_backward, setup_context=_linear_setup)


for _name, _opdef in (("unpack", unpack), ("dequantize", dequantize), ("linear", linear),
                      ("linear_grad_input", linear_grad_input), ("linear_grad_scale", linear_grad_scale)):
    _backends.route(_name, _opdef)
