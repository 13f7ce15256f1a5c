r"""Feynman–Kac correctors (FKC): annealing, products, guidance and reward tilts as SMC.

Targets
-------
Given score models ``s_i ≈ ∇ log q^i_t`` of the noised marginals of some data laws ``q^i``,
the target at time ``t`` is

    p_t(x) ∝ Π_i q^i_t(x)^{β_i} · exp(β^r_t r(x)),         B = Σ_i β_i,

built by :func:`anneal` (``q^β``), :func:`product` (``Π q_i^{β_i}``), :func:`cfg`
(classifier-free guidance ``q(x|c)^w q(x)^{1−w}``) and :func:`reward_tilt`
(``q · exp(β r)``, with ``β^r_t`` rising linearly in ``t`` from 0 at ``T`` to ``β`` at
``t_min``). Naively plugging the combined score ``Σ β_i s_i`` into the reverse SDE does
**not** sample ``p_0``: the noised marginals of ``p_0`` are not ``Π (q^i_t)^{β_i}``. FKC
(Skreta, Akhound-Sadegh, Ohanesian, Bondesan, Aspuru-Guzik, Doucet, Brekelmans, Tong &
Neklyudov 2025, "Feynman–Kac Correctors in Diffusion: Annealing, Guidance, and Product of
Experts", ICML) adds importance weights that make it exact.

The SDE and the weights
-----------------------
In reverse time ``τ`` (``dτ = −dt``), with forward drift ``f`` and diffusion ``g``:

    dx = [ −f + ((g² + σ²)/2) Σ_i β_i s_i + (σ²/2) β^r ∇r ] dτ + σ dW,
    d log w = [ (B − 1) ∇·f + (g²/2)(‖Σ_i β_i s_i‖² − Σ_i β_i ‖s_i‖²)
                + ⟨β^r ∇r, (g²/2) Σ_i β_i s_i − f⟩ ] dτ + r dβ^r.

The drift coefficient ``(g² + σ²)/2`` cancels the divergence of the scores, so no
Hutchinson estimator is needed, and ``∇·f = −(λ_t/2) d`` is the same for every particle (it
only moves ``log Z``). Special cases: annealing ``(β−1)∇·f + β(β−1)(g²/2)‖s‖²``; product
``∇·f + g²⟨s_1, s_2⟩``; CFG ``w(w−1)(g²/2)‖s_c − s_u‖²`` (both scores, which CFG computes
anyway, in one batched call). The noise ``σ`` is free: ``noise="target"`` (default) uses
``σ = g``; ``noise="tempered"`` uses ``σ² = g²/B``, for which the target is an *unstable*
fixed point when ``B > 2`` (VP) or ``B > 3`` (VE, EDM) — the error then does not shrink with
``N`` or the step size, and :func:`sample` warns.

Discretisation (as in the authors' code): Euler–Maruyama on the grid
``T = t_0 > ... > t_K = t_min`` of the SDE, with **left-point** weight increments: the
increment of the move ``t_k → t_{k+1}`` (length ``h_k = t_k − t_{k+1}``) is the rate at
``(x_k, t_k)`` times ``h_k`` (and ``(β^r_{t_{k+1}} − β^r_{t_k}) r(x_k)`` for the tilt).

The Feynman–Kac model on the engine
-----------------------------------
:func:`sample` runs :func:`smcscale.run` on a :class:`~smcscale.FeynmanKac` model whose
``inputs`` are the time grid (``K + 1`` engine steps for ``K`` Euler–Maruyama steps). A
particle (:class:`DiffusionParticles`) carries its position and what was computed at it:
the drift of its next move and its weight increment, so every score evaluation is used
for both (``K`` evaluations of each expert in all, the same as the plain sampler):

* ``t = 0``: ``x_0 ~ N(0, (v/B) I)`` (``v`` the SDE's prior variance: the Gaussian
  ``q^i_T ≈ N(0, v I)`` raised to the powers ``β_i``); ``log G_0`` = the initial correction
  ``Σ β_i log q^i_T(x) − log N(x; 0, v/B)`` (exact when every score model has
  ``log_prob``; otherwise the Gaussian approximation, a constant) + the increment at
  ``(x_0, t_0)``;
* step ``k ≥ 1``: the engine resamples (``ESS < κN``; every step by default), the
  transition is the Euler–Maruyama move ``t_{k−1} → t_k`` with the cached drift, then the
  scores at ``(x_k, t_k)`` (skipped at the last step), and ``log G_k`` is the increment of the
  next move, known *before* it (the weight depends on the left point only).

So ``log Ẑ`` estimates ``log ∫ Π_i q^i_0(x)^{β_i} e^{β r(x)} dx`` (exactly that normaliser up to
discretisation when the initial correction is exact; e.g. 0 for a single ``q``).

**Where resampling happens.** ``resample="every"`` (κ = 1, the paper's choice),
a float κ ∈ (0, 1) (ESS-adaptive), or ``"never"`` (plain importance sampling, which
collapses). ``resample_every=k`` and ``window=(t_lo, t_hi)`` restrict the steps where
the weights are *released* to the engine (and where it may resample): elsewhere the
increments accumulate in the particle (they travel with it through resampling) and are
released at the next allowed step, or at the last step. The final population is then
weighted (``log_weights``). A resampler sees exactly uniform weights at the steps in
between and keeps every particle in place there.

Extra potentials (FK steering, :mod:`smcscale.diffusion.steering`) plug into the same model
through ``potential=``; they see the Tweedie estimate ``x̂_0 = (x + σ_t² S/B) / α_t`` of each
particle, with ``S = Σ β_i s_i`` the combined score (``S/B`` is the score of ``Π q_i^{β_i/B}``).

Budget (totals over the run): ``nfe`` counts score-model evaluations of one particle
(``N × K ×`` number of experts; CFG has 2), ``score_calls`` the batched calls of score
models, ``verifier_calls`` the reward evaluations of one particle (tilt gradients, steering).

:func:`euler_maruyama` is the plain sampler (no weights, no resampling: the "naive"
baseline), with the same drift, grid and evaluation count; ``ode=True`` integrates the
probability-flow ODE (``σ = 0``) instead, as the noise-search baselines need.

Degenerate runs
---------------
Too few steps break the sampler silently: explicit Euler on the stiff drift ``−f + c S``
overshoots when ``h |∂drift/∂x| > 2`` (VP, ``q^3``: ``J_T = λ_T/2 − B g_T² = −50``, so
``K < 25`` steps explode; 10 steps land at ``|x| ≈ 90`` with ``log Ẑ ≈ 1e7``), and even
stable steps can be too coarse for the weights (``K = 40``: ESS ≈ 1 of 1000). :func:`sample`
therefore checks every eager run with :func:`diagnose` (ESS collapse below
``max(2, 0.01 N)``, non-finite values, samples outside ``10 sqrt(v) + data extent``,
:func:`euler_stability`) and warns (:class:`DiffusionDiagnosticWarning`) or raises
(``on_degenerate="raise"``). The 2-D toy targets are healthy from ``K = 100`` (``q^3``) and
``K = 40`` (product, CFG ``w = 3``) at ``N = 1000``.

Compile once
------------
Targets are named tuples of the user's score models, floats and conditions, with no inner
closures: equal arguments give equal, equally hashed targets (:class:`Expert`: conditions by
value, small arrays included), so :func:`sample` and :func:`euler_maruyama` reuse their
compiled code for a freshly built ``anneal(score, 3.0)`` as long as ``score`` is the same
object (or an equal :class:`~smcscale.diffusion.scores.AnalyticScore`).
"""

