r"""Parameter learning for state-space models on the engine: scores and maximum likelihood.

A parametric model is a function ``model_fn: theta -> StateSpaceModel`` (or
``theta -> FeynmanKac`` together with its complete-data log-density), ``theta`` any pytree
of floats. Write the complete-data log-density of one step as

    l_0(theta; x_0)        = log p_0,theta(x_0) + log g_0,theta(y_0 | x_0),
    l_t(theta; x_{t-1}, x_t) = log f_t,theta(x_t | x_{t-1}) + log g_t,theta(y_t | x_t)   (t >= 1).

Fisher's identity (Cappé, Moulines & Rydén 2005, Prop. 10.1.6) turns the score into a
smoothing expectation of an additive functional:

    ∇_theta log p_theta(y_{0:T-1}) = E_theta[ sum_t ∇_theta l_t(theta; x_{t-1}, x_t) | y_{0:T-1} ].   (F)

Estimators
----------
* :func:`score_paris` — (F) by PaRIS (:func:`smcscale.smoothing.paris`) with the additive
  functional ``h_t = ∇_theta l_t`` (per-particle ``jax.grad``): ``O(N Ñ)`` per step, no path
  degeneracy, bias ``O(1/N)`` (Olsson & Westerborn 2017; Poyiadjis, Doucet & Singh 2011 for
  the ``O(N²)`` forward-smoothing ancestor of this estimator).
* :func:`log_z_stop_gradient` / :func:`score_stop_gradient` — the gradient of the filter's
  ``log Ẑ`` with the stop-gradient resampling estimator of Ścibior & Wood (2021): the
  forward pass is unchanged (same particles, same ``log Ẑ`` value) but

  - particles are ``stop_gradient``-ed (no reparameterisation path);
  - the incremental log-weight is ``sg(log G_t) + l_t - sg(l_t)`` (value ``log G_t``,
    gradient ``∇ l_t``; this is the score-function term of the proposal);
  - after resampling, child ``i`` carries ``lw_{A_i} - sg(lw_{A_i})`` (value 0).

  Then ``∇ log Ẑ = sum_i W_{T-1}^i sum_t ∇ l_t(x^{(i)}_{t-1}, x^{(i)}_t)`` along the
  ancestral lines: the path-space (genealogy) estimate of (F). It is the estimator one gets
  from ``jax.grad`` "for free"; it is consistent but suffers from path degeneracy for long
  series (variance growing with ``T``), which PaRIS avoids.
* :func:`mle` — maximum likelihood by stochastic gradient ascent with an ``optax``
  optimiser (Adam by default) on whatever parameterisation ``model_fn`` takes (use an
  unconstrained one, e.g. ``rho = tanh(a)``, ``sigma = exp(b)``), the score re-estimated at
  every iteration with fresh, fixed-seed keys. The loop is one jitted ``lax.scan``.
* :func:`stochastic_gradient_ascent` — the generic driver behind :func:`mle`: it takes any
  ``score_fn(key, theta, carry) -> (score, log_z, carry)``. **Hook for Markov score
  climbing** (Naesseth, Lindsten & Blei 2020; PPG-driven MSC of Cardoso et al. 2023): pass a
  ``score_fn`` that runs conditional SMC / Parisian particle Gibbs from the reference
  trajectory in ``carry`` and returns the new reference as ``carry``.

References
----------
* O. Cappé, E. Moulines, T. Rydén (2005). Inference in Hidden Markov Models. Springer.
* G. Poyiadjis, A. Doucet, S. S. Singh (2011). Particle approximations of the score and
  observed information matrix in state space models. Biometrika 98(1), 65–80.
* J. Olsson, J. Westerborn (2017). The PaRIS algorithm. Bernoulli 23(3), 1951–1996.
* A. Ścibior, F. Wood (2021). Differentiable particle filtering without modifying the forward
  pass. arXiv:2106.10314.
* C. A. Naesseth, F. Lindsten, D. Blei (2020). Markovian score climbing. NeurIPS.
* G. Cardoso et al. (2023). State and parameter learning with PaRIS particle Gibbs.
  arXiv:2301.00900.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .fk import FeynmanKac
from .resampling import get_resampler
from .checks import as_key, num_steps_of, positive_int
from .smc import SMCConfig, SMCState, StepHook, filter_scan
from .smoothing import as_log_bound, check_backward_method, paris_filter, require_transition_density
from .static import cached_builder
from .ssm import StateSpaceModel, bootstrap
from .weights import log_normalize, safe_logsumexp

__all__ = [
    "ScoreEstimate",
    "SGAResult",
    "complete_data_log_density",
    "score_additive_fn",
    "score_paris",
    "log_z_stop_gradient",
    "score_stop_gradient",
    "paris_score_fn",
    "stop_gradient_score_fn",
    "stochastic_gradient_ascent",
    "mle",
    "default_optimizer",
    "build_fk",
    "check_theta",
    "check_model_args",
    "STOP_GRADIENT_HOOK",
]

sg = jax.lax.stop_gradient


class ScoreEstimate(NamedTuple):
    """A score estimate (pytree like ``theta``) and the filter's ``log Ẑ``."""

    score: Any
    log_z: jax.Array


