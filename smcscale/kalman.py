r"""Exact inference for the linear-Gaussian state-space model (LGSSM).

This module is the exact reference against which the particle filters of
``smcscale`` are tested.  Everything is pure JAX: all public functions are
jittable and vmappable, and work in float32 and float64 (the working dtype is
the promoted floating dtype of the parameters and observations).

Model
-----
For time steps :math:`t = 0, \dots, T-1`, state dimension :math:`d_x` and
observation dimension :math:`d_y`:

.. math::

    x_0 &\sim \mathcal N(m_0, P_0), \\
    x_t \mid x_{t-1} &\sim \mathcal N(A x_{t-1}, Q), \qquad t \ge 1, \\
    y_t \mid x_t &\sim \mathcal N(C x_t, R).

Kalman filter (Kalman 1960; Särkkä 2013, Thm. 4.2)
--------------------------------------------------
Write :math:`m_{t|t-1}, P_{t|t-1}` for the mean and covariance of
:math:`p(x_t \mid y_{0:t-1})` (with :math:`m_{0|-1} = m_0`,
:math:`P_{0|-1} = P_0`) and :math:`m_{t|t}, P_{t|t}` for those of
:math:`p(x_t \mid y_{0:t})`.

*Update* with :math:`y_t`:

.. math::

    v_t &= y_t - C m_{t|t-1}, \qquad S_t = C P_{t|t-1} C^\top + R, \\
    K_t &= P_{t|t-1} C^\top S_t^{-1}, \\
    m_{t|t} &= m_{t|t-1} + K_t v_t, \\
    P_{t|t} &= (I - K_t C) P_{t|t-1} (I - K_t C)^\top + K_t R K_t^\top
             \;\bigl(= P_{t|t-1} - K_t S_t K_t^\top\bigr), \\
    \log p(y_t \mid y_{0:t-1}) &= \log \mathcal N(v_t; 0, S_t)
        = -\tfrac12\bigl(d_y \log 2\pi + \log\det S_t
          + v_t^\top S_t^{-1} v_t\bigr).

*Predict*:

.. math::

    m_{t+1|t} = A m_{t|t}, \qquad P_{t+1|t} = A P_{t|t} A^\top + Q.

The total log marginal likelihood is
:math:`\log p(y_{0:T-1}) = \sum_t \log p(y_t \mid y_{0:t-1})`.

Rauch–Tung–Striebel smoother (Rauch, Tung & Striebel 1965; Särkkä 2013, Thm. 8.2)
---------------------------------------------------------------------------------
With :math:`m^s_{T-1} = m_{T-1|T-1}`, :math:`P^s_{T-1} = P_{T-1|T-1}` and, for
:math:`t = T-2, \dots, 0`,

.. math::

    G_t &= P_{t|t} A^\top P_{t+1|t}^{-1}, \\
    m^s_t &= m_{t|t} + G_t (m^s_{t+1} - m_{t+1|t}), \\
    P^s_t &= P_{t|t} + G_t (P^s_{t+1} - P_{t+1|t}) G_t^\top, \\
    \operatorname{Cov}[x_{t+1}, x_t \mid y_{0:T-1}] &= P^s_{t+1} G_t^\top .

The last line is the lag-one smoothed cross-covariance (Särkkä 2013, Thm.
12.4 / Shumway & Stoffer 1982), so that
:math:`E[x_{t+1} x_t^\top \mid y] = P^s_{t+1} G_t^\top + m^s_{t+1} {m^s_t}^\top`.

Numerics
--------
No explicit inverses are formed: :math:`S_t^{-1}` is applied through its
Cholesky factor (``cho_solve`` / triangular solves), which also gives
:math:`\log\det S_t`; the smoother gain is obtained with a linear solve.  The
filtered covariance uses the Joseph form, and every covariance is explicitly
symmetrised, which keeps float32 runs well behaved.

References
----------
* R. E. Kalman (1960). A new approach to linear filtering and prediction
  problems. *Journal of Basic Engineering* 82(1), 35–45.
* H. E. Rauch, F. Tung, C. T. Striebel (1965). Maximum likelihood estimates of
  linear dynamic systems. *AIAA Journal* 3(8), 1445–1450.
* S. Särkkä (2013). *Bayesian Filtering and Smoothing*. Cambridge University
  Press.
"""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.linalg import cho_solve, solve, solve_triangular

Array = jax.Array

