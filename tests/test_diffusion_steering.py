"""FK steering potentials and the noise-search baselines.

The FK-steering target is ``p(x_0) exp(λ r(x_0))``. With a 1-D Gaussian ``q`` and a linear
reward the sampler's N → ∞ limit is known exactly: the product of the potentials along every
lineage is ``exp(λ r(x_K))`` (terminal correction), so the limit is the law of the plain
Euler–Maruyama chain's ``x_K`` (Gaussian ``N(m_K, v_K)``, computed exactly by the recursion of
``_diffusion_gauss``) tilted by ``exp(λ a x)``: mean ``m_K + λ a v_K``. Tolerances: replicate
standard errors with the t quantile (11 d.o.f., p = 1e-4).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import smcscale.diffusion as dm
from _diffusion_gauss import fkc_limit

SDE = dm.VPSDE()
T_QUANTILE = 5.45
Q_MEAN, Q_VAR, LAM, A = 0.5, 0.5, 1.5, 1.0


def _q():
    return dm.GaussianMixture.create([1.0], [[Q_MEAN]], stds=[math.sqrt(Q_VAR)]).score_model(SDE)


def _reward(x):
    return A * x[:, 0]


SCORE = _q()


@pytest.mark.slow
def test_potentials_multiply_to_the_terminal_tilt():
    """Without resampling the final weights are exactly softmax(λ r(x_K)) (the terminal
    correction), whatever happened on the way: checked for the two potentials whose
    intermediate weights do not telescope (``sum`` is like ``max``; ``diff`` telescopes)."""
    for potential in ("max", "rt"):
        r = dm.fk_steering(jax.random.key(1), SCORE, SDE, _reward, 300, 40, lam=LAM, potential=potential, every=7,
                           resample="never", fkc=False)
        expected = jax.nn.log_softmax(LAM * _reward(r.samples))
        np.testing.assert_allclose(np.asarray(r.log_weights), np.asarray(expected), atol=2e-4, err_msg=potential)
        np.testing.assert_allclose(np.asarray(r.rewards), np.asarray(_reward(r.samples)), atol=1e-5)


@pytest.mark.parametrize("potential", ["diff", "max", "sum", "rt"])
@pytest.mark.slow
def test_steering_targets_the_tilted_law(potential):
    k_steps, n, reps = 100, 2000, 12
    _, m_k, v_k = fkc_limit([(1.0, Q_MEAN, Q_VAR)], k_steps, weights=False)
    limit = m_k + LAM * A * v_k
    run = jax.vmap(lambda k: dm.fk_steering(k, SCORE, SDE, _reward, n, k_steps, lam=LAM, potential=potential, every=10))
    r = run(jax.random.split(jax.random.key(11), reps))
    x = np.asarray(r.samples[..., 0], np.float64)
    w = np.asarray(jax.nn.softmax(r.log_weights, -1), np.float64)
    mean = np.sum(w * x, -1)
    se = mean.std(ddof=1) / math.sqrt(reps)
    assert abs(mean.mean() - limit) <= T_QUANTILE * se, (potential, mean.mean(), limit, se)
    # the exact tilted mean (0.5 + 1.5 * 0.5 = 1.25) up to the plain sampler's discretisation error
    assert abs(limit - (Q_MEAN + LAM * A * Q_VAR)) < 0.02
    # schedule: rewards (and weight releases) at steps 0, 10, ..., 100; resampling right after
    did = np.asarray(r.resampled[0])
    k = np.arange(k_steps + 1)
    assert np.array_equal(did, (k >= 1) & ((k - 1) % 10 == 0) & (k - 1 < k_steps))
    assert int(r.verifier_calls[0]) == n * 11 and int(r.nfe[0]) == n * k_steps


@pytest.mark.slow
def test_steering_composes_with_fkc_and_carries_weights():
    """CFG target + reward steering with ESS-adaptive resampling runs, counts both budgets,
    and raises the reward over plain CFG."""
    classes = dm.GaussianMixture.create([1, 1], [[-1.0, 0.0], [1.0, 0.0]], stds=0.6, labels=[0, 1])
    target = dm.cfg(classes.score_model(SDE), 2.0, 0)
    reward = lambda x: -jnp.sum((x - jnp.array([-1.0, 1.0])) ** 2, -1)
    r = dm.fk_steering(jax.random.key(0), target, SDE, reward, 500, 40, lam=2.0, every=5, resample=0.5)
    base = dm.euler_maruyama(jax.random.key(0), target, SDE, 500, 40)
    w = jax.nn.softmax(r.log_weights)
    assert float(jnp.sum(w * reward(r.samples))) > float(jnp.mean(reward(base.samples))) + 0.3
    assert int(r.nfe) == 500 * 40 * 2 and int(r.verifier_calls) == 500 * 9


def test_steering_bad_input():
    with pytest.raises(ValueError, match="unknown steering potential"):
        dm.fk_steering(jax.random.key(0), SCORE, SDE, _reward, 10, 5, potential="best")
    with pytest.raises(ValueError, match="every"):
        dm.fk_steering(jax.random.key(0), SCORE, SDE, _reward, 10, 5, every=0)
    with pytest.raises(ValueError, match="lam"):
        dm.fk_steering(jax.random.key(0), SCORE, SDE, _reward, 10, 5, lam=float("nan"))


# ---------------------------------------------------------------------------------------
# noise search (Ma et al. 2025)

TWO_MODES = dm.GaussianMixture.create([0.8, 0.2], [[-2.0], [2.0]], stds=[0.5, 0.5])
TM_SCORE = TWO_MODES.score_model(SDE)


def _near_two(x):
    return -((x[:, 0] - 2.0) ** 2)


def test_random_search_is_best_of_n_with_counted_budget():
    res = dm.random_search(jax.random.key(0), TM_SCORE, SDE, _near_two, 64, 50, keep=64)
    s = np.asarray(res.scores)
    assert np.all(np.diff(s) <= 0)  # best first
    np.testing.assert_allclose(np.asarray(_near_two(res.samples)), s, atol=1e-5)
    assert res.nfe == 64 * 50 and res.verifier_calls == 64
    best = dm.random_search(jax.random.key(0), TM_SCORE, SDE, _near_two, 64, 50)
    assert float(best.scores[0]) == pytest.approx(float(s[0]))
    # with 20% of the mass near 2, the best of 64 is there
    assert float(best.samples[0, 0]) > 1.0


def test_zero_order_search_improves_monotonically():
    res = dm.zero_order_search(jax.random.key(1), TM_SCORE, SDE, _near_two, 8, 6, 40, rho=0.6)
    h = np.asarray(res.history)
    assert len(h) == 7 and np.all(np.diff(h) >= 0)
    assert res.nfe == (1 + 6 * 8) * 40 and res.verifier_calls == 1 + 6 * 8
    assert float(_near_two(res.samples)[0]) == pytest.approx(float(res.scores[0]), abs=1e-5)


@pytest.mark.slow
def test_path_search_keeps_the_best_paths():
    n, m, k = 16, 4, 40
    res = dm.path_search(jax.random.key(2), TM_SCORE, SDE, _near_two, n, m, k, start_step=20, delta_f=4, delta_b=8)
    assert res.samples.shape == (n, 1)
    assert np.all(np.diff(np.asarray(res.scores)) <= 0)
    # budget: 20 steps for n paths, then rounds 20 -> 24 -> 32 -> 40 of n*m*(8 or 4) steps + x0hat evaluations
    rounds = [(20, 16, 24), (24, 20, 28), (28, 24, 32), (32, 28, 36), (36, 32, 40)]
    nfe = n * 20 + sum(n * m * (down - up) + (n * m if down < k else 0) for _, up, down in rounds)
    assert res.nfe == nfe and res.verifier_calls == n * m * len(rounds)
    plain = dm.euler_maruyama(jax.random.key(2), dm.anneal(TM_SCORE, 1.0), SDE, n, k).samples
    assert float(jnp.mean(_near_two(res.samples))) > float(jnp.mean(_near_two(plain))) + 1.0


def test_search_bad_input():
    with pytest.raises(ValueError, match="delta_b"):
        dm.path_search(jax.random.key(0), TM_SCORE, SDE, _near_two, 4, 2, 10, delta_f=4, delta_b=4)
    with pytest.raises(ValueError, match="verifier must return shape"):
        dm.random_search(jax.random.key(0), TM_SCORE, SDE, lambda x: x, 4, 5)
    with pytest.raises(ValueError, match="num_candidates"):
        dm.random_search(jax.random.key(0), TM_SCORE, SDE, _near_two, 0, 5)
