"""The SMC driver against exact answers (Kalman filter) and its behaviour on bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import smcscale as smc
from smcscale.models import lgssm

R_RUNS = 200


def _log_z_runs(fk, ys, n, kappa, runs=R_RUNS, seed=0, resampling="systematic"):
    f = jax.jit(jax.vmap(lambda k: smc.run(k, fk, ys, n, ess_threshold=kappa, resampling=resampling).log_z))
    return np.asarray(f(jax.random.split(jax.random.key(seed), runs)), np.float64)


def _assert_z_unbiased(log_zs, log_z, label):
    """E[Ẑ / Z] = 1: the mean of exp(log Ẑ - log Z) is 1 within 4 Monte Carlo standard errors."""
    ratio = np.exp(log_zs - log_z)
    mean, se = ratio.mean(), ratio.std(ddof=1) / np.sqrt(len(ratio))
    assert abs(mean - 1.0) < 4 * se + 1e-3, f"{label}: mean Ẑ/Z = {mean:.4f} ± {se:.4f}"
    # log Ẑ is biased low by ≈ Var/2 (delta method): a coarse consistency check
    sd = (log_zs - log_z).std()
    assert sd < 1.0, f"{label}: sd(log Ẑ) = {sd:.3f} too large for the delta-method regime"
    return mean, se


@pytest.mark.parametrize("kappa", [1.0, 0.5])
@pytest.mark.slow
def test_bootstrap_log_z_unbiased_against_kalman(lgssm_data, kappa):
    fk = smc.bootstrap(lgssm.univariate(0.9, 1.0, 0.2))
    log_zs = _log_z_runs(fk, lgssm_data["ys"], 10_000, kappa)
    _assert_z_unbiased(log_zs, lgssm_data["log_z"], f"bootstrap kappa={kappa}")


@pytest.mark.slow
def test_log_z_estimator_detects_a_wrong_model(lgssm_data):
    """The same test rejects a filter for a slightly wrong model (it has power)."""
    fk = smc.bootstrap(lgssm.univariate(0.9, 1.0, 0.25))
    log_zs = _log_z_runs(fk, lgssm_data["ys"], 10_000, 1.0, runs=50)
    with pytest.raises(AssertionError):
        _assert_z_unbiased(log_zs, lgssm_data["log_z"], "wrong model")


@pytest.mark.parametrize("kind", ["guided", "auxiliary"])
@pytest.mark.parametrize("kappa", [1.0, 0.5, 0.0])
@pytest.mark.slow
def test_guided_and_auxiliary_log_z_unbiased(lgssm_data, kind, kappa):
    ssm = lgssm.univariate(0.9, 1.0, 0.2)
    prop, prop0 = lgssm.univariate_optimal_proposal(0.9, 1.0, 0.2)
    if kind == "guided":
        fk = smc.guided(ssm, prop, prop0)
    else:
        fk = smc.auxiliary(ssm, lgssm.univariate_lookahead(0.9, 1.0, 0.2), prop, prop0)
    log_zs = _log_z_runs(fk, lgssm_data["ys"], 200, kappa)
    if kappa == 0.0:
        # Sequential importance sampling: still unbiased but far too variable to test Ẑ;
        # check that it never resampled instead.
        r = smc.run(jax.random.key(0), fk, lgssm_data["ys"], 200, ess_threshold=0.0)
        assert not np.asarray(r.resampled).any()
        return
    _assert_z_unbiased(log_zs, lgssm_data["log_z"], f"{kind} kappa={kappa}")


@pytest.mark.slow
def test_adaptive_resampling_is_adaptive(lgssm_data):
    ssm = lgssm.univariate(0.9, 1.0, 0.2)
    prop, prop0 = lgssm.univariate_optimal_proposal(0.9, 1.0, 0.2)
    fk = smc.guided(ssm, prop, prop0)
    n = 500
    r = smc.run(jax.random.key(1), fk, lgssm_data["ys"], n, ess_threshold=0.5, record=["log_weights"])
    resampled = np.asarray(r.resampled)
    ess = np.asarray(r.ess)
    assert 0 < resampled.sum() < len(resampled) - 1
    # resampled before step t exactly when the ESS after step t-1 fell below N/2
    np.testing.assert_array_equal(resampled[1:], ess[:-1] < 0.5 * n)
    r1 = smc.run(jax.random.key(1), fk, lgssm_data["ys"], n, ess_threshold=1.0)
    assert np.asarray(r1.resampled)[1:].all()


@pytest.mark.slow
def test_multivariate_lgssm_log_z_unbiased():
    params = smc.kalman.LGSSMParams(
        A=jnp.array([[0.8, 0.1], [0.0, 0.7]]),
        Q=jnp.array([[0.5, 0.1], [0.1, 0.4]]),
        C=jnp.array([[1.0, 0.5]]),
        R=jnp.array([[0.3]]),
        m0=jnp.zeros(2),
        P0=jnp.eye(2),
    )
    _, ys = smc.kalman.simulate(jax.random.key(7), params, 50)
    log_z = float(smc.kalman.log_likelihood(params, ys))
    ssm = lgssm.multivariate(params)
    prop, prop0 = lgssm.optimal_proposal(params)
    for fk, n in [
        (smc.bootstrap(ssm), 2000),
        (smc.guided(ssm, prop, prop0), 200),
        (smc.auxiliary(ssm, lgssm.lookahead(params), prop, prop0), 200),
    ]:
        _assert_z_unbiased(_log_z_runs(fk, ys, n, 0.5, runs=100), log_z, "multivariate")


def test_filtering_means_match_kalman(lgssm_data):
    """Average of 16 independent filters (N = 20,000): within 5 between-run standard errors."""
    fk = smc.bootstrap(lgssm.univariate(0.9, 1.0, 0.2))
    f = jax.jit(
        jax.vmap(
            lambda k: smc.run(
                k, fk, lgssm_data["ys"], 20_000, summaries={"mean": smc.weighted_mean(), "m2": smc.weighted_mean(lambda x: x**2)}
            ).summaries
        )
    )
    s = f(jax.random.split(jax.random.key(3), 16))
    means = np.asarray(s["mean"], np.float64)
    variances = np.asarray(s["m2"], np.float64) - means**2
    se = means.std(0, ddof=1) / np.sqrt(16)
    err = np.abs(means.mean(0) - lgssm_data["means"])
    assert (err < 5 * se + 1e-4).all(), f"worst step {err.argmax()}: {err.max():.4f} vs se {se[err.argmax()]:.4f}"
    assert err.max() < 0.01
    np.testing.assert_allclose(variances.mean(0), lgssm_data["vars"], rtol=0.05)


@pytest.mark.slow
def test_same_key_same_result_and_vmap_over_datasets(lgssm_data):
    fk = smc.bootstrap(lgssm.univariate())
    ys = lgssm_data["ys"]
    a = smc.run(jax.random.key(5), fk, ys, 256, record=["ancestors"])
    b = smc.run(jax.random.key(5), fk, ys, 256, record=["ancestors"])
    np.testing.assert_array_equal(a.ancestors, b.ancestors)
    assert float(a.log_z) == float(b.log_z)
    datasets = jnp.stack([ys, ys[::-1], 0.5 * ys])
    out = jax.vmap(lambda y: smc.run(jax.random.key(5), fk, y, 256).log_z)(datasets)
    assert out.shape == (3,)
    assert float(out[0]) == pytest.approx(float(a.log_z), abs=1e-4)


def test_history_and_genealogy(lgssm_data):
    fk = smc.bootstrap(lgssm.univariate())
    n, t = 64, 30
    ys = lgssm_data["ys"][:t]
    r = smc.run(jax.random.key(0), fk, ys, n, ess_threshold=1.0, record=["ancestors", "particles", "log_weights"])
    assert r.ancestors.shape == (t, n) and r.particles_history.shape == (t, n)
    assert r.log_weights_history.shape == (t, n)
    np.testing.assert_array_equal(r.ancestors[0], np.arange(n))
    np.testing.assert_allclose(r.particles_history[-1], r.particles)
    back = np.asarray(smc.trace_genealogy(r.ancestors))
    np.testing.assert_array_equal(back[-1], np.arange(n))
    anc = np.asarray(r.ancestors)
    for s in range(t - 1):
        np.testing.assert_array_equal(back[s], anc[s + 1][back[s + 1]])
    lineages = [len(np.unique(back[s])) for s in range(t)]
    assert lineages == sorted(lineages)  # coalescence: fewer lineages further back
    assert lineages[0] < n


def test_dict_particles_and_inputs_pytree():
    """Particles and inputs are arbitrary pytrees."""

    def sample_initial(key, n, inp):
        return {"pos": jax.random.normal(key, (n, 2)), "count": jnp.zeros((n,), jnp.int32)}

    def sample_transition(key, x, inp):
        return {"pos": x["pos"] + inp["drift"] + jax.random.normal(key, x["pos"].shape), "count": x["count"] + 1}

    def log_potential(x_prev, x, inp):
        return dist.Normal(x["pos"][:, 0], 1.0).log_prob(inp["y"])

    fk = smc.FeynmanKac(sample_initial, sample_transition, log_potential)
    inputs = {"y": jnp.linspace(0, 1, 12), "drift": jnp.ones((12, 2)) * 0.1}
    r = smc.run(jax.random.key(0), fk, inputs, 100, summaries={"pos": smc.weighted_mean(lambda x: x["pos"])})
    assert r.summaries["pos"].shape == (12, 2)
    assert (np.asarray(r.particles["count"]) == 11).all()
    flat = _toy(lambda xp, x, inp: jnp.zeros(x.shape[0]))
    r2 = smc.run(jax.random.key(0), flat, None, 50, num_steps=5)
    assert float(r2.log_z) == pytest.approx(0.0, abs=1e-5)


# ----------------------------------------------------------------------- bad input


def _toy(log_potential):
    return smc.FeynmanKac(
        lambda key, n, u: jax.random.normal(key, (n,)),
        lambda key, x, u: x + jax.random.normal(key, x.shape),
        log_potential,
    )


def test_bad_arguments_raise_clear_errors(lgssm_data):
    fk = smc.bootstrap(lgssm.univariate())
    ys = lgssm_data["ys"]
    key = jax.random.key(0)
    with pytest.raises(TypeError, match="num_particles must be a Python int"):
        smc.run(key, fk, ys, 10.5)
    with pytest.raises(ValueError, match="num_particles must be >= 1"):
        smc.run(key, fk, ys, 0)
    with pytest.raises(ValueError, match="ess_threshold must be in \\[0, 1\\]"):
        smc.run(key, fk, ys, 10, ess_threshold=2.0)
    with pytest.raises(ValueError, match="unknown resampling scheme"):
        smc.run(key, fk, ys, 10, resampling="bogus")
    with pytest.raises(ValueError, match="unknown record option"):
        smc.run(key, fk, ys, 10, record=["weights"])
    with pytest.raises(ValueError, match="share the leading time axis"):
        smc.run(key, _toy(lambda xp, x, u: -x**2), {"a": jnp.zeros(5), "b": jnp.zeros(6)}, 10)
    with pytest.raises(ValueError, match="pass num_steps"):
        smc.run(key, _toy(lambda xp, x, u: -x**2), None, 10)
    with pytest.raises(TypeError, match="jax.random key"):
        smc.run(0, fk, ys, 10)
    with pytest.raises(TypeError, match="FeynmanKac"):
        smc.run(key, lgssm.univariate(), ys, 10)


def test_log_potential_of_wrong_shape():
    with pytest.raises(ValueError, match=r"must return shape \(10,\).*got \(10, 1\)"):
        smc.run(jax.random.key(0), _toy(lambda xp, x, u: (-x**2)[:, None]), None, 10, num_steps=3)


def test_nan_log_potential_raises_eagerly_and_is_flagged_under_jit():
    def lp(xp, x, u):
        return jnp.where(x > 1.5, jnp.nan, -0.5 * x**2)

    fk = _toy(lp)
    with pytest.raises(ValueError, match="NaN or \\+inf for [0-9]+ of 200 particles at step 0"):
        smc.run(jax.random.key(0), fk, None, 200, num_steps=4)
    r = jax.jit(lambda k: smc.run(k, fk, None, 200, num_steps=4))(jax.random.key(0))
    assert int(r.num_invalid[0]) > 0
    assert np.isfinite(np.asarray(r.log_z))  # NaNs treated as zero weights
    r = smc.run(jax.random.key(0), fk, None, 200, num_steps=4, check=False)
    assert np.isfinite(float(r.log_z))


@pytest.mark.slow
def test_all_particles_dead():
    """Every particle gets weight zero at step 2: a clear error eagerly; log Z = -inf, no NaN, under jit."""

    def lp(xp, x, u):
        return jnp.where(u == 2, -jnp.inf, -0.5 * x**2)

    fk = _toy(lp)
    inputs = jnp.arange(5)
    with pytest.raises(smc.ParticleCollapseError, match="all 50 particles have zero weight .* at step 2"):
        smc.run(jax.random.key(0), fk, inputs, 50)
    r = jax.jit(lambda k: smc.run(k, fk, inputs, 50))(jax.random.key(0))
    lz = np.asarray(r.log_z_trace)
    assert np.isfinite(lz[:2]).all() and np.isneginf(lz[2:]).all()
    assert not np.isnan(np.asarray(r.log_weights)).any()
    assert not np.isnan(np.asarray(r.ess)).any() and (np.asarray(r.ess)[2:] == 0).all()
    assert not np.isnan(np.asarray(r.particles)).any()


# ------------------------------------------------------------------ rough edges (issue 13)


def test_wrong_sample_initial_shape_is_reported_as_sample_initial():
    fk = smc.FeynmanKac(
        sample_initial=lambda key, n, u: jax.random.normal(key, (n + 1,)),  # one row too many
        sample_transition=lambda key, x, u: x,
        log_potential=lambda x_prev, x, u: jnp.zeros(x.shape[0]),
    )
    with pytest.raises(ValueError, match=r"sample_initial must return particles whose leaves have leading axis 10.*\(11,\)"):
        smc.run(jax.random.key(0), fk, None, 10, num_steps=3)
    bad_move = fk._replace(
        sample_initial=lambda key, n, u: jax.random.normal(key, (n,)),
        sample_transition=lambda key, x, u: jnp.stack([x, x], axis=1),  # changes the particle shape
    )
    with pytest.raises(ValueError, match="sample_transition must return particles"):
        smc.run(jax.random.key(0), bad_move, None, 10, num_steps=3)


def test_record_accepts_a_single_name(lgssm_data):
    fk = smc.bootstrap(lgssm.univariate())
    ys = lgssm_data["ys"][:10]
    one = smc.run(jax.random.key(0), fk, ys, 50, record="ancestors")
    many = smc.run(jax.random.key(0), fk, ys, 50, record=["ancestors"])
    assert one.ancestors.shape == (10, 50)
    np.testing.assert_array_equal(np.asarray(one.ancestors), np.asarray(many.ancestors))
    with pytest.raises(ValueError, match=r"unknown record option\(s\) \['ancestor'\]"):
        smc.run(jax.random.key(0), fk, ys, 50, record="ancestor")


def test_one_dimensional_observations_for_a_vector_observation_model():
    params = smc.kalman.univariate_params(0.9, 1.0, 0.2)
    fk = smc.bootstrap(lgssm.multivariate(params))  # observation: MultivariateNormal, event shape (1,)
    ys = jnp.sin(jnp.arange(20) / 3.0)
    with pytest.raises(ValueError, match=r"observation y_t has shape \(\) .* event shape \(1,\).*ys\[:, None\]"):
        smc.run(jax.random.key(0), fk, ys, 100)
    assert np.isfinite(float(smc.run(jax.random.key(0), fk, ys[:, None], 100).log_z))


@pytest.mark.slow
def test_run_with_a_hook_carries_and_resamples_extra_state(lgssm_data):
    """The driver's StepHook: a per-particle count of steps along each lineage, resampled with
    the particles, is exactly t + 1 for every particle; the filter's draws are unchanged."""
    fk = smc.bootstrap(lgssm.univariate())
    ys = lgssm_data["ys"][:12]

    def init(key, state, u0):
        return {"steps": jnp.ones(state.log_weights.shape[0]), "x0": state.particles}

    def update(key, tr):
        return tr.state, {"steps": tr.extra["steps"] + 1.0, "x0": tr.extra["x0"]}

    hook = smc.StepHook(init, update)
    res = smc.run(jax.random.key(3), fk, ys, 200, ess_threshold=1.0, hook=hook, record=["ancestors", "particles"])
    plain = smc.run(jax.random.key(3), fk, ys, 200, ess_threshold=1.0, record=["ancestors", "particles"])
    np.testing.assert_array_equal(np.asarray(res.extra["steps"]), 12.0)
    np.testing.assert_array_equal(np.asarray(res.particles), np.asarray(plain.particles))
    assert float(res.log_z) == float(plain.log_z)
    # x0 followed the genealogy: it is the time-0 particle of each final particle's lineage
    lineage = smc.trace_genealogy(res.ancestors)
    np.testing.assert_array_equal(np.asarray(res.extra["x0"]), np.asarray(res.particles_history[0][lineage[0]]))
    with pytest.raises(TypeError, match="hook must be a smcscale.StepHook"):
        smc.run(jax.random.key(3), fk, ys, 20, hook=(init, update))