__all__ = [
    "LGSSMParams",
    "KalmanFilterResult",
    "SmootherResult",
    "univariate_params",
    "kalman_filter",
    "rts_smoother",
    "simulate",
    "log_likelihood",
]


class LGSSMParams(NamedTuple):
    """Parameters of the linear-Gaussian state-space model.

    ``x_0 ~ N(m0, P0)``, ``x_t = A x_{t-1} + N(0, Q)``, ``y_t = C x_t + N(0, R)``.
    """

    A: Array  # (dx, dx) transition matrix
    Q: Array  # (dx, dx) transition noise covariance
    C: Array  # (dy, dx) observation matrix
    R: Array  # (dy, dy) observation noise covariance
    m0: Array  # (dx,)   initial mean
    P0: Array  # (dx, dx) initial covariance


class KalmanFilterResult(NamedTuple):
    """Output of :func:`kalman_filter`."""

    filtered_means: Array  # (T, dx)      E[x_t | y_0:t]
    filtered_covs: Array  # (T, dx, dx)   Cov[x_t | y_0:t]
    predicted_means: Array  # (T, dx)     E[x_t | y_0:t-1]  (t=0: m0)
    predicted_covs: Array  # (T, dx, dx)  Cov[x_t | y_0:t-1] (t=0: P0)
    log_likelihoods: Array  # (T,)        log p(y_t | y_0:t-1)
    log_likelihood: Array  # ()           log p(y_0:T-1)


class SmootherResult(NamedTuple):
    """Output of :func:`rts_smoother`."""

    smoothed_means: Array  # (T, dx)            E[x_t | y_0:T-1]
    smoothed_covs: Array  # (T, dx, dx)         Cov[x_t | y_0:T-1]
    smoothed_cross_covs: Array  # (T-1, dx, dx) Cov[x_{t+1}, x_t | y_0:T-1]


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def _symmetrise(M: Array) -> Array:
    return 0.5 * (M + jnp.swapaxes(M, -1, -2))


def _float_dtype(*arrays) -> jnp.dtype:
    """Promoted floating dtype of ``arrays`` (integers -> default float)."""
    dtype = jnp.result_type(*arrays)
    if jnp.issubdtype(dtype, jnp.complexfloating):
        raise ValueError(f"complex inputs are not supported, got dtype {dtype}")
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(dtype, float)
    return dtype


def _as_params(params) -> LGSSMParams:
    """Convert ``params`` to :class:`LGSSMParams` of arrays and check shapes."""
    if not isinstance(params, tuple) or len(params) != 6:
        raise TypeError(
            "params must be an LGSSMParams(A, Q, C, R, m0, P0), "
            f"got {type(params).__name__}"
        )
    A, Q, C, R, m0, P0 = (jnp.asarray(p) for p in params)

    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"A must be a square matrix of shape (dx, dx), got {A.shape}")
    dx = A.shape[0]
    if dx == 0:
        raise ValueError(f"A must have a non-zero state dimension, got {A.shape}")
    if Q.shape != (dx, dx):
        raise ValueError(
            f"Q must have shape {(dx, dx)} for A of shape {A.shape}, got {Q.shape}"
        )
    if C.ndim != 2 or C.shape[1] != dx:
        raise ValueError(
            f"C must have shape (dy, {dx}) for A of shape {A.shape}, got {C.shape}"
        )
    dy = C.shape[0]
    if dy == 0:
        raise ValueError(
            f"C must have a non-zero observation dimension, got {C.shape}"
        )
    if R.shape != (dy, dy):
        raise ValueError(
            f"R must have shape {(dy, dy)} for C of shape {C.shape}, got {R.shape}"
        )
    if m0.shape != (dx,):
        raise ValueError(
            f"m0 must have shape {(dx,)} for A of shape {A.shape}, got {m0.shape}"
        )
    if P0.shape != (dx, dx):
        raise ValueError(
            f"P0 must have shape {(dx, dx)} for A of shape {A.shape}, got {P0.shape}"
        )
    return LGSSMParams(A, Q, C, R, m0, P0)


