"""Parisian particle Gibbs (PPG) and PPG-driven Markov score climbing.

Model: the book LGSSM x_t = rho x_{t-1} + sigma_X eps, y_t = x_t + sigma_Y eta
(rho = 0.9, sigma_X = 1, sigma_Y = 0.2), where the Kalman smoother is exact.

* PPG estimates of E[sum x_t | y] and E[sum x_t x_{t-1} | y] match the smoother within MCMC
  error (batch means);
* PPG's bias is below PaRIS's at the same N (bootstrap filter, N = 20, T = 40): PaRIS has an
  O(1/N) bias that repetition does not remove, PPG is unbiased at stationarity;
* score climbing driven by PPG lands on the exact Kalman MLE (T = 300);
* bad input.
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import optax
import pytest
import scipy.optimize

import smcscale as smc
from smcscale import learning as L
from smcscale.models import lgssm
from smcscale.ppg import PPGResult, ppg, ppg_sweep, score_climbing
from smcscale.smoothing import paris
from smcscale.stats import batch_means_se

RHO, SX, SY = 0.9, 1.0, 0.2


def h_sums(x_prev, x, u):
    """S = (sum_t x_t, sum_{t>=1} x_t x_{t-1})."""
    if x_prev is None:
        return {"s": x, "c": jnp.zeros_like(x)}
    return {"s": x, "c": x_prev * x}


def _data(T, seed=5):
    p = smc.kalman.univariate_params(RHO, SX, SY)
    _, ys = smc.kalman.simulate(jax.random.key(seed), p, T)
    ys = ys[:, 0]
    sm = smc.kalman.rts_smoother(p, smc.kalman.kalman_filter(p, ys))
    m = np.asarray(sm.smoothed_means[:, 0], np.float64)
    cross = np.asarray(sm.smoothed_cross_covs[:, 0, 0], np.float64)  # Cov[x_{t+1}, x_t | y]
    exact = {"s": m.sum(), "c": (cross + m[1:] * m[:-1]).sum()}
    return ys, exact


FK = smc.bootstrap(lgssm.univariate(RHO, SX, SY))


@pytest.mark.parametrize(
    "label, kwargs",
    [
        ("PPG (AS, backward, exact)", {}),
        ("PPG (no AS, adaptive resampling, MH draws)",
         {"ancestor_sampling": False, "ess_threshold": 0.5, "method": "mh"}),
        # an integer reference is cast to the particles' dtype
        ("PPG (AS, genealogy, Ñ = 1, zero start)",
         {"trajectory": "genealogy", "num_backward": 1, "init_reference": np.zeros(40, np.int32)}),
    ],
)
@pytest.mark.slow
def test_ppg_matches_the_kalman_smoother(label, kwargs):
    ys, exact = _data(40)
    iters, burn = 1000, 100
    kwargs = {"init_reference": ys, **kwargs}  # start at the observations (saves compiling a filter)
    r = ppg(jax.random.key(1), FK, ys, 20, iters, h_sums, burn_in=burn, **kwargs)
    assert isinstance(r, PPGResult)
    assert r.estimates["s"].shape == (iters,) and r.trajectories.shape == (iters, 40)
    assert r.trajectories.dtype == jnp.float32
    assert r.log_z.shape == (iters,) and r.reference_moved.shape == (iters, 40)
    assert int(np.asarray(r.num_invalid).sum()) == 0
    for k in ("s", "c"):
        chain = np.asarray(r.estimates[k], np.float64)[burn:]
        se = batch_means_se(chain, 40)
        err = chain.mean() - exact[k]
        assert abs(err) < 4 * se + 1e-3, f"{label} {k}: PPG {chain.mean():.3f} vs Kalman {exact[k]:.3f} (se {se:.3f})"
        np.testing.assert_allclose(float(r.estimate[k]), chain.mean(), rtol=1e-5, atol=1e-4)
    # the reference keeps moving, early states included
    assert np.asarray(r.reference_moved)[burn:, :5].mean() > 0.3


@pytest.mark.slow
def test_ppg_has_lower_bias_than_paris():
    """Mean over independent runs vs Kalman: PaRIS's O(1/N) bias is many SEs; PPG's is not.

    Measured (T = 40, N = 20, bootstrap, exact backward draws, multinomial resampling every
    step): PaRIS bias ≈ +0.93 on sum x_t and ≈ -12.2 on sum x_t x_{t-1} (4000 runs, SE 0.02
    and 0.18); PPG time average (iterations 20..100) bias ≈ -0.006 and +0.02 (400 chains,
    SE 0.007 and 0.05), i.e. not detectable. With this test's keys and sizes: PaRIS
    +0.917 (SE 0.062) and -12.35 (SE 0.47); PPG -0.007 (SE 0.023) and -0.06 (SE 0.19).
    """
    ys, exact = _data(40)
    n = 20
    r_paris, r_ppg, iters, burn = 500, 48, 60, 15
    f_paris = jax.jit(jax.vmap(lambda k: paris(
        k, FK, ys, n, h_sums, method="exact", resampling="multinomial", ess_threshold=1.0, check=False).estimate))
    est_paris = f_paris(jax.random.split(jax.random.key(10), r_paris))
    f_ppg = jax.jit(jax.vmap(lambda k: ppg(k, FK, ys, n, iters, h_sums, burn_in=burn).estimate))
    est_ppg = f_ppg(jax.random.split(jax.random.key(11), r_ppg))
    for k in ("s", "c"):
        a = np.asarray(est_paris[k], np.float64)
        b = np.asarray(est_ppg[k], np.float64)
        bias_a, se_a = a.mean() - exact[k], a.std(ddof=1) / np.sqrt(r_paris)
        bias_b, se_b = b.mean() - exact[k], b.std(ddof=1) / np.sqrt(r_ppg)
        msg = f"{k}: bias PaRIS {bias_a:+.4f} (se {se_a:.4f}), bias PPG {bias_b:+.4f} (se {se_b:.4f})"
        assert abs(bias_a) > 4 * se_a, "PaRIS bias not significant: " + msg
        assert abs(bias_b) < abs(bias_a), msg
        assert abs(bias_b) < 4 * se_b, "PPG bias detectable: " + msg


# ------------------------------------------------------------------------------- score climbing


def constrain(u):
    return jnp.tanh(u[0]), jnp.exp(u[1]), jnp.exp(u[2])


def ssm_unconstrained(u):
    rho, sx, sy = constrain(u)
    return smc.StateSpaceModel(
        prior=lambda _: dist.Normal(0.0, sx / jnp.sqrt(1.0 - rho**2)),
        transition=lambda xp, _: dist.Normal(rho * xp, sx),
        observation=lambda x, _: dist.Normal(x, sy),
    )


def guided_unconstrained(u):
    """theta -> FeynmanKac: the guided filter whose locally optimal proposal follows theta."""
    rho, sx, sy = constrain(u)
    s = 1.0 / (1.0 / sx**2 + 1.0 / sy**2)
    s0 = 1.0 / ((1.0 - rho**2) / sx**2 + 1.0 / sy**2)
    return smc.guided(
        ssm_unconstrained(u),
        lambda xp, y: dist.Normal(s * (rho * xp / sx**2 + y / sy**2), jnp.sqrt(s)),
        lambda y: dist.Normal(s0 * y / sy**2, jnp.sqrt(s0)),
    )


@pytest.mark.slow
def test_score_climbing_recovers_the_kalman_mle():
    """PPG-driven Markov score climbing lands within 0.5 MLE standard errors of the exact MLE.

    The score's noise is largest along log sigma_Y (the observation noise is weakly
    identified), hence the guided filter (score noise about half the bootstrap filter's at
    the same N) and the Polyak average. The data are the T = 500 series of the MLE test in
    ``tests/test_learning.py``, so both learners are checked on the same data.
    """
    T = 500  # the same series as tests/test_learning.py::test_mle_recovers_the_kalman_mle
    _, ys = smc.kalman.simulate(jax.random.key(0), smc.kalman.univariate_params(RHO, SX, SY), T)
    ys = ys[:, 0]

    def kll(u):
        return smc.kalman.log_likelihood(smc.kalman.univariate_params(*constrain(u)), ys)

    # exact MLE: trust-region Newton (scipy) on the Kalman log-likelihood, then its observed information
    vg = jax.jit(jax.value_and_grad(lambda u: -kll(u)))
    hess = jax.jit(jax.hessian(lambda u: -kll(u)))
    f64 = lambda v: np.asarray(v, np.float64)  # noqa: E731
    opt = scipy.optimize.minimize(
        lambda u: tuple(map(f64, vg(jnp.asarray(u, jnp.float32)))), np.array([np.arctanh(RHO), 0.0, np.log(SY)]),
        jac=True, hess=lambda u: f64(hess(jnp.asarray(u, jnp.float32))), method="trust-exact",
    )
    u_mle = jnp.asarray(opt.x, jnp.float32)
    assert np.abs(np.asarray(jax.grad(kll)(u_mle))).max() < 0.01, opt
    sd = np.sqrt(np.diag(np.linalg.inv(f64(hess(u_mle)))))

    u0 = jnp.array([np.arctanh(0.7), np.log(0.7), np.log(0.4)], jnp.float32)
    iters = 300
    res = score_climbing(
        jax.random.key(3), guided_unconstrained, u0, ys, 20, iters,
        optax.adam(optax.exponential_decay(0.05, iters, 0.05)),
        log_density_fn=L.complete_data_log_density(ssm_unconstrained),
    )
    assert res.thetas.shape == (iters + 1, 3) and res.scores.shape == (iters, 3) and res.log_z.shape == (iters,)
    assert res.carry.shape == (T,) and np.isfinite(np.asarray(res.carry)).all()
    z = (np.asarray(res.theta_average, np.float64) - np.asarray(u_mle, np.float64)) / sd
    assert np.all(np.abs(z) < 0.5), (
        f"score climbing {np.asarray(constrain(res.theta_average))} vs Kalman MLE {np.asarray(constrain(u_mle))}: "
        f"{z} MLE standard errors"
    )
    # and it moved: the start was many standard errors away
    assert np.abs((np.asarray(u0) - np.asarray(u_mle)) / sd).max() > 4
    # the parameters that generated the data are within sampling error of the estimate
    u_true = np.array([np.arctanh(RHO), np.log(SX), np.log(SY)])
    z_true = (np.asarray(res.theta_average, np.float64) - u_true) / sd
    assert np.all(np.abs(z_true) < 4), f"{z_true} MLE standard errors from the true (rho, sigma_X, sigma_Y)"


# ------------------------------------------------------------------------------- bad input


def test_bad_input():
    ys, _ = _data(12)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="reference trajectory has length 10 but the inputs have 12"):
        ppg(key, FK, ys, 8, 3, h_sums, init_reference=jnp.zeros(10))
    with pytest.raises(ValueError, match="reference trajectory has length"):
        ppg_sweep(key, FK, ys, jnp.zeros(13), 8, h_sums)
    with pytest.raises(ValueError, match=r"shape \(T, \*particle_shape\)"):
        ppg(key, FK, ys, 8, 3, h_sums, init_reference=jnp.zeros((12, 2)))
    no_density = FK._replace(transition_log_density=None)
    for AS in (True, False):
        with pytest.raises(ValueError, match="transition_log_density"):
            ppg(key, no_density, ys, 8, 3, h_sums, ancestor_sampling=AS)
    with pytest.raises(ValueError, match="transition_log_density"):
        ppg_sweep(key, no_density, ys, jnp.zeros(12), 8, h_sums)
    with pytest.raises(ValueError, match="transition_log_density"):
        score_climbing(
            key, lambda u: smc.bootstrap(ssm_unconstrained(u))._replace(transition_log_density=None),
            jnp.zeros(3), ys, 8, 3, log_density_fn=L.complete_data_log_density(ssm_unconstrained),
        )
    with pytest.raises(ValueError, match="log_density_fn"):
        score_climbing(key, lambda u: smc.bootstrap(ssm_unconstrained(u)), jnp.zeros(3), ys, 8, 3)
    with pytest.raises(ValueError, match="ess_threshold=1.0"):
        ppg(key, FK, ys, 8, 3, h_sums, ess_threshold=0.5)
    with pytest.raises(ValueError, match="num_particles >= 2"):
        ppg(key, FK, ys, 1, 3, h_sums)
    with pytest.raises(ValueError, match="burn_in"):
        ppg(key, FK, ys, 8, 3, h_sums, burn_in=3)
    with pytest.raises(ValueError, match="trajectory method"):
        ppg(key, FK, ys, 8, 3, h_sums, trajectory="forward")
    with pytest.raises(ValueError, match="log_bound"):
        ppg(key, FK, ys, 8, 3, h_sums, method="reject")
    with pytest.raises(ValueError, match="log_lookahead"):
        ppg(key, smc.auxiliary(lgssm.univariate(), lgssm.univariate_lookahead()), ys, 8, 3, h_sums)
    with pytest.raises(TypeError, match="additive_fn"):
        ppg(key, FK, ys, 8, 3, None)
    with pytest.raises(ValueError, match="leading axis 8"):
        ppg(key, FK, ys, 8, 3, lambda xp, x, u: jnp.sum(x), init_reference=ys)
