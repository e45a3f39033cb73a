"""Absmean ternarization (BitNet b1.58), in plain deterministic torch.

For a weight ``W`` of shape ``[N, K]`` (``N`` output features, ``K`` input features) and a
partition of its entries into *granules* (the whole tensor, one output row, or one group of
``group_size`` consecutive input columns of one row):

    s_g = max(mean_{(n,k) in g} |W[n, k]|, eps)              (fp32, one per granule)
    q[n, k] = clip(round(W[n, k] / s_g), -1, 1)              (int8 in {-1, 0, +1})
    W_hat[n, k] = s_g * q[n, k]

``round`` is round-half-to-even (``torch.round``). The last group of a row may be shorter than
``group_size``; its mean is taken over its real entries only. See docs/quantization.md.

Scales are always float32 and shaped ``[S_n, S_k]``:

=============  ==================  =============================
granularity    scale shape         granule
=============  ==================  =============================
per_tensor     ``[1, 1]``          whole tensor
per_channel    ``[N, 1]``          one output row
per_group      ``[N, ceil(K/G)]``  ``G`` consecutive inputs of a row
=============  ==================  =============================
"""

from __future__ import annotations

from typing import Literal

import torch

from ..errors import InvalidWeightError, TernaryConfigError

Granularity = Literal["per_tensor", "per_channel", "per_group"]
GRANULARITIES: tuple[str, ...] = ("per_tensor", "per_channel", "per_group")

#: Lower bound of a scale: a granule of zeros gets this scale (and all-zero codes).
SCALE_EPS = 1e-8

#: Group sizes must be a multiple of this, so that one 32-bit packed word never spans two groups.
GROUP_MULTIPLE = 16


