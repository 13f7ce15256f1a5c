r"""The SMC driver: one jitted ``lax.scan`` over time with ESS-adaptive resampling.

Algorithm (Chopin & Papaspiliopoulos 2020, Alg. 10.1, with optional auxiliary weights).
Log-weights ``lw`` are kept normalised (``logsumexp(lw) = 0``) and ``log Z`` accumulates
the increments.

* ``t = 0``:  ``x_0 ~ M_0``;  ``lw = log G_0(x_0)``;  ``log Z_0 = log mean_i exp(lw_i)``.
* ``t >= 1``: resample if ``ESS(W_{t-1}) < kappa N`` (``kappa = 1``: every step; ``0``: never).

  - with auxiliary log-weights ``a_i = lw_i + log eta_t(x^i_{t-1})`` (``eta = 1`` if the
    model has no ``log_lookahead``), draw ancestors ``A ~ resample(a)`` and set the carried
    log-weight of child ``i`` to ``logsumexp(a) - log N - log eta_t(x^{A_i}_{t-1})``;
  - otherwise ``A_i = i`` and the carried log-weight is ``lw_i``.

  Move ``x_t ~ M_t(x^{A}_{t-1}, .)``, add ``log G_t``; the increment
  ``log Z_t - log Z_{t-1}`` is the ``logsumexp`` of the new unnormalised log-weights.

Without resampling the increment is ``log sum_i W_i G_t^i``; right after a resample it is
``log mean_i G_t^i``; both are the usual unbiased estimators of ``Z_t / Z_{t-1}`` (as in
``particles``), so ``Ẑ_T = exp(log Z_T)`` is unbiased for ``Z_T`` for every ``kappa``.

Degenerate cases (documented and tested):

* a log-potential that is NaN or ``+inf`` is invalid: it is counted in
  ``SMCResult.num_invalid`` and treated as ``-inf``; when :func:`run` is called eagerly with
  ``check=True`` (default) it raises ``ValueError`` naming the first offending step;
* if every particle has weight zero at step ``t`` (all log-weights ``-inf``), ``log Z`` is
  ``-inf`` from then on, ESS is 0, resampling keeps each particle in place, and nothing is
  NaN; eagerly with ``check=True`` :func:`run` raises :class:`ParticleCollapseError`.

The per-step function :func:`smc_step` is public so that other kernels (conditional SMC,
text and diffusion samplers) reuse it instead of writing their own loop.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from .checks import as_key, has_inputs, num_steps_of, positive_int, slice_inputs
from .checks import ess_threshold as check_ess_threshold
from .fk import FeynmanKac
from .prng import fast_key
from .resampling import get_resampler
from .static import cached_builder
from .weights import ess as _ess
from .weights import log_normalize, reweight, safe_logsumexp

__all__ = [
    "SMCState",
    "SMCResult",
    "SMCConfig",
    "ParticleCollapseError",
    "ParticleCollapseWarning",
    "StepInfo",
    "StepHook",
    "Transition",
    "FilterScan",
    "init",
    "smc_step",
    "filter_scan",
    "run_filter",
    "run",
    "check_result",
    "record_names",
    "weighted_mean",
    "trace_genealogy",
]

_RECORDABLE = ("ancestors", "particles", "log_weights")


class ParticleCollapseError(RuntimeError):
    """Every particle has weight zero: the estimate of Z is 0 and the filter cannot go on."""


class ParticleCollapseWarning(UserWarning):
    """Every particle has weight zero (a dead population), reported as a warning by samplers
    asked to go on (e.g. the text samplers' ``on_collapse="warn"``)."""


class SMCState(NamedTuple):
    """State of a particle system after the reweighting at some step."""

    particles: Any  # pytree, leading axis N
    log_weights: jax.Array  # (N,), normalised (logsumexp = 0), or all -inf if dead
    log_z: jax.Array  # () running log-normaliser estimate log Ẑ_t


class SMCConfig(NamedTuple):
    """Static settings of the driver (hashable)."""

    num_particles: int
    ess_threshold: float = 0.5
    resampling: Any = "systematic"


class StepInfo(NamedTuple):
    """What one step did: ESS after reweighting, whether it resampled, the ancestors
    (``arange(N)`` when it did not), and the number of invalid (NaN / ``+inf``) log-potentials."""

    ess: jax.Array
    resampled: jax.Array
    ancestors: jax.Array
    num_invalid: jax.Array


class SMCResult(NamedTuple):
    """Everything a run returns. Per-step arrays have leading axis ``T`` (number of steps).

    Attributes:
      particles, log_weights: the final particle system (``log_weights`` normalised).
      log_z: ``log Ẑ_T``, the log of the unbiased estimate of the normalising constant.
      log_z_trace: ``(T,)`` running ``log Ẑ_t``.
      ess: ``(T,)`` ESS of the weights after reweighting at step ``t``.
      resampled: ``(T,)`` bool, whether resampling happened before the move to step ``t``
        (always ``False`` at ``t = 0``).
      num_invalid: ``(T,)`` number of NaN / ``+inf`` log-potentials at step ``t``.
      summaries: dict name -> ``(T, ...)`` values of the on-the-fly summaries.
      ancestors: ``(T, N)`` int32 if recorded (``ancestors[0] = arange(N)``), else ``None``.
      particles_history: pytree with leaves ``(T, N, ...)`` if recorded, else ``None``.
      log_weights_history: ``(T, N)`` if recorded, else ``None``.
      extra: the final extra state of the :class:`StepHook`, if one was given.
    """

    particles: Any
    log_weights: jax.Array
    log_z: jax.Array
    log_z_trace: jax.Array
    ess: jax.Array
    resampled: jax.Array
    num_invalid: jax.Array
    summaries: dict
    ancestors: Optional[jax.Array] = None
    particles_history: Any = None
    log_weights_history: Optional[jax.Array] = None
    extra: Any = None


# ---------------------------------------------------------------------------------------
# helpers


@cached_builder
def weighted_mean(fn: Optional[Callable] = None):
    """Summary ``sum_i W_i f(x_i)`` (``f`` = identity by default), for ``run(summaries=...)``.

    ``f`` maps the particle pytree to an array with leading axis ``N``. Equal calls return
    the same summary (so ``run`` does not recompile; pass the same ``fn`` object).
    """

    def summary(particles, log_weights):
        vals = particles if fn is None else fn(particles)
        w = jnp.exp(log_weights)

        def one(v):
            v = jnp.asarray(v)
            return jnp.tensordot(w.astype(v.dtype) if jnp.issubdtype(v.dtype, jnp.floating) else w, v, axes=(0, 0))

        return jax.tree_util.tree_map(one, vals)

    return summary


def _ess_of_normalized(lw):
    """ESS of log-weights already normalised (logsumexp = 0): ``1 / sum W^2``; 0 if dead."""
    s = jnp.sum(jnp.exp(2.0 * lw))
    return jnp.where(s > 0, 1.0 / jnp.where(s > 0, s, 1.0), 0.0)


def _gather(tree, idx):
    return jax.tree_util.tree_map(lambda leaf: jnp.take(leaf, idx, axis=0), tree)


def _clean_log_potential(lg, num_particles):
    lg = jnp.asarray(lg)
    invalid = jnp.isnan(lg) | jnp.isposinf(lg)
    return jnp.where(invalid, -jnp.inf, lg), jnp.sum(invalid).astype(jnp.int32)


def _replicate(x, sharding):
    """Weights and log-potentials (N floats) live replicated on every device of the mesh:
    the reductions over particles (logsumexp, ESS) and the resampler then run in the
    single-device order, so a sharded run equals an unsharded one (same ancestors and
    particles; tests/test_sharding.py). A no-op without a mesh."""
    if sharding is None:
        return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(sharding.mesh, PartitionSpec()))


