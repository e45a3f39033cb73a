"""W1.58A8: ternary weights times dynamically quantized 8-bit activations (``torch_ternary::linear_a8``).

At large token counts (FLUX at 1024²: 4608 tokens per linear) a ternary linear is compute bound,
and 2-bit weights with bf16 math cannot beat a bf16 GEMM. int8 and fp8 tensor cores run at twice
the bf16 rate, and ternary weights are exact in both, so the activations are quantized per token
on the fly and the product runs on those tensor cores.

The op's arithmetic (what the plain-torch reference computes and the CUDA path reproduces):

1. **Per-token quantization** of ``x`` ``[M, K]`` (:func:`quantize_activations`), in float32:
   ``amax = max_k |x[m, k]|``, ``s[m] = amax / QMAX`` (``QMAX`` = 127 for int8, 448 for fp8 e4m3;
   ``s = 1`` when ``amax < 2^-100``), then ``q = clamp(round_half_even(x / s), -127, 127)`` as int8
   (NaN -> 0), or ``q = e4m3(clamp(x / s, -448, 448))`` (round to nearest even).
2. **The integer / fp8 product** ``acc[m, n] = sum_k q[m, k] * c[n, k]`` with the ternary codes
   ``c`` in {-1, 0, 1}. int8: exact (an int32 on the GPU; in float32 on the reference, exact since
   ``|acc| <= 127 K < 2^24`` for ``K < 132104``, float64 beyond). fp8: accumulated in float32.
3. **Epilogue** ``y = x.dtype(((acc * s[m]) * w[n]) + bias[n])`` with the weight scale ``w``
   (per channel ``[N, 1]`` or per tensor ``[1, 1]``), float32, in this order, rounded once.

Per-group weight scales (``S_k > 1``) cannot be applied after a single GEMM; they are refused with
:class:`~torch_ternary.errors.UnsupportedOperationError` here and with
:class:`~torch_ternary.errors.TernaryConfigError` at quantize time (``TernaryConfig``).

Autograd: a straight-through estimator for the activation rounding: the gradients are those of
the 16-bit op ``torch_ternary::linear`` (``dL/dx = g @ (s*q)``, ``dL/dscale``, ``dL/dbias``).

Routing: a ``TernaryTensor`` whose ``activations`` is ``"int8"`` / ``"fp8"`` sends ``F.linear``
here when the call has at least :data:`A8_MIN_ROWS` rows (tokens x batch); smaller calls (FLUX's
AdaLN modulation linears run at M = batch) keep 16-bit activations: they are memory bound, where
8-bit math gains nothing, and the skinny kernel serves them.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..errors import TernaryConfigError, UnsupportedOperationError
from ..format import packing
from . import backends as _backends
from . import ternary_linear

#: Values of ``TernaryConfig.activations`` / ``TernaryTensor.activations``.
ACTIVATION_MODES = ("16bit", "int8", "fp8")
#: The 8-bit formats of ``linear_a8`` (its ``fmt`` argument).
A8_FORMATS = ("int8", "fp8")
#: Largest |code| per format: int8 symmetric [-127, 127]; fp8 e4m3fn's largest finite value.
QMAX = {"int8": 127.0, "fp8": 448.0}
#: Rows whose max |x| is below this get scale 1 (and all-zero codes): keeps x / s clear of subnormals.
TINY_AMAX = 2.0 ** -100
#: ``F.linear`` on an A8 weight uses ``linear_a8`` from this many rows (``M = x.numel() // K``) on.
A8_MIN_ROWS = 17
#: Largest K for which the float32 reference product of int8 x ternary is exact (127 K < 2^24).
EXACT_F32_MAX_K = (1 << 24) // 127


def check_activation_mode(mode: str, what: str = "activations") -> str:
    """Return ``mode`` if it is one of :data:`ACTIVATION_MODES`, else raise :class:`TernaryConfigError`."""
    if mode not in ACTIVATION_MODES:
        raise TernaryConfigError(f"{what} must be one of {ACTIVATION_MODES}, got {mode!r}")
    return mode


def per_group_refusal(granularity_or_groups) -> str:
    """The message of the per-group + A8 refusal (shared by the config, the tensor and the op)."""
    return (
        f"8-bit activations need one weight scale per output channel (or per tensor): per-group scales "
        f"({granularity_or_groups}) cannot be applied in a single GEMM epilogue. Use granularity='per_channel' "
        "(or 'per_tensor') with activations='int8' / 'fp8', or keep activations='16bit' for per-group weights"
    )


def fp8_dtype() -> torch.dtype:
    """``torch.float8_e4m3fn``; raises :class:`UnsupportedOperationError` on a torch without it."""
    dtype = getattr(torch, "float8_e4m3fn", None)
    if dtype is None:  # pragma: no cover - torch < 2.1
        raise UnsupportedOperationError("activations='fp8' needs torch.float8_e4m3fn (torch >= 2.1)")
    return dtype


# ------------------------------------------------------------------------------ quantization
def quantize_activations(x2: Tensor, fmt: str) -> tuple[Tensor, Tensor]:
    """Per-token absmax quantization of activations (the reference of ``cuda/act_quant.cu``).

    Args:
        x2: float32 / float16 / bfloat16 ``[M, K]``.
        fmt: ``"int8"`` or ``"fp8"``.

    Returns:
        ``(q, s)``: ``q`` int8 ``[M, K]`` (fmt int8) or ``torch.float8_e4m3fn`` ``[M, K]`` (fmt fp8),
        and ``s`` float32 ``[M]`` with ``x ~= s[:, None] * q``.
    """
    if fmt not in A8_FORMATS:
        raise ValueError(f"fmt must be one of {A8_FORMATS}, got {fmt!r}")
    xf = x2.float()
    amax = xf.abs().amax(dim=-1) if xf.shape[-1] > 0 else xf.new_zeros(xf.shape[:-1])
    # a full tensor divisor, not a Python scalar: torch's CUDA kernels turn division by a scalar
    # into a multiplication by its reciprocal, which rounds differently from the kernel's division
    s = amax / torch.full_like(amax, QMAX[fmt])
    s = torch.where(amax < TINY_AMAX, torch.ones_like(s), s)
    v = xf / s[:, None]
    if fmt == "int8":
        q = torch.nan_to_num(torch.round(v), nan=0.0).clamp_(-127.0, 127.0).to(torch.int8)
    else:
        q = v.clamp(-QMAX["fp8"], QMAX["fp8"]).to(fp8_dtype())
    return q, s


# --------------------------------------------------------------------------------- checks
def check_a8_args(x: Tensor, packed: Tensor, scale: Tensor, bias: Optional[Tensor], in_features: int,
                  group_size: int, fmt: str) -> None:
    """The argument checks of ``linear_a8``: those of ``linear``, a known ``fmt``, no per-group scales."""
    ternary_linear._check_linear_args(x, packed, scale, bias, in_features, group_size)
    if fmt not in A8_FORMATS:
        raise ValueError(f"fmt must be one of {A8_FORMATS}, got {fmt!r}")
    if scale.shape[1] != 1:
        raise UnsupportedOperationError(per_group_refusal(f"{scale.shape[1]} groups of {group_size}"))


def weight_scale_vector(scale: Tensor) -> Tensor:
    """float32 ``[N]`` (per channel) or ``[1]`` (per tensor) view of a ``[S_n, 1]`` weight scale."""
    return scale.reshape(scale.shape[0])


# ------------------------------------------------------------------------------------- op
@torch.library.custom_op("torch_ternary::linear_a8", mutates_args=(), device_types=("cpu", "cuda"))
def linear_a8(x: Tensor, packed: Tensor, scale: Tensor, bias: Optional[Tensor], in_features: int, group_size: int,
              fmt: str) -> Tensor:
    """``y = x.dtype(((q_x @ c.T) * s_x) * s_w + bias)`` with per-token 8-bit activations.

    Args:
        x: float32 / float16 / bfloat16 ``[..., K]``.
        packed: uint8 ``[N, Kp / 4]`` ternary codes. scale: float32 ``[S_n, 1]`` (``S_n`` in {1, N}).
        bias: ``x.dtype`` ``[N]`` or None.
        in_features: ``K``. group_size: ``G`` (``K``: per-group scales are refused).
        fmt: ``"int8"`` or ``"fp8"`` (e4m3fn).

    Returns:
        ``x.dtype`` ``[..., N]``. The reference (plain torch, CPU and CUDA) simulates the
        quantization exactly (module docstring) and walks the outputs in row blocks of at most
        ``ternary_linear.CHUNK_ELEMENTS`` weights.
    """
    check_a8_args(x, packed, scale, bias, in_features, group_size, fmt)
    n = packed.shape[0]
    x2 = x.reshape(-1, in_features)
    q, s = quantize_activations(x2, fmt)
    exact_dtype = torch.float32 if fmt == "fp8" or in_features <= EXACT_F32_MAX_K else torch.float64
    qf = q.to(exact_dtype)
    sw = weight_scale_vector(scale)
    out = x2.new_empty((x2.shape[0], n))
    for n0, n1 in ternary_linear._row_blocks(n, in_features):
        codes = packing.unpack_codes(packed[n0:n1], in_features).to(exact_dtype)
        acc = (qf @ codes.T).float()
        w = sw if sw.shape[0] == 1 else sw[n0:n1]
        y = acc * s[:, None] * w[None, :]
        if bias is not None:
            y = y + bias[n0:n1].float()
        out[:, n0:n1] = y.to(x.dtype)
    return out.reshape(*x.shape[:-1], n)


@linear_a8.register_fake
def _linear_a8_fake(x, packed, scale, bias, in_features, group_size, fmt):
    check_a8_args(x, packed, scale, bias, in_features, group_size, fmt)
    return x.new_empty((*x.shape[:-1], packed.shape[0]))


def _linear_a8_setup(ctx, inputs, output):
    ternary_linear._linear_setup(ctx, inputs[:6], output)  # the 7th input (activation format) needs no gradient


def _linear_a8_backward(ctx, grad):
    """Straight-through estimator: the gradients of the 16-bit ``torch_ternary::linear``."""
    return (*ternary_linear._linear_backward(ctx, grad), None)


linear_a8.register_autograd(_linear_a8_backward, setup_context=_linear_a8_setup)


def uses_a8(activations: str, x: Tensor, in_features: int) -> bool:
    """Whether ``F.linear(x, w)`` with a weight of activation mode ``activations`` runs ``linear_a8``."""
    return activations != "16bit" and x.numel() >= A8_MIN_ROWS * max(in_features, 1)


_backends.route("linear_a8", linear_a8)
