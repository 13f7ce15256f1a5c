"""Build once, compile once: equal builders give equal static arguments, so the jitted
entry points compile on the first call only (counted with smcscale.static.count_compilations)."""

import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import optax
import pytest

import smcscale as smc
from smcscale.models import lgssm
from smcscale.static import cached_builder, count_compilations, static_key, Uncacheable

# the README's first model, verbatim
ssm = smc.StateSpaceModel(
    prior=lambda u: dist.Normal(0.0, 2.3),
    transition=lambda x_prev, u: dist.Normal(0.9 * x_prev, 1.0),
    observation=lambda x, u: dist.StudentT(3.0, x, 0.5),
)
ys = jnp.sin(jnp.arange(100) / 10.0)


def _compiles_per_call(fn, calls=5):
    counts, times = [], []
    for i in range(calls):
        with count_compilations() as compiled:
            t0 = time.perf_counter()
            out = fn(i)
            jax.block_until_ready(out)
            times.append(time.perf_counter() - t0)
        counts.append(compiled())
    return counts, times


def test_readme_first_model_compiles_once():
    """The README's first model, called 5 times with freshly built bootstrap(ssm) and
    weighted_mean(): the first call compiles, calls 2-5 compile nothing."""

    def call(i):
        result = smc.run(
            jax.random.key(i), smc.bootstrap(ssm), ys, num_particles=1_000,
            ess_threshold=0.5, resampling="systematic",
            summaries={"mean": smc.weighted_mean()},
            record=["ancestors"],
        )
        return result.log_z

    counts, times = _compiles_per_call(call)
    assert counts[0] >= 1, counts  # the listener does see compilations
    assert counts[1:] == [0, 0, 0, 0], counts
    print(f"first call {times[0]:.3f} s, calls 2-5 median {np.median(times[1:]) * 1e3:.1f} ms")


def test_builders_return_the_same_object_for_equal_arguments():
    assert smc.bootstrap(ssm) is smc.bootstrap(ssm)
    assert smc.weighted_mean() is smc.weighted_mean()
    f = lambda x: x**2  # noqa: E731
    assert smc.weighted_mean(f) is smc.weighted_mean(f)
    assert smc.weighted_mean(f) is not smc.weighted_mean(lambda x: x**2)  # a new lambda is a new summary
    assert lgssm.univariate(0.9, 1.0, 0.2) is lgssm.univariate(0.9, 1.0, 0.2)
    assert lgssm.univariate(0.9) is not lgssm.univariate(0.8)
    params = smc.kalman.univariate_params(0.9, 1.0, 0.2)
    params2 = smc.kalman.univariate_params(0.9, 1.0, 0.2)  # equal arrays, new objects
    assert lgssm.multivariate(params) is lgssm.multivariate(params2)
    prop, prop0 = lgssm.univariate_optimal_proposal()
    m = lgssm.univariate()
    assert smc.guided(m, prop, prop0) is smc.guided(m, prop, prop0)
    la = lgssm.univariate_lookahead()
    assert smc.auxiliary(m, la) is smc.auxiliary(m, la)
    assert smc.learning.default_optimizer() is smc.learning.default_optimizer()


def test_static_key_rules():
    assert static_key(1) != static_key(1.0) and static_key(True) != static_key(1)
    assert static_key(jnp.arange(3.0)) == static_key(jnp.arange(3.0))  # by value
    assert static_key(jnp.arange(3.0)) != static_key(jnp.arange(3.0) + 1)
    assert static_key((1, [2.0, "a"], {"k": None})) == static_key((1, [2.0, "a"], {"k": None}))
    with pytest.raises(Uncacheable):
        static_key(np.zeros(1 << 17))
    with pytest.raises(Uncacheable):
        static_key(bytearray(b"x"))

    calls = []

    @cached_builder
    def build(a, b=1):
        calls.append((a, b) if isinstance(a, int) else "traced")
        return object()

    assert build(1) is build(1) and build(1) is not build(1, b=2)
    # a traced argument is not cached: the builder runs each time, with the same result type
    jax.jit(lambda x: (build(x), x)[1])(1.0)
    jax.jit(lambda x: (build(x), x)[1])(2.0)
    assert calls.count((1, 1)) == 1 and calls.count("traced") == 2


@pytest.mark.parametrize("what", ["guided", "auxiliary", "lgssm_multivariate", "stochastic_volatility"])
def test_other_builders_compile_once(what):
    params = smc.kalman.univariate_params(0.9, 1.0, 0.2)
    data = ys[:20]

    def fk_of():
        if what == "guided":
            prop, prop0 = lgssm.univariate_optimal_proposal()
            return smc.guided(lgssm.univariate(), prop, prop0)
        if what == "auxiliary":
            return smc.auxiliary(lgssm.univariate(), lgssm.univariate_lookahead())
        if what == "lgssm_multivariate":
            return smc.bootstrap(lgssm.multivariate(smc.kalman.univariate_params(0.9, 1.0, 0.2)))
        return smc.bootstrap(smc.models.stochastic_volatility.stochastic_volatility())

    inputs = data[:, None] if what == "lgssm_multivariate" else data
    del params
    counts, _ = _compiles_per_call(lambda i: smc.run(jax.random.key(i), fk_of(), inputs, 200).log_z, calls=3)
    assert counts[0] >= 1 and counts[1:] == [0, 0], counts


@pytest.mark.slow
def test_particle_gibbs_csmc_paris_compile_once():
    m = lgssm.univariate()
    data = ys[:15]

    def pg(i):
        return smc.csmc.particle_gibbs(jax.random.key(i), smc.bootstrap(m), data, 16, 3, ancestor_sampling=True).log_z

    counts, _ = _compiles_per_call(pg, calls=3)
    assert counts[1:] == [0, 0], counts

    ref = jnp.zeros(15)

    def cs(i):
        return smc.csmc.csmc(jax.random.key(i), smc.bootstrap(m), data, ref, 16).log_z

    counts, _ = _compiles_per_call(cs, calls=3)
    assert counts[1:] == [0, 0], counts

    def h(x_prev, x, u):
        return x

    def paris(i):
        return smc.smoothing.paris(jax.random.key(i), smc.bootstrap(m), data, 32, h).estimate

    counts, _ = _compiles_per_call(paris, calls=3)
    assert counts[1:] == [0, 0], counts


@pytest.mark.slow
def test_mle_default_optimiser_compiles_once():
    def model_fn(theta):
        rho = jnp.tanh(theta["r"])
        return smc.StateSpaceModel(
            prior=lambda u: dist.Normal(0.0, 1.0),
            transition=lambda x_prev, u: dist.Normal(rho * x_prev, 1.0),
            observation=lambda x, u: dist.Normal(x, 0.5),
        )

    data = ys[:10]

    def fit(i):
        return smc.learning.mle(
            jax.random.key(i), model_fn, {"r": jnp.array(0.5)}, data, 16, 3, estimator="stop_gradient"
        ).theta["r"]

    counts, _ = _compiles_per_call(fit, calls=3)
    assert counts[1:] == [0, 0], counts
    # a user optimiser kept by the caller compiles once too
    opt = optax.sgd(1e-3)
    counts, _ = _compiles_per_call(
        lambda i: smc.learning.mle(jax.random.key(i), model_fn, {"r": jnp.array(0.5)}, data, 16, 2, optimizer=opt,
                                   estimator="stop_gradient").theta["r"],
        calls=3,
    )
    assert counts[1:] == [0, 0], counts