def _shard(tree, sharding):
    if sharding is None:
        return tree
    return jax.tree_util.tree_map(lambda leaf: jax.lax.with_sharding_constraint(leaf, sharding), tree)


def _check_particles(x, num_particles, what, like=None):
    """Particles must be a pytree of arrays with leading axis ``N`` (and, after a move, the
    same shapes and structure as before)."""
    leaves = jax.tree_util.tree_leaves(x)
    if not leaves:
        raise ValueError(f"{what} returned no particles (an empty pytree)")
    for leaf in leaves:
        shape = jnp.shape(leaf)
        if len(shape) < 1 or shape[0] != num_particles:
            raise ValueError(
                f"{what} must return particles whose leaves have leading axis {num_particles} "
                f"(one row per particle), got a leaf of shape {shape}"
            )
    if like is not None:
        got = jax.tree_util.tree_map(jnp.shape, x)
        want = jax.tree_util.tree_map(jnp.shape, like)
        if jax.tree_util.tree_structure(x) != jax.tree_util.tree_structure(like) or got != want:
            raise ValueError(f"{what} must return particles shaped like its input x_prev {want}, got {got}")


def _check_log_potential_shape(lg, num_particles, where):
    shape = getattr(lg, "shape", None)
    if shape != (num_particles,):
        raise ValueError(
            f"log_potential at {where} must return shape ({num_particles},) (one value per particle), "
            f"got {shape}"
        )


