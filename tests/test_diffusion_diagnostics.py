"""dm.sample's degeneracy diagnostics, dimension inference and shape errors, compile-once targets.

* Degenerate runs (issue 13): q^3 of the 2-D annealing toy under VP. With K = 10 Euler–Maruyama
  steps the move is unstable (h |∂drift/∂x| = 0.0999 · (3 · 20 − 10) ≈ 5 > 2 at t = T), the
  samples land at |x| ≈ 90 and log Ẑ ≈ 1e7; with K = 20 (ratio 2.5) the ESS falls to ~1 and
  log Ẑ is in the thousands (exact −3.13). Both must warn (raise on request); K = 100 is healthy.
* Compilations are counted with :func:`smcscale.static.count_compilations` (``jax.monitoring``'s
  ``/jax/core/compile/backend_compile_duration`` event, once per XLA compilation; checked here
  to fire on a fresh jitted function).
"""

from __future__ import annotations

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import smcscale.diffusion as dm
from smcscale.static import count_compilations

SDE = dm.VPSDE()
Q = dm.GaussianMixture.create([0.5, 0.5], [[-2.0, 0.0], [2.0, 0.0]], stds=[0.4, 0.8], labels=[0, 1])
SCORE = Q.score_model(SDE)
N = 1000


def _anneal():
    return dm.anneal(SCORE, 3.0)


# ---------------------------------------------------------------------------------------
# degenerate runs


@pytest.mark.parametrize("k", [10, 20])
@pytest.mark.slow
def test_small_step_counts_warn_and_raise_on_request(k):
    with pytest.warns(dm.DiffusionDiagnosticWarning, match="ESS fell to") as rec:
        r = dm.sample(jax.random.key(0), _anneal(), SDE, N, k)
    assert issubclass(dm.DiffusionDiagnosticWarning, UserWarning)
    msg = str(rec[0].message)
    assert "unstable" in msg and "num_steps >= 25" in msg  # h * 50 <= 2 at t = T: K >= 0.999 * 25
    d = dm.diagnose(r, _anneal(), SDE)
    assert not d.ok and d.min_ess < d.ess_floor == 10.0
    assert d.stability_ratio > 2 and d.min_stable_steps == 25
    print(f"K={k}: min ESS {d.min_ess:.3g} at step {d.min_ess_step}, max|x| {d.max_abs:.3g} (bound {d.bound:.3g}), "
          f"log Z {float(r.log_z):.4g}, stability ratio {d.stability_ratio:.3g}")
    if k == 10:  # the samples explode: far outside the plausible range, log Z absurd
        assert d.max_abs > 50 > d.bound and "plausible range" in msg
        assert float(r.log_z) > 1e5
    else:
        assert float(r.log_z) > 100  # exact: -3.13
    with pytest.raises(dm.DiffusionDiagnosticError, match="unstable.*num_steps >= 25"):
        dm.sample(jax.random.key(0), _anneal(), SDE, N, k, on_degenerate="raise")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dm.sample(jax.random.key(0), _anneal(), SDE, N, k, on_degenerate="ignore")


def test_ess_collapse_alone_warns_and_raises():
    """K = 40 is a stable step size (ratio 1.25) but the weights still collapse (min ESS 1-6 of
    1000 over 5 seeds): the ESS rule alone flags it, and raises after the run on request."""
    ratio, _ = dm.euler_stability(_anneal(), SDE, 40)
    assert ratio == pytest.approx(0.999 / 40 * 50, rel=1e-3) and ratio < 2
    with pytest.warns(dm.DiffusionDiagnosticWarning, match=r"ESS fell to .* below max\(2, 0.01 N\) = 10") as rec:
        dm.sample(jax.random.key(1), _anneal(), SDE, N, 40)
    assert "unstable" not in str(rec[0].message)
    with pytest.raises(dm.DiffusionDiagnosticError, match="ESS fell to"):
        dm.sample(jax.random.key(1), _anneal(), SDE, N, 40, on_degenerate="raise")


