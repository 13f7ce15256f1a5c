"""The digits score network and classifier: tiny config, trained in seconds into a temporary
cache; cache round trip; the network as a score model under CFG with FKC."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("optax")

import smcscale.diffusion as dm
from smcscale.diffusion import digits


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("smcscale-cache")
    return root, digits.load_or_train(digits.TINY, directory=root)


def test_data_split_and_scaling():
    xtr, ytr, xte, yte = digits.load_data(digits.TINY)
    assert xtr.shape[1] == 64 and len(xtr) + len(xte) == 1797
    assert xtr.min() >= -1.0 and xtr.max() <= 1.0
    assert set(np.unique(ytr)) == set(range(10))
    assert len(xte) == round(0.2 * 1797)


@pytest.mark.slow
def test_train_cache_and_reload(tiny, monkeypatch):
    root, models = tiny
    assert models.info["cached"] is False
    files = sorted(p.name for p in root.iterdir())
    key = digits.TINY.key()
    assert f"digits-score-{key}.msgpack" in files and f"digits-classifier-{key}.msgpack" in files
    # losses went down during training; the classifier beats chance by far even when tiny
    assert models.info["classifier"]["test_accuracy"] > 0.8
    # the cache directory can come from the environment; the second load trains nothing
    monkeypatch.setenv("SMCSCALE_CACHE", str(root))
    assert digits.cache_dir() == root
    again = digits.load_or_train(digits.TINY)
    assert again.info["cached"] is True
    a = jax.tree_util.tree_leaves(models.score.params)
    b = jax.tree_util.tree_leaves(again.score.params)
    assert all(np.array_equal(np.asarray(u), np.asarray(v)) for u, v in zip(a, b))


@pytest.mark.slow
def test_network_is_a_score_model_with_batched_guidance(tiny):
    _, models = tiny
    s = models.score
    x = jax.random.normal(jax.random.key(0), (6, 64))
    t = jnp.float32(0.5)
    out = s(x, t, 3)
    assert out.shape == (6, 64) and bool(jnp.all(jnp.isfinite(out)))
    np.testing.assert_allclose(s(x, t, None), s(x, t, digits.NULL_CLASS), atol=1e-6)
    per_row = s(x, t, jnp.array([3, 3, 3, 10, 10, 10]))
    np.testing.assert_allclose(per_row[:3], out[:3], atol=1e-5)
    # ε adapter: s = -ε̂ / σ_t
    np.testing.assert_allclose(out, -s.eps(x, t, 3) / models.sde.sigma(t), rtol=1e-5, atol=1e-5)
    # CFG with FKC on the network: one batched call per step, budgets counted (the tiny network
    # at 10 steps is not meant to give good samples: they leave the data range, which the
    # degeneracy diagnostic of sample() reports; this test is about shapes and budgets)
    r = dm.sample(jax.random.key(1), dm.cfg(s, 2.0, 7), models.sde, 16, 10, on_degenerate="ignore")
    assert r.samples.shape == (16, 64) and bool(jnp.all(jnp.isfinite(r.samples)))
    assert int(r.nfe) == 16 * 10 * 2 and int(r.score_calls) == 10
    assert np.isfinite(float(r.log_z))


@pytest.mark.slow
def test_metrics(tiny):
    _, models = tiny
    _, _, xte, yte = digits.load_data(digits.TINY)
    acc = digits.accuracy(models.classifier, xte, yte)
    assert acc == pytest.approx(models.info["classifier"]["test_accuracy"])
    x = np.asarray(xte[:50])
    d = digits.diversity(x)
    assert d > 0
    # weights: duplicating a point by weight 2 vs copying it gives the same value
    dup = np.concatenate([x[:10], x[:10], x[10:30]])
    lw = np.log(np.r_[np.full(10, 2.0), np.ones(20)])
    # same pairs, except that the copies of a point also pair with each other (distance 0):
    # 1 - sum W^2 = 0.9625 (weighted) vs 1 - 40/40^2 = 0.975 (copies)
    assert digits.diversity(dup) == pytest.approx(digits.diversity(x[:30], lw) * 0.9625 / 0.975, rel=1e-5)
    reward = digits.class_log_prob(models.classifier, 3)
    assert reward(jnp.asarray(x)).shape == (50,)