from __future__ import annotations

import functools
import math
import numbers
import warnings
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ..fk import FeynmanKac
from ..resampling import get_resampler
from ..smc import SMCResult, run
from ..static import Uncacheable, static_key
from .scores import denoise
from .sde import SDE, get_sde

__all__ = [
    "Expert",
    "RewardTilt",
    "Target",
    "anneal",
    "product",
    "cfg",
    "reward_tilt",
    "DiffusionParticles",
    "DiffusionResult",
    "PlainResult",
    "sample",
    "euler_maruyama",
    "integrate",
    "diffusion_fk",
    "NOISES",
    "ON_DEGENERATE",
    "as_target",
    "infer_dim",
    "check_scores",
    "check_scores_once",
    "denoise_target",
    "describe_score",
    "euler_stability",
    "diagnose",
    "Diagnostics",
    "DiffusionDiagnosticWarning",
    "DiffusionDiagnosticError",
]

NOISES = ("target", "tempered")


# ---------------------------------------------------------------------------------------
# targets


def _condition_key(condition):
    """The key a condition is compared by (see :class:`Expert`), or ``None`` when it has none."""
    try:
        return static_key(condition)
    except Uncacheable:
        return None


class Expert(NamedTuple):
    """One factor ``q_t(x | condition)^beta`` of a target.

    Equality and hashing (so that a target can be a static argument of ``jax.jit`` and the
    compiled sampler is reused): two experts are equal when their score models are equal
    (``==``; identity for functions: keep your score object), their ``beta`` are equal and
    their conditions are equal **by value** — numbers, strings and ``None`` by value and
    type, concrete NumPy/JAX arrays of at most :data:`smcscale.static.MAX_ARRAY_ELEMENTS`
    elements by shape, dtype and contents (``1``, ``np.int32(1)`` and ``jnp.asarray(1)``
    differ: they trace differently). Any other condition (a traced value under
    ``jit``/``vmap``, a larger array) is compared by identity and makes the expert
    unhashable: such a target is built afresh on each call (inside an outer ``jit`` that is
    simply part of its trace).
    """

    score: Callable
    beta: float
    condition: Any = None

    def __eq__(self, other):
        if self is other:
            return True
        if not isinstance(other, Expert):
            return NotImplemented
        if not (self.score is other.score or bool(self.score == other.score)) or not bool(self.beta == other.beta):
            return False
        if self.condition is other.condition:
            return True
        k = _condition_key(self.condition)
        return k is not None and k == _condition_key(other.condition)

    def __ne__(self, other):
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    def __hash__(self):
        k = _condition_key(self.condition)
        if k is None:
            raise TypeError(f"unhashable Expert: its condition ({type(self.condition).__name__}) is traced or a large array")
        return hash((Expert, self.score, self.beta, k))


class RewardTilt(NamedTuple):
    """A tilt ``exp(beta r(x))``; ``reward(x (N, d)) -> (N,)`` must be differentiable."""

    reward: Callable
    beta: float


class Target(NamedTuple):
    """``Π_i q^i(x | c_i)^{β_i} · exp(β r(x))`` (see the module docstring)."""

    experts: tuple
    tilt: Optional[RewardTilt] = None
    name: str = "target"

    @property
    def total_beta(self) -> float:
        return float(sum(e.beta for e in self.experts))

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    @property
    def hashable(self) -> bool:
        """Whether this target can be a static argument of ``jax.jit`` (see :class:`Expert`):
        ``False`` when a condition is traced or a large array, or a model is unhashable."""
        try:
            hash(self)
        except TypeError:
            return False
        return True


def _check_beta(beta, what):
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real):
        raise TypeError(f"{what} must be a real number, got {type(beta).__name__}")
    beta = float(beta)
    if not math.isfinite(beta) or beta <= 0:
        raise ValueError(f"{what} must be finite and > 0, got {beta}")
    return beta


def _check_score(score, what="score"):
    if not callable(score):
        raise TypeError(f"{what} must be a score model: a function (x [N, d], t, condition) -> [N, d]; got {type(score).__name__}")


def anneal(score, beta: float, condition=None) -> Target:
    """The annealed target ``q^β`` (``β > 0``; ``β > 1`` sharpens, ``β < 1`` flattens)."""
    _check_score(score)
    beta = _check_beta(beta, "the annealing exponent beta")
    return Target((Expert(score, beta, condition),), None, f"anneal(beta={beta:g})")


def product(scores: Sequence, betas: Optional[Sequence[float]] = None, conditions: Optional[Sequence] = None) -> Target:
    """The product of experts ``Π_i q_i^{β_i}`` (default ``β_i = 1``; every ``β_i > 0``).

    ``scores`` may repeat one conditional model with different ``conditions`` (e.g. the
    product of two class-conditionals ``q(x|c_1) q(x|c_2)``).
    """
    scores = list(scores)
    if not scores:
        raise ValueError("product needs at least one score model")
    betas = [1.0] * len(scores) if betas is None else list(betas)
    conditions = [None] * len(scores) if conditions is None else list(conditions)
    if len(betas) != len(scores) or len(conditions) != len(scores):
        raise ValueError(f"got {len(scores)} scores, {len(betas)} betas and {len(conditions)} conditions")
    experts = []
    for i, (s, b, c) in enumerate(zip(scores, betas, conditions)):
        _check_score(s, f"scores[{i}]")
        experts.append(Expert(s, _check_beta(b, f"betas[{i}]"), c))
    return Target(tuple(experts), None, "product(" + ", ".join(f"{e.beta:g}" for e in experts) + ")")


def cfg(score, w: float, condition, unconditional=None) -> Target:
    """Classifier-free guidance ``q(x|c)^w q(x)^{1−w}`` with guidance weight ``w > 0``.

    ``score(x, t, condition)`` is the conditional model; the unconditional score is
    ``score(x, t, unconditional)`` (default ``None``, which a model with a
    ``null_condition`` replaces by it). Both are evaluated in one batched call when the
    model has ``null_condition``.
    """
    _check_score(score)
    w = _check_beta(w, "the guidance weight w")
    if w == 1.0:
        experts = (Expert(score, 1.0, condition),)
    else:
        experts = (Expert(score, w, condition), Expert(score, 1.0 - w, unconditional))
    return Target(experts, None, f"cfg(w={w:g})")


