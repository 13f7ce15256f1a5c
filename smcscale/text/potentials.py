r"""Potentials for step-level text SMC: process rewards, weighting modes, token constraints.

A text particle is a partial generation split into **steps** ``s_1, ..., s_t`` (see
:mod:`smcscale.text.sampler`). This module says how a process reward model (PRM) and token
masks turn into the log-weights of the engine.

**PRM protocol.** Any of the following is accepted by :func:`as_prm`:

* a callable ``f(context, steps) -> r`` with ``r`` in ``[0, 1]``: the score of the prefix
  ``steps`` judged at its *latest* step (e.g. the arithmetic task's
  ``lambda c, s: programmatic_prm_score(None, s)``);
* an object with ``score_prefix(context, steps) -> r`` (same meaning);
* an object with ``score(context, batch) -> per_step_scores`` where ``batch`` is a list of
  prefixes (each a list of step strings) and the answer gives, for each prefix, the list of
  its per-step scores ``[r_1, ..., r_t]`` (the its_hub / neural-PRM interface: one pass
  scores every step of a prefix). An object with both methods is called through ``score``.

``context`` is the problem text (a string). Steps are passed *raw* (with their delimiter),
so ``"".join(steps)`` is the generated text. A score of 0 is allowed: the particle dies.

**Aggregation** of the per-step scores ``r_1..r_t`` of a prefix into one ``r(prefix)``
(Puri et al. 2025): ``"last"`` (``r_t``), ``"min"``, ``"prod"``, and ``"model"`` (the whole
prefix scored as one step: ``f(context, ["".join(steps)])``). :class:`PRMAdapter` counts the
calls and the input characters, and scores only what each aggregation needs (``last``
scores the newest step only; ``min``/``prod`` every step once; ``model`` the joined prefix).

**Weighting modes** (:class:`StepPotential`, ``beta = 1 / temperature``):

* ``"twisted"`` — a proper twisted SMC. At a round where a particle's latest complete prefix
  changes from ``x_{<t'}`` to ``x_{<t}`` its incremental log-weight is
  ``beta (log r(x_{<t}) - log r(x_{<t'}))`` (``r = 1`` for the empty prefix); weights are
  carried between rounds and resampling is ESS-adaptive. The increments telescope, so the
  weighted particles target

      pi(x) ∝ b(x) · r_T(x)^beta

  over finished generations ``x``, where ``r_T`` is the aggregated score of the whole
  generation and ``b`` the base measure of the sampler (the LM; see the sampler's
  ``proposal_correction``). The intermediate ``r_t`` only steer (they are twists); any
  resampling schedule gives the same target, and ``log Z`` estimates ``log E_b[r_T^beta]``.

* ``"paper"`` — what its_hub's particle filter does (not what the paper writes): after
  every round each particle gets ``ell = beta · logit(r)`` of its current prefix, weights are
  ``softmax(ell)`` over the population **including finished particles** (which keep their last
  ``r`` and are re-weighted at every later round), and the population is resampled
  (multinomially) every round; nothing is carried over. This is plain SMC with potential
  ``G_t = odds(r_t)^beta`` at every round, so after ``R`` rounds the weighted particles target

      pi_R(x) ∝ b(x) · prod_{t=1}^{R} odds(r_{min(t, T(x))}(x))^beta,   odds(r) = r / (1 - r),

  where ``r_t`` is the score of the prefix complete at the end of round ``t`` and ``T(x)``
  the round at which ``x`` finished. Every round multiplies in the odds again (a path is
  rewarded for each round it scores well, and a finished path for every round it waits).
  This is a fixed target only if ``R`` is fixed (the sampler's ``paper_rounds="max_steps"``
  runs exactly ``max_steps`` rounds); by default the loop stops when all particles have
  finished, so ``R`` is random and population-dependent, and no fixed target exists. With
  ``k``-token steps round ``t`` ends after ``t k`` tokens for every particle; with text
  delimiters it ends when every unfinished particle has completed a new step (lockstep
  decoding), so ``r_t`` is "the latest complete prefix at that time".

**Token constraints** (:class:`TokenConstraint`): a mask function gives the allowed next
tokens of every particle; the sampler draws from the LM renormalised to them. With
``weighted=True`` (proper SMC, as in LLaMPPL / genlm) the log-weight gains the log allowed
mass at every token, so the target is the base measure restricted to allowed strings,
``b(x) 1[x allowed]``. ``weighted=False`` is *locally constrained decoding* (LCD): same
proposal, no weight — it samples ``prod_t b(x_t | x_{<t}, allowed)``, a distorted target,
kept as a baseline.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np

__all__ = [
    "AGGREGATIONS",
    "MODES",
    "PRMAdapter",
    "as_prm",
    "FunctionPRM",
    "StepPotential",
    "as_step_potential",
    "TokenConstraint",
    "token_mask_from_predicate",
    "logit",
]

AGGREGATIONS = ("last", "min", "prod", "model")
MODES = ("twisted", "paper")


def logit(r: float) -> float:
    """``log(r / (1 - r))`` with ``logit(0) = -inf`` and ``logit(1) = +inf``."""
    if r <= 0.0:
        return -math.inf
    if r >= 1.0:
        return math.inf
    return math.log(r) - math.log1p(-r)


def _log(r: float) -> float:
    return math.log(r) if r > 0 else -math.inf


def _check_score(r, where: str) -> float:
    """``r`` as a float in ``[0, 1]``; a ``TypeError`` for anything that is not a real number
    (strings such as ``"0.5"`` and booleans included), a ``ValueError`` for NaN and values
    outside ``[0, 1]``. ``where`` names the PRM and the method that returned ``r``."""
    if isinstance(r, (str, bytes, bool, np.bool_)) or np.ndim(r) != 0:
        raise TypeError(f"PRM {where} returned {r!r} ({type(r).__name__}); a score must be a real number in [0, 1]")
    try:
        r = float(r)
    except (TypeError, ValueError):
        raise TypeError(f"PRM {where} returned {r!r}; a score must be a real number in [0, 1]") from None
    if not (0.0 <= r <= 1.0):  # also rejects NaN
        raise ValueError(f"PRM {where} returned {r}; a score must lie in [0, 1]")
    return r


def _describe(prm) -> str:
    fn = getattr(prm, "fn", None) if isinstance(prm, FunctionPRM) else None
    if fn is not None:
        return getattr(fn, "__qualname__", None) or type(fn).__name__
    return type(prm).__name__


class FunctionPRM:
    """Wrap ``fn(context, steps) -> r`` as a PRM with ``score_prefix``."""

    def __init__(self, fn: Callable[[str, list], float]):
        if not callable(fn):
            raise TypeError(f"FunctionPRM needs a callable, got {type(fn).__name__}")
        self.fn = fn

    def score_prefix(self, context: str, steps: Sequence[str]) -> float:
        return self.fn(context, list(steps))


class PRMAdapter:
    """One interface over the PRM protocols, with call and input-size counters.

    Attributes:
      calls: number of prefixes scored (one ``score_prefix`` call, or one prefix of a
        batched ``score`` call).
      input_chars: total characters sent: ``len(context) + sum(len(step))`` per prefix.
      input_tokens: total input tokens: the PRM's own count if it has
        ``count_input_tokens(context, steps) -> int`` (an LM-based PRM: its real input
        sequence), else the context and the steps encoded by ``tokenizer`` (the samplers
        set the policy LM's), else 0.
    """

    def __init__(self, prm: Any):
        if isinstance(prm, PRMAdapter):
            prm = prm.prm
        self.prm = prm
        if hasattr(prm, "score") and callable(prm.score):  # batched first: one call per round
            self.kind = "batch"
        elif hasattr(prm, "score_prefix"):
            self.kind = "prefix"
        elif callable(prm):
            self.kind = "prefix"
            self.prm = FunctionPRM(prm)
        else:
            raise TypeError(
                "a PRM must be a callable f(context, steps) -> r, or have score_prefix(context, steps) -> r, "
                f"or score(context, batch) -> per-step scores; got {type(prm).__name__}"
            )
        self.calls = 0
        self.input_chars = 0
        self.input_tokens = 0
        self.tokenizer = None
        self._num_tokens: dict = {}

    def _count(self, context, steps):
        self.calls += 1
        self.input_chars += len(context) + sum(len(s) for s in steps)
        counter = getattr(self.prm, "count_input_tokens", None)
        if callable(counter):
            self.input_tokens += int(counter(context, list(steps)))
        elif self.tokenizer is not None:
            self.input_tokens += self._tokens(context) + sum(self._tokens(s) for s in steps)

    def _tokens(self, text: str) -> int:
        n = self._num_tokens.get(text)
        if n is None:
            n = self._num_tokens[text] = len(self.tokenizer.encode(text, add_special_tokens=False))
        return n

    def score_last(self, context: str, prefixes: Sequence[Sequence[str]]) -> list[float]:
        """Score of each prefix judged at its latest step."""
        if self.kind == "prefix":
            out = []
            for steps in prefixes:
                self._count(context, steps)
                out.append(_check_score(self.prm.score_prefix(context, list(steps)), f"{_describe(self.prm)}.score_prefix"))
            return out
        return [s[-1] for s in self.score_all(context, prefixes)]

    def score_all(self, context: str, prefixes: Sequence[Sequence[str]]) -> list[list[float]]:
        """Per-step scores ``[r_1..r_t]`` of each prefix (one batched call, or one call per step)."""
        prefixes = [list(p) for p in prefixes]
        if self.kind == "batch":
            if not prefixes:
                return []
            for p in prefixes:
                self._count(context, p)
            res = self.prm.score(context, prefixes)
            if len(res) != len(prefixes):
                raise ValueError(f"PRM score() returned {len(res)} results for {len(prefixes)} prefixes")
            out = []
            for p, r in zip(prefixes, res):
                r = list(r)
                if len(r) != len(p):
                    raise ValueError(f"PRM score() returned {len(r)} step scores for a prefix of {len(p)} steps")
                out.append([_check_score(v, f"{_describe(self.prm)}.score") for v in r])
            return out
        return [[self.score_last(context, [p[: j + 1]])[0] for j in range(len(p))] for p in prefixes]


def as_prm(prm) -> PRMAdapter:
    """Normalise any supported PRM (see the module docstring) into a :class:`PRMAdapter`."""
    return prm if isinstance(prm, PRMAdapter) else PRMAdapter(prm)


class StepPotential:
    """A PRM turned into step potentials: aggregation + weighting mode + temperature.

    Args:
      prm: any PRM accepted by :func:`as_prm`.
      aggregation: ``"last"``, ``"min"``, ``"prod"`` or ``"model"``.
      mode: ``"twisted"`` or ``"paper"`` (see the module docstring for their targets).
      temperature: ``tau > 0``; the potential is raised to ``beta = 1 / tau``.

    The sampler keeps, per particle, the list of per-step scores computed so far
    (``None`` where an aggregation never needs one) and calls :meth:`update`.
    """

    def __init__(self, prm, aggregation: str = "last", mode: str = "twisted", temperature: float = 1.0):
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {aggregation!r}; choose one of {AGGREGATIONS}")
        if mode not in MODES:
            raise ValueError(f"unknown weighting mode {mode!r}; choose one of {MODES}")
        if not (temperature > 0 and math.isfinite(temperature)):
            raise ValueError(f"temperature must be a positive number, got {temperature}")
        self.prm = as_prm(prm)
        self.aggregation = aggregation
        self.mode = mode
        self.temperature = float(temperature)

    def with_temperature(self, temperature: float) -> "StepPotential":
        """The same PRM (shared counters) at another temperature (parallel tempering)."""
        new = StepPotential.__new__(StepPotential)
        new.prm, new.aggregation, new.mode = self.prm, self.aggregation, self.mode
        if not (temperature > 0 and math.isfinite(temperature)):
            raise ValueError(f"temperature must be a positive number, got {temperature}")
        new.temperature = float(temperature)
        return new

    @property
    def beta(self) -> float:
        return 1.0 / self.temperature

    # -- scoring ------------------------------------------------------------------------
    def update(self, context: str, items: Sequence[tuple[list[str], list]]) -> list[float]:
        """Bring the per-step scores of each ``(steps, scores)`` item up to date **in place**
        (``scores`` is extended to ``len(steps)``) and return the aggregated ``r`` of each."""
        agg = self.aggregation
        if agg == "model":
            need = [i for i, (steps, scores) in enumerate(items) if len(scores) < len(steps)]
            joined = [["".join(items[i][0])] for i in need]
            if not need:
                rs = []
            elif self.prm.kind == "batch":
                rs = [s[-1] for s in self.prm.score_all(context, joined)]
            else:
                rs = self.prm.score_last(context, joined)
            for i, r in zip(need, rs):
                steps, scores = items[i]
                scores.extend([None] * (len(steps) - len(scores) - 1))
                scores.append(r)
            return [self.aggregate(scores) for _, scores in items]
        need = [i for i, (steps, scores) in enumerate(items) if len(scores) < len(steps)]
        if need:
            if agg == "last" and self.prm.kind == "prefix":
                new = self.prm.score_last(context, [items[i][0] for i in need])
                for i, r in zip(need, new):
                    steps, scores = items[i]
                    scores.extend([None] * (len(steps) - len(scores) - 1))
                    scores.append(r)
            elif self.prm.kind == "batch":
                full = self.prm.score_all(context, [items[i][0] for i in need])
                for i, rs in zip(need, full):
                    steps, scores = items[i]
                    scores[:] = rs
            else:  # min / prod with a prefix PRM: every missing step once
                for i in need:
                    steps, scores = items[i]
                    for j in range(len(scores), len(steps)):
                        scores.append(self.prm.score_last(context, [steps[: j + 1]])[0])
        return [self.aggregate(scores) for _, scores in items]

    def aggregate(self, scores: Sequence[Optional[float]]) -> float:
        """Aggregated score of a prefix from its per-step scores (``1`` for no steps)."""
        if not scores:
            return 1.0
        if self.aggregation in ("last", "model"):
            return float(scores[-1])
        vals = [s for s in scores]
        if any(v is None for v in vals):
            raise ValueError(f"aggregation {self.aggregation!r} needs every step's score")
        if self.aggregation == "min":
            return float(min(vals))
        return float(np.prod(vals))

    # -- weights ------------------------------------------------------------------------
    def log_potential(self, r: float) -> float:
        """``beta log r`` (twisted) or ``beta logit(r)`` (paper)."""
        if self.mode == "twisted":
            return self.beta * _log(r)
        lg = logit(r)
        if math.isinf(lg):
            if lg > 0:
                raise ValueError("paper weighting: a PRM score of exactly 1 has logit +inf; clip scores below 1")
            return -math.inf
        return self.beta * lg


def as_step_potential(prm, aggregation: str = "last", mode: str = "twisted", temperature: float = 1.0) -> StepPotential:
    """``prm`` itself if it already is a :class:`StepPotential` (its own aggregation, mode
    and temperature win), else ``StepPotential(prm, aggregation, mode, temperature)``."""
    if isinstance(prm, StepPotential):
        return prm
    return StepPotential(prm, aggregation=aggregation, mode=mode, temperature=temperature)


# ---------------------------------------------------------------------------------------
# token constraints


class TokenConstraint:
    """A token-mask constraint.

    Args:
      mask_fn: ``mask_fn(context_ids: list[int]) -> bool [V]`` allowed next tokens given the
        *generated* token ids so far (prompt excluded); or
      static_mask: one ``bool [V]`` mask for every context (e.g. a lipogram).
      weighted: ``True`` — proper SMC (log-weight += log allowed mass); ``False`` — locally
        constrained decoding (LCD), no weight.
      eos_ids: ids forced to be allowed (a generation must be able to stop).

    ``masks(contexts)`` returns the ``[N, V]`` bool array of a batch.
    """

    def __init__(self, mask_fn=None, static_mask=None, weighted: bool = True, eos_ids: Iterable[int] = ()):
        if (mask_fn is None) == (static_mask is None):
            raise ValueError("give exactly one of mask_fn and static_mask")
        self.mask_fn = mask_fn
        self.static_mask = None if static_mask is None else np.asarray(static_mask, bool).copy()
        if self.static_mask is not None and self.static_mask.ndim != 1:
            raise ValueError(f"static_mask must be a [V] bool vector, got shape {self.static_mask.shape}")
        self.weighted = bool(weighted)
        self.eos_ids = sorted(int(i) for i in eos_ids)
        if self.static_mask is not None and self.eos_ids:
            self.static_mask[self.eos_ids] = True

    def lcd(self) -> "TokenConstraint":
        """The same constraint as locally constrained decoding (no weight)."""
        return TokenConstraint(self.mask_fn, self.static_mask, weighted=False, eos_ids=self.eos_ids)

    def masks(self, contexts: Sequence[Sequence[int]], vocab_size: int) -> np.ndarray:
        n = len(contexts)
        if self.static_mask is not None:
            if self.static_mask.shape[0] != vocab_size:
                raise ValueError(f"static_mask has {self.static_mask.shape[0]} entries, the LM has {vocab_size} tokens")
            return np.broadcast_to(self.static_mask, (n, vocab_size))
        out = np.empty((n, vocab_size), bool)
        for i, ctx in enumerate(contexts):
            m = np.asarray(self.mask_fn(list(ctx)), bool)
            if m.shape != (vocab_size,):
                raise ValueError(f"mask_fn must return a bool [{vocab_size}] vector, got shape {m.shape}")
            out[i] = m
        if self.eos_ids:
            out[:, self.eos_ids] = True
        return out


def token_mask_from_predicate(
    tokenizer, predicate: Callable[[str], bool], vocab_size: Optional[int] = None, allow_control: bool = False
) -> np.ndarray:
    """``bool [V]``: ``predicate(decoded token string)`` for every token id.

    EOS ids are always allowed. Other control tokens (``<|im_start|>``, ``<repo_name>``, ...:
    ids whose whole text disappears under ``decode(..., skip_special_tokens=True)``) are not
    text, so a text predicate cannot judge them: they are forbidden unless ``allow_control``.
    Decodes every id once (for a 49k vocabulary, about a second)."""
    v = int(vocab_size if vocab_size is not None else tokenizer.vocab_size)
    eos = set(getattr(tokenizer, "eos_ids", ()) or ())
    mask = np.zeros(v, bool)
    for i in range(v):
        if i in eos:
            mask[i] = True
            continue
        try:
            s = tokenizer.decode([i])
        except Exception:  # ids past the tokenizer's table (padded vocabularies)
            continue
        if not allow_control and s and _is_control(tokenizer, i):
            continue
        mask[i] = bool(predicate(s))
    return mask


def _is_control(tokenizer, token_id: int) -> bool:
    """Whether ``token_id`` is a control token: non-empty text that ``skip_special_tokens``
    removes. Tokenizers without that keyword have no control tokens here."""
    try:
        return tokenizer.decode([token_id], skip_special_tokens=True) == ""
    except TypeError:
        return False
