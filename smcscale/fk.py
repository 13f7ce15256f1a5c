r"""Feynman–Kac models: the one protocol every sampler in smcscale is written against.

A Feynman–Kac (FK) model (Del Moral 2004; Chopin & Papaspiliopoulos 2020, ch. 5) is a
Markov chain with initial law ``M_0`` and kernels ``M_t(x_{t-1}, dx_t)``, plus potential
functions ``G_0(x_0)`` and ``G_t(x_{t-1}, x_t) >= 0``. SMC targets the sequence

    Q_t(dx_{0:t}) = (1 / Z_t) M_0(dx_0) G_0(x_0) prod_{s=1}^t M_s(x_{s-1}, dx_s) G_s(x_{s-1}, x_s)

and estimates the normalising constants ``Z_t`` without bias.

Particles are **any pytree whose leaves have a leading particle axis** of size ``N``. All
functions of the protocol act on the whole population at once (batched), so they can call
a batched LM decode step as easily as a vectorised JAX expression. ``inputs_t`` is the
slice at step ``t`` of the pytree of per-step inputs that the driver scans over
(observations, covariates, a time index: whatever the model needs; ``None`` if none).

=========================  ================================================  ====================
field                      signature                                         math
=========================  ================================================  ====================
``sample_initial``         ``(key, num_particles, inputs_0) -> x_0``         ``x_0 ~ M_0``
``sample_transition``      ``(key, x_prev, inputs_t) -> x_t``                ``x_t ~ M_t(x_{t-1}, .)``
``log_potential``          ``(x_prev, x, inputs_t) -> (N,)``                 ``log G_t``; ``x_prev is None`` at t = 0
``transition_log_density`` ``(x_prev, x, inputs_t) -> log m_t(x | x_prev)``  optional (smoothers, PGAS)
``log_lookahead``          ``(x_prev, inputs_t) -> (N,)``                    optional ``log eta_t(x_{t-1})`` (auxiliary PF)
=========================  ================================================  ====================

``transition_log_density`` must broadcast over leading axes of ``x_prev`` and ``x`` (so that
an ``(N, 1)`` by ``(1, N)`` call gives the ``N x N`` matrix backward samplers need). It is
the density of the *target* dynamics: backward sampling, PaRIS and ancestor sampling need
``M_t(x_prev, dx) G_t(x_prev, x) ∝ exp(transition_log_density(x_prev, x)) × h(x)`` for some
``h`` that does not depend on ``x_prev``. For a state-space model that is the transition
``f_t`` (not the proposal), which is what :func:`~smcscale.ssm.bootstrap`,
:func:`~smcscale.ssm.guided` and :func:`~smcscale.ssm.auxiliary` set.

``log_lookahead`` turns the filter into an auxiliary particle filter (Pitt & Shephard 1999;
Johansen & Doucet 2008): resampling at step ``t`` uses weights ``W_{t-1} eta_t(x_{t-1})`` and
the resampled particles carry the correction ``1 / eta_t``, so ``Q_t`` and ``Z_t`` are
unchanged; only the variance changes.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

__all__ = ["FeynmanKac"]


class FeynmanKac(NamedTuple):
    """A Feynman–Kac model as a tuple of pure, batched functions (see the module docstring)."""

    sample_initial: Callable[..., Any]
    sample_transition: Callable[..., Any]
    log_potential: Callable[..., Any]
    transition_log_density: Optional[Callable[..., Any]] = None
    log_lookahead: Optional[Callable[..., Any]] = None