# ---------------------------------------------------------------------------------------
# the kernel


def init(key, fk: FeynmanKac, inputs_0, config: SMCConfig, sharding=None):
    """Draw ``x_0 ~ M_0`` and weight by ``G_0``; return ``(SMCState, StepInfo)``."""
    n = config.num_particles
    x = fk.sample_initial(key, n, inputs_0)
    _check_particles(x, n, "sample_initial")
    x = _shard(x, sharding)
    lg = fk.log_potential(None, x, inputs_0)
    _check_log_potential_shape(lg, n, "t = 0")
    lg, n_bad = _clean_log_potential(lg, n)
    lg = _replicate(lg, sharding)
    lse = safe_logsumexp(lg)
    log_z = lse - jnp.log(n)
    lw = log_normalize(lg)
    info = StepInfo(_ess(lw), jnp.array(False), jnp.arange(n, dtype=jnp.int32), n_bad)
    return SMCState(x, lw, log_z), info


def smc_step(
    key,
    fk: FeynmanKac,
    state: SMCState,
    inputs_t,
    config: SMCConfig,
    sharding=None,
    resample_fn: Optional[Callable] = None,
    ancestor_fn: Optional[Callable] = None,
):
    """One SMC step ``t >= 1``: adaptive (auxiliary) resampling, move, reweight.

    ``resample_fn(key, log_weights, num_samples) -> ancestors`` overrides the configured
    scheme (conditional SMC passes a resampler that pins the reference trajectory).
    ``ancestor_fn(key, x_prev, log_weights, inputs_t, ancestors) -> ancestors`` post-processes
    the ancestors drawn at a resampling step (ancestor sampling of the reference in PGAS).
    ``key`` is one key (split here) or an array of three keys ``(resample, move, ancestor)``:
    the driver splits all steps' keys in one vectorised call before its scan, which saves
    two key splits per step (on CPU each is a small loop, a sizeable cost at small N).
    Returns ``(new_state, StepInfo)``.
    """
    n = config.num_particles
    typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    if key.shape == ((3,) if typed else (3, 2)):
        k_res, k_move, k_anc = key[0], key[1], key[2]
    else:
        k_res, k_move = jax.random.split(key)
        k_res, k_anc = jax.random.split(k_res)
    resample = resample_fn if resample_fn is not None else get_resampler(config.resampling)
    lw = state.log_weights
    x_prev = state.particles

    if fk.log_lookahead is not None:
        log_eta = jnp.asarray(fk.log_lookahead(x_prev, inputs_t))
        log_eta = jnp.where(jnp.isnan(log_eta), -jnp.inf, log_eta)
        log_eta = _replicate(log_eta, sharding)
    else:
        log_eta = None

    kappa = float(config.ess_threshold)
    if kappa >= 1.0:
        do_resample = jnp.array(True)
    elif kappa <= 0.0:
        do_resample = jnp.array(False)
    else:
        do_resample = _ess_of_normalized(lw) < kappa * n

    def with_resampling(_):
        aux = lw if log_eta is None else lw + log_eta
        # A dead population keeps its particles (the resamplers' documented behaviour);
        # the cond also stops XLA:CPU from fusing the resampler's cumulative sums into the
        # gather and move that follow (measured: ~30% of a step at N = 1e5).
        # without look-ahead the population is alive iff log Z is finite (no extra pass)
        alive = jnp.isfinite(state.log_z) if log_eta is None else jnp.max(aux) > -jnp.inf
        anc = jax.lax.cond(
            alive,
            lambda: resample(k_res, aux, n).astype(jnp.int32),
            lambda: jnp.arange(n, dtype=jnp.int32),
        )
        if ancestor_fn is not None:
            anc = ancestor_fn(k_anc, x_prev, lw, inputs_t, anc).astype(jnp.int32)
        # lw is normalised, so without look-ahead the total is exactly 1 (log 0)
        # (a dead population, all -inf, stays dead)
        total = safe_logsumexp(aux) if log_eta is not None else jnp.where(jnp.max(lw) > -jnp.inf, 0.0, -jnp.inf)
        base = total - jnp.log(n)
        carried = jnp.full((n,), 0.0, lw.dtype) + base
        if log_eta is not None:
            carried = carried - log_eta[anc]
        return anc.astype(jnp.int32), carried

    def without(_):
        return jnp.arange(n, dtype=jnp.int32), lw

    if kappa >= 1.0:
        anc, carried = with_resampling(None)
    elif kappa <= 0.0:
        anc, carried = without(None)
    else:
        anc, carried = jax.lax.cond(do_resample, with_resampling, without, None)

    x_prev_res = _shard(_gather(x_prev, anc), sharding)
    x = fk.sample_transition(k_move, x_prev_res, inputs_t)
    _check_particles(x, n, "sample_transition", like=x_prev)
    x = _shard(x, sharding)
    lg = fk.log_potential(x_prev_res, x, inputs_t)
    _check_log_potential_shape(lg, n, "t >= 1")
    lg, n_bad = _clean_log_potential(lg, n)
    lg = _replicate(lg, sharding)
    lw_new, inc = reweight(carried, lg)
    lw_new = _replicate(lw_new, sharding)
    dead_before = jnp.isneginf(state.log_z)
    log_z = jnp.where(dead_before, -jnp.inf, state.log_z + inc)
    info = StepInfo(_ess_of_normalized(lw_new), do_resample, anc, n_bad)
    return SMCState(x, lw_new, log_z), info


