r"""A learned process reward model: a small Flax head on a frozen LM's hidden states,
trained on Monte-Carlo rollout labels (Math-Shepherd, Wang et al. 2024).

**Labels (Math-Shepherd "soft / hard estimation").** For a problem with prompt ``q`` and a
solution split into steps ``s_1, ..., s_T``, the quality of the prefix ``s_{1:t}`` is the
probability that the LM, continuing from it, reaches a correct final answer:

    y_t = P( correct(s_{1:t} ⊕ c) ),   c ~ p_LM( . | q, s_{1:t} ).

It is estimated with ``K`` independent rollouts ``c^1..c^K`` (sampled at the rollout
temperature, stopped at EOS, at a complete answer or after ``max_rollout_tokens``):

    soft label   ŷ_t = (1/K) Σ_k 1[correct(s_{1:t} ⊕ c^k)]     (unbiased, Var = y_t(1-y_t)/K)
    hard label   ŷ_t^hard = max_k 1[correct(s_{1:t} ⊕ c^k)]      ("some completion is right").

The final step of a finished solution needs no rollout: its label is the correctness of the
solution itself. The solutions are the LM's own samples (plus, optionally, given reference
solutions labelled by the same rollouts). A cheap synthetic augmentation
(:func:`add_corrupted_references`) copies a reference solution, corrupts the result of one
arithmetic step ``j`` and cuts it there: steps ``t < j`` keep their rollout labels and the
corrupted step gets label 0 (process supervision: a false calculation is a bad step).

**Model.** ``h_t in R^D`` is the LM's final (normed) hidden state at the *last token of step
t* (the token before the delimiter) in the PRM input

    [chat(user: context)] [tokens(s_1)] [tokens(delim)] [tokens(s_2)] [tokens(delim)] ... [tokens(s_t)]

where every step is stripped of its delimiter and surrounding whitespace and tokenised on
its own (a canonical tokenisation, the same at training and scoring time). Attention is
causal, so ``h_t`` depends on the context and ``s_{1:t}`` only: one forward pass of a
prefix gives the scores of all its steps, and ``score(prefix)[:t] == score(prefix[:t])``.
The head (:class:`PRMHead`) is ``f(h) = w_2 · gelu(W_1 LayerNorm(h) + b_1) + b_2`` and the
score is ``r_t = sigmoid(f(h_t))``, clipped to ``[eps, 1 - eps]`` so that ``logit(r)`` stays
finite. The LM is frozen: features are computed once, outside the gradient (a stop-gradient).

**Training** minimises the (optionally weighted) mean binary cross-entropy against soft (or
hard) labels,

    L(θ) = - Σ_i w_i [ y_i log σ(f_θ(h_i)) + (1 - y_i) log(1 - σ(f_θ(h_i))) ] / Σ_i w_i,

with AdamW (optax) on minibatches; the soft-label BCE is minimised at ``σ(f) = y``, so the
head estimates the completion probability ``P(correct | prefix)`` (a value, not a step-wise
"looks right" likelihood like the programmatic PRM).

**Evaluation against the programmatic PRM** (:func:`evaluate_against_programmatic`): per
step, the programmatic score of :mod:`smcscale.tasks.arithmetic` is 0.95 (arithmetic
right), 0.05 (a false claim) or 0.5 (nothing to check). Reported: the AUC of the learned
score for telling right from wrong steps (neutral steps excluded), the accuracy of
``r >= threshold`` against that label, Spearman's rank correlation over all steps, the mean
learned score by programmatic class, and, for both PRMs, the AUC of the final-step score
for the correctness of the final answer.

**Use in the samplers.** :class:`LearnedPRM` has ``score(context, prefixes)`` (batched,
per-step scores) and ``score_prefix(context, steps)``. :class:`~.potentials.PRMAdapter`
calls ``score`` when it exists, so a sampler scores every prefix of a round in batched
forward passes.

**Saving.** :meth:`LearnedPRM.save` writes a directory with ``head.msgpack``
(``flax.serialization.to_bytes`` of the head parameters) and ``config.json`` (head and input
format, plus the LM's ``hidden_size``/``num_layers``/``vocab_size``); :meth:`LearnedPRM.load`
checks them against the LM it is given and raises :class:`LearnedPRMError` on a mismatch.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Callable, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ..stats import binary_auc, spearman  # re-exported: evaluation metrics used here
from .sampler import as_key

__all__ = [
    "LearnedPRMError",
    "PRMHead",
    "PRMHeadConfig",
    "PRMDataset",
    "TrainResult",
    "LearnedPRM",
    "prm_input",
    "collect_rollout_labels",
    "sample_solutions",
    "add_corrupted_references",
    "dataset_features",
    "extract_features",
    "train_prm_head",
    "evaluate_against_programmatic",
    "binary_auc",
    "spearman",
]

FORMAT_VERSION = 1
TEMPLATES = ("chat", "plain")


class LearnedPRMError(ValueError):
    """A saved learned PRM that cannot be used with the given LM (or is malformed)."""


# ---------------------------------------------------------------------------------------
# the head


class PRMHeadConfig(NamedTuple):
    """Shape of :class:`PRMHead` and the PRM input format.

    Attributes:
      hidden_size: ``D``, the LM's hidden size (the head's input).
      mlp_size: width of the hidden layer.
      layer_norm: apply a LayerNorm to ``h`` first.
      delimiter: the step delimiter (inserted between steps in the PRM input).
      template: ``"chat"`` (context as one user chat turn, generation prompt added) or
        ``"plain"`` (the context's tokens, then the delimiter).
      eps: scores are clipped to ``[eps, 1 - eps]``.
    """

    hidden_size: int
    mlp_size: int = 128
    layer_norm: bool = True
    delimiter: str = "\n\n"
    template: str = "chat"
    eps: float = 1e-3


class PRMHead(nn.Module):
    """``f(h) = Dense_1(gelu(Dense_mlp(LayerNorm(h))))``: ``[..., D] -> [...]`` logits."""

    mlp_size: int = 128
    layer_norm: bool = True

    @nn.compact
    def __call__(self, h):
        h = jnp.asarray(h, jnp.float32)
        if self.layer_norm:
            h = nn.LayerNorm(name="norm")(h)
        h = nn.gelu(nn.Dense(self.mlp_size, name="hidden")(h))
        return nn.Dense(1, name="out")(h)[..., 0]


def _head(cfg: PRMHeadConfig) -> PRMHead:
    return PRMHead(mlp_size=int(cfg.mlp_size), layer_norm=bool(cfg.layer_norm))


def init_head(cfg: PRMHeadConfig, key) -> Any:
    """Random head parameters for ``cfg``."""
    return _head(cfg).init(as_key(key), jnp.zeros((1, cfg.hidden_size), jnp.float32))


@functools.partial(jax.jit, static_argnames=("head",))
def _head_probs(head, params, feats):
    return jax.nn.sigmoid(head.apply(params, feats))


# ---------------------------------------------------------------------------------------
# PRM input and features


def _step_body(step: str, delimiter: str) -> str:
    s = str(step)
    if delimiter:
        while s.endswith(delimiter):
            s = s[: -len(delimiter)]
    return s.strip()


def prm_input(tokenizer, context: str, steps: Sequence[str], *, delimiter: str = "\n\n", template: str = "chat"):
    """Token ids of the PRM input of ``(context, steps)`` and the read position of each step.

    ``ids = prompt(context) + Σ_t [tokens(body_t) (+ tokens(delimiter) between steps)]`` with
    ``body_t`` the step stripped of its trailing delimiter(s) and whitespace;
    ``positions[t]`` is the index of the last token of ``body_t`` (for an empty body, of the
    last token before it). Returns ``(ids int32 [S], positions int32 [T])``.
    """
    if template == "chat":
        ids = list(tokenizer.encode_chat([{"role": "user", "content": str(context)}], add_generation_prompt=True))
    elif template == "plain":
        ids = list(tokenizer.encode(str(context) + delimiter, add_special_tokens=False))
    else:
        raise ValueError(f"template must be one of {TEMPLATES}, got {template!r}")
    if not ids:
        raise ValueError("the PRM input prompt is empty (empty context with the 'plain' template?)")
    sep = list(tokenizer.encode(delimiter, add_special_tokens=False)) if delimiter else []
    positions = []
    for t, step in enumerate(steps):
        if t > 0:
            ids.extend(sep)
        ids.extend(tokenizer.encode(_step_body(step, delimiter), add_special_tokens=False))
        positions.append(len(ids) - 1)
    return np.asarray(ids, np.int32), np.asarray(positions, np.int32)


def _bucket(n: int, minimum: int = 32) -> int:
    b = minimum
    while b < n:
        b *= 2
    return b


@functools.partial(jax.jit, static_argnames=("model",))
def _hidden_at(model, params, ids, pos):
    """``ids [B, S]``, ``pos [B, P]`` -> final hidden states ``[B, P, D]`` (float32)."""
    positions = jnp.arange(ids.shape[1], dtype=jnp.int32)
    _, _, hidden = model.apply(params, ids, positions)
    hidden = jax.lax.stop_gradient(hidden.astype(jnp.float32))
    return jnp.take_along_axis(hidden, pos[:, :, None], axis=1)


def _check_feature_lm(lm):
    if not (hasattr(lm, "model") and hasattr(lm, "params") and hasattr(lm, "config")):
        raise TypeError(
            f"a learned PRM needs an LM with hidden states (a JaxLM: .model, .params, .config); got {type(lm).__name__}"
        )


def extract_features(lm, sequences: Sequence, positions: Sequence, *, batch_size: int = 8) -> np.ndarray:
    """Final hidden states of ``lm`` at given positions of token sequences (LM frozen).

    ``sequences[i]`` is a 1-D token id array and ``positions[i]`` the positions to read in
    it. Sequences are sorted by length, padded at the end to power-of-two buckets (causal
    attention: padding never changes earlier positions) and run ``batch_size`` at a time
    (the last batch padded with dummy rows), so few shapes are compiled. Returns
    ``[sum_i len(positions[i]), D]`` float32 in the order of the inputs.
    """
    _check_feature_lm(lm)
    if len(sequences) != len(positions):
        raise ValueError(f"{len(sequences)} sequences but {len(positions)} position arrays")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    seqs = [np.asarray(s, np.int32).reshape(-1) for s in sequences]
    poss = [np.asarray(p, np.int32).reshape(-1) for p in positions]
    D = int(lm.config.hidden_size)
    limit = int(getattr(lm.config, "max_position", 1 << 30))
    for i, (s, p) in enumerate(zip(seqs, poss)):
        if s.size == 0:
            raise ValueError(f"sequence {i} is empty")
        if s.size > limit:
            raise ValueError(f"sequence {i} has {s.size} tokens, more than the model's context {limit}")
        if p.size and (p.min() < 0 or p.max() >= s.size):
            raise ValueError(f"positions of sequence {i} must lie in [0, {s.size}), got [{p.min()}, {p.max()}]")
    offsets = np.concatenate([[0], np.cumsum([p.size for p in poss])]).astype(np.int64)
    out = np.zeros((int(offsets[-1]), D), np.float32)
    order = sorted(range(len(seqs)), key=lambda i: seqs[i].size)
    for start in range(0, len(order), batch_size):
        idx = [i for i in order[start : start + batch_size] if poss[i].size]
        if not idx:
            continue
        S = min(_bucket(max(seqs[i].size for i in idx)), limit)  # >= every length (checked above)
        P = _bucket(max(poss[i].size for i in idx), 8)
        ids = np.zeros((batch_size, S), np.int32)
        pos = np.zeros((batch_size, P), np.int32)
        for r, i in enumerate(idx):
            ids[r, : seqs[i].size] = seqs[i]
            pos[r, : poss[i].size] = poss[i]
        h = np.asarray(_hidden_at(lm.model, lm.params, jnp.asarray(ids), jnp.asarray(pos)))
        for r, i in enumerate(idx):
            out[offsets[i] : offsets[i + 1]] = h[r, : poss[i].size]
    return out


# ---------------------------------------------------------------------------------------
# the dataset


@dataclasses.dataclass
class PRMDataset:
    """Per-step labels of solutions, grouped by solution.

    Attributes (one entry per solution):
      contexts: the PRM context (the question).
      steps: the solution's steps (raw text; a step may end with the delimiter).
      soft_labels, hard_labels: ``float32 [T]`` per-step labels in ``[0, 1]``.
      num_rollouts: ``int32 [T]`` rollouts behind each label (0: exact, e.g. a final step).
      sources: ``"sample"`` (the LM's own), ``"reference"`` or ``"corrupted"``.
      problem_ids: the problem's id.
      outcomes: ``1`` correct, ``0`` wrong, ``-1`` unfinished (truncated) solution.
    """

    contexts: list
    steps: list
    soft_labels: list
    hard_labels: list
    num_rollouts: list
    sources: list
    problem_ids: list
    outcomes: list

    def __post_init__(self):
        n = len(self.contexts)
        for f in dataclasses.fields(self):
            if len(getattr(self, f.name)) != n:
                raise ValueError(f"PRMDataset: {f.name} has {len(getattr(self, f.name))} entries, contexts has {n}")
        self.steps = [[str(s) for s in st] for st in self.steps]
        for name in ("soft_labels", "hard_labels"):
            arrs = [np.asarray(a, np.float32).reshape(-1) for a in getattr(self, name)]
            for i, a in enumerate(arrs):
                if a.size != len(self.steps[i]):
                    raise ValueError(f"PRMDataset: solution {i} has {len(self.steps[i])} steps but {a.size} {name}")
                if a.size and not (np.all(a >= 0) and np.all(a <= 1)):  # also rejects NaN
                    raise ValueError(f"PRMDataset: {name} of solution {i} must lie in [0, 1], got {a.tolist()}")
            setattr(self, name, arrs)
        self.num_rollouts = [np.asarray(a, np.int32).reshape(-1) for a in self.num_rollouts]
        for i, a in enumerate(self.num_rollouts):
            if a.size != len(self.steps[i]):
                raise ValueError(f"PRMDataset: solution {i} has {len(self.steps[i])} steps but {a.size} num_rollouts")
        self.contexts = [str(c) for c in self.contexts]
        self.sources = [str(s) for s in self.sources]
        self.problem_ids = [str(s) for s in self.problem_ids]
        self.outcomes = [int(o) for o in self.outcomes]

    @classmethod
    def empty(cls) -> "PRMDataset":
        return cls([], [], [], [], [], [], [], [])

    @property
    def num_solutions(self) -> int:
        return len(self.contexts)

    @property
    def num_examples(self) -> int:
        return sum(len(s) for s in self.steps)

    def labels(self, kind: str = "soft") -> np.ndarray:
        """All per-step labels, solution by solution (``[num_examples]``)."""
        if kind not in ("soft", "hard"):
            raise ValueError(f"kind must be 'soft' or 'hard', got {kind!r}")
        arrs = self.soft_labels if kind == "soft" else self.hard_labels
        return np.concatenate(arrs).astype(np.float32) if arrs else np.zeros(0, np.float32)

    def example_sources(self) -> np.ndarray:
        return np.asarray([src for src, st in zip(self.sources, self.steps) for _ in st], dtype=str)

    def example_problem_ids(self) -> np.ndarray:
        return np.asarray([pid for pid, st in zip(self.problem_ids, self.steps) for _ in st], dtype=str)

    def subset(self, indices: Sequence[int]) -> "PRMDataset":
        """The solutions ``indices`` (in that order)."""
        idx = [int(i) for i in indices]
        return PRMDataset(*([getattr(self, f.name)[i] for i in idx] for f in dataclasses.fields(self)))

    def __add__(self, other: "PRMDataset") -> "PRMDataset":
        return PRMDataset(*(list(getattr(self, f.name)) + list(getattr(other, f.name)) for f in dataclasses.fields(self)))

    def summary(self) -> dict:
        soft, hard = self.labels("soft"), self.labels("hard")
        out = dict(solutions=self.num_solutions, examples=self.num_examples,
                   rollouts=int(sum(int(a.sum()) for a in self.num_rollouts)))
        if soft.size:
            out.update(mean_soft_label=float(soft.mean()), frac_hard_positive=float(hard.mean()))
        srcs = self.example_sources()
        out["examples_by_source"] = {s: int((srcs == s).sum()) for s in sorted(set(srcs.tolist()))}
        acc = {}
        for s in sorted(set(self.sources)):
            fin = [o for o, src in zip(self.outcomes, self.sources) if src == s and o >= 0]
            acc[s] = dict(finished=len(fin), correct=int(sum(fin)))
        out["solutions_by_source"] = acc
        return out

    # -- npz round trip (no pickle) -------------------------------------------------------
    def save(self, path) -> None:
        """Write the dataset to an ``.npz`` (strings as unicode arrays; no pickle)."""
        counts = np.asarray([len(s) for s in self.steps], np.int64)
        flat = [s for st in self.steps for s in st]
        np.savez(
            path,
            format_version=np.asarray(FORMAT_VERSION),
            contexts=np.asarray(self.contexts, dtype=str),
            step_counts=counts,
            steps=np.asarray(flat, dtype=str) if flat else np.zeros(0, dtype="<U1"),
            soft_labels=self.labels("soft"),
            hard_labels=self.labels("hard"),
            num_rollouts=np.concatenate(self.num_rollouts) if self.num_rollouts else np.zeros(0, np.int32),
            sources=np.asarray(self.sources, dtype=str),
            problem_ids=np.asarray(self.problem_ids, dtype=str),
            outcomes=np.asarray(self.outcomes, np.int32),
        )

    @classmethod
    def load(cls, path) -> "PRMDataset":
        with np.load(path, allow_pickle=False) as z:
            if int(z["format_version"]) != FORMAT_VERSION:
                raise LearnedPRMError(f"{path}: dataset format {int(z['format_version'])}, expected {FORMAT_VERSION}")
            counts = z["step_counts"]
            cuts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
            sl = lambda a: [a[cuts[i] : cuts[i + 1]] for i in range(len(counts))]  # noqa: E731
            steps = sl(z["steps"].tolist())
            return cls(
                contexts=z["contexts"].tolist(),
                steps=steps,
                soft_labels=sl(z["soft_labels"]),
                hard_labels=sl(z["hard_labels"]),
                num_rollouts=sl(z["num_rollouts"]),
                sources=z["sources"].tolist(),
                problem_ids=z["problem_ids"].tolist(),
                outcomes=z["outcomes"].tolist(),
            )


def dataset_features(lm, dataset: PRMDataset, *, template: str = "chat", delimiter: str = "\n\n", batch_size: int = 8):
    """Features ``[num_examples, D]`` of every step of ``dataset`` (one forward per solution),
    in the order of :meth:`PRMDataset.labels`."""
    seqs, poss = [], []
    for ctx, steps in zip(dataset.contexts, dataset.steps):
        ids, pos = prm_input(lm.tokenizer, ctx, steps, delimiter=delimiter, template=template)
        seqs.append(ids)
        poss.append(pos)
    return extract_features(lm, seqs, poss, batch_size=batch_size)


# ---------------------------------------------------------------------------------------
# rollouts


def _generate_chunk(lm, state, key, num_tokens: int, temperature: float):
    """``num_tokens`` sampled tokens per row: ``lm.generate`` if the LM has it, else a loop of
    ``decode_step`` (the LM protocol). Returns ``(state, tokens [N, num_tokens])``."""
    if hasattr(lm, "generate"):
        state, toks, _, _ = lm.generate(state, key, num_tokens, temperature=temperature)
        return state, np.asarray(toks)
    out = []
    for j in range(num_tokens):
        state, o = lm.decode_step(state, jax.random.fold_in(key, j), temperature=temperature)
        out.append(np.asarray(o.tokens))
    return state, np.stack(out, axis=1)


def _first_true(fn, n: int) -> Optional[int]:
    """Smallest ``j`` in ``1..n`` with ``fn(j)`` (``fn`` monotone in ``j``), or ``None``."""
    if n < 1 or not fn(n):
        return None
    lo, hi = 1, n
    while lo < hi:
        mid = (lo + hi) // 2
        if fn(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _sample_continuations(lm, prompt_ids, n, max_tokens, key, *, temperature, chunk, max_len, finish_fn):
    """``n`` continuations of ``prompt_ids``, each cut at its first EOS (excluded), at the
    shortest prefix where ``finish_fn(decoded text)`` holds (included), or at ``max_tokens``.
    Returns a list of ``(tokens, finished)``. Generation runs in chunks of ``chunk`` tokens and
    stops early once every row has finished."""
    tok = lm.tokenizer
    eos = frozenset(int(i) for i in tok.eos_ids)
    prompt_ids = [int(i) for i in prompt_ids]
    num_chunks = -(-max_tokens // chunk)
    need = len(prompt_ids) + num_chunks * chunk
    if max_len is None:
        max_len = _bucket(need + 1, 64)
    if need > max_len:
        raise ValueError(
            f"prompt ({len(prompt_ids)} tokens) + {num_chunks * chunk} new tokens exceed max_len={max_len}; raise max_len"
        )
    state = lm.prefill(prompt_ids, int(n), int(max_len))
    rows = [[] for _ in range(n)]
    done = np.zeros(n, bool)
    for c in range(num_chunks):
        state, toks = _generate_chunk(lm, state, jax.random.fold_in(key, c), chunk, temperature)
        for i in range(n):
            if done[i]:
                continue
            rows[i].extend(int(t) for t in toks[i])
            if any(t in eos for t in rows[i]) or len(rows[i]) >= max_tokens:
                done[i] = True
            elif finish_fn is not None and finish_fn(tok.decode(rows[i])):
                done[i] = True
        if done.all():
            break
    out = []
    for r in rows:
        cut = next((j for j, t in enumerate(r) if t in eos), None)
        finished = cut is not None
        r = r[:cut] if finished else r[:max_tokens]
        if finish_fn is not None:
            j = _first_true(lambda m: bool(finish_fn(tok.decode(r[:m]))), len(r))
            if j is not None:
                r, finished = r[:j], True
        out.append((r, finished))
    return out


def _split_token_steps(decode, tokens, delimiter, max_step_tokens, max_steps):
    """Step boundaries of a token sequence, as the sampler draws them: a step ends at the
    token whose decoded step text first contains ``delimiter``, or after ``max_step_tokens``.
    Returns ``(ends, rest)``: the end index of each complete step (at most ``max_steps``) and
    the start of the remainder."""
    ends, start = [], 0
    for j in range(len(tokens)):
        if len(ends) >= max_steps:
            break
        seg = decode(tokens[start : j + 1])
        if (delimiter and delimiter in seg) or (max_step_tokens is not None and j + 1 - start >= max_step_tokens):
            ends.append(j + 1)
            start = j + 1
    return ends, start


def _default_context_fn(problem):
    return problem.question


def collect_rollout_labels(
    lm,
    problems: Sequence,
    *,
    key,
    num_solutions: int = 4,
    num_rollouts: int = 8,
    max_step_tokens: Optional[int] = 64,
    max_solution_tokens: int = 192,
    max_rollout_tokens: int = 128,
    max_steps: int = 8,
    temperature: float = 0.8,
    delimiter: str = "\n\n",
    chunk_tokens: int = 16,
    max_len: Optional[int] = None,
    prompt_fn: Callable,
    is_correct: Callable,
    context_fn: Optional[Callable] = None,
    finish_fn: Any = "boxed",
    reference_fn: Optional[Callable] = None,
    progress: bool = False,
) -> PRMDataset:
    r"""Math-Shepherd rollout labels for the LM's own solutions (see the module docstring).

    For every problem: sample ``num_solutions`` solutions from ``prompt_fn(problem)`` at
    ``temperature`` (stopping at EOS, at ``finish_fn`` — default a complete ``\boxed{}`` — at
    ``max_steps`` complete steps or after ``max_solution_tokens``), split them into steps
    exactly as the sampler does (``delimiter`` / ``max_step_tokens``), and label each step
    ``t``: the final step of a finished solution by the solution's correctness; every other
    step by ``num_rollouts`` rollouts from the solution's own tokens up to the end of step
    ``t`` (soft label = fraction correct, hard = any correct). A truncated solution keeps
    only its complete steps. ``reference_fn(problem) -> list[str]`` adds given solutions
    (tokenised, labelled the same way; source ``"reference"``).

    Args:
      lm: any LM of the protocol (``JaxLM``, ``FakeLM``).
      problems: task problems; the task's ``prompt_fn(problem)`` (e.g. arithmetic
        ``format_prompt``) gives the generator prompt (text, chat messages or ids),
        ``context_fn(problem)`` (default ``problem.question``) the PRM context, and the
        task's ``is_correct(problem, text)`` (e.g. arithmetic ``is_correct``) judges a full
        text. ``prompt_fn`` and ``is_correct`` are required.
      key: PRNG key or int seed.
      finish_fn: ``"boxed"``, a callable ``text -> bool`` (monotone as text grows), or ``None``.
    """
    from .sampler import encode_prompt, has_boxed

    for name, v in (("num_solutions", num_solutions), ("num_rollouts", num_rollouts), ("max_solution_tokens", max_solution_tokens),
                    ("max_rollout_tokens", max_rollout_tokens), ("max_steps", max_steps), ("chunk_tokens", chunk_tokens)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0 or (v == 0 and name != "num_solutions"):
            lo = "a non-negative" if name == "num_solutions" else "a positive"
            raise ValueError(f"{name} must be {lo} int, got {v!r}")
    if max_step_tokens is not None and (not isinstance(max_step_tokens, (int, np.integer)) or max_step_tokens < 1):
        raise ValueError(f"max_step_tokens must be a positive int or None, got {max_step_tokens!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 for rollouts, got {temperature}")
    if not delimiter and max_step_tokens is None:
        raise ValueError("give a delimiter or max_step_tokens: steps need an end")
    if finish_fn == "boxed":
        finish_fn = has_boxed
    elif finish_fn is not None and not callable(finish_fn):
        raise TypeError("finish_fn must be 'boxed', a callable text -> bool, or None")
    if not callable(prompt_fn) or not callable(is_correct):
        raise TypeError("collect_rollout_labels needs the task's prompt_fn(problem) and is_correct(problem, text)")
    context_fn = context_fn or _default_context_fn
    problems = list(problems)
    if not problems:
        raise ValueError("collect_rollout_labels needs at least one problem")
    tok = lm.tokenizer
    key = as_key(key)
    sample = functools.partial(_sample_continuations, lm, temperature=float(temperature), chunk=int(chunk_tokens),
                               max_len=max_len, finish_fn=finish_fn)
    fields = {f.name: [] for f in dataclasses.fields(PRMDataset)}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(problems), desc="rollout labels", unit="problem", dynamic_ncols=True)
    for pi, problem in enumerate(problems):
        kp = jax.random.fold_in(key, pi)
        prompt_ids, _ = encode_prompt(lm, prompt_fn(problem))
        context = str(context_fn(problem))
        cands = []
        if num_solutions:
            for toks, fin in sample(prompt_ids, int(num_solutions), int(max_solution_tokens), jax.random.fold_in(kp, 0)):
                cands.append(("sample", toks, fin))
        for text in (reference_fn(problem) if reference_fn is not None else []):
            cands.append(("reference", list(tok.encode(text, add_special_tokens=False)), True))
        for si, (source, toks, finished) in enumerate(cands):
            ends, rest = _split_token_steps(tok.decode, toks, delimiter, max_step_tokens, max_steps)
            # the final step of a finished solution is labelled exactly (by its correctness)
            final_exact = False
            if finished:
                if not tok.decode(toks[rest:]).strip():
                    final_exact = bool(ends)  # nothing after the last complete step
                elif len(ends) < max_steps:
                    ends.append(len(toks))  # the text after the last delimiter is the final step
                    final_exact = True
            if not ends:
                continue
            starts = [0] + ends[:-1]
            steps = [tok.decode(toks[a:b]) for a, b in zip(starts, ends)]
            soft, hard, nroll = [], [], []
            for t, e in enumerate(ends):
                if final_exact and t == len(ends) - 1:
                    c = float(bool(is_correct(problem, tok.decode(toks))))
                    soft.append(c)
                    hard.append(c)
                    nroll.append(0)
                    continue
                kr = jax.random.fold_in(jax.random.fold_in(kp, 1 + si), t)
                conts = sample(list(prompt_ids) + toks[:e], int(num_rollouts), int(max_rollout_tokens), kr)
                ok = [bool(is_correct(problem, tok.decode(toks[:e] + c))) for c, _ in conts]
                soft.append(float(np.mean(ok)))
                hard.append(float(any(ok)))
                nroll.append(len(ok))
            outcome = int(bool(is_correct(problem, tok.decode(toks)))) if final_exact else -1
            fields["contexts"].append(context)
            fields["steps"].append(steps)
            fields["soft_labels"].append(soft)
            fields["hard_labels"].append(hard)
            fields["num_rollouts"].append(nroll)
            fields["sources"].append(source)
            fields["problem_ids"].append(str(getattr(problem, "id", pi)))
            fields["outcomes"].append(outcome)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(examples=sum(len(s) for s in fields["steps"]))
    if bar is not None:
        bar.close()
    return PRMDataset(**fields)


def sample_solutions(
    lm,
    problems: Sequence,
    *,
    key,
    num_solutions: int = 4,
    max_solution_tokens: int = 192,
    temperature: float = 0.8,
    chunk_tokens: int = 16,
    max_len: Optional[int] = None,
    prompt_fn: Callable,
    finish_fn: Any = "boxed",
    progress: bool = False,
) -> list[list[str]]:
    """``num_solutions`` sampled solution texts per problem (cut at EOS, at ``finish_fn``
    or after ``max_solution_tokens``), with the same sampling as :func:`collect_rollout_labels`;
    the task's ``prompt_fn(problem)`` (required) gives the prompt."""
    from .sampler import encode_prompt, has_boxed

    if finish_fn == "boxed":
        finish_fn = has_boxed
    if not callable(prompt_fn):
        raise TypeError("sample_solutions needs the task's prompt_fn(problem)")
    key = as_key(key)
    it = list(enumerate(problems))
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="solutions", unit="problem", dynamic_ncols=True)
    out = []
    for pi, problem in it:
        ids, _ = encode_prompt(lm, prompt_fn(problem))
        rows = _sample_continuations(lm, ids, int(num_solutions), int(max_solution_tokens), jax.random.fold_in(key, pi),
                                     temperature=float(temperature), chunk=int(chunk_tokens), max_len=max_len,
                                     finish_fn=finish_fn)
        out.append([lm.tokenizer.decode(r) for r, _ in rows])
    return out


