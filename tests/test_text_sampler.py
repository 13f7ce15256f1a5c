"""Step-level text SMC, particle Gibbs, parallel tempering and search baselines.

Exact tests run on the bigram :class:`FakeLM` (symbols "a", "b", EOS = 0): with steps of
``k`` tokens, a step cap and a token cap, every stopped generation can be enumerated, so the
targets (twisted: ``b(x) r_T(x)^beta``; paper: ``b(x) prod_t odds(r_t)^beta``) are exact.
Many independent populations run in one batch (``num_runs`` / ``num_chains``); the
Ẑ-weighted average over runs, ``sum_r Ẑ_r sum_i W_ri 1[x_ri = y] / sum_r Ẑ_r``, is
consistent for the target at *fixed* N (the self-normalised average of one run is biased).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import smcscale as smc
from smcscale.tasks.constraints import lipogram_constraint
from smcscale.text import FakeLM
from smcscale.text.potentials import PRMAdapter, StepPotential, TokenConstraint, logit
from smcscale.text.sampler import (
    GenerationConfig,
    Trajectory,
    as_key,
    boxed_answer,
    check_count,
    has_boxed,
    majority_vote,
    parallel_tempering,
    particle_filter,
    particle_gibbs,
    select_answer,
    swap_log_ratio,
    weighted_majority_vote,
)
from smcscale.text.search import beam_search, best_of_n, dvts, majority, weighted_best_of_n

P = np.array([[1.0, 0.0, 0.0], [0.25, 0.45, 0.30], [0.30, 0.35, 0.35]])
SYM = "ab"
K, S, L = 2, 3, 5  # step tokens, step cap, token cap
CFG = GenerationConfig(step_tokens=K, max_steps=S, max_new_tokens=L, temperature=1.0, answer_pattern=None)
IDENT = lambda t: t  # noqa: E731


@pytest.fixture(scope="module")
def lm():
    return FakeLM(P, SYM)


class CountingLM(FakeLM):
    """The fake LM, recording the batch size of every decode step."""

    def __init__(self, *args):
        super().__init__(*args)
        self.batch_sizes = []

    def decode_step(self, state, key, *args, **kwargs):
        self.batch_sizes.append(int(state.logits.shape[0]))
        return super().decode_step(state, key, *args, **kwargs)


def prm(ctx, steps):
    """Score of a prefix at its latest step; depends on the step and on the prefix length."""
    s = steps[-1]
    a, b = s.count("a"), s.count("b")
    return 0.15 + 0.7 * (a + 0.3) / (a + b + 0.6) * (0.9 if len(steps) % 2 else 1.0)


def enumerate_paths(k=K, S=S, L=L, prompt_last=1, allowed=None, delimiter=None):
    """Every stopped generation with log b(x) (EOS factor for truncation), its steps and the
    round T(x) in which it finishes. ``allowed(tokens, v)`` restricts tokens (constraints).
    ``delimiter="b"``: a step ends at each "b" instead of every ``k`` tokens."""
    out = []
    if delimiter is not None:
        d = SYM.index(delimiter) + 1

        def rec_d(tokens, lp, nsteps):
            last = tokens[-1] if tokens else prompt_last
            out.append((tuple(tokens), "eos", lp + math.log(P[last, 0]), 0))
            for v in (1, 2):
                t2, lp2, ns = tokens + [v], lp + math.log(P[last, v]), nsteps + (v == d)
                if v == d and ns >= S:
                    out.append((tuple(t2), "step_cap", lp2, 0))
                elif len(t2) >= L:
                    out.append((tuple(t2), "length", lp2 + math.log(P[v, 0]), 0))
                else:
                    rec_d(t2, lp2, ns)

        rec_d([], 0.0, 0)
        paths = []
        for toks, reason, lp, _ in out:
            text = "".join(SYM[t - 1] for t in toks)
            steps = [s + delimiter for s in text.split(delimiter)[:-1]] + ([text.split(delimiter)[-1]] if not text.endswith(delimiter) else [])
            paths.append(dict(tokens=toks, reason=reason, logb=lp, steps=[x for x in steps if x] or [""], text=text))
        return paths

    def rec(tokens, lp):
        last = tokens[-1] if tokens else prompt_last
        if P[last, 0] > 0:
            out.append((tuple(tokens), "eos", lp + math.log(P[last, 0]), len(tokens) + 1))
        for v in (1, 2):
            if P[last, v] == 0 or (allowed is not None and not allowed(tokens, v)):
                continue
            t2, lp2 = tokens + [v], lp + math.log(P[last, v])
            n = len(t2)
            if n % k == 0 and n // k >= S:
                out.append((tuple(t2), "step_cap", lp2, n))
            elif n >= L:
                out.append((tuple(t2), "length", lp2 + math.log(P[v, 0]), n))
            else:
                rec(t2, lp2)

    rec([], 0.0)
    paths = []
    for toks, reason, lp, decodes in out:
        text = "".join(SYM[t - 1] for t in toks)
        steps = [text[i : i + k] for i in range(0, len(text), k)] or [""]
        paths.append(dict(tokens=toks, reason=reason, logb=lp, steps=steps, text=text, T=-(-decodes // k)))
    return paths


def step_scores(steps):
    return [prm("", steps[: j + 1]) for j in range(len(steps))]


def twisted_target(paths, beta=1.0, how="last"):
    agg = {"last": lambda s: s[-1], "min": min, "prod": lambda s: float(np.prod(s))}[how]
    w = np.array([math.exp(p["logb"]) * agg(step_scores(p["steps"])) ** beta for p in paths])
    return w / w.sum(), w.sum()


def paper_target(paths, beta=1.0, S=S):
    w = []
    for p in paths:
        lw = p["logb"]
        for t in range(1, S + 1):
            r = prm("", p["steps"][:t] if t < p["T"] else p["steps"])
            lw += beta * logit(r)
        w.append(math.exp(lw))
    w = np.array(w)
    return w / w.sum(), w.sum()


def zhat_estimate(results, paths):
    idx = {p["text"]: i for i, p in enumerate(paths)}
    R = len(results)
    a, b = np.zeros((R, len(paths))), np.zeros(R)
    for r, res in enumerate(results):
        z = math.exp(res.log_z) if res.log_z > -math.inf else 0.0
        b[r] = z
        for t, w in zip(res.texts, res.weights):
            a[r, idx[t]] += z * w
    est = a.sum(0) / b.sum()
    se = (a - est[None, :] * b[:, None]).std(0) * math.sqrt(R) / b.sum()
    return est, se, b


def assert_matches(est, se, target, nsig=4.5, tol=2e-3):
    bad = np.abs(est - target) > nsig * se + tol
    assert not bad.any(), np.c_[est, target, se][bad]


def ref_of(path):
    return Trajectory(path["tokens"], path["reason"], 0 if path["reason"] == "eos" else None)


# ---------------------------------------------------------------------------------------
# exactness


@pytest.mark.parametrize(
    "kwargs, beta, how, temperature",
    [
        (dict(), 1.0, "last", 1.0),
        # beta = 2, product aggregation, proposal at temperature 0.7 with the p/q correction
        (dict(potential_temperature=0.5, aggregation="prod"), 2.0, "prod", 0.7),
    ],
)
@pytest.mark.slow
def test_twisted_pf_matches_exact_posterior(lm, kwargs, beta, how, temperature):
    cfg = GenerationConfig(step_tokens=K, max_steps=S, max_new_tokens=L, temperature=temperature,
                           answer_pattern=None, proposal_correction=temperature != 1.0)
    paths = enumerate_paths()
    target, Z = twisted_target(paths, beta, how)
    res = particle_filter(lm, prm, "a", 4, config=cfg, num_runs=3000, key=3, answer_fn=IDENT, ess_threshold=0.9,
                          **kwargs)
    est, se, zs = zhat_estimate(res, paths)
    assert_matches(est, se, target)
    # Ẑ is unbiased for Z = E_b[r_T^beta]
    assert abs(zs.mean() - Z) < 4.5 * zs.std() / math.sqrt(len(zs))
    assert any(r.resampled.any() for r in res) and not all(r.resampled.all() for r in res)  # ESS-adaptive


def test_ragged_text_steps_and_early_rounds_keep_the_twisted_target(lm):
    """Steps end at each "b" (ragged lengths), rounds fire when half the unfinished particles
    have a new step: lockstep decoding with any symmetric round rule has the same target."""
    cfg = GenerationConfig(delimiter="b", max_steps=S, max_new_tokens=L, temperature=1.0, answer_pattern=None,
                           round_quorum=0.5)
    paths = enumerate_paths(delimiter="b")
    target, Z = twisted_target(paths)
    res = particle_filter(lm, prm, "a", 4, config=cfg, num_runs=3000, key=20, answer_fn=IDENT, ess_threshold=0.9)
    est, se, zs = zhat_estimate(res, paths)
    assert_matches(est, se, target)
    assert abs(zs.mean() - Z) < 4.5 * zs.std() / math.sqrt(len(zs))
    assert np.mean([r.budget.rounds for r in res]) > 2


def test_paper_mode_matches_its_documented_target(lm):
    paths = enumerate_paths()
    target, Z = paper_target(paths)
    twisted, _ = twisted_target(paths)
    res = particle_filter(lm, prm, "a", 4, config=CFG, mode="paper", paper_rounds="max_steps", num_runs=3000,
                          key=4, answer_fn=IDENT)
    assert all(r.resampled[:-1].all() and r.budget.rounds == S for r in res)  # every round, S rounds
    est, se, zs = zhat_estimate(res, paths)
    assert_matches(est, se, target)
    assert abs(zs.mean() - Z) < 4.5 * zs.std() / math.sqrt(len(zs))
    assert 0.5 * np.abs(target - twisted).sum() > 0.05  # and it is not the twisted target


@pytest.mark.parametrize("ancestor_sampling", [False, True])
def test_particle_gibbs_leaves_the_posterior_invariant(lm, ancestor_sampling):
    """Reference ~ exact posterior -> one conditional sweep -> new reference ~ posterior.
    A reference weighted on another footing (its_hub #54) breaks this."""
    paths = enumerate_paths()
    target, _ = twisted_target(paths)
    R = 3000
    draws = np.random.default_rng(0).choice(len(paths), size=R, p=target)
    refs = [ref_of(paths[i]) for i in draws]
    lm = CountingLM(P, SYM)
    out = particle_gibbs(lm, prm, "a", 4, 1, config=CFG, num_chains=R, init_reference=refs, key=5,
                         ancestor_sampling=ancestor_sampling, answer_fn=IDENT)
    assert min(lm.batch_sizes) < 4 * R  # finished rows were dropped (GenerationConfig.compact_rows)
    idx = {p["text"]: i for i, p in enumerate(paths)}
    counts = np.bincount([idx[o.info["reference"].text] for o in out], minlength=len(paths))
    assert_matches(counts / R, np.sqrt(target * (1 - target) / R), target)
    moved = np.mean([o.info["reference"].token_ids != r.token_ids for o, r in zip(out, refs)])
    assert moved > 0.2


def test_parallel_tempering_swap_keeps_each_tempered_posterior(lm):
    taus = (3.0, 1.0)
    paths = enumerate_paths()
    targets = [twisted_target(paths, 1.0 / t)[0] for t in taus]
    R = 2000
    rng = np.random.default_rng(1)
    init = [[ref_of(paths[rng.choice(len(paths), p=tg)]) for tg in targets] for _ in range(R)]
    out = parallel_tempering(lm, prm, "a", 3, 1, temperatures=taus, config=CFG, num_replicas=R,
                             init_references=init, key=6, answer_fn=IDENT)
    idx = {p["text"]: i for i, p in enumerate(paths)}
    for m, tg in enumerate(targets):
        counts = np.bincount([idx[o.info["chain_references"][m].text] for o in out], minlength=len(paths))
        assert_matches(counts / R, np.sqrt(tg * (1 - tg) / R), tg)
    rates = np.mean([o.info["swap_rates"][0] for o in out])
    assert 0.3 < rates < 1.0
    assert swap_log_ratio(1 / 3, 1.0, 0.2, 0.8) == pytest.approx((1 / 3 - 1) * (math.log(0.8) - math.log(0.2)))
    assert out[0].budget.generations == 2 * 3


def test_weighted_constraint_is_exact_and_lcd_is_not(lm):
    no_bb = lambda ctx: np.array([True, True, not (ctx and ctx[-1] == 2)])  # noqa: E731
    paths = enumerate_paths(allowed=lambda toks, v: not (v == 2 and toks and toks[-1] == 2))
    flat = lambda c, s: 0.5  # noqa: E731
    cons = TokenConstraint(mask_fn=no_bb, eos_ids=[0])
    # proper SMC: b(x) 1[no "bb"], here with a constant potential
    target, _ = (lambda w: (w / w.sum(), w.sum()))(np.array([math.exp(p["logb"]) for p in paths]))
    res = particle_filter(lm, flat, "a", 4, config=CFG, constraint=cons, num_runs=3000, key=7, answer_fn=IDENT)
    est, se, _ = zhat_estimate(res, paths)
    assert_matches(est, se, target)
    # LCD: the locally renormalised law, no weights (all equal)
    def lcd_prob(p):
        lp, last = 0.0, 1
        for v in list(p["tokens"]) + ([0] if p["reason"] == "eos" else []):
            row = P[last].copy()
            if last == 2:
                row[2] = 0.0
            lp += math.log(row[v] / row.sum())
            last = v
        if p["reason"] == "length":
            row = P[last].copy()
            if last == 2:
                row[2] = 0.0
            lp += math.log(row[0] / row.sum())
        return math.exp(lp)
    lcd_law = np.array([lcd_prob(p) for p in paths])
    lcd_law /= lcd_law.sum()
    res = particle_filter(lm, flat, "a", 4, config=CFG, constraint=cons.lcd(), num_runs=3000, key=8, answer_fn=IDENT)
    est, se, _ = zhat_estimate(res, paths)
    assert_matches(est, se, lcd_law)
    assert 0.5 * np.abs(lcd_law - target).sum() > 0.03
    np.testing.assert_array_equal(lipogram_constraint(lm.tokenizer, "b").static_mask, [True, True, False])


# ---------------------------------------------------------------------------------------
# finishing, truncation, dead populations


def test_finished_particles_are_never_extended(lm):
    # a particle stops at its first "b" (answer pattern) or at the step/token caps
    cfg = GenerationConfig(step_tokens=1, max_steps=4, max_new_tokens=L, temperature=1.0, answer_pattern=r"b")
    res = particle_filter(lm, prm, "a", 16, config=cfg, ess_threshold=0.0, key=9, answer_fn=IDENT,
                          record_history=True)
    for text, reason in zip(res.texts, res.finish_reasons):
        assert "b" not in text[:-1]
        assert (reason == "answer") == text.endswith("b")
        assert reason in ("answer", "eos", "step_cap") and len(text) <= 4
    seen = {}
    for h in res.info["history"]:  # no resampling: slot i is particle i all along
        for i, (toks, fin) in enumerate(zip(h["tokens"], h["finished"])):
            if i in seen:
                assert toks == seen[i]
            elif fin:
                seen[i] = toks
    # finished particles stay in the population with their weight and may be resampled
    res = particle_filter(lm, prm, "a", 16, config=cfg, ess_threshold=1.0, key=9, answer_fn=IDENT)
    assert res.resampled.any() and abs(res.weights.sum() - 1) < 1e-9


def test_truncation_at_the_token_cap_adds_log_p_eos(lm):
    const = 0.4
    cfg = GenerationConfig(step_tokens=1, max_steps=10, max_new_tokens=L, temperature=1.0, answer_pattern=None)
    n = 16
    res = particle_filter(lm, lambda c, s: const, "a", n, config=cfg, ess_threshold=0.0, key=10, answer_fn=IDENT)
    unnorm = res.log_weights + res.log_z + math.log(n)  # no resampling: lw_i = log G_i
    reasons = set(res.finish_reasons)
    assert {"length", "eos"} <= reasons
    for toks, reason, lw in zip(res.token_ids, res.finish_reasons, unnorm):
        expected = math.log(const) + (math.log(P[toks[-1], 0]) if reason == "length" else 0.0)
        assert lw == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("mode", ["twisted", "paper"])
def test_all_dead_population_is_defined(lm, mode):
    with pytest.warns(smc.ParticleCollapseWarning, match="every particle of the population has weight zero"):
        res = particle_filter(lm, lambda c, s: 0.0, "a", 16, config=CFG, mode=mode, key=11, answer_fn=IDENT)
    assert res.log_z == -math.inf
    assert np.all(res.weights == 0) and np.all(res.log_weights == -np.inf)
    assert res.selected is None and res.selected_answer is None and res.selected_text is None
    assert set(res.finish_reasons) <= {"dead", "eos"} and "dead" in res.finish_reasons
    assert not np.isnan(res.ess).any() and res.ess[-1] == 0
    with pytest.raises(RuntimeError, match="every weight is zero"):
        particle_gibbs(lm, lambda c, s: 0.0, "a", 4, 2, config=CFG, key=11)


def test_single_dead_particles_stop_and_keep_weight_zero(lm):
    kill_b = lambda c, s: 0.0 if "b" in "".join(s) else 0.5  # noqa: E731
    res = particle_filter(lm, kill_b, "a", 16, config=CFG, ess_threshold=0.0, key=12, answer_fn=IDENT)
    for text, reason, w in zip(res.texts, res.finish_reasons, res.weights):
        if "b" in text:
            assert w == 0.0
            assert reason == "dead" or len(text) >= L or reason in ("eos", "step_cap")
        else:
            assert w > 0
    assert res.log_z > -math.inf


# ---------------------------------------------------------------------------------------
# particle Gibbs regressions (its_hub #54, #208)


def test_reference_weight_is_on_the_same_footing_as_free_particles(lm):
    """Without resampling every slot's log-weight must equal beta log r_T + truncation term,
    the reference's included (its_hub #54 compared the reference on another footing)."""
    paths = enumerate_paths()
    ref_path = next(p for p in paths if p["reason"] == "length")
    res = particle_gibbs(lm, prm, "a", 16, 1, config=CFG, init_reference=ref_of(ref_path), ess_threshold=0.0,
                         potential_temperature=0.5, key=13, answer_fn=IDENT)
    r = res.info["reference_slot"]
    assert res.texts[r] == ref_path["text"] and res.finish_reasons[r] == "length"
    unnorm = res.log_weights + res.log_z + math.log(16)
    for toks, steps, reason, lw in zip(res.token_ids, res.steps, res.finish_reasons, unnorm):
        expected = 2.0 * math.log(step_scores(steps)[-1])
        if reason == "length":
            expected += math.log(P[toks[-1], 0])
        assert lw == pytest.approx(expected, abs=1e-5)


def test_finished_reference_is_never_revived_and_pg_resampling_is_ess_adaptive(lm):
    ref = Trajectory((1,), "eos", 0)  # "a" then EOS: finishes in the first round
    res = particle_gibbs(lm, prm, "a", 4, 1, config=CFG, init_reference=ref, key=14, answer_fn=IDENT,
                         record_history=True)
    r = res.info["reference_slot"]
    assert res.token_ids[r] == [1] and res.finish_reasons[r] == "eos"
    for i, a in enumerate(res.ancestors[0]):
        if a == r:  # every copy of the finished reference stays finished as it was
            assert res.token_ids[i] == [1] and res.finish_reasons[i] == "eos"
    # constant potential: only truncation terms (log p(EOS) at the token cap) move the
    # weights, so an ESS-adaptive sweep resamples exactly when ESS < kappa N
    res = particle_gibbs(lm, lambda c, s: 0.5, "a", 4, 2, config=CFG, ess_threshold=0.5, key=15, answer_fn=IDENT)
    trunc = np.array([r == "length" for r in res.finish_reasons])
    assert np.array_equal(res.resampled, res.ess < 0.5 * 4)
    if not trunc.any():
        assert np.allclose(res.ess, 4)
    res = particle_gibbs(lm, prm, "a", 4, 2, config=CFG, ess_threshold=1.0, key=15, answer_fn=IDENT)
    assert res.resampled[:-1].all()
    with pytest.raises(ValueError, match="every round"):
        particle_gibbs(lm, prm, "a", 4, 2, config=CFG, ess_threshold=0.5, ancestor_sampling=True)


# ---------------------------------------------------------------------------------------
# counters, steps, API


@pytest.mark.slow
def test_budget_counters_on_a_hand_computable_case():
    # "a" -> "b" surely, "b" -> EOS surely: every particle writes "b" then stops
    lm = FakeLM(np.array([[1.0, 0, 0], [0, 0, 1.0], [1.0, 0, 0]]), "ab")
    cfg = GenerationConfig(step_tokens=1, max_steps=10, max_new_tokens=5, temperature=1.0, answer_pattern=None)
    res = particle_filter(lm, lambda c, s: 0.8, "a", 3, config=cfg, key=0, answer_fn=IDENT)
    b = res.budget
    assert res.texts == ["b"] * 3 and res.finish_reasons == ["eos"] * 3
    assert (b.generations, b.generated_tokens, b.forced_tokens, b.decode_steps) == (3, 6, 0, 2)
    assert (b.prefill_tokens, b.lm_forward_tokens) == (1, 1 + 3 * 2)
    assert (b.prm_calls, b.prm_input_chars) == (3, 3 * (len("a") + len("b")))
    assert b.prm_input_tokens == 3 * 2  # one character = one token of the fake tokenizer
    assert (b.rounds, b.resamples) == (2, 0)
    assert res.log_z == pytest.approx(math.log(0.8))
    assert res.wall_time > 0 and len(res.ess) == 2 and len(res.ancestors) == 2
    # paper mode resamples after every round but the last
    res = particle_filter(lm, lambda c, s: 0.8, "a", 3, config=cfg, mode="paper", key=0, answer_fn=IDENT)
    assert (res.budget.rounds, res.budget.resamples) == (2, 1)
    assert res.log_z == pytest.approx(2 * logit(0.8))
    # particle Gibbs: 2 sweeps of 3 (2 free + the forced reference in the second)
    res = particle_gibbs(lm, lambda c, s: 0.8, "a", 3, 2, config=cfg, key=0, answer_fn=IDENT)
    b = res.budget
    assert (b.generations, b.generated_tokens + b.forced_tokens, b.forced_tokens) == (6, 12, 2)
    assert b.lm_forward_tokens == 2 * (1 + 3 * 2)
    # the "model" aggregation scores the whole prefix once per round; "min" every step once
    res = particle_filter(lm, lambda c, s: 0.8, "a", 3, config=cfg, aggregation="model", key=0, answer_fn=IDENT)
    assert res.budget.prm_calls == 3


def test_text_delimiter_and_delimiter_ids_give_the_same_steps(lm):
    base = dict(max_steps=10, max_new_tokens=L, temperature=1.0, answer_pattern=None)
    a = particle_filter(lm, prm, "a", 16, config=GenerationConfig(delimiter="b", **base), key=16, answer_fn=IDENT)
    b = particle_filter(lm, prm, "a", 16, config=GenerationConfig(delimiter_ids=(2,), **base), key=16, answer_fn=IDENT)
    assert a.texts == b.texts and a.steps == b.steps
    for text, steps in zip(a.texts, a.steps):
        assert "".join(steps) == text
        assert all(s.endswith("b") and "b" not in s[:-1] for s in steps[:-1])


def test_prm_protocols_and_aggregations():
    calls = []

    class Batch:
        def score(self, ctx, batch):
            calls.append(len(batch))
            return [[0.5 + 0.1 * j for j in range(len(p))] for p in batch]

    pot = StepPotential(Batch(), aggregation="min")
    items = [(["x", "y", "z"], []), (["x"], [0.5])]
    assert pot.update("ctx", items) == [0.5, 0.5]
    assert items[0][1] == [0.5, pytest.approx(0.6), pytest.approx(0.7)] and calls == [1]
    assert pot.prm.calls == 1 and pot.prm.input_chars == len("ctx") + 3
    pot = StepPotential(lambda c, s: 0.25 * len(s), aggregation="prod")
    items = [(["p", "q"], [])]
    assert pot.update("", items) == [pytest.approx(0.25 * 0.5)] and pot.prm.calls == 2
    pot = StepPotential(lambda c, s: 0.9 if s == ["pq"] else 0.1, aggregation="model")
    assert pot.update("", [(["p", "q"], [])]) == [0.9]
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        StepPotential(lambda c, s: 1.5).update("", [(["p"], [])])
    with pytest.raises(ValueError, match="unknown aggregation"):
        StepPotential(lambda c, s: 0.5, aggregation="mean")
    with pytest.raises(TypeError, match="PRM"):
        PRMAdapter(3)
    assert StepPotential(lambda c, s: 0.5, mode="paper", temperature=0.5).log_potential(0.8) == pytest.approx(2 * logit(0.8))


def test_answer_rules():
    assert has_boxed(r"so \boxed{12}.") and not has_boxed(r"\boxed{1") and has_boxed(r"\boxed{\frac{1}{2}}")
    # the default answer_fn: the last complete \boxed{...} content, stripped; task-neutral
    assert boxed_answer(r"so \boxed{ 12 }.") == "12" and boxed_answer(r"\boxed{1") is None
    assert boxed_answer(r"\boxed{3} then \boxed{\frac{1}{2}} and \boxed{4") == r"\frac{1}{2}"
    assert boxed_answer("the answer is 7") is None
    for text in (r"so \boxed{12}.", r"\boxed{1", r"a \boxed {x} b", "none"):
        assert (boxed_answer(text) is not None) == has_boxed(text)
    assert majority_vote([1, 2, 2, None, None, None]) == 2
    assert majority_vote([None]) is None and majority_vote([3, 4]) == 3  # ties: first seen
    assert weighted_majority_vote([1, 2, 2], [0.5, 0.2, 0.2]) == 1
    assert select_answer(["x", "y"], [0.0, 0.0]) == (None, None)
    assert select_answer(["x", "y", "y"], [0.4, 0.3, 0.3], "argmax") == (0, "x")
    assert select_answer(["x", "y", "y"], [0.4, 0.3, 0.3], "vote") == (1, "y")
    # ties of the top weight go to the top score, then the lowest index; nan scores rank last
    w = [0.3, 0.3, 0.1, 0.3 * (1 + 1e-12)]
    assert select_answer(list("abcd"), w, scores=[0.2, 0.9, 1.0, 0.9]) == (1, "b")
    assert select_answer(list("abcd"), w, scores=[float("nan"), 0.1, 1.0, 0.0]) == (1, "b")
    assert select_answer(list("abcd"), w) == (0, "a")
    assert select_answer([None, None], [0.5, 0.5], "vote", scores=[0.1, 0.7]) == (1, None)
    with pytest.raises(ValueError, match="unknown selection rule"):
        select_answer(["x"], [1.0], "mode")


def test_top_weight_ties_go_to_the_best_scored_particle_not_the_reference_slot(lm):
    """Resampling resets weights, so at the end many particles share the top weight; the
    selection takes the best PRM score among them. Under particle Gibbs the lowest index
    would be the reference's slot (the previous sweep's draw), whatever its score."""
    paths = enumerate_paths()
    ref_path = min(paths, key=lambda p: step_scores(p["steps"])[-1])  # the worst-scored generation
    seen = 0
    for key in range(6):
        res = particle_gibbs(lm, prm, "a", 8, 1, config=CFG, init_reference=ref_of(ref_path), ess_threshold=1.0,
                             key=key, answer_fn=IDENT)
        top = np.flatnonzero(res.weights >= res.weights.max() * (1 - 1e-9))
        assert res.selected in top and res.scores[res.selected] == res.scores[top].max()
        assert res.selected == top[np.argmax(res.scores[top])]
        seen += int(len(top) > 1 and res.scores[top].max() > res.scores[top].min())
    assert seen > 0, "no run had a tie of the top weight between different scores"


# ---------------------------------------------------------------------------------------
# search baselines


def test_best_of_n_weighted_best_of_n_and_majority(lm):
    cfg = GenerationConfig(step_tokens=2, max_steps=3, max_new_tokens=L, temperature=1.0, answer_pattern=None)
    first = lambda t: t[:1]  # noqa: E731
    bon = best_of_n(lm, prm, "a", 16, config=cfg, key=17, answer_fn=first)
    assert bon.selected == int(np.argmax(bon.scores)) and bon.budget.generations == 16
    for s, steps in zip(bon.scores, bon.steps):
        assert s == pytest.approx(step_scores(steps)[-1])
    assert bon.budget.prm_calls == 16 and bon.budget.resamples == 0
    wbon = weighted_best_of_n(lm, prm, "a", 16, config=cfg, key=17, answer_fn=first)
    assert wbon.texts == bon.texts
    totals = {}
    for a, s in zip(wbon.answers, wbon.scores):
        totals[a] = totals.get(a, 0.0) + s
    assert wbon.selected_answer == max(totals, key=totals.get)
    maj = majority(lm, "a", 16, config=cfg, key=17, answer_fn=first)
    assert maj.texts == bon.texts and maj.budget.prm_calls == 0
    counts = {a: maj.answers.count(a) for a in maj.answers}
    top = [a for a in dict.fromkeys(maj.answers) if counts[a] == max(counts.values())]
    assert maj.selected_answer == top[0]  # most frequent; ties: first seen


def test_beam_search_keeps_the_top_prefixes(lm):
    cfg = GenerationConfig(step_tokens=1, max_steps=5, max_new_tokens=5, temperature=1.0, answer_pattern=None)
    res = beam_search(lm, prm, "a", 16, beam_width=4, config=cfg, key=18, answer_fn=IDENT, record_history=True)
    hist = res.info["history"]
    checked = 0
    for t, (anc, was) in enumerate(zip(res.ancestors, res.resampled)):
        if not was:
            continue
        h = hist[t]
        active = [j for j in range(16) if not h["finished"][j]]
        keep = max(1, len(active) // 4)
        top = sorted(active, key=lambda j: (-h["scores"][j], j))[:keep]
        assert sorted({int(anc[j]) for j in active}) == sorted(top)  # active slots descend from the top beams
        for j in range(16):
            if h["finished"][j]:
                assert anc[j] == j  # finished beams are set aside, never expanded
        checked += 1
    assert checked >= 1
    assert res.selected == int(np.argmax(res.scores))
    with pytest.raises(ValueError, match="multiple of beam_width"):
        beam_search(lm, prm, "a", 6, beam_width=4, config=cfg)


def test_dvts_subtrees_are_independent():
    cfg = GenerationConfig(step_tokens=1, max_steps=5, max_new_tokens=5, temperature=1.0, answer_pattern=None)
    lm = CountingLM(P, SYM)
    res = dvts(lm, prm, "a", 16, beam_width=4, config=cfg, key=19, answer_fn=IDENT)
    subs = res.info["subtrees"]
    assert len(subs) == 4 and len(res.texts) == 16 and res.budget.generations == 16
    for sub in subs:
        for anc in sub.ancestors:
            assert set(np.asarray(anc).tolist()) <= set(range(4))  # genealogy stays in the subtree
            kept = {int(a) for j, a in enumerate(anc) if a != j}
            assert len(kept) <= 1  # each subtree expands only its best beam
    assert len({tuple(s.texts) for s in subs}) > 1
    assert res.selected == int(np.argmax(res.scores))
    # one shared batch: one prefill, then the rows really decoded (finished ones dropped at 8)
    assert res.budget.lm_forward_tokens == 1 + sum(lm.batch_sizes) < 1 + 16 * res.budget.decode_steps


@pytest.mark.parametrize("compact_rows", [1, 4, None])
@pytest.mark.slow
def test_compaction_drops_finished_rows_and_counts_exactly(compact_rows):
    """lm_forward_tokens = prefill + the rows the LM really decoded, split over populations;
    compaction never changes what a particle continues from (the draws are exact above)."""
    cfg = GenerationConfig(step_tokens=1, max_steps=5, max_new_tokens=5, temperature=1.0, answer_pattern=None,
                           compact_rows=compact_rows)
    lm = CountingLM(P, SYM)
    res = particle_filter(lm, prm, "a", 8, config=cfg, num_runs=5, key=21, answer_fn=IDENT, ess_threshold=0.9)
    assert sum(r.budget.lm_forward_tokens - r.budget.prefill_tokens for r in res) == sum(lm.batch_sizes)
    assert all(r.budget.prefill_tokens == 1 for r in res)
    if compact_rows is None:
        assert set(lm.batch_sizes) == {40}
    else:
        assert min(lm.batch_sizes) < 40 and min(lm.batch_sizes) >= compact_rows
        assert all(b == 40 or b & (b - 1) == 0 for b in lm.batch_sizes)  # powers of two below N
    for r in res:  # every particle ended the way the stopping rules say
        assert all(len(t) <= 5 for t in r.token_ids) and set(r.finish_reasons) <= {"eos", "step_cap", "length", "dead"}
    with pytest.raises(ValueError, match="compact_rows must be a positive int or None"):
        GenerationConfig(compact_rows=0)


# ---------------------------------------------------------------------------------------
# the real model: plumbing only


@pytest.mark.slow
def test_particle_filter_on_smollm2_plumbing():
    from smcscale.text import ModelNotFoundError, load_default_lm
    from smcscale.tasks.arithmetic import ProgrammaticPRM

    try:
        lm = load_default_lm()
    except ModelNotFoundError as e:  # pragma: no cover - CI installs it
        pytest.skip(str(e))
    cfg = GenerationConfig(step_tokens=3, max_steps=2, max_new_tokens=6, temperature=0.8)
    res = particle_filter(lm, ProgrammaticPRM(), "What is 2 + 3?", 2, config=cfg, ess_threshold=1.0, key=0)
    b = res.budget
    assert len(res.texts) == 2 and all(isinstance(t, str) for t in res.texts)
    assert abs(res.weights.sum() - 1) < 1e-6 and np.isfinite(res.log_z)
    assert 1 <= b.decode_steps <= 6 and b.lm_forward_tokens == b.prefill_tokens + 2 * b.decode_steps
    assert b.prefill_tokens > 5 and 0 < b.generated_tokens <= 12 and b.prm_calls >= 2
    assert all(len(s) <= 2 for s in res.steps) and res.resampled[:-1].all()
    for toks, steps in zip(res.token_ids, res.steps):
        assert lm.tokenizer.decode(toks).startswith(steps[0][:1])


# ---------------------------------------------------------------------------------------
# layering: the text front end knows no task; shared engine pieces are public


def test_text_does_not_import_tasks():
    import ast
    import pathlib

    import smcscale.text

    root = pathlib.Path(smcscale.text.__file__).parent
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                mod = ("." * node.level) + (node.module or "")
                assert "tasks" not in mod.split("."), f"{path.name}:{node.lineno} imports {mod}"
            elif isinstance(node, ast.Import):
                assert not any("tasks" in a.name.split(".") for a in node.names), f"{path.name}:{node.lineno}"


def test_default_answer_is_the_boxed_content():
    lm = FakeLM(P, SYM)
    cfg = GenerationConfig(step_tokens=1, max_new_tokens=3, max_steps=3, answer_pattern=None)
    res = particle_filter(lm, lambda c, s: 0.5, "a", 4, config=cfg, key=0)
    assert res.answers == [boxed_answer(t) for t in res.texts] == [None] * 4  # "ab" texts have no \boxed{}


def test_shared_helpers():
    import jax

    from smcscale.text.potentials import as_step_potential

    pot = StepPotential(lambda c, s: 0.5, aggregation="min")
    assert as_step_potential(pot, "last", "paper", 2.0) is pot  # its own settings win
    made = as_step_potential(lambda c, s: 0.5, "prod", "paper", 0.5)
    assert (made.aggregation, made.mode, made.temperature) == ("prod", "paper", 0.5)
    assert check_count(3) == 3 and check_count(np.int64(2), minimum=2) == 2
    for bad in (0, True, 2.0, "3"):
        with pytest.raises(ValueError, match="num_beams must be an int >= 1"):
            check_count(bad, "num_beams")
    k = as_key(7)
    assert jax.random.key_data(k).tolist() == jax.random.key_data(jax.random.key(7)).tolist()
    assert as_key(k) is k and as_key(None).shape == ()
    np.testing.assert_array_equal(jax.random.key_data(as_key(jax.random.key_data(k))), jax.random.key_data(k))


def test_dead_population_raises_or_is_silent_on_request(lm):
    """A PRM that always returns 0 kills the population: on_collapse="raise" raises
    ParticleCollapseError (as smc.run does), "ignore" returns the defined result silently."""
    with pytest.raises(smc.ParticleCollapseError, match="log Z = -inf"):
        particle_filter(lm, lambda c, s: 0.0, "a", 8, config=CFG, key=11, answer_fn=IDENT, on_collapse="raise")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = particle_filter(lm, lambda c, s: 0.0, "a", 8, config=CFG, key=11, answer_fn=IDENT, on_collapse="ignore")
    assert res.log_z == -math.inf and res.selected is None
    with pytest.raises(ValueError, match="on_collapse must be one of"):
        particle_filter(lm, lambda c, s: 0.5, "a", 8, config=CFG, key=11, on_collapse="never")


def test_prm_scores_that_are_not_real_numbers_in_unit_interval_are_rejected(lm):
    def string_prm(context, steps):
        return "0.5"

    with pytest.raises(TypeError, match=r"PRM .*string_prm.*score_prefix returned '0.5' \(str\)"):
        particle_filter(lm, string_prm, "a", 4, config=CFG, key=1, answer_fn=IDENT)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        particle_filter(lm, lambda c, s: 1.5, "a", 4, config=CFG, key=1, answer_fn=IDENT)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        particle_filter(lm, lambda c, s: float("nan"), "a", 4, config=CFG, key=1, answer_fn=IDENT)
    with pytest.raises(TypeError, match=r"\(bool\)"):
        particle_filter(lm, lambda c, s: True, "a", 4, config=CFG, key=1, answer_fn=IDENT)


def test_progress_bars_show_and_change_nothing(lm, capsys):
    prm = lambda c, s: 0.5 + 0.1 * len(s) % 0.5  # noqa: E731
    quiet = particle_filter(lm, prm, "a", 8, config=CFG, key=3, answer_fn=IDENT)
    shown = particle_filter(lm, prm, "a", 8, config=CFG, key=3, answer_fn=IDENT, progress=True)
    assert "decoding 8 rows" in capsys.readouterr().err
    assert shown.texts == quiet.texts and shown.log_z == quiet.log_z
    particle_gibbs(lm, prm, "a", 4, 2, config=CFG, key=3, progress=True)
    assert "particle Gibbs sweeps" in capsys.readouterr().err
    bon = best_of_n(lm, prm, "a", 4, config=CFG, key=3, answer_fn=IDENT, progress=True)
    assert "decoding 4 rows" in capsys.readouterr().err
    assert bon.texts == best_of_n(lm, prm, "a", 4, config=CFG, key=3, answer_fn=IDENT).texts
