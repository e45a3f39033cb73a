"""Activation-aware layer-wise calibration: per-channel codes and scales that minimise each layer's output error.

For a linear with weight ``W`` ``[N, K]`` and calibration inputs ``X`` ``[M, K]`` (captured on the
teacher's own trajectories), with ``H = X^T X`` (``[K, K]``), the output error of row ``n`` with codes
``q`` and scale ``s`` is

    e(q, s) = || X w - s X q ||^2 = w^T H w - 2 s q^T H w + s^2 q^T H q.

For fixed codes the best scale is closed-form, ``s* = (q^T H w) / (q^T H q)``. For a fixed scale
the codes are ``q = clip(round(w / s), -1, 1)`` (the zero threshold is ``s / 2``). The method
alternates the two from several starting thresholds and keeps, per row, the lowest error.
Optionally (``gptq=True``) the codes are then chosen column by column with GPTQ's error feedback
(the not-yet-quantized columns absorb each column's rounding error through ``H^{-1}``), followed by
one last closed-form rescale.

Bias correction: when the linear has a bias, the part of the error that is constant over tokens,
``(W - W_hat) mu`` (``mu`` the mean input), is folded into the existing bias, and codes and scales
are fitted to the *centred* second moment ``H - M mu mu^T`` instead. Inputs with large constant
components (LayerNorm outlier channels in BERT-like models, AdaLN inputs) would otherwise pull every
row's scale towards matching a near-constant offset that the bias can absorb exactly. No weight is
added: the bias already exists.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

from ..quantization.absmean import SCALE_EPS, check_weight
from ..tensor import TernaryTensor

#: Starting zero-thresholds, in units of mean|w| of the row (0.7 is the TWN rule of thumb).
THRESHOLDS = (0.4, 0.55, 0.7, 0.85, 1.0)


class GramRecorder:
    """Accumulates ``H = sum X^T X`` (float64) of the inputs of chosen linears through forward pre-hooks.

    Args:
        model: the module holding the linears.
        names: dotted names of the linears to watch.
        max_rows: per call, at most this many input rows (tokens) are used, evenly spaced.
    """

    def __init__(self, model: nn.Module, names: Iterable[str], max_rows: int = 4096):
        self.grams: dict[str, torch.Tensor] = {}
        self.sums: dict[str, torch.Tensor] = {}
        self.rows: dict[str, int] = {}
        self.max_rows = max_rows
        self._handles = [model.get_submodule(n).register_forward_pre_hook(self._hook(n)) for n in names]

    def _hook(self, name: str):
        def hook(module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1])
            if x.shape[0] > self.max_rows:
                x = x[torch.linspace(0, x.shape[0] - 1, self.max_rows, device=x.device).long()]
            x = x.double()
            g, m = x.T @ x, x.sum(dim=0)
            self.grams[name] = self.grams[name] + g if name in self.grams else g
            self.sums[name] = self.sums[name] + m if name in self.sums else m
            self.rows[name] = self.rows.get(name, 0) + x.shape[0]

        return hook

    def moments(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(E[x x^T], E[x])`` of a watched linear's inputs: float64 ``[K, K]`` and ``[K]``."""
        n = max(self.rows[name], 1)
        return self.grams[name] / n, self.sums[name] / n

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def _errors(w: torch.Tensor, q: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the closed-form scale for codes ``q`` and the resulting output error (up to w^T H w)."""
    qh = q @ h
    num = (qh * w).sum(dim=1)
    den = (qh * q).sum(dim=1)
    s = torch.where(den > 0, num / den.clamp_min(1e-30), torch.zeros_like(num)).clamp_min(SCALE_EPS)
    err = -2 * s * num + s * s * den
    return s, err


def alternate(w: torch.Tensor, h: torch.Tensor, iters: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row codes and scales minimising ``||X w - s X q||`` by alternating codes and closed-form scale.

    Args:
        w: float ``[N, K]``. h: ``[K, K]`` Gram matrix of the inputs, same dtype.
        iters: alternations per starting threshold.

    Returns:
        ``(codes, scale)``: ``[N, K]`` in {-1, 0, 1} and ``[N]``, in ``w.dtype``.
    """
    mean_abs = w.abs().mean(dim=1, keepdim=True).clamp_min(SCALE_EPS)
    best_q, best_s = None, None
    best_err = torch.full((w.shape[0],), float("inf"), dtype=w.dtype, device=w.device)
    for t in THRESHOLDS:
        q = torch.sign(w) * (w.abs() > t * mean_abs)
        for _ in range(iters):
            s, err = _errors(w, q, h)
            q = torch.clamp(torch.round(w / s[:, None]), -1, 1)
        s, err = _errors(w, q, h)
        better = err < best_err
        if best_q is None:
            best_q, best_s, best_err = q.clone(), s.clone(), err.clone()
        else:
            best_q[better], best_s[better], best_err[better] = q[better], s[better], err[better]
    return best_q, best_s


def gptq_codes(w: torch.Tensor, h: torch.Tensor, scale: torch.Tensor, damp: float = 0.01, block: int = 128) -> torch.Tensor:
    """Codes chosen column by column with GPTQ error feedback, for fixed per-row scales.

    Args:
        w: float64 ``[N, K]``. h: float64 ``[K, K]``. scale: float64 ``[N]``.
        damp: diagonal damping, as a fraction of the mean diagonal of ``h``.
        block: columns processed per lazy-update block.

    Returns:
        float64 ``[N, K]`` codes in {-1, 0, 1}.
    """
    k = w.shape[1]
    h = h.clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w = w.clone()
    w[:, dead] = 0
    h += damp * torch.diag(h).mean() * torch.eye(k, dtype=h.dtype, device=h.device)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    q = torch.zeros_like(w)
    s = scale[:, None]
    for b0 in range(0, k, block):
        b1 = min(k, b0 + block)
        wb = w[:, b0:b1].clone()
        err = torch.zeros_like(wb)
        hb = hinv[b0:b1, b0:b1]
        for i in range(b1 - b0):
            col = wb[:, i]
            qc = torch.clamp(torch.round(col / s[:, 0]), -1, 1)
            q[:, b0 + i] = qc
            e = (col - s[:, 0] * qc) / hb[i, i]
            wb[:, i:] -= e[:, None] * hb[i, i:][None, :]
            err[:, i] = e
        w[:, b1:] -= err @ hinv[b0:b1, b1:]
    return q


def calibrate_weight(weight: torch.Tensor, gram: torch.Tensor, gptq: bool = False, dtype: torch.dtype | None = None) -> TernaryTensor:
    """Per-channel ternary weight minimising the output error on inputs with Gram matrix ``gram``.

    Args:
        weight: floating ``[N, K]``, finite.
        gram: ``[K, K]`` (any float dtype), ``sum X^T X`` of the layer's inputs.
        gptq: refine the codes with GPTQ error feedback, then rescale.
        dtype: logical dtype of the result (default ``weight.dtype``).
    """
    check_weight(weight)
    w = weight.detach().double()
    h = gram.to(device=w.device, dtype=torch.float64)
    h = h / h.diagonal().mean().clamp_min(1e-30)  # scale-free; the optimum does not depend on it
    q, s = alternate(w.float(), h.float())  # float32 is plenty to rank candidate codes; 10x faster on CPU
    q, s = q.double(), s.double()
    if gptq:
        q = gptq_codes(w, h, s)
        s, _ = _errors(w, q, h)
    return TernaryTensor.from_codes(q.to(torch.int8), s[:, None].float(), weight.shape[1], dtype or weight.dtype)


def layerwise_calibrate(model: nn.Module, reference: nn.Module, run: Callable[[nn.Module], None],
                        gptq: bool = False, max_rows: int = 4096, ranks=None) -> dict[str, float]:
    """Replace the ternary weights of ``model`` by activation-aware ones, in place.

    Args:
        model: the ternarized model (its ternary linears are recalibrated).
        reference: the full-precision model with the same module names; its weights are the targets
            and its inputs (captured while ``run(reference)`` feeds it calibration data) define ``H``.
        run: calls the reference model on calibration data (e.g. replays teacher trajectories).
        gptq: use GPTQ error feedback for the codes.
        max_rows: input rows sampled per layer and call.
        ranks: a :class:`~.distributed.Ranks` (default one process). With N ranks, ``run`` feeds each rank
            its share of the data; the moments are all-reduced (summed over ranks, layers in a fixed
            order), linear ``l`` is solved on rank ``l % N`` and its codes, scale and bias broadcast.

    Returns:
        Per layer, the relative output error ``||X W^T + b - X W_hat^T - b_hat||^2 / ||X W^T||^2`` on the
        calibration inputs, before (absmean, no correction) -> after, as ``{name: (before, after)}``.
    """
    from .distributed import Ranks

    ranks = ranks or Ranks()
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and isinstance(m.weight, TernaryTensor)]
    recorder = GramRecorder(reference, names, max_rows)
    try:
        with torch.no_grad():
            run(reference)
    finally:
        recorder.remove()
    if ranks.distributed:
        _reduce_moments(recorder, reference, names, ranks)
    solved = {name: _solve(model, reference, recorder, name, gptq) for j, name in enumerate(names) if ranks.owns(j)}
    errors = {}
    for j, name in enumerate(names):
        linear = model.get_submodule(name)
        tt, bias, err = solved[name] if name in solved else _receive_like(linear)
        if ranks.distributed:
            tt, bias, err = _broadcast_solution(tt, bias, err, src=j % ranks.world, ranks=ranks)
        linear.weight = nn.Parameter(tt, requires_grad=False)
        if bias is not None:
            linear.bias = nn.Parameter(bias, requires_grad=linear.bias.requires_grad)
        errors[name] = err
    return errors