# ---------------------------------------------------------------------------------------
# synthetic augmentation

def add_corrupted_references(dataset: PRMDataset, *, corrupt_fn: Callable, copies: int = 1,
                             seed: int = 0) -> PRMDataset:
    """``dataset`` plus, for every ``"reference"`` solution, ``copies`` corrupted copies:
    the task's ``corrupt_fn(steps, rng) -> (new_steps, j) or None`` (e.g.
    :func:`smcscale.tasks.arithmetic.corrupt_step`; ``rng`` a NumPy ``Generator`` seeded
    with ``seed``) corrupts step ``j``; the copy is cut after
    step ``j``, steps ``t < j`` keep the reference's rollout labels and step ``j`` gets label
    0 (source ``"corrupted"``, outcome 0)."""
    rng = np.random.default_rng(seed)
    extra = {f.name: [] for f in dataclasses.fields(PRMDataset)}
    for i, src in enumerate(dataset.sources):
        if src != "reference":
            continue
        seen = set()
        for _ in range(int(copies)):
            res = corrupt_fn(list(dataset.steps[i]), rng)
            if res is None:
                break
            new_steps, j = res
            key = tuple(new_steps[: j + 1])
            if key in seen:
                continue
            seen.add(key)
            lab = lambda a: np.concatenate([np.asarray(a[:j], np.float32), [0.0]])  # noqa: E731
            extra["contexts"].append(dataset.contexts[i])
            extra["steps"].append(list(new_steps[: j + 1]))
            extra["soft_labels"].append(lab(dataset.soft_labels[i]))
            extra["hard_labels"].append(lab(dataset.hard_labels[i]))
            extra["num_rollouts"].append(np.concatenate([dataset.num_rollouts[i][:j], [0]]).astype(np.int32))
            extra["sources"].append("corrupted")
            extra["problem_ids"].append(dataset.problem_ids[i])
            extra["outcomes"].append(0)
    return dataset + PRMDataset(**extra)


