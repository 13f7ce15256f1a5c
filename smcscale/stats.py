r"""Summary statistics shared by the library, its benchmarks, notebooks and tests.

Engine level: this module imports only ``math``, ``numpy`` (and nothing from the rest of
smcscale). Everything here is plain NumPy on host arrays, in float64.

Binomial proportions
    :func:`wilson_interval` — the Wilson score interval for ``k`` successes in ``n`` trials,
    the set of ``p`` with ``|p̂ − p| ≤ z √(p(1−p)/n)``:

    .. math::
        \frac{\hat p + z^2/(2n)}{1 + z^2/n} \pm
        \frac{z}{1 + z^2/n}\sqrt{\frac{\hat p(1-\hat p)}{n} + \frac{z^2}{4n^2}},

    clipped to ``[0, 1]`` (Wilson 1927; Brown, Cai & DasGupta 2001, *Statist. Sci.* 16).

Ranks
    :func:`average_ranks` — 1-based ranks with ties given the mean of the ranks they span.
    :func:`binary_auc` — the ROC AUC, i.e. the Mann–Whitney statistic
    ``P(s₊ > s₋) + ½ P(s₊ = s₋)`` over all (positive, negative) pairs, computed from the
    rank sum of the positives ``R₊`` as ``(R₊ − n₊(n₊+1)/2) / (n₊ n₋)`` (Mann & Whitney 1947;
    Hanley & McNeil 1982, *Radiology* 143). :func:`spearman` — Pearson correlation of the
    average ranks (Spearman 1904).

MCMC output (a chain is an array whose axis 0 is the iteration; other axes are independent
scalar functionals)
    :func:`batch_means_se` — split the first ``B·m`` iterations into ``B`` consecutive
    batches of length ``m``, take the batch means ``b₁..b_B`` and return
    ``sd(b; ddof=1) / √B``, a consistent estimate (for fixed ``B``, ``m → ∞``) of the Monte
    Carlo standard error of the chain mean ``√(σ²_∞ / n)``, where
    ``σ²_∞ = γ₀ + 2 Σ_{l≥1} γ_l`` is the long-run variance (Flegal & Jones 2010,
    *Ann. Statist.* 38; Geyer 1992, *Statist. Sci.* 7).

    :func:`autocorrelation` — ``ρ̂_l = (1/(n−l)) Σ_t (x_t − x̄)(x_{t+l} − x̄) / γ̂₀`` with
    ``γ̂₀ = (1/n) Σ_t (x_t − x̄)²``, for ``l = 0..max_lag`` (computed by FFT); a constant
    chain has ``ρ̂_l = 1`` at every lag (it never decorrelates).

    :func:`integrated_autocorrelation_time` — ``τ = 1 + 2 Σ_{l≥1} ρ_l``, the factor by which
    the chain's variance of the mean exceeds that of ``n`` independent draws
    (``σ²_∞ = τ γ₀``; effective sample size ``n / τ``). The sum is truncated before the first
    negative ``ρ̂_l`` (Geyer's initial positive sequence idea in its simplest form; Geyer
    1992) and at ``max_lag`` (at most ``n/4``); a constant chain has ``τ = ∞``. For an AR(1)
    chain ``x_t = ρ x_{t−1} + ε_t``, ``ρ_l = ρ^l`` and ``τ = (1+ρ)/(1−ρ)``. The estimator's
    standard deviation is about ``τ √(2(2M+1)/n)`` for a window ``M`` (Sokal 1997, *Monte
    Carlo methods in statistical mechanics*, eq. 3.19).
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

__all__ = [
    "wilson_interval",
    "average_ranks",
    "binary_auc",
    "spearman",
    "batch_means_se",
    "autocorrelation",
    "integrated_autocorrelation_time",
]


def wilson_interval(k: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``k / n`` (95% by default).

    ``k`` may be fractional (e.g. ties counted 1/2). Returns ``(nan, nan)`` when ``n == 0``.
    """
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(max(0.0, p * (1 - p)) / n + z * z / (4 * n * n)) / den
    return (max(0.0, mid - half), min(1.0, mid + half))


def average_ranks(x) -> np.ndarray:
    """1-based ranks of a 1-d array, ties given the average of the ranks they span."""
    x = np.asarray(x, np.float64).reshape(-1)
    order = np.argsort(x, kind="stable")
    sx = x[order]
    # boundaries of runs of equal values in the sorted array
    start = np.flatnonzero(np.r_[True, sx[1:] != sx[:-1]])
    stop = np.r_[start[1:], sx.size]  # exclusive
    r = np.empty(x.size, np.float64)
    r[order] = np.repeat(0.5 * (start + stop - 1) + 1.0, stop - start)
    return r