def reward_tilt(base, reward: Callable, beta: float) -> Target:
    """``base · exp(β r(x))``: ``base`` is a :class:`Target` or a score model (then ``q``).

    ``reward(x [N, d]) -> [N]`` is evaluated on the noisy ``x_t`` (a time-independent
    reward) and differentiated with ``jax.grad``; ``β`` must be ``> 0``.
    """
    if not callable(reward):
        raise TypeError("reward must be a function x [N, d] -> [N]")
    beta = _check_beta(beta, "the tilt strength beta")
    if not isinstance(base, Target):
        _check_score(base, "base")
        base = Target((Expert(base, 1.0, None),), None, "q")
    if base.tilt is not None:
        raise ValueError("the base target already has a reward tilt")
    return Target(base.experts, RewardTilt(reward, beta), f"{base.name}*exp({beta:g} r)")


def as_target(target, *, allow_score: bool = False) -> Target:
    """Validate ``target`` (a :class:`Target`: finite nonzero exponents, total ``B > 0``,
    callable score models) and return it; raises ``TypeError``/``ValueError`` naming what is
    wrong. With ``allow_score=True`` a bare score model is accepted as ``anneal(score, 1.0)``
    (the steering and search functions sample a score model as is)."""
    if allow_score and not isinstance(target, Target) and callable(target):
        target = anneal(target, 1.0)
    if isinstance(target, Target):
        if not target.experts:
            raise ValueError("the target has no experts")
        for i, e in enumerate(target.experts):
            _check_score(e.score, f"expert {i}'s score")
            if isinstance(e.beta, bool) or not isinstance(e.beta, numbers.Real) or not math.isfinite(float(e.beta)) or e.beta == 0:
                raise ValueError(f"expert {i} has exponent {e.beta!r}; it must be a finite nonzero number")
        if target.total_beta <= 0:
            raise ValueError(f"the total exponent B = sum of betas must be > 0, got {target.total_beta}")
        return target
    if callable(target):
        raise TypeError(
            "target must be a smcscale.diffusion Target (build one with anneal, product, cfg or reward_tilt); "
            "got a bare function — wrap a score model with anneal(score, 1.0) to sample q itself"
        )
    raise TypeError(f"target must be a smcscale.diffusion Target, got {type(target).__name__}")


# ---------------------------------------------------------------------------------------
# evaluation of the scores (batched per model)


def _batchable(e: Expert, model) -> bool:
    if not hasattr(model, "null_condition"):
        return False
    c = e.condition
    if c is None or isinstance(c, (numbers.Integral, np.integer)):
        return True
    return hasattr(c, "ndim") and c.ndim <= 1


def _groups(target: Target):
    """Experts grouped by score model (by identity), in first-appearance order."""
    groups: list = []
    for i, e in enumerate(target.experts):
        for g in groups:
            if g[0] is e.score:
                g[1].append(i)
                break
        else:
            groups.append((e.score, [i]))
    out = []
    for model, idx in groups:
        if len(idx) > 1 and all(_batchable(target.experts[i], model) for i in idx):
            out.append((model, tuple(idx), True))
        else:
            out.extend((model, (i,), False) for i in idx)
    return tuple(out)


def describe_score(score) -> str:
    """A short name of a score model for messages: a function's qualified name, else its ``repr``."""
    name = getattr(score, "__qualname__", None)
    if isinstance(name, str) and not isinstance(score, type) and callable(score) and hasattr(score, "__code__"):
        return name
    return repr(score)


def _shape_error(i, score, got, xshape, t, batched=False):
    what = f"the batched call of expert(s) {i}" if batched else f"expert {i}"
    return ValueError(
        f"score model {describe_score(score)} of {what} returned shape {got} for x of shape {xshape}"
        + (f" at t={t:g}" if isinstance(t, float) else "")
        + f": expected shape {xshape} (N, d): one score per particle, the shape of x"
    )


def _eval_scores(target: Target, groups, x, t):
    n = x.shape[0]
    scores: list = [None] * target.num_experts
    for model, idx, batched in groups:
        if batched:
            conds = []
            for i in idx:
                c = target.experts[i].condition
                c = model.null_condition if c is None else c
                conds.append(jnp.broadcast_to(jnp.asarray(c), (n,)))
            xs = jnp.concatenate([x] * len(idx), 0)
            out = model(xs, t, jnp.concatenate(conds, 0))
            if getattr(out, "shape", None) != xs.shape:  # static shapes: checked at trace time, free
                raise _shape_error(list(idx), model, getattr(out, "shape", None), xs.shape, t, batched=True)
            for j, i in enumerate(idx):
                scores[i] = out[j * n : (j + 1) * n]
        else:
            i = idx[0]
            out = model(x, t, target.experts[i].condition)
            if getattr(out, "shape", None) != x.shape:
                raise _shape_error(i, model, getattr(out, "shape", None), x.shape, t)
            scores[i] = out
    return scores


def denoise_target(target: Target, sde: SDE, x, t):
    """Tweedie estimate ``x̂_0 = (x + σ_t² S/B) / α_t`` of each row of ``x`` ``(N, d)`` at time
    ``t`` from the combined score ``S = Σ β_i s_i`` of ``target`` (``S/B`` is the score of
    ``Π q_i^{β_i/B}``); one batched call per score model. Pure and jittable."""
    return _fields(target, _groups(target), sde, "target", x, t, t, weights=False).x0hat


class _Fields(NamedTuple):
    drift: Any  # (N, d)
    increment: Any  # (N,) weight increment of the move t -> t_next
    x0hat: Any  # (N, d) Tweedie estimate from the combined score


def _tilt_beta(target: Target, sde: SDE, t):
    """Linear schedule of the tilt strength: 0 at T, beta at t_min."""
    frac = (sde.T - t) / (sde.T - sde.t_min)
    return target.tilt.beta * jnp.clip(frac, 0.0, 1.0)


def _fields(target: Target, groups, sde: SDE, noise: str, x, t, t_next, *, weights: bool, ode: bool = False):
    scores = _eval_scores(target, groups, x, t)
    s0 = sum(e.beta * s for e, s in zip(target.experts, scores))
    g2 = sde.g2(t)
    b = target.total_beta
    sig2 = 0.0 if ode else (g2 if noise == "target" else g2 / b)
    f = sde.f(x, t)
    drift = -f + 0.5 * (g2 + sig2) * s0
    h = t - t_next
    inc = jnp.zeros(x.shape[0], x.dtype)
    if weights:
        d = x.shape[-1]
        sq = jnp.sum(s0**2, -1) - sum(e.beta * jnp.sum(s**2, -1) for e, s in zip(target.experts, scores))
        inc = ((b - 1.0) * sde.div_f(t, d) + 0.5 * g2 * sq) * h
    if target.tilt is not None:
        r, grad_r = _reward_and_grad(target.tilt.reward, x)
        bt, bt_next = _tilt_beta(target, sde, t), _tilt_beta(target, sde, t_next)
        drift = drift + 0.5 * sig2 * bt * grad_r
        if weights:
            inc = inc + h * jnp.sum(bt * grad_r * (0.5 * g2 * s0 - f), -1) + (bt_next - bt) * r
    x0hat = denoise(s0, x, t, sde) if b == 1.0 else denoise(s0 / b, x, t, sde)
    return _Fields(drift, inc, x0hat)


