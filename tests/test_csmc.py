"""Conditional SMC / particle Gibbs: invariance against the Kalman smoother, PGAS mixing,
reference handling and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import smcscale as smc
from smcscale.csmc import csmc, particle_gibbs, sample_trajectory
from smcscale.models import lgssm
from smcscale.stats import autocorrelation, batch_means_se


def _data(T, seed=5):
    p = smc.kalman.univariate_params(0.9, 1.0, 0.2)
    _, ys = smc.kalman.simulate(jax.random.key(seed), p, T)
    ys = ys[:, 0]
    sm = smc.kalman.rts_smoother(p, smc.kalman.kalman_filter(p, ys))
    return ys, np.asarray(sm.smoothed_means[:, 0]), np.asarray(sm.smoothed_covs[:, 0, 0])


@pytest.mark.parametrize(
    "label, kwargs, n, iters",
    [
        ("PG", {}, 100, 2500),
        ("PGAS", {"ancestor_sampling": True}, 10, 4000),
        ("PG+backward", {"backward_sampling": True}, 10, 4000),
    ],
)
@pytest.mark.slow
def test_particle_gibbs_is_invariant_for_the_smoother(label, kwargs, n, iters):
    ys, mean, var = _data(20)
    fk = smc.bootstrap(lgssm.univariate())
    r = particle_gibbs(jax.random.key(3), fk, ys, n, iters, **kwargs)
    chain = np.asarray(r.trajectories, np.float64)[500:]
    se = batch_means_se(chain, 30)
    err = np.abs(chain.mean(0) - mean)
    assert (err < 5 * se + 1e-3).all(), f"{label}: worst t={err.argmax()} err {err.max():.3f} se {se[err.argmax()]:.3f}"
    # second moments too: E[(x_t - m_t)^2] = P_t (the RTS variance), with its own batch-means SE
    sq = (chain - mean) ** 2
    err2 = np.abs(sq.mean(0) - var)
    se2 = batch_means_se(sq, 30)
    assert (err2 < 5 * se2 + 1e-3).all(), f"{label}: worst t={err2.argmax()} err {err2.max():.4f} se {se2[err2.argmax()]:.4f}"


@pytest.mark.slow
def test_pgas_mixes_better_than_pg_at_small_n():
    ys, _, _ = _data(50)
    fk = smc.bootstrap(lgssm.univariate())
    pg = particle_gibbs(jax.random.key(2), fk, ys, 10, 1500)
    pgas = particle_gibbs(jax.random.key(2), fk, ys, 10, 1500, ancestor_sampling=True)
    moved_pg = np.asarray(pg.reference_moved)[200:].mean(0)
    moved_as = np.asarray(pgas.reference_moved)[200:].mean(0)
    # path degeneracy: plain PG almost never updates the early states; PGAS does
    assert moved_pg[:10].mean() < 0.05 < 0.3 < moved_as[:10].mean()
    x_pg = np.asarray(pg.trajectories, np.float64)[200:, :10]
    x_as = np.asarray(pgas.trajectories, np.float64)[200:, :10]
    ac_pg = autocorrelation(x_pg, 1)[1]  # lag one, per column; a constant chain counts as 1
    ac_as = autocorrelation(x_as, 1)[1]
    assert (ac_as < ac_pg).all() and ac_as.mean() < 0.8, (ac_pg, ac_as)


@pytest.mark.slow
def test_reference_is_kept_in_slot_zero():
    ys, _, _ = _data(15)
    fk = smc.bootstrap(lgssm.univariate())
    ref = jnp.linspace(-1, 1, 15)
    for AS in (False, True):
        r = csmc(jax.random.key(0), fk, ys, ref, 8, ancestor_sampling=AS)
        np.testing.assert_array_equal(np.asarray(r.particles_history)[:, 0], np.asarray(ref))
        if not AS:
            assert (np.asarray(r.ancestors)[:, 0] == 0).all()
    # adaptive resampling inside CSMC keeps the reference consistently
    r = csmc(jax.random.key(0), fk, ys, ref, 8, ess_threshold=0.5)
    np.testing.assert_array_equal(np.asarray(r.particles_history)[:, 0], np.asarray(ref))
    assert (np.asarray(r.ancestors)[:, 0] == 0).all()
    traj, idx = sample_trajectory(jax.random.key(3), r)
    assert traj.shape == (15,)


@pytest.mark.slow
def test_theta_gibbs_hook_runs_in_the_scan():
    ys, _, _ = _data(30)

    import numpyro.distributions as dist

    def fk_of(theta):  # theta = observation precision 1 / sigma_y^2
        return smc.bootstrap(
            smc.StateSpaceModel(
                prior=lambda u: dist.Normal(0.0, 1.0 / np.sqrt(0.19)),
                transition=lambda x, u: dist.Normal(0.9 * x, 1.0),
                observation=lambda x, u: dist.Normal(x, 1.0 / jnp.sqrt(theta)),
            )
        )

    def update(key, theta, traj, inputs):
        # conjugate update of the observation noise precision: Gamma(a0 + T/2, b0 + SS/2)
        ss = jnp.sum((inputs - traj) ** 2)
        return jax.random.gamma(key, 1.0 + traj.shape[0] / 2) / (1.0 + ss / 2)

    r = particle_gibbs(jax.random.key(0), fk_of, ys, 20, 200, ancestor_sampling=True, theta=jnp.float32(1.0), gibbs_update=update)
    prec = np.asarray(r.thetas)[50:]
    assert prec.shape == (150,) and np.isfinite(prec).all()
    # the chain moves, and the data pull the precision well above its Gamma(1, 1) prior mean
    assert prec.std() > 0 and np.median(prec) > 2.0


def test_bad_input():
    ys, _, _ = _data(10)
    fk = smc.bootstrap(lgssm.univariate())
    with pytest.raises(ValueError, match="reference trajectory has length 7 but the inputs have 10"):
        csmc(jax.random.key(0), fk, ys, jnp.zeros(7), 8)
    with pytest.raises(ValueError, match="no conditional version"):
        csmc(jax.random.key(0), fk, ys, jnp.zeros(10), 8, resampling="systematic")
    with pytest.raises(ValueError, match="ancestor sampling requires resampling at every step"):
        csmc(jax.random.key(0), fk, ys, jnp.zeros(10), 8, ancestor_sampling=True, ess_threshold=0.5)
    with pytest.raises(ValueError, match="num_particles >= 2"):
        csmc(jax.random.key(0), fk, ys, jnp.zeros(10), 1)
    no_density = fk._replace(transition_log_density=None)
    with pytest.raises(ValueError, match="transition_log_density"):
        csmc(jax.random.key(0), no_density, ys, jnp.zeros(10), 8, ancestor_sampling=True)
