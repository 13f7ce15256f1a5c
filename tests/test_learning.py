"""Scores (PaRIS + Fisher identity, stop-gradient log Ẑ) against the Kalman gradient, MLE
against the exact Kalman MLE, and bad input.

Model: the book LGSSM x_t = rho x_{t-1} + sigma_X eps, y_t = x_t + sigma_Y eta
(rho = 0.9, sigma_X = 1, sigma_Y = 0.2). The particle filter is the guided filter with the
locally optimal proposal (a bootstrap filter works too but needs N ≈ 2000 here before its
O(1/N) bias drops below the Monte Carlo error of 32 runs).
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import optax
import pytest

import smcscale as smc
from smcscale import learning as L
from smcscale.models import lgssm

RHO, SX, SY = 0.9, 1.0, 0.2
THETA = {"rho": jnp.float32(RHO), "sx": jnp.float32(SX), "sy": jnp.float32(SY)}


def model(theta):
    """theta = {"rho", "sx", "sy"} -> StateSpaceModel (stationary start)."""
    rho, sx, sy = theta["rho"], theta["sx"], theta["sy"]
    return smc.StateSpaceModel(
        prior=lambda u: dist.Normal(0.0, sx / jnp.sqrt(1.0 - rho**2)),
        transition=lambda x_prev, u: dist.Normal(rho * x_prev, sx),
        observation=lambda x, u: dist.Normal(x, sy),
    )


_PROP, _PROP0 = lgssm.univariate_optimal_proposal(RHO, SX, SY)


def guided_at_truth(ssm):
    return smc.guided(ssm, _PROP, _PROP0)


def kalman_loglik(theta, ys):
    return smc.kalman.log_likelihood(smc.kalman.univariate_params(theta["rho"], theta["sx"], theta["sy"]), ys)


@pytest.fixture(scope="module")
def data():
    params = smc.kalman.univariate_params(RHO, SX, SY)
    _, ys = smc.kalman.simulate(jax.random.key(2024), params, 50)
    ys = ys[:, 0]
    grad = jax.grad(kalman_loglik)(THETA, ys)
    return {"ys": ys, "grad": np.array([float(grad[k]) for k in ("rho", "sx", "sy")])}


def _stack(score):
    return np.stack([np.asarray(score[k], np.float64) for k in ("rho", "sx", "sy")], axis=-1)


def _z(samples, exact):
    r = samples.shape[0]
    return (samples.mean(0) - exact) / (samples.std(0, ddof=1) / np.sqrt(r))


RUNS = 32


@pytest.mark.slow
def test_score_paris_matches_kalman_gradient(data):
    ys = data["ys"]
    f = jax.jit(jax.vmap(lambda k: L.score_paris(k, model, THETA, ys, 500, filter_fn=guided_at_truth)))
    est = f(jax.random.split(jax.random.key(0), RUNS))
    scores = _stack(est.score)
    z = _z(scores, data["grad"])
    assert np.all(np.abs(z) < 4), f"PaRIS score {scores.mean(0)} vs Kalman {data['grad']} (z = {z})"
    assert np.isfinite(np.asarray(est.log_z)).all()


@pytest.mark.slow
def test_stop_gradient_log_z_gradient_matches_kalman_gradient(data):
    ys = data["ys"]
    f = jax.jit(jax.vmap(lambda k: L.score_stop_gradient(k, model, THETA, ys, 500, filter_fn=guided_at_truth)))
    keys = jax.random.split(jax.random.key(1), RUNS)
    est = f(keys)
    scores = _stack(est.score)
    z = _z(scores, data["grad"])
    assert np.all(np.abs(z) < 4), f"stop-gradient score {scores.mean(0)} vs Kalman {data['grad']} (z = {z})"
    # the forward pass is unchanged: log Ẑ is the engine's, draw for draw
    fk = guided_at_truth(model(THETA))
    ref = jax.jit(jax.vmap(lambda k: smc.run(k, fk, ys, 500).log_z))(keys)
    np.testing.assert_allclose(np.asarray(est.log_z), np.asarray(ref), rtol=1e-5, atol=1e-4)


# ------------------------------------------------------------------------------- MLE


def constrain(u):
    return jnp.tanh(u[0]), jnp.exp(u[1]), jnp.exp(u[2])


def ssm_unconstrained(u):
    rho, sx, sy = constrain(u)
    return model({"rho": rho, "sx": sx, "sy": sy})


def guided_unconstrained(u):
    """theta -> FeynmanKac: the guided filter whose optimal proposal follows theta."""
    rho, sx, sy = constrain(u)
    s = 1.0 / (1.0 / sx**2 + 1.0 / sy**2)
    s0 = 1.0 / ((1.0 - rho**2) / sx**2 + 1.0 / sy**2)
    return smc.guided(
        ssm_unconstrained(u),
        lambda xp, y: dist.Normal(s * (rho * xp / sx**2 + y / sy**2), jnp.sqrt(s)),
        lambda y: dist.Normal(s0 * y / sy**2, jnp.sqrt(s0)),
    )


LOG_DENSITY = L.complete_data_log_density(ssm_unconstrained)


@pytest.mark.slow
def test_mle_recovers_the_kalman_mle():
    """SGA with PaRIS scores lands on the exact MLE, well within the MLE's own standard error."""
    T = 500
    _, ys = smc.kalman.simulate(jax.random.key(0), smc.kalman.univariate_params(RHO, SX, SY), T)
    ys = ys[:, 0]

    def kll(u):
        return smc.kalman.log_likelihood(smc.kalman.univariate_params(*constrain(u)), ys)

    # exact MLE: Adam on the Kalman log-likelihood, then its observed information
    opt = optax.adam(0.02)

    @jax.jit
    def exact_mle(u):
        def body(c, _):
            u, st = c
            up, st = opt.update(-jax.grad(kll)(u), st, u)
            return (optax.apply_updates(u, up), st), None

        return jax.lax.scan(body, (u, opt.init(u)), None, length=1500)[0][0]

    u_mle = exact_mle(jnp.array([np.arctanh(RHO), 0.0, np.log(SY)], jnp.float32))
    assert np.abs(np.asarray(jax.grad(kll)(u_mle))).max() < 0.01
    sd = np.sqrt(np.diag(np.linalg.inv(-np.asarray(jax.hessian(kll)(u_mle), np.float64))))

    u0 = jnp.array([np.arctanh(0.7), np.log(0.7), np.log(0.4)], jnp.float32)
    iters = 200
    res = L.mle(
        jax.random.key(3), guided_unconstrained, u0, ys, 50, iters,
        optimizer=optax.adam(optax.exponential_decay(0.05, iters, 0.05)), log_density_fn=LOG_DENSITY,
    )
    assert res.thetas.shape == (iters + 1, 3) and res.scores.shape == (iters, 3) and res.log_z.shape == (iters,)
    np.testing.assert_array_equal(np.asarray(res.thetas[0]), np.asarray(u0))
    z = (np.asarray(res.theta_average, np.float64) - np.asarray(u_mle, np.float64)) / sd
    assert np.all(np.abs(z) < 0.3), (
        f"SGA {np.asarray(constrain(res.theta_average))} vs Kalman MLE {np.asarray(constrain(u_mle))}: "
        f"{z} MLE standard errors"
    )
    # and it moved: the start was many standard errors away
    assert np.abs((np.asarray(u0) - np.asarray(u_mle)) / sd).max() > 2
    # the parameters that generated the data are within sampling error of the estimate
    u_true = np.array([np.arctanh(RHO), np.log(SX), np.log(SY)])
    z_true = (np.asarray(res.theta_average, np.float64) - u_true) / sd
    assert np.all(np.abs(z_true) < 4), f"{z_true} MLE standard errors from the true (rho, sigma_X, sigma_Y)"