# ---------------------------------------------------------------------------------------
# training


@functools.partial(jax.jit, static_argnames=("head",))
def _full_bce(head, params, X, y, w):
    return _bce(head.apply(params, X), y, w)


@functools.partial(jax.jit, static_argnames=("head", "steps", "batch", "lr", "weight_decay"))
def _train_scan(head, params, X, y, w, key, steps, batch, lr, weight_decay):
    """``steps`` AdamW steps on minibatches of ``batch`` rows drawn with replacement (all rows
    when ``batch`` equals the data size), in one ``lax.scan``; module-level so that repeated
    training with the same shapes and hyper-parameters compiles once."""
    import optax

    opt = optax.adamw(lr, weight_decay=weight_decay)
    M = X.shape[0]

    def loss_fn(p, idx):
        return _bce(head.apply(p, X[idx]), y[idx], w[idx])

    def body(carry, kk):
        p, s = carry
        idx = jax.random.randint(kk, (batch,), 0, M) if batch < M else jnp.arange(M)
        loss, g = jax.value_and_grad(loss_fn)(p, idx)
        upd, s = opt.update(g, s, p)
        return (optax.apply_updates(p, upd), s), loss

    (params, _), losses = jax.lax.scan(body, (params, opt.init(params)), jax.random.split(key, steps))
    return params, losses


