r"""Step-level SMC over LM generations: particle filter, particle Gibbs, parallel tempering.

**The Feynman–Kac model.** A particle is a generation ``x`` (token ids after the prompt)
split into *steps*: a step ends at a delimiter (``"\n\n"`` found in the decoded text of
the step, or a token id in ``delimiter_ids``) or after ``step_tokens`` tokens. The Markov
kernel is the LM (the proposal ``q``: temperature, top-p, optional token mask); the
potentials come from a :class:`~smcscale.text.potentials.StepPotential` (PRM score of the
prefix, aggregated, in ``"twisted"`` or ``"paper"`` mode) and from token-level terms.

**Lockstep rounds.** The LM protocol decodes every particle one token per call at a shared
position, so no particle can wait for the others without corrupting its KV cache. Decoding
is therefore token-level: every unfinished particle gets one token per call, and a **round**
(an SMC step: score, reweight, maybe resample) ends as soon as every unfinished particle has
completed at least one new step since the previous round (or a fraction ``round_quorum`` of
them; ``max_step_tokens`` bounds a step without delimiter). A particle whose step ended early
keeps generating its next step meanwhile; its potential at the round is the score of its
*latest complete* prefix. As a token-level FK model whose potential changes only when a step
completes, and whose resampling times are a symmetric function of the population, this is
an ordinary (adaptive-resampling) SMC: in twisted mode the target does not depend on when
rounds happen. With ``step_tokens = k`` every round is exactly ``k`` tokens, as in
its_hub. (Making particles wait would need per-particle positions in the LM protocol.)

**Finishing.** A particle finishes, and is then absorbing (never extended: its decode
output is ignored; it keeps its weight and can be copied by resampling), on

* an EOS token (``tokenizer.eos_ids``; EOS is not part of the text);
* the answer pattern (default: a complete ``\boxed{...}``, checked on the current step);
* ``max_steps`` complete steps;
* ``max_new_tokens`` generated tokens — **truncation**: its log-weight gains
  ``log b(EOS | x)``, the base measure's probability of stopping there (not weight 0), so
  the target stays a law on complete generations of at most ``max_new_tokens`` tokens.

On finishing, the text after the last delimiter becomes the final step (a particle that
finishes with no text at all has one empty step ``""``).

**Token terms and the base measure ``b``.** The target is ``b(x) · potentials``:

* default: ``b`` = the proposal itself (the LM at ``temperature``, top-p applied); no
  per-token weight;
* ``proposal_correction=True``: ``b = p_LM`` (temperature 1); per-token weight
  ``log p(v) - log q(v)``;
* a weighted :class:`~smcscale.text.potentials.TokenConstraint`: ``b`` = LM at
  ``temperature`` restricted to allowed strings, per-token weight = log of the allowed mass
  under the unmasked proposal (exact for ``top_p = 1``; with top-p use
  ``proposal_correction=True``). LCD (``weighted=False``): no weight, target distorted.

**Weights, log Z, ESS** follow :mod:`smcscale.smc` exactly: log-weights kept normalised per
population; at a round the increment of ``log Z`` is ``logsumexp(carried + log G)`` with
``carried = -log n`` right after a resample and the previous normalised log-weights
otherwise. Twisted mode resamples when ``ESS < kappa n``; paper mode resamples every round.
A population whose weights are all zero is **dead**: ``log Z = -inf``, every weight 0, its
unfinished particles stop (finish reason ``"dead"``), no NaN, and the selected answer is
``None``. A single particle of weight zero is likewise stopped (``"dead"``).

**Several populations in one batch.** :func:`particle_filter` (``num_runs``),
:func:`particle_gibbs` (``num_chains``), :func:`parallel_tempering` (one population per
temperature) and DVTS (:mod:`smcscale.text.search`) run independent populations of equal
size side by side in one LM batch (resampling never crosses populations; stable ancestors
keep it so); their budget counters count each population as if it ran alone.

**Particle Gibbs.** A conditional sweep keeps one *reference* generation in one slot of its
population: its tokens are teacher-forced (a one-token mask), but its weight is computed on
the same footing as the free particles' (same PRM scoring of its prefixes, same token terms
from the *free* proposal; regression test of its_hub #54). The reference finishes exactly
where it finished before, by the same rule, and is never extended afterwards (its_hub #208);
resampling is conditional multinomial (``n - 1`` iid draws, the reference slot keeps its
ancestor), ESS-adaptive if ``ess_threshold < 1``. Ancestor sampling (twisted mode only)
redraws the reference's ancestor at each resampling with probability
``∝ W_i γ(x^i_{1:t} ⊕ x*_{t+1:}) / γ_t(x^i_{1:t})``: the reference suffix is teacher-forced on
a copy of every candidate's cache, replayed through the stopping rules, and the joined
generation is scored by the PRM (costly: counted in the budget).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import time
import warnings
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ..resampling import get_resampler, stable_ancestors
from ..smc import ParticleCollapseError, ParticleCollapseWarning
from ..weights import reweight
from .lm import top_p_filter
from .potentials import StepPotential, TokenConstraint, as_step_potential

__all__ = [
    "GenerationConfig",
    "Budget",
    "Trajectory",
    "TextSMCResult",
    "particle_filter",
    "particle_gibbs",
    "parallel_tempering",
    "majority_vote",
    "weighted_majority_vote",
    "select_answer",
    "boxed_answer",
    "as_key",
    "check_count",
    "Sweep",
    "BeamPolicy",
    "FinalPolicy",
    "has_boxed",
    "encode_prompt",
    "swap_log_ratio",
    "check_collapse",
    "ON_COLLAPSE",
]

FINISH_REASONS = ("eos", "answer", "step_cap", "length", "dead")


# ---------------------------------------------------------------------------------------
# configuration and results


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """How particles generate and when they stop.

    Attributes:
      delimiter: step delimiter searched in the decoded text of the current step.
      delimiter_ids: token ids that end a step (used instead of ``delimiter`` if given).
      step_tokens: fixed step length in tokens (used instead of both if given).
      max_step_tokens: with a delimiter, a step also ends after this many tokens (a model
        that never writes the delimiter would otherwise hold every round up to the token cap).
      max_steps: step cap (its_hub uses 40-50).
      max_new_tokens: token cap; a particle reaching it is truncated (weight × b(EOS | x)).
      temperature, top_p: the proposal (Puri et al.: 0.8, 1.0).
      answer_pattern: ``"boxed"`` (a complete ``\boxed{...}``), a regex, a callable
        ``text -> bool`` checked on the current step's text, or ``None``.
      proposal_correction: weight by ``p_LM / q`` so that the base measure is ``p_LM``.
      round_quorum: a round ends once this fraction of the unfinished particles has completed
        a new step (1 = all of them, its_hub's one step per particle per round). Any value
        keeps the twisted target (the round times are a symmetric function of the
        population); in paper mode the rounds, hence the target, change.
      compact_rows: drop finished particles from the LM batch. Decoding is lockstep, so a
        finished row would otherwise be computed (and wasted) until the sweep ends. Before a
        decode step, once the unfinished particles fit in a power-of-two batch at most half
        the current one (and of at least ``compact_rows`` rows), their KV caches are gathered
        into that smaller batch; resampling may grow it again. Each batch size is one more
        compiled decode shape, and small batches are memory-bound, hence the floor.
        ``None`` keeps every row to the end. Token draws are per batch row, so compaction
        changes the draws (not their law) from the first compaction on.
    """

    delimiter: Optional[str] = "\n\n"
    delimiter_ids: Optional[tuple] = None
    step_tokens: Optional[int] = None
    max_step_tokens: Optional[int] = None
    max_steps: int = 40
    max_new_tokens: int = 256
    temperature: float = 0.8
    top_p: float = 1.0
    answer_pattern: Any = "boxed"
    proposal_correction: bool = False
    round_quorum: float = 1.0
    compact_rows: Optional[int] = 8

    def __post_init__(self):
        if self.step_tokens is not None and (not isinstance(self.step_tokens, int) or self.step_tokens < 1):
            raise ValueError(f"step_tokens must be a positive int, got {self.step_tokens!r}")
        if self.step_tokens is None and self.delimiter_ids is None and not self.delimiter:
            raise ValueError("give a step delimiter (text), delimiter_ids or step_tokens")
        if not isinstance(self.max_steps, int) or self.max_steps < 1:
            raise ValueError(f"max_steps must be a positive int, got {self.max_steps!r}")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive int, got {self.max_new_tokens!r}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 < self.round_quorum <= 1:
            raise ValueError(f"round_quorum must be in (0, 1], got {self.round_quorum}")
        if self.max_step_tokens is not None and (not isinstance(self.max_step_tokens, int) or self.max_step_tokens < 1):
            raise ValueError(f"max_step_tokens must be a positive int, got {self.max_step_tokens!r}")
        if self.compact_rows is not None and (
            isinstance(self.compact_rows, bool) or not isinstance(self.compact_rows, int) or self.compact_rows < 1
        ):
            raise ValueError(f"compact_rows must be a positive int or None, got {self.compact_rows!r}")
        if self.delimiter_ids is not None:
            object.__setattr__(self, "delimiter_ids", tuple(int(i) for i in self.delimiter_ids))


@dataclasses.dataclass
class Budget:
    """Compute counters of one population (as if it ran alone).

    * ``generations``: particle slots launched (``n`` per sweep; the papers' budget unit);
    * ``generated_tokens``: tokens sampled by unfinished free particles (EOS included);
    * ``forced_tokens``: reference tokens teacher-forced (particle Gibbs);
    * ``decode_steps``: batched decode calls while the population had unfinished particles
      (plus teacher-forced passes of ancestor sampling);
    * ``lm_forward_tokens``: tokens the LM actually computed: ``prefill_tokens`` + the LM
      batch rows that held the population's particles, summed over its decode steps. Decoding
      is lockstep, so finished rows count until :attr:`GenerationConfig.compact_rows` drops
      them; without compaction this is ``prefill_tokens + n * decode_steps``. Padding rows of
      a compacted batch count for the population of the particle they repeat.
    * ``prm_calls``, ``prm_input_chars``, ``prm_input_tokens``: prefixes scored, and
      characters and tokens sent to the PRM (tokens: see :class:`.potentials.PRMAdapter`);
    * ``rounds``, ``resamples``: SMC rounds and resampling events.
    """

    generations: int = 0
    generated_tokens: int = 0
    forced_tokens: int = 0
    decode_steps: int = 0
    prefill_tokens: int = 0
    lm_forward_tokens: int = 0
    prm_calls: int = 0
    prm_input_chars: int = 0
    prm_input_tokens: int = 0
    rounds: int = 0
    resamples: int = 0

    def __add__(self, other: "Budget") -> "Budget":
        return Budget(*(getattr(self, f.name) + getattr(other, f.name) for f in dataclasses.fields(self)))

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Trajectory:
    """One finished generation, usable as a particle Gibbs reference."""

    token_ids: tuple
    finish_reason: str
    eos_id: Optional[int] = None
    text: str = ""
    steps: tuple = ()
    score: float = float("nan")  # aggregated final PRM score r_T


@dataclasses.dataclass
class TextSMCResult:
    """What every sampler and search method returns (one population).

    ``weights`` are normalised (all zero for a dead population); ``scores`` are the final
    aggregated PRM scores ``r_T``; ``selected`` is the index chosen by the selection rule
    (``None`` if undefined) and ``selected_answer`` the chosen answer (for a vote, the
    winning answer). ``ess``/``resampled``/``ancestors`` have one entry per round
    (``ancestors[t][i]`` = parent slot of slot ``i`` after round ``t``; identity when not
    resampled). ``info`` holds method-specific extras (references, swap rates, ...).
    """

    texts: list
    token_ids: list
    steps: list
    step_scores: list
    scores: np.ndarray
    answers: list
    log_weights: np.ndarray
    weights: np.ndarray
    finish_reasons: list
    selected: Optional[int]
    selected_text: Optional[str]
    selected_answer: Any
    log_z: float
    ess: np.ndarray
    resampled: np.ndarray
    ancestors: list
    budget: Budget
    wall_time: float
    method: str = ""
    info: dict = dataclasses.field(default_factory=dict)

    def weighted(self, fn: Callable[[Any], float]) -> float:
        """``sum_i W_i fn(answer_i)`` (e.g. the posterior accuracy estimate of Puri et al.)."""
        return float(sum(w * float(fn(a)) for w, a in zip(self.weights, self.answers)))

    def trajectory(self, i: int) -> Trajectory:
        return self.info["trajectories"][i]


# ---------------------------------------------------------------------------------------
# answers and votes


def has_boxed(text: str) -> bool:
    """Whether ``text`` contains a complete ``\\boxed{...}`` (balanced braces)."""
    return boxed_answer(text) is not None


def boxed_answer(text: str) -> Optional[str]:
    """The default ``answer_fn`` of the samplers: the content of the *last* complete
    ``\\boxed{...}`` in ``text`` (balanced braces), stripped of surrounding whitespace, or
    ``None`` if there is none. Task-specific answers (e.g. the integer of
    :func:`smcscale.tasks.arithmetic.extract_answer`) are passed as ``answer_fn``."""
    last = None
    for m in re.finditer(r"\\boxed\s*\{", text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            c = text[i]
            depth += (c == "{") - (c == "}")
            i += 1
        if depth == 0:
            last = text[m.end() : i - 1].strip()
    return last


def majority_vote(answers: Sequence) -> Any:
    """The most frequent answer (``None`` answers ignored; ties: first seen). ``None`` if none."""
    return weighted_majority_vote(answers, np.ones(len(answers)))


def weighted_majority_vote(answers: Sequence, weights) -> Any:
    """The answer with the largest total weight (``None`` answers and zero weights ignored;
    ties: first seen). ``None`` if no answer has positive weight."""
    totals: dict = {}
    order: list = []
    for a, w in zip(answers, np.asarray(weights, float)):
        if a is None or not w > 0:
            continue
        key = _hashable(a)
        if key not in totals:
            totals[key] = [0.0, a]
            order.append(key)
        totals[key][0] += float(w)
    if not order:
        return None
    best = max(order, key=lambda k: (totals[k][0], -order.index(k)))
    return totals[best][1]


def _hashable(a):
    try:
        hash(a)
        return a
    except TypeError:
        return repr(a)


def select_answer(answers: Sequence, weights, how: str = "argmax", scores=None):
    """``(index, answer)``: ``"argmax"`` weight or weighted ``"vote"`` (index = the first
    particle with the winning answer). ``(None, None)`` if all weights are 0.

    Ties of the largest weight (equal up to a relative ``1e-9``) go to the largest
    ``scores`` entry (e.g. the particles' PRM scores ``r``), then to the lowest index. Ties
    are the rule, not the exception, for a particle filter: resampling resets the weights to
    ``1/N``, so at the end every particle whose potential did not move since the last
    resampling has the same weight (with a step-level PRM of a few score levels, most of
    them), and the lowest index would be an arbitrary pick; under particle Gibbs it would
    be the reference slot, i.e. the previous sweep's draw."""
    w = np.asarray(weights, float)
    if w.size == 0 or not np.any(w > 0):
        return None, None
    if how not in ("argmax", "vote"):
        raise ValueError(f"unknown selection rule {how!r}; choose 'argmax' or 'vote'")

    def top():
        cand = np.flatnonzero(w >= w.max() * (1.0 - 1e-9))
        if scores is not None and cand.size > 1:
            sc = np.asarray(scores, float)[cand]
            sc = np.where(np.isnan(sc), -np.inf, sc)
            cand = cand[sc == sc.max()]
        return int(cand[0])

    if how == "argmax":
        i = top()
        return i, answers[i]
    if how == "vote":
        a = weighted_majority_vote(answers, w)
        if a is None:
            i = top()
            return i, answers[i]
        key = _hashable(a)
        i = next(j for j, b in enumerate(answers) if b is not None and _hashable(b) == key and w[j] > 0)
        return i, a


# ---------------------------------------------------------------------------------------
# per-token terms (jitted) and batched resampling


@functools.partial(jax.jit, static_argnames=("temperature", "top_p", "correction", "weighted", "has_mask"))
def _token_terms(logprobs, tokens, cmask, *, temperature, top_p, correction, weighted, has_mask):
    """Per row: ``(term, log m·G)``: the per-token log-weight and the log density of the
    token under the target's base measure (proposal × weight), both for the *free* proposal
    (constraint mask, temperature, top-p) — also for teacher-forced rows."""
    logprobs = logprobs.astype(jnp.float32)
    prop = logprobs
    if has_mask:
        empty = ~jnp.any(cmask, axis=-1)
        prop = jnp.where(cmask | empty[:, None], prop, -jnp.inf)
    else:
        empty = jnp.zeros(logprobs.shape[:1], bool)
    if temperature == 0.0:
        best = jnp.argmax(prop, axis=-1)
        logq_full = jnp.where(jnp.arange(prop.shape[-1])[None, :] == best[:, None], 0.0, -jnp.inf)
    else:
        scaled = prop / temperature
        if top_p < 1.0:
            scaled = top_p_filter(scaled, top_p)
        logq_full = jax.nn.log_softmax(scaled, axis=-1)
    logq = jnp.take_along_axis(logq_full, tokens[:, None], axis=-1)[:, 0]
    logp = jnp.take_along_axis(logprobs, tokens[:, None], axis=-1)[:, 0]
    ok = jnp.isfinite(logq)
    if correction:
        term = jnp.where(ok, logp - logq, -jnp.inf)
        logmg = jnp.where(ok, logp, -jnp.inf)
    else:
        if has_mask and weighted:
            base = logprobs if temperature == 0.0 else jax.nn.log_softmax(logprobs / temperature, axis=-1)
            term = jax.nn.logsumexp(jnp.where(cmask, base, -jnp.inf), axis=-1)
        else:
            term = jnp.zeros_like(logq)
        logmg = logq + term
    term = jnp.where(empty, -jnp.inf, term)
    logmg = jnp.where(empty, -jnp.inf, logmg)
    return term, logmg


@functools.lru_cache(maxsize=None)
def _batched_resampler(scheme):
    res = get_resampler(scheme)
    return jax.jit(jax.vmap(lambda k, lw: res(k, lw, lw.shape[0])))


def _resample_groups(scheme, key, lws: np.ndarray, pad_to: int) -> np.ndarray:
    """Ancestors ``[G, n]`` for ``G`` populations at once (padded to ``pad_to`` rows, rounded
    up to a power of two, so that one sweep compiles one shape)."""
    g, n = lws.shape
    gp = 1 << max(0, (max(g, pad_to) - 1).bit_length())
    pad = np.full((gp, n), -np.inf, np.float32)
    pad[:g] = lws
    keys = jax.random.split(key, gp)
    return np.asarray(_batched_resampler(scheme)(keys, jnp.asarray(pad)))[:g]


def _logsumexp(x: np.ndarray) -> float:
    m = np.max(x)
    if not np.isfinite(m):
        return -math.inf if m == -math.inf else math.nan
    return float(m + np.log(np.sum(np.exp(x - m))))


def _rng(key) -> np.random.Generator:
    return np.random.default_rng(np.asarray(jax.random.key_data(key)).astype(np.uint32).tolist())


def as_key(key):
    """A typed JAX PRNG key from ``key``: an int seed (``None`` means 0), a typed key
    (returned as is) or raw ``uint32`` key data (wrapped)."""
    if key is None:
        key = 0
    if isinstance(key, (int, np.integer)):
        return jax.random.key(int(key))
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)
    return key


# ---------------------------------------------------------------------------------------
# particles and stopping rules (host side)


CACHE_QUANTUM = 64


def _cache_len(lm, need: int) -> int:
    """KV-cache length for ``need`` positions, rounded up to a multiple of
    :data:`CACHE_QUANTUM` (capped at the model's context length): the decode step is compiled
    per cache shape, so prompts of different lengths share one compilation."""
    m = -(-need // CACHE_QUANTUM) * CACHE_QUANTUM
    limit = getattr(getattr(lm, "config", None), "max_position", None)
    return max(need, min(m, limit)) if limit else m


class _Particle:
    __slots__ = ("tokens", "bounds", "steps", "scores", "finished", "reason", "new_step", "logr", "r", "eos_id", "needs_eos", "dead")

    def __init__(self):
        self.tokens: list = []
        self.bounds: list = [0]
        self.steps: list = []
        self.scores: list = []
        self.finished = False
        self.reason: Optional[str] = None
        self.new_step = False
        self.logr = 0.0  # log r of the prefix used in the weight so far (twisted)
        self.r = 1.0  # aggregated score of the latest scored prefix
        self.eos_id: Optional[int] = None
        self.needs_eos = False
        self.dead = False

    def copy(self) -> "_Particle":
        p = _Particle.__new__(_Particle)
        p.tokens, p.bounds, p.steps, p.scores = list(self.tokens), list(self.bounds), list(self.steps), list(self.scores)
        p.finished, p.reason, p.new_step, p.logr, p.r = self.finished, self.reason, self.new_step, self.logr, self.r
        p.eos_id, p.needs_eos, p.dead = self.eos_id, self.needs_eos, self.dead
        return p


def _make_pattern(pattern):
    if pattern is None:
        return None
    if pattern == "boxed":
        return has_boxed
    if isinstance(pattern, str):
        rx = re.compile(pattern)
        return lambda text: rx.search(text) is not None
    if callable(pattern):
        return pattern
    raise TypeError(f"answer_pattern must be 'boxed', a regex string, a callable or None, got {type(pattern).__name__}")


class _Rules:
    """Step segmentation and stopping rules, applied token by token to one particle."""

    def __init__(self, cfg: GenerationConfig, tokenizer):
        self.eos = frozenset(int(i) for i in tokenizer.eos_ids)
        if not self.eos:
            raise ValueError("the tokenizer has no eos_ids: a generation could never stop")
        self.decode = tokenizer.decode
        self.k = cfg.step_tokens
        self.delim_ids = frozenset(cfg.delimiter_ids) if (self.k is None and cfg.delimiter_ids is not None) else None
        self.delim = cfg.delimiter
        self.text_steps = self.k is None and self.delim_ids is None
        self.pattern = _make_pattern(cfg.answer_pattern)
        self.max_steps = cfg.max_steps
        self.max_tokens = cfg.max_new_tokens
        self.max_step_tokens = cfg.max_step_tokens

    def advance(self, p: _Particle, tok: int) -> None:
        if tok in self.eos:
            p.eos_id = tok
            self.finish(p, "eos")
            return
        p.tokens.append(tok)
        n, b = len(p.tokens), p.bounds[-1]
        text = self.decode(p.tokens[b:]) if (self.text_steps or self.pattern is not None) else None
        if self.pattern is not None and self.pattern(text):
            self.finish(p, "answer")
            return
        if self.k is not None:
            complete = n - b >= self.k
        elif self.delim_ids is not None:
            complete = tok in self.delim_ids
        else:
            complete = self.delim in text
        if not complete and self.max_step_tokens is not None and n - b >= self.max_step_tokens:
            complete = True
        if complete:
            p.bounds.append(n)
            p.steps.append(text if text is not None else self.decode(p.tokens[b:]))
            p.new_step = True
            if len(p.steps) >= self.max_steps:
                self.finish(p, "step_cap")
                return
        if n >= self.max_tokens:
            self.finish(p, "length")
            p.needs_eos = True

    def finish(self, p: _Particle, reason: str) -> None:
        n, b = len(p.tokens), p.bounds[-1]
        if n > b or not p.steps:
            p.bounds.append(n)
            p.steps.append(self.decode(p.tokens[b:]))
        p.finished = True
        p.reason = reason
        p.new_step = True


# ---------------------------------------------------------------------------------------
# per-population policies


@dataclasses.dataclass
class _SMCPolicy:
    potential: StepPotential
    resampling: Any = "systematic"
    ess_threshold: float = 0.5
    conditional: bool = False
    ancestor_sampling: bool = False
    paper_rounds: str = "all_finished"
    kind: str = "smc"


@dataclasses.dataclass
class BeamPolicy:
    """The policy of a population run as step-level beam search by :class:`Sweep`: at every
    round keep the ``keep`` best unfinished beams by ``potential`` score (default
    ``n_active // width``) and expand each ``width`` ways; finished beams are set aside."""

    potential: StepPotential
    width: int  # M: each kept beam is expanded M ways
    keep: Optional[int] = None  # beams kept per round (default: n_active // M)
    kind: str = "beam"


@dataclasses.dataclass
class FinalPolicy:
    """The policy of a population of independent generations run by :class:`Sweep`
    (best-of-N and votes): no selection or reweighting; the PRM scores each finished
    generation once at the end (``potential`` may be ``None``: no scores)."""

    potential: StepPotential
    kind: str = "final"


class _Group:
    def __init__(self, index: int, offset: int, n: int, policy, ref: Optional[Trajectory]):
        self.index, self.offset, self.n, self.policy, self.ref = index, offset, n, policy, ref
        self.ref_slot = 0 if ref is not None else None
        self.lw = np.full(n, -math.log(n))  # carried log-weights (normalised)
        self.inc = np.zeros(n)
        self.log_z = 0.0
        self.ess: list = []
        self.resampled: list = []
        self.ancestors: list = []
        self.history: list = []
        self.done = False
        self.pending_ess = math.nan
        self.paper_pending = False
        self.budget = Budget(generations=n)
        self.rows_computed = 0  # LM batch rows of this population, summed over decode steps

    @property
    def slots(self) -> range:
        return range(self.offset, self.offset + self.n)


# ---------------------------------------------------------------------------------------
# the engine


class Sweep:
    """One sweep of ``G`` populations of ``n`` particles each, decoded in one LM batch.

    The engine of every sampler here and of :mod:`smcscale.text.search`. ``policies`` has
    one policy per population (:class:`BeamPolicy`, :class:`FinalPolicy`, or the SMC policy
    built by the samplers): it says how that population is weighted and selected at the end
    of a round. ``references`` (one optional :class:`Trajectory` per population) condition
    SMC populations (particle Gibbs). ``run()`` decodes until every particle has finished
    and returns the sweep; ``groups`` then lists the populations, and ``result(group,
    method, answer_fn, select)`` turns one into a :class:`TextSMCResult`.
    """

    def __init__(self, lm, cfg: GenerationConfig, prompt_ids, context: str, n: int, policies: Sequence,
                 key, references: Optional[Sequence[Optional[Trajectory]]] = None,
                 constraint: Optional[TokenConstraint] = None, record_history: bool = False,
                 progress: bool = False):
        self.lm, self.cfg, self.context = lm, cfg, context
        self.progress = bool(progress)
        self.prompt_ids = [int(i) for i in prompt_ids]
        self.rules = _Rules(cfg, lm.tokenizer)
        self.constraint = constraint
        if constraint is not None and cfg.proposal_correction and not constraint.weighted:
            raise ValueError("LCD (an unweighted constraint) contradicts proposal_correction=True")
        self.vocab = int(lm.vocab_size)
        self.record_history = record_history
        refs = list(references) if references is not None else [None] * len(policies)
        if len(refs) != len(policies):
            raise ValueError(f"{len(refs)} references for {len(policies)} populations")
        self.groups = [_Group(g, g * n, n, pol, ref) for g, (pol, ref) in enumerate(zip(policies, refs))]
        self.n, self.N = n, n * len(policies)
        self.particles = [_Particle() for _ in range(self.N)]
        self.row_group = np.repeat(np.arange(len(policies)), n)
        self.key_tok, self.key_res, self.key_as = jax.random.split(as_key(key), 3)
        # LM batch rows (see GenerationConfig.compact_rows): particle -> row (-1 once dropped)
        # and row -> particle (padding rows repeat a live particle); identity until compaction
        self.row = np.arange(self.N)
        self.owner = np.arange(self.N)
        self.compacted = False
        self.t = 0
        self.round_counter = 0
        for g in self.groups:
            if g.ref is not None:
                self._check_reference(g.ref)
                if g.policy.kind != "smc" or not g.policy.conditional:
                    raise ValueError("a reference needs a conditional SMC policy")

    def _check_reference(self, ref: Trajectory):
        if ref.finish_reason not in ("eos", "answer", "step_cap", "length"):
            raise ValueError(f"a reference must be a finished generation, got finish_reason={ref.finish_reason!r}")
        if ref.finish_reason == "eos" and ref.eos_id is None:
            raise ValueError("a reference that ended with EOS needs its eos_id")
        if len(ref.token_ids) > self.cfg.max_new_tokens:
            raise ValueError(f"the reference has {len(ref.token_ids)} tokens > max_new_tokens={self.cfg.max_new_tokens}")

    # -- main loop ----------------------------------------------------------------------
    def run(self):
        t0 = time.perf_counter()
        lm, cfg = self.lm, self.cfg
        self.state = lm.prefill(self.prompt_ids, self.N, _cache_len(lm, len(self.prompt_ids) + cfg.max_new_tokens))
        for g in self.groups:
            g.budget.prefill_tokens = len(self.prompt_ids)
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.max_new_tokens, desc=f"decoding {self.N} rows", unit="tok", dynamic_ncols=True,
                       leave=False)
        while not all(g.done for g in self.groups):
            self._decode_one()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(rounds=max(g.budget.rounds for g in self.groups),
                                live=sum(not p.finished for p in self.particles), refresh=False)
            to_resample = []
            for g in self.groups:
                if not g.done and self._round_ready(g):
                    if self._end_round(g):
                        to_resample.append(g)
            if to_resample:
                self._resample(to_resample)
            pending = [g for g in self.groups if g.paper_pending]
            if pending:
                self._extra_paper_rounds(pending)
        if bar is not None:
            bar.close()
        self.wall_time = time.perf_counter() - t0
        for g in self.groups:
            g.budget.lm_forward_tokens = g.budget.prefill_tokens + g.rows_computed
        return self

    # -- LM batch rows ------------------------------------------------------------------
    def _batch_size(self, live: int) -> int:
        floor = self.cfg.compact_rows
        return min(self.N, max(floor, 1 << max(0, (live - 1).bit_length())))

    def _compact(self) -> None:
        """Drop finished rows once the unfinished particles fit in half the batch."""
        if self.cfg.compact_rows is None:
            return
        live = np.flatnonzero([not p.finished for p in self.particles])
        if live.size and self._batch_size(live.size) < self.owner.size:
            self._set_rows(live, live)

    def _set_rows(self, live: np.ndarray, sources: np.ndarray) -> None:
        """New LM batch: row ``k`` continues particle ``sources[k]`` and now holds ``live[k]``."""
        b = self._batch_size(live.size)
        pad = np.full(b - live.size, live[0], np.int64)
        src = self.row[np.concatenate([sources, np.full(pad.size, sources[0], np.int64)])]
        if np.any(src < 0):  # pragma: no cover - unfinished particles always have a row
            raise RuntimeError("an unfinished particle lost its LM row")
        self.state = self.lm.reorder(self.state, jnp.asarray(src, jnp.int32))
        self.row = np.full(self.N, -1, np.int64)
        self.row[live] = np.arange(live.size)
        self.owner = np.concatenate([live, pad])
        self.compacted = True

    def _count_rows(self, groups) -> None:
        """Charge one decode step of the current batch to ``groups``."""
        per = np.bincount(self.row_group[self.owner], minlength=len(self.groups))
        for g in groups:
            g.budget.decode_steps += 1
            g.rows_computed += int(per[g.index])

    def _rows(self, a):
        """A per-particle ``[N, ...]`` array (or None) as per-row."""
        return None if a is None else a[self.owner]

    def _forced_token(self, g: _Group, p: _Particle) -> int:
        ref, j = g.ref, len(p.tokens)
        if j < len(ref.token_ids):
            return int(ref.token_ids[j])
        if ref.finish_reason == "eos":
            return int(ref.eos_id)
        raise RuntimeError(
            "the reference did not stop where it stopped before: it was generated under different "
            "stopping rules (step delimiter, caps or answer pattern)"
        )

    def _masks(self, rows_forced: dict):
        """(decode mask or None, constraint mask or None) as numpy ``[rows, V]`` for the
        current LM batch (``rows_forced`` maps particles to their teacher-forced token)."""
        cm = None
        if self.constraint is not None:
            ctxs = [self.particles[i].tokens if not self.particles[i].finished else [] for i in self.owner]
            cm = self.constraint.masks(ctxs, self.vocab)
        if cm is None and not rows_forced:
            return None, None
        mask = np.array(cm, copy=True) if cm is not None else np.ones((self.owner.size, self.vocab), bool)
        for i, tok in rows_forced.items():
            r = self.row[i]
            mask[r] = False
            mask[r, tok] = True
        return mask, cm

    def _terms(self, logprobs, tokens, cm):
        cfg = self.cfg
        has = cm is not None
        return _token_terms(
            logprobs, tokens, jnp.asarray(cm) if has else None, temperature=float(cfg.temperature), top_p=float(cfg.top_p),
            correction=bool(cfg.proposal_correction), weighted=bool(has and self.constraint.weighted), has_mask=has,
        )

    def _eos_logmg(self, logits, cm) -> np.ndarray:
        logprobs = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
        out = []
        for e in sorted(self.rules.eos):
            toks = jnp.full((logprobs.shape[0],), e, jnp.int32)
            out.append(np.asarray(self._terms(logprobs, toks, cm)[1], np.float64))
        stacked = np.stack(out)
        m = np.max(stacked, axis=0)
        ms = np.where(np.isfinite(m), m, 0.0)
        with np.errstate(divide="ignore"):
            return np.where(np.isfinite(m), ms + np.log(np.sum(np.exp(stacked - ms), axis=0)), -np.inf)

    def _decode_one(self):
        forced = {}
        for g in self.groups:
            if g.ref is not None and not g.done:
                p = self.particles[g.offset + g.ref_slot]
                if not p.finished:
                    forced[g.offset + g.ref_slot] = self._forced_token(g, p)
        self._compact()
        mask, cm = self._masks(forced)
        key = jax.random.fold_in(self.key_tok, self.t)
        self.state, out = self.lm.decode_step(
            self.state, key, float(self.cfg.temperature), float(self.cfg.top_p), None if mask is None else jnp.asarray(mask)
        )
        self.t += 1
        toks = np.asarray(out.tokens)
        need_terms = self.cfg.proposal_correction or self.constraint is not None
        terms = np.asarray(self._terms(out.logprobs, out.tokens, cm)[0], np.float64) if need_terms else None
        cap_rows = []
        self._count_rows([g for g in self.groups if not g.done])
        for g in self.groups:
            if g.done:
                continue
            for j in range(g.n):
                i = g.offset + j
                p = self.particles[i]
                if p.finished:
                    continue
                r = int(self.row[i])
                tok = int(toks[r])
                if i in forced:
                    if tok != forced[i]:  # pragma: no cover - the one-token mask guarantees it
                        raise RuntimeError("teacher forcing failed")
                    g.budget.forced_tokens += 1
                else:
                    g.budget.generated_tokens += 1
                if terms is not None:
                    g.inc[j] += terms[r]
                self.rules.advance(p, tok)
                if p.needs_eos:
                    cap_rows.append((g, j, i))
        if cap_rows:
            cm_cap = None
            if self.constraint is not None:
                cm_cap = self.constraint.masks([self.particles[i].tokens for _, _, i in cap_rows], self.vocab)
                full = np.ones((self.N, self.vocab), bool)
                full[[i for _, _, i in cap_rows]] = cm_cap
                cm_cap = self._rows(full)
            eos = self._eos_logmg(self.state.logits, cm_cap)
            for g, j, i in cap_rows:
                g.inc[j] += eos[self.row[i]]
                self.particles[i].needs_eos = False

    # -- rounds -------------------------------------------------------------------------
    def _parts(self, g: _Group):
        return self.particles[g.offset : g.offset + g.n]

    def _round_ready(self, g: _Group) -> bool:
        parts = self._parts(g)
        if g.policy.kind == "final":
            return all(p.finished for p in parts)
        unfinished = [p for p in parts if not p.finished]
        if not unfinished:
            return True
        fresh = sum(p.new_step for p in unfinished)
        return fresh >= math.ceil(self.cfg.round_quorum * len(unfinished) - 1e-9)

    def _score(self, g: _Group, parts: Sequence[_Particle]) -> None:
        pot = g.policy.potential
        if pot.prm.tokenizer is None:
            pot.prm.tokenizer = getattr(self.lm, "tokenizer", None)
        before = (pot.prm.calls, pot.prm.input_chars, pot.prm.input_tokens)
        rs = pot.update(self.context, [(p.steps, p.scores) for p in parts])
        for p, r in zip(parts, rs):
            p.r = r
        g.budget.prm_calls += pot.prm.calls - before[0]
        g.budget.prm_input_chars += pot.prm.input_chars - before[1]
        g.budget.prm_input_tokens += pot.prm.input_tokens - before[2]

    def _end_round(self, g: _Group) -> bool:
        """Score, reweight and decide; return whether the population resamples now."""
        parts = self._parts(g)
        pol = g.policy
        g.budget.rounds += 1
        new = [p for p in parts if p.new_step]
        if pol.kind == "final":
            if pol.potential is not None:
                self._score(g, parts)
            g.done = True
            self._snapshot(g, parts)
            self._record(g, np.nan, False, None)
            return False
        self._score(g, new)
        if pol.kind == "beam":
            for p in parts:
                p.new_step = False
            self._snapshot(g, parts)
            if all(p.finished for p in parts):
                g.done = True
                self._record(g, np.nan, False, None)
                return False
            return True
        # SMC: reweight as in smcscale.smc.smc_step
        pot = pol.potential
        lg = g.inc.copy()
        for j, p in enumerate(parts):
            if pot.mode == "twisted":
                if p.new_step:
                    logr = math.log(p.r) if p.r > 0 else -math.inf
                    lg[j] += -math.inf if (logr == -math.inf or p.logr == -math.inf) else pot.beta * (logr - p.logr)
                    p.logr = logr
            elif p.steps:  # paper: every particle, finished ones included (none yet: factor 1)
                lg[j] += pot.log_potential(p.r)
            if p.dead:
                lg[j] = -math.inf
        self._reweight(g, lg)
        self._snapshot(g, parts)
        for j, p in enumerate(parts):
            p.new_step = False
            if g.lw[j] == -math.inf:
                p.dead = True
                if not p.finished:
                    self.rules.finish(p, "dead")
                    p.new_step = False
        finished = all(p.finished for p in parts)
        if finished and pot.mode == "paper" and pol.paper_rounds == "max_steps" and g.budget.rounds < self.cfg.max_steps:
            g.done = True
            g.paper_pending = True  # extra rounds, batched over populations in run()
            return False
        if finished:
            g.done = True
            self._record(g, self._ess(g), False, None)
            return False
        ess = self._ess(g)
        kappa = 1.0 if pot.mode == "paper" else float(pol.ess_threshold)
        do = kappa >= 1.0 or (kappa > 0.0 and ess < kappa * g.n)
        if not do:
            self._record(g, ess, False, None)
            return False
        g.pending_ess = ess
        return True

    def _reweight(self, g: _Group, lg: np.ndarray) -> None:
        g.lw, inc = reweight(np.asarray(g.lw, float), np.asarray(lg, float))  # the engine's rule
        g.inc[:] = 0.0
        g.log_z = g.log_z + inc if g.log_z > -math.inf else -math.inf

    @staticmethod
    def _ess(g: _Group) -> float:
        s = float(np.sum(np.exp(2.0 * g.lw)))
        return 1.0 / s if s > 0 else 0.0

    @staticmethod
    def _record(g, ess, resampled, anc):
        """One entry per round: ESS after reweighting, whether the population was then
        resampled, and the (stable, population-local) ancestors."""
        g.ess.append(ess)
        g.resampled.append(resampled)
        g.ancestors.append(np.arange(g.n, dtype=np.int64) if anc is None else np.asarray(anc, np.int64))

    def _snapshot(self, g, parts):
        """With ``record_history``: each round's prefixes, scores and weights before selection."""
        if self.record_history:
            g.history.append({
                "texts": ["".join(p.steps) for p in parts],
                "tokens": [list(p.tokens) for p in parts],
                "scores": [p.r for p in parts],
                "finished": [p.finished for p in parts],
                "log_weights": np.array(g.lw, copy=True),
            })

    def _extra_paper_rounds(self, groups) -> None:
        """Paper mode with a fixed number of rounds: once a population has finished, its
        particles keep being resampled and re-weighted by ``beta logit(r)`` until
        ``max_steps`` rounds have run (batched over populations)."""
        while groups:
            ess = [self._ess(g) for g in groups]
            ancs = self._draw_ancestors(groups)
            st = self._apply_ancestors({g.index: a for g, a in zip(groups, ancs)}, reorder_lm=False)
            for g, e in zip(groups, ess):
                self._record(g, e, True, st[g.index])
                g.lw = np.full(g.n, -math.log(g.n))
                g.budget.rounds += 1
                g.budget.resamples += 1
                pot = g.policy.potential
                lg = np.array([-math.inf if p.dead else pot.log_potential(p.r) for p in self._parts(g)])
                self._reweight(g, lg)
                self._snapshot(g, self._parts(g))
            left = []
            for g in groups:
                if g.budget.rounds < self.cfg.max_steps:
                    left.append(g)
                else:
                    g.paper_pending = False
                    self._record(g, self._ess(g), False, None)
            groups = left

    # -- resampling ---------------------------------------------------------------------
    def _draw_ancestors(self, groups) -> list:
        """Group-local ancestors for SMC populations, batched per scheme."""
        out = {}
        by_scheme: dict = {}
        for g in groups:
            scheme = "multinomial" if g.policy.conditional else g.policy.resampling
            by_scheme.setdefault(scheme, []).append(g)
        for scheme, gs in by_scheme.items():
            self.round_counter += 1
            k = jax.random.fold_in(self.key_res, self.round_counter)
            anc = _resample_groups(scheme, k, np.stack([g.lw for g in gs]).astype(np.float32), len(self.groups))
            for g, a in zip(gs, anc):
                out[g.index] = a.astype(np.int64)
        return [out[g.index] for g in groups]

    def _resample(self, groups) -> None:
        smc_groups = [g for g in groups if g.policy.kind == "smc"]
        local = {}
        if smc_groups:
            as_groups = [g for g in smc_groups if g.ref is not None and g.policy.ancestor_sampling
                         and not self.particles[g.offset + g.ref_slot].finished]
            a0 = self._ancestor_sample(as_groups) if as_groups else {}
            for g, a in zip(smc_groups, self._draw_ancestors(smc_groups)):
                if g.ref is not None:
                    a[g.ref_slot] = a0.get(g.index, g.ref_slot)
                local[g.index] = a
        for g in groups:
            if g.policy.kind == "beam":
                local[g.index] = self._beam_ancestors(g)
        stable = self._apply_ancestors(local, reorder_lm=True)
        for g in groups:
            a = stable[g.index]
            if g.ref is not None:
                # the reference continues in the slot of its ancestor (a survivor keeps its slot)
                g.ref_slot = int(local[g.index][g.ref_slot])
            g.budget.resamples += 1
            if g.policy.kind == "smc":
                g.lw = np.full(g.n, -math.log(g.n))
                self._record(g, g.pending_ess, True, a)
            else:
                self._record(g, np.nan, True, a)

    def _apply_ancestors(self, local: dict, reorder_lm: bool) -> dict:
        glob = np.arange(self.N)
        for gi, a in local.items():
            g = self.groups[gi]
            glob[g.offset : g.offset + g.n] = g.offset + np.asarray(a)
        st = np.asarray(stable_ancestors(jnp.asarray(glob, jnp.int32)))
        moved = st != np.arange(self.N)
        if np.any(moved):
            old = self.particles
            self.particles = [old[a].copy() if a != i else old[i] for i, a in enumerate(st)]
            if reorder_lm and not self.compacted:
                self.state = self.lm.reorder(self.state, jnp.asarray(st, jnp.int32))
            elif reorder_lm:  # rows for the unfinished particles only
                live = np.flatnonzero([not p.finished for p in self.particles])
                if live.size:
                    self._set_rows(live, st[live])
                else:
                    self.row[:] = -1
        return {gi: st[self.groups[gi].offset : self.groups[gi].offset + self.groups[gi].n] - self.groups[gi].offset for gi in local}

    def _beam_ancestors(self, g: _Group) -> np.ndarray:
        parts = self._parts(g)
        active = [j for j, p in enumerate(parts) if not p.finished]
        keep = g.policy.keep if g.policy.keep is not None else max(1, len(active) // g.policy.width)
        keep = max(1, min(keep, len(active)))
        top = sorted(active, key=lambda j: (-parts[j].r, j))[:keep]
        anc = np.arange(g.n)
        for idx, j in enumerate(active):
            anc[j] = top[idx % keep]
        return anc

    # -- ancestor sampling (PGAS) ---------------------------------------------------------
    def _ancestor_sample(self, groups) -> dict:
        """For each population, draw the reference's ancestor ∝ W_i γ(x^i ⊕ x*) / γ_t(x^i)
        (twisted mode). One teacher-forced pass on a copy of the LM state serves every
        population resampling now: row ``i`` of population ``g`` is forced along ``g``'s
        reference suffix; the joined generations are replayed through the stopping rules
        (a join that would have stopped elsewhere has weight 0) and scored by the PRM."""
        out, work = {}, []
        for g in groups:
            parts = self._parts(g)
            r = g.ref_slot
            ref = g.ref
            suffix = [int(t) for t in ref.token_ids[len(parts[r].tokens):]]
            if ref.finish_reason == "eos":
                suffix.append(int(ref.eos_id))
            cand = [j for j, p in enumerate(parts) if not p.finished and g.lw[j] > -math.inf]
            if not suffix or not cand:
                out[g.index] = r
                continue
            copies = {j: parts[j].copy() for j in cand}
            for c in copies.values():
                c.new_step = False
            work.append((g, cand, copies, np.zeros(g.n), {j: True for j in cand}, suffix))
        if not work:
            return out
        state = jax.tree_util.tree_map(jnp.copy, self.state)
        for step in range(max(len(w[5]) for w in work)):
            mask = np.ones((self.N, self.vocab), bool)
            rows, charged = [], []
            for g, cand, copies, acc, valid, suffix in work:
                if step >= len(suffix):
                    continue
                tok = suffix[step]
                live = [j for j in cand if valid[j] and not copies[j].finished]
                if live:
                    charged.append(g)
                for j in live:
                    mask[g.offset + j] = False
                    mask[g.offset + j, tok] = True
                    rows.append((g.offset + j, j, tok, copies, acc, valid, len(suffix)))
            if not rows:
                break
            self._count_rows(charged)
            cm = None
            if self.constraint is not None:
                cm = np.ones((self.N, self.vocab), bool)
                cm[[i for i, *_ in rows]] = self.constraint.masks([c[j].tokens for _, j, _, c, *_ in rows], self.vocab)
            key = jax.random.fold_in(self.key_as, self.t * 100003 + step)
            state, o = self.lm.decode_step(state, key, float(self.cfg.temperature), float(self.cfg.top_p),
                                           jnp.asarray(self._rows(mask)))
            logmg = np.asarray(self._terms(o.logprobs, o.tokens, self._rows(cm))[1], np.float64)
            for i, j, tok, copies, acc, valid, length in rows:
                acc[j] += logmg[self.row[i]]
                self.rules.advance(copies[j], tok)
                if copies[j].finished and step != length - 1:
                    valid[j] = False  # the joined generation would have stopped earlier
        cap = [(g.offset + j, j, copies, acc) for g, cand, copies, acc, valid, _ in work
               for j in cand if valid[j] and copies[j].finished and copies[j].needs_eos]
        if cap:
            cm_cap = None
            if self.constraint is not None:
                cm_cap = np.ones((self.N, self.vocab), bool)
                cm_cap[[i for i, *_ in cap]] = self.constraint.masks([c[j].tokens for _, j, c, _ in cap], self.vocab)
            eos = self._eos_logmg(state.logits, self._rows(cm_cap))
            for i, j, copies, acc in cap:
                acc[j] += eos[self.row[i]]
        self.round_counter += 1
        rng = _rng(jax.random.fold_in(self.key_as, self.round_counter))
        for g, cand, copies, acc, valid, _ in work:
            parts = self._parts(g)
            ok = [j for j in cand if valid[j] and copies[j].finished]
            self._score(g, [copies[j] for j in ok])
            beta = g.policy.potential.beta
            logits = np.full(g.n, -math.inf)
            for j in ok:
                rT = copies[j].r
                if rT > 0 and parts[j].logr > -math.inf:
                    logits[j] = g.lw[j] + acc[j] + beta * (math.log(rT) - parts[j].logr)
            if not np.any(np.isfinite(logits)):  # pragma: no cover - the reference itself is valid
                out[g.index] = g.ref_slot
                continue
            w = np.exp(logits - np.max(logits))
            out[g.index] = int(rng.choice(g.n, p=w / w.sum()))
        return out

    # -- results ------------------------------------------------------------------------
    def result(self, g: _Group, method: str, answer_fn=None, select: str = "argmax") -> TextSMCResult:
        parts = self._parts(g)
        answer_fn = answer_fn or boxed_answer
        decode = self.lm.tokenizer.decode
        texts = [decode(p.tokens) for p in parts]
        answers = [answer_fn(t) for t in texts]
        scores = np.array([p.r for p in parts], float)
        if g.policy.kind == "smc":
            lw = np.asarray(g.lw, float)
            weights = np.exp(lw)
        else:
            lw = np.full(g.n, -math.log(g.n))
            weights = np.exp(lw)
        if g.policy.kind == "smc":
            sel, ans = select_answer(answers, weights, select, scores=scores)
        else:  # search methods select by PRM score (argmax, or "vote": sum of scores per answer)
            sel, ans = select_answer(answers, scores, select)
        trajs = [
            Trajectory(tuple(p.tokens), p.reason, p.eos_id, t, tuple(p.steps), float(p.r)) for p, t in zip(parts, texts)
        ]
        info = {"trajectories": trajs}
        if self.record_history:
            info["history"] = g.history
        if g.ref is not None:
            info["reference_slot"] = g.ref_slot
        return TextSMCResult(
            texts=texts, token_ids=[list(p.tokens) for p in parts], steps=[list(p.steps) for p in parts],
            step_scores=[list(p.scores) for p in parts], scores=scores, answers=answers, log_weights=lw,
            weights=weights, finish_reasons=[p.reason for p in parts], selected=sel,
            selected_text=None if sel is None else texts[sel], selected_answer=ans, log_z=float(g.log_z),
            ess=np.asarray(g.ess, float), resampled=np.asarray(g.resampled, bool), ancestors=list(g.ancestors),
            budget=dataclasses.replace(g.budget), wall_time=self.wall_time, method=method, info=info,
        )


# ---------------------------------------------------------------------------------------
# prompts


def encode_prompt(lm, prompt) -> tuple[list, str]:
    """``(prompt ids, PRM context)``: a string is sent as one user chat message, a list of
    ``{"role", "content"}`` messages through the chat template, token ids as they are."""
    tok = lm.tokenizer
    if isinstance(prompt, str):
        return list(tok.encode_chat([{"role": "user", "content": prompt}])), prompt
    if isinstance(prompt, (list, tuple)) and prompt and isinstance(prompt[0], dict):
        users = [m["content"] for m in prompt if m.get("role") == "user"]
        return list(tok.encode_chat(list(prompt))), users[-1] if users else prompt[-1]["content"]
    ids = [int(i) for i in np.asarray(prompt).ravel()]
    return ids, tok.decode(ids)


def check_count(n, name: str = "num_particles", minimum: int = 1) -> int:
    """``int(n)`` if ``n`` is an int (not a bool) ``>= minimum``; else a ``ValueError`` naming
    the argument ``name``. The check of every count argument of the samplers and searches."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {n!r}")
    return int(n)


# ---------------------------------------------------------------------------------------
# public samplers


def particle_filter(
    lm, prm, prompt, num_particles: int, *, mode: str = "twisted", aggregation: str = "last",
    potential_temperature: float = 1.0, config: Optional[GenerationConfig] = None, key=0,
    ess_threshold: Optional[float] = None, resampling: Optional[str] = None, paper_rounds: str = "all_finished",
    constraint: Optional[TokenConstraint] = None, answer_fn: Optional[Callable] = None, select: str = "argmax",
    prm_context: Optional[str] = None, num_runs: Optional[int] = None, record_history: bool = False,
    on_collapse: str = "warn", progress: bool = False,
):
    """Step-level particle filter (Puri et al. 2025) with ``num_particles`` generations.

    Args:
      lm: an LM (``FakeLM``, ``JaxLM``, ...). prm: a PRM (see :mod:`.potentials`) or a
        :class:`StepPotential` (then ``mode``/``aggregation``/``potential_temperature`` are its own).
      prompt: a string (one user message), chat messages, or token ids.
      mode: ``"twisted"`` (ESS-adaptive, target ``b(x) r_T(x)^beta``) or ``"paper"`` (its_hub).
      ess_threshold: twisted: resample when ``ESS < kappa N`` (default 0.5); paper: must be 1.
      resampling: scheme name (default: ``"systematic"`` twisted, ``"multinomial"`` paper).
      paper_rounds: ``"all_finished"`` (its_hub: stop when every particle has finished) or
        ``"max_steps"`` (exactly ``max_steps`` rounds: a fixed target, see :mod:`.potentials`).
      answer_fn: ``text -> answer`` of a generation (default :func:`boxed_answer`, the last
        ``\\boxed{...}`` content; a task passes its own, e.g. arithmetic's ``extract_answer``).
      select: ``"argmax"`` weight or weighted ``"vote"`` over ``answer_fn`` answers.
      num_runs: run this many independent filters in one LM batch; returns a list.
      on_collapse: a dead population (every weight zero, ``log_z = -inf``): ``"warn"``
        (default), ``"raise"`` (:class:`smcscale.ParticleCollapseError`, as
        :func:`smcscale.run` does eagerly) or ``"ignore"``; see :func:`check_collapse`.
      progress: show a tqdm progress bar of the decoded tokens (rounds and live particles).
    """
    n = check_count(num_particles)
    if on_collapse not in ON_COLLAPSE:
        raise ValueError(f"on_collapse must be one of {ON_COLLAPSE}, got {on_collapse!r}")
    cfg = config or GenerationConfig()
    pot = as_step_potential(prm, aggregation, mode, potential_temperature)
    if pot.mode == "paper":
        if ess_threshold not in (None, 1, 1.0):
            raise ValueError("paper mode resamples every round (its_hub): ess_threshold must be 1")
        kappa, scheme = 1.0, resampling or "multinomial"
    else:
        kappa = 0.5 if ess_threshold is None else float(ess_threshold)
        scheme = resampling or "systematic"
    if not 0.0 <= kappa <= 1.0:
        raise ValueError(f"ess_threshold must be in [0, 1], got {kappa}")
    get_resampler(scheme)
    if paper_rounds not in ("all_finished", "max_steps"):
        raise ValueError(f"paper_rounds must be 'all_finished' or 'max_steps', got {paper_rounds!r}")
    runs = 1 if num_runs is None else check_count(num_runs, "num_runs")
    ids, ctx = encode_prompt(lm, prompt)
    policies = [_SMCPolicy(pot, scheme, kappa, paper_rounds=paper_rounds) for _ in range(runs)]
    sw = Sweep(lm, cfg, ids, prm_context if prm_context is not None else ctx, n, policies, key,
               constraint=constraint, record_history=record_history, progress=progress).run()
    out = [sw.result(g, f"pf-{pot.mode}", answer_fn, select) for g in sw.groups]
    check_collapse(out, on_collapse, "particle_filter")
    return out if num_runs is not None else out[0]


ON_COLLAPSE = ("warn", "raise", "ignore")


def check_collapse(results, on_collapse: str, method: str) -> None:
    """What a sampler does with a dead population (every weight zero, ``log_z = -inf``):
    ``"warn"`` a :class:`smcscale.ParticleCollapseWarning`, ``"raise"`` a
    :class:`smcscale.ParticleCollapseError`, ``"ignore"`` nothing (the result is still
    defined: zero weights, no selected answer)."""
    if on_collapse not in ON_COLLAPSE:
        raise ValueError(f"on_collapse must be one of {ON_COLLAPSE}, got {on_collapse!r}")
    dead = [i for i, r in enumerate(results) if r.log_z == -math.inf]
    if not dead or on_collapse == "ignore":
        return
    which = "the population" if len(results) == 1 else f"population(s) {dead} of {len(results)}"
    msg = (
        f"{method}: every particle of {which} has weight zero (log Z = -inf): the PRM gave score 0 to every "
        "generation, or the constraint allowed none. Check the PRM, use more particles, or pass "
        "on_collapse='ignore' to get the result with log_z = -inf silently."
    )
    if on_collapse == "raise":
        raise ParticleCollapseError(msg)
    warnings.warn(msg, ParticleCollapseWarning, stacklevel=3)


def _draw_reference(result: TextSMCResult, rng: np.random.Generator) -> Trajectory:
    w = np.asarray(result.weights, float)
    if not np.any(w > 0):
        raise ParticleCollapseError("particle Gibbs: every weight is zero, no reference can be drawn (a dead population)")
    k = int(rng.choice(len(w), p=w / w.sum()))
    return result.info["trajectories"][k]


def particle_gibbs(
    lm, prm, prompt, num_particles: int, iterations: int, *, ancestor_sampling: bool = False,
    mode: str = "twisted", aggregation: str = "last", potential_temperature: float = 1.0,
    config: Optional[GenerationConfig] = None, key=0, ess_threshold: float = 1.0,
    init_reference=None, num_chains: Optional[int] = None, constraint: Optional[TokenConstraint] = None,
    answer_fn: Optional[Callable] = None, select: str = "argmax", prm_context: Optional[str] = None,
    record_history: bool = False, progress: bool = False,
):
    """Particle Gibbs: ``iterations`` sweeps of ``num_particles`` (``N - 1`` free + 1 reference).

    Without ``init_reference`` the first sweep is an unconditional filter (its_hub); its
    draw becomes the first reference. Each later sweep is conditional on the previous
    reference; the new reference is drawn from the sweep's final weights. Returns the last
    sweep's :class:`TextSMCResult` (budget summed over all sweeps) with ``info["references"]``
    (the reference after each sweep) — a list of results if ``num_chains`` is given
    (independent chains in one batch; ``init_reference`` is then a list). ``progress``
    shows a tqdm bar over the sweeps.
    """
    n = check_count(num_particles, minimum=2)
    iters = check_count(iterations, "iterations")
    cfg = config or GenerationConfig()
    pot = as_step_potential(prm, aggregation, mode, potential_temperature)
    kappa = float(ess_threshold)
    if not 0.0 <= kappa <= 1.0:
        raise ValueError(f"ess_threshold must be in [0, 1], got {kappa}")
    if pot.mode == "paper" and kappa < 1.0:
        raise ValueError("paper mode resamples every round: ess_threshold must be 1")
    if ancestor_sampling and pot.mode != "twisted":
        raise ValueError("ancestor sampling needs a target: use mode='twisted'")
    if ancestor_sampling and kappa < 1.0:
        raise ValueError("ancestor sampling requires resampling at every round: use ess_threshold=1.0")
    chains = 1 if num_chains is None else check_count(num_chains, "num_chains")
    if init_reference is None:
        refs = [None] * chains
    else:
        refs = list(init_reference) if num_chains is not None else [init_reference]
        if len(refs) != chains:
            raise ValueError(f"init_reference has {len(refs)} trajectories for {chains} chains")
    ids, ctx = encode_prompt(lm, prompt)
    ctx = prm_context if prm_context is not None else ctx
    key = as_key(key)
    totals = [Budget() for _ in range(chains)]
    history = [[] for _ in range(chains)]
    last = None
    t0 = time.perf_counter()
    sweeps = range(iters)
    if progress:
        from tqdm.auto import tqdm

        sweeps = tqdm(sweeps, desc="particle Gibbs sweeps", unit="sweep", dynamic_ncols=True)
    for it in sweeps:
        k_sweep, k_draw = jax.random.split(jax.random.fold_in(key, it))
        policies = [_SMCPolicy(pot, "multinomial", kappa, conditional=True, ancestor_sampling=ancestor_sampling)
                    for _ in range(chains)]
        sw = Sweep(lm, cfg, ids, ctx, n, policies, k_sweep, references=refs, constraint=constraint,
                   record_history=record_history).run()
        last = [sw.result(g, "pg", answer_fn, select) for g in sw.groups]
        rng = _rng(k_draw)
        refs = [_draw_reference(r, rng) for r in last]
        for c in range(chains):
            totals[c] = totals[c] + last[c].budget
            history[c].append(refs[c])
    for c, r in enumerate(last):
        r.budget = totals[c]
        r.wall_time = time.perf_counter() - t0
        r.info["references"] = history[c]
        r.info["reference"] = history[c][-1]
    return last if num_chains is not None else last[0]


def parallel_tempering(
    lm, prm, prompt, num_particles: int, iterations: int, *, temperatures: Sequence[float] = (4.0, 2.0, 1.0),
    ancestor_sampling: bool = False, aggregation: str = "last", config: Optional[GenerationConfig] = None,
    key=0, ess_threshold: float = 1.0, init_references=None, num_replicas: Optional[int] = None,
    constraint: Optional[TokenConstraint] = None, answer_fn: Optional[Callable] = None, select: str = "argmax",
    prm_context: Optional[str] = None,
):
    """Parallel tempering of particle Gibbs chains (Puri et al. 2025; no public code has it).

    ``M`` chains target ``pi_m(x) ∝ b(x) r_T(x)^{1/tau_m}`` for ``tau_1 > ... > tau_M``
    (twisted mode; give ``tau_M = 1`` for the actual target). Every iteration runs one
    conditional sweep of every chain (all in one LM batch, ``num_particles`` each; the
    first sweep is unconditional unless ``init_references`` is given), draws each chain's new
    reference, then proposes swaps of the references of neighbours ``(m, m+1)`` (pairs
    ``m = 0, 2, ...`` on even iterations, ``m = 1, 3, ...`` on odd ones), accepted with
    probability ``min(1, exp((beta_m - beta_{m+1}) (log r(x_{m+1}) - log r(x_m))))`` — the
    base-measure terms cancel. Returns the last sweep of the coldest chain (budget summed over
    all chains and sweeps) with ``info["chains"]`` (the last result of every chain),
    ``info["references"]`` (the coldest chain's reference after each iteration, post-swap),
    ``info["chain_references"]`` (every chain's reference after the last iteration) and
    ``info["swap_rates"]``. ``num_replicas`` runs independent PT systems in one batch and
    returns a list (``init_references`` is then a list of per-replica lists).
    """
    n = check_count(num_particles, minimum=2)
    iters = check_count(iterations, "iterations")
    taus = [float(t) for t in temperatures]
    if len(taus) < 1 or any(not (t > 0 and math.isfinite(t)) for t in taus):
        raise ValueError(f"temperatures must be positive numbers, got {temperatures}")
    if any(a <= b for a, b in zip(taus, taus[1:])):
        raise ValueError(f"temperatures must be strictly decreasing (tau_1 > ... > tau_M), got {taus}")
    kappa = float(ess_threshold)
    if ancestor_sampling and kappa < 1.0:
        raise ValueError("ancestor sampling requires resampling at every round: use ess_threshold=1.0")
    cfg = config or GenerationConfig()
    base = as_step_potential(prm, aggregation, "twisted", 1.0)
    if base.mode != "twisted":
        raise ValueError("parallel tempering needs a target: use a twisted potential")
    pots = [base.with_temperature(t) for t in taus]
    m = len(taus)
    reps = 1 if num_replicas is None else check_count(num_replicas, "num_replicas")
    if init_references is None:
        refs = [[None] * m for _ in range(reps)]
    else:
        refs = [list(r) for r in (init_references if num_replicas is not None else [init_references])]
        if len(refs) != reps or any(len(r) != m for r in refs):
            raise ValueError(f"init_references must give {m} trajectories (one per temperature) per replica")
    ids, ctx = encode_prompt(lm, prompt)
    ctx = prm_context if prm_context is not None else ctx
    key = as_key(key)
    totals = [Budget() for _ in range(reps)]
    cold = [[] for _ in range(reps)]
    tries = np.zeros((reps, max(m - 1, 1)))
    accepts = np.zeros((reps, max(m - 1, 1)))
    last = None
    t0 = time.perf_counter()
    for it in range(iters):
        k_sweep, k_draw = jax.random.split(jax.random.fold_in(key, it))
        policies = [_SMCPolicy(pots[c], "multinomial", kappa, conditional=True, ancestor_sampling=ancestor_sampling)
                    for _ in range(reps) for c in range(m)]
        flat = [refs[rp][c] for rp in range(reps) for c in range(m)]
        sw = Sweep(lm, cfg, ids, ctx, n, policies, k_sweep, references=flat, constraint=constraint).run()
        res = [sw.result(g, "pt", answer_fn, select) for g in sw.groups]
        last = [res[rp * m : (rp + 1) * m] for rp in range(reps)]
        rng = _rng(k_draw)
        for rp in range(reps):
            refs[rp] = [_draw_reference(r, rng) for r in last[rp]]
            for r in last[rp]:
                totals[rp] = totals[rp] + r.budget
            for a in range(it % 2, m - 1, 2):
                d = swap_log_ratio(pots[a].beta, pots[a + 1].beta, refs[rp][a].score, refs[rp][a + 1].score)
                tries[rp, a] += 1
                if not math.isnan(d) and (d >= 0 or rng.random() < math.exp(d)):
                    refs[rp][a], refs[rp][a + 1] = refs[rp][a + 1], refs[rp][a]
                    accepts[rp, a] += 1
            cold[rp].append(refs[rp][-1])
    outs = []
    for rp in range(reps):
        out = last[rp][-1]
        out.budget = totals[rp]
        out.wall_time = time.perf_counter() - t0
        with np.errstate(invalid="ignore"):
            rates = np.where(tries[rp] > 0, accepts[rp] / np.maximum(tries[rp], 1), np.nan)[: m - 1]
        out.info.update(chains=last[rp], references=cold[rp], reference=cold[rp][-1],
                        chain_references=list(refs[rp]), temperatures=taus, swap_rates=rates)
        outs.append(out)
    return outs if num_replicas is not None else outs[0]


def _log(r: float) -> float:
    return math.log(r) if r > 0 else -math.inf


def swap_log_ratio(beta_a: float, beta_b: float, score_a: float, score_b: float) -> float:
    """Log Metropolis ratio of swapping references ``x_a`` (at ``beta_a``) and ``x_b``."""
    return (beta_a - beta_b) * (_log(score_b) - _log(score_a))
