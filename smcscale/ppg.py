r"""Parisian particle Gibbs (PPG) and PPG-driven Markov score climbing, on the engine.

Parisian particle Gibbs (Cardoso, Janati El Idrissi, Le Corff, Moulines & Olsson 2023)
runs the PaRIS smoother (Olsson & Westerborn 2017; :mod:`smcscale.smoothing`) *inside*
conditional SMC (:mod:`smcscale.csmc`). For an additive functional
``S_T = sum_{t=0}^{T-1} h_t(x_{t-1}, x_t)`` one PPG iteration, given a reference
trajectory ``x*_{0:T-1}``, does:

* ``t = 0``: ``x_0^{1:N-1} ~ M_0``, ``x_0^0 = x*_0``; ``tau_0^i = h_0(x_0^i)``.
* ``t >= 1``: the conditional engine step (``smcscale.smc_step`` on
  :func:`smcscale.csmc.conditional_fk` with conditional multinomial resampling, the
  reference pinned in slot 0, its ancestor redrawn by ancestor sampling if asked), then the
  PaRIS update (:func:`smcscale.smoothing.paris_update`) for *every* slot, the reference
  included:

      tau_t^i = (1/Ñ) sum_k [ tau_{t-1}^{J_{i,k}} + h_t(x_{t-1}^{J_{i,k}}, x_t^i) ],
      J_{i,k} ~ B(. | x_t^i) ∝ W_{t-1}^j m_t(x_t^i | x_{t-1}^j)   (whole population at t-1).

* output: the estimate ``sum_i W_{T-1}^i tau_{T-1}^i`` of ``E[S_T | y_{0:T-1}]`` and a new
  reference drawn from the final system, by backward sampling (default) or by tracing the
  genealogy (:func:`smcscale.csmc.sample_trajectory`).

Why it removes PaRIS's bias. With exact backward draws (``method="exact"`` or
``"reject"``), ``E[sum_i W^i tau^i | particle system] = E[S_T(x') | particle system]`` where
``x'`` is a backward-sampled (FFBS) path of that system (``tau`` is the conditional
expectation of ``S`` along the path obtained by following the PaRIS draws, whose marginal
law is FFBS's). If the reference is distributed as the smoothing law ``π``, the conditional
SMC kernel followed by backward sampling leaves ``π`` invariant (Whiteley 2010), so
``E[S_T(x')] = π(S_T)``: **at stationarity the PPG estimate is unbiased for every N >= 2**.
The only bias left is the burn-in's (the chain starts at a trajectory of an ordinary filter),
which the time average ``(1/(K-k_0)) sum_{k > k_0} estimate_k`` washes out geometrically;
PaRIS alone has an ``O(1/N)`` bias that no amount of repetition removes. How the next
reference is chosen (backward sampling, genealogy, with or without ancestor sampling) does
not affect this argument, only the mixing, which sets how fast the burn-in bias fades: plain
PG with genealogy tracing (``ancestor_sampling=False, trajectory="genealogy"``) hardly moves
the early states of the reference and kept, on the LGSSM of the tests (``N = 20``,
``T = 40``), a bias about half of PaRIS's after 100 iterations; with ancestor sampling or
backward sampling (the defaults) the bias was not detectable. ``method="mh"`` (independent MH started at the
ancestor, as in :func:`smcscale.smoothing.paris`) is available and cheaper for large ``N``
but its draws are exact only in law over the genealogy; ``"exact"`` (``O(N^2)`` per step) is
the default since PPG is meant for small ``N``.

**Markov score climbing** (Naesseth, Lindsten & Blei 2020; PPG-driven as in Cardoso et
al. 2023, §4): the score ``∇_θ log p_θ(y)`` is, by Fisher's identity, the smoothing
expectation of the additive functional ``h_t = ∇_θ l_t(θ; x_{t-1}, x_t)``
(:func:`smcscale.learning.score_additive_fn`). :func:`score_climbing` runs
:func:`smcscale.learning.stochastic_gradient_ascent` with a score function that does one
(or ``num_sweeps``) PPG iteration(s) at ``θ_k`` from the reference left by the previous
iteration — the reference is the ``carry`` — and takes an ``optax`` step along the PPG
estimate. The parameter–reference pair is a Markov chain; with decreasing steps ``θ_k``
converges to a stationary point of the log-likelihood.

References
----------
* G. Cardoso, Y. Janati El Idrissi, S. Le Corff, E. Moulines, J. Olsson (2023). State and
  parameter learning with PaRIS particle Gibbs. ICML 2023, arXiv:2301.00900.
* J. Olsson, J. Westerborn (2017). Efficient particle-based online smoothing in general
  hidden Markov models: the PaRIS algorithm. Bernoulli 23(3), 1951–1996.
* C. Andrieu, A. Doucet, R. Holenstein (2010). Particle Markov chain Monte Carlo. JRSS B.
* F. Lindsten, M. I. Jordan, T. B. Schön (2014). Particle Gibbs with ancestor sampling. JMLR.
* N. Whiteley (2010). Discussion of Andrieu et al. (2010).
* C. A. Naesseth, F. Lindsten, D. Blei (2020). Markovian score climbing. NeurIPS.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from .checks import as_key, has_inputs, num_steps_of, positive_int, slice_inputs
from .csmc import check_reference, csmc_filter, reference_moved, sample_trajectory
from .fk import FeynmanKac
from .learning import (
    SGAResult,
    build_fk,
    check_model_args,
    check_theta,
    complete_data_log_density,
    score_additive_fn,
    stochastic_gradient_ascent,
)
from .smc import SMCConfig, StepHook, run_filter
from .smoothing import (
    as_log_bound,
    check_backward_method,
    paris_hook,
    require_transition_density,
    weighted_sum,
)
from .ssm import bootstrap
from .static import cached_builder

__all__ = ["PPGResult", "TRAJECTORY_METHODS", "ppg", "ppg_sweep", "ppg_score_fn", "score_climbing"]

TRAJECTORY_METHODS = ("backward", "genealogy")

sg = jax.lax.stop_gradient


class PPGResult(NamedTuple):
    """What :func:`ppg` returns (leading axis ``iterations`` unless said otherwise).

    Attributes:
      estimate: the time average of ``estimates`` over iterations ``burn_in, ...`` (pytree
        like ``h``): the PPG estimate of ``E[S_T | y_{0:T-1}]``.
      estimates: leaves ``(iterations, ...)``: ``sum_i W_{T-1}^i tau_{T-1}^i`` of each sweep.
      trajectories: leaves ``(iterations, T, ...)``: the reference drawn at the end of each
        sweep (the next sweep's reference).
      log_z: ``(iterations,)`` ``log Ẑ`` of each conditional sweep (not an unbiased
        estimate of ``Z``: the reference is conditioned on).
      reference_moved: ``(iterations, T)`` bool: did the reference state at ``t`` change.
      num_invalid: ``(iterations,)`` total NaN / ``+inf`` log-potentials of each sweep.
    """

    estimate: Any
    estimates: Any
    trajectories: Any
    log_z: jax.Array
    reference_moved: jax.Array
    num_invalid: jax.Array


class _Options(NamedTuple):
    """Static (hashable) settings of one PPG sweep."""

    num_particles: int
    num_steps: int
    num_backward: int = 2
    method: str = "exact"
    num_mh_steps: int = 1
    log_bound: Any = None
    max_trials: int = 8
    ess_threshold: float = 1.0
    ancestor_sampling: bool = True
    trajectory: str = "backward"


# ---------------------------------------------------------------------------------------
# one sweep


def _first_inputs_init(key, state, inputs_0, *, hook):
    return hook.init(key, state, inputs_0[0])


def _first_inputs_update(key, tr, *, hook):
    return hook.update(key, tr._replace(inputs=tr.inputs[0]))


def _on_model_inputs(hook: StepHook) -> StepHook:
    """``hook`` for a conditional sweep, whose inputs are pairs ``(inputs_t, x*_t)``: the hook
    sees ``inputs_t`` only."""
    return StepHook(
        functools.partial(_first_inputs_init, hook=hook), functools.partial(_first_inputs_update, hook=hook)
    )


def _sweep(key, fk: FeynmanKac, inputs, reference, additive_fn: Callable, opts: _Options):
    """One PPG iteration (pure; callable inside jit / scan / grad with a traced model): a
    conditional SMC sweep (:func:`smcscale.csmc.csmc_filter`) with the PaRIS hook, then a
    new reference drawn from the recorded sweep.

    Returns ``(estimate, log_z, new_reference, num_invalid)``.
    """
    # The reference's statistic is updated like every other particle's: backward draws
    # over the whole population at t - 1 (weights before resampling).
    hook = _on_model_inputs(
        paris_hook(
            fk, additive_fn, num_backward=opts.num_backward, method=opts.method, num_mh_steps=opts.num_mh_steps,
            log_bound=opts.log_bound, max_trials=opts.max_trials,
        )
    )
    k_sweep, k_traj = jax.random.split(key)
    config = SMCConfig(opts.num_particles, opts.ess_threshold, "multinomial")
    record = csmc_filter(
        k_sweep, fk, inputs, reference, config, num_steps=opts.num_steps, ancestor_sampling=opts.ancestor_sampling,
        hook=hook,
    )
    estimate = weighted_sum(record.extra, record.log_weights)
    new_ref, _ = sample_trajectory(
        k_traj, record, fk, inputs if has_inputs(inputs) else None, backward=opts.trajectory == "backward"
    )
    new_ref = jax.tree_util.tree_map(lambda n, r: n.astype(r.dtype), new_ref, reference)
    return estimate, record.log_z, new_ref, jnp.sum(record.num_invalid)


def _initial_reference_impl(key, fk, inputs, num_particles, num_steps, backward):
    """A trajectory of an ordinary (unconditional) filter: the chain's starting point."""
    k_run, k_traj = jax.random.split(key)
    res = run_filter(
        k_run, fk, inputs, SMCConfig(num_particles, 1.0, "multinomial"), num_steps=num_steps,
        record=("ancestors", "log_weights", "particles"),
    )
    has_inputs = inputs is not None and len(jax.tree_util.tree_leaves(inputs)) > 0
    return sample_trajectory(k_traj, res, fk, inputs if has_inputs else None, backward=backward)[0]


_initial_reference = jax.jit(_initial_reference_impl, static_argnames=("fk", "num_particles", "num_steps", "backward"))


# ---------------------------------------------------------------------------------------
# argument checks


def _make_options(fk, inputs, reference, num_particles, *, num_backward, method, num_mh_steps, log_bound, max_trials,
                  ess_threshold, ancestor_sampling, trajectory, what):
    if not isinstance(fk, FeynmanKac):
        raise TypeError(f"fk must be a smcscale.FeynmanKac, got {type(fk).__name__}")
    require_transition_density(fk, f"{what} (PaRIS backward draws{', ancestor sampling' if ancestor_sampling else ''})")
    if fk.log_lookahead is not None:
        raise ValueError(f"{what}: conditional SMC with an auxiliary (log_lookahead) model is not supported")
    log_bound = as_log_bound(log_bound)
    check_backward_method(method, log_bound)
    if trajectory not in TRAJECTORY_METHODS:
        raise ValueError(f"unknown trajectory method {trajectory!r}; choose from {list(TRAJECTORY_METHODS)}")
    if isinstance(num_particles, bool) or not isinstance(num_particles, (int, np.integer)) or num_particles < 2:
        raise ValueError(f"{what} needs num_particles >= 2 (one is the reference), got {num_particles!r}")
    kappa = float(ess_threshold)
    if not 0.0 <= kappa <= 1.0:
        raise ValueError(f"ess_threshold must be in [0, 1], got {kappa}")
    if ancestor_sampling and kappa < 1.0:
        raise ValueError("ancestor sampling requires resampling at every step: use ess_threshold=1.0")
    t_ref = check_reference(inputs, reference, int(num_particles)) if reference is not None else None
    if jax.tree_util.tree_leaves(inputs):
        t = num_steps_of(inputs, None)
    elif t_ref is not None:
        t = t_ref  # a model without inputs: the reference says how many steps
    else:
        raise ValueError(f"{what}: inputs is empty (None): give a reference trajectory to say how many steps to run")
    return _Options(
        num_particles=int(num_particles), num_steps=t, num_backward=positive_int(num_backward, "num_backward"),
        method=method, num_mh_steps=positive_int(num_mh_steps, "num_mh_steps"), log_bound=log_bound,
        max_trials=positive_int(max_trials, "max_trials"), ess_threshold=kappa,
        ancestor_sampling=bool(ancestor_sampling), trajectory=trajectory,
    )


def _conform_reference(fk, inputs, reference, opts: _Options, key):
    """Cast ``reference`` to the particles' dtypes and check its per-step shapes."""
    has_inputs = inputs is not None and len(jax.tree_util.tree_leaves(inputs)) > 0
    u0 = slice_inputs(inputs, 0) if has_inputs else None
    shapes = jax.eval_shape(lambda k: fk.sample_initial(k, opts.num_particles, u0), key)
    if jax.tree_util.tree_structure(shapes) != jax.tree_util.tree_structure(reference):
        raise ValueError(
            "the reference trajectory must have the particles' pytree structure "
            f"({jax.tree_util.tree_structure(shapes)}), got {jax.tree_util.tree_structure(reference)}"
        )

    def conform(s, r):
        r = jnp.asarray(r)
        if r.shape[1:] != s.shape[1:]:
            raise ValueError(
                f"reference leaves must have shape (T, *particle_shape) = ({opts.num_steps}, "
                f"{', '.join(map(str, s.shape[1:]))}), got {r.shape}"
            )
        return r.astype(s.dtype)

    return jax.tree_util.tree_map(conform, shapes, reference)


# ---------------------------------------------------------------------------------------
# public API


def ppg_sweep(
    key,
    fk: FeynmanKac,
    inputs,
    reference,
    num_particles: int,
    additive_fn: Callable,
    *,
    num_backward: int = 2,
    method: str = "exact",
    num_mh_steps: int = 1,
    log_bound=None,
    max_trials: int = 8,
    ancestor_sampling: bool = True,
    ess_threshold: float = 1.0,
    trajectory: str = "backward",
):
    """One PPG iteration from ``reference`` (leaves ``(T, ...)``).

    Returns ``(estimate, log_z, new_reference)``; options as in :func:`ppg`.
    """
    opts = _make_options(
        fk, inputs, reference, num_particles, num_backward=num_backward, method=method, num_mh_steps=num_mh_steps,
        log_bound=log_bound, max_trials=max_trials, ess_threshold=ess_threshold, ancestor_sampling=ancestor_sampling,
        trajectory=trajectory, what="ppg_sweep",
    )
    key = as_key(key)
    reference = _conform_reference(fk, inputs, reference, opts, key)
    est, log_z, new_ref, _ = _sweep_jit(key, inputs, reference, fk=fk, additive_fn=additive_fn, opts=opts)
    return est, log_z, new_ref


_sweep_jit = jax.jit(
    lambda key, inputs, reference, *, fk, additive_fn, opts: _sweep(key, fk, inputs, reference, additive_fn, opts),
    static_argnames=("fk", "additive_fn", "opts"),
)


@functools.partial(jax.jit, static_argnames=("fk", "additive_fn", "opts", "num_iterations", "burn_in"))
def _ppg_jit(key, inputs, reference, *, fk, additive_fn, opts, num_iterations, burn_in):
    def one_iteration(ref, k):
        est, log_z, new_ref, bad = _sweep(k, fk, inputs, ref, additive_fn, opts)
        return new_ref, (est, new_ref, log_z, reference_moved(new_ref, ref), bad)

    _, (ests, trajs, log_z, moved, bad) = jax.lax.scan(one_iteration, reference, jax.random.split(key, num_iterations))
    estimate = jax.tree_util.tree_map(lambda v: jnp.mean(v[burn_in:], axis=0), ests)
    return PPGResult(estimate, ests, trajs, log_z, moved, bad)


def ppg(
    key,
    fk: FeynmanKac,
    inputs,
    num_particles: int,
    num_iterations: int,
    additive_fn: Callable,
    num_backward: int = 2,
    ancestor_sampling: bool = True,
    init_reference=None,
    *,
    burn_in: Optional[int] = None,
    method: str = "exact",
    num_mh_steps: int = 1,
    log_bound=None,
    max_trials: int = 8,
    ess_threshold: float = 1.0,
    trajectory: str = "backward",
) -> PPGResult:
    r"""Parisian particle Gibbs (Cardoso et al. 2023) in one ``lax.scan`` over iterations.

    Each iteration runs conditional SMC with the current reference in slot 0 and the PaRIS
    statistics of ``additive_fn`` updated after every step (module docstring), outputs
    ``sum_i W_{T-1}^i tau_{T-1}^i`` and draws the next reference from the final system.

    Args:
      key: a ``jax.random`` key.
      fk: the model (needs ``transition_log_density``; no ``log_lookahead``).
      inputs: per-step inputs (leading axis ``T``).
      num_particles: ``N >= 2`` (slot 0 is the reference).
      num_iterations: ``K`` PPG iterations.
      additive_fn: ``h`` as ``(x_prev, x, inputs_t) -> pytree`` batched over the leading axis;
        ``x_prev is None`` at ``t = 0`` (as in :func:`smcscale.smoothing.paris`).
      num_backward: ``Ñ`` backward draws per particle and step.
      ancestor_sampling: redraw the reference's ancestor at every step (PGAS); needs
        ``ess_threshold = 1``.
      init_reference: the first reference (leaves ``(T, ...)``); default: a backward-sampled
        (or genealogy-traced, per ``trajectory``) path of an ordinary filter run.
      burn_in: iterations left out of ``estimate`` (default ``K // 5``).
      method: backward draws of PaRIS: ``"exact"`` (default, ``O(N^2)`` per step; exact
        draws make the estimate unbiased at stationarity), ``"reject"`` (exact, needs
        ``log_bound``) or ``"mh"`` (``O(N)``).
      ess_threshold: resample when ``ESS < kappa N`` (``1`` = every step, required by
        ancestor sampling).
      trajectory: how the next reference is drawn from the final system: ``"backward"``
        (backward sampling, default) or ``"genealogy"``.

    Returns:
      :class:`PPGResult`.
    """
    if not callable(additive_fn):
        raise TypeError("additive_fn must be a function (x_prev, x, inputs_t) -> pytree (x_prev is None at t = 0)")
    num_iterations = positive_int(num_iterations, "num_iterations")
    if burn_in is None:
        burn_in = num_iterations // 5
    if isinstance(burn_in, bool) or not isinstance(burn_in, (int, np.integer)) or not 0 <= burn_in < num_iterations:
        raise ValueError(f"burn_in must be an int in [0, {num_iterations - 1}], got {burn_in!r}")
    opts = _make_options(
        fk, inputs, init_reference, num_particles, num_backward=num_backward, method=method, num_mh_steps=num_mh_steps,
        log_bound=log_bound, max_trials=max_trials, ess_threshold=ess_threshold, ancestor_sampling=ancestor_sampling,
        trajectory=trajectory, what="ppg",
    )
    key = as_key(key)
    k_init, k_iter = jax.random.split(key)
    if init_reference is None:
        init_reference = _initial_reference(
            k_init, fk, inputs, num_particles=opts.num_particles, num_steps=opts.num_steps,
            backward=opts.trajectory == "backward",
        )
    init_reference = _conform_reference(fk, inputs, init_reference, opts, k_init)
    return _ppg_jit(
        k_iter, inputs, init_reference, fk=fk, additive_fn=additive_fn, opts=opts,
        num_iterations=num_iterations, burn_in=int(burn_in),
    )


# ---------------------------------------------------------------------------------------
# Markov score climbing


@cached_builder
def ppg_score_fn(
    model_fn: Callable,
    inputs,
    num_particles: int,
    *,
    filter_fn: Callable = bootstrap,
    log_density_fn: Optional[Callable] = None,
    num_sweeps: int = 1,
    num_backward: int = 2,
    method: str = "exact",
    num_mh_steps: int = 1,
    log_bound=None,
    max_trials: int = 8,
    ancestor_sampling: bool = True,
    ess_threshold: float = 1.0,
    trajectory: str = "backward",
    theta_example=None,
) -> Callable:
    r"""A ``score_fn(key, theta, reference) -> (score, log_z, new_reference)`` for
    :func:`smcscale.learning.stochastic_gradient_ascent`: Markov score climbing with PPG.

    The score at ``theta`` is the PPG estimate of Fisher's identity
    ``E_theta[sum_t ∇_theta l_t | y]`` (the additive functional
    :func:`smcscale.learning.score_additive_fn`), averaged over ``num_sweeps`` successive PPG
    sweeps at ``theta``; the reference trajectory is the carry. ``theta_example`` (optional)
    is used to check the model eagerly.
    """
    num_sweeps = positive_int(num_sweeps, "num_sweeps")
    ld = complete_data_log_density(model_fn, log_density_fn)
    if theta_example is not None:
        fk0 = build_fk(model_fn, theta_example, filter_fn)
    else:
        fk0 = None
    if fk0 is not None:
        opts = _make_options(
            fk0, inputs, None, num_particles, num_backward=num_backward, method=method, num_mh_steps=num_mh_steps,
            log_bound=log_bound, max_trials=max_trials, ess_threshold=ess_threshold,
            ancestor_sampling=ancestor_sampling, trajectory=trajectory, what="score_climbing",
        )
    else:
        log_bound = as_log_bound(log_bound)
        check_backward_method(method, log_bound)
        if trajectory not in TRAJECTORY_METHODS:
            raise ValueError(f"unknown trajectory method {trajectory!r}; choose from {list(TRAJECTORY_METHODS)}")
        if isinstance(num_particles, bool) or not isinstance(num_particles, (int, np.integer)) or num_particles < 2:
            raise ValueError(f"score_climbing needs num_particles >= 2 (one is the reference), got {num_particles!r}")
        if ancestor_sampling and float(ess_threshold) < 1.0:
            raise ValueError("ancestor sampling requires resampling at every step: use ess_threshold=1.0")
        opts = _Options(
            int(num_particles), num_steps_of(inputs, None), positive_int(num_backward, "num_backward"), method,
            positive_int(num_mh_steps, "num_mh_steps"), log_bound, positive_int(max_trials, "max_trials"),
            float(ess_threshold), bool(ancestor_sampling), trajectory,
        )

    def score_fn(key, theta, reference):
        fk = build_fk(model_fn, sg(theta), filter_fn)
        h = score_additive_fn(ld, theta)
        if num_sweeps == 1:
            est, log_z, new_ref, _ = _sweep(key, fk, inputs, reference, h, opts)
            return est, log_z, new_ref

        def one(ref, k):
            est, log_z, new_ref, _ = _sweep(k, fk, inputs, ref, h, opts)
            return new_ref, (est, log_z)

        new_ref, (ests, log_zs) = jax.lax.scan(one, reference, jax.random.split(key, num_sweeps))
        return jax.tree_util.tree_map(lambda v: jnp.mean(v, axis=0), ests), jnp.mean(log_zs), new_ref

    return score_fn


def score_climbing(
    key,
    model_fn: Callable,
    theta0,
    inputs,
    num_particles: int,
    num_iterations: int,
    optimizer=None,
    *,
    filter_fn: Callable = bootstrap,
    log_density_fn: Optional[Callable] = None,
    init_reference=None,
    average_from: Optional[int] = None,
    num_sweeps: int = 1,
    num_backward: int = 2,
    method: str = "exact",
    num_mh_steps: int = 1,
    log_bound=None,
    max_trials: int = 8,
    ancestor_sampling: bool = True,
    ess_threshold: float = 1.0,
    trajectory: str = "backward",
) -> SGAResult:
    r"""Maximum likelihood by PPG-driven Markov score climbing (Cardoso et al. 2023).

    ``theta_{k+1} = theta_k + optax_step(score_k)`` where ``score_k`` is the PPG estimate of
    ``∇_theta log p_theta(y)`` (Fisher's identity) from ``num_sweeps`` PPG sweep(s) at
    ``theta_k`` started at the reference left by iteration ``k - 1`` (the carry of
    :func:`smcscale.learning.stochastic_gradient_ascent`). One jitted ``lax.scan``.

    Args:
      key: a ``jax.random`` key (one part seeds the initial reference, one the iterations).
      model_fn: ``theta -> StateSpaceModel`` (or ``-> FeynmanKac`` with ``log_density_fn``),
        as in :func:`smcscale.learning.mle`; use an unconstrained parameterisation.
      theta0: initial parameters (pytree of floats).
      inputs: observations / per-step inputs (leading axis ``T``).
      num_particles: ``N >= 2``.
      num_iterations: ``K`` parameter updates.
      optimizer: an ``optax.GradientTransformation`` (default ``optax.adam(1e-2)``).
      filter_fn: ``StateSpaceModel -> FeynmanKac`` (default :func:`smcscale.bootstrap`).
      init_reference: the first reference; default a path of an ordinary filter at ``theta0``.
      average_from: the Polyak–Ruppert average covers ``theta_{average_from..K}`` (default ``K // 2``).
      num_sweeps, num_backward, method, ..., trajectory: PPG options (:func:`ppg`).

    Returns:
      :class:`smcscale.learning.SGAResult`; ``carry`` is the final reference trajectory.
    """
    check_theta(theta0)
    check_model_args(model_fn, theta0, inputs, num_particles, filter_fn, log_density_fn, ess_threshold, "multinomial")
    fk0 = build_fk(model_fn, theta0, filter_fn)
    opts = _make_options(
        fk0, inputs, init_reference, num_particles, num_backward=num_backward, method=method,
        num_mh_steps=num_mh_steps, log_bound=log_bound, max_trials=max_trials, ess_threshold=ess_threshold,
        ancestor_sampling=ancestor_sampling, trajectory=trajectory, what="score_climbing",
    )
    key = as_key(key)
    k_init, k_iter = jax.random.split(key)
    if init_reference is None:
        init_reference = _initial_reference(
            k_init, fk0, inputs, num_particles=opts.num_particles, num_steps=opts.num_steps,
            backward=opts.trajectory == "backward",
        )
    init_reference = _conform_reference(fk0, inputs, init_reference, opts, k_init)
    score_fn = ppg_score_fn(
        model_fn, inputs, num_particles, filter_fn=filter_fn, log_density_fn=log_density_fn, num_sweeps=num_sweeps,
        num_backward=num_backward, method=method, num_mh_steps=num_mh_steps, log_bound=log_bound,
        max_trials=max_trials, ancestor_sampling=ancestor_sampling, ess_threshold=ess_threshold,
        trajectory=trajectory, theta_example=theta0,
    )
    return stochastic_gradient_ascent(
        k_iter, score_fn, theta0, num_iterations, optimizer=optimizer, carry0=init_reference, average_from=average_from,
    )
