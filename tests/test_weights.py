import jax.numpy as jnp
import numpy as np
import pytest

from smcscale import weights as W


def test_log_normalize_and_ess_match_direct_formulas():
    lw = jnp.array([0.3, -1.2, 2.0, -jnp.inf, 0.0])
    w = np.exp(np.array([0.3, -1.2, 2.0, -np.inf, 0.0]))
    w = w / w.sum()
    np.testing.assert_allclose(W.normalized_weights(lw), w, rtol=1e-6)
    np.testing.assert_allclose(W.ess(lw), 1.0 / np.sum(w**2), rtol=1e-5)
    np.testing.assert_allclose(W.log_mean_exp(lw), np.log(np.mean(np.exp(np.asarray(lw)))), rtol=1e-6)


def test_huge_log_weights_do_not_overflow():
    lw = jnp.array([1000.0, 1000.0, -1000.0])
    np.testing.assert_allclose(W.normalized_weights(lw), [0.5, 0.5, 0.0], atol=1e-7)
    np.testing.assert_allclose(W.ess(lw), 2.0, rtol=1e-5)
    assert np.isfinite(W.log_mean_exp(lw))


def test_all_minus_inf_is_a_dead_population_not_nan():
    lw = jnp.full((4,), -jnp.inf)
    assert np.all(np.isneginf(W.log_normalize(lw)))
    assert np.all(W.normalized_weights(lw) == 0)
    assert float(W.ess(lw)) == 0.0
    assert np.isneginf(W.log_mean_exp(lw))


@pytest.mark.parametrize(
    "bad, err",
    [
        (jnp.array([0.0, jnp.nan]), "NaN at indices \\[1\\]"),
        (jnp.array([0.0, jnp.inf]), "\\+inf at indices \\[1\\]"),
        (jnp.zeros((2, 2)), "shape \\(N,\\)"),
        (jnp.zeros((0,)), "empty"),
        (jnp.zeros((3,), jnp.int32), "floating dtype"),
    ],
)
def test_check_log_weights_messages(bad, err):
    with pytest.raises((ValueError, TypeError), match=err):
        W.check_log_weights(bad)


def test_reweight_numpy_and_jax_follow_the_same_rule():
    from smcscale.weights import reweight

    lw = np.log(np.array([0.5, 0.25, 0.25]))
    lg = np.array([np.log(2.0), -np.inf, 0.0])
    # new unnormalised weights 0.5*2, 0, 0.25 -> sum 1.25
    new_np, inc_np = reweight(lw, lg)
    assert isinstance(new_np, np.ndarray) and new_np.dtype == np.float64
    np.testing.assert_allclose(np.exp(new_np), [0.8, 0.0, 0.2], rtol=1e-12)
    assert inc_np == pytest.approx(np.log(1.25), rel=1e-12)
    new_j, inc_j = reweight(jnp.asarray(lw, jnp.float32), jnp.asarray(lg, jnp.float32))
    np.testing.assert_allclose(np.exp(np.asarray(new_j)), [0.8, 0.0, 0.2], rtol=1e-6)
    assert float(inc_j) == pytest.approx(np.log(1.25), rel=1e-6)
    # a dead population: all -inf, increment -inf, no NaN
    for xp in (np, jnp):
        d, inc = reweight(xp.asarray(lw), xp.full(3, -np.inf))
        assert np.all(np.isneginf(np.asarray(d))) and np.isneginf(float(inc))