class TrainResult(NamedTuple):
    """``params`` of the head, its ``config``, the minibatch ``losses [steps]`` and the
    full-data weighted BCE before (``initial_loss``) and after (``final_loss``) training."""

    params: Any
    config: PRMHeadConfig
    losses: np.ndarray
    initial_loss: float
    final_loss: float


def _bce(logits, y, w):
    import optax

    l = optax.sigmoid_binary_cross_entropy(logits, y)
    return jnp.sum(w * l) / jnp.sum(w)


def train_prm_head(
    features,
    labels,
    *,
    key,
    steps: int = 500,
    lr: float = 1e-3,
    weight_decay: float = 1e-2,
    batch_size: int = 256,
    mlp_size: int = 128,
    layer_norm: bool = True,
    sample_weight=None,
    delimiter: str = "\n\n",
    template: str = "chat",
    eps: float = 1e-3,
) -> TrainResult:
    """Fit :class:`PRMHead` to ``(features [M, D], labels [M])`` with AdamW (optax).

    Minimises the weighted mean BCE of ``sigmoid(f(h_i))`` against ``y_i in [0, 1]`` (soft or
    hard labels) on minibatches of ``min(batch_size, M)`` drawn with replacement, for
    ``steps`` steps in one jitted ``lax.scan``. Deterministic for a given ``key``.
    """
    X = np.asarray(features, np.float32)
    y = np.asarray(labels, np.float32)
    if X.ndim != 2:
        raise ValueError(f"features must be [M, D], got shape {X.shape}")
    if y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise ValueError(f"labels must be [M] with M = {X.shape[0]} (one per feature row), got shape {y.shape}")
    if X.shape[0] == 0:
        raise ValueError("cannot train on an empty dataset (no labelled steps)")
    if not np.all(np.isfinite(X)):
        raise ValueError("features contain NaN or inf")
    if not (np.all(y >= 0) and np.all(y <= 1)):
        raise ValueError(f"labels must lie in [0, 1], got range [{np.nanmin(y)}, {np.nanmax(y)}] (or NaN)")
    w = np.ones_like(y) if sample_weight is None else np.asarray(sample_weight, np.float32)
    if w.shape != y.shape or not (np.all(w >= 0) and w.sum() > 0):
        raise ValueError("sample_weight must be [M], non-negative, with a positive sum")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    cfg = PRMHeadConfig(hidden_size=int(X.shape[1]), mlp_size=int(mlp_size), layer_norm=bool(layer_norm),
                        delimiter=delimiter, template=template, eps=float(eps))
    head = _head(cfg)
    k_init, k_batch = jax.random.split(as_key(key))
    params = head.init(k_init, jnp.zeros((1, cfg.hidden_size), jnp.float32))
    Xj, yj, wj = jnp.asarray(X), jnp.asarray(y), jnp.asarray(w)
    B = int(min(batch_size, X.shape[0]))
    initial = float(_full_bce(head, params, Xj, yj, wj))
    params, losses = _train_scan(head, params, Xj, yj, wj, k_batch, int(steps), B, float(lr), float(weight_decay))
    return TrainResult(params, cfg, np.asarray(losses), initial, float(_full_bce(head, params, Xj, yj, wj)))