def check_weight(weight: torch.Tensor, name: str = "weight") -> None:
    """Raise :class:`InvalidWeightError` unless ``weight`` is a finite 2-D floating tensor.

    Args:
        weight: any dtype / shape; accepted only when floating point, 2-D, non-empty and finite
            (meta tensors skip the finiteness check).
        name: how the weight is named in the error message.
    """
    if not isinstance(weight, torch.Tensor):
        raise InvalidWeightError(f"{name}: expected a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() != 2:
        raise InvalidWeightError(f"{name}: expected a 2-D weight [out, in], got shape {tuple(weight.shape)}")
    if not weight.dtype.is_floating_point:
        raise InvalidWeightError(f"{name}: expected a floating-point weight, got {weight.dtype}")
    if weight.numel() == 0:
        raise InvalidWeightError(f"{name}: weight is empty, shape {tuple(weight.shape)}")
    if weight.device.type != "meta" and not bool(torch.isfinite(weight).all()):
        bad = int((~torch.isfinite(weight)).sum())
        raise InvalidWeightError(f"{name}: weight has {bad} NaN/Inf values; refusing to quantize it")


def resolve_group_size(granularity: str, group_size: int, in_features: int) -> int:
    """The group size actually used along K for a granularity (``in_features`` unless per_group).

    Args:
        granularity: one of :data:`GRANULARITIES`.
        group_size: requested ``G`` for ``per_group``: a positive multiple of :data:`GROUP_MULTIPLE`
            (or ``K`` itself); a ``G`` larger than ``K`` is clipped to ``K``.
        in_features: ``K``.
    """
    if granularity not in GRANULARITIES:
        raise TernaryConfigError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if granularity != "per_group" or group_size == in_features:
        return in_features
    if not isinstance(group_size, int) or group_size <= 0 or group_size % GROUP_MULTIPLE:
        raise TernaryConfigError(
            f"group_size must be a positive multiple of {GROUP_MULTIPLE}, got {group_size!r}"
        )
    return min(group_size, in_features)


def num_groups(in_features: int, group_size: int) -> int:
    """Number of scale columns ``S_k = ceil(K / G)``."""
    return -(-in_features // group_size)


def absmean_scale(weight: torch.Tensor, granularity: str = "per_channel", group_size: int = 128) -> torch.Tensor:
    """Absmean scales of ``weight``.

    Args:
        weight: floating tensor ``[N, K]`` (any floating dtype).
        granularity: ``per_tensor``, ``per_channel`` or ``per_group``.
        group_size: ``G`` for ``per_group``.

    Returns:
        float32 tensor ``[1, 1]``, ``[N, 1]`` or ``[N, ceil(K/G)]``, every entry ``>= SCALE_EPS``.
    """
    n, k = weight.shape
    g = resolve_group_size(granularity, group_size, k)
    a = weight.detach().abs().float()
    if granularity == "per_tensor":
        s = a.mean().reshape(1, 1)
    elif g == k:
        s = a.mean(dim=1, keepdim=True)
    else:
        groups = num_groups(k, g)
        padded = torch.nn.functional.pad(a, (0, groups * g - k))
        sums = padded.reshape(n, groups, g).sum(dim=2)
        counts = torch.full((groups,), float(g), device=a.device)
        counts[-1] = k - (groups - 1) * g
        s = sums / counts
    return s.clamp_min(SCALE_EPS)


def expand_scale(scale: torch.Tensor, out_features: int, in_features: int, group_size: int) -> torch.Tensor:
    """Broadcast a scale of shape ``[S_n, S_k]`` to one value per weight.

    Args:
        scale: float32 ``[1 or N, ceil(K/G)]``.
        out_features: ``N``. in_features: ``K``. group_size: ``G``.

    Returns:
        float32 ``[N, K]`` (a broadcast view when possible, materialized only for groups).
    """
    if scale.shape[1] == 1:
        return scale.expand(out_features, in_features)
    full = scale.repeat_interleave(group_size, dim=1)[:, :in_features]
    return full.expand(out_features, in_features)


def reduce_to_granules(values: torch.Tensor, scale_shape: tuple[int, int], group_size: int) -> torch.Tensor:
    """Per-granule sums of per-weight ``values`` (the inverse of :func:`expand_scale`'s broadcast, for gradients).

    Args:
        values: float ``[rows, K]`` (summed in its dtype).
        scale_shape: ``(S_n, S_k)``; ``S_n == 1`` sums over rows too.
        group_size: ``G``.

    Returns:
        ``values.dtype`` ``[rows or 1, S_k]``.
    """
    rows, k = values.shape
    groups = scale_shape[1]
    if groups > 1:
        values = torch.nn.functional.pad(values, (0, groups * group_size - k)).reshape(rows, groups, group_size).sum(dim=2)
    else:
        values = values.sum(dim=1, keepdim=True)
    return values.sum(dim=0, keepdim=True) if scale_shape[0] == 1 else values


def ternary_codes(weight: torch.Tensor, scale: torch.Tensor, group_size: int) -> torch.Tensor:
    """Codes ``q = clip(round(W / s), -1, 1)``.

    Args:
        weight: floating ``[N, K]``.
        scale: float32 ``[1 or N, ceil(K/G)]`` from :func:`absmean_scale`.
        group_size: ``G`` used to build ``scale`` (``K`` unless per_group).

    Returns:
        int8 ``[N, K]`` with values in {-1, 0, +1}.
    """
    n, k = weight.shape
    s = expand_scale(scale.float(), n, k, group_size)
    return torch.round(weight.detach().float() / s).clamp_(-1, 1).to(torch.int8)


def dequantize_codes(
    codes: torch.Tensor, scale: torch.Tensor, group_size: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``W_hat = s * q``.

    Args:
        codes: int8 ``[N, K]`` in {-1, 0, 1}.
        scale: float32 ``[1 or N, ceil(K/G)]``.
        group_size: ``G``.
        dtype: output dtype.

    Returns:
        ``dtype`` tensor ``[N, K]``, equal to ``(s * q)`` formed in float32 and cast once: since
        ``q`` is in {-1, 0, 1}, the product is formed directly in ``dtype`` with the same result.
    """
    n, k = codes.shape
    return codes.to(dtype) * expand_scale(scale.to(dtype), n, k, group_size)
