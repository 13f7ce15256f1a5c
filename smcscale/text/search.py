r"""Search baselines with a PRM (search-and-learn, Snell et al. 2024), on the same engine.

All methods use the step segmentation, stopping rules, lockstep decoding and budget
counters of :mod:`smcscale.text.sampler` and return a
:class:`~smcscale.text.sampler.TextSMCResult` (``weights`` uniform; ``scores`` = final
aggregated PRM scores; ``info["selections"]`` gives the answer every rule would pick from
the same generations).

* :func:`best_of_n` — ``N`` independent generations, the one with the highest score.
* :func:`weighted_best_of_n` — same generations; the answer with the largest **sum** of
  scores over the generations that give it.
* :func:`majority` — same generations (no PRM needed); the most frequent answer.
* :func:`beam_search` — step-level beam search: ``N`` beams; at every round keep the top
  ``n_active / M`` unfinished beams by score and expand each ``M`` ways (the next step is
  sampled independently in each copy); finished beams are set aside (kept, never extended).
* :func:`dvts` — diverse verifier tree search: ``N / M`` independent subtrees of ``M``
  beams; each keeps its single best beam per round and expands it ``M`` ways. The subtrees
  share one LM batch but never exchange beams.

Answer rules on a list of answers: :func:`majority_vote`, :func:`weighted_majority_vote`.
Rounds are lockstep as in the sampler: a round ends once every unfinished beam has completed
a new step; with ``step_tokens = k`` that is exactly one step per beam.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from .potentials import as_step_potential
from .sampler import (
    BeamPolicy,
    Budget,
    FinalPolicy,
    GenerationConfig,
    Sweep,
    TextSMCResult,
    check_count,
    encode_prompt,
    majority_vote,
    select_answer,
    weighted_majority_vote,
)

__all__ = [
    "best_of_n",
    "weighted_best_of_n",
    "majority",
    "beam_search",
    "dvts",
    "majority_vote",
    "weighted_majority_vote",
]


def _selections(answers, scores) -> dict:
    have = scores is not None and np.all(np.isfinite(scores))
    out = {"majority": majority_vote(answers)}
    if have:
        i, a = select_answer(answers, scores, "argmax")
        out["best_of_n"] = a
        out["best_of_n_index"] = i
        out["weighted_best_of_n"] = weighted_majority_vote(answers, scores)
    return out


def _independent(lm, prm, prompt, n, aggregation, config, key, answer_fn, prm_context, method, record_history=False,
                 progress=False):
    cfg = config or GenerationConfig()
    pot = None if prm is None else as_step_potential(prm, aggregation, "twisted", 1.0)
    ids, ctx = encode_prompt(lm, prompt)
    sw = Sweep(lm, cfg, ids, prm_context if prm_context is not None else ctx, n, [FinalPolicy(pot)], key,
               record_history=record_history, progress=progress).run()
    res = sw.result(sw.groups[0], method, answer_fn, "argmax")
    if pot is None:
        res.scores = np.full(n, np.nan)
    res.info["selections"] = _selections(res.answers, None if pot is None else res.scores)
    return res


def best_of_n(lm, prm, prompt, num_samples: int, *, aggregation: str = "last", config: Optional[GenerationConfig] = None,
              key=0, answer_fn: Optional[Callable] = None, prm_context: Optional[str] = None,
              progress: bool = False) -> TextSMCResult:
    """``N`` independent generations; ``selected`` = the highest aggregated PRM score
    (ties: lowest index). The PRM scores each finished generation once per step it needs
    (``last``/``model``: one call per generation). ``progress`` shows a tqdm bar of the
    decoded tokens."""
    n = check_count(num_samples, "num_samples")
    res = _independent(lm, prm, prompt, n, aggregation, config, key, answer_fn, prm_context, "best_of_n",
                       progress=progress)
    return res


def weighted_best_of_n(lm, prm, prompt, num_samples: int, *, aggregation: str = "last",
                       config: Optional[GenerationConfig] = None, key=0, answer_fn: Optional[Callable] = None,
                       prm_context: Optional[str] = None) -> TextSMCResult:
    """``N`` independent generations; ``selected_answer`` = the answer whose generations have
    the largest summed PRM score (``selected`` = its first generation)."""
    n = check_count(num_samples, "num_samples")
    res = _independent(lm, prm, prompt, n, aggregation, config, key, answer_fn, prm_context, "weighted_best_of_n")
    res.selected, res.selected_answer = select_answer(res.answers, res.scores, "vote")
    res.selected_text = None if res.selected is None else res.texts[res.selected]
    return res


def majority(lm, prompt, num_samples: int, *, config: Optional[GenerationConfig] = None, key=0,
             answer_fn: Optional[Callable] = None, prm=None, aggregation: str = "last",
             prm_context: Optional[str] = None) -> TextSMCResult:
    """``N`` independent generations; ``selected_answer`` = the most frequent answer (no PRM
    needed; give one to also fill ``scores`` and the PRM-based selections)."""
    n = check_count(num_samples, "num_samples")
    res = _independent(lm, prm, prompt, n, aggregation, config, key, answer_fn, prm_context, "majority")
    res.selected_answer = res.info["selections"]["majority"]
    res.selected = None
    if res.selected_answer is not None:
        res.selected = next(i for i, a in enumerate(res.answers) if a == res.selected_answer)
    res.selected_text = None if res.selected is None else res.texts[res.selected]
    return res


def _combine(results, method, prompt_len) -> TextSMCResult:
    """Pool the populations (subtrees) of one batched run into one result."""
    cat = lambda name: [x for r in results for x in getattr(r, name)]  # noqa: E731
    n = sum(len(r.texts) for r in results)
    scores = np.concatenate([r.scores for r in results])
    answers = cat("answers")
    b = Budget()
    for r in results:
        b = b + r.budget
    # the subtrees share one batch: one prefill; each decode step computes the batch rows of
    # the subtrees still running (every subtree counts its own rows)
    b.prefill_tokens = prompt_len
    b.decode_steps = max(r.budget.decode_steps for r in results)
    b.lm_forward_tokens = prompt_len + sum(r.budget.lm_forward_tokens - r.budget.prefill_tokens for r in results)
    sel, ans = select_answer(answers, scores, "argmax")
    lw = np.full(n, -np.log(n))
    return TextSMCResult(
        texts=cat("texts"), token_ids=cat("token_ids"), steps=cat("steps"), step_scores=cat("step_scores"),
        scores=scores, answers=answers, log_weights=lw, weights=np.exp(lw), finish_reasons=cat("finish_reasons"),
        selected=sel, selected_text=None if sel is None else cat("texts")[sel], selected_answer=ans,
        log_z=float("nan"), ess=np.array([]), resampled=np.array([], bool), ancestors=[],
        budget=b, wall_time=results[0].wall_time, method=method,
        info={"subtrees": results, "selections": _selections(answers, scores),
              "trajectories": [t for r in results for t in r.info["trajectories"]]},
    )


def beam_search(lm, prm, prompt, num_beams: int, *, beam_width: int = 4, aggregation: str = "last",
                config: Optional[GenerationConfig] = None, key=0, answer_fn: Optional[Callable] = None,
                prm_context: Optional[str] = None, record_history: bool = False) -> TextSMCResult:
    """Step-level beam search with a PRM: ``N`` beams, keep the top ``N / M`` unfinished
    beams at every round and expand each ``M = beam_width`` ways. ``selected`` = the final
    beam with the highest score; ``info["selections"]`` also has the score-weighted vote.
    ``ancestors[t]`` shows which beams were kept; ``record_history`` keeps every round's
    prefixes and scores (before selection) in ``info["history"]``."""
    n = check_count(num_beams, "num_beams")
    m = check_count(beam_width, "beam_width")
    if n % m:
        raise ValueError(f"num_beams ({n}) must be a multiple of beam_width ({m})")
    cfg = config or GenerationConfig()
    pot = as_step_potential(prm, aggregation, "twisted", 1.0)
    ids, ctx = encode_prompt(lm, prompt)
    sw = Sweep(lm, cfg, ids, prm_context if prm_context is not None else ctx, n, [BeamPolicy(pot, m)], key,
               record_history=record_history).run()
    res = sw.result(sw.groups[0], "beam_search", answer_fn, "argmax")
    res.info["selections"] = _selections(res.answers, res.scores)
    return res


def dvts(lm, prm, prompt, num_beams: int, *, beam_width: int = 4, aggregation: str = "last",
         config: Optional[GenerationConfig] = None, key=0, answer_fn: Optional[Callable] = None,
         prm_context: Optional[str] = None, record_history: bool = False) -> TextSMCResult:
    """Diverse verifier tree search: ``N / M`` independent subtrees of ``M = beam_width``
    beams; in each, keep the best unfinished beam per round and expand it ``M`` ways.
    The pooled result selects the best final beam over all subtrees;
    ``info["subtrees"]`` has one result per subtree (with its own genealogy)."""
    n = check_count(num_beams, "num_beams")
    m = check_count(beam_width, "beam_width")
    if n % m:
        raise ValueError(f"num_beams ({n}) must be a multiple of beam_width ({m})")
    cfg = config or GenerationConfig()
    pot = as_step_potential(prm, aggregation, "twisted", 1.0)
    ids, ctx = encode_prompt(lm, prompt)
    policies = [BeamPolicy(pot, m, keep=1) for _ in range(n // m)]
    sw = Sweep(lm, cfg, ids, prm_context if prm_context is not None else ctx, m, policies, key,
               record_history=record_history).run()
    subtrees = [sw.result(g, "dvts-subtree", answer_fn, "argmax") for g in sw.groups]
    return _combine(subtrees, "dvts", len(ids))
