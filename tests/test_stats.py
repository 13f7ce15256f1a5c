"""Exact checks of smcscale.stats: Wilson intervals, AUC / ranks, batch means, ACF and IAT."""

import math

import numpy as np
import pytest

from smcscale.stats import (
    autocorrelation,
    average_ranks,
    batch_means_se,
    binary_auc,
    integrated_autocorrelation_time,
    spearman,
    wilson_interval,
)

# ---------------------------------------------------------------------------------------
# Wilson


def test_wilson_hand_computed():
    # z = 2, n = 4 makes the arithmetic exact: den = 1 + z²/n = 2, z²/(4n²) = 1/16.
    # k = 2: centre (1/2 + 1/2)/2 = 1/2, half = (2/2)·sqrt(1/16 + 1/16) = sqrt(1/8)
    lo, hi = wilson_interval(2, 4, z=2.0)
    assert lo == pytest.approx(0.5 - math.sqrt(0.125), abs=1e-15) and hi == pytest.approx(0.5 + math.sqrt(0.125), abs=1e-15)
    # k = 0: centre (0 + 1/2)/2 = 1/4, half = sqrt(0 + 1/16) = 1/4
    assert wilson_interval(0, 4, z=2.0) == pytest.approx((0.0, 0.5), abs=1e-15)
    # k = 1: centre (1/4 + 1/2)/2 = 3/8, half = sqrt(3/64 + 1/16) = sqrt(7/64)
    assert wilson_interval(1, 4, z=2.0) == pytest.approx((0.375 - math.sqrt(7) / 8, 0.375 + math.sqrt(7) / 8), abs=1e-15)
    # the default is the 95% interval (z = 1.959964); 5/10 is symmetric about 1/2
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-3) and hi == pytest.approx(0.7634, abs=1e-3)
    assert lo + hi == pytest.approx(1.0, abs=1e-15)
    assert wilson_interval(0, 4)[0] == pytest.approx(0.0) and wilson_interval(4, 4)[1] == pytest.approx(1.0)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    # a fractional count (ties counted 1/2) is allowed
    lo, hi = wilson_interval(2.5, 5)
    assert lo + hi == pytest.approx(1.0, abs=1e-15) and hi - lo > wilson_interval(5, 10)[1] - wilson_interval(5, 10)[0]


def test_wilson_matches_scipy():
    st = pytest.importorskip("scipy.stats")
    from scipy.special import ndtri

    z = float(ndtri(0.975))
    for k, n in [(0, 1), (1, 1), (0, 7), (3, 7), (7, 7), (17, 40), (999, 1000), (1, 10000)]:
        ci = st.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        lo, hi = wilson_interval(k, n, z=z)
        assert lo == pytest.approx(ci.low, abs=1e-12) and hi == pytest.approx(ci.high, abs=1e-12), (k, n)


# ---------------------------------------------------------------------------------------
# ranks, AUC, Spearman


def _brute_auc(scores, labels):
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def test_average_ranks():
    np.testing.assert_array_equal(average_ranks([3.0, 1.0, 2.0]), [3.0, 1.0, 2.0])
    np.testing.assert_array_equal(average_ranks([5, 1, 5, 5, 0]), [4.0, 2.0, 4.0, 4.0, 1.0])
    np.testing.assert_array_equal(average_ranks([]), np.zeros(0))


def test_binary_auc_matches_brute_force_pair_count():
    assert binary_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert binary_auc([0.5, 0.5], [0, 1]) == pytest.approx(0.5)
    assert binary_auc([0.1, 0.2], [1, 1]) is None and binary_auc([0.1, 0.2], [0, 0]) is None
    rng = np.random.default_rng(0)
    for trial in range(50):
        n = int(rng.integers(2, 40))
        s = rng.integers(0, 6, n).astype(float)  # few distinct values: many ties
        y = rng.random(n) < 0.4
        if y.all() or not y.any():
            continue
        assert binary_auc(s, y) == pytest.approx(_brute_auc(s, y), abs=1e-12), trial
    with pytest.raises(ValueError):
        binary_auc([1.0, 2.0], [1])


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 45]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 1], [1, 2, 3]) is None and spearman([1], [2]) is None
    # against the Pearson correlation of hand-computed average ranks
    a, b = [1, 2, 2, 3], [4, 1, 3, 2]
    ra, rb = np.array([1, 2.5, 2.5, 4]), np.array([4, 1, 3, 2.0])
    assert spearman(a, b) == pytest.approx(np.corrcoef(ra, rb)[0, 1], abs=1e-12)


# ---------------------------------------------------------------------------------------
# AR(1) chains: x_t = ρ x_{t-1} + ε_t, ε_t ~ N(0, 1), started in stationarity.
# γ_0 = 1/(1-ρ²), ρ_l = ρ^l, long-run variance σ²_∞ = 1/(1-ρ)², IAT τ = (1+ρ)/(1-ρ).