def _reward_and_grad(reward, x):
    def total(z):
        r = reward(z)
        return jnp.sum(r), r

    grad, r = jax.grad(total, has_aux=True)(x)
    return r, grad


def _noise_var(sde: SDE, noise: str, target: Target, t, ode=False):
    if ode:
        return 0.0
    g2 = sde.g2(t)
    return g2 if noise == "target" else g2 / target.total_beta


# ---------------------------------------------------------------------------------------
# the Feynman–Kac model


class DiffusionParticles(NamedTuple):
    """Particle state: position and what was computed at it (all leading axis ``N``)."""

    x: Any  # (N, d) position x_k at time t_k
    drift: Any  # (N, d) drift of the next Euler–Maruyama move
    carry: Any  # (N,) log-weight increments not yet released to the engine
    released: Any  # (N,) log-potential of this step (what the engine sees)
    potential_state: Any  # pytree of (N, ...) for an extra potential (FK steering), or ()
    reward: Any  # (N,) last reward from the extra potential (0 if none)


class _Options(NamedTuple):
    noise: str
    weights: bool
    dim: int
    num_particles: int
    exact_init: bool


def _initial_correction(target: Target, sde: SDE, x, exact: bool):
    """``Σ β_i log q^i_T(x) − log N(x; 0, v/B)``: exact with ``log_prob``, else the Gaussian value."""
    v = sde.prior_var()
    b = target.total_beta
    d = x.shape[-1]
    log_pi = -0.5 * b * jnp.sum(x**2, -1) / v - 0.5 * d * jnp.log(2 * jnp.pi * v / b)
    if exact:
        ref = sum(e.beta * e.score.log_prob(x, sde.T, e.condition) for e in target.experts)
    else:
        ref = sum(e.beta * (-0.5 * jnp.sum(x**2, -1) / v - 0.5 * d * jnp.log(2 * jnp.pi * v)) for e in target.experts)
    return ref - log_pi


def diffusion_fk(target: Target, sde: SDE, opts: _Options, potential=None) -> FeynmanKac:
    """The FK model of the module docstring. ``inputs`` per step: a dict with ``t_prev``,
    ``t``, ``t_next`` (float32), ``release``, ``potential_step``, ``last`` (bool)."""
    groups = _groups(target)
    n, dim = opts.num_particles, opts.dim

    def at(x, inp, carry, pstate, reward):
        def compute(_):
            fl = _fields(target, groups, sde, opts.noise, x, inp["t"], inp["t_next"], weights=opts.weights)
            return fl.drift, fl.increment, fl.x0hat

        def skip(_):
            z = jnp.zeros_like(x)
            return z, jnp.zeros(x.shape[0], x.dtype), x

        drift, inc, x0hat = jax.lax.cond(inp["last"], skip, compute, None)
        total = carry + inc
        if potential is not None:

            def pot(args):
                ps, _ = args
                return potential.log_potential(ps, x, x0hat, inp["t"], inp["last"])

            def no_pot(args):
                ps, rw = args
                return jnp.zeros(x.shape[0], x.dtype), ps, rw

            lp, pstate, reward = jax.lax.cond(inp["potential_step"], pot, no_pot, (pstate, reward))
            total = total + lp
        released = jnp.where(inp["release"], total, 0.0)
        carry = jnp.where(inp["release"], 0.0, total)
        return DiffusionParticles(x, drift, carry, released, pstate, reward)

    def sample_initial(key, num, inp):
        v = sde.prior_var()
        x = jnp.sqrt(v / target.total_beta) * jax.random.normal(key, (num, dim), jnp.float32)
        carry = jnp.zeros(num, jnp.float32)
        if opts.weights:
            carry = carry + _initial_correction(target, sde, x, opts.exact_init)
        pstate = potential.init(num) if potential is not None else ()
        return at(x, inp, carry, pstate, jnp.zeros(num, jnp.float32))

    def sample_transition(key, p: DiffusionParticles, inp):
        h = inp["t_prev"] - inp["t"]
        sig2 = _noise_var(sde, opts.noise, target, inp["t_prev"])
        x = p.x + h * p.drift + jnp.sqrt(sig2 * h) * jax.random.normal(key, p.x.shape, p.x.dtype)
        return at(x, inp, p.carry, p.potential_state, p.reward)

    def log_potential(p_prev, p, inp):
        return p.released

    return FeynmanKac(sample_initial, sample_transition, log_potential)


# ---------------------------------------------------------------------------------------
# sampling


class DiffusionResult(NamedTuple):
    """What :func:`sample` returns.

    Attributes:
      samples: ``(N, d)`` final particles (at ``t_min``).
      log_weights: ``(N,)`` their normalised log-weights (uniform after a final resample).
      log_z: estimate of ``log ∫ Π q_i^{β_i} e^{β r}`` (see the module docstring).
      log_z_trace, ess: per engine step (``K + 1``), from the engine.
      resampled: ``(K + 1,)`` whether the population was resampled before step ``k``
        (exactly uniform weights are kept in place and do not count).
      times: ``(K + 1,)`` the time grid.
      nfe: score-model evaluations (one particle, one expert = 1; ``N K E`` in all);
      score_calls: batched calls of score models; verifier_calls: reward evaluations
      (one particle = 1; tilt gradients and steering rewards).
      rewards: ``(N,)`` the last reward of each particle from an extra potential (zeros if none).
      smc: the engine's :class:`~smcscale.SMCResult`.
    """

    samples: Any
    log_weights: Any
    log_z: Any
    log_z_trace: Any
    ess: Any
    resampled: Any
    times: Any
    nfe: Any
    score_calls: Any
    verifier_calls: Any
    rewards: Any
    smc: SMCResult


class PlainResult(NamedTuple):
    """What :func:`euler_maruyama` returns: ``samples (N, d)``, ``nfe`` (``N K E``), ``score_calls``."""

    samples: Any
    nfe: Any
    score_calls: Any


def _keep_uniform(scheme):
    """Resampler that keeps every particle in place when the weights are exactly uniform
    (an unbiased choice: E[#offspring] = 1 = N W_i) and otherwise calls ``scheme``."""
    if scheme not in _KEEP_CACHE:  # one wrapper per scheme, so that compiled runs are reused
        _KEEP_CACHE[scheme] = _make_keep_uniform(scheme)
    return _KEEP_CACHE[scheme]


_KEEP_CACHE: dict = {}