# ---------------------------------------------------------------------------------------
# the PRM


class LearnedPRM:
    """A trained :class:`PRMHead` on a frozen :class:`~smcscale.text.lm.JaxLM`, as a PRM.

    ``score(context, prefixes)`` returns the per-step scores ``[r_1..r_t]`` of every prefix
    (all prefixes' PRM inputs in batched forward passes); ``score_prefix(context, steps)``
    the score of the latest step (``0.5`` for no step). See the module docstring.
    """

    def __init__(self, lm, params, config: PRMHeadConfig, *, batch_size: int = 8, meta: Optional[dict] = None):
        _check_feature_lm(lm)
        if not isinstance(config, PRMHeadConfig):
            raise TypeError(f"config must be a PRMHeadConfig, got {type(config).__name__}")
        if int(config.hidden_size) != int(lm.config.hidden_size):
            raise LearnedPRMError(
                f"the head takes hidden size {config.hidden_size} but the LM's hidden size is {lm.config.hidden_size}: "
                "this head was trained on another LM's features"
            )
        if config.template not in TEMPLATES:
            raise ValueError(f"template must be one of {TEMPLATES}, got {config.template!r}")
        _check_params(params, config)
        self.lm, self.params, self.config = lm, params, config
        self.batch_size = int(batch_size)
        self.meta = dict(meta or {})
        self._head = _head(config)

    # -- scoring ------------------------------------------------------------------------
    def features(self, context: str, prefixes: Sequence[Sequence[str]]) -> np.ndarray:
        seqs, poss = [], []
        for steps in prefixes:
            ids, pos = prm_input(self.lm.tokenizer, context, list(steps), delimiter=self.config.delimiter,
                                 template=self.config.template)
            seqs.append(ids)
            poss.append(pos)
        return extract_features(self.lm, seqs, poss, batch_size=self.batch_size)

    def probs(self, features) -> np.ndarray:
        """Clipped scores ``r = clip(sigmoid(f(h)), eps, 1 - eps)`` of feature rows ``[M, D]``."""
        f = jnp.asarray(np.asarray(features, np.float32))
        if f.ndim != 2 or f.shape[1] != self.config.hidden_size:
            raise ValueError(f"features must be [M, {self.config.hidden_size}], got shape {tuple(f.shape)}")
        if f.shape[0] == 0:
            return np.zeros(0, np.float64)
        p = np.asarray(_head_probs(self._head, self.params, f), np.float64)
        return np.clip(p, self.config.eps, 1.0 - self.config.eps)

    def score(self, context: str, prefixes: Sequence[Sequence[str]]) -> list[list[float]]:
        prefixes = [list(p) for p in prefixes]
        if not prefixes:
            return []
        r = self.probs(self.features(context, prefixes))
        out, i = [], 0
        for p in prefixes:
            out.append([float(v) for v in r[i : i + len(p)]])
            i += len(p)
        return out

    def score_prefix(self, context: str, steps: Sequence[str]) -> float:
        steps = list(steps)
        if not steps:
            return 0.5
        return self.score(context, [steps])[0][-1]

    def count_input_tokens(self, context: str, steps: Sequence[str]) -> int:
        """Length of the token sequence the LM reads to score ``steps`` (budget accounting)."""
        ids, _ = prm_input(self.lm.tokenizer, context, list(steps), delimiter=self.config.delimiter,
                           template=self.config.template)
        return len(ids)

    # -- persistence ----------------------------------------------------------------------
    def save(self, path) -> str:
        """Write ``head.msgpack`` and ``config.json`` into the directory ``path``."""
        from flax import serialization

        path = os.fspath(path)
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "head.msgpack"), "wb") as f:
            f.write(serialization.to_bytes(jax.device_get(self.params)))
        cfg = dict(format_version=FORMAT_VERSION, head=self.config._asdict(), lm=_lm_signature(self.lm), meta=self.meta)
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2, default=_json_default)
        return path

    @classmethod
    def load(cls, path, lm, *, batch_size: int = 8) -> "LearnedPRM":
        """Load a head saved by :meth:`save` for ``lm``; raises :class:`LearnedPRMError` if the
        files are missing or malformed or the head was trained on a different LM."""
        from flax import serialization

        path = os.fspath(path)
        _check_feature_lm(lm)
        cpath, hpath = os.path.join(path, "config.json"), os.path.join(path, "head.msgpack")
        for p in (cpath, hpath):
            if not os.path.isfile(p):
                raise LearnedPRMError(f"no learned PRM at {path!r}: {os.path.basename(p)} is missing")
        try:
            with open(cpath) as f:
                saved = json.load(f)
            cfg = PRMHeadConfig(**saved["head"])
        except (ValueError, KeyError, TypeError) as e:
            raise LearnedPRMError(f"{cpath}: malformed learned PRM config ({e})") from None
        if saved.get("format_version") != FORMAT_VERSION:
            raise LearnedPRMError(f"{cpath}: format version {saved.get('format_version')!r}, expected {FORMAT_VERSION}")
        want = _lm_signature(lm)
        have = saved.get("lm", {})
        diff = {k: (have.get(k), v) for k, v in want.items() if k in have and have[k] != v}
        if int(cfg.hidden_size) != int(lm.config.hidden_size):
            diff.setdefault("hidden_size", (cfg.hidden_size, lm.config.hidden_size))
        if diff:
            desc = ", ".join(f"{k}: saved {a!r} vs LM {b!r}" for k, (a, b) in diff.items())
            raise LearnedPRMError(f"the learned PRM at {path!r} was trained on a different LM ({desc})")
        template = init_head(cfg, 0)
        with open(hpath, "rb") as f:
            raw = f.read()
        try:
            params = serialization.from_bytes(template, raw)
        except Exception as e:  # flax raises ValueError/KeyError on structure mismatch
            raise LearnedPRMError(f"{hpath}: head parameters do not match the config ({e})") from None
        _check_params(params, cfg, where=hpath)
        return cls(lm, params, cfg, batch_size=batch_size, meta=saved.get("meta"))


