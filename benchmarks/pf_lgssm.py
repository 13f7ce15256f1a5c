r"""Bootstrap particle filter on a linear-Gaussian SSM: smcscale vs `particles` vs BlackJAX.

What is measured
----------------
The wall-clock time of one full bootstrap particle filter run (T = 100 steps, systematic
resampling at *every* step, log-likelihood estimate as the only output) on the scalar
linear-Gaussian state-space model

    x_0 ~ N(0, sigma_X^2 / (1 - rho^2)),   x_t = rho x_{t-1} + sigma_X eps_t,
    y_t = x_t + sigma_Y eta_t,              rho = 0.9, sigma_X = 1, sigma_Y = 0.2,

for N = 1e3 and N = 1e5 particles, with three implementations (and smcscale with a raw
key) run in ONE process on the SAME simulated series:

* ``smcscale``: ``smc.run(key, smc.bootstrap(lgssm.univariate(...)), ys, N,
  ess_threshold=1.0, resampling="systematic").log_z`` under ``jax.jit``;
* ``particles`` (N. Chopin's library, NumPy/Numba): a ``StateSpaceModel`` subclass with
  exactly this parametrisation (the library ships no built-in LGSSM class; the one in its
  docstring starts from N(0, sigma_X^2) and has a typo), ``SMC(fk=Bootstrap(...), N=N,
  resampling="systematic", ESSrmin=1.0, store_history=False, collect="off")``, reading
  ``pf.logLt``;
* ``blackjax``: a bootstrap filter whose per-step kernel is ``blackjax.smc.base.step``
  (resample with ``blackjax.smc.resampling.systematic``, move with a vmapped per-particle
  transition as the API prescribes, weight by the observation density), in a jitted
  ``lax.scan`` over time, float32; ``log Z`` accumulates the step's
  ``log_likelihood_increment`` (= log-mean of the unnormalised weights);
* ``smcscale_rawkey``: smcscale again, given ``jax.random.PRNGKey(seed)`` (a raw ``uint32``
  key) instead of ``jax.random.key(seed)``. The draws are the same, so log Z must be
  identical run for run (checked), but the driver does not re-wrap a raw key as
  ``smcscale.prng.fast_key``: this row times JAX's own Threefry, which runs its 20 rounds
  as a loop on CPU, and shows what the unrolled hash is worth.

JAX methods are compiled (and run once) before timing; ``particles`` gets one warm-up run
(Numba compilation). The timed runs are interleaved round-robin across methods, with the
order rotated every round (so slow drift on a noisy machine hits all of them alike); each
run uses a fresh key / seed and is ``block_until_ready``-ed. Reported: wall-clock median
and min over ``--repeats`` runs (the JSON also has every run and the process CPU time,
which is less disturbed by other processes on a shared machine), and the mean
(and sd) of log Z over those runs next to the exact Kalman log-likelihood, as a sanity
check (all three must agree within Monte Carlo error; at N = 1e5 within ~0.5 nats).

Results go to stdout (a table), to ``benchmarks/results/pf_lgssm.json``, and the last line
printed is

    RESULT n=100000 speedup_vs_particles=<x> speedup_vs_blackjax=<y> speedup_vs_particles_n1000=<z>

with speedup = median_time(anchor) / median_time(smcscale).

How to run
----------
    bash benchmarks/setup.sh && python benchmarks/pf_lgssm.py
    python benchmarks/pf_lgssm.py --quick            # fewer repeats
    python benchmarks/pf_lgssm.py --sizes 1000 100000 --repeats 11 --seed 3

Exit status: 0 on success, 1 if an anchor library is missing, 3 if a log Z sanity check
failed (the table, JSON and RESULT line are still written).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the shared benchmark helpers
import _machine  # noqa: E402
ROOT = HERE.parent

RHO, SIGMA_X, SIGMA_Y, T = 0.9, 1.0, 0.2, 100
METHODS = ("smcscale", "particles", "blackjax", "smcscale_rawkey")


def _missing(name: str, err: Exception) -> None:
    print(
        f"error: cannot import {name!r} ({type(err).__name__}: {err}).\n"
        "The benchmark anchors are not installed in this environment; run\n"
        "    bash benchmarks/setup.sh\n"
        "(it installs blackjax via the `bench` extra and `particles` with --no-deps).",
        file=sys.stderr,
    )
    sys.exit(1)


def _imports():
    try:
        import jax  # noqa: F401
    except Exception as e:  # pragma: no cover
        _missing("jax", e)
    try:
        import smcscale  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(ROOT))  # running from a checkout without `pip install -e .`
        try:
            import smcscale  # noqa: F401
        except Exception as e:
            _missing("smcscale", e)
    try:
        import particles  # noqa: F401
        import particles.state_space_models  # noqa: F401
    except Exception as e:
        _missing("particles", e)
    try:
        import blackjax  # noqa: F401
        import blackjax.smc.base  # noqa: F401
        import blackjax.smc.resampling  # noqa: F401
    except Exception as e:
        _missing("blackjax", e)


# ---------------------------------------------------------------------------------------
# the three filters


def make_smcscale(ys, n, raw_key=False):
    import jax

    import smcscale as smc
    from smcscale.models import lgssm

    fk = smc.bootstrap(lgssm.univariate(RHO, SIGMA_X, SIGMA_Y))
    f = jax.jit(lambda k: smc.run(k, fk, ys, n, ess_threshold=1.0, resampling="systematic").log_z)
    # a raw uint32 PRNGKey holds the same key data (so the same draws and log Z) but is not
    # re-wrapped by smcscale.prng.fast_key: JAX's own looped Threefry hash on CPU
    make_key = jax.random.PRNGKey if raw_key else jax.random.key

    def run(seed):
        return float(f(make_key(seed)).block_until_ready())

    return run


def make_particles(ys_np, n):
    import numpy as np
    import particles
    from particles import distributions as dists
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

    fk = ssms.Bootstrap(ssm=LGSSM(), data=ys_np)

    def run(seed):
        np.random.seed(seed)  # particles draws from NumPy's global generator
        pf = particles.SMC(
            fk=fk, N=n, resampling="systematic", ESSrmin=1.0,
            store_history=False, collect="off", verbose=False,
        )
        pf.run()
        return float(pf.logLt)

    return run


def make_blackjax(ys, n):
    import jax
    import jax.numpy as jnp
    from blackjax.smc import base as bj_base
    from blackjax.smc import resampling as bj_resampling
    from jax.scipy.special import logsumexp

    sd0 = SIGMA_X / math.sqrt(1.0 - RHO**2)
    log_norm = -math.log(SIGMA_Y) - 0.5 * math.log(2.0 * math.pi)
    ys = jnp.asarray(ys, jnp.float32)

    def log_g(x, y):
        return log_norm - 0.5 * ((y - x) / SIGMA_Y) ** 2

    def transition(key, x_prev):  # one particle
        return RHO * x_prev + SIGMA_X * jax.random.normal(key, (), jnp.float32)

    def update_fn(keys, particles, update_params):  # BlackJAX: batched over (keys, particles)
        return jax.vmap(transition)(keys, particles), None

    @jax.jit
    def filt(key):
        k0, k_rest = jax.random.split(key)
        x0 = sd0 * jax.random.normal(k0, (n,), jnp.float32)
        lw0 = log_g(x0, ys[0])
        lse0 = logsumexp(lw0)
        state = bj_base.SMCState(x0, jnp.exp(lw0 - lse0), None)
        log_z0 = lse0 - jnp.log(n)

        def body(carry, inp):
            state, log_z = carry
            k, y = inp
            state, info = bj_base.step(
                k, state, update_fn, lambda x: log_g(x, y), bj_resampling.systematic
            )
            return (state, log_z + info.log_likelihood_increment), None

        keys = jax.random.split(k_rest, T - 1)
        (_, log_z), _ = jax.lax.scan(body, (state, log_z0), (keys, ys[1:]))
        return log_z

    def run(seed):
        return float(filt(jax.random.key(seed)).block_until_ready())

    return run


# ---------------------------------------------------------------------------------------
# driver


def kalman_loglik_f64(ys_np) -> float:
    """Scalar Kalman filter in float64 NumPy (cross-check of the float32 JAX one)."""
    m, p, ll = 0.0, SIGMA_X**2 / (1.0 - RHO**2), 0.0
    for y in ys_np:
        s = p + SIGMA_Y**2
        v = y - m
        ll += -0.5 * (math.log(2 * math.pi * s) + v * v / s)
        k = p / s
        m, p = m + k * v, (1 - k) * p
        m, p = RHO * m, RHO**2 * p + SIGMA_X**2
    return ll


def machine_info():
    info = _machine.machine_info(("numpy", "blackjax", "particles", "numba", "numpyro", "smcscale"))
    return info


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=7, help="timed runs per method and size (default 7)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 100000], help="particle numbers N")
    ap.add_argument("--quick", action="store_true", help="5 repeats (the minimum) instead of --repeats")
    ap.add_argument("--seed", type=int, default=0, help="seed of the simulated data and of the runs")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "pf_lgssm.json", help="JSON output path")
    args = ap.parse_args(argv)
    if args.quick:
        args.repeats = 5
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    if any(n < 1 for n in args.sizes):
        ap.error("--sizes must be positive")
    args.sizes = sorted(set(args.sizes))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    _imports()

    import jax
    import numpy as np

    import smcscale as smc

    params = smc.kalman.univariate_params(RHO, SIGMA_X, SIGMA_Y)
    _, ys = smc.kalman.simulate(jax.random.key(args.seed), params, T)
    ys = ys[:, 0]
    ys_np = np.asarray(ys, dtype=np.float64)  # the same values, for particles
    kalman = float(smc.kalman.log_likelihood(params, ys))
    kalman64 = kalman_loglik_f64(ys_np)

    info = machine_info()
    print(
        f"pf_lgssm: bootstrap PF, T={T}, rho={RHO}, sigma_X={SIGMA_X}, sigma_Y={SIGMA_Y}, "
        f"systematic resampling every step; sizes={args.sizes}, repeats={args.repeats}, seed={args.seed}"
    )
    print(
        f"jax {info['jax']} ({info['backend']}), {info['cpu_count']} CPUs, blackjax {info['blackjax']}, "
        f"particles {info['particles']}, numpy {info['numpy']}"
    )
    print(f"Kalman log Z = {kalman:.4f} (float32 JAX), {kalman64:.4f} (float64 NumPy)\n", flush=True)

    makers = {"smcscale": make_smcscale, "particles": make_particles, "blackjax": make_blackjax,
              "smcscale_rawkey": lambda data, n: make_smcscale(data, n, raw_key=True)}
    results = {}
    for n in args.sizes:
        runners = {}
        for name in METHODS:
            data = ys_np if name == "particles" else ys
            runners[name] = makers[name](data, n)
            t0 = time.perf_counter()
            runners[name](10**6 + args.seed)  # warm-up: compile (JAX) / Numba JIT (particles)
            warm = time.perf_counter() - t0
            results[(name, n)] = {"warmup_s": warm, "times_s": [], "cpu_times_s": [], "log_z": []}
            print(f"  N={n:>7} {name:<9} warm-up {warm:7.2f} s", flush=True)
        for r in range(args.repeats):
            seed = args.seed * 100_003 + 1000 * r + 1  # a fresh key / seed per run
            order = METHODS[r % len(METHODS):] + METHODS[: r % len(METHODS)]  # rotate who goes first
            for name in order:
                c0, t0 = time.process_time(), time.perf_counter()
                lz = runners[name](seed)
                dt, dc = time.perf_counter() - t0, time.process_time() - c0
                results[(name, n)]["times_s"].append(dt)
                results[(name, n)]["cpu_times_s"].append(dc)
                results[(name, n)]["log_z"].append(lz)

    # ---- summarise
    rows, failures = [], []
    for n in args.sizes:
        for name in METHODS:
            res = results[(name, n)]
            ts, lzs = res["times_s"], res["log_z"]
            res["median_ms"] = 1e3 * statistics.median(ts)
            res["min_ms"] = 1e3 * min(ts)
            # process CPU time (all threads): less sensitive to other processes on a busy machine
            res["cpu_median_ms"] = 1e3 * statistics.median(res["cpu_times_s"])
            res["mean_log_z"] = statistics.fmean(lzs)
            res["sd_log_z"] = statistics.stdev(lzs) if len(lzs) > 1 else float("nan")
            err = res["mean_log_z"] - kalman
            # Monte Carlo tolerance: 0.5 nats, or 3 sd of a single run when that is wider.
            sd = res["sd_log_z"] if math.isfinite(res["sd_log_z"]) else 0.0
            tol = max(0.5, 3.0 * sd)
            res["consistent_with_kalman"] = bool(all(map(math.isfinite, lzs)) and abs(err) <= tol)
            if not res["consistent_with_kalman"]:
                failures.append(f"{name} N={n}: mean log Z {res['mean_log_z']:.3f} vs Kalman {kalman:.3f} (tol {tol:.2f})")
            rows.append((name, n, res))

    for n in args.sizes:
        a, b = results[("smcscale", n)]["log_z"], results[("smcscale_rawkey", n)]["log_z"]
        if a != b:
            failures.append(f"smcscale_rawkey N={n}: log Z differs from smcscale's for the same key data")

    hdr = f"{'method':<16} {'N':>7} {'median ms':>10} {'min ms':>9} {'mean logZ':>10} {'sd':>6} {'Kalman logZ':>11} {'x smcscale':>10}"
    print("\n" + hdr)
    print("-" * len(hdr))
    ratios = {}
    for name, n, res in rows:
        ratio = res["median_ms"] / results[("smcscale", n)]["median_ms"]
        if name != "smcscale":
            ratios[f"{name}_over_smcscale_n{n}"] = ratio
        flag = "" if res["consistent_with_kalman"] else "  <-- log Z off"
        print(
            f"{name:<16} {n:>7} {res['median_ms']:>10.2f} {res['min_ms']:>9.2f} {res['mean_log_z']:>10.3f} "
            f"{res['sd_log_z']:>6.3f} {kalman:>11.3f} {ratio:>10.2f}{flag}"
        )
    print("(x smcscale = median time / smcscale's median time at the same N; > 1: smcscale is faster)")

    big = max(args.sizes)

    def speedup(anchor, n):
        if (anchor, n) not in results:
            return float("nan")
        return results[(anchor, n)]["median_ms"] / results[("smcscale", n)]["median_ms"]

    sp_particles, sp_blackjax, sp_particles_1k = speedup("particles", big), speedup("blackjax", big), speedup("particles", 1000)

    out = {
        "benchmark": "pf_lgssm",
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": info,
        "config": {
            "model": {"rho": RHO, "sigma_x": SIGMA_X, "sigma_y": SIGMA_Y, "T": T},
            "resampling": "systematic", "ess_threshold": 1.0,
            "sizes": args.sizes, "repeats": args.repeats, "seed": args.seed,
            "dtype": {"smcscale": "float32", "blackjax": "float32", "particles": "float64"},
            "smcscale_rawkey": "smcscale with jax.random.PRNGKey(seed) (same draws; JAX's looped Threefry hash)",
        },
        "kalman_log_z": kalman,
        "kalman_log_z_float64": kalman64,
        "results": {
            f"{name}_n{n}": {"method": name, "num_particles": n, **res} for name, n, res in rows
        },
        "ratios": ratios,
        "speedup": {
            f"vs_particles_n{big}": sp_particles,
            f"vs_blackjax_n{big}": sp_blackjax,
            "vs_particles_n1000": sp_particles_1k,
            "vs_blackjax_n1000": speedup("blackjax", 1000),
        },
        # the same ratios on process CPU time (less sensitive to other load on the machine)
        "speedup_cpu_time": {
            f"vs_{anchor}_n{n}": results[(anchor, n)]["cpu_median_ms"] / results[("smcscale", n)]["cpu_median_ms"]
            for n in args.sizes
            for anchor in ("particles", "blackjax")
        },
        "sanity_failures": failures,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    for f in failures:
        print(f"WARNING: log Z sanity check failed: {f}")
    print(
        f"RESULT n={big} speedup_vs_particles={sp_particles:.2f} speedup_vs_blackjax={sp_blackjax:.2f} "
        f"speedup_vs_particles_n1000={sp_particles_1k:.2f}",
        flush=True,
    )
    return 3 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