def _as_observations(ys, C: Array) -> Array:
    """Check ``ys`` against ``C`` and return it with shape ``(T, dy)``."""
    ys = jnp.asarray(ys)
    dy = C.shape[0]
    if ys.ndim == 1 and dy == 1:
        ys = ys[:, None]
    if ys.ndim != 2 or ys.shape[1] != dy:
        alt = " or (T,)" if dy == 1 else ""
        raise ValueError(
            f"ys must have shape (T, {dy}){alt} for C of shape {C.shape}, "
            f"got {ys.shape}"
        )
    if ys.shape[0] == 0:
        raise ValueError(
            f"ys must contain at least one time step, got shape {ys.shape}"
        )
    return ys


def _cast(params: LGSSMParams, dtype) -> LGSSMParams:
    return LGSSMParams(*(p.astype(dtype) for p in params))


def _psd_sqrt(M: Array) -> Array:
    """Symmetric square root of a positive semi-definite matrix (via eigh).

    Unlike a Cholesky factor this is well defined for singular covariances
    (e.g. ``Q = 0`` or a deterministic initial state ``P0 = 0``).
    """
    evals, evecs = jnp.linalg.eigh(_symmetrise(M))
    return (evecs * jnp.sqrt(jnp.clip(evals, 0.0))) @ evecs.T


# ---------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------


def univariate_params(rho, sigma_x, sigma_y, stationary: bool = True) -> LGSSMParams:
    r"""Parameters of the scalar AR(1)-plus-noise model.

    .. math::

        x_t = \rho x_{t-1} + \sigma_x \varepsilon_t, \qquad
        y_t = x_t + \sigma_y \eta_t,

    i.e. ``A = [[rho]]``, ``Q = [[sigma_x**2]]``, ``C = [[1]]``,
    ``R = [[sigma_y**2]]``, ``m0 = [0]`` and ``P0 = [[sigma_x**2 / (1 - rho**2)]]``
    (the stationary variance, requires ``|rho| < 1``) if ``stationary`` else
    ``P0 = [[sigma_x**2]]``.

    ``rho``, ``sigma_x`` and ``sigma_y`` are scalars and may be traced (so the
    function can be vmapped / differentiated over them); the ``|rho| < 1``
    check is only performed on concrete values.
    """
    rho, sigma_x, sigma_y = (jnp.asarray(v) for v in (rho, sigma_x, sigma_y))
    for name, v in (("rho", rho), ("sigma_x", sigma_x), ("sigma_y", sigma_y)):
        if v.ndim != 0:
            raise ValueError(f"{name} must be a scalar of shape (), got {v.shape}")
    if stationary and not isinstance(rho, jax.core.Tracer):
        if not abs(float(rho)) < 1.0:
            raise ValueError(
                f"stationary=True requires |rho| < 1, got rho={float(rho)}"
            )
    dtype = _float_dtype(rho, sigma_x, sigma_y)
    rho, sigma_x, sigma_y = (v.astype(dtype) for v in (rho, sigma_x, sigma_y))
    q = sigma_x**2
    p0 = q / (1.0 - rho**2) if stationary else q
    return LGSSMParams(
        A=jnp.reshape(rho, (1, 1)),
        Q=jnp.reshape(q, (1, 1)),
        C=jnp.ones((1, 1), dtype),
        R=jnp.reshape(sigma_y**2, (1, 1)),
        m0=jnp.zeros((1,), dtype),
        P0=jnp.reshape(p0, (1, 1)),
    )


def kalman_filter(params: LGSSMParams, ys: Array) -> KalmanFilterResult:
    r"""Kalman filter: filtering/predictive moments and the marginal likelihood.

    For each :math:`t`, with :math:`(m_{0|-1}, P_{0|-1}) = (m_0, P_0)`:

    .. math::

        S_t &= C P_{t|t-1} C^\top + R, \quad
        K_t = P_{t|t-1} C^\top S_t^{-1}, \quad v_t = y_t - C m_{t|t-1}, \\
        m_{t|t} &= m_{t|t-1} + K_t v_t, \quad
        P_{t|t} = (I - K_t C) P_{t|t-1} (I - K_t C)^\top + K_t R K_t^\top, \\
        \log p(y_t \mid y_{0:t-1}) &= \log \mathcal N(v_t; 0, S_t), \\
        m_{t+1|t} &= A m_{t|t}, \quad P_{t+1|t} = A P_{t|t} A^\top + Q.

    Args:
      params: :class:`LGSSMParams`.
      ys: observations of shape ``(T, dy)``; ``(T,)`` is accepted when
        ``dy == 1``.  ``T >= 1``.

    Returns:
      :class:`KalmanFilterResult` with ``filtered_*`` the moments of
      :math:`p(x_t \mid y_{0:t})`, ``predicted_*`` those of
      :math:`p(x_t \mid y_{0:t-1})`, ``log_likelihoods[t]`` =
      :math:`\log p(y_t \mid y_{0:t-1})` and ``log_likelihood`` their sum.

    Raises:
      ValueError: if shapes are inconsistent (checked eagerly, also under jit).
    """
    params = _as_params(params)
    ys = _as_observations(ys, params.C)
    dtype = _float_dtype(*params, ys)
    return _kalman_filter(_cast(params, dtype), ys.astype(dtype))


