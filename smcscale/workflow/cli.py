"""The ``smcscale`` command line.

* ``smcscale`` (no arguments; the quickstart's main job) = ``smcscale run``: the embedded
  SmolLM2-135M-Instruct on a few easy arithmetic problems, particle filtering vs best-of-N
  (and weighted best-of-N, majority vote from the same generations) at budgets 1 and 4,
  graded, with the programmatic PRM. Prints a table, saves an accuracy-vs-budget plot;
  results are appended to ``results.jsonl`` and a rerun resumes (see
  :mod:`smcscale.workflow.experiment`). ``--config FILE`` (JSON/TOML) runs any grid.
* ``smcscale report DIR``: the table and plot of an output folder, without running.
* ``smcscale run --shard K/N``: one of ``N`` parts of a grid (run ``N`` processes or
  machines, each with its own ``--out``); ``smcscale merge OUT DIR...`` joins the folders
  (:func:`smcscale.workflow.experiment.merge_experiments`).
* ``smcscale demo``: a bootstrap particle filter on a simulated stochastic-volatility
  series: ``log Z``, an ESS summary, a plot and a JSON record.

Errors (a usage error, a missing or malformed ``--config`` file, an invalid config, a
refused resume) are one line on stderr, ``smcscale: error: ...``, with exit code 2 and no
traceback; a config is validated in full before the output folder is created or the model
loaded. Ctrl-C prints ``smcscale: interrupted; rerun the same command to resume from OUT``
and exits with 130. Also ``python -m smcscale.workflow.cli``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def _demo(args) -> int:
    import jax
    import numpy as np

    import smcscale as smc
    from smcscale.models import stochastic_volatility as sv

    key = jax.random.key(args.seed)
    k_data, k_pf = jax.random.split(key)
    xs, ys = sv.simulate(k_data, args.steps, mu=args.mu, rho=args.rho, sigma=args.sigma)
    fk = smc.bootstrap(sv.stochastic_volatility(args.mu, args.rho, args.sigma))
    summaries = {
        "mean": smc.weighted_mean(),
        "second_moment": smc.weighted_mean(lambda x: x**2),
    }
    t0 = time.perf_counter()
    result = smc.run(
        k_pf,
        fk,
        ys,
        args.num_particles,
        ess_threshold=args.ess_threshold,
        resampling=args.resampling,
        summaries=summaries,
        record=("ancestors",),
    )
    jax.block_until_ready(result.log_z)
    elapsed = time.perf_counter() - t0
    ess = np.asarray(result.ess)
    n_res = int(np.asarray(result.resampled).sum())
    mean = np.asarray(result.summaries["mean"])
    sd = np.sqrt(np.maximum(np.asarray(result.summaries["second_moment"]) - mean**2, 0.0))
    coverage = float(np.mean(np.abs(np.asarray(xs) - mean) <= 2 * sd))
    print("smcscale demo: bootstrap particle filter on a stochastic-volatility series")
    print(f"  T = {args.steps}, N = {args.num_particles}, resampling = {args.resampling}, ESS threshold = {args.ess_threshold}, seed = {args.seed}")
    print(f"  log Z = {float(result.log_z):.4f}")
    print(
        f"  ESS/N: min {ess.min() / args.num_particles:.3f}, median {np.median(ess) / args.num_particles:.3f}, "
        f"mean {ess.mean() / args.num_particles:.3f}; resampled at {n_res} of {args.steps - 1} steps"
    )
    print(f"  true log-volatility inside the ±2 sd filtering band: {coverage:.1%}")
    print(f"  wall time (incl. compilation): {elapsed:.2f} s")

    os.makedirs(args.out, exist_ok=True)
    record = {
        "model": "stochastic_volatility",
        "config": {k: v for k, v in vars(args).items() if k != "func"},
        "log_z": float(result.log_z),
        "ess": ess.tolist(),
        "resampled": np.asarray(result.resampled).astype(int).tolist(),
        "filtering_mean": mean.tolist(),
        "filtering_sd": sd.tolist(),
        "coverage_2sd": coverage,
        "wall_time_s": elapsed,
    }
    json_path = os.path.join(args.out, "demo.json")
    with open(json_path, "w") as f:
        json.dump(record, f)
    if not args.no_plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from smcscale.workflow import plots

        fig, axes = plt.subplots(3, 1, figsize=(8, 8), sharex=True)
        axes[0].plot(np.asarray(ys), lw=0.6, color="0.3")
        axes[0].set_ylabel("y_t (returns)")
        plots.plot_filtering(mean, sd, truth=xs, ax=axes[1])
        axes[1].set_ylabel("log-volatility x_t")
        plots.plot_ess(result, ax=axes[2], num_particles=args.num_particles)
        fig.suptitle(f"SV bootstrap PF, N={args.num_particles}, log Z = {float(result.log_z):.2f}")
        fig.tight_layout()
        png = os.path.join(args.out, "demo.png")
        fig.savefig(png, dpi=110)
        plt.close(fig)
        print(f"  plot: {png}")
    print(f"  record: {json_path}")
    return 0


def _experiment_config(args):
    import dataclasses

    from smcscale.workflow import experiment as E

    cfg = E.load_config(args.config) if args.config else E.DEFAULT_CONFIG
    changes = {}
    if args.problems is not None:
        changes["problems"] = args.problems
    if args.split is not None:
        changes["split"] = args.split
    if args.budgets is not None:
        changes["budgets"] = tuple(args.budgets)
    if args.seeds is not None:
        changes["seeds"] = tuple(args.seeds)
    if args.methods is not None:
        known = {m.name: m for m in cfg.methods}
        specs = []
        for name in args.methods:
            if name in known:
                specs.append(known[name])
            elif name in E.METHOD_KINDS:
                specs.append(E.MethodSpec(name, name))
            else:
                raise ValueError(f"unknown method {name!r}; choose from {sorted(set(known) | set(E.METHOD_KINDS))}")
        changes["methods"] = tuple(specs)
    if args.max_new_tokens is not None:
        changes["generation"] = {**cfg.generation, "max_new_tokens": args.max_new_tokens}
    return dataclasses.replace(cfg, **changes) if changes else cfg


def _run(args) -> int:
    from smcscale.workflow import experiment as E

    cfg = _experiment_config(args)
    shard = None
    if args.shard is not None:
        parts = args.shard.split("/")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"--shard takes K/N (e.g. 2/3), got {args.shard!r}")
        shard = tuple(int(p) for p in parts)
    E.run_experiment(cfg, args.out, progress=not args.no_progress, plot=not args.no_plot, shard=shard)
    return 0


def _report(args) -> int:
    import json

    from smcscale.workflow import experiment as E

    path = os.path.join(args.dir, "results.jsonl")
    if not os.path.exists(path):
        raise ValueError(f"no results.jsonl in {args.dir}")
    store = E.ResultStore(path)
    cfg = None
    cpath = os.path.join(args.dir, "config.json")
    if os.path.exists(cpath):
        with open(cpath) as f:
            cfg = E.ExperimentConfig(**json.load(f)["config"])
    summary = E.summarize(store.records, cfg)
    print(E.format_table(summary))
    if not args.no_plot:
        print(f"plot: {E.plot_accuracy_vs_budget(summary, os.path.join(args.dir, 'accuracy_vs_budget.png'))}")
    return 0


def _merge(args) -> int:
    from smcscale.workflow import experiment as E

    E.merge_experiments(args.out, args.sources)
    print(f"table and plot: smcscale report {args.out}")
    return 0


def _add_run_arguments(p) -> None:
    p.add_argument("--config", help="experiment config (JSON or TOML; fields of smcscale.workflow.experiment.ExperimentConfig)")
    p.add_argument("--out", default=os.path.join("smcscale_runs", "main"), help="output folder (a rerun resumes)")
    p.add_argument("--problems", type=int, help="number of problems from the start of the split")
    p.add_argument("--split", help="task split (default easy-test)")
    p.add_argument("--budgets", type=int, nargs="+", help="budgets N")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds")
    p.add_argument("--methods", nargs="+", help="method names of the config or kinds: greedy independent beam dvts pf pg")
    p.add_argument("--max-new-tokens", type=int, help="token cap per generation")
    p.add_argument("--shard", metavar="K/N", help="run only the K-th of N parts of the grid, dealt by hash of the unit "
                   "id (one process per part, each with its own --out; join them with smcscale merge)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-plot", action="store_true", help="no PNG")


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr (exit code 2), like every other error of the CLI."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="smcscale",
        description="Sequential Monte Carlo inference-time scaling in JAX. With no command: `smcscale run` "
        "(SmolLM2, particle filtering vs best-of-N on easy arithmetic problems).",
    )
    _add_run_arguments(parser)
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run or resume an experiment grid (the default command)")
    _add_run_arguments(run)
    run.set_defaults(func=_run)
    report = sub.add_parser("report", help="table and plot of an experiment folder")
    report.add_argument("dir")
    report.add_argument("--no-plot", action="store_true")
    report.set_defaults(func=_report)
    merge = sub.add_parser("merge", help="merge experiment folders (a grid sharded over processes or machines)")
    merge.add_argument("out", help="the merged folder (created if needed; its own results are kept)")
    merge.add_argument("sources", nargs="+", help="experiment folders to merge into OUT")
    merge.set_defaults(func=_merge)
    demo = sub.add_parser("demo", help="particle filter on a simulated stochastic-volatility series")
    demo.add_argument("--num-particles", "-N", type=int, default=10_000)
    demo.add_argument("--steps", "-T", type=int, default=250)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--ess-threshold", type=float, default=0.5)
    demo.add_argument("--resampling", default="systematic")
    demo.add_argument("--mu", type=float, default=-1.0)
    demo.add_argument("--rho", type=float, default=0.95)
    demo.add_argument("--sigma", type=float, default=0.3)
    demo.add_argument("--out", default="smcscale_out")
    demo.add_argument("--no-plot", action="store_true")
    demo.set_defaults(func=_demo)
    return parser


def _one_line(message) -> str:
    return " ".join(str(message).split())


def main(argv=None) -> int:
    """Run the command line; returns the exit code (0; 2 on an error; 130 on Ctrl-C).

    An error (a bad argument or config, a missing file, a refused resume...) is one line on
    stderr, ``smcscale: error: ...``, with exit code 2 and no traceback. Ctrl-C stops a run
    with one line saying how to resume it (exit code 130)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        args.func = _run
    try:
        return args.func(args)
    except KeyboardInterrupt:
        hint = f"; rerun the same command to resume from {args.out}" if args.func is _run else ""
        print(f"smcscale: interrupted{hint}", file=sys.stderr)
        return 130
    except OSError as e:
        what = f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e)
        print(f"smcscale: error: {_one_line(what)}", file=sys.stderr)
        return 2
    except (ValueError, TypeError) as e:
        print(f"smcscale: error: {_one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