class SGAResult(NamedTuple):
    """What :func:`stochastic_gradient_ascent` / :func:`mle` return.

    Attributes:
      theta: the last iterate.
      theta_average: the Polyak–Ruppert average of the iterates after ``average_from``.
      thetas: leaves ``(num_iterations + 1, ...)``: ``theta_0, ..., theta_K``.
      scores: leaves ``(num_iterations, ...)``: the score estimate used at each iteration.
      log_z: ``(num_iterations,)`` the filter's ``log Ẑ`` at each iteration.
      carry: the final ``carry`` of the score function (e.g. a CSMC reference trajectory).
    """

    theta: Any
    theta_average: Any
    thetas: Any
    scores: Any
    log_z: jax.Array
    carry: Any = None


# ---------------------------------------------------------------------------------------
# the model


def build_fk(model_fn, theta, filter_fn):
    """The FK model at ``theta``: ``filter_fn(model_fn(theta))`` for a state-space model, or
    ``model_fn(theta)`` itself when it is a :class:`FeynmanKac`."""
    model = model_fn(theta)
    if isinstance(model, StateSpaceModel):
        return filter_fn(model)
    if isinstance(model, FeynmanKac):
        return model
    raise TypeError(f"model_fn(theta) must return a StateSpaceModel or a FeynmanKac, got {type(model).__name__}")


@cached_builder
def complete_data_log_density(model_fn: Callable, log_density_fn: Optional[Callable] = None) -> Callable:
    r"""``l(theta, x_prev, x, inputs_t) -> (B,)``: the per-step complete-data log-density.

    For ``model_fn: theta -> StateSpaceModel``, ``l_0 = log p_0(x_0) + log g_0(y_0 | x_0)``
    (``x_prev is None``) and ``l_t = log f_t(x_t | x_{t-1}) + log g_t(y_t | x_t)``, all batched
    over the leading axis. For ``theta -> FeynmanKac`` the FK model does not expose the
    densities of its initial law and observations, so ``log_density_fn`` with that signature
    is required (for a bootstrap-type FK it is ``log M_0-density + log G_0`` at ``t = 0`` and
    ``transition_log_density + log_potential`` afterwards).
    """
    if log_density_fn is not None:
        if not callable(log_density_fn):
            raise TypeError("log_density_fn must be a function (theta, x_prev, x, inputs_t) -> (B,)")
        return log_density_fn

    def log_density(theta, x_prev, x, inputs_t):
        ssm = model_fn(theta)
        if not isinstance(ssm, StateSpaceModel):
            raise TypeError(
                "model_fn(theta) returned a FeynmanKac: pass log_density_fn=(theta, x_prev, x, inputs_t) -> "
                "log complete-data density of the step (the FK model alone does not define it)"
            )
        lg = ssm.observation(x, inputs_t).log_prob(ssm.observed(inputs_t))
        if x_prev is None:
            lm = ssm.prior(inputs_t).log_prob(x)
        else:
            lm = ssm.transition(x_prev, inputs_t).log_prob(x)
        return lm + lg

    return log_density