@pytest.mark.slow
def test_healthy_run_does_not_warn():
    """K = 100 (the step count of the toy benchmarks): min ESS 17-62% of N over seeds; no
    warning, and diagnose agrees, also on a vmapped batch of seeds."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = dm.sample(jax.random.key(0), _anneal(), SDE, N, 100)
        rb = jax.vmap(lambda k: dm.sample(k, _anneal(), SDE, N, 100))(jax.random.split(jax.random.key(1), 3))
    d = dm.diagnose(r, _anneal(), SDE)
    assert d.ok and d.finite and d.min_ess > 0.1 * N and d.max_abs < d.bound and d.stability_ratio < 2
    db = dm.diagnose(rb, _anneal(), SDE)
    assert db.ok and db.min_ess > 0.1 * N and db.min_ess_step == -1


@pytest.mark.slow
def test_traced_runs_check_the_step_size_at_trace_time_and_diagnose_after():
    keys = jax.random.split(jax.random.key(0), 2)
    with pytest.warns(dm.DiffusionDiagnosticWarning, match="unstable"):
        r = jax.jit(jax.vmap(lambda k: dm.sample(k, _anneal(), SDE, 200, 10)))(keys)
    with pytest.raises(dm.DiffusionDiagnosticError, match="unstable"):
        jax.vmap(lambda k: dm.sample(k, _anneal(), SDE, 200, 10, on_degenerate="raise"))(keys)
    d = dm.diagnose(r, _anneal(), SDE)
    assert not d.ok and d.max_abs > d.bound and len(d.problems) == 3


def test_naive_sampler_explosion_is_out_of_range():
    """fkc=False has no weights (ESS = N at every step): the range rule catches the explosion."""
    with pytest.warns(dm.DiffusionDiagnosticWarning, match="plausible range") as rec:
        r = dm.sample(jax.random.key(0), _anneal(), SDE, 200, 10, fkc=False)
    assert "ESS fell" not in str(rec[0].message)
    assert float(np.min(np.asarray(r.ess))) > 0.99 * 200


def test_stability_bound_matches_the_linearisation():
    """VP at t = T: λ = 20, g² = 20, α² + σ² = 1, so J = 10 − 20 B (σ = g) or 10 − 10 (B + 1)
    (tempered); the first step is the largest |h J| (λ decreases with t)."""
    h = (1.0 - 1e-3) / 10
    for b, noise, jac in ((3.0, "target", 10 - 60), (1.0, "target", 10 - 20), (1.5, "tempered", 10 - 25)):
        r, m = dm.euler_stability(dm.anneal(SCORE, b), SDE, 10, noise)
        assert r == pytest.approx(-h * jac, rel=1e-4), (b, noise)
        assert (m is None) == (r <= 2)
        if m is not None:
            assert dm.euler_stability(dm.anneal(SCORE, b), SDE, m, noise)[0] <= 2 < dm.euler_stability(dm.anneal(SCORE, b), SDE, m - 1, noise)[0]
    with pytest.raises(ValueError, match="on_degenerate"):
        dm.sample(jax.random.key(0), _anneal(), SDE, 10, 100, on_degenerate="loud")


# ---------------------------------------------------------------------------------------
# dimension and shapes


@pytest.mark.slow
def test_dimension_is_inferred_or_the_error_says_what_is_missing():
    def plain(x, t, c=None):
        return -x

    with pytest.raises(ValueError, match=r"cannot infer the dimension d of x.*plain.*dim=d.*score\.dim = d"):
        dm.sample(jax.random.key(0), dm.anneal(plain, 1.0), SDE, 10, 100)
    r = dm.sample(jax.random.key(0), dm.anneal(plain, 1.0), SDE, 10, 100, dim=3)
    assert r.samples.shape == (10, 3)
    plain.dim = 2  # a declared dimension is used
    assert dm.sample(jax.random.key(0), dm.anneal(plain, 1.0), SDE, 10, 100).samples.shape == (10, 2)
    with pytest.raises(ValueError, match="dim=3 but the score model .*plain of expert 0 declares dim 2"):
        dm.sample(jax.random.key(0), dm.anneal(plain, 1.0), SDE, 10, 100, dim=3)
    with pytest.raises(ValueError, match="dim must be an int >= 1"):
        dm.sample(jax.random.key(0), dm.anneal(SCORE, 1.0), SDE, 10, 100, dim=0)
    # analytic models and adapters of networks that declare it
    assert dm.infer_dim(dm.anneal(SCORE, 2.0)) == 2 and SCORE.dim == 2

    def eps(x, t, c=None):
        return jnp.zeros_like(x)

    eps.dim = 5
    assert dm.infer_dim(dm.anneal(dm.from_eps(eps, SDE), 1.0)) == 5


@pytest.mark.parametrize("check", [True, False])
def test_wrong_score_shapes_name_the_model_and_both_shapes(check):
    def flat(x, t, c=None):  # (N,) for (N, d)
        return -x[:, 0]

    def wide(x, t, c=None):  # (N, d + 1)
        return -jnp.concatenate([x, x[:, :1]], 1)

    for fn, got in ((flat, r"\(10,\)"), (wide, r"\(10, 3\)")):
        with pytest.raises(ValueError, match=rf"score model .*{fn.__name__} of expert 0 returned shape {got} for x of shape "
                                             r"\(10, 2\).*expected shape \(10, 2\) \(N, d\)"):
            dm.sample(jax.random.key(0), dm.anneal(fn, 2.0), SDE, 10, 100, dim=2, check=check)
    # CFG: both conditions in one batched call of 2N rows
    bad = dm.cfg(lambda x, t, c=None: x[:, 0], 2.0, 1)
    bad.experts[0].score.null_condition = -1
    with pytest.raises(ValueError, match=r"expected shape \((10|20), 2\)"):
        dm.sample(jax.random.key(0), bad, SDE, 10, 100, dim=2, check=check)


# ---------------------------------------------------------------------------------------
# compile once


def test_compile_counter_sees_compilations():
    with count_compilations() as compiled:
        jax.jit(lambda x: x * 3.0 + 1.0)(jnp.arange(7.0))
    assert compiled() >= 1


def _reward(x):
    return x[:, 0]


BUILDERS = {
    "anneal": lambda: dm.anneal(SCORE, 3.0),
    "product": lambda: dm.product([SCORE, SCORE], [1.0, 2.0]),
    "cfg": lambda: dm.cfg(SCORE, 2.0, 1),
    "cfg_array_condition": lambda: dm.cfg(SCORE, 2.0, jnp.asarray(1)),
    "reward_tilt": lambda: dm.reward_tilt(SCORE, _reward, 1.5),
    "fresh_score_model": lambda: dm.anneal(Q.score_model(SDE), 3.0),
}


@pytest.mark.parametrize("name", list(BUILDERS))
@pytest.mark.slow
def test_equal_targets_compile_once(name):
    build = BUILDERS[name]
    assert build() == build() and hash(build()) == hash(build()) and build().hashable
    counts = []
    for i in range(3):
        with count_compilations() as compiled:
            r = dm.sample(jax.random.key(i), build(), SDE, 256, 100)
        counts.append(compiled())
    print(name, "compilations per call:", counts)
    assert counts[0] >= 0 and counts[1:] == [0, 0], counts
    assert r.samples.shape == (256, 2)
    for i in range(3):  # the plain sampler too (an array condition used to re-jit a fresh function)
        with count_compilations() as compiled:
            dm.euler_maruyama(jax.random.key(i), build(), SDE, 256, 100)
        if i:
            assert compiled() == 0, (name, i, compiled())


@pytest.mark.slow
def test_target_equality_by_value_and_identity():
    a = dm.cfg(SCORE, 2.0, jnp.asarray([0, 1, 1]))
    assert a == dm.cfg(SCORE, 2.0, jnp.asarray([0, 1, 1])) and hash(a) == hash(dm.cfg(SCORE, 2.0, jnp.asarray([0, 1, 1])))
    assert a != dm.cfg(SCORE, 2.0, jnp.asarray([0, 1, 0]))
    assert dm.cfg(SCORE, 2.0, 1) != dm.cfg(SCORE, 2.0, jnp.asarray(1))  # an int and an array trace differently
    assert dm.anneal(SCORE, 3.0) != dm.anneal(SCORE, 2.0)
    assert dm.anneal(lambda x, t, c=None: -x, 1.0) != dm.anneal(lambda x, t, c=None: -x, 1.0)  # functions: identity
    assert Q.score_model(SDE) == Q.score_model(SDE) and Q.score_model(SDE) != Q.score_model(dm.VESDE())

    @jax.jit
    def traced(c):
        t = dm.cfg(SCORE, 2.0, c)
        assert not t.hashable and t == t
        return c

    traced(jnp.asarray(1))
    assert math.isfinite(float(dm.sample(jax.random.key(0), dm.cfg(SCORE, 2.0, jnp.zeros(8, jnp.int32)), SDE, 8, 50,
                                     on_degenerate="ignore").log_z))