def _check_params(params, cfg: PRMHeadConfig, where: str = "params"):
    want = jax.tree_util.tree_map(lambda a: tuple(a.shape), init_head(cfg, 0))
    try:
        have = jax.tree_util.tree_map(lambda a: tuple(np.shape(a)), params)
    except Exception as e:  # pragma: no cover
        raise LearnedPRMError(f"{where}: not a parameter tree ({e})") from None
    if jax.tree_util.tree_structure(want) != jax.tree_util.tree_structure(have) or want != have:
        raise LearnedPRMError(f"{where}: head parameter shapes {have} do not match the config (expected {want})")


def _lm_signature(lm) -> dict:
    c = lm.config
    return dict(hidden_size=int(c.hidden_size), num_layers=int(c.num_layers), vocab_size=int(c.vocab_size),
                architecture=str(getattr(c, "architecture", "")))


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# ---------------------------------------------------------------------------------------
# evaluation


def _text_steps(text: str, delimiter: str) -> list[str]:
    """Split a solution into raw steps (each keeps its delimiter), dropping blank ones."""
    if not delimiter:
        return [text] if text.strip() else []
    parts = text.split(delimiter)
    out = [p + delimiter for p in parts[:-1]] + [parts[-1]]
    return [p for p in out if p.strip() and _step_body(p, delimiter)]