@jax.jit
def _kalman_filter(params: LGSSMParams, ys: Array) -> KalmanFilterResult:
    # Validated, dtype-consistent inputs.  Jitted so that repeated eager calls
    # hit the compilation cache instead of re-tracing the scan.
    A, Q, C, R, m0, P0 = params
    dtype = ys.dtype
    dx, dy = A.shape[0], C.shape[0]
    eye = jnp.eye(dx, dtype=dtype)
    log_2pi = jnp.asarray(dy * math.log(2.0 * math.pi), dtype)

    def step(carry, y):
        m_pred, P_pred = carry
        # Update.
        S = _symmetrise(C @ P_pred @ C.T + R)
        L = jnp.linalg.cholesky(S)
        v = y - C @ m_pred
        K = cho_solve((L, True), C @ P_pred).T  # P C^T S^{-1}
        m_filt = m_pred + K @ v
        IKC = eye - K @ C
        P_filt = _symmetrise(IKC @ P_pred @ IKC.T + K @ R @ K.T)
        w = solve_triangular(L, v, lower=True)
        logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(L)))
        ll = -0.5 * (log_2pi + logdet + jnp.dot(w, w))
        # Predict.
        m_next = A @ m_filt
        P_next = _symmetrise(A @ P_filt @ A.T + Q)
        return (m_next, P_next), (m_filt, P_filt, m_pred, P_pred, ll)

    init = (m0, _symmetrise(P0))
    _, (mf, Pf, mp, Pp, lls) = lax.scan(step, init, ys)
    return KalmanFilterResult(
        filtered_means=mf,
        filtered_covs=Pf,
        predicted_means=mp,
        predicted_covs=Pp,
        log_likelihoods=lls,
        log_likelihood=jnp.sum(lls),
    )


def rts_smoother(params: LGSSMParams, filtered: KalmanFilterResult) -> SmootherResult:
    r"""Rauch–Tung–Striebel smoother from the output of :func:`kalman_filter`.

    Starting from :math:`(m^s_{T-1}, P^s_{T-1}) = (m_{T-1|T-1}, P_{T-1|T-1})`,
    for :math:`t = T-2, \dots, 0`:

    .. math::

        G_t &= P_{t|t} A^\top P_{t+1|t}^{-1}, \\
        m^s_t &= m_{t|t} + G_t (m^s_{t+1} - m_{t+1|t}), \\
        P^s_t &= P_{t|t} + G_t (P^s_{t+1} - P_{t+1|t}) G_t^\top, \\
        \operatorname{Cov}[x_{t+1}, x_t \mid y_{0:T-1}] &= P^s_{t+1} G_t^\top.

    Args:
      params: the :class:`LGSSMParams` the filter was run with.
      filtered: :class:`KalmanFilterResult` from :func:`kalman_filter`.

    Returns:
      :class:`SmootherResult` with the moments of :math:`p(x_t \mid y_{0:T-1})`
      and ``smoothed_cross_covs[t]`` =
      :math:`\operatorname{Cov}[x_{t+1}, x_t \mid y_{0:T-1}]`, shape
      ``(T-1, dx, dx)``.
    """
    params = _as_params(params)
    if not isinstance(filtered, tuple) or len(filtered) != 6:
        raise TypeError(
            "filtered must be a KalmanFilterResult, "
            f"got {type(filtered).__name__}"
        )
    filtered = KalmanFilterResult(*(jnp.asarray(f) for f in filtered))
    dx = params.A.shape[0]
    mf, Pf = filtered.filtered_means, filtered.filtered_covs
    mp, Pp = filtered.predicted_means, filtered.predicted_covs
    if mf.ndim != 2 or mf.shape[1] != dx or mf.shape[0] == 0:
        raise ValueError(
            f"filtered.filtered_means must have shape (T, {dx}) with T >= 1 for A "
            f"of shape {params.A.shape}, got {mf.shape}"
        )
    T = mf.shape[0]
    for name, arr, shape in (
        ("filtered_covs", Pf, (T, dx, dx)),
        ("predicted_means", mp, (T, dx)),
        ("predicted_covs", Pp, (T, dx, dx)),
    ):
        if arr.shape != shape:
            raise ValueError(
                f"filtered.{name} must have shape {shape} for filtered_means of "
                f"shape {mf.shape}, got {arr.shape}"
            )
    dtype = _float_dtype(params.A, mf, Pf, mp, Pp)
    return _rts_smoother(
        params.A.astype(dtype), *(x.astype(dtype) for x in (mf, Pf, mp, Pp))
    )


