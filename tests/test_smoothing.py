"""Backward sampling (FFBS) and PaRIS against the Kalman/RTS smoother, and bad input.

Model: the book LGSSM (rho = 0.9, sigma_X = 1, sigma_Y = 0.2), T = 50. Monte Carlo
tolerances come from independent runs: z = (mean of R runs - exact) / (sd / sqrt(R)).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import smcscale as smc
from smcscale import smoothing as sm
from smcscale.models import lgssm

RHO, SX, SY, T = 0.9, 1.0, 0.2, 50
LOG_BOUND = -0.5 * np.log(2 * np.pi * SX**2)  # max of the N(rho x, sigma_X^2) density


@pytest.fixture(scope="module")
def data():
    params = smc.kalman.univariate_params(RHO, SX, SY)
    _, ys = smc.kalman.simulate(jax.random.key(2024), params, T)
    ys = ys[:, 0]
    kf = smc.kalman.kalman_filter(params, ys)
    rts = smc.kalman.rts_smoother(params, kf)
    m = np.asarray(rts.smoothed_means[:, 0], np.float64)
    p = np.asarray(rts.smoothed_covs[:, 0, 0], np.float64)
    cross = np.asarray(rts.smoothed_cross_covs[:, 0, 0], np.float64)  # Cov[x_{t+1}, x_t | y]
    sums = np.array([m.sum(), (cross + m[1:] * m[:-1]).sum()])  # E[sum x_t], E[sum x_t x_{t-1}]
    return {"ys": ys, "m": m, "p": p, "sums": sums}


# One model object per filter for the whole module: jit caches are keyed on it.
_BOOT = smc.bootstrap(lgssm.univariate(RHO, SX, SY))
_GUIDED = smc.guided(lgssm.univariate(RHO, SX, SY), *lgssm.univariate_optimal_proposal(RHO, SX, SY))
_RECORD = ["particles", "log_weights", "ancestors"]


def _bootstrap():
    return _BOOT


def _guided():
    return _GUIDED


def _z(samples, exact):
    samples = np.asarray(samples, np.float64)
    r = samples.shape[0]
    return (samples.mean(0) - exact) / (samples.std(0, ddof=1) / np.sqrt(r))


def additive(x_prev, x, u):
    """h_0 = (x_0, 0), h_t = (x_t, x_t x_{t-1}): S_T = (sum x_t, sum x_t x_{t-1})."""
    return {"s1": x, "s2": jnp.zeros_like(x) if x_prev is None else x * x_prev}


# ------------------------------------------------------------------------------- FFBS


@pytest.mark.parametrize("method", ["exact", "mh"])
@pytest.mark.slow
def test_ffbs_marginals_and_sums_match_rts(data, method):
    fk, ys = _bootstrap(), data["ys"]
    runs, n, m = 20, 1000, 300
    means, variances, sums = [], [], []
    for r in range(runs):
        res = smc.run(jax.random.key(100 + r), fk, ys, n, record=_RECORD)
        out = sm.backward_sample(jax.random.key(200 + r), fk, res, ys, m, method=method)
        assert out.trajectories.shape == (T, m) and out.indices.shape == (T, m)
        # trajectories are the recorded particles at the returned indices
        np.testing.assert_array_equal(
            np.asarray(out.trajectories[7]), np.asarray(res.particles_history[7])[np.asarray(out.indices[7])]
        )
        tr = np.asarray(out.trajectories, np.float64)
        means.append(tr.mean(1))
        variances.append(tr.var(1))
        sums.append([tr.sum(0).mean(), (tr[1:] * tr[:-1]).sum(0).mean()])
    zm, zv, zs = _z(means, data["m"]), _z(variances, data["p"]), _z(sums, data["sums"])
    # 50 time points each: no single |z| beyond 5 and an average z^2 near 1 (chi^2 / dof)
    assert np.abs(zm).max() < 5 and np.mean(zm**2) < 2.5, f"smoothed means: max|z| {np.abs(zm).max():.2f}"
    assert np.abs(zv).max() < 5 and np.mean(zv**2) < 2.5, f"smoothed variances: max|z| {np.abs(zv).max():.2f}"
    assert np.all(np.abs(zs) < 4), f"sums: z = {zs}"


def test_ffbs_detects_a_wrong_smoother(data):
    """Power: filtering marginals (no backward pass) are far from the RTS smoothed means.

    The particle filter's weighted means match the exact Kalman *filtering* means within
    Monte Carlo error (5 SE, SE = sqrt(P_t^filt / ESS_t)), and those differ from the RTS
    means by more than 10 x the Monte Carlo error of a single 400-trajectory smoother
    estimate, so the FFBS test above would reject a "smoother" that skipped the backward pass.
    """
    params = smc.kalman.univariate_params(RHO, SX, SY)
    kf = smc.kalman.kalman_filter(params, data["ys"])
    kf_m = np.asarray(kf.filtered_means[:, 0], np.float64)
    kf_p = np.asarray(kf.filtered_covs[:, 0, 0], np.float64)
    res = smc.run(jax.random.key(1), _bootstrap(), data["ys"], 1000, record=_RECORD)
    w = np.exp(np.asarray(res.log_weights_history, np.float64))
    filt = (w * np.asarray(res.particles_history, np.float64)).sum(1)
    se = np.sqrt(kf_p / np.asarray(res.ess, np.float64))
    assert np.all(np.abs(filt - kf_m) < 5 * se), f"max z {np.max(np.abs(filt - kf_m) / se):.2f}"
    assert np.abs(kf_m - data["m"]).max() > 10 * np.sqrt(data["p"].min() / 400)


@pytest.mark.parametrize("method", ["exact", "mh", "reject"])
def test_backward_step_draws_from_the_backward_kernel(method):
    """One backward step for a single trajectory has law B(j) ∝ W_j m(x' | x_j)."""
    fk = _bootstrap()
    x_prev = jnp.array([-1.5, -0.4, 0.0, 0.3, 0.9, 2.0])
    lw = smc.log_normalize(jnp.array([0.1, -0.5, 0.3, 0.0, -1.0, 0.2]))
    x_next = jnp.float32(0.5)
    b = np.exp(np.asarray(lw) + np.asarray(fk.transition_log_density(x_prev, x_next, None)), dtype=np.float64)
    b /= b.sum()
    draws = 20_000
    keys = jax.random.split(jax.random.key(3), draws)

    def one(k):
        k_start, k_step = jax.random.split(k)
        # MH leaves B invariant: start it from an exact draw of B.
        start = jax.random.categorical(k_start, jnp.log(jnp.asarray(b, jnp.float32))) if method == "mh" else None
        return sm.backward_step(k_step, fk, x_next, x_prev, lw, None, method=method, start_index=start, log_bound=LOG_BOUND)

    idx = np.asarray(jax.jit(jax.vmap(one))(keys))
    freq = np.bincount(idx, minlength=6) / draws
    se = np.sqrt(b * (1 - b) / draws)
    assert np.all(np.abs(freq - b) < 5 * se + 1e-4), f"{method}: freq {freq} vs {b}"


def test_mh_chain_moves_towards_the_kernel():
    """From a bad start (index 0), enough MH steps reach B; zero-weight particles are never chosen."""
    fk = _bootstrap()
    x_prev = jnp.array([-3.0, 0.0, 0.5, 1.0])
    lw = jnp.array([-jnp.inf, 0.0, 0.0, -jnp.inf])
    x_next = jnp.float32(0.4)
    keys = jax.random.split(jax.random.key(4), 4000)
    idx = np.asarray(
        jax.jit(jax.vmap(lambda k: sm.backward_step(k, fk, x_next, x_prev, lw, None, method="mh", start_index=0, num_mh_steps=30)))(keys)
    )
    assert set(np.unique(idx)) <= {1, 2}
    b = np.exp(np.asarray(fk.transition_log_density(x_prev[1:3], x_next, None), np.float64))
    b /= b.sum()
    assert abs((idx == 1).mean() - b[0]) < 0.03


@pytest.mark.slow
def test_backward_sample_pytree_vector_states_without_inputs():
    """Pytree particles with event dimensions, and a model that takes no inputs."""

    def tld(xp, x, u):  # must broadcast over leading axes
        return -0.5 * jnp.sum((x["v"] - 0.5 * xp["v"]) ** 2, axis=-1)

    fk = smc.FeynmanKac(
        sample_initial=lambda k, n, u: {"v": jax.random.normal(k, (n, 2))},
        sample_transition=lambda k, x, u: {"v": 0.5 * x["v"] + jax.random.normal(k, x["v"].shape)},
        log_potential=lambda xp, x, u: -0.5 * jnp.sum(x["v"] ** 2, axis=-1),
        transition_log_density=tld,
    )
    res = smc.run(jax.random.key(1), fk, None, 32, num_steps=5, record=_RECORD)
    for method in ("exact", "mh"):
        out = sm.backward_sample(jax.random.key(2), fk, res, None, 8, method=method)
        assert out.trajectories["v"].shape == (5, 8, 2)
        np.testing.assert_array_equal(
            np.asarray(out.trajectories["v"][2]), np.asarray(res.particles_history["v"][2])[np.asarray(out.indices[2])]
        )


# ------------------------------------------------------------------------------- PaRIS


@pytest.mark.parametrize("method, kappa", [("mh", 0.5), ("reject", 1.0)])
@pytest.mark.slow
def test_paris_matches_kalman_smoother(data, method, kappa):
    fk, ys, runs = _guided(), data["ys"], 16
    f = jax.jit(
        jax.vmap(lambda k: sm.paris(k, fk, ys, 500, additive, method=method, log_bound=LOG_BOUND, ess_threshold=kappa))
    )
    res = f(jax.random.split(jax.random.key(5), runs))
    est = np.stack([np.asarray(res.estimate["s1"]), np.asarray(res.estimate["s2"])], axis=1)
    z = _z(est, data["sums"])
    assert np.all(np.abs(z) < 4), f"PaRIS {method}: mean {est.mean(0)} vs exact {data['sums']} (z = {z})"
    # the online estimates end at the final estimate; log Z is the filter's
    np.testing.assert_allclose(np.asarray(res.estimates["s1"][:, -1]), np.asarray(res.estimate["s1"]), rtol=1e-6)
    assert res.log_z.shape == (runs,) and np.isfinite(np.asarray(res.log_z)).all()


@pytest.mark.slow
def test_paris_hook_composes_with_the_driver(data):
    """paris_hook / paris_update are the public pieces a PPG sweep reuses: the hook on
    smc.run gives the same tau and estimate as smoothing.paris (same driver, same keys)."""
    fk, ys = _bootstrap(), data["ys"][:6]
    hook = sm.paris_hook(fk, additive)
    assert sm.paris_hook(fk, additive) is hook  # equal arguments, same hook: no recompilation
    res = smc.run(jax.random.key(0), fk, ys, 64, ess_threshold=1.0, hook=hook)
    ref = sm.paris(jax.random.key(0), fk, ys, 64, additive, ess_threshold=1.0)
    assert res.extra["s1"].shape == (64,)
    np.testing.assert_array_equal(np.asarray(res.extra["s1"]), np.asarray(ref.tau["s1"]))
    est = sm.weighted_sum(res.extra, res.log_weights)
    np.testing.assert_allclose(np.asarray(est["s2"]), np.asarray(ref.estimate["s2"]), rtol=1e-6)
    # paris_update with exact draws on a population of size 1 is deterministic
    update = jax.jit(lambda k, xp, lw, tp, x, u: sm.paris_update(k, fk, xp, lw, tp, x, u, additive, method="exact"))
    tau = update(
        jax.random.key(9), jnp.array([2.0]), jnp.array([0.0]), {"s1": jnp.array([1.0]), "s2": jnp.array([0.0])},
        jnp.array([3.0, 4.0]), ys[1],
    )
    np.testing.assert_allclose(np.asarray(tau["s1"]), [4.0, 5.0])
    np.testing.assert_allclose(np.asarray(tau["s2"]), [6.0, 8.0])


# ------------------------------------------------------------------------------- bad input


def test_bad_input(data):
    ys, fk = data["ys"], _bootstrap()
    no_density = fk._replace(transition_log_density=None)
    res = smc.run(jax.random.key(1), fk, ys, 1000, record=_RECORD)  # same compiled filter as above

    with pytest.raises(ValueError, match="transition_log_density"):
        sm.backward_sample(jax.random.key(0), no_density, res, ys, 4)
    with pytest.raises(ValueError, match="transition_log_density"):
        sm.paris(jax.random.key(0), no_density, ys, 32, additive)
    bare = res._replace(particles_history=None, log_weights_history=None, ancestors=None)  # run() without record
    with pytest.raises(ValueError, match="record="):
        sm.backward_sample(jax.random.key(0), fk, bare, ys, 4)
    no_ancestors = sm.FilterHistory(res.particles_history, res.log_weights_history)
    with pytest.raises(ValueError, match="ancestors"):
        sm.backward_sample(jax.random.key(0), fk, no_ancestors, ys, 4, method="mh")
    with pytest.raises(ValueError, match="time steps"):
        sm.backward_sample(jax.random.key(0), fk, res, ys[:-1], 4)
    with pytest.raises(ValueError, match=r"\(T, N"):
        sm.backward_sample(
            jax.random.key(0), fk, sm.FilterHistory(res.particles_history[:, :-1], res.log_weights_history), ys, 4
        )
    with pytest.raises(ValueError, match="unknown backward method"):
        sm.backward_sample(jax.random.key(0), fk, res, ys, 4, method="magic")
    with pytest.raises(ValueError, match="log_bound"):
        sm.paris(jax.random.key(0), fk, ys, 32, additive, method="reject")
    with pytest.raises(ValueError, match="num_trajectories"):
        sm.backward_sample(jax.random.key(0), fk, res, ys, 0)
    with pytest.raises(ValueError, match="num_backward"):
        sm.paris(jax.random.key(0), fk, ys, 32, additive, num_backward=0)
    with pytest.raises(TypeError, match="SMCResult"):
        sm.backward_sample(jax.random.key(0), fk, {"particles": 1}, ys, 4)
    with pytest.raises(TypeError, match="additive_fn"):
        sm.paris(jax.random.key(0), fk, ys, 32, "sum")
    with pytest.raises(ValueError, match="leading axis"):
        sm.paris(jax.random.key(0), fk, ys, 32, lambda xp, x, u: jnp.sum(x))
    with pytest.raises(ValueError, match="share the leading time axis"):
        sm.paris(jax.random.key(0), fk, {"y": ys, "z": ys[:-1]}, 32, additive)
    with pytest.raises(ValueError, match="start"):
        sm.backward_indices(jax.random.key(0), fk, ys, jnp.zeros(T), ys[:3], None, method="mh", start=jnp.zeros(2, jnp.int32))


def test_paris_additive_fn_without_the_t0_case_gets_a_clear_error(data):
    fk, ys = _bootstrap(), data["ys"][:5]
    with pytest.raises(TypeError, match=r"called with x_prev=None at t = 0.*h_0\(x_0\)"):
        sm.paris(jax.random.key(0), fk, ys, 32, lambda x_prev, x, u: x - x_prev)
