r"""FK steering (reward potentials on x̂_0) and the noise-search baselines.

FK steering
-----------
Singhal, Horvitz, Teehan, Ren, Yu, McKeown & Ranganath (2025), "A General Framework for
Inference-time Scaling and Steering of Diffusion Models" (ICML), target

    p(x_0) exp(λ r(x_0))

with intermediate rewards ``r_k = r(x̂_0(x_k))`` of the Tweedie estimate
``x̂_0 = (x + σ_t² s) / α_t`` at the steps of a schedule (every ``every`` steps; the last
step uses the sample itself), and potentials

==========  ===================================  ==================================================
potential   ``log G_k`` at a scheduled step      population reward carried by a particle
==========  ===================================  ==================================================
``diff``    ``λ (r_k − r_{k'})``                 ``r_{k'}``, the previous scheduled reward (0 at first)
``max``     ``λ max_{j ≤ k} r_j``                running max
``sum``     ``λ Σ_{j ≤ k} r_j``                  running sum
``rt``      ``λ r_k``                            —
==========  ===================================  ==================================================

At the last step every type uses the **terminal correction** ``log G_K = λ r(x_K) − Σ_{k<K}
log G_k`` (the sum over the particle's own lineage, carried with it), so the product of
potentials along every lineage is ``exp(λ r(x_K))``: all four target the tilted law, and
differ only in how they steer on the way (``diff`` telescopes and needs no correction).
The carried quantities travel through resampling with the particle (they are part of the
particle state), and weights that are not resampled are **carried**, never dropped (the
reference code's ESS-adaptive path drops them; its issue #12).

It runs on the same Feynman–Kac model as FKC (:func:`smcscale.diffusion.fkc.sample` with
``potential=FKSteering(...)``), so steering composes with FKC targets (e.g. CFG + reward)
and with any resampling option; :func:`fk_steering` is the shortcut that releases weights
and resamples only at the scheduled steps, as in the paper.

Noise search (Ma, Tong, Jia, Hu, Su, Zhang, Yang, Li, Jaakkola, Jia & Xie 2025,
"Inference-Time Scaling for Diffusion Models beyond Scaling Denoising Steps")
--------------------------------------------------------------------------------------
The sample is a deterministic function of the initial noise under the probability-flow
ODE (``ode=True``), so one can search over noises with a verifier:

* :func:`random_search`: ``C`` noises, keep the best ``keep`` samples (best-of-N);
* :func:`zero_order_search`: a pivot noise ``n`` and ``C`` neighbours
  ``√(1 − ρ²) n + ρ ε`` (``ε`` fresh noise: the neighbours are still prior draws), move to
  the best if it beats the pivot, for ``iterations`` rounds;
* :func:`path_search`: ``N`` paths denoised to ``t_start``; then repeatedly each path is
  copied ``M`` times, re-noised forward by ``Δf`` grid steps with the exact forward kernel,
  denoised by ``Δb > Δf`` steps, scored on ``x̂_0``, and the best ``N`` kept, until ``t_min``.

Budgets (totals over the run, as for :func:`~smcscale.diffusion.fkc.sample`): ``nfe`` =
score-model evaluations of one sample row (candidates × steps × experts, plus one
evaluation per ``x̂_0`` in path search), ``verifier_calls`` = reward evaluations of one sample.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from .fkc import DiffusionResult, as_target, check_scores_once, denoise_target, infer_dim, integrate, sample
from .sde import get_sde

__all__ = [
    "POTENTIALS",
    "FKSteering",
    "fk_steering",
    "SearchResult",
    "random_search",
    "zero_order_search",
    "path_search",
]

POTENTIALS = ("diff", "max", "sum", "rt")


class FKSteering(NamedTuple):
    """An FK-steering potential for :func:`smcscale.diffusion.fkc.sample` (see the module docstring).

    ``reward(x0 [N, d]) -> [N]``; ``lam`` the tilt ``λ``; ``potential`` one of
    :data:`POTENTIALS`; rewards are computed at steps ``0, every, 2 every, ...`` and at the
    last step.
    """

    reward: Callable
    lam: float
    potential: str = "diff"
    every: int = 20

    def validate(self) -> "FKSteering":
        if not callable(self.reward):
            raise TypeError("reward must be a function x0 [N, d] -> [N]")
        if self.potential not in POTENTIALS:
            raise ValueError(f"unknown steering potential {self.potential!r}; choose one of {list(POTENTIALS)}")
        if isinstance(self.lam, bool) or not isinstance(self.lam, numbers.Real) or not math.isfinite(self.lam):
            raise ValueError(f"lam must be a finite number, got {self.lam!r}")
        if isinstance(self.every, bool) or not isinstance(self.every, (int, np.integer)) or self.every < 1:
            raise ValueError(f"every must be an int >= 1, got {self.every!r}")
        return self

    def schedule(self, num_steps: int):
        k = np.arange(int(num_steps) + 1)
        return (k % int(self.every) == 0) | (k == int(num_steps))

    def init(self, n: int):
        start = -jnp.inf if self.potential == "max" else 0.0
        return (jnp.full((n,), start, jnp.float32), jnp.zeros((n,), jnp.float32))

    def log_potential(self, state, x, x0hat, t, last):
        r_pop, log_prod = state
        r = jnp.asarray(self.reward(x0hat), jnp.float32)
        lam = jnp.float32(self.lam)
        if self.potential == "diff":
            lp = lam * (r - jnp.where(jnp.isfinite(r_pop), r_pop, 0.0))
            r_pop = r
        elif self.potential == "max":
            r_pop = jnp.maximum(r, r_pop)
            lp = lam * r_pop
        elif self.potential == "sum":
            r_pop = r_pop + r
            lp = lam * r_pop
        else:  # rt
            lp = lam * r
        lp = jnp.where(last, lam * r - log_prod, lp)
        return lp, (r_pop, log_prod + lp), r


def fk_steering(
    key,
    target,
    sde,
    reward: Callable,
    num_particles: int,
    num_steps: int = 100,
    *,
    lam: float = 1.0,
    potential: str = "diff",
    every: int = 20,
    resample="every",
    resampling="systematic",
    fkc: bool = True,
    dim: Optional[int] = None,
    noise: str = "target",
    check: bool = True,
    on_degenerate: str = "warn",
) -> DiffusionResult:
    """FK steering of ``target`` towards ``exp(λ r(x_0))``: rewards, weight release and
    resampling at steps ``0, every, 2 every, ...`` (``resample`` may be an ESS threshold).

    ``target`` is a :class:`~smcscale.diffusion.fkc.Target` (its FKC weights are included
    when ``fkc=True``; a single score model has none) or a bare score model (sampled as is).
    Returns a :class:`~smcscale.diffusion.fkc.DiffusionResult` (``rewards``: ``r(x_K)``).
    ``on_degenerate`` as in :func:`~smcscale.diffusion.fkc.sample`.
    """
    target = as_target(target, allow_score=True)
    steer = FKSteering(reward, lam, potential, every).validate()
    return sample(
        key, target, sde, num_particles, num_steps, dim=dim, fkc=fkc, resample=resample, resample_every=int(every),
        noise=noise, resampling=resampling, potential=steer, check=check, on_degenerate=on_degenerate,
    )


# ---------------------------------------------------------------------------------------
# noise search


class SearchResult(NamedTuple):
    """Best samples found (``(keep, d)``, best first), their verifier ``scores``, the budget
    (``nfe`` score evaluations, ``verifier_calls``), and the best score after each round."""

    samples: Any
    scores: Any
    nfe: int
    verifier_calls: int
    history: Any


def _prepare(target, sde, dim, n, check):
    target = as_target(target, allow_score=True)
    sde = get_sde(sde)
    d = infer_dim(target, dim)
    if check:
        check_scores_once(target, sde, d, n)
    return target, sde, d


def _denoise(key, x, times, *, target, sde, noise, ode):
    return integrate(key, target, sde, x, times, noise=noise, ode=ode)


_denoise_static = jax.jit(_denoise, static_argnames=("target", "sde", "noise", "ode"))


def _denoise_jit(key, x, times, *, target, sde, noise, ode):
    """Jitted with the target static; a target that cannot be static (traced or large
    array conditions, see :class:`~smcscale.diffusion.fkc.Expert`) runs inline."""
    f = _denoise_static if target.hashable else _denoise
    return f(key, x, times, target=target, sde=sde, noise=noise, ode=ode)


def _verify(verifier, x):
    s = jnp.asarray(verifier(x), jnp.float32)
    if s.shape != (x.shape[0],):
        raise ValueError(f"verifier must return shape ({x.shape[0]},) (one score per sample), got {s.shape}")
    return jnp.where(jnp.isnan(s), -jnp.inf, s)


def _positive_int(v, name):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    return int(v)


def random_search(key, target, sde, verifier: Callable, num_candidates: int, num_steps: int = 100, *, keep: int = 1,
                  dim: Optional[int] = None, ode: bool = True, noise: str = "target", check: bool = True) -> SearchResult:
    """Best-of-``num_candidates`` over initial noises (probability-flow ODE by default)."""
    c, k = _positive_int(num_candidates, "num_candidates"), _positive_int(num_steps, "num_steps")
    keep = min(_positive_int(keep, "keep"), c)
    target, sde, d = _prepare(target, sde, dim, c, check)
    k0, k1 = jax.random.split(key)
    x = jnp.sqrt(sde.prior_var() / target.total_beta) * jax.random.normal(k0, (c, d), jnp.float32)
    times = jnp.asarray(sde.time_grid(k), jnp.float32)
    x = _denoise_jit(k1, x, times, target=target, sde=sde, noise=noise, ode=ode)
    s = _verify(verifier, x)
    order = jnp.argsort(-s)[:keep]
    return SearchResult(x[order], s[order], c * k * target.num_experts, c, jnp.max(s)[None])


def zero_order_search(key, target, sde, verifier: Callable, num_neighbors: int, num_iterations: int, num_steps: int = 100,
                      *, rho: float = 0.5, dim: Optional[int] = None, noise: str = "target", check: bool = True) -> SearchResult:
    """Zero-order search over the initial noise of the probability-flow ODE (Ma et al. 2025):
    ``num_iterations`` rounds of ``num_neighbors`` neighbours ``√(1 − ρ²) n + ρ ε`` of the pivot ``n``."""
    m, iters, k = (_positive_int(v, nm) for v, nm in ((num_neighbors, "num_neighbors"), (num_iterations, "num_iterations"), (num_steps, "num_steps")))
    if not 0.0 < float(rho) <= 1.0:
        raise ValueError(f"rho must be in (0, 1], got {rho}")
    target, sde, d = _prepare(target, sde, dim, m, check)
    scale = jnp.sqrt(sde.prior_var() / target.total_beta)
    times = jnp.asarray(sde.time_grid(k), jnp.float32)
    key, k0, k1 = jax.random.split(key, 3)
    pivot = scale * jax.random.normal(k0, (1, d), jnp.float32)
    best_x = _denoise_jit(k1, pivot, times, target=target, sde=sde, noise=noise, ode=True)
    best = _verify(verifier, best_x)[0]
    nfe, calls, hist = k * target.num_experts, 1, [float(best)]
    for _ in range(iters):
        key, ke, kd = jax.random.split(key, 3)
        eps = scale * jax.random.normal(ke, (m, d), jnp.float32)
        cand = jnp.sqrt(1.0 - rho**2) * pivot + rho * eps
        xs = _denoise_jit(kd, cand, times, target=target, sde=sde, noise=noise, ode=True)
        s = _verify(verifier, xs)
        nfe += m * k * target.num_experts
        calls += m
        j = int(jnp.argmax(s))
        if float(s[j]) > float(best):
            pivot, best, best_x = cand[j : j + 1], s[j], xs[j : j + 1]
        hist.append(float(best))
    return SearchResult(best_x, jnp.asarray([best]), nfe, calls, jnp.asarray(hist))


_x0hat_static = jax.jit(denoise_target, static_argnames=("target", "sde"))


def _x0hat_jit(x, t, *, target, sde):
    f = _x0hat_static if target.hashable else denoise_target
    return f(target, sde, x, t)


def path_search(key, target, sde, verifier: Callable, num_paths: int, num_branches: int, num_steps: int = 100, *,
                start_step: Optional[int] = None, delta_f: int = 5, delta_b: int = 10, dim: Optional[int] = None,
                ode: bool = False, noise: str = "target", check: bool = True) -> SearchResult:
    """Search over paths (Ma et al. 2025) on the grid of ``num_steps`` steps.

    ``num_paths`` (N) paths are denoised to grid index ``start_step`` (default ``num_steps // 2``);
    then each round copies every path ``num_branches`` (M) times, re-noises each copy forward by
    ``delta_f`` grid steps (exact forward kernel), denoises it by ``delta_b > delta_f`` steps
    (Euler–Maruyama by default, so the copies differ), scores ``x̂_0`` with the verifier and keeps
    the best N, until the last grid index; the final N samples are scored on themselves.
    """
    n, m, k = (_positive_int(v, nm) for v, nm in ((num_paths, "num_paths"), (num_branches, "num_branches"), (num_steps, "num_steps")))
    df, db = _positive_int(delta_f, "delta_f"), _positive_int(delta_b, "delta_b")
    if db <= df:
        raise ValueError(f"delta_b must exceed delta_f (denoise further than re-noised), got {delta_b} <= {delta_f}")
    start = k // 2 if start_step is None else int(start_step)
    if not 0 <= start <= k:
        raise ValueError(f"start_step must be in [0, {k}], got {start}")
    target, sde, d = _prepare(target, sde, dim, n * m, check)
    grid = np.asarray(sde.time_grid(k), np.float64)
    e = target.num_experts
    key, k0, k1 = jax.random.split(key, 3)
    x = jnp.sqrt(sde.prior_var() / target.total_beta) * jax.random.normal(k0, (n, d), jnp.float32)
    x = _denoise_jit(k1, x, jnp.asarray(grid[: start + 1], jnp.float32), target=target, sde=sde, noise=noise, ode=ode)
    nfe, calls, hist = n * start * e, 0, []
    i = start
    while i < k:
        i_up = max(i - df, 0)
        i_down = min(i_up + db, k)
        key, kn, kd = jax.random.split(key, 3)
        xs = jnp.repeat(x, m, axis=0)
        a, s = sde.transition(jnp.float32(grid[i]), jnp.float32(grid[i_up]))
        xs = a * xs + s * jax.random.normal(kn, xs.shape, xs.dtype)
        xs = _denoise_jit(kd, xs, jnp.asarray(grid[i_up : i_down + 1], jnp.float32), target=target, sde=sde, noise=noise, ode=ode)
        nfe += n * m * (i_down - i_up) * e
        if i_down < k:
            x0 = _x0hat_jit(xs, jnp.float32(grid[i_down]), target=target, sde=sde)
            nfe += n * m * e
        else:
            x0 = xs
        sc = _verify(verifier, x0)
        calls += n * m
        top = jnp.argsort(-sc)[:n]
        x, best = xs[top], sc[top]
        hist.append(float(best[0]))
        i = i_down
    if not hist:  # start_step == num_steps: nothing to search, just score
        best = _verify(verifier, x)
        calls += n
        hist.append(float(jnp.max(best)))
    order = jnp.argsort(-best)
    return SearchResult(x[order], best[order], nfe, calls, jnp.asarray(hist))