# ---------------------------------------------------------------------------------------
# the driver


class Transition(NamedTuple):
    """What one step of the driver did, as a :class:`StepHook` sees it (step ``t >= 1``).

    Attributes:
      previous: the :class:`SMCState` at ``t - 1`` (before resampling).
      previous_extra: the hook's extra state at ``t - 1``, aligned with ``previous.particles``.
      state: the :class:`SMCState` at ``t`` (after resampling, move and reweighting).
      extra: ``previous_extra`` resampled with the particles (every leaf gathered by
        ``info.ancestors``), aligned with ``state.particles``.
      info: the step's :class:`StepInfo` (ESS, resampling flag, ancestors, invalid count).
      inputs: ``inputs_t``.
    """

    previous: SMCState
    previous_extra: Any
    state: SMCState
    extra: Any
    info: StepInfo
    inputs: Any


class StepHook(NamedTuple):
    """Extra state carried along a filter, and a function called after every step.

    ``init(key, state, inputs_0) -> extra`` builds the extra state at ``t = 0`` from the
    weighted initial population; per-particle leaves have leading axis ``N``.
    ``update(key, transition) -> (state, extra)`` runs after each step ``t >= 1`` with the
    :class:`Transition`; the driver has already resampled the extra state with the particles
    (``transition.extra``), so a statistic that follows the genealogy is just
    ``transition.extra + increment``; one that needs the population at ``t - 1`` (PaRIS's
    backward draws) reads ``transition.previous`` and ``transition.previous_extra``.
    ``update`` returns the state unchanged (``transition.state``) unless the hook corrects
    the weights or ``log Z`` (e.g. the stop-gradient score estimator of
    :mod:`smcscale.learning`). The hook's keys are independent of the filter's, so adding a
    hook leaves the filter's draws unchanged.

    Users: :func:`smcscale.smoothing.paris_hook` (PaRIS), :mod:`smcscale.ppg`,
    :mod:`smcscale.learning`.
    """

    init: Callable
    update: Callable


class FilterScan(NamedTuple):
    """What :func:`filter_scan` returns: the final state, the hook's final extra state, and
    ``trace``, the per-step ``outputs`` stacked along a leading time axis ``T``."""

    state: SMCState
    extra: Any
    trace: Any


def _no_outputs(state, extra, info):
    return ()


def _step_keys(key, num_steps):
    """Keys for steps ``1..T-1``, already split into (resample, move, ancestor): one
    vectorised split instead of two small splits inside every step of the scan."""
    return jax.random.split(key, (num_steps - 1, 3))


