"""Adaptive tempered SMC (smcscale.tempering) against exact answers, and its bad-input behaviour.

Exact references: the conjugate Bayesian linear regression (evidence y ~ N(0, σ²I + σ0² X Xᵀ),
Gaussian posterior) written as a numpyro model, and a 1-D scale model whose evidence is a
one-dimensional integral (scipy quadrature). Tolerances are Monte Carlo errors: R independent
runs (fixed keys, one compilation each configuration) give the spread of log Ẑ and of the
posterior moments; the mean of R runs must be within 4 standard errors (plus the delta-method
bias Var/2 of log Ẑ) of the exact value.
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from scipy import integrate

import smcscale as smc
from smcscale.tempering import (
    TemperedState,
    TemperingError,
    TemperingTarget,
    next_temperature,
    tempered_smc,
)

D, N_OBS, SIGMA0, SIGMA = 3, 30, 1.0, 0.5
R_RUNS = 6


def regression(X, y):
    beta = numpyro.sample("beta", dist.Normal(0.0, SIGMA0).expand([X.shape[1]]).to_event(1))
    numpyro.sample("y", dist.Normal(X @ beta, SIGMA), obs=y)


@pytest.fixture(scope="module")
def reg():
    rng = np.random.default_rng(7)
    X = rng.normal(size=(N_OBS, D)).astype(np.float32)
    y = (X @ rng.normal(size=D) + SIGMA * rng.normal(size=N_OBS)).astype(np.float32)
    X64, y64 = X.astype(np.float64), y.astype(np.float64)
    cov = SIGMA**2 * np.eye(N_OBS) + SIGMA0**2 * X64 @ X64.T
    _, logdet = np.linalg.slogdet(cov)
    log_z = -0.5 * (N_OBS * np.log(2 * np.pi) + logdet + y64 @ np.linalg.solve(cov, y64))
    post_cov = np.linalg.inv(X64.T @ X64 / SIGMA**2 + np.eye(D) / SIGMA0**2)
    post_mean = post_cov @ X64.T @ y64 / SIGMA**2
    return {
        "args": (jnp.asarray(X), jnp.asarray(y)),
        "log_z": float(log_z),
        "mean": post_mean,
        "var": np.diag(post_cov),
    }


def _runs(fn, runs=R_RUNS, seed=0):
    return [fn(jax.random.key(seed + r)) for r in range(runs)]


def _assert_log_z(log_zs, exact, label):
    log_zs = np.asarray(log_zs, np.float64)
    sd = log_zs.std(ddof=1)
    err = log_zs.mean() - exact
    tol = 4 * sd / np.sqrt(len(log_zs)) + sd**2 / 2
    assert abs(err) < tol, f"{label}: mean log Ẑ - log Z = {err:.4f}, tol {tol:.4f} (sd {sd:.4f})"
    assert sd < 0.5, f"{label}: sd(log Ẑ) = {sd:.3f}"


def _weighted_moments(res):
    w = np.exp(np.asarray(res.log_weights, np.float64))
    b = np.asarray(res.particles["beta"], np.float64)
    m = w @ b
    return m, w @ (b - m) ** 2


@pytest.mark.parametrize(
    "kw",
    [
        dict(mcmc="rwm"),
        dict(mcmc="hmc", num_mcmc_steps=3),
        dict(mcmc="rwm", waste_free=True, chain_length=20, num_particles=2000),
    ],
    ids=["rwm", "hmc", "waste-free-rwm"],
)
@pytest.mark.slow
def test_regression_evidence_and_posterior(reg, kw):
    kw = dict(kw)
    n = kw.pop("num_particles", 1000)
    results = _runs(lambda k: tempered_smc(k, regression, n, model_args=reg["args"], max_steps=30, **kw))
    label = str(kw)
    _assert_log_z([r.log_z for r in results], reg["log_z"], label)

    means, varis = zip(*(_weighted_moments(r) for r in results))
    means, varis = np.array(means), np.array(varis) / reg["var"]
    se_m = means.std(axis=0, ddof=1) / np.sqrt(len(means))
    # each run's weighted mean has error ~ sd_post / sqrt(ESS); a floor from that protects
    # against a lucky small spread of only R runs
    floor = np.sqrt(reg["var"] / n)
    assert np.all(np.abs(means.mean(0) - reg["mean"]) < 4 * np.maximum(se_m, floor)), (label, means.mean(0), reg["mean"])
    se_v = varis.std(axis=0, ddof=1) / np.sqrt(len(varis))
    assert np.all(np.abs(varis.mean(0) - 1.0) < 4 * np.maximum(se_v, np.sqrt(2.0 / n)) + 0.02), (label, varis.mean(0))

    r = results[0]
    assert bool(r.converged)
    T = int(r.num_steps)
    lam = np.asarray(r.lambdas)
    assert lam[0] == 0.0 and lam[T] == 1.0 and lam[T - 1] < 1.0 and np.all(np.diff(lam) >= 0)
    acc = np.asarray(r.acceptance)
    # moves at steps 2..T+1 (K_{λ_{t-1}}), none at 0, 1 and after the final rejuvenation
    assert np.all(np.isnan(acc[:2])) and np.all(np.isnan(acc[T + 2 :]))
    assert np.all((acc[2 : T + 2] > 0.05) & (acc[2 : T + 2] <= 1.0)), acc[: T + 2]
    # adaptive steps hit the ESS target (bisection precision); the last one may exceed it
    n_part = r.log_weights.shape[0]
    ess = np.asarray(r.ess)
    np.testing.assert_allclose(ess[1:T], 0.5 * n_part, rtol=2e-3)
    assert ess[T] >= 0.5 * n_part * (1 - 2e-3)
    # final population: rejuvenated and equally weighted; log Z frozen after λ = 1
    np.testing.assert_allclose(np.exp(np.asarray(r.log_weights)), 1.0 / n_part, rtol=1e-4)
    lz_trace = np.asarray(r.smc_result.log_z_trace)
    assert np.all(lz_trace[T:] == lz_trace[T])
    assert isinstance(r.smc_result.particles, TemperedState)


# 1-D scale model with a log-likelihood that is NaN for x < 0 (a forgotten positivity
# constraint): y_k ~ N(0, x²), x ~ N(0, 1).
Y_SCALE = np.random.default_rng(3).normal(size=20) * 0.7
S2, K = float(np.sum(Y_SCALE**2)), len(Y_SCALE)


def _scale_loglik(x):
    x = x[0]
    return -K * jnp.log(x) - S2 / (2 * x**2) - 0.5 * K * jnp.log(2 * jnp.pi)


SCALE_TARGET = TemperingTarget(
    log_prior=lambda x: jnp.sum(dist.Normal(0.0, 1.0).log_prob(x)),
    log_likelihood=_scale_loglik,
    sample_prior=lambda key, n: jax.random.normal(key, (n, 1)),
)


def _truncated_evidence():
    """Z = ∫_0^∞ N(x; 0, 1) Π_k N(y_k; 0, x²) dx and the posterior mean of x (x > 0 only)."""
    lmax = max(
        -K * np.log(x) - S2 / (2 * x**2) - 0.5 * x**2 for x in np.linspace(0.05, 3, 2000)
    )

    def f(x, p):
        return x**p * np.exp(-K * np.log(x) - S2 / (2 * x**2) - 0.5 * x**2 - lmax)

    z0 = integrate.quad(f, 1e-6, 10, args=(0,), points=[np.sqrt(S2 / K)], limit=200)[0]
    z1 = integrate.quad(f, 1e-6, 10, args=(1,), points=[np.sqrt(S2 / K)], limit=200)[0]
    log_z = np.log(z0) + lmax - 0.5 * np.log(2 * np.pi) - 0.5 * K * np.log(2 * np.pi)
    return log_z, z1 / z0


@pytest.mark.slow
def test_plain_target_nan_loglik_raises_or_is_minus_inf():
    # eagerly, a NaN log-likelihood of prior draws is an error ...
    with pytest.raises(ValueError, match="NaN"):
        tempered_smc(jax.random.key(0), SCALE_TARGET, 1000, max_steps=30)
    # ... with check=False those particles get weight zero (documented): the sampler then
    # targets the prior restricted to x > 0, whose evidence is a 1-D integral.
    results = _runs(lambda k: tempered_smc(k, SCALE_TARGET, 1000, max_steps=30, check=False))
    log_z, post_mean = _truncated_evidence()
    _assert_log_z([r.log_z for r in results], log_z, "truncated scale model")
    r = results[0]
    bad0 = int(np.asarray(r.smc_result.num_invalid)[0])
    assert 400 < bad0 < 600  # about half the prior draws have x < 0
    assert int(np.asarray(r.smc_result.num_invalid)[1:].sum()) == 0
    x = np.asarray(r.particles)[:, 0]
    assert np.all(x > 0)  # NaN proposals are rejected, NaN draws never resampled
    means = [np.exp(np.asarray(q.log_weights)) @ np.asarray(q.particles)[:, 0] for q in results]
    assert abs(np.mean(means) - post_mean) < 4 * max(np.std(means, ddof=1) / np.sqrt(R_RUNS), 2e-3)
    assert bool(r.converged)


def test_next_temperature_bisection():
    nt = jax.jit(next_temperature)  # one compilation for all cases (same shapes)
    ll = -0.5 * jnp.linspace(0.0, 40.0, 100) ** 2
    lam = float(nt(ll, 0.0, 0.5))
    assert 0 < lam < 1
    np.testing.assert_allclose(float(smc.ess(lam * ll)), 50.0, rtol=1e-3)
    # a flat likelihood goes straight to 1; λ = 1 stays there
    assert float(nt(jnp.zeros(100), 0.3, 0.5)) == 1.0
    assert float(nt(ll, 1.0, 0.5)) == 1.0
    # mostly -inf / NaN log-likelihoods: no δ > 0 meets the target; a tiny positive step is taken
    dead = jnp.where(jnp.arange(100) < 80, jnp.nan, -1.0)
    lam2 = nt(dead, 0.2, 0.5)
    assert np.float32(0.2) < lam2 < 0.2 + 1e-6  # a representable step (kills the dead ones)


def scale_model(y):
    x = numpyro.sample("x", dist.HalfNormal(1.0))
    numpyro.sample("y", dist.Normal(0.0, x), obs=y)


def test_numpyro_constrained_site_unconstrained_space():
    """HalfNormal prior: the sampler works on log x (with the log-Jacobian in log p_0) and
    returns x. The evidence is twice the truncated-model integral (HalfNormal = 2 φ on x > 0)."""
    results = _runs(lambda k: tempered_smc(k, scale_model, 1000, model_args=(jnp.asarray(Y_SCALE, jnp.float32),), max_steps=20))
    log_z, post_mean = _truncated_evidence()
    _assert_log_z([r.log_z for r in results], log_z + np.log(2.0), "HalfNormal scale model")
    means = [np.exp(np.asarray(r.log_weights)) @ np.asarray(r.particles["x"]) for r in results]
    assert abs(np.mean(means) - post_mean) < 4 * max(np.std(means, ddof=1) / np.sqrt(R_RUNS), 2e-3)
    r = results[0]
    np.testing.assert_allclose(np.exp(np.asarray(r.positions)[:, 0]), np.asarray(r.particles["x"]), rtol=1e-5)


def test_non_converging_schedule():
    """Data ~1000 prior sds away (x ≈ 700 under a HalfNormal(1) prior): every ESS-limited
    step is tiny, λ is far from 1 after max_steps. (Same model and settings as the test
    above, so the compiled sampler is reused.)"""
    y_far = jnp.asarray(Y_SCALE * 1000.0, jnp.float32)
    with pytest.raises(TemperingError, match="max_steps=20"):
        tempered_smc(jax.random.key(0), scale_model, 1000, model_args=(y_far,), max_steps=20)
    r = tempered_smc(jax.random.key(0), scale_model, 1000, model_args=(y_far,), max_steps=20, check=False)
    assert not bool(r.converged)
    lam = np.asarray(r.lambdas)
    assert 0 < lam[-1] < 0.1 and np.all(np.diff(lam) > 0) and int(r.num_steps) == 19
    assert np.isfinite(float(r.log_z))  # log Ẑ of Z_{λ_last}, as documented


def test_bad_input(reg):
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="unknown mcmc kernel 'mala'"):
        tempered_smc(key, regression, 100, model_args=reg["args"], mcmc="mala")
    with pytest.raises(ValueError, match="ess_target"):
        tempered_smc(key, regression, 100, model_args=reg["args"], ess_target=1.0)
    with pytest.raises(ValueError, match="divisible by chain_length"):
        tempered_smc(key, regression, 100, model_args=reg["args"], waste_free=True, chain_length=7)
    with pytest.raises(ValueError, match="unknown resampling scheme"):
        tempered_smc(key, regression, 100, model_args=reg["args"], resampling="bogus")
    with pytest.raises(ValueError, match="max_steps"):
        tempered_smc(key, regression, 100, model_args=reg["args"], max_steps=1)
    with pytest.raises(TypeError, match="jax.random key"):
        tempered_smc(0, regression, 100, model_args=reg["args"])
    with pytest.raises(ValueError, match="only for numpyro models"):
        tempered_smc(key, SCALE_TARGET, 100, model_args=reg["args"])
    with pytest.raises(TypeError, match="TemperingTarget or a numpyro model"):
        tempered_smc(key, 3.0, 100)

    def discrete(y):
        k = numpyro.sample("k", dist.Bernoulli(0.5))
        numpyro.sample("y", dist.Normal(k, 1.0), obs=y)

    with pytest.raises(ValueError, match="discrete latent"):
        tempered_smc(key, discrete, 100, model_args=(jnp.zeros(3),))