def _make_keep_uniform(scheme):
    base = get_resampler(scheme)

    def resample(key, log_weights, num_samples):
        uniform = (jnp.max(log_weights) == jnp.min(log_weights)) & (num_samples == log_weights.shape[0])
        return jax.lax.cond(
            uniform,
            lambda: jnp.arange(num_samples, dtype=jnp.int32),
            lambda: base(key, log_weights, num_samples).astype(jnp.int32),
        )

    return resample


def _uniform_summary(particles, log_weights):
    return jnp.max(log_weights) == jnp.min(log_weights)


def _kappa(resample) -> float:
    if isinstance(resample, str):
        if resample == "every":
            return 1.0
        if resample == "never":
            return 0.0
        raise ValueError(f"resample must be 'every', 'never' or an ESS threshold in (0, 1], got {resample!r}")
    if isinstance(resample, bool) or not isinstance(resample, numbers.Real):
        raise TypeError(f"resample must be 'every', 'never' or a float ESS threshold, got {type(resample).__name__}")
    k = float(resample)
    if not 0.0 < k <= 1.0:
        raise ValueError(f"an ESS threshold must be in (0, 1], got {k}")
    return k


def _declared_dim(score):
    for obj in (score, getattr(score, "mixture", None)):
        d = getattr(obj, "dim", None)
        if isinstance(d, (int, np.integer)) and not isinstance(d, bool):
            return int(d)
    return None


def infer_dim(target: Target, dim=None) -> int:
    """The dimension ``d`` of ``x``: ``dim`` if given, else the integer ``dim`` attribute of a
    score model (or of its ``mixture``: analytic models; :func:`~smcscale.diffusion.scores.from_eps`
    and ``from_x0`` pass on their network's ``dim``).

    Raises ``ValueError`` when ``dim`` is not an int ``>= 1``, when it disagrees with a
    model's declared ``dim``, or when nothing declares it (a plain function maps ``(N, d)``
    to ``(N, d)`` for any ``d``, so its dimension cannot be read off it): the message names
    the score models and says to pass ``dim=`` or set ``score.dim``."""
    declared = [(i, e.score, _declared_dim(e.score)) for i, e in enumerate(target.experts)]
    if dim is not None:
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ValueError(f"dim must be an int >= 1 (the dimension d of x), got {dim!r}")
        for i, score, d in declared:
            if d is not None and d != int(dim):
                raise ValueError(f"dim={int(dim)} but the score model {describe_score(score)} of expert {i} declares dim {d}")
        return int(dim)
    for _, _, d in declared:
        if d is not None:
            return d
    names = ", ".join(sorted({describe_score(score) for _, score, _ in declared}))
    raise ValueError(
        f"cannot infer the dimension d of x: no score model declares it (checked the integer `dim` attribute of "
        f"{names} and of its `mixture`; a plain function maps (N, d) to (N, d) for any d). "
        "Pass dim=d (e.g. dm.sample(key, target, sde, N, K, dim=2)) or set score.dim = d"
    )


def check_scores(target: Target, sde: SDE, dim: int, num_particles: int, key=None) -> None:
    """Call every expert's score model once at ``t = T`` and at ``t_min`` on prior draws
    (``num_particles`` rows, so that per-row conditions fit) and raise ``ValueError`` if
    one returns the wrong shape or a non-finite value (values are only checked when they are
    concrete: a model whose parameters are traced, e.g. built inside ``jit``, gets the
    shape check only). Also checks the shape of a tilt's reward."""
    key = jax.random.key(0) if key is None else key
    x = jnp.sqrt(sde.prior_var()) * jax.random.normal(key, (num_particles, dim), jnp.float32)
    for t in (float(sde.T), float(sde.t_min)):
        xt = x if t == float(sde.T) else 0.1 * x
        for i, e in enumerate(target.experts):
            name = describe_score(e.score)
            try:
                s = e.score(xt, jnp.float32(t), e.condition)
            except Exception as exc:  # a clear message naming the model, then the original error
                raise ValueError(f"score model {name} of expert {i} failed on x of shape {xt.shape} at t={t:g}: {exc}") from exc
            shape = getattr(s, "shape", None)
            if shape != xt.shape:
                raise _shape_error(i, e.score, shape, xt.shape, t)
            if isinstance(s, jax.core.Tracer):
                continue
            s = np.asarray(s)
            if not np.all(np.isfinite(s)):
                bad = int(np.sum(~np.all(np.isfinite(s), axis=-1)))
                raise ValueError(
                    f"score model {name} of expert {i} returned NaN or inf for {bad} of {xt.shape[0]} "
                    f"particles at t={t:g}"
                )
    if target.tilt is not None:
        r = target.tilt.reward(x)
        if getattr(r, "shape", None) != (num_particles,):
            raise ValueError(
                f"reward {describe_score(target.tilt.reward)} returned shape {getattr(r, 'shape', None)} for x of shape "
                f"{x.shape}: expected ({num_particles},) (one value per particle)"
            )


def _check_noise(noise, target: Target, sde: SDE):
    if noise not in NOISES:
        raise ValueError(f"unknown noise {noise!r}; choose one of {list(NOISES)}")
    b = target.total_beta
    if noise == "tempered" and b > sde.tempered_noise_max_beta:
        warnings.warn(
            f"noise='tempered' (sigma^2 = g^2 / B) with B = {b:g} > {sde.tempered_noise_max_beta:g} for the "
            f"{sde.name.upper()} SDE: the target is an unstable fixed point of this SDE and the error does not "
            "shrink with N or the step size (Skreta et al. 2025); use noise='target'",
            UserWarning,
            stacklevel=3,
        )


def _grid_inputs(sde: SDE, num_steps: int, release_mask, potential_mask):
    grid = np.asarray(sde.time_grid(num_steps), np.float64)
    k = len(grid) - 1
    t_prev = np.concatenate([[grid[0]], grid[:-1]])
    t_next = np.concatenate([grid[1:], [grid[-1]]])
    last = np.zeros(k + 1, bool)
    last[-1] = True
    return {
        "t_prev": jnp.asarray(t_prev, jnp.float32),
        "t": jnp.asarray(grid, jnp.float32),
        "t_next": jnp.asarray(t_next, jnp.float32),
        "release": jnp.asarray(release_mask | last),
        "potential_step": jnp.asarray(potential_mask),
        "last": jnp.asarray(last),
    }, grid


def _release_mask(grid, resample_every, window):
    k1 = len(grid)
    if isinstance(resample_every, bool) or not isinstance(resample_every, (int, np.integer)) or resample_every < 1:
        raise ValueError(f"resample_every must be an int >= 1, got {resample_every!r}")
    mask = (np.arange(k1) % int(resample_every)) == 0
    if window is not None:
        try:
            lo, hi = (float(v) for v in window)
        except (TypeError, ValueError):
            raise ValueError(f"window must be a pair (t_lo, t_hi), got {window!r}") from None
        if not lo <= hi:
            raise ValueError(f"window must have t_lo <= t_hi, got {window!r}")
        mask &= (grid >= lo) & (grid <= hi)
    return mask