def _stack_first(first, rest):
    return jax.tree_util.tree_map(lambda a, b: jnp.concatenate([jnp.asarray(a)[None], b], axis=0), first, rest)


def filter_scan(
    key,
    fk: FeynmanKac,
    inputs,
    config: SMCConfig,
    *,
    num_steps: int,
    outputs: Optional[Callable] = None,
    hook: Optional[StepHook] = None,
    sharding=None,
    resample_fn: Optional[Callable] = None,
    ancestor_fn: Optional[Callable] = None,
) -> FilterScan:
    r"""The engine's one loop: :func:`init`, then :func:`smc_step` for ``t = 1..T-1`` in a
    ``lax.scan``, with an optional :class:`StepHook` and per-step ``outputs``.

    Pure and not jitted: call it inside ``jax.jit`` / ``vmap`` / ``grad`` (with a traced
    model if you like). :func:`run` is this function jitted plus argument checks; particle
    Gibbs, PaRIS, Parisian PG and the score estimators are this function with a hook.

    Args:
      key: a ``jax.random`` key (same key, same draws).
      fk, inputs, config: the model, per-step inputs (leading axis ``T``, or ``None``) and
        the static settings (:class:`SMCConfig`).
      num_steps: ``T`` (a Python int).
      outputs: ``(state, extra, info) -> pytree`` recorded after every step (``t = 0``
        included) and stacked along a leading axis ``T`` in ``FilterScan.trace``.
      hook: a :class:`StepHook` (extra state + a function after every step).
      sharding, resample_fn, ancestor_fn: as in :func:`smc_step`.

    Returns:
      :class:`FilterScan` ``(state, extra, trace)``.
    """
    outputs = _no_outputs if outputs is None else outputs
    with_inputs = has_inputs(inputs)
    # bit-identical Threefry with the rounds unrolled (see smcscale.prng): faster model moves
    k0, k_rest = jax.random.split(fast_key(key))
    inputs_0 = slice_inputs(inputs, 0) if with_inputs else None
    state, info = init(k0, fk, inputs_0, config, sharding)
    hook_keys = None
    extra = None
    if hook is not None:
        hook_keys = jax.random.split(jax.random.fold_in(k_rest, 1), num_steps)
        extra = hook.init(hook_keys[0], state, inputs_0)
    first = outputs(state, extra, info)
    if num_steps == 1:
        return FilterScan(state, extra, jax.tree_util.tree_map(lambda v: jnp.asarray(v)[None], first))

    xs = (
        _step_keys(k_rest, num_steps),
        None if hook_keys is None else hook_keys[1:],
        jax.tree_util.tree_map(lambda leaf: leaf[1:], inputs) if with_inputs else None,
    )

    def body(carry, xs_t):
        state, extra = carry
        k, k_hook, inputs_t = xs_t
        new, info = smc_step(k, fk, state, inputs_t, config, sharding, resample_fn, ancestor_fn)
        if hook is not None:
            moved = _gather(extra, info.ancestors)
            new, extra = hook.update(k_hook, Transition(state, extra, new, moved, info, inputs_t))
        return (new, extra), outputs(new, extra, info)

    (state, extra), rest = jax.lax.scan(body, (state, extra), xs)
    return FilterScan(state, extra, _stack_first(first, rest))


def run_filter(
    key,
    fk: FeynmanKac,
    inputs,
    config: SMCConfig,
    *,
    num_steps: int,
    summaries: Sequence = (),
    record: Sequence[str] = (),
    hook: Optional[StepHook] = None,
    sharding=None,
    resample_fn: Optional[Callable] = None,
    ancestor_fn: Optional[Callable] = None,
) -> SMCResult:
    """:func:`filter_scan` with the standard outputs, as an :class:`SMCResult`: what
    :func:`run` computes, without its checks and without ``jit`` (so that conditional SMC
    and other kernels run it inside their own jitted loops). ``summaries`` is a sequence of
    ``(name, fn)`` pairs; ``record`` a tuple of names from ``("ancestors", "particles",
    "log_weights")``."""
    summaries = tuple(summaries.items()) if isinstance(summaries, Mapping) else tuple(summaries)

    def standard_outputs(state, extra, info):
        out = {
            "ess": info.ess,
            "resampled": info.resampled,
            "log_z": state.log_z,
            "num_invalid": info.num_invalid,
            "summaries": {name: fn(state.particles, state.log_weights) for name, fn in summaries},
        }
        if "ancestors" in record:
            out["ancestors"] = info.ancestors
        if "particles" in record:
            out["particles"] = state.particles
        if "log_weights" in record:
            out["log_weights"] = state.log_weights
        return out

    scan = filter_scan(
        key, fk, inputs, config, num_steps=num_steps, outputs=standard_outputs, hook=hook, sharding=sharding,
        resample_fn=resample_fn, ancestor_fn=ancestor_fn,
    )
    stacked = scan.trace
    return SMCResult(
        particles=scan.state.particles,
        log_weights=scan.state.log_weights,
        log_z=scan.state.log_z,
        log_z_trace=stacked["log_z"],
        ess=stacked["ess"],
        resampled=stacked["resampled"],
        num_invalid=stacked["num_invalid"],
        summaries=stacked["summaries"],
        ancestors=stacked.get("ancestors"),
        particles_history=stacked.get("particles"),
        log_weights_history=stacked.get("log_weights"),
        extra=scan.extra,
    )