def _one(tree):
    return jax.tree_util.tree_map(lambda leaf: jnp.expand_dims(leaf, 0), tree)


def score_additive_fn(log_density: Callable, theta) -> Callable:
    r"""The additive functional ``h_t(x_{t-1}, x_t) = ∇_theta l_t(theta; x_{t-1}, x_t)`` of (F).

    Returns ``h(x_prev, x, inputs_t)``, batched over the leading axis (one ``jax.grad`` per
    pair, vectorised with ``vmap``), for :func:`smcscale.smoothing.paris`.
    """
    theta = sg(theta)

    def h(x_prev, x, inputs_t):
        if x_prev is None:

            def g0(xi):
                return jax.grad(lambda th: jnp.sum(log_density(th, None, _one(xi), inputs_t)))(theta)

            return jax.vmap(g0)(x)

        def g(xpi, xi):
            return jax.grad(lambda th: jnp.sum(log_density(th, _one(xpi), _one(xi), inputs_t)))(theta)

        return jax.vmap(g)(x_prev, x)

    return h


def check_theta(theta):
    """Raise unless ``theta`` is a non-empty pytree of floating-point arrays."""
    leaves = jax.tree_util.tree_leaves(theta)
    if not leaves:
        raise ValueError("theta must be a pytree with at least one array leaf")
    for leaf in leaves:
        if not jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.floating):
            raise TypeError(f"theta leaves must be floating point (they are differentiated), got {jnp.asarray(leaf).dtype}")


def check_model_args(model_fn, theta, inputs, num_particles, filter_fn, log_density_fn, ess_threshold, resampling):
    if not callable(model_fn):
        raise TypeError("model_fn must be a function theta -> StateSpaceModel (or FeynmanKac)")
    if not callable(filter_fn):
        raise TypeError("filter_fn must be a function StateSpaceModel -> FeynmanKac (e.g. smcscale.bootstrap)")
    check_theta(theta)
    num_particles = positive_int(num_particles, "num_particles")
    kappa = float(ess_threshold)
    if not 0.0 <= kappa <= 1.0:
        raise ValueError(f"ess_threshold must be in [0, 1], got {kappa}")
    get_resampler(resampling)
    t = num_steps_of(inputs, None)
    model = model_fn(theta)
    if isinstance(model, FeynmanKac) and log_density_fn is None:
        raise ValueError(
            "model_fn(theta) returned a FeynmanKac: pass log_density_fn=(theta, x_prev, x, inputs_t) -> the "
            "complete-data log-density of the step (x_prev is None at t = 0)"
        )
    if not isinstance(model, (FeynmanKac, StateSpaceModel)):
        raise TypeError(f"model_fn(theta) must return a StateSpaceModel or a FeynmanKac, got {type(model).__name__}")
    return t, SMCConfig(num_particles, kappa, resampling)


# ---------------------------------------------------------------------------------------
# score by PaRIS


def _score_paris_impl(key, theta, inputs, *, model_fn, filter_fn, log_density_fn, num_steps, config, num_backward, method, num_mh_steps, log_bound, max_trials):
    fk = build_fk(model_fn, sg(theta), filter_fn)
    require_transition_density(fk, "score_paris")
    ld = complete_data_log_density(model_fn, log_density_fn)
    res = paris_filter(
        key, fk, inputs, config, num_steps=num_steps, additive_fn=score_additive_fn(ld, theta),
        num_backward=num_backward, method=method, num_mh_steps=num_mh_steps, log_bound=log_bound, max_trials=max_trials,
    )
    return ScoreEstimate(res.estimate, res.log_z)