@functools.lru_cache(maxsize=64)
def _cached_build(target, sde, opts, potential):
    return diffusion_fk(target, sde, opts, potential)


def _build(target, sde, opts, potential):
    try:
        return _cached_build(target, sde, opts, potential)
    except TypeError:  # unhashable (e.g. array conditions): build afresh (recompiles)
        return diffusion_fk(target, sde, opts, potential)


_CHECKED: dict = {}


def _has_tracer(tree) -> bool:
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(tree))


def check_scores_once(target: Target, sde: SDE, dim: int, num_particles: int) -> None:
    """:func:`check_scores`, once per equal ``(target, sde, dim, num_particles)`` (remembered
    for hashable targets); skipped when a condition is traced (its values are unknown), and
    run with concrete values even when the caller is traced. What ``check=True`` does."""
    n = num_particles
    if _has_tracer([e.condition for e in target.experts]):
        return  # conditions traced (e.g. sample() vmapped over classes): values unknown here
    try:
        k = (target, sde, dim, n)
        hash(k)
    except TypeError:
        k = None
    if k is not None and k in _CHECKED:
        return
    with jax.ensure_compile_time_eval():  # concrete values even when sample() is traced
        check_scores(target, sde, dim, n)
    if k is not None:
        _CHECKED[k] = True


# ---------------------------------------------------------------------------------------
# diagnostics: degenerate runs


ON_DEGENERATE = ("warn", "raise", "ignore")

#: a step of the plain Euler–Maruyama move is unstable when ``h |∂drift/∂x| > 2`` (see :func:`euler_stability`)
STABILITY_LIMIT = 2.0
#: :func:`diagnose` flags a run whose ESS fell below ``max(ESS_MIN, ESS_FRACTION · N)``
ESS_MIN, ESS_FRACTION = 2.0, 0.01
#: samples farther than ``RANGE_PRIOR_STDS · sqrt(v) + data extent`` from 0 are implausible
RANGE_PRIOR_STDS, RANGE_DATA_STDS = 10.0, 10.0


class DiffusionDiagnosticWarning(UserWarning):
    """:func:`sample` found its run degenerate (see :func:`diagnose`): the samples and ``log Ẑ``
    are unreliable. ``on_degenerate="raise"`` turns it into :class:`DiffusionDiagnosticError`."""


class DiffusionDiagnosticError(RuntimeError):
    """Raised by :func:`sample` with ``on_degenerate="raise"`` for a degenerate run."""


def euler_stability(target: Target, sde, num_steps: int, noise: str = "target"):
    """Stability of the Euler–Maruyama moves of :func:`sample` on the grid of ``num_steps`` steps.

    The move ``x ← x + h (−f + c S)`` (``c = (g² + σ²)/2``, ``S = Σ β_i s_i``) is linearised at
    unit-variance data, the assumption behind the SDE's prior: ``s_i ≈ −x / (α_t² + σ_t²)``,
    so ``∂drift/∂x ≈ J_t = λ_t/2 − c_t B / (α_t² + σ_t²)``. Explicit Euler multiplies a
    deviation by ``1 + h J_t`` per step: when ``h |J_t| > 2`` (and ``J_t < 0``) the move
    overshoots and grows instead of contracting, and the samples explode (VP, ``q^3``: 10
    steps land at ``|x| ≈ 90``). At ``t = T`` the linearisation is exact for any data (the
    noised law is the prior), elsewhere it is a guide (narrower data is stiffer).

    Returns ``(ratio, min_steps)``: ``ratio = max_k h_k max(0, −J_{t_k})`` over the grid
    (unstable if ``> 2``) and, when it is, the smallest ``num_steps`` for which it is
    ``<= 2`` (``None`` when the given grid is stable).
    """
    sde = get_sde(sde)
    b = target.total_beta
    if noise not in NOISES:
        raise ValueError(f"unknown noise {noise!r}; choose one of {list(NOISES)}")

    def ratio(k):
        h, lam, g2, var = _grid_coefficients(sde, k)
        sig2 = g2 if noise == "target" else g2 / b
        jac = 0.5 * lam - 0.5 * (g2 + sig2) * b / var
        return float(np.max(h * np.maximum(0.0, -jac)))

    r = ratio(int(num_steps))
    if r <= STABILITY_LIMIT:  # the smallest stable K is at most this one: search it only when needed
        return r, None
    lo, hi = 1, max(int(num_steps), 1)
    while ratio(hi) > STABILITY_LIMIT and hi < 1 << 20:
        lo, hi = hi, hi * 2
    while lo < hi:  # smallest k with ratio(k) <= limit (ratio decreases with k)
        mid = (lo + hi) // 2
        if ratio(mid) <= STABILITY_LIMIT:
            hi = mid
        else:
            lo = mid + 1
    return r, hi


@functools.lru_cache(maxsize=256)
def _grid_coefficients(sde: SDE, num_steps: int):
    """``(h_k, λ, g², α² + σ²)`` at the left points of the grid, float64 numpy (cached per grid)."""
    grid = np.asarray(sde.time_grid(num_steps), np.float64)
    t = grid[:-1]
    with jax.ensure_compile_time_eval():
        ts = jnp.asarray(t, jnp.float32)
        lam = np.asarray(sde.lam(ts), np.float64) * np.ones_like(t)
        g2 = np.asarray(sde.g2(ts), np.float64) * np.ones_like(t)
        var = np.asarray(sde.alpha(ts), np.float64) ** 2 + np.asarray(sde.sigma(ts), np.float64) ** 2
    return grid[:-1] - grid[1:], lam, g2, var


def _data_extent(target: Target) -> float:
    """``max_k ‖μ_k‖_∞ + RANGE_DATA_STDS · max_k std_k`` over the analytic models' mixtures (0 if none)."""
    ext = 0.0
    for e in target.experts:
        q = getattr(e.score, "mixture", None)
        means, covs = getattr(q, "means", None), getattr(q, "covs", None)
        if means is None or covs is None or _has_tracer([means, covs]):
            continue
        m = np.abs(np.asarray(means, np.float64)).max()
        sd = np.sqrt(np.max(np.diagonal(np.asarray(covs, np.float64), axis1=-2, axis2=-1)))
        ext = max(ext, float(m + RANGE_DATA_STDS * sd))
    return ext


class Diagnostics(NamedTuple):
    """What :func:`diagnose` found. ``problems`` is empty for a healthy run.

    Attributes:
      min_ess: smallest ESS over the steps (and over replicates of a batched result), and the
        step ``min_ess_step`` where it occurred (``-1`` for a batched result).
      ess_floor: ``max(2, 0.01 N)``.
      max_abs: largest ``|x_j|`` over the samples (``inf`` if any is not finite); ``bound``
        the plausible range ``10 sqrt(v) + data extent``.
      finite: samples, log-weights and ``log Ẑ`` all finite.
      stability_ratio, min_stable_steps: from :func:`euler_stability`.
      problems: one sentence per rule that failed.
    """

    min_ess: float
    min_ess_step: int
    ess_floor: float
    max_abs: float
    bound: float
    finite: bool
    stability_ratio: float
    min_stable_steps: int
    problems: tuple

    @property
    def ok(self) -> bool:
        return not self.problems