def binary_auc(scores, labels) -> Optional[float]:
    """ROC AUC ``P(s+ > s-) + P(s+ = s-)/2`` (Mann–Whitney); ``None`` if a class is empty.

    ``labels`` are truthy for positives. Computed from rank sums in ``O(n log n)``.
    """
    s = np.asarray(scores, np.float64).reshape(-1)
    y = np.asarray(labels).astype(bool).reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"scores and labels differ in shape: {s.shape} vs {y.shape}")
    npos, nneg = int(y.sum()), int((~y).sum())
    if npos == 0 or nneg == 0:
        return None
    r = average_ranks(s)
    return float((r[y].sum() - npos * (npos + 1) / 2.0) / (npos * nneg))


def spearman(a, b) -> Optional[float]:
    """Spearman's rank correlation (Pearson on average ranks); ``None`` if either is constant."""
    a, b = np.asarray(a, np.float64).reshape(-1), np.asarray(b, np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    if a.size < 2:
        return None
    ra, rb = average_ranks(a), average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    return None if den == 0 else float((ra * rb).sum() / den)


def batch_means_se(chain, num_batches: int = 40):
    """Monte Carlo standard error of the mean of each column of ``chain`` by batch means.

    Axis 0 is the iteration; the first ``num_batches * (len(chain) // num_batches)``
    iterations are used. Returns a float for a 1-d chain, an array of ``chain.shape[1:]``
    otherwise.
    """
    chain = np.asarray(chain, np.float64)
    if num_batches < 2:
        raise ValueError(f"num_batches must be >= 2, got {num_batches}")
    m = chain.shape[0] // num_batches
    if m < 1:
        raise ValueError(f"chain of length {chain.shape[0]} is shorter than num_batches={num_batches}")
    b = chain[: m * num_batches].reshape(num_batches, m, *chain.shape[1:]).mean(1)
    se = b.std(0, ddof=1) / math.sqrt(num_batches)
    return float(se) if chain.ndim == 1 else se


def autocorrelation(chain, max_lag: int) -> np.ndarray:
    """Autocorrelations ``ρ̂_0..ρ̂_max_lag`` of each column of ``chain`` (axis 0 = iteration).

    Lag-``l`` products are averaged over the ``n − l`` overlapping pairs and divided by the
    (``1/n``) sample variance; a constant column counts as 1 at every lag. Returns shape
    ``(max_lag + 1, *chain.shape[1:])``.
    """
    x = np.asarray(chain, np.float64)
    n = x.shape[0]
    if not 0 <= max_lag < n:
        raise ValueError(f"max_lag must be in [0, {n - 1}], got {max_lag}")
    const = np.ptp(x, axis=0) == 0
    x = x - x.mean(0)
    size = 1 << int(math.ceil(math.log2(2 * n)))
    f = np.fft.rfft(x, size, axis=0)
    acov = np.fft.irfft(f * np.conj(f), size, axis=0)[: max_lag + 1]
    acov /= (n - np.arange(max_lag + 1)).reshape(-1, *([1] * (x.ndim - 1)))
    v = (x * x).mean(0)
    r = np.where(const, 1.0, acov / np.where(const, 1.0, v))
    r[0] = 1.0
    return r


def integrated_autocorrelation_time(chain, max_lag: int = 500):
    """Integrated autocorrelation time ``1 + 2 Σ_l ρ̂_l`` of each column of ``chain``.

    The sum runs over ``l = 1, 2, ...`` up to (not including) the first negative ``ρ̂_l``,
    and at most to ``min(max_lag, n // 4)``; a constant column has ``τ = inf``. Returns a
    float for a 1-d chain, an array of ``chain.shape[1:]`` otherwise.
    """
    x = np.asarray(chain, np.float64)
    r = autocorrelation(x, min(max_lag, x.shape[0] // 4))
    flat = r.reshape(r.shape[0], -1)
    const = (np.ptp(x, axis=0) == 0).reshape(-1)
    out = np.empty(flat.shape[1])
    for j in range(flat.shape[1]):
        rj = flat[:, j]
        if const[j]:
            out[j] = math.inf
            continue
        neg = np.flatnonzero(rj < 0)
        stop = neg[0] if len(neg) else len(rj)
        out[j] = 1.0 + 2.0 * rj[1:stop].sum()
    return float(out[0]) if x.ndim == 1 else out.reshape(x.shape[1:])
