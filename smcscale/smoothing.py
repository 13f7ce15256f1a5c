r"""Particle smoothing on the engine: backward sampling (FFBS) and PaRIS.

Both algorithms read what a particle filter run by :func:`smcscale.run` (or by the kernel
pieces :func:`smcscale.init` / :func:`smcscale.smc_step`) produces, and the model's
``transition_log_density``; neither has its own forward loop.

The backward kernel
-------------------
Write ``W_t^j`` for the normalised *filtering* weights after the reweighting at step ``t``
and ``m_{t+1}(x' | x)`` for ``exp(fk.transition_log_density(x, x', inputs_{t+1}))``. Given
a particle ``x_{t+1}`` the backward kernel is the law on indices ``j in {0..N-1}``

    B_t(j | x_{t+1})  ∝  W_t^j  m_{t+1}(x_{t+1} | x_t^j),                              (1)

the particle approximation of ``p(x_t | x_{t+1}, y_{0:t})``. (1) is right whenever the FK
target is a state-space smoothing problem whose Markov kernel has density
``transition_log_density`` and whose potential depends on ``x_{t-1}`` only through the
proposal correction (``bootstrap``, ``guided`` and ``auxiliary`` all set
``transition_log_density`` to the *model* transition ``f``, not to the proposal, so (1)
holds for them). The auxiliary look-ahead never enters (1): ``W_t`` are the filtering
weights.

:func:`backward_indices` draws from (1) in three ways:

* ``"exact"`` — compute all ``N`` terms of (1) and draw from them: ``O(N)`` per draw.
* ``"mh"`` — independent Metropolis–Hastings (Dau & Chopin 2022, §3): start at a given
  index (the genealogical ancestor of the particle, which is itself a valid backward draw
  in the sense of Dau & Chopin's framework), propose ``j' ~ W_t`` (iid multinomial
  proposals; systematic ones would bias), accept with probability
  ``min(1, m(x_{t+1} | x_t^{j'}) / m(x_{t+1} | x_t^{j}))``, which leaves (1) invariant.
  ``O(1)`` per draw and per MH step.
* ``"reject"`` — hybrid rejection sampling (Douc et al. 2011; the hybrid form of Dau &
  Chopin 2022): propose ``j' ~ W_t``, accept with probability
  ``m(x_{t+1} | x_t^{j'}) / exp(log_bound)`` where ``log_bound`` bounds
  ``log m_{t+1}`` from above; rows still rejected after ``max_trials`` rounds (default 8)
  are drawn exactly, 64 rows at a time (``O(64 N)`` per pass). Exact draws from (1). Each
  round proposes for every row at once (vectorised), so the cost is ``O(rows)`` per round
  and the number of rounds is set by the slowest row; on CPU ``"mh"`` is ~10x faster.

FFBS (Godsill, Doucet & West 2004)
----------------------------------
:func:`backward_sample` draws ``M`` trajectories from the particle approximation of the
joint smoothing distribution ``p(x_{0:T-1} | y_{0:T-1})``: ``J_{T-1} ~ W_{T-1}``, then for
``t = T-2, ..., 0``: ``J_t ~ B_t(. | x_{t+1}^{J_{t+1}})``. One ``lax.scan`` backwards in
time, vectorised over trajectories. Cost ``O(T M N)`` (``"exact"``) or
``O(T M K)`` (``"mh"`` with ``K`` steps, ``"reject"``).

PaRIS (Olsson & Westerborn 2017)
--------------------------------
For an additive functional ``S_T = sum_{t=0}^{T-1} h_t(x_{t-1}, x_t)`` (``h_0(x_0)``),
PaRIS carries one statistic ``tau_t^i`` per particle, an estimate of
``E[S_t | x_t = x_t^i, y_{0:t-1}]``:

    tau_0^i = h_0(x_0^i),
    tau_t^i = (1 / Ñ) sum_{k=1}^{Ñ} [ tau_{t-1}^{J_{i,k}} + h_t(x_{t-1}^{J_{i,k}}, x_t^i) ],
              J_{i,k} ~ B_{t-1}(. | x_t^i)   (conditionally independent given the particles)

and ``E[S_t | y_{0:t}] ≈ sum_i W_t^i tau_t^i``. Cost ``O(N Ñ)`` per step with ``"mh"`` /
``"reject"`` draws; ``Ñ = 2`` is the usual choice (``Ñ = 1`` degenerates like the
genealogy). The update needs the *whole* previous population and its weights (not only
the resampled ancestors), so PaRIS is the engine's driver (:func:`smcscale.filter_scan`)
with a :class:`smcscale.StepHook`, :func:`paris_hook`: ``smcscale.smc_step`` moves the
particles, then :func:`paris_update` updates ``tau`` from ``(x_{t-1}, W_{t-1}, tau_{t-1})``
and the new ``x_t``. With ``"mh"`` each of the ``Ñ``
draws is its own MH chain started at the particle's ancestor (Dau & Chopin 2022).

:func:`paris_update` is the piece Parisian particle Gibbs (Cardoso, Janati El Idrissi,
Le Corff, Moulines & Olsson 2023) needs: it runs after any step that produced ``x_t`` from
``(x_{t-1}, W_{t-1})``, including a conditional SMC step.

References
----------
* S. J. Godsill, A. Doucet, M. West (2004). Monte Carlo smoothing for nonlinear time series.
  JASA 99(465), 156–168.
* R. Douc, A. Garivier, E. Moulines, J. Olsson (2011). Sequential Monte Carlo smoothing for
  general state space hidden Markov models. Ann. Appl. Probab. 21(6), 2109–2145.
* J. Olsson, J. Westerborn (2017). Efficient particle-based online smoothing in general
  hidden Markov models: the PaRIS algorithm. Bernoulli 23(3), 1951–1996.
* H.-D. Dau, N. Chopin (2022). On backward smoothing algorithms. arXiv:2207.00976
  (Ann. Statist. 2023).
* G. Cardoso, Y. Janati El Idrissi, S. Le Corff, E. Moulines, J. Olsson (2023). State and
  parameter learning with PaRIS particle Gibbs. arXiv:2301.00900.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from .fk import FeynmanKac
from .resampling import get_resampler, multinomial
from .checks import as_key, ess_threshold as check_ess_threshold, num_steps_of, positive_int, slice_inputs
from .smc import SMCConfig, SMCResult, SMCState, StepHook, check_result, filter_scan, init, smc_step
from .static import cached_builder

__all__ = [
    "BACKWARD_METHODS",
    "FilterHistory",
    "BackwardSamples",
    "PaRISResult",
    "history_from_result",
    "backward_indices",
    "backward_step",
    "backward_sample",
    "paris_update",
    "paris_hook",
    "paris_filter",
    "paris",
    "weighted_sum",
    "require_transition_density",
    "as_log_bound",
    "check_backward_method",
]

BACKWARD_METHODS = ("exact", "mh", "reject")
_FALLBACK_CHUNK = 64  # rows per exact-fallback pass of the rejection sampler


class FilterHistory(NamedTuple):
    """What backward sampling needs from a forward pass (leading axis ``T`` = steps).

    Attributes:
      particles: pytree with leaves ``(T, N, ...)``.
      log_weights: ``(T, N)`` normalised filtering log-weights (after reweighting at ``t``).
      ancestors: ``(T, N)`` int ancestors (``ancestors[t][i]`` indexes step ``t - 1``);
        needed by ``method="mh"`` (the MH chains start at the genealogical ancestor).
    """

    particles: Any
    log_weights: jax.Array
    ancestors: Optional[jax.Array] = None


class BackwardSamples(NamedTuple):
    """Trajectories drawn by :func:`backward_sample`.

    Attributes:
      trajectories: pytree with leaves ``(T, M, ...)``: ``trajectories[t][m]`` is ``x_t`` of
        trajectory ``m``.
      indices: ``(T, M)`` int32 particle indices: ``trajectories[t][m] = particles[t][indices[t, m]]``.
    """

    trajectories: Any
    indices: jax.Array


class PaRISResult(NamedTuple):
    """What :func:`paris` returns.

    Attributes:
      estimate: ``sum_i W_{T-1}^i tau_{T-1}^i`` ≈ ``E[S_T | y_{0:T-1}]`` (pytree like ``h``).
      log_z: ``log Ẑ_T`` of the forward filter.
      estimates: leaves ``(T, ...)``: the online estimates ``E[S_t | y_{0:t}]`` for every ``t``.
      log_z_trace, ess, resampled: ``(T,)`` as in :class:`smcscale.SMCResult`.
      particles, log_weights, tau: the final particle system and statistics.
      num_invalid: ``(T,)`` number of NaN / ``+inf`` log-potentials per step.
    """

    estimate: Any
    log_z: jax.Array
    estimates: Any
    log_z_trace: jax.Array
    ess: jax.Array
    resampled: jax.Array
    particles: Any
    log_weights: jax.Array
    tau: Any
    num_invalid: jax.Array


# ---------------------------------------------------------------------------------------
# helpers


def _take(tree, idx):
    return jax.tree_util.tree_map(lambda leaf: jnp.take(leaf, idx, axis=0), tree)


def _expand(tree, axis):
    return jax.tree_util.tree_map(lambda leaf: jnp.expand_dims(leaf, axis), tree)


def _tile(tree, reps):
    return jax.tree_util.tree_map(lambda leaf: jnp.tile(leaf, (reps,) + (1,) * (jnp.ndim(leaf) - 1)), tree)


def _leading(tree):
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves:
        raise ValueError("particles must be a pytree with at least one array leaf")
    sizes = {jnp.shape(leaf)[0] if jnp.ndim(leaf) > 0 else None for leaf in leaves}
    if None in sizes or len(sizes) != 1:
        raise ValueError(f"every particle leaf must share one leading particle axis, got leading sizes {sorted(map(str, sizes))}")
    return sizes.pop()


def require_transition_density(fk, what):
    """Raise unless ``fk`` is a :class:`FeynmanKac` with ``transition_log_density`` (``what`` names the caller)."""
    if not isinstance(fk, FeynmanKac):
        raise TypeError(f"fk must be a smcscale.FeynmanKac, got {type(fk).__name__}")
    if fk.transition_log_density is None:
        raise ValueError(
            f"{what} needs the model's transition density, but fk.transition_log_density is None. "
            "bootstrap/guided/auxiliary models provide it; for a hand-written FeynmanKac pass "
            "transition_log_density=lambda x_prev, x, inputs_t: log m_t(x | x_prev) (it must broadcast "
            "over leading axes)."
        )


def as_log_bound(log_bound):
    """``log_bound`` as a hashable static value: ``None``, a Python float or a function."""
    if log_bound is None or callable(log_bound):
        return log_bound
    try:
        return float(log_bound)
    except (TypeError, ValueError):
        raise TypeError(f"log_bound must be a number or a function inputs_t -> number, got {log_bound!r}") from None


def check_backward_method(method, log_bound):
    """Raise unless ``method`` is in :data:`BACKWARD_METHODS` (``"reject"`` needs ``log_bound``)."""
    if method not in BACKWARD_METHODS:
        raise ValueError(f"unknown backward method {method!r}; choose from {list(BACKWARD_METHODS)}")
    if method == "reject" and log_bound is None:
        raise ValueError(
            "method='reject' needs log_bound: an upper bound of log m_t(x | x_prev) over both arguments "
            "(a number, or a function inputs_t -> number)"
        )


def _log_density(fk, x_prev, x, inputs_t):
    ld = jnp.asarray(fk.transition_log_density(x_prev, x, inputs_t))
    return jnp.where(jnp.isnan(ld), -jnp.inf, ld)


def _bound(log_bound, inputs_t):
    if callable(log_bound):
        return jnp.asarray(log_bound(inputs_t))
    return jnp.asarray(log_bound)


def _categorical_rows(key, logits, num_draws):
    """``(M, num_draws)`` draws, row ``i`` from ``softmax(logits[i])``, by inverse CDF.

    One cumulative sum per row and one uniform per draw (a Gumbel-max draw would need
    ``M N num_draws`` random numbers). Zero-weight entries are never chosen.
    """
    m, n = logits.shape
    mx = jnp.max(logits, axis=1, keepdims=True)
    p = jnp.exp(logits - jnp.where(jnp.isfinite(mx), mx, 0.0))
    c = jnp.cumsum(p, axis=1)
    u = jax.random.uniform(key, (m, num_draws), dtype=c.dtype) * c[:, -1:]
    idx = jax.vmap(lambda ci, ui: jnp.searchsorted(ci, ui, side="right"))(c, u)
    # Guard the float edge u == total: step back to the last positive entry.
    last = n - 1 - jnp.argmax((p > 0)[:, ::-1], axis=1)
    return jnp.minimum(idx, last[:, None]).astype(jnp.int32)


def _exact_logits(fk, x_prev, log_weights_prev, x, inputs_t):
    n = log_weights_prev.shape[0]
    m = _leading(x)
    ld = _log_density(fk, _expand(x_prev, 0), _expand(x, 1), inputs_t)
    logits = log_weights_prev[None, :] + jnp.broadcast_to(ld, (m, n))
    # A row where every term is zero (x impossible from every ancestor) falls back to W_t.
    dead = jnp.all(jnp.isneginf(logits), axis=1, keepdims=True)
    return jnp.where(dead, log_weights_prev[None, :], logits)


def _exact_draws(key, fk, x_prev, log_weights_prev, x, inputs_t, num_draws):
    """``(M, num_draws)`` exact draws from (1): builds the ``M x N`` matrix of log-densities."""
    logits = _exact_logits(fk, x_prev, log_weights_prev, x, inputs_t)
    return _categorical_rows(key, logits, num_draws)


def _mh_draws(key, fk, x_prev, log_weights_prev, x, inputs_t, num_draws, start, num_mh_steps):
    """``(M, num_draws)``: ``num_draws`` independent MH chains per row, each started at ``start``."""
    m = _leading(x)
    rows = m * num_draws
    x_rep = _tile(x, num_draws)  # row r = d * M + i holds x^i
    k_start, k_steps = jax.random.split(key)
    if start is None:
        cur = multinomial(k_start, log_weights_prev, rows)
    else:
        cur = jnp.tile(jnp.asarray(start, jnp.int32), num_draws)
    cur_ld = _log_density(fk, _take(x_prev, cur), x_rep, inputs_t)

    def body(carry, k):
        cur, cur_ld = carry
        k_prop, k_u = jax.random.split(k)
        prop = multinomial(k_prop, log_weights_prev, rows)
        prop_ld = _log_density(fk, _take(x_prev, prop), x_rep, inputs_t)
        log_u = jnp.log(jax.random.uniform(k_u, (rows,), dtype=prop_ld.dtype))
        accept = log_u < prop_ld - cur_ld  # NaN (both -inf) -> reject
        return (jnp.where(accept, prop, cur), jnp.where(accept, prop_ld, cur_ld)), None

    (cur, _), _ = jax.lax.scan(body, (cur, cur_ld), jax.random.split(k_steps, num_mh_steps))
    return cur.reshape(num_draws, m).T.astype(jnp.int32)


def _reject_draws(key, fk, x_prev, log_weights_prev, x, inputs_t, num_draws, log_bound, max_trials):
    """``(M, num_draws)`` exact draws from (1) by hybrid rejection sampling."""
    m = _leading(x)
    rows = m * num_draws
    x_rep = _tile(x, num_draws)
    bound = _bound(log_bound, inputs_t)
    k_loop, k_exact = jax.random.split(key)

    def cond(carry):
        _, _, done, trials = carry
        return jnp.logical_and(jnp.logical_not(jnp.all(done)), trials < max_trials)

    def body(carry):
        k, idx, done, trials = carry
        k, k_prop, k_u = jax.random.split(k, 3)
        prop = multinomial(k_prop, log_weights_prev, rows)
        ld = _log_density(fk, _take(x_prev, prop), x_rep, inputs_t)
        log_u = jnp.log(jax.random.uniform(k_u, (rows,), dtype=ld.dtype))
        ok = jnp.logical_and(jnp.logical_not(done), log_u < ld - bound)
        return k, jnp.where(ok, prop, idx), jnp.logical_or(done, ok), trials + 1

    init_carry = (k_loop, jnp.zeros((rows,), jnp.int32), jnp.zeros((rows,), bool), jnp.array(0, jnp.int32))
    _, idx, done, _ = jax.lax.while_loop(cond, body, init_carry)

    # Exact fallback for the rows still rejected, ``chunk`` rows at a time (O(chunk N) each),
    # so that a few hard rows do not cost a full O(rows N) pass.
    chunk = min(rows, _FALLBACK_CHUNK)

    def fb_cond(carry):
        _, _, done = carry
        return jnp.logical_not(jnp.all(done))

    def fb_body(carry):
        k, idx, done = carry
        k, k_draw = jax.random.split(k)
        (sel,) = jnp.nonzero(jnp.logical_not(done), size=chunk, fill_value=rows)
        valid = sel < rows
        safe = jnp.where(valid, sel, 0)
        logits = _exact_logits(fk, x_prev, log_weights_prev, _take(x_rep, safe), inputs_t)
        new = _categorical_rows(k_draw, logits, 1)[:, 0]
        idx = idx.at[sel].set(new, mode="drop")
        done = done.at[sel].set(True, mode="drop")
        return k, idx, done

    _, idx, _ = jax.lax.while_loop(fb_cond, fb_body, (k_exact, idx, done))
    return idx.reshape(num_draws, m).T.astype(jnp.int32)


# ---------------------------------------------------------------------------------------
# backward kernels


def backward_indices(
    key,
    fk: FeynmanKac,
    x_prev,
    log_weights_prev,
    x,
    inputs_t,
    num_draws: int = 1,
    *,
    method: str = "exact",
    start=None,
    num_mh_steps: int = 1,
    log_bound=None,
    max_trials: int = 8,
):
    r"""Draw backward indices for a batch of particles: ``J_{i,k} ~ B(. | x^i)`` of (1).

    ``B(j | x^i) ∝ W^j m_t(x^i | x_prev^j)`` with ``W = exp(log_weights_prev)`` (normalised
    filtering weights at ``t - 1``) and ``m_t = exp(fk.transition_log_density(., ., inputs_t))``.

    Args:
      key: a ``jax.random`` key.
      fk: a :class:`~smcscale.fk.FeynmanKac` with ``transition_log_density``.
      x_prev: the population at ``t - 1``, pytree with leaves ``(N, ...)``.
      log_weights_prev: ``(N,)`` normalised filtering log-weights at ``t - 1``.
      x: the ``M`` particles at ``t`` to draw backward indices for, leaves ``(M, ...)``.
      inputs_t: the step-``t`` inputs (those of the transition into ``x``).
      num_draws: draws per particle (``Ñ`` in PaRIS).
      method: ``"exact"``, ``"mh"`` or ``"reject"`` (see the module docstring).
      start: ``(M,)`` starting indices of the MH chains (``"mh"``); the genealogical
        ancestors of ``x`` make every MH iterate a valid backward draw (Dau & Chopin 2022).
        ``None``: start from a draw from ``W`` (then the chain is only approximately
        distributed as (1) after ``num_mh_steps`` steps).
      num_mh_steps: MH steps per draw (``"mh"``).
      log_bound: ``"reject"`` only: a number or a function ``inputs_t -> number`` bounding
        ``log m_t(x | x_prev)`` from above.
      max_trials: ``"reject"``: proposals per row before the exact fallback.

    Returns:
      ``(M, num_draws)`` int32 indices into ``x_prev``.
    """
    require_transition_density(fk, "backward sampling")
    check_backward_method(method, log_bound)
    num_draws = positive_int(num_draws, "num_draws")
    log_weights_prev = jnp.asarray(log_weights_prev)
    if log_weights_prev.ndim != 1:
        raise ValueError(f"log_weights_prev must have shape (N,), got {log_weights_prev.shape}")
    n = _leading(x_prev)
    if n != log_weights_prev.shape[0]:
        raise ValueError(f"x_prev has {n} particles but log_weights_prev has {log_weights_prev.shape[0]}")
    if method == "exact":
        return _exact_draws(key, fk, x_prev, log_weights_prev, x, inputs_t, num_draws)
    if method == "mh":
        num_mh_steps = positive_int(num_mh_steps, "num_mh_steps")
        if start is not None and jnp.shape(start) != (_leading(x),):
            raise ValueError(f"start must have shape ({_leading(x)},) (one index per particle), got {jnp.shape(start)}")
        return _mh_draws(key, fk, x_prev, log_weights_prev, x, inputs_t, num_draws, start, num_mh_steps)
    max_trials = positive_int(max_trials, "max_trials")
    return _reject_draws(key, fk, x_prev, log_weights_prev, x, inputs_t, num_draws, log_bound, max_trials)


def backward_step(
    key,
    fk: FeynmanKac,
    x_next,
    particles_t,
    log_weights_t,
    inputs_next,
    *,
    method: str = "exact",
    start_index=None,
    num_mh_steps: int = 1,
    log_bound=None,
    max_trials: int = 8,
):
    r"""One backward-sampling step for a single trajectory (conditional SMC, PGAS, FFBS).

    Draws ``J ~ B_t(j | x_{t+1}) ∝ W_t^j m_{t+1}(x_{t+1} | x_t^j)`` for **one** particle
    ``x_{t+1}``. In particle Gibbs with backward sampling (Whiteley 2010; Lindsten & Schön
    2013) it picks the index at ``t`` of the new reference trajectory; in PGAS (Lindsten,
    Jordan & Schön 2014) the same law (with ``x_{t+1}`` the reference particle and ``W_t``
    the weights at ``t``) is the ancestor-sampling step.

    Args:
      key: a ``jax.random`` key.
      fk: the model (needs ``transition_log_density``).
      x_next: one particle at ``t + 1``: a pytree with leaves *without* the particle axis.
      particles_t, log_weights_t: the population at ``t`` (leaves ``(N, ...)``) and its
        normalised filtering log-weights ``(N,)``.
      inputs_next: the inputs of step ``t + 1``.
      method: ``"exact"`` (O(N)), ``"mh"`` (O(num_mh_steps); give ``start_index``, e.g. the
        genealogical ancestor) or ``"reject"`` (needs ``log_bound``).

    Returns:
      a scalar int32 index into ``particles_t``.
    """
    x = _expand(x_next, 0)
    start = None if start_index is None else jnp.reshape(jnp.asarray(start_index, jnp.int32), (1,))
    idx = backward_indices(
        key, fk, particles_t, log_weights_t, x, inputs_next, 1,
        method=method, start=start, num_mh_steps=num_mh_steps, log_bound=log_bound, max_trials=max_trials,
    )
    return idx[0, 0]


# ---------------------------------------------------------------------------------------
# FFBS


def history_from_result(result) -> FilterHistory:
    """A :class:`FilterHistory` from an :class:`~smcscale.SMCResult` run with
    ``record=["particles", "log_weights"]`` (and ``"ancestors"`` for ``method="mh"``)."""
    if isinstance(result, FilterHistory):
        return result
    if not isinstance(result, SMCResult):
        raise TypeError(f"expected an SMCResult or a FilterHistory, got {type(result).__name__}")
    missing = [name for name, v in (("particles", result.particles_history), ("log_weights", result.log_weights_history)) if v is None]
    if missing:
        raise ValueError(
            f"the filter history lacks {missing}: run the filter with "
            "smcscale.run(..., record=['particles', 'log_weights', 'ancestors'])"
        )
    return FilterHistory(result.particles_history, result.log_weights_history, result.ancestors)


def _check_history(history: FilterHistory, inputs, method):
    lw = jnp.asarray(history.log_weights)
    if lw.ndim != 2:
        raise ValueError(f"log_weights history must have shape (T, N), got {lw.shape}")
    t, n = lw.shape
    for leaf in jax.tree_util.tree_leaves(history.particles):
        if jnp.ndim(leaf) < 2 or jnp.shape(leaf)[:2] != (t, n):
            raise ValueError(
                f"particles history leaves must have shape (T, N, ...) = ({t}, {n}, ...) to match the "
                f"log-weights history, got {jnp.shape(leaf)}"
            )
    if method == "mh":
        if history.ancestors is None:
            raise ValueError(
                "method='mh' starts each backward chain at the genealogical ancestor: run the filter with "
                "record=['particles', 'log_weights', 'ancestors']"
            )
        if jnp.shape(history.ancestors) != (t, n):
            raise ValueError(f"ancestors history must have shape ({t}, {n}), got {jnp.shape(history.ancestors)}")
    leaves = jax.tree_util.tree_leaves(inputs)
    if leaves:
        steps = num_steps_of(inputs, None)
        if steps != t:
            raise ValueError(f"inputs have {steps} time steps but the filter history has {t}")
    return t, n


@functools.partial(
    jax.jit,
    static_argnames=("fk", "num_trajectories", "method", "num_mh_steps", "log_bound", "max_trials"),
)
def _backward_sample_jit(key, particles, log_weights, ancestors, inputs, *, fk, num_trajectories, method, num_mh_steps, log_bound, max_trials):
    t_len = log_weights.shape[0]
    has_inputs = bool(jax.tree_util.tree_leaves(inputs))
    k_last, k_rest = jax.random.split(key)
    idx_last = multinomial(k_last, log_weights[-1], num_trajectories)
    x_last = _take(slice_inputs(particles, t_len - 1), idx_last)
    if t_len == 1:
        return BackwardSamples(_expand(x_last, 0), idx_last[None])

    xs = (
        jax.random.split(k_rest, t_len - 1),
        jax.tree_util.tree_map(lambda leaf: leaf[:-1], particles),
        log_weights[:-1],
        None if ancestors is None else ancestors[1:],
        jax.tree_util.tree_map(lambda leaf: leaf[1:], inputs) if has_inputs else None,
    )

    def body(carry, xs_t):
        idx_next, x_next = carry
        k, x_t, lw_t, anc_next, u_next = xs_t
        start = None if anc_next is None else anc_next[idx_next]
        idx = backward_indices(
            k, fk, x_t, lw_t, x_next, u_next, 1,
            method=method, start=start, num_mh_steps=num_mh_steps, log_bound=log_bound, max_trials=max_trials,
        )[:, 0]
        x_new = _take(x_t, idx)
        return (idx, x_new), (idx, x_new)

    _, (idx_hist, x_hist) = jax.lax.scan(body, (idx_last, x_last), xs, reverse=True)
    indices = jnp.concatenate([idx_hist, idx_last[None]], axis=0)
    trajectories = jax.tree_util.tree_map(lambda h, last: jnp.concatenate([h, last[None]], axis=0), x_hist, x_last)
    return BackwardSamples(trajectories, indices.astype(jnp.int32))


def backward_sample(
    key,
    fk: FeynmanKac,
    result_or_history,
    inputs,
    num_trajectories: int,
    *,
    method: str = "exact",
    num_mh_steps: int = 1,
    log_bound=None,
    max_trials: int = 8,
) -> BackwardSamples:
    r"""Forward filtering–backward sampling (FFBS; Godsill, Doucet & West 2004).

    Draws ``M = num_trajectories`` trajectories from the particle approximation of
    ``p(x_{0:T-1} | y_{0:T-1})`` built from a recorded filter: ``J_{T-1} ~ W_{T-1}``, then
    ``J_t ~ B_t(. | x_{t+1}^{J_{t+1}})`` (module docstring, eq. (1)) for ``t = T-2..0``.

    Args:
      key: a ``jax.random`` key.
      fk: the model the filter ran (needs ``transition_log_density``).
      result_or_history: an :class:`~smcscale.SMCResult` from
        ``run(..., record=["particles", "log_weights", "ancestors"])`` (``"ancestors"`` only
        for ``method="mh"``), or a :class:`FilterHistory`.
      inputs: the same per-step inputs the filter ran on (``None`` if none).
      num_trajectories: ``M``.
      method: ``"exact"`` (``O(N)`` per trajectory and step, ``O(MN)`` memory per step),
        ``"mh"`` (independent MH from ``W_t`` started at the genealogical ancestor,
        ``num_mh_steps`` steps; ``O(1)``), ``"reject"`` (hybrid rejection, needs
        ``log_bound``, exact).

    Returns:
      :class:`BackwardSamples` (leaves ``(T, M, ...)``).
    """
    require_transition_density(fk, "backward_sample")
    log_bound = as_log_bound(log_bound)
    check_backward_method(method, log_bound)
    num_trajectories = positive_int(num_trajectories, "num_trajectories")
    num_mh_steps = positive_int(num_mh_steps, "num_mh_steps")
    max_trials = positive_int(max_trials, "max_trials")
    history = history_from_result(result_or_history)
    _check_history(history, inputs, method)
    ancestors = history.ancestors if method == "mh" else None
    return _backward_sample_jit(
        as_key(key), history.particles, jnp.asarray(history.log_weights), ancestors, inputs,
        fk=fk, num_trajectories=num_trajectories, method=method, num_mh_steps=num_mh_steps,
        log_bound=log_bound, max_trials=max_trials,
    )


# ---------------------------------------------------------------------------------------
# PaRIS


def _check_tau(tau, n, where):
    for leaf in jax.tree_util.tree_leaves(tau):
        if jnp.ndim(leaf) < 1 or jnp.shape(leaf)[0] != n:
            raise ValueError(
                f"additive_fn at {where} must return a pytree whose leaves have leading axis {n} "
                f"(one value per particle), got a leaf of shape {jnp.shape(leaf)}"
            )


def _float_tree(tree):
    return jax.tree_util.tree_map(
        lambda v: jnp.asarray(v) if jnp.issubdtype(jnp.asarray(v).dtype, jnp.inexact) else jnp.asarray(v, jnp.float32), tree
    )


def paris_update(
    key,
    fk: FeynmanKac,
    x_prev,
    log_weights_prev,
    tau_prev,
    x,
    inputs_t,
    additive_fn: Callable,
    *,
    ancestors=None,
    num_backward: int = 2,
    method: str = "mh",
    num_mh_steps: int = 1,
    log_bound=None,
    max_trials: int = 8,
):
    r"""The PaRIS statistic update (Olsson & Westerborn 2017, Alg. 2):

        tau_t^i = (1/Ñ) sum_k [ tau_{t-1}^{J_{i,k}} + h_t(x_{t-1}^{J_{i,k}}, x_t^i) ],
        J_{i,k} ~ B(. | x_t^i) ∝ W_{t-1}^j m_t(x_t^i | x_{t-1}^j).

    Args:
      x_prev, log_weights_prev, tau_prev: the population at ``t - 1`` *before* resampling,
        its normalised filtering log-weights and statistics (leaves ``(N, ...)``).
      x: the new particles at ``t`` (leaves ``(N', ...)``; ``N' = N`` in a filter).
      inputs_t: step-``t`` inputs.
      additive_fn: ``h_t`` as ``(x_prev, x, inputs_t) -> pytree`` batched over the leading
        axis (called with ``Ñ N'`` pairs; ``x_prev is None`` at ``t = 0``).
      ancestors: ``(N',)`` ancestors of ``x`` (``StepInfo.ancestors``); start of the MH chains.
      num_backward: ``Ñ``.
      method: ``"mh"`` (default), ``"reject"`` (needs ``log_bound``) or ``"exact"`` (O(N²)).

    Returns:
      the new statistics ``tau_t`` (leaves ``(N', ...)``).
    """
    num_backward = positive_int(num_backward, "num_backward")
    m = _leading(x)
    draws = backward_indices(
        key, fk, x_prev, log_weights_prev, x, inputs_t, num_backward,
        method=method, start=ancestors, num_mh_steps=num_mh_steps, log_bound=log_bound, max_trials=max_trials,
    )  # (M, Ñ)
    flat = draws.T.reshape(-1)  # draw-major: row d * M + i
    h = _float_tree(additive_fn(_take(x_prev, flat), _tile(x, num_backward), inputs_t))
    _check_tau(h, m * num_backward, "t >= 1")

    def combine(tp, hh):
        s = jnp.take(tp, flat, axis=0) + hh
        return jnp.mean(s.reshape((num_backward, m) + s.shape[1:]), axis=0)

    return jax.tree_util.tree_map(combine, tau_prev, h)


def weighted_sum(tree, log_weights):
    """``sum_i W_i tree_i`` for every leaf (``log_weights`` normalised)."""
    w = jnp.exp(log_weights)
    return jax.tree_util.tree_map(lambda v: jnp.tensordot(w.astype(v.dtype), v, axes=(0, 0)), tree)


def _paris_init(key, state, inputs_0, *, additive_fn):
    try:
        h0 = additive_fn(None, state.particles, inputs_0)
    except (TypeError, AttributeError) as err:
        raise TypeError(
            "additive_fn(x_prev, x, inputs_t) is called with x_prev=None at t = 0, where it must return "
            f"h_0(x_0) (e.g. `if x_prev is None: return ...`); it raised {type(err).__name__}: {err}"
        ) from err
    tau = _float_tree(h0)
    _check_tau(tau, _leading(state.particles), "t = 0")
    return tau


def _paris_hook_update(key, tr, *, fk, additive_fn, options):
    tau = paris_update(
        key, fk, tr.previous.particles, tr.previous.log_weights, tr.previous_extra, tr.state.particles, tr.inputs,
        additive_fn, ancestors=tr.info.ancestors, **dict(options),
    )
    return tr.state, tau


@cached_builder
def paris_hook(
    fk: FeynmanKac,
    additive_fn: Callable,
    *,
    num_backward: int = 2,
    method: str = "mh",
    num_mh_steps: int = 1,
    log_bound=None,
    max_trials: int = 8,
) -> StepHook:
    r"""PaRIS as a :class:`smcscale.StepHook`: the extra state is ``tau_t`` (one statistic per
    particle), ``tau_0 = h_0(x_0)``, updated after each step by :func:`paris_update` from the
    population at ``t - 1`` (before resampling). Give it to :func:`smcscale.run` (``hook=``,
    the final ``tau`` is ``result.extra``) or :func:`smcscale.filter_scan`; the smoothed
    estimate at ``t`` is ``weighted_sum(tau_t, log_weights_t)``. Equal arguments give the
    same hook (no recompilation)."""
    options = (
        ("num_backward", positive_int(num_backward, "num_backward")),
        ("method", method),
        ("num_mh_steps", positive_int(num_mh_steps, "num_mh_steps")),
        ("log_bound", as_log_bound(log_bound)),
        ("max_trials", positive_int(max_trials, "max_trials")),
    )
    check_backward_method(method, options[3][1])
    return StepHook(
        functools.partial(_paris_init, additive_fn=additive_fn),
        functools.partial(_paris_hook_update, fk=fk, additive_fn=additive_fn, options=options),
    )


def paris_filter(key, fk, inputs, config: SMCConfig, *, num_steps: int, additive_fn: Callable, **paris_options) -> PaRISResult:
    """PaRIS as a pure function (not jitted: callable inside an outer jit/grad/vmap with a
    traced model): :func:`smcscale.filter_scan` with :func:`paris_hook`. Options as in :func:`paris`."""
    hook = paris_hook(fk, additive_fn, **paris_options)

    def outputs(state, tau, info):
        return {
            "estimate": weighted_sum(tau, state.log_weights),
            "log_z": state.log_z,
            "ess": info.ess,
            "resampled": info.resampled,
            "num_invalid": info.num_invalid,
        }

    scan = filter_scan(key, fk, inputs, config, num_steps=num_steps, outputs=outputs, hook=hook)
    stacked = scan.trace
    return PaRISResult(
        estimate=jax.tree_util.tree_map(lambda v: v[-1], stacked["estimate"]),
        log_z=scan.state.log_z,
        estimates=stacked["estimate"],
        log_z_trace=stacked["log_z"],
        ess=stacked["ess"],
        resampled=stacked["resampled"],
        particles=scan.state.particles,
        log_weights=scan.state.log_weights,
        tau=scan.extra,
        num_invalid=stacked["num_invalid"],
    )


_paris_jit = jax.jit(
    paris_filter,
    static_argnames=("fk", "config", "num_steps", "additive_fn", "num_backward", "method", "num_mh_steps", "log_bound", "max_trials"),
)


def paris(
    key,
    fk: FeynmanKac,
    inputs,
    num_particles: int,
    additive_fn: Callable,
    *,
    num_backward: int = 2,
    method: str = "mh",
    num_mh_steps: int = 1,
    log_bound=None,
    max_trials: int = 8,
    num_steps: Optional[int] = None,
    ess_threshold: float = 0.5,
    resampling="systematic",
    check: bool = True,
) -> PaRISResult:
    r"""PaRIS online smoothing of an additive functional (Olsson & Westerborn 2017).

    Estimates ``E[S_T | y_{0:T-1}]`` for ``S_T = sum_{t=0}^{T-1} h_t(x_{t-1}, x_t)`` at cost
    ``O(N Ñ)`` per step, running the engine's filter (``smcscale.init`` /
    ``smcscale.smc_step``, same resampling and ``log Z`` as :func:`smcscale.run`) with the
    statistics ``tau`` updated by :func:`paris_update` after each step.

    Args:
      key: a ``jax.random`` key.
      fk: the model (needs ``transition_log_density``).
      inputs: per-step inputs (leading axis ``T``), ``None`` with ``num_steps``.
      num_particles: ``N``.
      additive_fn: ``h`` as ``(x_prev, x, inputs_t) -> pytree``, batched over the leading
        axis; ``x_prev is None`` at ``t = 0`` (then it returns ``h_0(x_0)``). Its leaves are
        summed over time, so they must keep their shapes across steps.
      num_backward: ``Ñ`` backward draws per particle (2 by default).
      method: backward draws: ``"mh"`` (default; ``num_mh_steps`` independent-MH steps from
        the ancestor), ``"reject"`` (hybrid rejection with ``log_bound``), ``"exact"``.
      ess_threshold, resampling: as in :func:`smcscale.run`.
      check: raise eagerly on invalid log-potentials / total collapse, as :func:`smcscale.run`.

    Returns:
      :class:`PaRISResult` (``estimate``, ``log_z``, online ``estimates``, ...).
    """
    require_transition_density(fk, "paris")
    log_bound = as_log_bound(log_bound)
    check_backward_method(method, log_bound)
    if not callable(additive_fn):
        raise TypeError("additive_fn must be a function (x_prev, x, inputs_t) -> pytree (x_prev is None at t = 0)")
    num_particles = positive_int(num_particles, "num_particles")
    num_backward = positive_int(num_backward, "num_backward")
    num_mh_steps = positive_int(num_mh_steps, "num_mh_steps")
    max_trials = positive_int(max_trials, "max_trials")
    kappa = check_ess_threshold(ess_threshold)
    get_resampler(resampling)
    t = num_steps_of(inputs, num_steps)
    config = SMCConfig(num_particles, kappa, resampling)
    result = _paris_jit(
        as_key(key), fk, inputs, config, num_steps=t, additive_fn=additive_fn,
        num_backward=num_backward, method=method, num_mh_steps=num_mh_steps, log_bound=log_bound, max_trials=max_trials,
    )
    if check:
        check_result(result, num_particles)
    return result