_STATIC = ("model_fn", "filter_fn", "log_density_fn", "num_steps", "config")
_PARIS_STATIC = ("num_backward", "method", "num_mh_steps", "log_bound", "max_trials")
_score_paris_jit = jax.jit(_score_paris_impl, static_argnames=_STATIC + _PARIS_STATIC)


def score_paris(
    key,
    model_fn: Callable,
    theta,
    inputs,
    num_particles: int,
    *,
    filter_fn: Callable = bootstrap,
    log_density_fn: Optional[Callable] = None,
    num_backward: int = 2,
    method: str = "mh",
    num_mh_steps: int = 1,
    log_bound=None,
    max_trials: int = 8,
    ess_threshold: float = 0.5,
    resampling="systematic",
) -> ScoreEstimate:
    r"""Score ``∇_theta log p_theta(y_{0:T-1})`` by Fisher's identity (F) and PaRIS.

    Args:
      key: a ``jax.random`` key.
      model_fn: ``theta -> StateSpaceModel`` (or ``-> FeynmanKac`` with ``log_density_fn``).
      theta: the parameters (pytree of floats) at which to estimate the score.
      inputs: observations / per-step inputs (leading axis ``T``).
      num_particles: ``N``.
      filter_fn: ``StateSpaceModel -> FeynmanKac`` (default :func:`smcscale.bootstrap`; any
        ``guided``/``auxiliary`` construction works: the target is the same).
      log_density_fn: ``(theta, x_prev, x, inputs_t) -> (B,)`` complete-data log-density
        (required for a ``FeynmanKac`` model, see :func:`complete_data_log_density`).
      num_backward, method, num_mh_steps, log_bound, max_trials: PaRIS options
        (:func:`smcscale.smoothing.paris`).
      ess_threshold, resampling: as in :func:`smcscale.run`.

    Returns:
      :class:`ScoreEstimate` ``(score, log_z)``; ``score`` has the structure of ``theta``.
    """
    check_backward_method(method, log_bound)
    t, config = check_model_args(model_fn, theta, inputs, num_particles, filter_fn, log_density_fn, ess_threshold, resampling)
    return _score_paris_jit(
        as_key(key), theta, inputs, model_fn=model_fn, filter_fn=filter_fn, log_density_fn=log_density_fn,
        num_steps=t, config=config, num_backward=positive_int(num_backward, "num_backward"), method=method,
        num_mh_steps=positive_int(num_mh_steps, "num_mh_steps"), log_bound=as_log_bound(log_bound),
        max_trials=positive_int(max_trials, "max_trials"),
    )


# ---------------------------------------------------------------------------------------
# stop-gradient resampling (Ścibior & Wood 2021)


def _stop_gradient_fk(fk: FeynmanKac, log_density, theta) -> FeynmanKac:
    """The FK model of the stop-gradient estimator: same forward values, gradient = ∇ l_t."""

    def sample_initial(key, n, inputs_0):
        return sg(fk.sample_initial(key, n, inputs_0))

    def sample_transition(key, x_prev, inputs_t):
        return sg(fk.sample_transition(key, sg(x_prev), inputs_t))

    def log_potential(x_prev, x, inputs_t):
        lg = jnp.asarray(fk.log_potential(x_prev, x, inputs_t))
        l = log_density(theta, x_prev, x, inputs_t)
        return sg(lg) + (l - sg(l))

    log_lookahead = None
    if fk.log_lookahead is not None:

        def log_lookahead(x_prev, inputs_t):
            return sg(fk.log_lookahead(x_prev, inputs_t))

    return FeynmanKac(sample_initial, sample_transition, log_potential, fk.transition_log_density, log_lookahead)


