"""FKC on exact targets: Gaussian mixtures (MMD), 1-D Gaussians (moments, log Z), reward tilts.

Tolerances come from theory, not from recorded outputs:

* 1-D Gaussian experts: the discretised sampler's N → ∞ limit is computed exactly
  (``_diffusion_gauss.fkc_limit``, an independent float64 Gaussian recursion). The sampler
  must match that limit within ``Z`` standard errors estimated from independent replicates
  (``Z = 4.5``: a two-sided normal p ≈ 7e-6; with 12 replicates the t-quantile at that p is
  larger, so we use the t quantile for 11 d.o.f. at p = 1e-4, ≈ 5.45). Against the *exact*
  value the tolerance is that plus the derived discretisation error ``|limit − exact|``.
* The limit itself converges to the exact value at first order (error ∝ 1/K), checked on
  its own; the naive sampler's limit is far off (the corrector is needed).
* Mixtures in 2-D: MMD² to exact samples, median over 3 seeds, N = 8000, 100 steps, against
  the thresholds of the issue (the exact-vs-exact floor is ~±5e-4 at this N).
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
from _diffusion_gauss import exact, fkc_limit

T_QUANTILE = 5.45  # t distribution, 11 d.o.f., two-sided p = 1e-4
R, N1, K1 = 12, 4000, 200  # replicates, particles, steps of the 1-D checks
SDE = dm.VPSDE()


def _gauss(mean, var):
    return dm.GaussianMixture.create([1.0], [[mean]], stds=[math.sqrt(var)])


def _replicates(target, *, num_steps=K1, n=N1, reps=R, resample="every", fkc=True, seed=0):
    f = jax.jit(jax.vmap(lambda k: dm.sample(k, target, SDE, n, num_steps, resample=resample, fkc=fkc)))
    r = f(jax.random.split(jax.random.key(seed), reps))
    x = np.asarray(r.samples[..., 0], np.float64)
    w = np.exp(np.asarray(r.log_weights, np.float64))
    w /= w.sum(-1, keepdims=True)
    mean = np.sum(w * x, -1)
    var = np.sum(w * (x - mean[:, None]) ** 2, -1)
    return mean, var, np.asarray(r.log_z, np.float64), r


def _close(est, target_value, extra=0.0):
    """|mean(est) - target| <= t * SE + extra; returns the pieces for the message."""
    se = np.std(est, ddof=1) / math.sqrt(len(est))
    err = abs(np.mean(est) - target_value)
    print(f"  err/tol = {err / (T_QUANTILE * se + extra):.2f}")
    return err <= T_QUANTILE * se + extra, f"mean {np.mean(est):.5f} vs {target_value:.5f}: err {err:.5f}, SE {se:.5f}, extra {extra:.5f}"


def _log_mean_exp_se(lz):
    """log of the mean of Ẑ over replicates (Ẑ is unbiased) and its delta-method SE."""
    m = lz.max()
    e = np.exp(lz - m)
    return m + math.log(e.mean()), e.std(ddof=1) / math.sqrt(len(e)) / e.mean()


CASES = {
    # name: (experts [(beta, mean, var)], tilt (beta, a) or None)
    "anneal_beta2": ([(2.0, 1.0, 0.25)], None),
    "product": ([(1.0, 2.0, 1.0 / 3.0), (1.0, 3.0, 0.5)], None),
    "linear_tilt": ([(1.0, 0.5, 0.5)], (1.5, 1.0)),
}


def _target(name):
    experts, tilt = CASES[name]
    if name == "anneal_beta2":
        (b, m, v), = experts
        return dm.anneal(_gauss(m, v).score_model(SDE), b)
    if name == "product":
        return dm.product([_gauss(m, v).score_model(SDE) for _, m, v in experts])
    (_, m, v), = experts
    return dm.reward_tilt(_gauss(m, v).score_model(SDE), lambda x: tilt[1] * x[:, 0], tilt[0])


# ---------------------------------------------------------------------------------------
# the reference recursion itself: converges to the exact answer, the naive limit does not


@pytest.mark.parametrize("name", list(CASES))
def test_discretised_limit_converges_to_exact(name):
    experts, tilt = CASES[name]
    lz, mean, var = exact(experts, tilt)
    errs = []
    for k in (500, 1000, 2000, 4000):
        l_k, m_k, v_k = fkc_limit(experts, k, tilt=tilt)
        errs.append((abs(l_k - lz), abs(m_k - mean), abs(v_k - var)))
    errs = np.array(errs)
    # log Z: first order, doubling K halves the error (ratio in [1.8, 2.2]); the moments'
    # errors shrink too, down to the floor set by stopping at t_min (variance ~1e-4)
    ratios = errs[:-1, 0] / errs[1:, 0]
    assert np.all((ratios > 1.8) & (ratios < 2.2)), (errs, ratios)
    assert np.all(np.diff(errs[:, 1:], axis=0) <= 1e-6), errs
    assert errs[-1, 1] < 5e-4 and errs[-1, 2] < 5e-4 and errs[-1, 0] < 0.05, errs[-1]
    # without the corrector the limit is wrong by far more than the discretisation error
    _, m_naive, v_naive = fkc_limit(experts, 4000, tilt=tilt, weights=False)
    assert max(abs(m_naive - mean), abs(v_naive - var)) > 20 * max(errs[-1, 1], errs[-1, 2])


# ---------------------------------------------------------------------------------------
# 1-D Gaussian moments and log Z: sampler vs its exact limit and vs the exact target


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.slow
def test_gaussian_moments_and_log_z(name):
    experts, tilt = CASES[name]
    lz_exact, mean_exact, var_exact = exact(experts, tilt)
    lz_lim, mean_lim, var_lim = fkc_limit(experts, K1, tilt=tilt)
    mean, var, lz, res = _replicates(_target(name))
    # the sampler implements the discretised FK model: matches its N -> inf limit
    for est, lim in ((mean, mean_lim), (var, var_lim)):
        ok, msg = _close(est, lim)
        assert ok, f"{name}: {msg}"
    # ... hence the exact moments within MC error + the derived discretisation error
    for est, ex, lim in ((mean, mean_exact, mean_lim), (var, var_exact, var_lim)):
        ok, msg = _close(est, ex, extra=abs(lim - ex))
        assert ok, f"{name} vs exact: {msg}"
    # log Z: Ẑ is unbiased for the discretised model's normaliser
    lme, se = _log_mean_exp_se(lz)
    assert abs(lme - lz_lim) <= T_QUANTILE * se + 1e-3, (name, lme, lz_lim, se)
    # hence the known normaliser up to the derived (first-order, see above) discretisation error
    assert abs(lme - lz_exact) <= T_QUANTILE * se + abs(lz_lim - lz_exact) + 1e-3
    # budget: one evaluation per expert per step; resampled before the last move: equal weights
    assert int(res.nfe[0]) == N1 * K1 * len(experts)
    assert np.asarray(res.resampled)[:, 1:].all()
    assert np.all(np.asarray(res.ess)[:, -1] > 0.999 * N1)


def test_naive_gaussian_moments_are_wrong():
    """The naive sampler (same drift, no weights) misses the annealed variance by far more
    than Monte Carlo error: exact 0.125, its limit ~0.084 (design notes: ~0.085)."""
    experts, _ = CASES["anneal_beta2"]
    target = _target("anneal_beta2")
    f = jax.vmap(lambda k: dm.euler_maruyama(k, target, SDE, N1, K1).samples[:, 0])
    x = np.asarray(f(jax.random.split(jax.random.key(1), R)), np.float64)
    _, _, v_naive = fkc_limit(experts, K1, weights=False)
    ok, msg = _close(x.var(-1), v_naive)
    assert ok, msg
    assert abs(np.mean(x.var(-1)) - 0.125) > 0.03


@pytest.mark.slow
def test_adaptive_resampling_and_window_keep_the_target():
    """ESS-adaptive resampling and a resampling window change the variance, not the target."""
    experts, _ = CASES["anneal_beta2"]
    _, mean_lim, var_lim = fkc_limit(experts, K1)
    target = _target("anneal_beta2")
    mean, var, _, res = _replicates(target, resample=0.5, seed=3)
    for est, lim in ((mean, mean_lim), (var, var_lim)):
        ok, msg = _close(est, lim)
        assert ok, "adaptive: " + msg
    resampled = np.asarray(res.resampled)
    assert 0 < resampled.mean() < 1  # some steps, not all
    f = jax.jit(jax.vmap(lambda k: dm.sample(k, target, SDE, N1, K1, window=(0.2, 0.8))))
    r = f(jax.random.split(jax.random.key(4), R))
    x = np.asarray(r.samples[..., 0], np.float64)
    w = np.asarray(jax.nn.softmax(r.log_weights, -1), np.float64)
    mw = np.sum(w * x, -1)
    vw = np.sum(w * (x - mw[:, None]) ** 2, -1)
    for est, lim in ((mw, mean_lim), (vw, var_lim)):
        ok, msg = _close(est, lim)
        assert ok, "window: " + msg
    t = np.asarray(r.times[0])
    did = np.asarray(r.resampled[0])
    # the engine resamples before step k using the weights released at step k - 1
    allowed = np.zeros_like(did)
    allowed[1:] = (t[:-1] >= 0.2) & (t[:-1] <= 0.8)
    assert did[allowed].all() and not did[~allowed].any()
    # weights released after the window stay on the final particles
    assert float(np.asarray(r.ess)[:, -1].mean()) < N1


@pytest.mark.slow
def test_importance_sampling_without_resampling_collapses():
    """Pure importance weighting (no resampling) degenerates: final ESS a few % of N. (With
    resampling every step the final weights are equal: checked in the moments test.)"""
    r = dm.sample(jax.random.key(0), _target("anneal_beta2"), SDE, 2000, 200, resample="never")
    assert not np.asarray(r.resampled).any()
    assert float(r.ess[-1]) < 0.05 * 2000


# ---------------------------------------------------------------------------------------
# 2-D Gaussian mixtures: MMD² to exact samples


# thresholds of the issue: FKC median below, naive median above
MMD_THRESHOLDS = {"anneal": (0.008, 0.015), "product": (0.005, 0.009), "cfg": (0.010, 0.025)}


@pytest.fixture(scope="module")
def toys():
    return dm.toy_targets(SDE)


MMD_N, MMD_K, SEEDS = 8000, 100, 3


@pytest.mark.slow
@pytest.mark.parametrize("name", ["anneal", "product", "cfg"])
def test_mmd_fkc_beats_naive_on_mixtures(name, toys):
    toy = toys[name]
    target = toy.target
    fkc_max, naive_min = MMD_THRESHOLDS[name]
    mmd = dm.MMD(np.asarray(toy.sample_exact(jax.random.key(100), MMD_N)))  # median-heuristic bandwidth
    keys = jax.random.split(jax.random.key(7), SEEDS)
    fk = jax.vmap(lambda k: dm.sample(k, target, SDE, MMD_N, MMD_K))(keys)
    naive = jax.vmap(lambda k: dm.euler_maruyama(k, target, SDE, MMD_N, MMD_K).samples)(keys)
    m_fkc = [mmd(fk.samples[i], fk.log_weights[i]) for i in range(SEEDS)]
    m_naive = [mmd(naive[i]) for i in range(SEEDS)]
    print(f"{name}: MMD2 fkc {np.round(m_fkc, 5)} naive {np.round(m_naive, 5)} (bandwidth {mmd.bandwidth:.3f})")
    assert np.median(m_fkc) < fkc_max, m_fkc
    assert np.median(m_naive) > naive_min, m_naive


def test_mmd_of_exact_samples_is_near_zero_and_weights_count():
    q = dm.GaussianMixture.create([0.3, 0.7], [[-1.0, 0.0], [1.5, 1.0]], stds=[0.5, 1.0])
    y = np.asarray(q.sample(jax.random.key(0), 3000))
    x = np.asarray(q.sample(jax.random.key(1), 3000))
    m = dm.mmd2(x, y)
    # U-statistic: mean 0, sd ~ O(1/n); 3000 points give |MMD²| well below 2e-3
    assert abs(m) < 2e-3
    assert dm.mmd2(x + 1.0, y) > 0.05
    # integer weights = duplicated points (apart from the dropped diagonal of duplicates)
    xd = np.concatenate([x[:1000], x[:1000], x[1000:2000]])
    lw = np.log(np.r_[np.full(1000, 2.0), np.ones(1000)])
    a = dm.mmd2(x[:2000], y, 1.0, x_log_weights=lw)
    b = dm.mmd2(xd, y, 1.0)
    assert abs(a - b) < 2e-3
    assert dm.MMD(y, 1.0)(x) == pytest.approx(dm.mmd2(x, y, 1.0), abs=1e-6)


# ---------------------------------------------------------------------------------------
# other SDEs, the noise option, determinism, budgets


@pytest.mark.parametrize("sde,name", [(dm.VESDE(), "anneal_beta2"), (dm.EDMSDE(), "product")], ids=["ve-anneal", "edm-product"])
@pytest.mark.slow
def test_ve_and_edm(sde, name):
    """The exact 1-D targets under VE and EDM (no closed-form discretisation error here: the
    tolerance is the replicate SE plus an allowance of 2% of the variance, about twice the VP
    discretisation error at the same 200 steps, see the recursion)."""
    experts, _ = CASES[name]
    _, mean_exact, var_exact = exact(experts)
    if name == "anneal_beta2":
        target = dm.anneal(_gauss(1.0, 0.25).score_model(sde), 2.0)
    else:
        target = dm.product([_gauss(m, v).score_model(sde) for _, m, v in experts])
    r = jax.vmap(lambda k: dm.sample(k, target, sde, 3000, 200))(jax.random.split(jax.random.key(5), R))
    x = np.asarray(r.samples[..., 0], np.float64)
    w = np.asarray(jax.nn.softmax(r.log_weights, -1), np.float64)
    mean = np.sum(w * x, -1)
    var = np.sum(w * (x - mean[:, None]) ** 2, -1)
    ok, msg = _close(mean, mean_exact, extra=0.02 * var_exact)
    assert ok, f"{sde.name} {name} mean: {msg}"
    ok, msg = _close(var, var_exact, extra=0.02 * var_exact)
    assert ok, f"{sde.name} {name} var: {msg}"


def test_tempered_noise_warns_where_unstable():
    vp_s = _gauss(0.0, 1.0).score_model(SDE)
    ve = dm.VESDE()
    ve_s = _gauss(0.0, 1.0).score_model(ve)
    with pytest.warns(UserWarning, match="unstable.*VP|VP.*unstable"):
        dm.euler_maruyama(jax.random.key(0), dm.anneal(vp_s, 3.0), SDE, 4, 2, noise="tempered")
    with pytest.warns(UserWarning, match="VE"):
        dm.euler_maruyama(jax.random.key(0), dm.anneal(ve_s, 3.5), ve, 4, 2, noise="tempered")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dm.euler_maruyama(jax.random.key(0), dm.anneal(ve_s, 2.5), ve, 4, 2, noise="tempered")


@pytest.mark.slow
def test_tempered_noise_is_correct_where_stable():
    """β = 1.5 with σ² = g²/B (a different, stable SDE): the exact target, and no warning."""
    target = dm.anneal(_gauss(1.0, 0.25).score_model(SDE), 1.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = jax.vmap(lambda k: dm.sample(k, target, SDE, 3000, 200, noise="tempered"))(jax.random.split(jax.random.key(2), R))
    x = np.asarray(r.samples[..., 0], np.float64)
    # every step resampled: equal final weights; tolerance: SE + 2% discretisation allowance
    ok, msg = _close(x.var(-1), 0.25 / 1.5, extra=0.02 * 0.25 / 1.5)
    assert ok, msg


@pytest.mark.slow
def test_same_key_same_result_and_budget_counts():
    classes = dm.GaussianMixture.create([1, 1], [[-1.0, 0.0], [1.0, 0.0]], stds=0.7, labels=[0, 1])
    seen = []

    class Counting:
        null_condition = -1
        dim = 2

        def __init__(self, inner):
            self.inner = inner

        def __call__(self, x, t, c=None):
            seen.append(tuple(x.shape))
            return self.inner(x, t, c)

    model = Counting(classes.score_model(SDE))
    target = dm.cfg(model, 2.0, 1)
    a = dm.sample(jax.random.key(3), target, SDE, 50, 20)
    b = dm.sample(jax.random.key(3), target, SDE, 50, 20)
    np.testing.assert_array_equal(np.asarray(a.samples), np.asarray(b.samples))
    assert float(a.log_z) == float(b.log_z)
    c = dm.sample(jax.random.key(4), target, SDE, 50, 20)
    assert not np.allclose(np.asarray(a.samples), np.asarray(c.samples))
    assert int(a.nfe) == 50 * 20 * 2 and int(a.score_calls) == 20 and int(a.verifier_calls) == 0
    # conditional and unconditional scores in one batched call of 2N rows
    assert (100, 2) in seen and (50, 2) in seen  # (50, 2): the eager input check, per expert
    p = dm.euler_maruyama(jax.random.key(3), target, SDE, 50, 20)
    assert int(p.nfe) == int(a.nfe) and int(p.score_calls) == int(a.score_calls)


@pytest.mark.slow
def test_sampling_vmapped_over_conditions_compiles_once():
    classes = dm.GaussianMixture.create([1, 1], [[-2.0, 0.0], [2.0, 0.0]], stds=0.5, labels=[0, 1])
    s = classes.score_model(SDE)
    sample = jax.jit(jax.vmap(lambda c: dm.sample(jax.random.key(0), dm.cfg(s, 1.0, c), SDE, 500, 50).samples))
    with count_compilations() as compiled:
        out = jax.block_until_ready(sample(jnp.arange(2)))
    assert compiled() >= 1
    other = jnp.array([1, 0])
    with count_compilations() as compiled:  # other conditions, same shapes: no new compilation
        swapped = jax.block_until_ready(sample(other))
    assert compiled() == 0
    means = np.asarray(out.mean(1))
    assert means[0, 0] < -1.5 and means[1, 0] > 1.5
    np.testing.assert_array_equal(np.asarray(swapped[0]), np.asarray(out[1]))


# ---------------------------------------------------------------------------------------
# scores, adapters, mixtures


def test_adapters_and_tweedie_recover_the_score():
    q = dm.GaussianMixture.create([0.4, 0.6], [[-1.0, 0.5], [1.0, -0.5]], stds=[0.5, 0.9])
    s = q.score_model(SDE)
    x = jax.random.normal(jax.random.key(0), (16, 2))
    for t in (0.05, 0.5, 0.95):
        t = jnp.float32(t)
        ref = s(x, t)
        eps = lambda x, t, c: -SDE.sigma(t) * s(x, t, c)
        x0 = lambda x, t, c: dm.denoise(s(x, t, c), x, t, SDE)
        np.testing.assert_allclose(dm.from_eps(eps, SDE)(x, t), ref, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(dm.from_x0(x0, SDE)(x, t), ref, rtol=1e-3, atol=1e-3)
        # the analytic score is the gradient of the analytic log-density
        g = jax.grad(lambda z: jnp.sum(s.log_prob(z, t)))(x)
        np.testing.assert_allclose(g, ref, rtol=1e-3, atol=1e-3)


@pytest.mark.slow
def test_mixture_algebra_is_exact():
    q1 = dm.GaussianMixture.create([0.3, 0.7], [[-1.0], [2.0]], stds=[0.5, 1.0])
    q2 = dm.GaussianMixture.create([1.0], [[0.5]], stds=[0.8])
    xs = np.linspace(-8, 8, 4001)[:, None]
    dx = xs[1, 0] - xs[0, 0]
    p1, p2 = np.exp(np.asarray(q1.log_prob(xs))), np.exp(np.asarray(q2.log_prob(xs)))
    prod = q1.product(q2)
    np.testing.assert_allclose(np.exp(np.asarray(prod.log_prob(xs))), p1 * p2, rtol=1e-3, atol=1e-8)
    assert float(prod.log_normalizer) == pytest.approx(math.log(np.sum(p1 * p2) * dx), abs=1e-4)
    cube = q1.power(3)
    assert float(cube.log_normalizer) == pytest.approx(math.log(np.sum(p1**3) * dx), abs=1e-4)
    tilted = q1.tilt_linear(jnp.array([0.7]))
    np.testing.assert_allclose(np.exp(np.asarray(tilted.log_prob(xs))), p1 * np.exp(0.7 * xs[:, 0]), rtol=1e-3, atol=1e-8)
    # exact CFG sampler: a histogram of its draws follows q(x|c)^w q(x)^(1-w)
    classes = dm.GaussianMixture.create([1, 1], [[-1.0], [1.0]], stds=1.0, labels=[0, 1])
    draws = dm.sample_cfg_exact(jax.random.key(0), classes, 0, 2.5, 20000)
    lc = np.asarray(classes.select(0).log_prob(xs))
    lq = np.asarray(classes.normalized().log_prob(xs))
    dens = np.exp(2.5 * lc - 1.5 * lq)
    dens /= dens.sum() * dx
    mean_exact = np.sum(xs[:, 0] * dens) * dx
    assert abs(draws.mean() - mean_exact) < 5 * draws.std() / math.sqrt(len(draws))
    lz, se = dm.cfg_log_normalizer(jax.random.key(1), classes, 0, 2.5, 100_000)
    assert abs(lz - math.log(np.sum(np.exp(2.5 * lc - 1.5 * lq)) * dx)) < 5 * se + 1e-4


# ---------------------------------------------------------------------------------------
# bad input


def test_bad_inputs_raise_clear_errors():
    s = _gauss(0.0, 1.0).score_model(SDE)
    with pytest.raises(ValueError, match="beta"):
        dm.anneal(s, 0.0)
    with pytest.raises(ValueError, match="beta"):
        dm.anneal(s, -1.0)
    with pytest.raises(ValueError, match=r"betas\[1\]"):
        dm.product([s, s], [1.0, 0.0])
    with pytest.raises(ValueError, match="guidance weight"):
        dm.cfg(s, -2.0, 0)
    with pytest.raises(ValueError, match="beta"):
        dm.reward_tilt(s, lambda x: x[:, 0], 0.0)
    with pytest.raises(ValueError, match="unknown SDE 'foo'"):
        dm.get_sde("foo")
    with pytest.raises(ValueError, match="unknown SDE"):
        dm.sample(jax.random.key(0), dm.anneal(s, 2.0), "subvp", 10, 5)
    with pytest.raises(TypeError, match="SDE"):
        dm.sample(jax.random.key(0), dm.anneal(s, 2.0), object(), 10, 5)
    with pytest.raises(TypeError, match="Target"):
        dm.sample(jax.random.key(0), s, SDE, 10, 5)
    with pytest.raises(ValueError, match="unknown noise"):
        dm.sample(jax.random.key(0), dm.anneal(s, 2.0), SDE, 10, 5, noise="loud")
    with pytest.raises(ValueError, match="ESS threshold"):
        dm.sample(jax.random.key(0), dm.anneal(s, 2.0), SDE, 10, 5, resample=1.5)

    def wrong_shape(x, t, c=None):
        return x[:, :1] * 0 + jnp.zeros((x.shape[0], 3))

    def nan_score(x, t, c=None):
        return jnp.where(x > 1e9, 0.0, jnp.nan) * x

    def nan_late(x, t, c=None):
        return jnp.where(t < 0.01, jnp.nan, -x)

    with pytest.raises(ValueError, match=r"returned shape \(10, 3\).*\(N, d\)"):
        dm.sample(jax.random.key(0), dm.anneal(wrong_shape, 2.0), SDE, 10, 5, dim=2)
    with pytest.raises(ValueError, match="NaN"):
        dm.sample(jax.random.key(0), dm.anneal(nan_score, 2.0), SDE, 10, 5, dim=2)
    with pytest.raises(ValueError, match="NaN"):
        dm.sample(jax.random.key(0), dm.anneal(nan_late, 2.0), SDE, 10, 5, dim=2)
    with pytest.raises(ValueError, match="NaN"):
        dm.euler_maruyama(jax.random.key(0), dm.anneal(nan_score, 2.0), SDE, 10, 5, dim=2)
    with pytest.raises(ValueError, match="dim="):
        dm.sample(jax.random.key(0), dm.anneal(lambda x, t, c=None: -x, 2.0), SDE, 10, 5)
