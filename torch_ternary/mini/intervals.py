"""95 % intervals for "model B keeps x % of model A's score", bootstrapped over prompts and seeds.

Both models judge the same images grid: prompt ``p`` (a list that may repeat captions: the 72
evaluation prompts hold 57 distinct ones) times seed ``s``. The ratio's uncertainty comes from which
captions and which seeds were drawn, so one bootstrap replicate resamples, with replacement, the
*distinct* captions (each drawn caption brings all its rows) and, independently, the seeds, and takes
``sum(B hits) / sum(A hits)`` over the selected cells — paired: both models see the same cells.
"""

from __future__ import annotations

import numpy as np

from .grammar import category_of


def hits_grid(hits: list[bool] | np.ndarray, n_prompts: int, n_seeds: int) -> np.ndarray:
    """bool ``[n_prompts, n_seeds]`` from ``score(..., return_hits=True)["hits"]`` (prompt-major order)."""
    a = np.asarray(hits, dtype=bool)
    if a.size != n_prompts * n_seeds:
        raise ValueError(f"{a.size} hits for {n_prompts} prompts x {n_seeds} seeds")
    return a.reshape(n_prompts, n_seeds)


def ratio_interval(hits_a: np.ndarray, hits_b: np.ndarray, prompts: list[str], replicates: int = 4000,
                   seed: int = 0, level: float = 0.95) -> dict:
    """Point estimate and percentile interval of ``score(B) / score(A)``.

    Args:
        hits_a, hits_b: bool ``[len(prompts), S]``: whether each image of model A / B satisfies its caption.
        prompts: the captions of the rows (repeats allowed; rows of one caption are resampled together).
        replicates: bootstrap replicates. seed: their generator's seed. level: interval coverage.

    Returns:
        ``{"ratio", "low", "high", "images", "hits_a", "hits_b", "distinct_prompts", "seeds"}``.
    """
    a, b = np.asarray(hits_a, bool), np.asarray(hits_b, bool)
    if a.shape != b.shape or a.ndim != 2 or a.shape[0] != len(prompts):
        raise ValueError(f"hits shapes {a.shape}, {b.shape} do not match {len(prompts)} prompts x seeds")
    distinct = sorted(set(prompts))
    rows = [np.array([i for i, p in enumerate(prompts) if p == q]) for q in distinct]
    # per distinct caption and seed: hits summed over that caption's rows
    sa = np.stack([a[r].sum(0) for r in rows]).astype(np.float64)  # [D, S]
    sb = np.stack([b[r].sum(0) for r in rows]).astype(np.float64)
    rng = np.random.default_rng(seed)
    d, s = sa.shape
    ratios = np.empty(replicates)
    for k in range(replicates):
        pi = np.bincount(rng.integers(d, size=d), minlength=d).astype(np.float64)
        si = np.bincount(rng.integers(s, size=s), minlength=s).astype(np.float64)
        ratios[k] = (pi @ sb @ si) / max(pi @ sa @ si, 1e-12)
    tail = (1 - level) / 2
    return {"ratio": float(b.sum() / max(a.sum(), 1)), "low": float(np.quantile(ratios, tail)),
            "high": float(np.quantile(ratios, 1 - tail)), "images": int(a.size), "hits_a": int(a.sum()),
            "hits_b": int(b.sum()), "distinct_prompts": d, "seeds": s}


def category_ratio_intervals(hits_a: np.ndarray, hits_b: np.ndarray, prompts: list[str], **kwargs) -> dict:
    """:func:`ratio_interval` of each category present in ``prompts`` (same arguments)."""
    cats: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        cats.setdefault(category_of(p), []).append(i)
    a, b = np.asarray(hits_a, bool), np.asarray(hits_b, bool)
    return {c: ratio_interval(a[idx], b[idx], [prompts[i] for i in idx], **kwargs) for c, idx in cats.items()}
