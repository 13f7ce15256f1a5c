"""smcscale.prng: the unrolled Threefry keys draw exactly what JAX's threefry2x32 draws."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import smcscale as smc
import smcscale.smc as smc_module
from smcscale.models import lgssm
from smcscale.prng import FAST_THREEFRY, _MIN_SIZE, fast_key, threefry2x32_hash

# below, at and above the unrolling threshold; odd sizes; 2-D; empty
SHAPES = [(), (1,), (3,), (_MIN_SIZE - 1,), (_MIN_SIZE,), (1001,), (7, 13), (2, 3, 50), (0,)]

SAMPLERS = {
    "normal": lambda k, s: jax.random.normal(k, s),
    "uniform": lambda k, s: jax.random.uniform(k, s),
    "bits8": lambda k, s: jax.random.bits(k, s, jnp.uint8),
    "bits16": lambda k, s: jax.random.bits(k, s, jnp.uint16),
    "bits32": lambda k, s: jax.random.bits(k, s, jnp.uint32),
    "randint": lambda k, s: jax.random.randint(k, s, -5, 1000),
    "split": lambda k, s: jax.random.key_data(jax.random.split(k, s)),
    "bernoulli": lambda k, s: jax.random.bernoulli(k, 0.3, s),
}


def _same(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a, b)


def test_hash_matches_threefry_known_answer():
    # Salmon et al. (2011) Random123 known-answer test for Threefry-2x32-20
    k = np.uint32([0x13198A2E, 0x03707344])
    x = np.uint32([0x243F6A88, 0x85A308D3])
    y1, y2 = threefry2x32_hash(jnp.uint32(k[0]), jnp.uint32(k[1]), jnp.uint32(x[0]), jnp.uint32(x[1]))
    assert (int(y1), int(y2)) == (0xC4923A9C, 0x483DF7A0)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.slow
def test_bit_identical_to_threefry(name, jit):
    draw = SAMPLERS[name]
    for seed in (0,) if jit else (0, 123456789):
        key = jax.random.key(seed)
        for shape in SHAPES:
            f = jax.jit(draw, static_argnums=1) if jit else draw
            _same(f(key, shape), f(fast_key(key), shape))


def test_bit_identical_for_other_samplers_and_transforms():
    key = jax.random.key(7)
    fast = fast_key(key)
    logits = jnp.linspace(-2.0, 2.0, 300)
    _same(jax.random.categorical(key, logits, shape=(500,)), jax.random.categorical(fast, logits, shape=(500,)))
    _same(jax.random.permutation(key, 1000), jax.random.permutation(fast, 1000))
    _same(jax.random.gamma(key, 0.7, (200,)), jax.random.gamma(fast, 0.7, (200,)))
    _same(jax.random.key_data(jax.random.fold_in(key, 99)), jax.random.key_data(jax.random.fold_in(fast, 99)))
    # batched keys, vmap
    keys = jax.random.split(key, 5)
    draw = jax.vmap(lambda k: jax.random.normal(k, (200,)))
    _same(draw(keys), draw(fast_key(keys)))
    _same(draw(keys), draw(jax.vmap(fast_key)(keys)))


def test_legacy_non_partitionable_mode_defers_to_jax():
    key = jax.random.key(3)
    with jax.threefry_partitionable(False):
        for shape in [(5,), (1000,), (4, 33)]:
            _same(jax.random.normal(key, shape), jax.random.normal(fast_key(key), shape))
            _same(jax.random.key_data(jax.random.split(key, shape)), jax.random.key_data(jax.random.split(fast_key(key), shape)))


def test_fast_key_passes_other_keys_through():
    raw = jax.random.PRNGKey(0)
    assert fast_key(raw) is raw
    rbg = jax.random.key(0, impl="rbg")
    assert fast_key(rbg) is rbg
    fast = fast_key(jax.random.key(0))
    assert jax.random.key_impl(fast) == jax.random.key_impl(jax.random.key(0, impl=FAST_THREEFRY))
    assert fast_key(fast) is fast
    assert fast_key(3) == 3


def test_filter_result_unchanged_by_fast_keys(monkeypatch):
    """smc.run converts the key; its output is exactly the stock-threefry output."""
    fk = smc.bootstrap(lgssm.univariate(0.9, 1.0, 0.2))
    ys = jnp.asarray(np.random.default_rng(0).normal(size=20), jnp.float32)
    key = jax.random.key(11)
    fast = smc.run(key, fk, ys, 2000, ess_threshold=0.5, record=("ancestors",))
    monkeypatch.setattr(smc_module, "fast_key", lambda k: k)
    stock = smc.run(key, fk, ys, 2000, ess_threshold=0.5, record=("ancestors",))
    _same(fast.log_z, stock.log_z)
    _same(fast.particles, stock.particles)
    _same(fast.ancestors, stock.ancestors)