def _stop_gradient_update(key, tr):
    # The engine gives every resampled child the same (constant) log-weight; add the
    # zero-valued correction lw_{A_i} - sg(lw_{A_i}) that carries the ancestor's gradient.
    new = tr.state
    lw_anc = jnp.take(tr.previous.log_weights, tr.info.ancestors)
    corr = jnp.where(tr.info.resampled, lw_anc - sg(lw_anc), 0.0)
    corr = jnp.where(jnp.isfinite(lw_anc), corr, 0.0)
    shifted = new.log_weights + corr
    # log Ẑ_t gains logsumexp(unnormalised + corr) - logsumexp(unnormalised) = lse(shifted).
    return SMCState(new.particles, log_normalize(shifted), new.log_z + safe_logsumexp(shifted)), None


def _no_extra(key, state, inputs_0):
    return None


STOP_GRADIENT_HOOK = StepHook(_no_extra, _stop_gradient_update)
"""The :class:`smcscale.StepHook` of the stop-gradient estimator: after each step it adds to
the log-weights the zero-valued term ``lw_{A_i} - sg(lw_{A_i})`` so that ``∇ log Ẑ`` follows
the ancestral lines (the values, and so ``log Ẑ``, are unchanged)."""


def _log_z_sg_impl(key, theta, inputs, *, model_fn, filter_fn, log_density_fn, num_steps, config):
    fk = _stop_gradient_fk(
        build_fk(model_fn, theta, filter_fn), complete_data_log_density(model_fn, log_density_fn), theta
    )
    # the driver's keys: log Ẑ is smc.run's, draw for draw
    return filter_scan(key, fk, inputs, config, num_steps=num_steps, hook=STOP_GRADIENT_HOOK).state.log_z


_log_z_sg_jit = jax.jit(_log_z_sg_impl, static_argnames=_STATIC)


def log_z_stop_gradient(
    key,
    model_fn: Callable,
    theta,
    inputs,
    num_particles: int,
    *,
    filter_fn: Callable = bootstrap,
    log_density_fn: Optional[Callable] = None,
    ess_threshold: float = 0.5,
    resampling="systematic",
):
    r"""``log Ẑ`` of the particle filter, differentiable in ``theta`` with the stop-gradient
    resampling estimator (Ścibior & Wood 2021; module docstring).

    The value equals ``smcscale.run(key, filter_fn(model_fn(theta)), ...).log_z`` up to
    float rounding (same key, same draws). ``jax.grad`` of it w.r.t. ``theta`` is the
    path-space Fisher-identity score estimate ``sum_i W^i sum_t ∇ l_t`` along the ancestral
    lines. Runs the engine's ``init`` / ``smc_step``; arguments as in :func:`score_paris`.
    """
    t, config = check_model_args(model_fn, theta, inputs, num_particles, filter_fn, log_density_fn, ess_threshold, resampling)
    return _log_z_sg_jit(
        as_key(key), theta, inputs, model_fn=model_fn, filter_fn=filter_fn, log_density_fn=log_density_fn,
        num_steps=t, config=config,
    )


def score_stop_gradient(key, model_fn, theta, inputs, num_particles, **kwargs) -> ScoreEstimate:
    """``(∇_theta log Ẑ, log Ẑ)`` with :func:`log_z_stop_gradient`."""
    log_z, score = jax.value_and_grad(
        lambda th: log_z_stop_gradient(key, model_fn, th, inputs, num_particles, **kwargs)
    )(theta)
    return ScoreEstimate(score, log_z)


# ---------------------------------------------------------------------------------------
# stochastic gradient ascent


@cached_builder
def default_optimizer(learning_rate: float = 1e-2):
    """``optax.adam(learning_rate)``, built once per learning rate: the optimiser is a static
    argument of the jitted ascent loop, so a fresh ``optax.adam`` per call would recompile.
    Keep your own optimiser object for the same reason."""
    return optax.adam(learning_rate)


