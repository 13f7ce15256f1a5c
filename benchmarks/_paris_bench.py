r"""PaRIS online smoothing: smcscale vs `particles` (helper for ``benchmarks/smoothing.py``).

Call :func:`run_paris_benchmark`; it returns a dict (no printing, no files).

What is measured
----------------
The wall-clock time of one full PaRIS run (forward bootstrap filter plus the online
statistics) estimating ``E[sum_{t<T} x_t | y_{0:T-1}]`` on the scalar LGSSM

    x_0 ~ N(0, sigma_X^2 / (1 - rho^2)),  x_t = rho x_{t-1} + sigma_X eps_t,  y_t = x_t + sigma_Y eta_t,
    rho = 0.9, sigma_X = 1, sigma_Y = 0.2,

simulated once with ``smcscale.kalman.simulate(jax.random.key(seed), ...)`` (the same series
for both libraries), in one process, with the same ``N``, the same number of backward draws
``Ñ = 2``, the same ``T``, bootstrap filter, systematic resampling when ESS < N/2:

* ``smcscale``: ``smcscale.smoothing.paris(key, bootstrap(model), ys, N, h, num_backward=2,
  method=..., ess_threshold=0.5)`` under ``jax.jit`` (float32). Two backward samplers:
  ``"reject"`` — hybrid rejection (proposals from the filtering weights accepted with
  probability ``m(x_t | x_{t-1}) / sup m``, exact fallback after ``max_trials = 8`` rounds;
  exact draws from the backward kernel, the same law as `particles`' sampler) and ``"mh"`` —
  one independent-MH step from the genealogical ancestor per draw (Dau & Chopin 2022).
  The headline speedup uses ``"reject"``, the like-for-like algorithm.
* ``particles`` (0.4, NumPy): ``SMC(fk=Bootstrap(...), N=N, resampling="systematic",
  ESSrmin=0.5, collect=[Paris(Nparis=2)])``: its hybrid PaRIS (rejection with at most
  ``max_trials = N`` proposals, then exact), reading ``summaries.paris[-1]``.
  **Patch:** under NumPy 2 its ``Paris.update`` fails (``As[m] = a`` with ``a`` a length-1
  array, "setting an array element with a sequence"); the benchmark subclasses it with the
  same code and ``a = mq.dequeue(1)[0]``, nothing else changed.

JAX is compiled (one warm-up run) and `particles` gets one warm-up run; the timed runs are
interleaved, each with a fresh key / seed; reported: median wall-clock time, and the mean
and sd of the estimates next to the exact value from the Kalman / RTS smoother.

``paris_speedup_vs_particles = median_time(particles) / median_time(smcscale, "reject")``.
"""

from __future__ import annotations

import statistics
import time

RHO, SIGMA_X, SIGMA_Y = 0.9, 1.0, 0.2


def _particles_runner(ys_np, n, num_backward):
    import numpy as np
    import particles
    from numpy import random
    from particles import collectors as col
    from particles import distributions as dists
    from particles import resampling as rs
    from particles import state_space_models as ssms

    class LGSSM(ssms.StateSpaceModel):
        """x_0 ~ N(0, sX^2/(1-rho^2)), x_t = rho x_{t-1} + sX eps, y_t = x_t + sY eta."""

        default_params = {"rho": RHO, "sigmaX": SIGMA_X, "sigmaY": SIGMA_Y}

        def PX0(self):
            return dists.Normal(loc=0.0, scale=self.sigmaX / np.sqrt(1.0 - self.rho**2))

        def PX(self, t, xp):
            return dists.Normal(loc=self.rho * xp, scale=self.sigmaX)

        def PY(self, t, xp, x):
            return dists.Normal(loc=x, scale=self.sigmaY)

        def upper_bound_log_pt(self, t):
            return -0.5 * np.log(2.0 * np.pi * self.sigmaX**2)

        def add_func(self, t, xp, x):  # h_t(x_{t-1}, x_t) = x_t
            return x

    class Paris(col.Paris):
        """particles 0.4's ``Paris`` with the NumPy-2 fix ``mq.dequeue(1)[0]`` (nothing else)."""

        def update(self, smc):
            maxtries = smc.N if self.max_trials is None else self.max_trials
            prev_Phi = self.Phi.copy()
            mq = rs.MultinomialQueue(self.prev_W)
            tot_ntries = 0
            for n in range(smc.N):
                As = np.empty(self.Nparis, dtype=np.int64)
                for m in range(self.Nparis):
                    ntries = 0
                    accepted = False
                    while ntries < maxtries:
                        a = mq.dequeue(1)[0]
                        ntries += 1
                        lp = smc.fk.logpt(smc.t, self.prev_X[a], smc.X[n]) - smc.fk.ssm.upper_bound_log_pt(smc.t)
                        if np.log(random.rand()) < lp:
                            As[m] = a
                            accepted = True
                            break
                    if not accepted:
                        lwXn = self.prev_logw + smc.fk.logpt(smc.t, self.prev_X, smc.X[n])
                        WXn = rs.exp_and_normalise(lwXn)
                        As[m] = rs.multinomial_once(WXn)
                    tot_ntries += ntries
                mod_Phi = prev_Phi[As] + smc.fk.add_func(smc.t, self.prev_X[As], smc.X[n])
                self.Phi[n] = np.average(mod_Phi, axis=0)
            self.nprop.append(tot_ntries)

    fk = ssms.Bootstrap(ssm=LGSSM(), data=ys_np)

    def run(seed):
        np.random.seed(seed)  # particles draws from NumPy's global generator
        pf = particles.SMC(
            fk=fk, N=n, resampling="systematic", ESSrmin=0.5, store_history=False,
            collect=[Paris(Nparis=num_backward)], verbose=False,
        )
        pf.run()
        return float(np.asarray(pf.summaries.paris[-1]))

    return run