_run_jit = jax.jit(
    run_filter,
    static_argnames=("fk", "config", "num_steps", "summaries", "record", "hook", "sharding", "resample_fn", "ancestor_fn"),
)


def record_names(record) -> tuple:
    """``record`` as a sorted tuple of valid names (a single string is one name)."""
    if isinstance(record, str):
        record = (record,)
    try:
        record = tuple(sorted(set(record)))
    except TypeError:
        raise TypeError(f"record must be a name or a sequence of names from {list(_RECORDABLE)}, got {record!r}") from None
    unknown = [r for r in record if r not in _RECORDABLE]
    if unknown:
        raise ValueError(f"unknown record option(s) {unknown}; choose from {list(_RECORDABLE)}")
    return record


def run(
    key,
    fk: FeynmanKac,
    inputs,
    num_particles: int,
    *,
    num_steps: Optional[int] = None,
    ess_threshold: float = 0.5,
    resampling="systematic",
    summaries: Optional[Mapping[str, Callable]] = None,
    record: Sequence[str] = (),
    hook: Optional[StepHook] = None,
    mesh=None,
    particle_axis: str = "particles",
    check: bool = True,
) -> SMCResult:
    """Run a particle filter on the Feynman–Kac model ``fk`` over ``T`` steps.

    Compiled once per distinct ``(fk, summaries, hook, num_particles, T, ...)``: ``fk``,
    the summaries and the hook are static arguments of ``jax.jit``, compared with ``==``.
    The builders of smcscale (:func:`~smcscale.ssm.bootstrap`, :func:`weighted_mean`, ...)
    return the identical object for equal arguments (:mod:`smcscale.static`), so calling
    ``run(key, bootstrap(ssm), ...)`` in a loop compiles once. Keep your own ``fk``:
    a new lambda on every call is a new model and compiles again.

    Args:
      key: a ``jax.random`` key; the same key gives the same result.
      fk: the :class:`~smcscale.fk.FeynmanKac` model.
      inputs: pytree whose leaves have a leading time axis ``T`` (observations, covariates);
        ``inputs_t`` is passed to the model at step ``t``. ``None`` if the model needs none
        (then give ``num_steps``).
      num_particles: ``N`` (a Python int).
      ess_threshold: ``kappa``; resample when ``ESS < kappa N``. ``1`` = every step, ``0`` = never.
      resampling: a scheme name from :data:`smcscale.resampling.RESAMPLERS` or a function
        ``(key, log_weights, num_samples) -> ancestors``.
      summaries: ``{name: f(particles, log_weights) -> pytree}`` computed after each
        reweighting (``log_weights`` normalised), e.g. :func:`weighted_mean`.
      record: any of ``"ancestors"``, ``"particles"``, ``"log_weights"`` (one name or a
        sequence) to keep per step (memory ``O(T N)``); ancestors give the genealogy
        (:func:`trace_genealogy`).
      hook: a :class:`StepHook`: per-particle extra state carried and resampled with the
        particles and updated after each step; its final value is ``SMCResult.extra``.
      mesh: a ``jax.sharding.Mesh``; when given, the particle axis of every particle leaf and
        of the weights is sharded over the mesh axis ``particle_axis``. Resampling uses the
        global weights (XLA inserts the collectives), so the algorithm is unchanged.
      check: when called eagerly, raise on invalid log-potentials (``ValueError``) and on
        total weight collapse (:class:`ParticleCollapseError`). Under ``jit``/``vmap`` the
        flags are returned in the result instead (``num_invalid``, ``log_z = -inf``).

    Returns:
      :class:`SMCResult`.
    """
    num_particles = positive_int(num_particles, "num_particles")
    if not isinstance(fk, FeynmanKac):
        raise TypeError(f"fk must be a smcscale.FeynmanKac, got {type(fk).__name__}")
    kappa = check_ess_threshold(ess_threshold)
    get_resampler(resampling)  # raises on unknown names
    record = record_names(record)
    summaries = dict(summaries or {})
    for name, fn in summaries.items():
        if not callable(fn):
            raise TypeError(f"summary {name!r} must be a function (particles, log_weights) -> value")
    if hook is not None and not isinstance(hook, StepHook):
        raise TypeError(f"hook must be a smcscale.StepHook(init, update), got {type(hook).__name__}")
    t = num_steps_of(inputs, num_steps)
    key = as_key(key)

    sharding = None
    if mesh is not None:
        if particle_axis not in mesh.axis_names:
            raise ValueError(f"mesh has axes {mesh.axis_names}, no particle axis {particle_axis!r}")
        size = mesh.shape[particle_axis]
        if num_particles % size:
            raise ValueError(
                f"num_particles={num_particles} must be divisible by the {size} devices of mesh axis {particle_axis!r}"
            )
        sharding = NamedSharding(mesh, PartitionSpec(particle_axis))

    config = SMCConfig(num_particles, kappa, resampling)
    result = _run_jit(
        key,
        fk,
        inputs,
        config,
        num_steps=t,
        summaries=tuple(summaries.items()),
        record=record,
        hook=hook,
        sharding=sharding,
    )
    if check:
        check_result(result, num_particles)
    return result


