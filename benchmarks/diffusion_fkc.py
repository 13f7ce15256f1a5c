r"""Feynman–Kac correctors vs the naive sampler: accuracy on exact targets, cost on a network.

What is measured
----------------
1. **Exactness** on the three exact 2-D targets of :func:`smcscale.diffusion.toy_targets`
   (annealing ``q^3``, a product of two mixtures, CFG ``q(x|0)^3 q(x)^{-2}``), VP SDE:
   MMD² (Gaussian kernel, median-heuristic bandwidth on the exact sample, unbiased
   U-statistic; weighted for FKC) between ``--particles`` samples and as many exact draws,
   ``--steps`` Euler–Maruyama steps, for ``--seeds`` seeds: FKC (``smcscale.diffusion.sample``,
   systematic resampling every step) and the naive sampler (``euler_maruyama``: the same
   drift, no weights). Reported: per-seed values and the median; also FKC's ``log Ẑ`` next to
   the exact ``log ∫ Π q_i^{β_i}`` (it carries a first-order discretisation bias).
2. **Overhead**: wall-clock time of FKC+SMC (CFG, w = 3, one class) over the plain sampler
   with the *same* network calls (conditional and unconditional scores in one batched call
   per step) at ``--overhead-particles`` particles and ``--overhead-steps`` steps, with the
   trained digits score network (``smcscale.diffusion.digits``, trained on first use and
   cached). Both are jitted and compiled before timing; runs alternate (order rotated) and
   each is ``block_until_ready``-ed; the ratio is of the medians (process CPU times too).
3. **Digits demo** (the same network and classifier): CFG with and without FKC (10 classes,
   ``--demo-particles`` each, vmapped over classes), w = 1 and 3; classifier accuracy (weighted
   by the final weights) and diversity (mean pairwise L2 distance, weighted, i ≠ j); FKC with
   resampling only in the window t ∈ [0.2, 1]; and the product of two class-conditionals
   ``q(x|a) q(x|b)``: the mean classifier probabilities of ``a`` and ``b`` and the mean of
   their minimum.

Results: a table on stdout, ``benchmarks/results/diffusion_fkc.json``, and the last line

    RESULT mmd_fkc_product=<a> mmd_naive_product=<b> overhead=<c>

(medians over seeds; ``overhead`` = median time FKC / median time plain).

How to run
----------
    python benchmarks/diffusion_fkc.py            # ~10 min on 2 CPU cores (+2-3 min training once)
    python benchmarks/diffusion_fkc.py --quick    # smaller: N = 2000, 2 seeds, fewer repeats
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the shared benchmark helpers
import _machine  # noqa: E402
ROOT = HERE.parent


def _imports():
    try:
        import smcscale  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(ROOT))  # running from a checkout without `pip install -e .`
        import smcscale  # noqa: F401


def machine_info():
    info = _machine.machine_info(("numpy", "flax", "optax", "scikit-learn", "smcscale"))
    return info


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--particles", type=int, default=8000, help="N for the MMD table (default 8000)")
    ap.add_argument("--steps", type=int, default=100, help="Euler-Maruyama steps for the MMD table")
    ap.add_argument("--seeds", type=int, default=3, help="seeds per method and target (median reported)")
    ap.add_argument("--overhead-particles", type=int, default=64)
    ap.add_argument("--overhead-steps", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=15, help="timed runs per method for the overhead")
    ap.add_argument("--demo-particles", type=int, default=64, help="particles per class in the digits demo")
    ap.add_argument("--quick", action="store_true", help="N = 2000, 2 seeds, 7 repeats, 32 demo particles")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "diffusion_fkc.json")
    args = ap.parse_args(argv)
    if args.quick:
        args.particles, args.seeds, args.repeats, args.demo_particles = 2000, 2, 7, 32
    for name in ("particles", "steps", "seeds", "overhead_particles", "overhead_steps", "repeats", "demo_particles"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


# ---------------------------------------------------------------------------------------


def mmd_table(args):
    import jax
    import numpy as np

    import smcscale.diffusion as dm

    sde = dm.VPSDE()
    toys = dm.toy_targets(sde)
    keys = jax.random.split(jax.random.key(args.seed + 1), args.seeds)
    out = {}
    for name in dm.TOY_NAMES:
        toy = toys[name]
        t0 = time.perf_counter()
        mmd = dm.MMD(np.asarray(toy.sample_exact(jax.random.key(args.seed + 100), args.particles)))
        fk = jax.vmap(lambda k: dm.sample(k, toy.target, sde, args.particles, args.steps))(keys)
        naive = jax.vmap(lambda k: dm.euler_maruyama(k, toy.target, sde, args.particles, args.steps).samples)(keys)
        m_fkc = [mmd(fk.samples[i], fk.log_weights[i]) for i in range(args.seeds)]
        m_naive = [mmd(naive[i]) for i in range(args.seeds)]
        out[name] = {
            "description": toy.description,
            "bandwidth": mmd.bandwidth,
            "mmd2_fkc": m_fkc,
            "mmd2_naive": m_naive,
            "median_fkc": float(np.median(m_fkc)),
            "median_naive": float(np.median(m_naive)),
            "log_z_fkc": [float(v) for v in np.asarray(fk.log_z)],
            "log_z_exact": toy.log_z,
            "min_ess": [float(v) for v in np.asarray(fk.ess).min(-1)],
            "seconds": time.perf_counter() - t0,
        }
        print(
            f"  {name:<8} MMD² FKC {out[name]['median_fkc']:.5f} {np.round(m_fkc, 5)}  naive {out[name]['median_naive']:.5f} "
            f"{np.round(m_naive, 5)}  log Ẑ {np.mean(out[name]['log_z_fkc']):.3f} vs exact {toy.log_z:.3f}",
            flush=True,
        )
    return out


def overhead(args, models):
    import jax
    import numpy as np

    import smcscale.diffusion as dm

    n, k = args.overhead_particles, args.overhead_steps
    target = dm.cfg(models.score, 3.0, 3)
    fkc = jax.jit(lambda key: dm.sample(key, target, models.sde, n, k).samples)
    plain = jax.jit(lambda key: dm.euler_maruyama(key, target, models.sde, n, k).samples)
    runners = {"fkc": fkc, "plain": plain}
    res = {name: {"times_s": [], "cpu_times_s": []} for name in runners}
    for name, f in runners.items():
        t0 = time.perf_counter()
        f(jax.random.key(10**6)).block_until_ready()
        res[name]["compile_and_first_run_s"] = time.perf_counter() - t0
    order = list(runners)
    for r in range(args.repeats):
        for name in order[r % 2 :] + order[: r % 2]:
            c0, t0 = time.process_time(), time.perf_counter()
            runners[name](jax.random.key(args.seed * 1000 + r)).block_until_ready()
            res[name]["times_s"].append(time.perf_counter() - t0)
            res[name]["cpu_times_s"].append(time.process_time() - c0)
    for name in runners:
        res[name]["median_ms"] = 1e3 * statistics.median(res[name]["times_s"])
        res[name]["min_ms"] = 1e3 * min(res[name]["times_s"])
        res[name]["cpu_median_ms"] = 1e3 * statistics.median(res[name]["cpu_times_s"])
    res["ratio_median"] = res["fkc"]["median_ms"] / res["plain"]["median_ms"]
    res["ratio_min"] = res["fkc"]["min_ms"] / res["plain"]["min_ms"]
    res["ratio_cpu_median"] = res["fkc"]["cpu_median_ms"] / res["plain"]["cpu_median_ms"]
    res["num_particles"], res["num_steps"], res["nfe_per_step"] = n, k, 2 * n
    print(
        f"  FKC {res['fkc']['median_ms']:.1f} ms, plain {res['plain']['median_ms']:.1f} ms (medians of {args.repeats}); "
        f"ratio {res['ratio_median']:.3f} (min-based {res['ratio_min']:.3f}, CPU-time {res['ratio_cpu_median']:.3f})",
        flush=True,
    )
    return res


def digits_demo(args, models):
    import jax
    import jax.numpy as jnp
    import numpy as np

    import smcscale.diffusion as dm
    from smcscale.diffusion import digits

    n, k = args.demo_particles, 100
    classes = jnp.arange(10)
    keys = jax.random.split(jax.random.key(args.seed + 7), 10)
    _, _, x_test, y_test = digits.load_data(models.config)
    real_div = float(np.mean([digits.diversity(x_test[y_test == c]) for c in range(10)]))
    out = {"real_test_diversity": real_div, "particles_per_class": n, "steps": k, "cfg": {}, "product": {}}

    def summarise(samples, log_weights, labels):
        acc, div = [], []
        for c in range(10):
            lw = None if log_weights is None else log_weights[c]
            acc.append(digits.accuracy(models.classifier, samples[c], int(labels[c]), log_weights=lw))
            div.append(digits.diversity(samples[c], lw))
        return float(np.mean(acc)), float(np.mean(div))

    print(f"  real test digits: diversity {real_div:.2f}", flush=True)
    for w in (1.0, 3.0):
        def run_fkc(key, c, window=None):
            return dm.sample(key, dm.cfg(models.score, w, c), models.sde, n, k, window=window)

        naive = jax.vmap(lambda key, c: dm.euler_maruyama(key, dm.cfg(models.score, w, c), models.sde, n, k).samples)(keys, classes)
        fk = jax.vmap(run_fkc)(keys, classes)
        fk_win = jax.vmap(lambda key, c: run_fkc(key, c, (0.2, 1.0)))(keys, classes)
        rows = {
            "naive": summarise(naive, None, classes),
            "fkc_every_step": summarise(fk.samples, fk.log_weights, classes),
            "fkc_window_0.2_1": summarise(fk_win.samples, fk_win.log_weights, classes),
        }
        ess = {"fkc_every_step": fk.ess, "fkc_window_0.2_1": fk_win.ess}
        out["cfg"][f"w={w:g}"] = {}
        for m, (a, d) in rows.items():
            # mean over classes of the smallest ESS / N along the run
            e = float(np.mean(np.asarray(ess[m]).min(-1)) / n) if m in ess else None
            out["cfg"][f"w={w:g}"][m] = {"accuracy": a, "diversity": d, "min_ess_fraction": e}
            print(f"  CFG w={w:g} {m:<17} accuracy {a:.3f} diversity {d:.2f}" + ("" if e is None else f" min ESS/N {e:.3f}"), flush=True)
    pairs = [(1, 7), (3, 8), (0, 6)]
    for a, b in pairs:
        target = dm.product([models.score, models.score], conditions=[a, b])
        naive = dm.euler_maruyama(jax.random.key(args.seed + a), target, models.sde, 4 * n, k).samples
        fk = dm.sample(jax.random.key(args.seed + a), target, models.sde, 4 * n, k)
        row = {}
        for m, x, lw in (("naive", naive, None), ("fkc", fk.samples, fk.log_weights)):
            p = jax.nn.softmax(models.classifier(x), -1)
            wts = jnp.full(x.shape[0], 1.0 / x.shape[0]) if lw is None else jax.nn.softmax(lw)
            pa, pb = float(jnp.sum(wts * p[:, a])), float(jnp.sum(wts * p[:, b]))
            both = float(jnp.sum(wts * jnp.minimum(p[:, a], p[:, b])))
            row[m] = {"p_a": pa, "p_b": pb, "mean_min": both, "diversity": digits.diversity(x, lw)}
            if lw is not None:
                row[m]["min_ess_fraction"] = float(np.asarray(fk.ess).min()) / (4 * n)
            print(f"  product {a}x{b} {m:<6} p({a}) {pa:.3f} p({b}) {pb:.3f} mean min {both:.3f} diversity {row[m]['diversity']:.2f}"
                  + (f" min ESS/N {row[m]['min_ess_fraction']:.4f}" if lw is not None else ""), flush=True)
        out["product"][f"{a}x{b}"] = row
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    _imports()
    import jax  # noqa: F401

    from smcscale.diffusion import digits

    info = machine_info()
    print(
        f"diffusion_fkc: N={args.particles}, steps={args.steps}, seeds={args.seeds}; overhead N={args.overhead_particles}, "
        f"steps={args.overhead_steps}, repeats={args.repeats}; jax {info['jax']} ({info['backend']}), {info['cpu_count']} CPUs",
        flush=True,
    )
    t0 = time.perf_counter()
    print("1. MMD² to exact samples (VP, median over seeds)", flush=True)
    table = mmd_table(args)
    print("2. digits network (trained on first use, then cached)", flush=True)
    models = digits.load_or_train(digits.DigitsConfig(), verbose=True)
    print(f"  cache: {digits.cache_dir()} ({'loaded' if models.info['cached'] else 'trained now'}); "
          f"classifier test accuracy {models.info['classifier'].get('test_accuracy', float('nan')):.3f}", flush=True)
    print("   overhead of FKC+SMC over the plain sampler (CFG w=3)", flush=True)
    ovh = overhead(args, models)
    print("3. digits demo", flush=True)
    demo = digits_demo(args, models)

    hdr = f"{'target':<8} {'MMD² FKC':>10} {'MMD² naive':>11} {'log Ẑ FKC':>10} {'log Z':>8}"
    print("\n" + hdr + "\n" + "-" * len(hdr))
    for name, row in table.items():
        print(f"{name:<8} {row['median_fkc']:>10.5f} {row['median_naive']:>11.5f} {statistics.fmean(row['log_z_fkc']):>10.3f} {row['log_z_exact']:>8.3f}")

    out = {
        "benchmark": "diffusion_fkc",
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": info,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "mmd": table,
        "overhead": ovh,
        "digits": {"config": models.info["config"], "training": {k: models.info[k] for k in ("score", "classifier")}, "demo": demo},
        "seconds": time.perf_counter() - t0,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    print(
        f"RESULT mmd_fkc_product={table['product']['median_fkc']:.5f} mmd_naive_product={table['product']['median_naive']:.5f} "
        f"overhead={ovh['ratio_median']:.3f}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
