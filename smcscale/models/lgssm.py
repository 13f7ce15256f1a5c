r"""The linear-Gaussian state-space model (LGSSM) as a :class:`~smcscale.ssm.StateSpaceModel`.

    x_0 ~ N(m0, P0),   x_t = A x_{t-1} + N(0, Q),   y_t = C x_t + N(0, R).

Its exact filter and smoother (Kalman, RTS) live in :mod:`smcscale.kalman`; this module
gives the same model to the particle filters, in two forms:

* :func:`univariate` — the scalar AR(1) model of ``particles``' book
  (``x_0 ~ N(0, sigma_x^2 / (1 - rho^2))``, ``x_t = rho x_{t-1} + sigma_x eps``,
  ``y_t = x_t + sigma_y eta``) with scalar particles ``(N,)`` and observations ``(T,)``;
* :func:`multivariate` — any :class:`~smcscale.kalman.LGSSMParams`, particles ``(N, dx)``,
  observations ``(T, dy)``.

Both come with the *locally optimal* proposal ``q_t(x_t | x_{t-1}, y_t) ∝ f(x_t | x_{t-1}) g(y_t | x_t)``,

    S = (Q^{-1} + C' R^{-1} C)^{-1},   m = S (Q^{-1} A x_{t-1} + C' R^{-1} y_t),

and the exact predictive look-ahead ``eta_t(x_{t-1}) = p(y_t | x_{t-1}) = N(y_t; C A x_{t-1}, C Q C' + R)``,
which together make the auxiliary filter fully adapted.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpyro.distributions as dist

from ..kalman import LGSSMParams, univariate_params
from ..ssm import StateSpaceModel
from ..static import cached_builder

__all__ = [
    "univariate",
    "univariate_optimal_proposal",
    "univariate_lookahead",
    "multivariate",
    "optimal_proposal",
    "lookahead",
    "LGSSMParams",
    "univariate_params",
]


# ----------------------------------------------------------------------------- scalar


@cached_builder
def univariate(rho: float = 0.9, sigma_x: float = 1.0, sigma_y: float = 0.2) -> StateSpaceModel:
    """Scalar LGSSM (stationary start); matches ``kalman.univariate_params(rho, sigma_x, sigma_y)``."""
    if not abs(rho) < 1:
        raise ValueError(f"univariate LGSSM needs |rho| < 1 for a stationary start, got rho={rho}")
    if sigma_x <= 0 or sigma_y <= 0:
        raise ValueError(f"sigma_x and sigma_y must be positive, got {sigma_x}, {sigma_y}")
    sd0 = sigma_x / (1.0 - rho**2) ** 0.5

    return StateSpaceModel(
        prior=lambda u: dist.Normal(0.0, sd0),
        transition=lambda x_prev, u: dist.Normal(rho * x_prev, sigma_x),
        observation=lambda x, u: dist.Normal(x, sigma_y),
    )


@cached_builder
def univariate_optimal_proposal(rho: float = 0.9, sigma_x: float = 1.0, sigma_y: float = 0.2):
    """``(proposal, proposal_initial)``: the locally optimal proposal of :func:`univariate`."""
    var0 = sigma_x**2 / (1.0 - rho**2)
    s0 = 1.0 / (1.0 / var0 + 1.0 / sigma_y**2)
    s = 1.0 / (1.0 / sigma_x**2 + 1.0 / sigma_y**2)

    def proposal(x_prev, y):
        return dist.Normal(s * (rho * x_prev / sigma_x**2 + y / sigma_y**2), s**0.5)

    def proposal_initial(y):
        return dist.Normal(s0 * y / sigma_y**2, s0**0.5)

    return proposal, proposal_initial


@cached_builder
def univariate_lookahead(rho: float = 0.9, sigma_x: float = 1.0, sigma_y: float = 0.2):
    """``log eta_t(x_{t-1}) = log N(y_t; rho x_{t-1}, sigma_x^2 + sigma_y^2)``."""
    sd = (sigma_x**2 + sigma_y**2) ** 0.5

    def log_lookahead(x_prev, y):
        return dist.Normal(rho * x_prev, sd).log_prob(y)

    return log_lookahead


# ----------------------------------------------------------------------------- multivariate


@cached_builder
def multivariate(params: LGSSMParams) -> StateSpaceModel:
    """LGSSM with vector states ``(N, dx)`` and observations ``(T, dy)``."""
    A, Q, C, R, m0, P0 = (jnp.asarray(p) for p in params)
    dx = A.shape[0]
    if A.shape != (dx, dx) or Q.shape != (dx, dx) or P0.shape != (dx, dx) or m0.shape != (dx,):
        raise ValueError(
            f"inconsistent LGSSM state shapes: A {A.shape}, Q {Q.shape}, m0 {m0.shape}, P0 {P0.shape} (dx = {dx})"
        )
    if C.ndim != 2 or C.shape[1] != dx or R.shape != (C.shape[0], C.shape[0]):
        raise ValueError(f"inconsistent LGSSM observation shapes: C {C.shape}, R {R.shape} (dx = {dx})")

    return StateSpaceModel(
        prior=lambda u: dist.MultivariateNormal(m0, covariance_matrix=P0),
        transition=lambda x_prev, u: dist.MultivariateNormal(x_prev @ A.T, covariance_matrix=Q),
        observation=lambda x, u: dist.MultivariateNormal(x @ C.T, covariance_matrix=R),
    )


@cached_builder
def optimal_proposal(params: LGSSMParams):
    """``(proposal, proposal_initial)``: the locally optimal proposal of :func:`multivariate`."""
    A, Q, C, R, m0, P0 = (jnp.asarray(p) for p in params)
    Rinv = jnp.linalg.inv(R)
    Qinv = jnp.linalg.inv(Q)
    P0inv = jnp.linalg.inv(P0)
    S = jnp.linalg.inv(Qinv + C.T @ Rinv @ C)
    S0 = jnp.linalg.inv(P0inv + C.T @ Rinv @ C)

    def proposal(x_prev, y):
        mean = (x_prev @ (Qinv @ A).T + y @ (Rinv @ C)) @ S.T
        return dist.MultivariateNormal(mean, covariance_matrix=S)

    def proposal_initial(y):
        mean = S0 @ (P0inv @ m0 + C.T @ Rinv @ y)
        return dist.MultivariateNormal(mean, covariance_matrix=S0)

    return proposal, proposal_initial


@cached_builder
def lookahead(params: LGSSMParams):
    """``log eta_t(x_{t-1}) = log N(y_t; C A x_{t-1}, C Q C' + R)``."""
    A, Q, C, R, _, _ = (jnp.asarray(p) for p in params)
    cov = C @ Q @ C.T + R
    CA = C @ A

    def log_lookahead(x_prev, y):
        return dist.MultivariateNormal(x_prev @ CA.T, covariance_matrix=cov).log_prob(y)

    return log_lookahead
