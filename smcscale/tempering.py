r"""SMC samplers for static targets: adaptive tempering, run on the core engine.

Target and path
---------------
A static posterior ``π(x) ∝ p_0(x) L(x)`` is reached through the tempered path

    π_λ(x) = p_0(x) L(x)^λ / Z_λ,      Z_λ = ∫ p_0(x) L(x)^λ dx,     λ: 0 → 1,

so that ``Z_1`` is the model evidence (Neal 2001; Del Moral, Doucet & Jasra 2006,
"Sequential Monte Carlo samplers", JRSS B 68). The schedule ``0 = λ_0 < λ_1 < ... <
λ_T = 1`` is chosen on the fly (Jasra, Stephens, Doucet & Tsagaris 2011, "Inference for
Lévy-driven stochastic volatility models via adaptive SMC", Scand. J. Stat. 38): ``λ_t`` is
the largest value such that the ESS of the incremental weights ``L(x^i)^{λ_t - λ_{t-1}}``
equals ``ess_target · N``, found by bisection (``λ_t = 1`` when even that keeps the ESS
above the target).

The Feynman–Kac model (the order we run, and why it is valid)
-------------------------------------------------------------
Everything runs on :func:`smcscale.run` with ``ess_threshold = 1`` (resample before every
move), one engine step per tempering step; there is no second SMC loop. The particle state
(:class:`TemperedState`) carries the position ``x``, the cached ``log p_0(x)`` and
``ℓ(x) = log L(x)``, and the current and previous temperature (replicated per particle, so
that they travel through the engine's resampling gathers). With ``K_λ`` a π_λ-invariant
MCMC kernel (random-walk Metropolis or HMC, below):

* ``t = 0``: ``M_0 = p_0``, ``G_0 = 1`` (``λ_0 = 0``).
* ``t ≥ 1``: the engine resamples (``W_{t-1}``), then the transition

  1. moves every particle with ``K_{λ_{t-1}}`` (``num_mcmc_steps`` times), i.e.
     ``M_t = K_{λ_{t-1}}^k``; the move is skipped at ``t = 1`` (the particles are iid from
     the prior, nothing to rejuvenate) and once the previous step was already at ``λ = 1``;
  2. chooses ``λ_t`` by bisection from the *moved* population ``{ℓ(x_t^i)}`` and stores it
     in the state;

  and the potential is ``G_t(x_t) = L(x_t)^{λ_t - λ_{t-1}}``.

This is the ordering of the ``particles`` library's ``AdaptiveTempering`` (Chopin &
Papaspiliopoulos 2020, ch. 17: the move uses the current exponent, the new one is solved
for on the moved particles). BlackJAX's ``adaptive_tempered_smc`` also resamples, moves with
``K_{λ_{t-1}}`` and reweights, but solves for ``λ_t`` *before* resampling, on the previous
(still weighted) particles as if they were equally weighted, so its realised ESS differs
from the target (on the benchmark regression it takes ~15 steps where this takes ~11).
Validity, by induction: if the resampled particles at
the start of step ``t`` are (approximately) distributed as ``π_{λ_{t-1}}``, the π_{λ_{t-1}}-
invariant move keeps them so, and weighting by ``L^{λ_t - λ_{t-1}}`` targets ``π_{λ_t}``
with normaliser ratio ``Z_{λ_t} / Z_{λ_{t-1}} = E_{π_{λ_{t-1}}}[L^{λ_t - λ_{t-1}}]``. The
engine's increment after a resample is ``log mean_i G_t(x_t^i)``, so

    log Ẑ = Σ_t log mean_i exp((λ_t - λ_{t-1}) ℓ(x_t^i))

with ``Ẑ`` unbiased for a fixed schedule. Choosing ``λ_t`` and the MCMC scales from the
current population (adaptive SMC) makes the estimate consistent rather than exactly
unbiased (Beskos, Jasra, Kantas & Thiery 2016, "On the convergence of adaptive SMC
methods", Ann. Appl. Probab. 26).

Adaptive number of steps
------------------------
The engine scans a fixed ``max_steps``. Once ``λ`` has reached 1, one more step moves the
resampled population with ``K_1`` (so the final particles are rejuvenated and equally
weighted); every later step has ``G = 1`` (adds 0 to ``log Z``),
skips its MCMC moves (``lax.cond``), and its resampling is the identity (weights are then
exactly uniform). :attr:`TemperedResult.num_steps` is the number of tempering steps ``T``
(``λ_T = 1``), :attr:`TemperedResult.lambdas` the schedule padded with ones. If ``λ < 1``
after ``max_steps`` (e.g. a very informative likelihood and too small a ``max_steps``),
:func:`tempered_smc` raises :class:`TemperingError` when called eagerly with
``check=True``; under ``jit``/``vmap`` (or ``check=False``) the result has
``converged = False`` and ``log_z`` then estimates ``log Z_{λ_last}``, not the evidence.

MCMC moves
----------
* ``"rwm"``: random-walk Metropolis with proposal ``x' = x + s ⊙ ε``, ``ε ~ N(0, I)``,
  ``s = (2.38 / √d) · sd`` where ``sd`` is the per-coordinate standard deviation of the
  current (resampled) population (Roberts, Gelman & Gilks 1997 scaling; the population
  estimate as in Chopin 2002 and Jasra et al. 2011).
* ``"hmc"``: numpyro's functional HMC kernel (:func:`numpyro.infer.hmc.hmc` with
  ``potential_fn_gen`` so that the tempered potential changes with ``λ``), vmapped over
  particles, with a diagonal inverse mass matrix equal to the population variance. It uses
  ``num_leapfrog`` steps of size ``ε · U(0.5, 1.5)`` (a random jitter per particle, against
  periodic trajectories); ``ε`` is either fixed (``step_size=``) or adapted between tempering
  steps, ``log ε ← log ε + 2 (ā - target_accept)`` with ``ā`` the mean acceptance
  probability of the previous step (cf. Buchholz, Chopin & Jacob 2021, "Adaptive tuning of
  Hamiltonian Monte Carlo within sequential Monte Carlo", Bayesian Anal. 16).

The mean acceptance probability of every step is reported (NaN where no move was made).

Waste-free SMC (Dau & Chopin 2022, "Waste-free sequential Monte Carlo", JRSS B 84)
----------------------------------------------------------------------------------
With ``waste_free=True`` only ``M = N / P`` particles are resampled (``P`` =
``chain_length``); each starts a chain of ``P - 1`` MCMC steps and *all* ``N = M P`` states
are kept as the new population, weighted by ``G_t``; ``log Z`` still uses the mean over all
``N``. With this engine: the resampling function passed to :func:`smcscale.run` draws ``M``
ancestors with the chosen (unbiased) scheme and tiles them to length ``N``; the transition
reads the first ``M`` rows as the chain starts. When the weights are exactly uniform (the
steps after ``λ = 1``) it returns a random permutation instead, whose first ``M`` rows are a
uniform subset (still unbiased) and which loses no particle.

Targets
-------
* a :class:`TemperingTarget` of plain functions (log prior and log-likelihood of *one*
  particle, a batched prior sampler);
* a **numpyro model** (any callable that is not a :class:`TemperingTarget`), with
  ``model_args``/``model_kwargs``: latent sample sites form the prior, observed sites (and
  ``numpyro.factor`` terms) the likelihood; the sampler works in numpyro's unconstrained
  space (the log-Jacobian of ``biject_to(support)`` is part of ``log p_0``), and the returned
  ``particles`` are the constrained values plus deterministic sites. Discrete latent sites
  are not supported.

Degenerate input (documented and tested)
----------------------------------------
* A particle drawn from the prior whose ``log p_0`` or ``ℓ`` is NaN or ``+inf`` is
  invalid: eagerly (``check=True``) :func:`tempered_smc` raises ``ValueError``; otherwise it
  gets weight zero (``-inf``) at ``t = 0`` and is counted in ``smc_result.num_invalid[0]``.
  A MCMC proposal with a NaN log-density is rejected (treated as ``-inf``).
* A particle with ``ℓ = -inf`` gets weight zero at the first positive ``λ``.
* Non-converging ``λ``: see above (:class:`TemperingError` / ``converged = False``).
* Unknown ``mcmc`` or resampling names and inconsistent sizes raise ``ValueError`` at once.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from .fk import FeynmanKac
from .resampling import get_resampler
from .smc import ParticleCollapseError, SMCResult, run
from .weights import log_ess

__all__ = [
    "TemperingTarget",
    "TemperedState",
    "TemperingConfig",
    "TemperedResult",
    "TemperingError",
    "MCMC_KERNELS",
    "from_numpyro",
    "tempering_fk",
    "next_temperature",
    "tempered_smc",
]

MCMC_KERNELS = ("rwm", "hmc")


class TemperingError(RuntimeError):
    """The tempering schedule did not reach λ = 1 within ``max_steps`` steps."""


# ---------------------------------------------------------------------------------------
# targets


class TemperingTarget(NamedTuple):
    """A static target ``π ∝ p_0 L`` as plain functions.

    Attributes:
      log_prior: ``x -> log p_0(x)`` for **one** particle ``x`` (any pytree), a scalar.
      log_likelihood: ``x -> log L(x)`` for one particle, a scalar.
      sample_prior: ``(key, n) -> x`` with every leaf of shape ``(n, ...)``, iid from ``p_0``.
      postprocess: optional ``x -> value`` for one particle, applied to the final particles
        (e.g. map unconstrained to constrained values); identity if ``None``.
      log_densities: optional ``x -> (log p_0(x), log L(x))`` computing both at once
        (used instead of the two functions above when given; :func:`from_numpyro` sets it
        so the model is traced once per evaluation).

    The functions must be hashable (plain functions are) so that compiled code is reused
    across calls with the same target; for HMC they must be differentiable.
    """

    log_prior: Callable
    log_likelihood: Callable
    sample_prior: Callable
    postprocess: Optional[Callable] = None
    log_densities: Optional[Callable] = None


def from_numpyro(model, *model_args, **model_kwargs) -> TemperingTarget:
    """A :class:`TemperingTarget` for a numpyro model, in unconstrained space.

    A particle is the dict ``{site: unconstrained value}`` of the model's latent sample
    sites. ``log p_0(u) = Σ_latent log p(site | ...) + Σ log |det J_{biject_to(support)}(u)|``
    and ``log L(u) = Σ_observed log p(obs | ...)`` (``numpyro.factor`` terms are observed
    sites, so they count as likelihood), both from one trace of the model with the
    constrained values substituted. ``postprocess`` returns the constrained latent values and
    the deterministic sites (``numpyro.infer.util.constrain_fn``). Site ``scale`` and
    ``mask`` handlers are honoured (through the site's distribution and scale).
    """
    import numpyro.distributions as dist
    from numpyro import handlers
    from numpyro.infer.util import constrain_fn

    args, kwargs = tuple(model_args), dict(model_kwargs)

    def _latent_sites(tr):
        sites = {
            name: site
            for name, site in tr.items()
            if site["type"] == "sample" and not site["is_observed"]
        }
        for name, site in sites.items():
            if site["fn"].support.is_discrete:
                raise ValueError(
                    f"numpyro site {name!r} is a discrete latent variable; tempered SMC with "
                    "gradient-free or gradient-based moves needs continuous latents (marginalise it out)"
                )
        if not sites:
            raise ValueError("the numpyro model has no latent sample sites: nothing to infer")
        return sites

    def log_densities(u):
        def substitute_fn(site):
            if site["type"] == "sample" and site["name"] in u:
                return dist.biject_to(site["fn"].support)(u[site["name"]])
            return None

        tr = handlers.trace(handlers.substitute(model, substitute_fn=substitute_fn)).get_trace(*args, **kwargs)
        log_prior = jnp.zeros(())
        log_lik = jnp.zeros(())
        for name, site in tr.items():
            if site["type"] != "sample":
                continue
            value = site["value"]
            lp = site["fn"].log_prob(value)
            scale = site["scale"]
            if scale is not None:
                lp = scale * lp
            lp = jnp.sum(lp)
            if site["is_observed"]:
                log_lik = log_lik + lp
            elif name in u:
                log_prior = log_prior + lp
                support = site["fn"].support
                if support is not dist.constraints.real:
                    t = dist.biject_to(support)
                    log_prior = log_prior + jnp.sum(t.log_abs_det_jacobian(u[name], value))
            else:
                raise ValueError(
                    f"numpyro site {name!r} is latent but has no value in the particle; "
                    "does the model's structure depend on random values?"
                )
        return log_prior, log_lik

    def sample_prior(key, n):
        def one(k):
            tr = handlers.trace(handlers.seed(model, k)).get_trace(*args, **kwargs)
            sites = _latent_sites(tr)
            return {name: dist.biject_to(s["fn"].support).inv(s["value"]) for name, s in sites.items()}

        return jax.vmap(one)(jax.random.split(key, n))

    def postprocess(u):
        return constrain_fn(model, args, kwargs, u, return_deterministic=True)

    return TemperingTarget(
        log_prior=lambda u: log_densities(u)[0],
        log_likelihood=lambda u: log_densities(u)[1],
        sample_prior=sample_prior,
        postprocess=postprocess,
        log_densities=log_densities,
    )


class _Flat(NamedTuple):
    """A target on flat positions ``z`` of shape ``(d,)``."""

    dim: int
    log_densities: Callable  # z -> (log p0, log L)
    sample: Callable  # (key, n) -> (n, d)
    unravel: Callable  # z -> pytree
    postprocess: Callable  # z -> output pytree


def _flatten_target(target: TemperingTarget) -> _Flat:
    shapes = jax.eval_shape(lambda k: target.sample_prior(k, 2), jax.random.key(0))
    for leaf in jax.tree_util.tree_leaves(shapes):
        if len(leaf.shape) < 1 or leaf.shape[0] != 2:
            raise ValueError(
                "sample_prior(key, n) must return a pytree whose leaves have leading axis n; "
                f"with n=2 got a leaf of shape {leaf.shape}"
            )
    template = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape[1:], s.dtype), shapes)
    flat0, unravel = ravel_pytree(template)
    if flat0.ndim != 1 or flat0.shape[0] < 1:
        raise ValueError("the particle has no components (empty pytree)")
    if not jnp.issubdtype(flat0.dtype, jnp.floating):
        raise TypeError(f"particles must be floating point (continuous), got dtype {flat0.dtype}")
    dim = int(flat0.shape[0])

    if target.log_densities is not None:

        def log_densities(z):
            lp, ll = target.log_densities(unravel(z))
            return jnp.asarray(lp, flat0.dtype), jnp.asarray(ll, flat0.dtype)

    else:

        def log_densities(z):
            x = unravel(z)
            return jnp.asarray(target.log_prior(x), flat0.dtype), jnp.asarray(target.log_likelihood(x), flat0.dtype)

    def sample(key, n):
        x = target.sample_prior(key, n)
        return jax.vmap(lambda p: ravel_pytree(p)[0])(x)

    post = target.postprocess

    def postprocess(z):
        x = unravel(z)
        return x if post is None else post(x)

    return _Flat(dim, log_densities, sample, unravel, postprocess)


# ---------------------------------------------------------------------------------------
# state, config


class TemperedState(NamedTuple):
    """Particle state of the tempering FK model (every leaf has leading axis ``N``).

    ``lam``, ``lam_prev``, ``acceptance`` and ``step_size`` are the same for all particles
    (replicated so that they follow the engine's gathers).
    """

    position: jax.Array  # (N, d) flat (unconstrained) positions
    log_prior: jax.Array  # (N,) log p_0(x)
    log_lik: jax.Array  # (N,) ℓ(x) = log L(x)
    lam: jax.Array  # (N,) λ_t
    lam_prev: jax.Array  # (N,) λ_{t-1}
    acceptance: jax.Array  # (N,) mean acceptance probability of this step's move (NaN: none)
    step_size: jax.Array  # (N,) HMC step size used next (RWM: unused)


class TemperingConfig(NamedTuple):
    """Static settings of the tempered sampler (hashable); see :func:`tempered_smc`."""

    num_particles: int
    ess_target: float = 0.5
    mcmc: str = "rwm"
    num_mcmc_steps: int = 10
    waste_free: bool = False
    chain_length: int = 10
    max_steps: int = 100
    resampling: Any = "systematic"
    rwm_scale: Optional[float] = None  # None: 2.38 / sqrt(d)
    step_size: Optional[float] = None  # None: adaptive (starts at 0.5)
    num_leapfrog: int = 10
    target_accept: float = 0.8
    bisection_steps: int = 40


def _validate_config(cfg: TemperingConfig) -> TemperingConfig:
    def pos_int(name, v, lo=1):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
        return int(v)

    n = pos_int("num_particles", cfg.num_particles, 2)
    if cfg.mcmc not in MCMC_KERNELS:
        raise ValueError(f"unknown mcmc kernel {cfg.mcmc!r}; choose one of {list(MCMC_KERNELS)}")
    try:
        rho = float(cfg.ess_target)
    except (TypeError, ValueError):
        raise TypeError(f"ess_target must be a number in (0, 1), got {cfg.ess_target!r}") from None
    if not 0.0 < rho < 1.0:
        raise ValueError(f"ess_target must be in (0, 1) (fraction of N kept by each tempering step), got {rho}")
    get_resampler(cfg.resampling)  # raises on unknown names
    pos_int("num_mcmc_steps", cfg.num_mcmc_steps)
    pos_int("max_steps", cfg.max_steps, 2)
    pos_int("num_leapfrog", cfg.num_leapfrog)
    pos_int("bisection_steps", cfg.bisection_steps)
    if cfg.waste_free:
        p = pos_int("chain_length", cfg.chain_length, 2)
        if n % p:
            raise ValueError(
                f"waste-free SMC needs num_particles divisible by chain_length: {n} = M * {p} has no integer M"
            )
    if cfg.step_size is not None and not float(cfg.step_size) > 0:
        raise ValueError(f"step_size must be positive (or None for adaptive), got {cfg.step_size}")
    if cfg.rwm_scale is not None and not float(cfg.rwm_scale) > 0:
        raise ValueError(f"rwm_scale must be positive (or None for 2.38/sqrt(d)), got {cfg.rwm_scale}")
    if not 0.0 < float(cfg.target_accept) < 1.0:
        raise ValueError(f"target_accept must be in (0, 1), got {cfg.target_accept}")
    return cfg._replace(num_particles=n, ess_target=rho, waste_free=bool(cfg.waste_free))


# ---------------------------------------------------------------------------------------
# the pieces


def _tempered(lam, log_prior, log_lik):
    """``log p_0 + λ ℓ`` with ``0 · (-inf) = 0``."""
    return log_prior + jnp.where(lam == 0, 0.0, lam * log_lik)


def _clean(v):
    """NaN / +inf log-densities are invalid: treat them as -inf."""
    return jnp.where(jnp.isnan(v) | jnp.isposinf(v), -jnp.inf, v)


def next_temperature(log_lik, lam_prev, ess_target, bisection_steps: int = 40):
    r"""``λ_t`` for an equally weighted population with log-likelihoods ``log_lik`` at ``λ_{t-1}``.

    Returns ``λ_{t-1} + δ`` with ``δ ∈ (0, 1 - λ_{t-1}]`` the largest increment (to the
    bisection's precision, ``(1 - λ_{t-1}) 2^{-steps}``) whose incremental weights
    ``exp(δ ℓ_i)`` keep ``ESS ≥ ess_target · N``; exactly ``1`` if ``δ = 1 - λ_{t-1}`` does.
    The ESS is non-increasing in ``δ``, so bisection applies. NaN entries count as ``-inf``
    (zero weight). If no ``δ > 0`` meets the target (e.g. more than ``(1 - ess_target) N``
    particles have ``ℓ = -inf``), the smallest increment tried (at least one ulp of ``λ``) is
    returned, so that the next resampling removes the dead particles and the schedule moves on.
    """
    ll = _clean(jnp.asarray(log_lik))
    n = ll.shape[0]
    lam_prev = jnp.asarray(lam_prev, ll.dtype)
    target = jnp.log(ess_target * n).astype(ll.dtype)

    def ok(delta):
        lw = jnp.where(jnp.isneginf(ll), -jnp.inf, delta * ll)
        return log_ess(lw) >= target

    max_delta = jnp.maximum(1.0 - lam_prev, 0.0)
    done = ok(max_delta) | (max_delta <= 0)

    def bisect(_):
        def body(_, lohi):
            lo, hi = lohi
            mid = 0.5 * (lo + hi)
            good = ok(mid)
            return jnp.where(good, mid, lo), jnp.where(good, hi, mid)

        lo, _ = jax.lax.fori_loop(0, bisection_steps, body, (jnp.zeros_like(max_delta), max_delta))
        return jnp.maximum(lo, max_delta * 2.0**-bisection_steps)

    delta = jax.lax.cond(done, lambda _: max_delta, bisect, None)
    # at least one ulp of progress: an increment lost to rounding would stall the schedule
    lam = jnp.minimum(jnp.maximum(lam_prev + delta, jnp.nextafter(lam_prev, jnp.ones_like(lam_prev) * 2)), 1.0)
    return jnp.where(done, jnp.ones_like(lam), lam)


def _population_scale(z):
    sd = jnp.std(z, axis=0)
    return jnp.maximum(sd, 1e-8 * (1.0 + jnp.abs(jnp.mean(z, axis=0))))


def _rwm_kernel(flat: _Flat, lam, scale):
    """One vectorised RWM step on a batch ``(z, lp, ll)``; returns the new batch and ``min(1, α)``."""
    batched = jax.vmap(flat.log_densities)

    def step(key, z, lp, ll):
        k1, k2 = jax.random.split(key)
        zp = z + scale * jax.random.normal(k1, z.shape, z.dtype)
        lpp, llp = batched(zp)
        lpp, llp = _clean(lpp), _clean(llp)
        cur = _tempered(lam, lp, ll)
        prop = _tempered(lam, lpp, llp)
        log_a = prop - cur
        log_a = jnp.where(jnp.isnan(log_a), -jnp.inf, log_a)
        accept = jnp.log(jax.random.uniform(k2, lp.shape, z.dtype)) < log_a
        z = jnp.where(accept[:, None], zp, z)
        lp = jnp.where(accept, lpp, lp)
        ll = jnp.where(accept, llp, ll)
        return z, lp, ll, jnp.exp(jnp.minimum(log_a, 0.0))

    return step


def _hmc_kernel(flat: _Flat, lam, inv_mass, cfg: TemperingConfig):
    """numpyro's HMC kernel for ``π_λ``, vmapped over a batch; returns ``(init, step)``."""
    from numpyro.infer.hmc import hmc

    def potential_gen(lam_):
        def potential(z):
            lp, ll = flat.log_densities(z)
            return -_tempered(lam_, lp, ll)

        return potential

    init_kernel, sample_kernel = hmc(potential_fn_gen=potential_gen, algo="HMC")

    def init(key, z, eps):
        keys = jax.random.split(key, z.shape[0])

        def one(zi, ki, ei):
            return init_kernel(
                zi,
                0,
                step_size=ei,
                inverse_mass_matrix=inv_mass,
                adapt_step_size=False,
                adapt_mass_matrix=False,
                num_steps=cfg.num_leapfrog,
                trajectory_length=None,
                model_args=(lam,),
                rng_key=ki,
            )

        return jax.vmap(one)(z, keys, eps)

    def step(state):
        state = jax.vmap(lambda s: sample_kernel(s, model_args=(lam,)))(state)
        acc = jnp.where(jnp.isnan(state.accept_prob), 0.0, state.accept_prob)
        return state, acc

    return init, step


def _move(key, xp: TemperedState, lam, flat: _Flat, cfg: TemperingConfig):
    """MCMC moves invariant for ``π_lam``; returns (position, log_prior, log_lik, acceptance, step_size)."""
    n = cfg.num_particles
    z = xp.position
    if cfg.waste_free:
        m = n // cfg.chain_length
        z0, lp0, ll0 = z[:m], xp.log_prior[:m], xp.log_lik[:m]
        n_iter = cfg.chain_length - 1
    else:
        z0, lp0, ll0 = z, xp.log_prior, xp.log_lik
        n_iter = cfg.num_mcmc_steps
    keys = jax.random.split(key, n_iter + 1)
    eps = xp.step_size[0]

    if cfg.mcmc == "rwm":
        factor = cfg.rwm_scale if cfg.rwm_scale is not None else 2.38 / math.sqrt(flat.dim)
        step = _rwm_kernel(flat, lam, factor * _population_scale(z0))

        def body(carry, k):
            zz, lp, ll = carry
            zz, lp, ll, acc = step(k, zz, lp, ll)
            return (zz, lp, ll), ((zz, lp, ll) if cfg.waste_free else None, jnp.mean(acc))

        (zf, lpf, llf), (hist, accs) = jax.lax.scan(body, (z0, lp0, ll0), keys[1:])
        if cfg.waste_free:
            zs, lps, lls = hist
            zf = jnp.concatenate([z0[None], zs], axis=0).reshape(n, flat.dim)
            lpf = jnp.concatenate([lp0[None], lps], axis=0).reshape(n)
            llf = jnp.concatenate([ll0[None], lls], axis=0).reshape(n)
        return zf, lpf, llf, jnp.mean(accs), eps

    # HMC
    sd = _population_scale(z0)
    init, step = _hmc_kernel(flat, lam, sd**2, cfg)
    k_init, k_jit = jax.random.split(keys[0])
    jitter = jax.random.uniform(k_jit, (z0.shape[0],), z0.dtype, 0.5, 1.5)
    state = init(k_init, z0, eps * jitter)

    def body(state, _):
        state, acc = step(state)
        return state, (state.z if cfg.waste_free else None, jnp.mean(acc))

    state, (hist, accs) = jax.lax.scan(body, state, None, length=n_iter)
    zf = state.z
    if cfg.waste_free:
        zf = jnp.concatenate([z0[None], hist], axis=0).reshape(n, flat.dim)
    lpf, llf = jax.vmap(flat.log_densities)(zf)
    acc = jnp.mean(accs)
    if cfg.step_size is None:
        new_eps = jnp.clip(eps * jnp.exp(2.0 * (acc - cfg.target_accept)), 1e-4, 10.0)
    else:
        new_eps = eps
    return zf, _clean(lpf), _clean(llf), acc, new_eps


def _make_resampler(cfg: TemperingConfig):
    base = get_resampler(cfg.resampling)
    n = cfg.num_particles

    if not cfg.waste_free:

        def resample(key, log_weights, num_samples):
            uniform = jnp.max(log_weights) == jnp.min(log_weights)
            return jax.lax.cond(
                uniform,
                lambda: jnp.arange(num_samples, dtype=jnp.int32),
                lambda: base(key, log_weights, num_samples).astype(jnp.int32),
            )

        return resample

    m = n // cfg.chain_length

    def resample_wf(key, log_weights, num_samples):
        uniform = jnp.max(log_weights) == jnp.min(log_weights)
        return jax.lax.cond(
            uniform,
            lambda: jax.random.permutation(key, num_samples).astype(jnp.int32),
            lambda: jnp.tile(base(key, log_weights, m).astype(jnp.int32), num_samples // m),
        )

    return resample_wf


def tempering_fk(target: TemperingTarget, config: TemperingConfig):
    """The tempering Feynman–Kac model (module docstring), for :func:`smcscale.run`.

    Returns ``(fk, resampling, flat)``: run it as
    ``run(key, fk, jnp.arange(max_steps), N, ess_threshold=1.0, resampling=resampling)``
    (the inputs are the step index ``t``). ``flat`` maps flat positions back to the target's
    pytree (``flat.unravel``, ``flat.postprocess``).
    """
    cfg = _validate_config(config)
    flat = _flatten_target(target)
    n = cfg.num_particles
    eps0 = cfg.step_size if cfg.step_size is not None else 0.5

    def sample_initial(key, num_particles, inputs_0):
        z = flat.sample(key, num_particles)
        if z.shape != (num_particles, flat.dim):
            raise ValueError(f"sample_prior returned {z.shape[0]} particles, expected {num_particles}")
        lp, ll = jax.vmap(flat.log_densities)(z)
        dt = z.dtype
        zeros = jnp.zeros((num_particles,), dt)
        return TemperedState(z, lp, ll, zeros, zeros, jnp.full_like(zeros, jnp.nan), jnp.full_like(zeros, eps0))

    def sample_transition(key, xp: TemperedState, t):
        lam_prev = xp.lam[0]
        lam_prev2 = xp.lam_prev[0]
        do_move = (t >= 2) & (lam_prev2 < 1.0)

        def stay(_):
            return xp.position, _clean(xp.log_prior), _clean(xp.log_lik), jnp.array(jnp.nan, xp.position.dtype), xp.step_size[0]

        pos, lp, ll, acc, eps = jax.lax.cond(do_move, lambda _: _move(key, xp, lam_prev, flat, cfg), stay, None)
        lam = next_temperature(ll, lam_prev, cfg.ess_target, cfg.bisection_steps)
        full = lambda v: jnp.full((n,), v, pos.dtype)  # noqa: E731
        return TemperedState(pos, lp, ll, full(lam), full(lam_prev), full(acc), full(eps))

    def log_potential(x_prev, x: TemperedState, t):
        if x_prev is None:  # t = 0: G_0 = 1 on valid particles; NaN flags invalid ones
            invalid = jnp.isnan(x.log_prior) | jnp.isposinf(x.log_prior) | jnp.isnan(x.log_lik) | jnp.isposinf(x.log_lik)
            return jnp.where(invalid, jnp.nan, jnp.where(jnp.isneginf(x.log_prior), -jnp.inf, 0.0))
        delta = x.lam - x.lam_prev
        ll = _clean(x.log_lik)
        return jnp.where(delta > 0, jnp.where(jnp.isneginf(ll), -jnp.inf, delta * ll), 0.0)

    return FeynmanKac(sample_initial, sample_transition, log_potential), _make_resampler(cfg), flat


# ---------------------------------------------------------------------------------------
# the entry point


class TemperedResult(NamedTuple):
    """Output of :func:`tempered_smc`. Per-step arrays have length ``max_steps``.

    Attributes:
      particles: final particles (pytree, leading axis ``N``): the target's pytree, after
        ``postprocess`` (for numpyro models: constrained values and deterministic sites).
      positions: ``(N, d)`` flat positions the sampler works on (unconstrained space).
      log_weights: ``(N,)`` normalised log-weights of the final particles (uniform once a
        rejuvenation step followed ``λ = 1``; always use them).
      log_z: ``log Ẑ`` of the evidence ``Z_1 = ∫ p_0 L`` (of ``Z_{λ_last}`` if not converged).
      lambdas: ``(max_steps,)`` the schedule ``λ_t`` (``λ_0 = 0``, padded with ones).
      acceptance: ``(max_steps,)`` mean acceptance probability of the MCMC move made at
        step ``t`` (with ``K_{λ_{t-1}}``); NaN where no move was made.
      step_sizes: ``(max_steps,)`` HMC step size after step ``t`` (RWM: unused).
      ess: ``(max_steps,)`` ESS of the weights after reweighting at step ``t``.
      num_steps: number of tempering steps ``T`` (``λ_T = 1``; ``max_steps - 1`` if not converged).
      converged: whether ``λ`` reached 1.
      smc_result: the engine's :class:`~smcscale.smc.SMCResult` (final particles are
        :class:`TemperedState`).
    """

    particles: Any
    positions: jax.Array
    log_weights: jax.Array
    log_z: jax.Array
    lambdas: jax.Array
    acceptance: jax.Array
    step_sizes: jax.Array
    ess: jax.Array
    num_steps: jax.Array
    converged: jax.Array
    smc_result: SMCResult


class _NumpyroSpec(NamedTuple):
    model: Callable
    treedef: Any
    static_leaves: tuple
    is_array: tuple

    def build(self, data):
        it = iter(data)
        leaves = [next(it) if a else s for s, a in zip(self.static_leaves, self.is_array)]
        args, kwargs = jax.tree_util.tree_unflatten(self.treedef, leaves)
        return from_numpyro(self.model, *args, **kwargs)


class _PlainSpec(NamedTuple):
    target: TemperingTarget

    def build(self, data):
        return self.target


def _split_model_data(model, model_args, model_kwargs):
    leaves, treedef = jax.tree_util.tree_flatten((tuple(model_args), dict(model_kwargs or {})))
    is_array = tuple(isinstance(x, (jax.Array, np.ndarray)) or hasattr(x, "__jax_array__") for x in leaves)
    static = tuple(None if a else x for x, a in zip(leaves, is_array))
    try:
        hash(static)
    except TypeError:
        raise TypeError(
            "model_args / model_kwargs may hold arrays and hashable Python values only "
            f"(non-array leaves {[type(s).__name__ for s in static if s is not None]})"
        ) from None
    data = tuple(x for x, a in zip(leaves, is_array) if a)
    return _NumpyroSpec(model, treedef, static, is_array), data


@functools.partial(jax.jit, static_argnames=("spec", "config"))
def _tempered_jit(key, data, *, spec, config: TemperingConfig):
    target = spec.build(data)
    fk, resampling, flat = tempering_fk(target, config)
    summaries = {
        "lam": lambda p, lw: p.lam[0],
        "acceptance": lambda p, lw: p.acceptance[0],
        "step_size": lambda p, lw: p.step_size[0],
    }
    res = run(
        key,
        fk,
        jnp.arange(config.max_steps, dtype=jnp.int32),
        config.num_particles,
        ess_threshold=1.0,
        resampling=resampling,
        summaries=summaries,
        check=False,
    )
    lambdas = res.summaries["lam"]
    converged = lambdas[-1] >= 1.0
    num_steps = jnp.sum(lambdas[1:] > lambdas[:-1]).astype(jnp.int32)
    positions = res.particles.position
    return TemperedResult(
        particles=jax.vmap(flat.postprocess)(positions),
        positions=positions,
        log_weights=res.log_weights,
        log_z=res.log_z,
        lambdas=lambdas,
        acceptance=res.summaries["acceptance"],
        step_sizes=res.summaries["step_size"],
        ess=res.ess,
        num_steps=num_steps,
        converged=converged,
        smc_result=res,
    )


def tempered_smc(
    key,
    target,
    num_particles: int,
    *,
    model_args=(),
    model_kwargs=None,
    ess_target: float = 0.5,
    mcmc: str = "rwm",
    num_mcmc_steps: int = 10,
    waste_free: bool = False,
    chain_length: int = 10,
    max_steps: int = 100,
    resampling="systematic",
    rwm_scale: Optional[float] = None,
    step_size: Optional[float] = None,
    num_leapfrog: int = 10,
    target_accept: float = 0.8,
    check: bool = True,
) -> TemperedResult:
    r"""Adaptive tempered SMC sampler for ``π ∝ p_0 L`` (see the module docstring).

    Args:
      key: a ``jax.random`` key.
      target: a :class:`TemperingTarget`, or a numpyro model (called with ``model_args``
        and ``model_kwargs``; arrays among them are traced, other values must be hashable).
      num_particles: ``N``.
      ess_target: each tempering step keeps ``ESS = ess_target · N`` (``ρ`` in (0, 1)).
      mcmc: ``"rwm"`` (random-walk Metropolis, population-scaled) or ``"hmc"`` (numpyro's
        kernel, population-variance mass matrix).
      num_mcmc_steps: MCMC steps per particle per tempering step (ignored when
        ``waste_free``: each chain then makes ``chain_length - 1`` steps).
      waste_free: waste-free SMC (Dau & Chopin 2022) with ``M = N / chain_length`` chains.
      max_steps: length of the engine's scan; must exceed the number of tempering steps.
      resampling: resampling scheme name or function (``smcscale.resampling``).
      rwm_scale: RWM proposal sd = ``rwm_scale`` × population sd (default ``2.38/√d``).
      step_size: fixed HMC step size; ``None`` adapts it between steps.
      num_leapfrog, target_accept: HMC settings.
      check: when called eagerly, raise on invalid prior draws (``ValueError``), total weight
        collapse (:class:`~smcscale.smc.ParticleCollapseError`) and a schedule that did not
        reach 1 (:class:`TemperingError`). Under ``jit``/``vmap`` the result carries
        ``smc_result.num_invalid``, ``log_z = -inf`` and ``converged`` instead.

    Returns:
      :class:`TemperedResult`.

    Compiled code is cached per (target, settings): repeated calls with the same numpyro
    model (new data arrays of the same shapes) or the same :class:`TemperingTarget` do not
    recompile. Under ``jax.vmap`` (independent runs) the ``lax.cond`` that skips the moves
    after ``λ = 1`` becomes a select, so every one of the ``max_steps`` steps pays for its
    MCMC moves: keep ``max_steps`` tight there, or loop over keys instead.
    """
    config = _validate_config(
        TemperingConfig(
            num_particles=num_particles,
            ess_target=ess_target,
            mcmc=mcmc,
            num_mcmc_steps=num_mcmc_steps,
            waste_free=waste_free,
            chain_length=chain_length,
            max_steps=max_steps,
            resampling=resampling,
            rwm_scale=None if rwm_scale is None else float(rwm_scale),
            step_size=None if step_size is None else float(step_size),
            num_leapfrog=num_leapfrog,
            target_accept=float(target_accept),
        )
    )
    if isinstance(key, (int, np.integer)):
        raise TypeError("key must be a jax.random key (e.g. jax.random.key(0)), got an int")
    if isinstance(target, TemperingTarget):
        if model_args or model_kwargs:
            raise ValueError("model_args / model_kwargs are only for numpyro models, not a TemperingTarget")
        spec, data = _PlainSpec(target), ()
    elif callable(target):
        spec, data = _split_model_data(target, model_args, model_kwargs)
    else:
        raise TypeError(
            f"target must be a TemperingTarget or a numpyro model (a callable), got {type(target).__name__}"
        )

    result = _tempered_jit(key, data, spec=spec, config=config)
    if check and not isinstance(result.log_z, jax.core.Tracer):
        _check_result(result, config)
    return result


def _check_result(result: TemperedResult, cfg: TemperingConfig) -> None:
    n = cfg.num_particles
    bad = np.asarray(result.smc_result.num_invalid)
    if bad.ndim == 1 and bad[0] > 0:
        raise ValueError(
            f"the log prior density or log-likelihood is NaN (or +inf) for {int(bad[0])} of {n} "
            "particles drawn from the prior; fix the model (or pass check=False to give them weight zero)"
        )
    if bad.ndim == 1 and bad.any():
        t = int(np.flatnonzero(bad)[0])
        raise ValueError(f"NaN or +inf incremental log-weights for {int(bad[t])} particles at tempering step {t}")
    lz = np.asarray(result.smc_result.log_z_trace)
    if lz.ndim == 1 and np.isneginf(lz).any():
        t = int(np.flatnonzero(np.isneginf(lz))[0])
        raise ParticleCollapseError(
            f"all {n} particles have zero weight at tempering step {t} (lambda = "
            f"{float(np.asarray(result.lambdas)[t]):.3g}): log Z = -inf. Check that the likelihood is "
            "positive somewhere the prior puts mass, or use more particles."
        )
    lams = np.asarray(result.lambdas)
    if lams.ndim == 1 and not lams[-1] >= 1.0:
        raise TemperingError(
            f"the tempering schedule reached only lambda = {float(lams[-1]):.4g} after max_steps="
            f"{cfg.max_steps} steps (the adaptive bisection moves lambda so that each step keeps "
            f"ESS = {cfg.ess_target} N). Increase max_steps, lower ess_target, or use more MCMC steps; "
            "pass check=False to get the partial result (converged=False, log_z of the last lambda)."
        )