def test_sga_driver_threads_the_carry():
    """The Markov-score-climbing hook: score_fn's carry goes from one iteration to the next."""

    def score_fn(key, theta, carry):
        return {"a": carry["target"] - theta["a"]}, jnp.float32(0.0), {"target": carry["target"], "n": carry["n"] + 1}

    res = L.stochastic_gradient_ascent(
        jax.random.key(0), score_fn, {"a": jnp.float32(0.0)}, 300,
        optimizer=optax.sgd(0.1), carry0={"target": jnp.float32(2.0), "n": jnp.int32(0)},
    )
    assert int(res.carry["n"]) == 300
    assert abs(float(res.theta["a"]) - 2.0) < 1e-3 and abs(float(res.theta_average["a"]) - 2.0) < 1e-3


# ------------------------------------------------------------------------------- bad input


def test_bad_input(data):
    ys = data["ys"]
    fk_model = lambda th: smc.bootstrap(model(th))  # noqa: E731
    with pytest.raises(ValueError, match="log_density_fn"):
        L.score_paris(jax.random.key(0), fk_model, THETA, ys, 16)
    with pytest.raises(ValueError, match="log_density_fn"):
        L.log_z_stop_gradient(jax.random.key(0), fk_model, THETA, ys, 16)
    with pytest.raises(TypeError, match="StateSpaceModel or a FeynmanKac"):
        L.score_paris(jax.random.key(0), lambda th: 3.0, THETA, ys, 16)
    with pytest.raises(TypeError, match="floating"):
        L.score_paris(jax.random.key(0), model, {"rho": 1, "sx": 1, "sy": 1}, ys, 16)
    with pytest.raises(ValueError, match="share the leading time axis"):
        L.score_paris(jax.random.key(0), lambda th: model(th)._replace(observed=lambda u: u["y"]), THETA, {"y": ys, "u": ys[:-1]}, 16)
    with pytest.raises(ValueError, match="num_particles"):
        L.score_paris(jax.random.key(0), model, THETA, ys, 0)
    with pytest.raises(ValueError, match="unknown estimator"):
        L.mle(jax.random.key(0), model, THETA, ys, 16, 3, estimator="newton")
    with pytest.raises(TypeError, match="estimator='paris'"):
        L.mle(jax.random.key(0), model, THETA, ys, 16, 3, estimator="stop_gradient", num_backward=3)
    with pytest.raises(ValueError, match="transition_log_density"):
        L.score_paris(
            jax.random.key(0), lambda th: smc.bootstrap(model(th))._replace(transition_log_density=None), THETA, ys, 16,
            log_density_fn=L.complete_data_log_density(model),
        )
    with pytest.raises(ValueError, match="average_from"):
        L.stochastic_gradient_ascent(jax.random.key(0), lambda k, th, c: (th, 0.0, c), THETA, 5, average_from=9)
