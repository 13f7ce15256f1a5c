r"""Adaptive tempered SMC: smcscale vs BlackJAX 1.7 ``adaptive_tempered_smc``.

Helper for ``benchmarks/smoothing.py`` (call :func:`run_tempered_benchmark`).

What is measured
----------------
The wall-clock time of one full adaptive tempered SMC run, from the prior draw to the final
``log Ẑ``, on the conjugate Bayesian linear regression (numpyro model)

    β ~ N(0, σ_0² I_d),   y | β ~ N(X β, σ² I_n),     d = 5, n = 200, σ_0 = 1, σ = 0.5,

whose evidence is exact: ``y ~ N(0, σ² I + σ_0² X Xᵀ)``. Both samplers use

* the same log prior / log-likelihood functions (``smcscale.tempering.from_numpyro`` of the
  same numpyro model, so the model code evaluated per particle is identical),
* N = 1000 particles, ESS target 0.5, systematic resampling at every step,
* the same MCMC kernel and number of steps per tempering step, with parameters tuned from the
  current particles in the same way:

  - ``"rwm"`` (headline): 10 random-walk Metropolis steps, proposal sd
    ``2.38/√d × particle sd`` per coordinate (BlackJAX: ``additive_step_random_walk`` +
    ``normal`` steps, sd updated from the particles by ``inner_kernel_tuning``);
  - ``"hmc"``: 5 HMC steps of 10 leapfrog steps, step size 0.25 (fixed), diagonal inverse
    mass matrix = particle variance (BlackJAX: ``blackjax.hmc`` kernel via
    ``inner_kernel_tuning``; smcscale: numpyro's HMC kernel, ``step_size=0.25``).

smcscale runs ``tempered_smc`` (its default ``max_steps = 100`` scan, steps after λ = 1 are
no-ops); BlackJAX runs its step in a jitted ``lax.while_loop`` until λ = 1 (its documented
usage) and sums ``info.log_likelihood_increment``. Both are jitted as functions of the key,
warmed up once, then timed ``repeats`` times interleaved (fresh key per run,
``block_until_ready``); reported: median time and median ``|log Ẑ − log Z|``.

Result: ``speedup_vs_blackjax = median_time(blackjax) / median_time(smcscale)`` for RWM;
the HMC comparison is in ``hmc``. The two samplers choose their schedules differently
(BlackJAX solves for ``λ_t`` on the previous, still weighted particles as if unweighted, and
takes more steps at the same ESS target), so the per-tempering-step time is reported too.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

D, N_OBS, SIGMA0, SIGMA = 5, 200, 1.0, 0.5
NUM_PARTICLES = 1000
ESS_TARGET = 0.5
RWM_STEPS = 10
HMC_STEPS, HMC_LEAPFROG, HMC_STEP_SIZE = 5, 10, 0.25


def regression_model(X, y):
    import numpyro
    import numpyro.distributions as dist

    beta = numpyro.sample("beta", dist.Normal(0.0, SIGMA0).expand([X.shape[1]]).to_event(1))
    numpyro.sample("y", dist.Normal(X @ beta, SIGMA), obs=y)


def make_data(seed: int = 0, d: int = D, n: int = N_OBS):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    beta = rng.normal(size=d) * SIGMA0
    y = (X @ beta + SIGMA * rng.normal(size=n)).astype(np.float32)
    return X, y


def exact_log_evidence(X, y):
    X64, y64 = np.asarray(X, np.float64), np.asarray(y, np.float64)
    n = X64.shape[0]
    cov = SIGMA**2 * np.eye(n) + SIGMA0**2 * X64 @ X64.T
    _, logdet = np.linalg.slogdet(cov)
    return float(-0.5 * (n * np.log(2 * np.pi) + logdet + y64 @ np.linalg.solve(cov, y64)))


def _smcscale_fn(X, y, kind):
    from smcscale.tempering import tempered_smc

    Xj, yj = jnp.asarray(X), jnp.asarray(y)
    if kind == "rwm":
        kw = dict(mcmc="rwm", num_mcmc_steps=RWM_STEPS)
    else:
        kw = dict(mcmc="hmc", num_mcmc_steps=HMC_STEPS, num_leapfrog=HMC_LEAPFROG, step_size=HMC_STEP_SIZE)

    @jax.jit
    def f(key):
        r = tempered_smc(
            key, regression_model, NUM_PARTICLES, model_args=(Xj, yj), ess_target=ESS_TARGET, resampling="systematic", **kw
        )
        return r.log_z, r.num_steps

    return f


def _blackjax_fn(X, y, kind):
    import blackjax
    import blackjax.mcmc.random_walk as rw
    from blackjax.smc import resampling
    from blackjax.smc.tuning.from_particles import particles_as_rows

    from smcscale.tempering import from_numpyro

    target = from_numpyro(regression_model, jnp.asarray(X), jnp.asarray(y))
    d = X.shape[1]

    if kind == "rwm":
        additive = rw.build_additive_step()

        def mcmc_step(key, state, logdensity_fn, sigma):
            return additive(key, state, logdensity_fn, rw.normal(sigma))

        mcmc_init = rw.init
        num_mcmc = RWM_STEPS

        def params_from(particles):
            return {"sigma": (2.38 / np.sqrt(d) * jnp.std(particles_as_rows(particles), axis=0))[None]}

    else:
        mcmc_step = blackjax.hmc.build_kernel()
        mcmc_init = blackjax.hmc.init
        num_mcmc = HMC_STEPS

        def params_from(particles):
            return {
                "step_size": jnp.full((1,), HMC_STEP_SIZE),
                "inverse_mass_matrix": jnp.var(particles_as_rows(particles), axis=0)[None],
                "num_integration_steps": jnp.full((1,), HMC_LEAPFROG, jnp.int32),
            }

    @jax.jit
    def f(key):
        k0, k1 = jax.random.split(key)
        positions = target.sample_prior(k0, NUM_PARTICLES)
        alg = blackjax.inner_kernel_tuning(
            smc_algorithm=blackjax.adaptive_tempered_smc,
            logprior_fn=target.log_prior,
            loglikelihood_fn=target.log_likelihood,
            mcmc_step_fn=mcmc_step,
            mcmc_init_fn=mcmc_init,
            resampling_fn=resampling.systematic,
            mcmc_parameter_update_fn=lambda key, state, info: params_from(state.particles),
            initial_parameter_value=params_from(positions),
            num_mcmc_steps=num_mcmc,
            target_ess=ESS_TARGET,
        )
        state = alg.init(positions)

        def cond(c):
            return c[0].sampler_state.tempering_param < 1.0

        def body(c):
            s, lz, k, i = c
            k, sk = jax.random.split(k)
            s, info = alg.step(sk, s)
            return s, lz + info.log_likelihood_increment, k, i + 1

        _, lz, _, steps = jax.lax.while_loop(cond, body, (state, jnp.zeros(()), k1, jnp.zeros((), jnp.int32)))
        return lz, steps

    return f


def _time_pair(fns, repeats, seed):
    # warm up (compile + one run)
    for f in fns.values():
        jax.block_until_ready(f(jax.random.key(seed)))
    times = {k: [] for k in fns}
    lzs = {k: [] for k in fns}
    steps = {k: [] for k in fns}
    names = list(fns)
    for r in range(repeats):
        key = jax.random.key(seed + 1 + r)
        order = names if r % 2 == 0 else names[::-1]
        for k in order:
            t0 = time.perf_counter()
            lz, ns = jax.block_until_ready(fns[k](key))
            times[k].append(time.perf_counter() - t0)
            lzs[k].append(float(lz))
            steps[k].append(int(ns))
    return times, lzs, steps


def run_tempered_benchmark(repeats: int = 5, seed: int = 0, kinds=("rwm", "hmc")) -> dict:
    """Time smcscale's adaptive tempered SMC against BlackJAX's on the same model.

    Returns a dict with, per kernel kind, each sampler's median time (s), median
    ``|log Ẑ − log Z|``, the number of tempering steps, and the speedup; the top-level
    ``speedup_vs_blackjax`` is the RWM one (the first kind).
    """
    X, y = make_data(seed)
    exact = exact_log_evidence(X, y)
    out = {
        "model": f"numpyro conjugate linear regression d={D} n={N_OBS}",
        "num_particles": NUM_PARTICLES,
        "ess_target": ESS_TARGET,
        "exact_log_z": exact,
        "repeats": repeats,
        "backend": jax.default_backend(),
    }
    for kind in kinds:
        fns = {"smcscale": _smcscale_fn(X, y, kind), "blackjax": _blackjax_fn(X, y, kind)}
        times, lzs, steps = _time_pair(fns, repeats, seed)
        res = {}
        for k in fns:
            res[k] = {
                "median_time_s": float(np.median(times[k])),
                "min_time_s": float(np.min(times[k])),
                "median_abs_log_z_error": float(np.median(np.abs(np.asarray(lzs[k]) - exact))),
                "log_z_mean": float(np.mean(lzs[k])),
                "log_z_sd": float(np.std(lzs[k])),
                "num_tempering_steps_median": float(np.median(steps[k])),
                "median_time_per_tempering_step_s": float(np.median(np.asarray(times[k]) / np.asarray(steps[k]))),
            }
        res["speedup_vs_blackjax"] = res["blackjax"]["median_time_s"] / res["smcscale"]["median_time_s"]
        if kind == "rwm":
            res["mcmc"] = f"random-walk Metropolis, {RWM_STEPS} steps per tempering step, sd 2.38/sqrt(d) x particle sd"
        else:
            res["mcmc"] = (
                f"HMC, {HMC_STEPS} steps x {HMC_LEAPFROG} leapfrog, step size {HMC_STEP_SIZE}, "
                "inverse mass = particle variance"
            )
        out[kind] = res
    out["speedup_vs_blackjax"] = out[kinds[0]]["speedup_vs_blackjax"]
    return out


if __name__ == "__main__":  # pragma: no cover
    import json

    print(json.dumps(run_tempered_benchmark(), indent=2))