@jax.jit
def _rts_smoother(A: Array, mf: Array, Pf: Array, mp: Array, Pp: Array) -> SmootherResult:
    # Validated, dtype-consistent inputs (jitted for the compilation cache).
    def step(carry, inp):
        ms_next, Ps_next = carry
        mf_t, Pf_t, mp_next, Pp_next = inp
        # G_t^T = P_{t+1|t}^{-1} A P_{t|t}   (P_{t+1|t}, P_{t|t} symmetric).
        G = solve(Pp_next, A @ Pf_t).T
        ms = mf_t + G @ (ms_next - mp_next)
        Ps = _symmetrise(Pf_t + G @ (Ps_next - Pp_next) @ G.T)
        cross = Ps_next @ G.T
        return (ms, Ps), (ms, Ps, cross)

    last = (mf[-1], Pf[-1])
    xs = (mf[:-1], Pf[:-1], mp[1:], Pp[1:])
    _, (ms, Ps, cross) = lax.scan(step, last, xs, reverse=True)
    return SmootherResult(
        smoothed_means=jnp.concatenate([ms, mf[-1:]], axis=0),
        smoothed_covs=jnp.concatenate([Ps, Pf[-1:]], axis=0),
        smoothed_cross_covs=cross,
    )


def simulate(key: Array, params: LGSSMParams, num_steps: int) -> tuple[Array, Array]:
    r"""Draw one trajectory :math:`(x_{0:T-1}, y_{0:T-1})` from the model.

    :math:`x_0 \sim \mathcal N(m_0, P_0)`,
    :math:`x_t = A x_{t-1} + Q^{1/2}\varepsilon_t`,
    :math:`y_t = C x_t + R^{1/2}\eta_t` with standard normal
    :math:`\varepsilon_t, \eta_t`.  Symmetric (eigendecomposition) square roots
    are used, so singular covariances (e.g. ``Q = 0``) are allowed.

    Args:
      key: a ``jax.random`` key.
      params: :class:`LGSSMParams`.
      num_steps: ``T >= 1``, a static Python int.

    Returns:
      ``(xs, ys)`` of shapes ``(T, dx)`` and ``(T, dy)``.
    """
    params = _as_params(params)
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(
            f"num_steps must be a positive Python int, got {num_steps!r}"
        )
    dtype = _float_dtype(*params)
    return _simulate(key, _cast(params, dtype), num_steps)


@partial(jax.jit, static_argnums=2)
def _simulate(key: Array, params: LGSSMParams, num_steps: int) -> tuple[Array, Array]:
    A, Q, C, R, m0, P0 = params
    dtype = A.dtype
    dx, dy = A.shape[0], C.shape[0]
    k0, kx, ky = jax.random.split(key, 3)
    x0 = m0 + _psd_sqrt(P0) @ jax.random.normal(k0, (dx,), dtype)
    eps = jax.random.normal(kx, (num_steps - 1, dx), dtype) @ _psd_sqrt(Q).T

    def step(x, e):
        x_next = A @ x + e
        return x_next, x_next

    _, xs_rest = lax.scan(step, x0, eps)
    xs = jnp.concatenate([x0[None], xs_rest], axis=0)
    ys = xs @ C.T + jax.random.normal(ky, (num_steps, dy), dtype) @ _psd_sqrt(R).T
    return xs, ys


def log_likelihood(params: LGSSMParams, ys: Array) -> Array:
    r"""Exact log marginal likelihood :math:`\log p(y_{0:T-1})`.

    Convenience for ``kalman_filter(params, ys).log_likelihood``.
    """
    return kalman_filter(params, ys).log_likelihood