def _smcscale_runner(ys, n, num_backward, method):
    import jax
    import numpy as np

    import smcscale as smc
    from smcscale.models import lgssm
    from smcscale.smoothing import paris

    fk = smc.bootstrap(lgssm.univariate(RHO, SIGMA_X, SIGMA_Y))
    log_bound = -0.5 * float(np.log(2.0 * np.pi * SIGMA_X**2))

    def h(x_prev, x, u):  # h_t(x_{t-1}, x_t) = x_t (also at t = 0)
        return x

    f = jax.jit(
        lambda key: paris(
            key, fk, ys, n, h, num_backward=num_backward, method=method, log_bound=log_bound,
            ess_threshold=0.5, resampling="systematic", check=False,
        ).estimate
    )

    def run(seed):
        return float(f(jax.random.key(seed)).block_until_ready())

    return run


def run_paris_benchmark(N: int = 500, T: int = 100, repeats: int = 5, num_backward: int = 2, seed: int = 0) -> dict:
    """Time PaRIS (additive functional ``sum_t x_t``) in smcscale and in `particles`.

    Returns a dict with the settings, per-method ``median_s`` / ``times_s`` / ``estimates`` /
    ``mean_estimate`` / ``sd_estimate`` / ``warmup_s``, the exact ``kalman_estimate``
    (``sum_t`` of the RTS smoothed means), and ``paris_speedup_vs_particles`` (particles'
    median over smcscale's ``"reject"`` median) and ``paris_speedup_vs_particles_mh``.
    """
    import jax
    import numpy as np

    import smcscale as smc

    params = smc.kalman.univariate_params(RHO, SIGMA_X, SIGMA_Y)
    _, ys = smc.kalman.simulate(jax.random.key(seed), params, T)
    ys = ys[:, 0]
    kf = smc.kalman.kalman_filter(params, ys)
    exact = float(np.sum(np.asarray(smc.kalman.rts_smoother(params, kf).smoothed_means, np.float64)))
    ys_np = np.asarray(ys, dtype=np.float64)

    runners = {
        "smcscale_reject": _smcscale_runner(ys, N, num_backward, "reject"),
        "smcscale_mh": _smcscale_runner(ys, N, num_backward, "mh"),
        "particles": _particles_runner(ys_np, N, num_backward),
    }
    names = list(runners)
    out = {name: {"times_s": [], "estimates": []} for name in names}
    for name in names:
        t0 = time.perf_counter()
        runners[name](10**6 + seed)  # warm-up: XLA compilation / first NumPy calls
        out[name]["warmup_s"] = time.perf_counter() - t0
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            s = seed * 100_003 + 1000 * r + 1
            t0 = time.perf_counter()
            est = runners[name](s)
            out[name]["times_s"].append(time.perf_counter() - t0)
            out[name]["estimates"].append(est)
    for name in names:
        res = out[name]
        res["median_s"] = statistics.median(res["times_s"])
        res["mean_estimate"] = statistics.fmean(res["estimates"])
        res["sd_estimate"] = statistics.stdev(res["estimates"]) if len(res["estimates"]) > 1 else 0.0
        res["error_vs_kalman"] = res["mean_estimate"] - exact
    return {
        "settings": {
            "N": N, "T": T, "num_backward": num_backward, "repeats": repeats, "seed": seed,
            "model": {"rho": RHO, "sigma_x": SIGMA_X, "sigma_y": SIGMA_Y},
            "functional": "sum_t x_t", "filter": "bootstrap, systematic resampling when ESS < N/2",
        },
        "kalman_estimate": exact,
        "methods": out,
        "paris_speedup_vs_particles": out["particles"]["median_s"] / out["smcscale_reject"]["median_s"],
        "paris_speedup_vs_particles_mh": out["particles"]["median_s"] / out["smcscale_mh"]["median_s"],
    }


if __name__ == "__main__":  # pragma: no cover - manual run
    import json
    import sys

    res = run_paris_benchmark(repeats=int(sys.argv[1]) if len(sys.argv) > 1 else 5)
    print(json.dumps(res, indent=2, default=float))
    print(f"RESULT paris_speedup_vs_particles={res['paris_speedup_vs_particles']:.2f}")