def _stability_problem(ratio, min_steps, num_steps):
    return (
        f"Euler–Maruyama is unstable at this step size: with K = {num_steps} steps a step has "
        f"h |d drift/dx| = {ratio:.3g} > {STABILITY_LIMIT:g} (linearised at unit-variance data, see "
        f"euler_stability), so the moves overshoot and grow; use num_steps >= {min_steps} (the weights "
        "usually need more)"
    )


def diagnose(result: DiffusionResult, target: Target, sde, noise: str = "target") -> Diagnostics:
    """Check a :func:`sample` result for degeneracy; :func:`sample` calls it (``on_degenerate``).

    A run is **degenerate** when any of these holds (each adds a sentence to ``problems``):

    * **ESS collapse**: the ESS fell below ``max(2, 0.01 N)`` at some step (the engine's ESS
      after each reweighting; with ``resample="never"`` that is the final ESS): the
      population then descends from a handful of particles and ``log Ẑ`` is dominated by
      one weight;
    * **non-finite** samples, log-weights or ``log Ẑ``;
    * **out of range**: a sample with ``|x_j| > 10 sqrt(v) + E``, where ``v`` is the SDE's
      prior variance (the prior ``N(0, v I)`` has ``|x_j| > 10 sqrt(v)`` with probability
      ``< 1e-22`` per coordinate, and the reverse SDE maps it to data of that scale) and
      ``E = max_k ‖μ_k‖_∞ + 10 max_k std_k`` for analytic (mixture) score models, else 0;
    * **unstable steps**: :func:`euler_stability` gives ``h |J| > 2`` on the grid.

    ``result`` may be batched (from ``jax.vmap``): the rules then apply over all replicates.
    ``noise`` is the one the run used. Needs concrete values (call it outside ``jit``).
    """
    target = as_target(target)
    sde = get_sde(sde)
    x = np.asarray(result.samples, np.float64)
    ess = np.asarray(result.ess, np.float64)
    n = x.shape[-2]
    k = int(np.asarray(result.times).shape[-1]) - 1
    floor = max(ESS_MIN, ESS_FRACTION * n)
    flat = ess.reshape(-1, ess.shape[-1])
    min_ess = float(np.nanmin(ess)) if np.isfinite(ess).any() else float("nan")
    step = int(np.nanargmin(flat[0])) if flat.shape[0] == 1 and np.isfinite(flat).any() else -1
    finite = bool(np.isfinite(x).all() and np.isfinite(np.asarray(result.log_weights)).all() and np.isfinite(np.asarray(result.log_z)).all())
    max_abs = float(np.abs(x).max()) if np.isfinite(x).all() else float("inf")
    bound = RANGE_PRIOR_STDS * math.sqrt(sde.prior_var()) + _data_extent(target)
    ratio, min_steps = euler_stability(target, sde, k, noise)
    problems = []
    if not np.isfinite(ess).all() or min_ess < floor:
        where = f" at step {step} (t = {float(np.asarray(result.times).reshape(-1, k + 1)[0, step]):.3g})" if step >= 0 else ""
        problems.append(
            f"the ESS fell to {min_ess:.3g} of N = {n} particles{where}, below max({ESS_MIN:g}, {ESS_FRACTION:g} N) = {floor:g}: "
            "the population descends from a few particles and log Z is dominated by one weight"
        )
    if not finite:
        problems.append("some samples, log-weights or log Z are NaN or infinite")
    if max_abs > bound:
        out = int(np.sum(np.abs(x).max(-1) > bound)) if np.isfinite(x).all() else int(np.sum(~np.isfinite(x).all(-1)))
        problems.append(
            f"{out} of {x.reshape(-1, x.shape[-1]).shape[0]} samples lie outside the plausible range |x_j| <= {bound:.3g} "
            f"(10 prior stds + the data extent; max |x_j| = {max_abs:.3g})"
        )
    if ratio > STABILITY_LIMIT:
        problems.append(_stability_problem(ratio, min_steps, k))
    return Diagnostics(min_ess, step, floor, max_abs, bound, finite, ratio, min_steps, tuple(problems))


def _check_on_degenerate(on_degenerate):
    if on_degenerate not in ON_DEGENERATE:
        raise ValueError(f"on_degenerate must be one of {list(ON_DEGENERATE)}, got {on_degenerate!r}")


def _report(problems, on_degenerate, stacklevel):
    if not problems or on_degenerate == "ignore":
        return
    msg = (
        "dm.sample: the run is degenerate, its samples and log Z are unreliable: " + "; ".join(problems)
        + ". (on_degenerate='raise' makes this an error, 'ignore' silences it)"
    )
    if on_degenerate == "raise":
        raise DiffusionDiagnosticError(msg)
    warnings.warn(msg, DiffusionDiagnosticWarning, stacklevel=stacklevel + 1)


