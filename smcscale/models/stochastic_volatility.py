r"""Stochastic volatility model (Taylor 1982; Kim, Shephard & Chib 1998).

    x_0 ~ N(mu, sigma^2 / (1 - rho^2)),
    x_t = mu + rho (x_{t-1} - mu) + sigma eps_t,
    y_t ~ N(0, exp(x_t)),

the log-variance ``x_t`` of returns ``y_t`` follows a stationary AR(1). No closed-form
filter exists, which makes it the standard demonstration of a particle filter; it is the
model of the ``smcscale demo`` command.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro.distributions as dist

from ..ssm import StateSpaceModel
from ..static import cached_builder

__all__ = ["stochastic_volatility", "simulate"]


def _check(mu, rho, sigma):
    if not abs(rho) < 1:
        raise ValueError(f"stochastic volatility needs |rho| < 1, got rho={rho}")
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")


@cached_builder
def stochastic_volatility(mu: float = -1.0, rho: float = 0.95, sigma: float = 0.3) -> StateSpaceModel:
    """The SV model as a :class:`~smcscale.ssm.StateSpaceModel` (scalar particles)."""
    _check(mu, rho, sigma)
    sd0 = sigma / (1.0 - rho**2) ** 0.5
    return StateSpaceModel(
        prior=lambda u: dist.Normal(mu, sd0),
        transition=lambda x_prev, u: dist.Normal(mu + rho * (x_prev - mu), sigma),
        observation=lambda x, u: dist.Normal(0.0, jnp.exp(0.5 * x)),
    )


def simulate(key, num_steps: int, mu: float = -1.0, rho: float = 0.95, sigma: float = 0.3):
    """Simulate ``(xs, ys)``, each of shape ``(num_steps,)``."""
    _check(mu, rho, sigma)
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    k0, kx, ky = jax.random.split(key, 3)
    x0 = mu + sigma / (1.0 - rho**2) ** 0.5 * jax.random.normal(k0)

    def step(x, eps):
        x_new = mu + rho * (x - mu) + sigma * eps
        return x_new, x_new

    _, rest = jax.lax.scan(step, x0, jax.random.normal(kx, (num_steps - 1,)))
    xs = jnp.concatenate([x0[None], rest])
    ys = jnp.exp(0.5 * xs) * jax.random.normal(ky, (num_steps,))
    return xs, ys