def _reduce_moments(recorder: GramRecorder, reference: nn.Module, names: list[str], ranks) -> None:
    """Sum each linear's Gram matrix, input sum and row count over ranks (a rank that saw no call of a
    linear contributes zeros)."""
    from .distributed import all_reduce_sum

    for name in names:
        k = reference.get_submodule(name).weight.shape[1]
        device = reference.get_submodule(name).weight.device
        g = recorder.grams.get(name, torch.zeros(k, k, dtype=torch.float64, device=device))
        m = recorder.sums.get(name, torch.zeros(k, dtype=torch.float64, device=device))
        rows = torch.tensor([float(recorder.rows.get(name, 0))], dtype=torch.float64, device=device)
        recorder.grams[name], recorder.sums[name] = all_reduce_sum(g, ranks), all_reduce_sum(m, ranks)
        recorder.rows[name] = int(all_reduce_sum(rows, ranks).item())


def _solve(model: nn.Module, reference: nn.Module, recorder: GramRecorder, name: str, gptq: bool):
    """One linear's solution: ``(TernaryTensor, corrected bias or None, (error before, error after))``."""
    target = reference.get_submodule(name).weight.detach()
    second, mean = recorder.moments(name)
    linear = model.get_submodule(name)
    correct_bias = linear.bias is not None
    h = second - torch.outer(mean, mean) if correct_bias else second
    before = relative_output_error(target, linear.weight.dequantize(torch.float32), second)
    tt = calibrate_weight(target, h, gptq=gptq, dtype=linear.weight.dtype).to(linear.weight.device)
    bias = None
    if correct_bias:
        shift = (target.double() - tt.dequantize(torch.float64)) @ mean.to(target.device)
        ref_bias = reference.get_submodule(name).bias.detach()
        bias = (ref_bias.double() + shift).to(linear.bias.dtype)
    return tt, bias, (before, relative_output_error(target, tt.dequantize(torch.float32), h, second))