def check_result(result, n: int) -> None:
    """Raise on what a filter result says went wrong (used by every eager entry point).

    ``result`` has ``num_invalid`` ``(T,)`` and ``log_z_trace`` ``(T,)`` (an
    :class:`SMCResult` or alike). Does nothing on traced or batched (vmapped) results.

    Raises:
      ValueError: a log-potential was NaN or ``+inf`` (names the first step).
      ParticleCollapseError: every particle had weight zero at some step.
    """
    if isinstance(result.log_z_trace, jax.core.Tracer):
        return
    bad = np.asarray(result.num_invalid)
    if bad.ndim == 1 and bad.any():
        t = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"log_potential returned NaN or +inf for {int(bad[t])} of {n} particles at step {t} "
            "(a log-potential must be a number or -inf); fix the model or pass check=False to treat them as -inf"
        )
    lz = np.asarray(result.log_z_trace)
    if lz.ndim == 1 and np.isneginf(lz).any():
        t = int(np.flatnonzero(np.isneginf(lz))[0])
        raise ParticleCollapseError(
            f"all {n} particles have zero weight (log-weight -inf) at step {t}: log Z = -inf. "
            "Use more particles or a better proposal, check the potentials, or pass check=False "
            "to get the result with log_z = -inf."
        )


def trace_genealogy(ancestors):
    """Trace the lineages of the final particles back in time.

    Args:
      ancestors: ``(T, N)`` recorded ancestors (``run(..., record=["ancestors"])``), where
        ``ancestors[t][i]`` is the index at ``t - 1`` of the parent of particle ``i`` at ``t``.

    Returns:
      ``(T, N)`` int32 array ``B`` with ``B[T-1] = arange(N)`` and
      ``B[t] = ancestors[t + 1][B[t + 1]]``: ``B[t, i]`` is the index at time ``t`` of the
      ancestor of final particle ``i``. The number of distinct values in ``B[t]`` is the
      number of surviving lineages at ``t`` (path degeneracy).
    """
    ancestors = jnp.asarray(ancestors)
    if ancestors.ndim != 2:
        raise ValueError(f"ancestors must have shape (T, N), got {ancestors.shape}")
    n = ancestors.shape[1]

    def body(idx, a_next):
        prev = a_next[idx]
        return prev, prev

    last = jnp.arange(n, dtype=jnp.int32)
    _, back = jax.lax.scan(body, last, ancestors[1:], reverse=True)
    return jnp.concatenate([back, last[None]], axis=0)
