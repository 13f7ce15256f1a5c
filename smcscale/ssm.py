r"""State-space models written with numpyro distributions, and the particle filters built
from them: bootstrap, guided and auxiliary.

A state-space model (SSM) is

    x_0 ~ p_0(. | u_0),   x_t ~ f_t(. | x_{t-1}, u_t),   y_t ~ g_t(. | x_t, u_t),

written as three functions returning ``numpyro.distributions.Distribution`` objects
batched over particles (``x`` has a leading particle axis). ``u_t`` is the per-step slice
of the filter's ``inputs``; by default ``inputs_t`` *is* the observation ``y_t``; pass
``observed=`` to pick ``y_t`` out of a richer inputs pytree (e.g. ``lambda u: u["y"]``).

Filters as Feynman–Kac models (Chopin & Papaspiliopoulos 2020, ch. 10):

* **bootstrap** (Gordon, Salmond & Smith 1993): ``M_t = f_t``, ``G_t = g_t(y_t | x_t)``.
* **guided**: ``M_t = q_t(. | x_{t-1}, y_t)``, ``G_t = g_t(y_t | x_t) f_t(x_t | x_{t-1}) / q_t(x_t | x_{t-1})``
  (``G_0 = g_0 p_0 / q_0``). The locally optimal proposal ``q_t ∝ f_t g_t`` makes
  ``G_t`` independent of ``x_t``.
* **auxiliary** (Pitt & Shephard 1999): a guided (or bootstrap) filter plus look-ahead
  weights ``eta_t(x_{t-1}) ≈ p(y_t | x_{t-1})`` used at resampling (see :mod:`smcscale.fk`).
  With ``eta_t = p(y_t | x_{t-1})`` and the optimal proposal it is "fully adapted".

All three give unbiased estimates of ``Z_T = p(y_{0:T-1})``.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

from .fk import FeynmanKac
from .static import cached_builder

__all__ = ["StateSpaceModel", "bootstrap", "guided", "auxiliary"]


def _identity(u):
    return u


class StateSpaceModel(NamedTuple):
    """An SSM as numpyro distributions (see the module docstring).

    Attributes:
      prior: ``inputs_0 -> Distribution`` of ``x_0`` (unbatched; sampled ``N`` times).
      transition: ``(x_prev, inputs_t) -> Distribution`` of ``x_t``, batched over particles.
      observation: ``(x, inputs_t) -> Distribution`` of ``y_t``, batched over particles.
      observed: ``inputs_t -> y_t`` (identity by default).
    """

    prior: Callable
    transition: Callable
    observation: Callable
    observed: Callable = _identity


def _log_obs(ssm, x, inputs_t):
    d = ssm.observation(x, inputs_t)
    y = ssm.observed(inputs_t)
    event = tuple(getattr(d, "event_shape", ()))
    y_shape = tuple(getattr(y, "shape", ()))
    if event and (len(y_shape) < len(event) or y_shape[len(y_shape) - len(event):] != event):
        raise ValueError(
            f"the observation y_t has shape {y_shape} but the model's observation distribution has event "
            f"shape {event}: give observations with a trailing axis of that shape, e.g. ys of shape "
            f"(T, {', '.join(map(str, event))}) (ys[:, None] for one observed dimension)"
        )
    return d.log_prob(y)


def _transition_log_density(ssm):
    def transition_log_density(x_prev, x, inputs_t):
        return ssm.transition(x_prev, inputs_t).log_prob(x)

    return transition_log_density


@cached_builder
def bootstrap(ssm: StateSpaceModel) -> FeynmanKac:
    """Bootstrap filter: propose from the transition, weight by the observation density."""
    _check_ssm(ssm)

    def sample_initial(key, n, inputs_0):
        return ssm.prior(inputs_0).sample(key, (n,))

    def sample_transition(key, x_prev, inputs_t):
        return ssm.transition(x_prev, inputs_t).sample(key)

    def log_potential(x_prev, x, inputs_t):
        return _log_obs(ssm, x, inputs_t)

    return FeynmanKac(sample_initial, sample_transition, log_potential, _transition_log_density(ssm))


@cached_builder
def guided(ssm: StateSpaceModel, proposal: Callable, proposal_initial: Optional[Callable] = None) -> FeynmanKac:
    """Guided filter with proposal ``q_t``.

    Args:
      proposal: ``(x_prev, inputs_t) -> Distribution`` of ``x_t`` (may look at ``y_t``).
      proposal_initial: ``inputs_0 -> Distribution`` of ``x_0`` (default: the prior).
    """
    _check_ssm(ssm)
    if not callable(proposal):
        raise TypeError("proposal must be a function (x_prev, inputs_t) -> numpyro Distribution")

    def sample_initial(key, n, inputs_0):
        q0 = ssm.prior(inputs_0) if proposal_initial is None else proposal_initial(inputs_0)
        return q0.sample(key, (n,))

    def sample_transition(key, x_prev, inputs_t):
        return proposal(x_prev, inputs_t).sample(key)

    def log_potential(x_prev, x, inputs_t):
        lg = _log_obs(ssm, x, inputs_t)
        if x_prev is None:
            if proposal_initial is None:
                return lg
            return lg + ssm.prior(inputs_t).log_prob(x) - proposal_initial(inputs_t).log_prob(x)
        return lg + ssm.transition(x_prev, inputs_t).log_prob(x) - proposal(x_prev, inputs_t).log_prob(x)

    return FeynmanKac(sample_initial, sample_transition, log_potential, _transition_log_density(ssm))


@cached_builder
def auxiliary(
    ssm: StateSpaceModel,
    log_lookahead: Callable,
    proposal: Optional[Callable] = None,
    proposal_initial: Optional[Callable] = None,
) -> FeynmanKac:
    """Auxiliary particle filter: a bootstrap (``proposal=None``) or guided filter plus
    ``log_lookahead(x_prev, inputs_t) -> (N,)``, the log of ``eta_t(x_{t-1}) ≈ p(y_t | x_{t-1})``.
    """
    if not callable(log_lookahead):
        raise TypeError("log_lookahead must be a function (x_prev, inputs_t) -> (N,) log-weights")
    base = bootstrap(ssm) if proposal is None else guided(ssm, proposal, proposal_initial)
    return base._replace(log_lookahead=log_lookahead)


def _check_ssm(ssm):
    if not isinstance(ssm, StateSpaceModel):
        raise TypeError(f"expected a smcscale.StateSpaceModel, got {type(ssm).__name__}")
    for name in ("prior", "transition", "observation", "observed"):
        if not callable(getattr(ssm, name)):
            raise TypeError(f"StateSpaceModel.{name} must be callable")