@cached_builder
def paris_score_fn(
    model_fn: Callable,
    inputs,
    num_particles: int,
    *,
    filter_fn: Callable = bootstrap,
    log_density_fn: Optional[Callable] = None,
    num_backward: int = 2,
    method: str = "mh",
    num_mh_steps: int = 1,
    log_bound=None,
    max_trials: int = 8,
    ess_threshold: float = 0.5,
    resampling="systematic",
    theta_example=None,
) -> Callable:
    """A ``score_fn(key, theta, carry) -> (score, log_z, carry)`` for
    :func:`stochastic_gradient_ascent`, estimating the score by PaRIS (``carry`` unused)."""
    check_backward_method(method, log_bound)
    num_particles = positive_int(num_particles, "num_particles")
    t = num_steps_of(inputs, None)
    config = SMCConfig(num_particles, float(ess_threshold), resampling)
    get_resampler(resampling)
    opts = dict(
        model_fn=model_fn, filter_fn=filter_fn, log_density_fn=log_density_fn, num_steps=t, config=config,
        num_backward=positive_int(num_backward, "num_backward"), method=method,
        num_mh_steps=positive_int(num_mh_steps, "num_mh_steps"), log_bound=as_log_bound(log_bound),
        max_trials=positive_int(max_trials, "max_trials"),
    )

    def score_fn(key, theta, carry):
        est = _score_paris_impl(key, theta, inputs, **opts)
        return est.score, est.log_z, carry

    return score_fn


@cached_builder
def stop_gradient_score_fn(
    model_fn: Callable,
    inputs,
    num_particles: int,
    *,
    filter_fn: Callable = bootstrap,
    log_density_fn: Optional[Callable] = None,
    ess_threshold: float = 0.5,
    resampling="systematic",
) -> Callable:
    """A ``score_fn(key, theta, carry)`` using the stop-gradient ``∇ log Ẑ`` estimator."""
    num_particles = positive_int(num_particles, "num_particles")
    t = num_steps_of(inputs, None)
    config = SMCConfig(num_particles, float(ess_threshold), resampling)
    get_resampler(resampling)

    def score_fn(key, theta, carry):
        log_z, score = jax.value_and_grad(
            lambda th: _log_z_sg_impl(
                key, th, inputs, model_fn=model_fn, filter_fn=filter_fn, log_density_fn=log_density_fn,
                num_steps=t, config=config,
            )
        )(theta)
        return score, log_z, carry

    return score_fn


@functools.partial(jax.jit, static_argnames=("score_fn", "num_iterations", "optimizer", "average_from"))
def _sga_jit(key, theta0, carry0, *, score_fn, num_iterations, optimizer, average_from):
    opt_state = optimizer.init(theta0)

    def body(c, k):
        theta, opt_state, carry = c
        score, log_z, carry = score_fn(k, theta, carry)
        # optax minimises: ascend the log-likelihood by descending its negation.
        updates, opt_state = optimizer.update(jax.tree_util.tree_map(jnp.negative, score), opt_state, theta)
        theta = optax.apply_updates(theta, updates)
        return (theta, opt_state, carry), (theta, score, log_z)

    (theta, _, carry), (thetas, scores, log_z) = jax.lax.scan(
        body, (theta0, opt_state, carry0), jax.random.split(key, num_iterations)
    )
    thetas = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([jnp.asarray(a)[None], b], axis=0), theta0, thetas)
    average = jax.tree_util.tree_map(lambda v: jnp.mean(v[average_from:], axis=0), thetas)
    return SGAResult(theta, average, thetas, scores, log_z, carry)


