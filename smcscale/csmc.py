r"""Conditional SMC and particle Gibbs, on the core engine.

**Conditional SMC** (Andrieu, Doucet & Holenstein 2010) runs the particle filter of a
Feynman–Kac model with one particle, slot 0, pinned to a *reference trajectory*
``x*_{0:T-1}``: at every step slot 0 is set to ``x*_t`` instead of being sampled, and its
ancestor is slot 0 of the previous step. The other ``N - 1`` particles are drawn as usual;
the kernel that draws a new trajectory from the final particle system (a particle ``k``
with probability ``W_{T-1}^k``, traced back through the genealogy) leaves the smoothing
distribution ``Q_{T-1}`` invariant, for any ``N >= 2``.

* **Resampling.** The reference is kept through resampling by drawing the ``N`` ancestors
  multinomially and then fixing slot 0's ancestor: the other slots stay iid from ``W``,
  which is exactly conditional multinomial resampling. Schemes whose slots are not
  exchangeable (systematic, stratified, residual, SSP, killing) need their own conditional
  versions; they are rejected with a clear error rather than silently used. With
  ``ess_threshold < 1`` a step without resampling keeps every ancestor in place, the
  reference included, which is consistent; ancestor sampling requires resampling at every
  step (``ess_threshold = 1``).
* **Ancestor sampling** (PGAS, Lindsten, Jordan & Schön 2014): at each resampling step the
  reference's ancestor is redrawn with probability
  ``∝ W_{t-1}^i m_t(x*_t | x^i_{t-1})`` (needs ``fk.transition_log_density``), which lets the
  reference lineage change and makes the chain mix far better at small ``N``. This is the
  full-conditional form for models where ``G_t`` depends on ``x_t`` only (state-space
  models); with potentials that also depend on ``x_{t-1}`` the factor
  ``G_t(x^i_{t-1}, x*_t)`` is included too.
* **Backward sampling** (Whiteley 2010; Lindsten & Schön 2013): the new trajectory is drawn
  backwards, ``x_{t} ∝ W_t^i m_{t+1}(x_{t+1} | x^i_t)``, instead of by tracing the genealogy.

**Particle Gibbs** iterates: CSMC with the current reference -> new reference, in one
``lax.scan`` over iterations, with an optional Gibbs update of parameters ``θ``
(``fk`` may then be a function ``θ -> FeynmanKac``).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from .checks import as_key, num_steps_of, positive_int
from .fk import FeynmanKac
from .resampling import multinomial
from .smc import SMCConfig, SMCResult, StepHook, run_filter, trace_genealogy
from .static import cached_builder

__all__ = [
    "conditional_fk",
    "conditional_multinomial",
    "ancestor_sampler",
    "check_reference",
    "csmc",
    "csmc_filter",
    "sample_trajectory",
    "particle_gibbs",
    "PGResult",
    "reference_moved",
    "CONDITIONAL_SCHEMES",
]

CONDITIONAL_SCHEMES = ("multinomial",)


def _set_slot0(tree, ref):
    return jax.tree_util.tree_map(lambda leaf, r: leaf.at[0].set(r), tree, ref)


def _expand0(tree):
    return jax.tree_util.tree_map(lambda r: jnp.asarray(r)[None], tree)


@cached_builder
def conditional_fk(fk: FeynmanKac) -> FeynmanKac:
    """The FK model whose inputs are ``(inputs_t, x*_t)`` and whose slot 0 is pinned to ``x*_t``."""
    if fk.log_lookahead is not None:
        raise ValueError("conditional SMC with an auxiliary (log_lookahead) model is not supported")

    def sample_initial(key, n, inp):
        u, ref = inp
        return _set_slot0(fk.sample_initial(key, n, u), ref)

    def sample_transition(key, x_prev, inp):
        u, ref = inp
        return _set_slot0(fk.sample_transition(key, x_prev, u), ref)

    def log_potential(x_prev, x, inp):
        return fk.log_potential(x_prev, x, inp[0])

    tld = None
    if fk.transition_log_density is not None:

        def tld(x_prev, x, inp):
            return fk.transition_log_density(x_prev, x, inp[0])

    return FeynmanKac(sample_initial, sample_transition, log_potential, tld)


def conditional_multinomial(key, log_weights, num_samples):
    """Multinomial resampling that keeps the reference: ``A_0 = 0``, ``A_i ~ W`` for ``i > 0``."""
    return multinomial(key, log_weights, num_samples).at[0].set(0)


@cached_builder
def ancestor_sampler(fk: FeynmanKac):
    r"""The ancestor-sampling step of PGAS (Lindsten, Jordan & Schön 2014), as an
    ``ancestor_fn`` for :func:`smcscale.smc.smc_step`: the reference's ancestor is redrawn,
    ``A_0 ~ W_{t-1}^j m_t(x^*_t | x_{t-1}^j)``."""
    if fk.transition_log_density is None:
        raise ValueError("ancestor sampling needs fk.transition_log_density (log m_t(x_t | x_{t-1}))")

    def ancestor_fn(key, x_prev, log_weights, inp, ancestors):
        u, ref = inp
        logits = log_weights + fk.transition_log_density(x_prev, _expand0(ref), u)
        logits = jnp.where(jnp.isnan(logits), -jnp.inf, logits)
        a0 = jax.random.categorical(key, logits)
        return ancestors.at[0].set(a0.astype(jnp.int32))

    return ancestor_fn


def _index_tree(tree, t, idx):
    return jax.tree_util.tree_map(lambda leaf: leaf[t, idx], tree)


def sample_trajectory(key, result: SMCResult, fk: Optional[FeynmanKac] = None, inputs=None, backward: bool = False):
    """Draw one trajectory from a recorded run.

    Genealogy tracing (default): pick final particle ``k ~ W_{T-1}`` and follow its
    ancestors. ``backward=True``: backward sampling with ``fk.transition_log_density``,
    ``x_t = x_t^i`` with ``i ∝ W_t^i m_{t+1}(x_{t+1} | x_t^i)``.
    Returns ``(trajectory pytree with leading axis T, indices [T])``.
    """
    if result.particles_history is None or result.log_weights_history is None:
        raise ValueError("sample_trajectory needs run(..., record=['particles', 'log_weights', 'ancestors'])")
    hist, lw = result.particles_history, result.log_weights_history
    T = lw.shape[0]
    k_last, k_back = jax.random.split(key)
    last = jax.random.categorical(k_last, lw[-1]).astype(jnp.int32)
    if not backward:
        if result.ancestors is None:
            raise ValueError("genealogy tracing needs run(..., record=['ancestors'])")
        lineages = trace_genealogy(result.ancestors)  # [T, N]
        idx = lineages[:, last]
    else:
        if fk is None or fk.transition_log_density is None:
            raise ValueError("backward sampling needs fk with transition_log_density")

        def body(carry, xs):
            i_next, k = carry[0], carry[1]
            t = xs
            k, sub = jax.random.split(k)
            x_next = _expand0(_index_tree(hist, t + 1, i_next))
            inp = jax.tree_util.tree_map(lambda leaf: leaf[t + 1], inputs) if inputs is not None else None
            x_t = jax.tree_util.tree_map(lambda leaf: leaf[t], hist)
            logits = lw[t] + fk.transition_log_density(x_t, x_next, inp)
            logits = jnp.where(jnp.isnan(logits), -jnp.inf, logits)
            i = jax.random.categorical(sub, logits).astype(jnp.int32)
            return (i, k), i

        (_, _), idx_rev = jax.lax.scan(body, (last, k_back), jnp.arange(T - 2, -1, -1))
        idx = jnp.concatenate([idx_rev[::-1], last[None]])
    traj = jax.tree_util.tree_map(lambda leaf: leaf[jnp.arange(T), idx], hist)
    return traj, idx


def _check_scheme(resampling):
    if resampling not in CONDITIONAL_SCHEMES:
        raise ValueError(
            f"conditional SMC supports resampling in {CONDITIONAL_SCHEMES} (reference-preserving "
            f"conditional resampling); {resampling!r} has no conditional version here"
        )


def csmc_filter(key, fk, inputs, reference, config: SMCConfig, *, num_steps: int, ancestor_sampling: bool = False,
                hook: Optional[StepHook] = None, summaries=()) -> SMCResult:
    """One conditional SMC sweep as a pure function (the body of :func:`csmc`, :func:`particle_gibbs`
    and :mod:`smcscale.ppg`): :func:`smcscale.smc.run_filter` on :func:`conditional_fk` with the
    inputs ``(inputs, reference)``, :func:`conditional_multinomial` and, with
    ``ancestor_sampling``, :func:`ancestor_sampler`. Records ancestors, particles and
    log-weights. A ``hook`` sees the inputs as pairs ``(inputs_t, x*_t)``."""
    return run_filter(
        key,
        conditional_fk(fk),
        (inputs, reference),
        config,
        num_steps=num_steps,
        summaries=summaries,
        record=("ancestors", "log_weights", "particles"),
        hook=hook,
        resample_fn=conditional_multinomial,
        ancestor_fn=ancestor_sampler(fk) if ancestor_sampling else None,
    )


def _csmc_core(key, fk, inputs, reference, *, num_particles, num_steps, ess_threshold, ancestor_sampling):
    config = SMCConfig(num_particles, ess_threshold, "multinomial")
    return csmc_filter(key, fk, inputs, reference, config, num_steps=num_steps, ancestor_sampling=ancestor_sampling)


_csmc_jit = jax.jit(_csmc_core, static_argnames=("fk", "num_particles", "num_steps", "ess_threshold", "ancestor_sampling"))


def csmc(
    key,
    fk: FeynmanKac,
    inputs,
    reference,
    num_particles: int,
    *,
    ancestor_sampling: bool = False,
    ess_threshold: float = 1.0,
    resampling: str = "multinomial",
) -> SMCResult:
    """One conditional SMC sweep with ``reference`` (pytree, leading axis ``T``) in slot 0.

    Returns the :class:`~smcscale.smc.SMCResult` with ancestors, particles and log-weights
    recorded; draw the next reference with :func:`sample_trajectory`.
    """
    _check_scheme(resampling)
    t = check_reference(inputs, reference, num_particles)
    if ancestor_sampling and ess_threshold < 1.0:
        raise ValueError("ancestor sampling requires resampling at every step: use ess_threshold=1.0")
    return _csmc_jit(
        as_key(key), fk, inputs, reference, num_particles=int(num_particles), num_steps=t,
        ess_threshold=float(ess_threshold), ancestor_sampling=bool(ancestor_sampling),
    )


def check_reference(inputs, reference, num_particles) -> int:
    """Check a reference trajectory (leaves with a common leading axis ``T`` matching the
    inputs) and ``num_particles >= 2``; return ``T``."""
    if not isinstance(num_particles, (int, np.integer)) or num_particles < 2:
        raise ValueError(f"conditional SMC needs num_particles >= 2 (one is the reference), got {num_particles!r}")
    t = num_steps_of(inputs, None) if inputs is not None else None
    leaves = jax.tree_util.tree_leaves(reference)
    if not leaves:
        raise ValueError("reference trajectory is empty")
    lengths = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in leaves}
    if None in lengths or len(lengths) != 1:
        raise ValueError("every leaf of the reference trajectory must have the same leading time axis")
    t_ref = lengths.pop()
    if t is not None and t_ref != t:
        raise ValueError(f"reference trajectory has length {t_ref} but the inputs have {t} time steps")
    return t_ref


class PGResult(NamedTuple):
    """Particle Gibbs output. ``trajectories`` has leading axes ``[iterations, T]``."""

    trajectories: Any
    log_z: jax.Array  # [iterations] log Ẑ of each conditional sweep
    thetas: Any  # [iterations, ...] or None
    reference_moved: jax.Array  # [iterations, T] bool: did the reference state change at t


def particle_gibbs(
    key,
    fk,
    inputs,
    num_particles: int,
    num_iterations: int,
    *,
    init_reference=None,
    ancestor_sampling: bool = False,
    backward_sampling: bool = False,
    ess_threshold: float = 1.0,
    resampling: str = "multinomial",
    theta=None,
    gibbs_update: Optional[Callable] = None,
) -> PGResult:
    """Particle Gibbs (PG, PGAS or PG with backward sampling) in one ``lax.scan``.

    Args:
      fk: a :class:`FeynmanKac`, or a function ``theta -> FeynmanKac`` when ``theta`` is given.
      init_reference: initial trajectory; by default the trajectory of an ordinary
        (unconditional) filter run.
      gibbs_update: ``(key, theta, trajectory, inputs) -> theta``, a Gibbs (or any
        ``p(θ | x, y)``-invariant) update applied after each sweep.
    """
    _check_scheme(resampling)
    if ancestor_sampling and ess_threshold < 1.0:
        raise ValueError("ancestor sampling requires resampling at every step: use ess_threshold=1.0")
    if theta is None and not isinstance(fk, FeynmanKac):
        raise TypeError("fk must be a FeynmanKac (or a function theta -> FeynmanKac with theta=...)")
    if gibbs_update is not None and theta is None:
        raise ValueError("gibbs_update needs an initial theta")
    t = num_steps_of(inputs, None)
    num_particles = positive_int(num_particles, "num_particles")
    num_iterations = positive_int(num_iterations, "num_iterations")
    if init_reference is not None:
        check_reference(inputs, init_reference, num_particles)
    trajs, log_zs, thetas, moved = _pg_jit(
        as_key(key), inputs, init_reference, theta, fk=fk, parametric=theta is not None, num_particles=num_particles,
        num_steps=t, num_iterations=num_iterations, ess_threshold=float(ess_threshold),
        ancestor_sampling=bool(ancestor_sampling), backward_sampling=bool(backward_sampling), gibbs_update=gibbs_update,
    )
    return PGResult(trajs, log_zs, thetas if theta is not None else None, moved)


def _pg_loop(key, inputs, init_reference, theta, *, fk, parametric, num_particles, num_steps, num_iterations,
             ess_threshold, ancestor_sampling, backward_sampling, gibbs_update):
    """The particle Gibbs chain as one pure function (jitted once per static setting)."""
    fk_of = fk if parametric else (lambda th: fk)
    k_init, k_iter = jax.random.split(key)
    if init_reference is None:
        res0 = run_filter(
            k_init, fk_of(theta), inputs, SMCConfig(num_particles, 1.0, "multinomial"), num_steps=num_steps,
            record=("ancestors", "log_weights", "particles"),
        )
        init_reference, _ = sample_trajectory(jax.random.fold_in(k_init, 1), res0)
    config = SMCConfig(num_particles, ess_threshold, "multinomial")

    def one_iteration(carry, k):
        ref, th = carry
        k_sweep, k_traj, k_theta = jax.random.split(k, 3)
        f = fk_of(th)
        res = csmc_filter(k_sweep, f, inputs, ref, config, num_steps=num_steps, ancestor_sampling=ancestor_sampling)
        new_ref, _ = sample_trajectory(k_traj, res, f, inputs, backward=backward_sampling)
        if gibbs_update is not None:
            th = gibbs_update(k_theta, th, new_ref, inputs)
        return (new_ref, th), (new_ref, res.log_z, th, reference_moved(new_ref, ref))

    _, outs = jax.lax.scan(one_iteration, (init_reference, theta), jax.random.split(k_iter, num_iterations))
    return outs


_pg_jit = jax.jit(
    _pg_loop,
    static_argnames=(
        "fk", "parametric", "num_particles", "num_steps", "num_iterations", "ess_threshold", "ancestor_sampling",
        "backward_sampling", "gibbs_update",
    ),
)


def reference_moved(new_reference, reference):
    """``(T,)`` bool: whether the reference state at each step changed (any leaf, any element)."""
    moved = jax.tree_util.tree_leaves(
        jax.tree_util.tree_map(
            lambda a, b: jnp.any((a != b).reshape(a.shape[0], -1), axis=1), new_reference, reference
        )
    )
    return jnp.any(jnp.stack(moved), axis=0)