def sample(
    key,
    target: Target,
    sde,
    num_particles: int,
    num_steps: int = 100,
    *,
    dim: Optional[int] = None,
    fkc: bool = True,
    resample="every",
    resample_every: int = 1,
    window=None,
    noise: str = "target",
    resampling="systematic",
    potential=None,
    check: bool = True,
    on_degenerate: str = "warn",
) -> DiffusionResult:
    """Sample ``target`` with Euler–Maruyama moves and FKC weights on the SMC engine.

    Args:
      key: a ``jax.random`` key (same key, same result).
      target: a :class:`Target` (:func:`anneal`, :func:`product`, :func:`cfg`, :func:`reward_tilt`).
      sde: an :class:`~smcscale.diffusion.sde.SDE` or a name (``"vp"``, ``"ve"``, ``"edm"``).
      num_particles, num_steps: ``N`` and the number ``K`` of Euler–Maruyama steps.
      dim: the dimension ``d`` of ``x`` (inferred from analytic models).
      fkc: include the FKC weights (``False``: the naive sampler, plus any ``potential``).
      resample: ``"every"`` (κ = 1, default), ``"never"``, or an ESS threshold κ ∈ (0, 1].
      resample_every, window: release weights (and allow resampling) only every
        ``resample_every`` steps and at grid times inside ``window = (t_lo, t_hi)``.
      noise: ``"target"`` (σ = g, default) or ``"tempered"`` (σ² = g²/B; warns where unstable).
      resampling: the engine's scheme name or function.
      potential: an extra potential (:class:`smcscale.diffusion.steering.FKSteering`).
      check: validate the score models eagerly (shape, NaN) once before sampling, and let
        the engine raise on NaN weights when called eagerly.
      on_degenerate: what to do with a degenerate run (the rules of :func:`diagnose`: the ESS
        fell below ``max(2, 0.01 N)`` at some step; non-finite samples, weights or ``log Ẑ``;
        a sample with ``|x_j| > 10 sqrt(v) + E``, ``v`` the prior variance and ``E`` the
        extent of analytic mixtures; Euler–Maruyama steps past their stability bound,
        :func:`euler_stability`): ``"warn"`` (default) emits a
        :class:`DiffusionDiagnosticWarning`, ``"raise"`` raises
        :class:`DiffusionDiagnosticError` (before running, for unstable steps), ``"ignore"``
        does neither. Under ``jit``/``vmap`` only the step-size rule can be checked (at trace
        time); call :func:`diagnose` on the returned result for the rest.

    The score models must return ``(N, d)`` for ``x`` of shape ``(N, d)``; a wrong shape is a
    ``ValueError`` naming the model and both shapes. ``d`` is inferred from the models
    (:func:`infer_dim`); pass ``dim=`` for plain functions.
    """
    _check_on_degenerate(on_degenerate)
    target = as_target(target)
    sde = get_sde(sde)
    if isinstance(num_particles, bool) or not isinstance(num_particles, (int, np.integer)) or num_particles < 1:
        raise ValueError(f"num_particles must be an int >= 1, got {num_particles!r}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}")
    num_particles, num_steps = int(num_particles), int(num_steps)
    _check_noise(noise, target, sde)
    kappa = _kappa(resample)
    d = infer_dim(target, dim)
    if check:
        check_scores_once(target, sde, d, num_particles)
    grid = np.asarray(sde.time_grid(num_steps), np.float64)
    release = _release_mask(grid, resample_every, window)
    pmask = potential.schedule(num_steps) if potential is not None else np.zeros(len(grid), bool)
    inputs, grid = _grid_inputs(sde, num_steps, release, pmask)
    exact_init = all(hasattr(e.score, "log_prob") for e in target.experts)
    opts = _Options(noise, bool(fkc), d, num_particles, exact_init)
    ratio, min_steps = euler_stability(target, sde, num_steps, noise)
    if ratio > STABILITY_LIMIT and on_degenerate == "raise":  # fail before running
        _report([_stability_problem(ratio, min_steps, num_steps)], on_degenerate, 2)
    fk = _build(target, sde, opts, potential)
    res = run(
        key, fk, inputs, num_particles, ess_threshold=kappa, resampling=_keep_uniform(resampling),
        summaries={"uniform": _uniform_summary}, check=check,
    )
    uniform = res.summaries["uniform"]
    # the engine resamples before step k with the weights after step k - 1; exactly uniform
    # weights are kept in place (see _keep_uniform), which is not a resampling
    resampled = res.resampled & jnp.concatenate([jnp.zeros((1,), bool), ~uniform[:-1]])
    groups = _groups(target)
    nfe = num_particles * num_steps * target.num_experts
    calls = num_steps * len(groups)
    verifier = num_particles * ((num_steps if target.tilt is not None else 0) + (int(np.sum(pmask)) if potential is not None else 0))
    p = res.particles
    out = DiffusionResult(
        samples=p.x,
        log_weights=res.log_weights,
        log_z=res.log_z,
        log_z_trace=res.log_z_trace,
        ess=res.ess,
        resampled=resampled,
        times=inputs["t"],
        nfe=jnp.asarray(nfe, jnp.int32),
        score_calls=jnp.asarray(calls, jnp.int32),
        verifier_calls=jnp.asarray(verifier, jnp.int32),
        rewards=p.reward,
        smc=res,
    )
    if on_degenerate != "ignore":
        if isinstance(res.ess, jax.core.Tracer):  # values unknown under jit / vmap: the static rule only
            if ratio > STABILITY_LIMIT:
                _report([_stability_problem(ratio, min_steps, num_steps)], on_degenerate, 2)
        else:
            _report(diagnose(out, target, sde, noise).problems, on_degenerate, 2)
    return out


# ---------------------------------------------------------------------------------------
# the plain sampler


def integrate(key, target: Target, sde: SDE, x, times, *, noise: str = "target", ode: bool = False):
    """Euler–Maruyama (or probability-flow Euler, ``ode=True``) from ``x`` at ``times[0]`` down
    the decreasing ``times``, with the combined drift and no weights. Pure and jittable;
    ``times`` is an array ``(M + 1,)``; ``M`` score evaluations per expert."""
    groups = _groups(target)
    times = jnp.asarray(times, jnp.float32)
    keys = jax.random.split(key, times.shape[0] - 1)

    def body(x, inp):
        k, t, t_next = inp
        fl = _fields(target, groups, sde, noise, x, t, t_next, weights=False, ode=ode)
        h = t - t_next
        x = x + h * fl.drift
        if not ode:
            x = x + jnp.sqrt(_noise_var(sde, noise, target, t) * h) * jax.random.normal(k, x.shape, x.dtype)
        return x, None

    x, _ = jax.lax.scan(body, x, (keys, times[:-1], times[1:]))
    return x


def _plain(key, *, target, sde, num_particles, num_steps, dim, noise, ode):
    k0, k1 = jax.random.split(key)
    x = jnp.sqrt(sde.prior_var() / target.total_beta) * jax.random.normal(k0, (num_particles, dim), jnp.float32)
    return integrate(k1, target, sde, x, jnp.asarray(sde.time_grid(num_steps), jnp.float32), noise=noise, ode=ode)


_plain_jit = jax.jit(_plain, static_argnames=("target", "sde", "num_particles", "num_steps", "dim", "noise", "ode"))


def euler_maruyama(
    key,
    target: Target,
    sde,
    num_particles: int,
    num_steps: int = 100,
    *,
    dim: Optional[int] = None,
    noise: str = "target",
    ode: bool = False,
    check: bool = True,
) -> PlainResult:
    """The plain (naive) sampler: ``x_T ~ N(0, v/B)`` then ``num_steps`` Euler–Maruyama steps
    with the combined drift of :func:`sample`, no weights and no resampling (one ``lax.scan``)."""
    target = as_target(target)
    sde = get_sde(sde)
    _check_noise(noise, target, sde)
    d = infer_dim(target, dim)
    if check:
        check_scores_once(target, sde, d, int(num_particles))
    kw = dict(target=target, sde=sde, num_particles=int(num_particles), num_steps=int(num_steps), dim=d, noise=noise, ode=ode)
    # a target that cannot be a static argument (a traced condition: we are inside someone's
    # trace already, or a large array) is integrated inline, without a jit of its own
    x = _plain_jit(key, **kw) if target.hashable else _plain(key, **kw)
    groups = _groups(target)
    return PlainResult(
        x, jnp.asarray(int(num_particles) * int(num_steps) * target.num_experts, jnp.int32), jnp.asarray(int(num_steps) * len(groups), jnp.int32)
    )
