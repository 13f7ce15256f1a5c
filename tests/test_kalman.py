"""Tests for smcscale.kalman against a brute-force joint-Gaussian reference.

The reference writes (x_0..x_{T-1}, y_0..y_{T-1}) as an explicit linear map
of independent Gaussian inputs (x_0, q_1..q_{T-1}, r_0..r_{T-1}), builds the
full joint mean/covariance in numpy float64 and conditions directly; it shares
no code with the recursions under test.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from smcscale.kalman import (
    KalmanFilterResult,
    LGSSMParams,
    SmootherResult,
    kalman_filter,
    log_likelihood,
    rts_smoother,
    simulate,
    univariate_params,
)

T = 6


# ---------------------------------------------------------------------------
# Brute-force reference (numpy float64)
# ---------------------------------------------------------------------------


def _random_spd(rng, d, scale=1.0):
    M = rng.normal(size=(d, d))
    return scale * (M @ M.T / d + 0.3 * np.eye(d))


def random_params(seed, dx, dy):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(dx, dx))
    A *= 0.9 / np.max(np.abs(np.linalg.eigvals(A)))
    return LGSSMParams(
        A=A,
        Q=_random_spd(rng, dx, 0.5),
        C=rng.normal(size=(dy, dx)),
        R=_random_spd(rng, dy, 0.4),
        m0=rng.normal(size=dx),
        P0=_random_spd(rng, dx, 1.5),
    )


def joint_gaussian(params, T):
    """Mean and covariance of z = (x_0..x_{T-1}, y_0..y_{T-1}) (stacked)."""
    A, Q, C, R, m0, P0 = (np.asarray(p, np.float64) for p in params)
    dx, dy = A.shape[0], C.shape[0]
    n_in = T * dx + T * dy  # inputs: x_0, q_1..q_{T-1}, r_0..r_{T-1}
    # Linear map from inputs to x: x_t = A^t x_0 + sum_{s=1}^t A^{t-s} q_s.
    Lx = np.zeros((T * dx, n_in))
    for t in range(T):
        for s in range(t + 1):
            Lx[t * dx:(t + 1) * dx, s * dx:(s + 1) * dx] = np.linalg.matrix_power(A, t - s)
    Ly = np.kron(np.eye(T), C) @ Lx
    Ly[:, T * dx:] += np.eye(T * dy)
    L = np.vstack([Lx, Ly])
    D = np.zeros((n_in, n_in))
    D[:dx, :dx] = P0
    for s in range(1, T):
        D[s * dx:(s + 1) * dx, s * dx:(s + 1) * dx] = Q
    for t in range(T):
        o = T * dx + t * dy
        D[o:o + dy, o:o + dy] = R
    mu_in = np.zeros(n_in)
    mu_in[:dx] = m0
    return L @ mu_in, L @ D @ L.T


class Reference:
    def __init__(self, params, ys):
        ys = np.asarray(ys, np.float64).reshape(len(ys), -1)
        self.T, self.dy = ys.shape
        self.dx = np.asarray(params.A).shape[0]
        self.mu, self.S = joint_gaussian(params, self.T)
        self.y = ys.reshape(-1)

    def _xi(self, t):
        return np.arange(t * self.dx, (t + 1) * self.dx)

    def _yi(self, n):  # indices of y_0..y_{n-1}
        return self.T * self.dx + np.arange(n * self.dy)

    def condition(self, xidx, n_obs):
        """Mean/cov of x[xidx] given y_0..y_{n_obs-1}."""
        mx, Sxx = self.mu[xidx], self.S[np.ix_(xidx, xidx)]
        if n_obs == 0:
            return mx, Sxx
        yi = self._yi(n_obs)
        Sxy, Syy = self.S[np.ix_(xidx, yi)], self.S[np.ix_(yi, yi)]
        gain = np.linalg.solve(Syy, Sxy.T).T
        return mx + gain @ (self.y[:n_obs * self.dy] - self.mu[yi]), Sxx - gain @ Sxy.T

    def logpdf(self, n_obs):
        if n_obs == 0:
            return 0.0
        yi = self._yi(n_obs)
        return scipy.stats.multivariate_normal(
            self.mu[yi], self.S[np.ix_(yi, yi)]
        ).logpdf(self.y[:n_obs * self.dy])

    def filtered(self, t):
        return self.condition(self._xi(t), t + 1)

    def predicted(self, t):
        return self.condition(self._xi(t), t)

    def smoothed(self, t):
        return self.condition(self._xi(t), self.T)

    def cross(self, t):  # Cov[x_{t+1}, x_t | all y]
        idx = np.concatenate([self._xi(t + 1), self._xi(t)])
        _, cov = self.condition(idx, self.T)
        return cov[:self.dx, self.dx:]


def sample_ys(params, T, seed):
    """Draw y from the joint Gaussian with numpy (independent of `simulate`)."""
    mu, S = joint_gaussian(params, T)
    dx, dy = np.asarray(params.A).shape[0], np.asarray(params.C).shape[0]
    z = np.random.default_rng(seed).multivariate_normal(mu, S)
    return z[T * dx:].reshape(T, dy)


# ---------------------------------------------------------------------------
# Exactness against the reference
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dx,dy", [(2, 1), (2, 2), (3, 2)])
def test_matches_joint_gaussian_float64(dx, dy):
    params = random_params(seed=10 * dx + dy, dx=dx, dy=dy)
    ys = sample_ys(params, T, seed=dx + dy)
    ref = Reference(params, ys)
    with jax.enable_x64(True):
        p64 = LGSSMParams(*(jnp.asarray(a, jnp.float64) for a in params))
        f = kalman_filter(p64, jnp.asarray(ys))
        s = rts_smoother(p64, f)
        assert f.log_likelihood.dtype == jnp.float64
        f, s = jax.tree.map(np.asarray, (f, s))

    tol = dict(rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(f.log_likelihood, ref.logpdf(T), **tol)
    np.testing.assert_allclose(f.log_likelihood, f.log_likelihoods.sum(), **tol)
    for t in range(T):
        np.testing.assert_allclose(
            f.log_likelihoods[t], ref.logpdf(t + 1) - ref.logpdf(t), **tol
        )
        for got_m, got_P, (m, P) in [
            (f.filtered_means[t], f.filtered_covs[t], ref.filtered(t)),
            (f.predicted_means[t], f.predicted_covs[t], ref.predicted(t)),
            (s.smoothed_means[t], s.smoothed_covs[t], ref.smoothed(t)),
        ]:
            np.testing.assert_allclose(got_m, m, **tol)
            np.testing.assert_allclose(got_P, P, **tol)
    assert s.smoothed_cross_covs.shape == (T - 1, dx, dx)
    for t in range(T - 1):
        np.testing.assert_allclose(s.smoothed_cross_covs[t], ref.cross(t), **tol)
    # Covariances are exactly symmetric.
    for P in (f.filtered_covs, f.predicted_covs, s.smoothed_covs):
        np.testing.assert_array_equal(P, np.swapaxes(P, -1, -2))


@pytest.mark.parametrize("dx,dy", [(2, 1), (2, 2)])
def test_matches_joint_gaussian_float32(dx, dy):
    params = random_params(seed=7 + dx + dy, dx=dx, dy=dy)
    ys = sample_ys(params, T, seed=3)
    ref = Reference(params, ys)
    p32 = LGSSMParams(*(jnp.asarray(a, jnp.float32) for a in params))
    f = kalman_filter(p32, jnp.asarray(ys, jnp.float32))
    s = rts_smoother(p32, f)
    for leaf in jax.tree.leaves((f, s)):
        assert leaf.dtype == jnp.float32
    tol = dict(rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(f.log_likelihood, ref.logpdf(T), **tol)
    for t in range(T):
        np.testing.assert_allclose(f.filtered_means[t], ref.filtered(t)[0], **tol)
        np.testing.assert_allclose(f.filtered_covs[t], ref.filtered(t)[1], **tol)
        np.testing.assert_allclose(s.smoothed_means[t], ref.smoothed(t)[0], **tol)
        np.testing.assert_allclose(s.smoothed_covs[t], ref.smoothed(t)[1], **tol)
    for t in range(T - 1):
        np.testing.assert_allclose(s.smoothed_cross_covs[t], ref.cross(t), **tol)


# ---------------------------------------------------------------------------
# Univariate path
# ---------------------------------------------------------------------------


def test_univariate_params_values():
    p = univariate_params(0.8, 0.5, 0.3)
    np.testing.assert_allclose(p.A, [[0.8]], rtol=1e-6)
    np.testing.assert_allclose(p.Q, [[0.25]], rtol=1e-6)
    np.testing.assert_allclose(p.C, [[1.0]])
    np.testing.assert_allclose(p.R, [[0.09]], rtol=1e-6)
    np.testing.assert_allclose(p.m0, [0.0])
    np.testing.assert_allclose(p.P0, [[0.25 / (1 - 0.64)]], rtol=1e-6)
    p_ns = univariate_params(0.8, 0.5, 0.3, stationary=False)
    np.testing.assert_allclose(p_ns.P0, [[0.25]], rtol=1e-6)
    # Non-stationary allows |rho| >= 1.
    univariate_params(1.0, 0.5, 0.3, stationary=False)


@pytest.mark.parametrize("stationary", [True, False])
def test_univariate_1d_ys_matches_reference(stationary):
    with jax.enable_x64(True):
        p = univariate_params(0.7, 0.9, 0.6, stationary=stationary)
        ys = sample_ys(p, T, seed=5)[:, 0]  # shape (T,)
        ref = Reference(p, ys)
        f1 = kalman_filter(p, jnp.asarray(ys))
        f2 = kalman_filter(p, jnp.asarray(ys)[:, None])
        s = rts_smoother(p, f1)
        f1, f2, s = jax.tree.map(np.asarray, (f1, f2, s))
    np.testing.assert_array_equal(f1.log_likelihood, f2.log_likelihood)
    np.testing.assert_allclose(f1.log_likelihood, ref.logpdf(T), rtol=1e-10)
    assert f1.filtered_means.shape == (T, 1)
    for t in range(T):
        np.testing.assert_allclose(s.smoothed_means[t], ref.smoothed(t)[0], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(s.smoothed_covs[t], ref.smoothed(t)[1], rtol=1e-9)


def test_single_time_step():
    p = univariate_params(0.5, 1.0, 1.0)
    f = kalman_filter(p, jnp.array([0.3]))
    s = rts_smoother(p, f)
    assert s.smoothed_cross_covs.shape == (0, 1, 1)
    np.testing.assert_allclose(s.smoothed_means, f.filtered_means)
    np.testing.assert_allclose(s.smoothed_covs, f.filtered_covs)
    var = 1.0 / 0.75 + 1.0
    np.testing.assert_allclose(
        f.log_likelihood, scipy.stats.norm(0, np.sqrt(var)).logpdf(0.3), rtol=1e-5
    )


# ---------------------------------------------------------------------------
# Transformations: vmap, jit, grad
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_vmap_over_datasets_and_params():
    params = random_params(seed=1, dx=2, dy=2)
    params = LGSSMParams(*(jnp.asarray(a, jnp.float32) for a in params))
    keys = jax.random.split(jax.random.key(0), 4)
    _, ys = jax.vmap(lambda k: simulate(k, params, 8))(keys)
    assert ys.shape == (4, 8, 2)
    batched = jax.vmap(kalman_filter, in_axes=(None, 0))(params, ys)
    sm = jax.vmap(rts_smoother, in_axes=(None, 0))(params, batched)
    assert sm.smoothed_cross_covs.shape == (4, 7, 2, 2)

    @jax.jit
    def single(y):
        f = kalman_filter(params, y)
        return f, rts_smoother(params, f)

    for i in range(4):
        f, s = single(ys[i])
        np.testing.assert_allclose(batched.log_likelihood[i], f.log_likelihood, rtol=1e-5)
        np.testing.assert_allclose(batched.filtered_means[i], f.filtered_means, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(sm.smoothed_means[i], s.smoothed_means, rtol=1e-5, atol=1e-6)
    # vmap over (traced) model parameters.
    y1 = ys[0, :, 0]
    rhos = jnp.array([0.1, 0.5, 0.9])
    ll_rho = lambda r: log_likelihood(univariate_params(r, 1.0, 0.5), y1)
    lls = jax.vmap(ll_rho)(rhos)
    np.testing.assert_allclose(lls, [jax.jit(ll_rho)(r) for r in rhos], rtol=1e-5)
    # Eager (concrete) rho gives the same value as traced rho.
    np.testing.assert_allclose(lls[1], ll_rho(0.5), rtol=1e-5)


def test_jit_matches_eager():
    params = random_params(seed=2, dx=2, dy=1)
    params = LGSSMParams(*(jnp.asarray(a, jnp.float32) for a in params))
    ys = jnp.asarray(sample_ys(params, T, seed=0), jnp.float32)

    @jax.jit
    def run(p, y):
        f = kalman_filter(p, y)
        return f, rts_smoother(p, f)

    f_j, s_j = run(params, ys)
    f_e = kalman_filter(params, ys)
    s_e = rts_smoother(params, f_e)
    for a, b in zip(jax.tree.leaves((f_j, s_j)), jax.tree.leaves((f_e, s_e))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jax.jit(log_likelihood)(params, ys), f_e.log_likelihood, rtol=1e-6)
    assert isinstance(f_j, KalmanFilterResult) and isinstance(s_j, SmootherResult)


def test_grad_log_likelihood_matches_finite_difference():
    with jax.enable_x64(True):
        ys = jnp.asarray(sample_ys(univariate_params(0.6, 1.0, 0.5), 20, seed=1)[:, 0])
        ll = lambda r: log_likelihood(univariate_params(r, 1.0, 0.5), ys)
        g = jax.grad(ll)(0.6)
        h = 1e-6
        fd = (ll(0.6 + h) - ll(0.6 - h)) / (2 * h)
        np.testing.assert_allclose(g, fd, rtol=1e-6)


# ---------------------------------------------------------------------------
# simulate
# ---------------------------------------------------------------------------


def test_simulate_shapes_determinism_and_moments():
    params = random_params(seed=4, dx=2, dy=2)
    params = LGSSMParams(*(jnp.asarray(a, jnp.float32) for a in params))
    key = jax.random.key(42)
    xs, ys = simulate(key, params, T)
    assert xs.shape == (T, 2) and ys.shape == (T, 2) and xs.dtype == jnp.float32
    xs2, ys2 = simulate(key, params, T)
    np.testing.assert_array_equal(xs, xs2)
    np.testing.assert_array_equal(ys, ys2)

    n = 20000
    keys = jax.random.split(jax.random.key(1), n)
    xs, ys = jax.jit(jax.vmap(lambda k: simulate(k, params, T)))(keys)
    z = np.concatenate([np.asarray(xs).reshape(n, -1), np.asarray(ys).reshape(n, -1)], axis=1)
    mu, S = joint_gaussian(params, T)
    sd = np.sqrt(np.diag(S))
    # Standardised moments, ~5 Monte Carlo standard errors.
    assert np.max(np.abs(z.mean(0) - mu) / sd) < 5 / np.sqrt(n)
    corr_err = (np.cov(z.T) - S) / np.outer(sd, sd)
    assert np.max(np.abs(corr_err)) < 6 * np.sqrt(2.0 / n)


def test_simulate_singular_covariances():
    p = univariate_params(0.9, 0.0, 1.0, stationary=False)  # Q = P0 = 0
    xs, ys = simulate(jax.random.key(0), p, 5)
    np.testing.assert_array_equal(xs, np.zeros((5, 1)))
    assert np.all(np.isfinite(ys))
    f = kalman_filter(p, ys)
    assert np.isfinite(f.log_likelihood)


# ---------------------------------------------------------------------------
# Input validation
# ---------------------------------------------------------------------------


def _good():
    return LGSSMParams(
        A=jnp.eye(3), Q=jnp.eye(3), C=jnp.ones((2, 3)), R=jnp.eye(2),
        m0=jnp.zeros(3), P0=jnp.eye(3),
    )


@pytest.mark.parametrize(
    "field,value,ys_shape,match",
    [
        (None, None, (100, 3), r"ys must have shape \(T, 2\) for C of shape \(2, 3\), got \(100, 3\)"),
        (None, None, (100,), r"ys must have shape \(T, 2\) for C of shape \(2, 3\), got \(100,\)"),
        (None, None, (4, 100, 2), r"ys must have shape \(T, 2\) .* got \(4, 100, 2\)"),
        (None, None, (0, 2), r"at least one time step, got shape \(0, 2\)"),
        ("A", jnp.ones((3, 2)), (5, 2), r"A must be a square matrix of shape \(dx, dx\), got \(3, 2\)"),
        ("Q", jnp.eye(2), (5, 2), r"Q must have shape \(3, 3\) for A of shape \(3, 3\), got \(2, 2\)"),
        ("C", jnp.ones((2, 2)), (5, 2), r"C must have shape \(dy, 3\) for A of shape \(3, 3\), got \(2, 2\)"),
        ("C", jnp.ones(3), (5, 2), r"C must have shape \(dy, 3\) .* got \(3,\)"),
        ("R", jnp.eye(3), (5, 2), r"R must have shape \(2, 2\) for C of shape \(2, 3\), got \(3, 3\)"),
        ("m0", jnp.zeros((3, 1)), (5, 2), r"m0 must have shape \(3,\) for A of shape \(3, 3\), got \(3, 1\)"),
        ("P0", jnp.eye(2), (5, 2), r"P0 must have shape \(3, 3\) for A of shape \(3, 3\), got \(2, 2\)"),
    ],
)
def test_bad_inputs_raise(field, value, ys_shape, match):
    params = _good()
    if field is not None:
        params = params._replace(**{field: value})
    ys = jnp.zeros(ys_shape)
    with pytest.raises(ValueError, match=match):
        kalman_filter(params, ys)
    with pytest.raises(ValueError, match=match):  # also raised under jit
        jax.jit(log_likelihood)(params, ys)
    if field is not None:
        with pytest.raises(ValueError, match=match):
            simulate(jax.random.key(0), params, 3)


def test_univariate_ys_2d_wrong_width():
    with pytest.raises(ValueError, match=r"ys must have shape \(T, 1\) or \(T,\) for C of shape \(1, 1\), got \(10, 2\)"):
        kalman_filter(univariate_params(0.5, 1.0, 1.0), jnp.zeros((10, 2)))


def test_other_bad_inputs():
    with pytest.raises(ValueError, match=r"requires \|rho\| < 1, got rho=1.0"):
        univariate_params(1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match=r"rho must be a scalar of shape \(\), got \(2,\)"):
        univariate_params(jnp.array([0.1, 0.2]), 1.0, 1.0)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="num_steps must be a positive Python int"):
            simulate(jax.random.key(0), _good(), bad)
    with pytest.raises(TypeError, match="params must be an LGSSMParams"):
        kalman_filter((jnp.eye(2),), jnp.zeros((3, 1)))
    p = univariate_params(0.5, 1.0, 1.0)
    f = kalman_filter(p, jnp.zeros(4))
    with pytest.raises(ValueError, match=r"filtered.filtered_means must have shape \(T, 3\)"):
        rts_smoother(_good(), f)
    with pytest.raises(ValueError, match=r"filtered.predicted_covs must have shape \(4, 1, 1\)"):
        rts_smoother(p, f._replace(predicted_covs=f.predicted_covs[:3]))