def evaluate_against_programmatic(
    prm,
    problems: Sequence,
    solutions: Sequence[Sequence],
    *,
    score_steps: Callable,
    is_correct: Callable,
    threshold: float = 0.5,
    context_fn: Optional[Callable] = None,
    delimiter: str = "\n\n",
) -> dict:
    """Agreement of a PRM with a programmatic PRM, step by step.

    ``solutions[i]`` lists the solutions of ``problems[i]`` (texts, split at ``delimiter``,
    or lists of steps). The task gives ``score_steps(problem, steps) -> per-step scores``
    (the programmatic PRM, e.g. :func:`smcscale.tasks.arithmetic.score_steps`; steps are
    passed stripped of surrounding whitespace) and ``is_correct(problem, text)`` (e.g.
    arithmetic ``is_correct``); ``context_fn(problem)`` (default ``problem.question``) is
    the PRM context. Programmatic per-step labels: ``right`` (score > 0.5, e.g. all claims
    true), ``wrong`` (< 0.5, e.g. a false claim or an inconsistent final answer) and
    ``neutral`` (= 0.5, nothing to check). Returns ``step_auc`` (learned score, right vs wrong),
    ``step_accuracy`` (``(r >= threshold) == right`` on right/wrong steps), ``spearman``
    (all steps), ``mean_score`` by class, ``counts``, and ``outcome_auc`` of the final-step
    score for the final answer's correctness, for the learned and the programmatic PRM.
    """
    from .potentials import as_prm

    if len(problems) != len(solutions):
        raise ValueError(f"{len(problems)} problems but {len(solutions)} solution lists")
    context_fn = context_fn or _default_context_fn
    adapter = as_prm(prm)
    learned, prog, finals_l, finals_p, outcomes = [], [], [], [], []
    for problem, sols in zip(problems, solutions):
        prefixes, texts = [], []
        for s in sols:
            steps = _text_steps(s, delimiter) if isinstance(s, str) else [str(x) for x in s]
            if steps:
                prefixes.append(steps)
                texts.append(s if isinstance(s, str) else "".join(steps))
        if not prefixes:
            continue
        scores = adapter.score_all(str(context_fn(problem)), prefixes)
        for steps, sc, text in zip(prefixes, scores, texts):
            ps = score_steps(problem, [x.strip() for x in steps])
            learned.extend(sc)
            prog.extend(ps)
            finals_l.append(sc[-1])
            finals_p.append(ps[-1])
            outcomes.append(bool(is_correct(problem, text)))
    learned, prog = np.asarray(learned, np.float64), np.asarray(prog, np.float64)
    if learned.size == 0:
        raise ValueError("no steps to evaluate (every solution was empty)")
    right, wrong = prog > 0.5, prog < 0.5
    lab = right | wrong
    mean = lambda m: float(learned[m].mean()) if m.any() else None  # noqa: E731
    return dict(
        counts=dict(steps=int(learned.size), right=int(right.sum()), wrong=int(wrong.sum()),
                    neutral=int((~lab).sum()), solutions=len(outcomes), correct_solutions=int(np.sum(outcomes))),
        step_auc=binary_auc(learned[lab], right[lab]),
        step_accuracy=float(np.mean((learned[lab] >= threshold) == right[lab])) if lab.any() else None,
        spearman=spearman(learned, prog),
        mean_score=dict(right=mean(right), neutral=mean(~lab), wrong=mean(wrong)),
        outcome_auc=dict(learned=binary_auc(finals_l, outcomes), programmatic=binary_auc(finals_p, outcomes)),
        threshold=float(threshold),
    )