def _ar1(rng, rho, n, k=None):
    shape = () if k is None else (k,)
    eps = rng.standard_normal((n, *shape))
    x = np.empty((n, *shape))
    x[0] = eps[0] / math.sqrt(1 - rho * rho)
    for t in range(1, n):
        x[t] = rho * x[t - 1] + eps[t]
    return x


def test_batch_means_se_on_ar1():
    rho, n, k, B = 0.5, 20_000, 400, 40
    x = _ar1(np.random.default_rng(1), rho, n, k)
    se = batch_means_se(x, B)
    assert se.shape == (k,)
    # exact Var(x̄_n) of a stationary AR(1)
    g0 = 1 / (1 - rho * rho)
    var_mean = g0 / n * ((1 + rho) / (1 - rho) - 2 * rho * (1 - rho**n) / (n * (1 - rho) ** 2))
    # each se² ≈ var_mean · χ²_{B-1}/(B-1): relative sd sqrt(2/(B-1)); the mean over k columns
    # has relative sd sqrt(2/((B-1)k)) ≈ 0.011. Batch-means bias is O(τ/m) (m = 500): the
    # lag-covariance left out of each batch, 2ρ/(m(1-ρ)²) / τ ≈ 0.003 relative.
    mc_rel = math.sqrt(2 / ((B - 1) * k))
    bias_rel = 2 * rho / ((n // B) * (1 - rho) ** 2) / ((1 + rho) / (1 - rho))
    assert abs(np.mean(se**2) / var_mean - 1) < 4 * mc_rel + bias_rel
    # a 1-d chain gives a float, equal to its column in the 2-d call
    assert isinstance(batch_means_se(x[:, 3], B), float)
    assert batch_means_se(x[:, 3], B) == pytest.approx(se[3], rel=1e-12)
    # the chain means are calibrated by it: z-scores have variance ≈ 1
    z = x.mean(0) / se
    assert abs(z.var() - 1) < 4 * math.sqrt(2 / k) + 0.1  # + the t_{B-1} excess (≈ 1/(B-3))
    with pytest.raises(ValueError):
        batch_means_se(np.zeros(10), 40)


def test_autocorrelation_definition_and_shapes():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((50, 3))
    r = autocorrelation(x, 5)
    assert r.shape == (6, 3)
    d = x - x.mean(0)
    v = (d * d).mean(0)
    for lag in range(6):
        want = (d[lag:] * d[: 50 - lag]).mean(0) / v
        np.testing.assert_allclose(r[lag], want, rtol=1e-10, atol=1e-12)
    # the lag-one autocorrelation of a constant column counts as 1
    c = np.c_[np.full(20, 3.7), rng.standard_normal(20)]
    rc = autocorrelation(c, 3)
    np.testing.assert_array_equal(rc[:, 0], 1.0)
    assert rc[0, 1] == 1.0 and abs(rc[1, 1]) < 1
    with pytest.raises(ValueError):
        autocorrelation(np.zeros(4), 4)


@pytest.mark.parametrize("rho", [0.0, 0.5, 0.9])
def test_iat_of_ar1(rho):
    n, max_lag = 200_000, 200
    x = _ar1(np.random.default_rng(3), rho, n)
    tau = (1 + rho) / (1 - rho)
    r = autocorrelation(x, 10)
    # ρ̂_l ≈ ρ^l; sd of ρ̂_l about sqrt(τ/n) (Bartlett)
    np.testing.assert_allclose(r, rho ** np.arange(11), atol=5 * math.sqrt(tau / n))
    est = integrated_autocorrelation_time(x, max_lag)
    # the window M the estimator used: the lags before the first negative ρ̂_l
    full = autocorrelation(x, max_lag)
    neg = np.flatnonzero(full < 0)
    M = (neg[0] if len(neg) else max_lag + 1) - 1
    np.testing.assert_allclose(est, 1 + 2 * full[1 : M + 1].sum(), rtol=1e-12)
    # Sokal's sd of the windowed estimator, τ sqrt(2(2M+1)/n), plus its truncation bias,
    # the left-out tail 2 Σ_{l>M} ρ^l = 2ρ^{M+1}/(1-ρ) (exact for the AR(1)).
    sd = tau * math.sqrt(2 * (2 * M + 1) / n)
    bias = 2 * rho ** (M + 1) / (1 - rho)
    assert abs(est - tau) < 4 * sd + bias, (est, tau, 4 * sd + bias)
    # the same estimate column-wise
    two = integrated_autocorrelation_time(np.c_[x, x], max_lag)
    assert two.shape == (2,) and two[0] == pytest.approx(est, rel=1e-12)


def test_iat_of_a_constant_chain_is_infinite():
    assert integrated_autocorrelation_time(np.full(100, 0.1)) == math.inf
    out = integrated_autocorrelation_time(np.c_[np.full(100, 2.0), np.arange(100.0) % 2])
    assert out[0] == math.inf and out[1] == pytest.approx(1.0)  # ρ̂_1 = -1 < 0: nothing summed