def stochastic_gradient_ascent(
    key,
    score_fn: Callable,
    theta0,
    num_iterations: int,
    *,
    optimizer=None,
    carry0=None,
    average_from: Optional[int] = None,
) -> SGAResult:
    r"""Stochastic gradient ascent ``theta_{k+1} = theta_k + step(score_k)`` with ``optax``.

    Args:
      key: a ``jax.random`` key; iteration ``k`` uses ``split(key, num_iterations)[k]``.
      score_fn: ``(key, theta, carry) -> (score, log_z, carry)``; ``score`` has the
        structure of ``theta``. :func:`paris_score_fn` and :func:`stop_gradient_score_fn`
        build one; for **Markov score climbing** give one whose ``carry`` is the conditional
        SMC reference trajectory (``carry0`` the initial one) and whose score is the
        PaRIS/PPG estimate along it.
      theta0: initial parameters (pytree of floats).
      num_iterations: number of updates ``K``.
      optimizer: an ``optax.GradientTransformation`` (default ``optax.adam(1e-2)``); it is
        given ``-score`` (optax minimises).
      average_from: the Polyak–Ruppert average covers ``theta_{average_from..K}``
        (default ``K // 2``).

    Returns:
      :class:`SGAResult`.
    """
    if not callable(score_fn):
        raise TypeError("score_fn must be a function (key, theta, carry) -> (score, log_z, carry)")
    check_theta(theta0)
    num_iterations = positive_int(num_iterations, "num_iterations")
    if optimizer is None:
        optimizer = default_optimizer()
    if average_from is None:
        average_from = num_iterations // 2
    if isinstance(average_from, bool) or not isinstance(average_from, (int, np.integer)) or not 0 <= average_from <= num_iterations:
        raise ValueError(f"average_from must be an int in [0, {num_iterations}], got {average_from!r}")
    return _sga_jit(
        as_key(key), theta0, carry0, score_fn=score_fn, num_iterations=num_iterations, optimizer=optimizer,
        average_from=int(average_from),
    )


def mle(
    key,
    model_fn: Callable,
    theta0,
    inputs,
    num_particles: int,
    num_iterations: int,
    *,
    optimizer=None,
    estimator: str = "paris",
    average_from: Optional[int] = None,
    filter_fn: Callable = bootstrap,
    log_density_fn: Optional[Callable] = None,
    **paris_options,
) -> SGAResult:
    r"""Maximum likelihood by stochastic gradient ascent on ``log p_theta(y_{0:T-1})``.

    Each iteration estimates the score at the current ``theta`` (PaRIS by default,
    ``estimator="stop_gradient"`` for the Ścibior–Wood ``∇ log Ẑ``) with a fresh key from
    ``key`` and takes one ``optax`` step (default ``optax.adam(1e-2)``). ``model_fn`` should
    take unconstrained parameters. Returns :class:`SGAResult`; ``theta_average`` (the
    Polyak–Ruppert average over the second half by default) is usually the better estimate.
    ``paris_options``: ``num_backward``, ``method``, ``num_mh_steps``, ``log_bound``,
    ``max_trials``, ``ess_threshold``, ``resampling``.
    """
    ess_threshold = paris_options.get("ess_threshold", 0.5)
    resampling = paris_options.get("resampling", "systematic")
    check_model_args(model_fn, theta0, inputs, num_particles, filter_fn, log_density_fn, ess_threshold, resampling)
    if estimator == "paris":
        score_fn = paris_score_fn(model_fn, inputs, num_particles, filter_fn=filter_fn, log_density_fn=log_density_fn, **paris_options)
    elif estimator == "stop_gradient":
        unknown = set(paris_options) - {"ess_threshold", "resampling"}
        if unknown:
            raise TypeError(f"options {sorted(unknown)} apply to estimator='paris' only")
        score_fn = stop_gradient_score_fn(model_fn, inputs, num_particles, filter_fn=filter_fn, log_density_fn=log_density_fn, **paris_options)
    else:
        raise ValueError(f"unknown estimator {estimator!r}; choose 'paris' or 'stop_gradient'")
    return stochastic_gradient_ascent(key, score_fn, theta0, num_iterations, optimizer=optimizer, average_from=average_from)