def _receive_like(linear: nn.Linear):
    """Buffers shaped like ``linear``'s solution, to receive it from the rank that solved it."""
    w = linear.weight
    tt = TernaryTensor(torch.empty_like(w.packed), torch.empty_like(w.scale), tuple(w.shape), w.dtype, w.group_size,
                       activations=w.activations)
    bias = None if linear.bias is None else torch.empty_like(linear.bias.detach())
    return tt, bias, (0.0, 0.0)


def _broadcast_solution(tt: TernaryTensor, bias, err, src: int, ranks):
    from .distributed import broadcast

    packed, scale = tt.packed.contiguous(), tt.scale.contiguous()
    broadcast(packed, src, ranks)
    broadcast(scale, src, ranks)
    if bias is not None:
        bias = broadcast(bias.contiguous(), src, ranks)
    e = broadcast(torch.tensor(err, dtype=torch.float64, device=packed.device), src, ranks)
    out = TernaryTensor(packed, scale, tuple(tt.shape), tt.dtype, tt.group_size, activations=tt.activations)
    return out, bias, (float(e[0]), float(e[1]))


def relative_output_error(w: torch.Tensor, w_hat: torch.Tensor, gram: torch.Tensor,
                          signal_gram: torch.Tensor | None = None) -> float:
    """``tr((W - W_hat) H (W - W_hat)^T) / tr(W S W^T)`` for float ``[N, K]`` weights, ``[K, K]`` ``H = gram``
    and ``S = signal_gram`` (default ``H``; pass the raw second moment when ``H`` is centred by a bias correction)."""
    h = gram.double()
    sig = h if signal_gram is None else signal_gram.double()
    d = (w.double() - w_hat.double())
    return float(((d @ h) * d).sum() / ((w.double() @ sig) * w.double()).sum().clamp_min(1e-30))
