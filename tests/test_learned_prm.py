"""Learned PRM (Math-Shepherd rollout labels + a Flax head on LM hidden states): the head
learns a separable problem, save/load round trip and mismatch errors, rollout labels match
the exact completion probability of an enumerable fake LM, the PRM works inside the particle
filter on a tiny random-weight JaxLM, and agreement metrics against the programmatic PRM."""

import json
import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smcscale.tasks.arithmetic import (
    check_step,
    corrupt_step,
    is_correct,
    load_split,
    programmatic_prm_score,
    reference_solution,
    score_steps,
)
from smcscale.text import FakeLM, FakeTokenizer, GenerationConfig, JaxLM, ModelNotFoundError, particle_filter
from smcscale.text.learned_prm import (
    LearnedPRM,
    LearnedPRMError,
    PRMDataset,
    PRMHeadConfig,
    add_corrupted_references,
    binary_auc,
    collect_rollout_labels,
    dataset_features,
    evaluate_against_programmatic,
    extract_features,
    init_head,
    prm_input,
    spearman,
    train_prm_head,
)
from smcscale.text.llama import Llama, LlamaConfig

SYM = "ab|"


def tiny_lm(hidden=16, seed=0):
    cfg = LlamaConfig(vocab_size=len(SYM) + 1, hidden_size=hidden, intermediate_size=32, num_layers=2, num_heads=2,
                      num_kv_heads=1, head_dim=8, max_position=512)
    params = Llama(cfg).init(jax.random.key(seed), jnp.zeros((1, 4), jnp.int32), jnp.arange(4, dtype=jnp.int32))
    return JaxLM(cfg, params, FakeTokenizer(SYM))


@pytest.fixture(scope="module")
def lm():
    return tiny_lm()


def random_prm(lm, seed=1, mlp=8):
    cfg = PRMHeadConfig(hidden_size=lm.config.hidden_size, mlp_size=mlp, delimiter="|")
    return LearnedPRM(lm, init_head(cfg, seed), cfg)


# ---------------------------------------------------------------------------------------
# (a) training


@pytest.mark.slow
def test_head_learns_a_separable_problem():
    rng = np.random.default_rng(0)
    D = 16
    w = rng.standard_normal(D)
    w -= w.mean()  # LayerNorm centres each row: keep the labelling invariant to it
    X = rng.standard_normal((2000, D)).astype(np.float32)
    m = X @ w / np.linalg.norm(w)
    X, m = X[np.abs(m) > 0.25][:1000], m[np.abs(m) > 0.25][:1000]
    y = (m > 0).astype(np.float32)
    res = train_prm_head(X[:500], y[:500], key=0, steps=300, lr=1e-2, batch_size=128, mlp_size=32)
    assert res.losses.shape == (300,)
    assert res.initial_loss > 0.5 and res.final_loss < 0.3 * res.initial_loss, (res.initial_loss, res.final_loss)
    assert res.losses[-20:].mean() < 0.5 * res.losses[:20].mean()
    from smcscale.text.learned_prm import PRMHead

    p = jax.nn.sigmoid(PRMHead(res.config.mlp_size, res.config.layer_norm).apply(res.params, jnp.asarray(X[500:])))
    acc = float(np.mean((np.asarray(p) > 0.5) == (y[500:] > 0.5)))
    assert acc > 0.95, acc
    # deterministic for a key
    # deterministic for a key (same shapes and hyper-parameters: no recompilation)
    again = train_prm_head(X[:500], y[:500], key=0, steps=300, lr=1e-2, batch_size=128, mlp_size=32)
    np.testing.assert_array_equal(res.losses, again.losses)


def test_training_rejects_bad_input():
    X = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match="empty"):
        train_prm_head(np.zeros((0, 3)), np.zeros(0), key=0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        train_prm_head(X, [0, 1, 1.5, 0], key=0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        train_prm_head(X, [0, 1, np.nan, 0], key=0)
    with pytest.raises(ValueError, match="one per feature row"):
        train_prm_head(X, [0, 1, 1], key=0)
    with pytest.raises(ValueError, match=r"\[M, D\]"):
        train_prm_head(np.zeros(4), [0, 1, 1, 0], key=0)
    with pytest.raises(ValueError, match="steps"):
        train_prm_head(X, [0, 1, 1, 0], key=0, steps=0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        PRMDataset(["q"], [["a", "b"]], [[0.5, 2.0]], [[1, 1]], [[1, 0]], ["sample"], ["p"], [1])
    with pytest.raises(ValueError, match="steps but"):
        PRMDataset(["q"], [["a", "b"]], [[0.5]], [[1]], [[1]], ["sample"], ["p"], [1])


# ---------------------------------------------------------------------------------------
# (b) persistence


@pytest.mark.slow
def test_save_load_round_trip_and_mismatch(lm, tmp_path):
    prm = random_prm(lm)
    prefixes = [["ab|", "ba|", "a"], ["b"], ["aab|", ""]]
    before = prm.score("ab", prefixes)
    prm.save(tmp_path / "prm")
    loaded = LearnedPRM.load(tmp_path / "prm", lm)
    assert loaded.config == prm.config
    assert loaded.score("ab", prefixes) == before  # bit-identical
    # a head for another LM: clear error
    other = tiny_lm(hidden=24)
    with pytest.raises(LearnedPRMError, match="hidden_size"):
        LearnedPRM.load(tmp_path / "prm", other)
    with pytest.raises(LearnedPRMError, match="hidden size"):
        LearnedPRM(other, prm.params, prm.config)
    # missing files / an edited config
    with pytest.raises(LearnedPRMError, match="missing"):
        LearnedPRM.load(tmp_path / "nothing", lm)
    cfg_path = tmp_path / "prm" / "config.json"
    saved = json.loads(cfg_path.read_text())
    saved["head"]["mlp_size"] = 9
    cfg_path.write_text(json.dumps(saved))
    with pytest.raises(LearnedPRMError, match="match"):
        LearnedPRM.load(tmp_path / "prm", lm)


def test_dataset_npz_round_trip(tmp_path):
    ds = PRMDataset(["q1", "q2"], [["x|", "y"], ["z"]], [[0.25, 1.0], [0.0]], [[1, 1], [0]], [[4, 0], [0]],
                    ["sample", "reference"], ["p1", "p2"], [1, 0])
    ds.save(tmp_path / "d.npz")
    back = PRMDataset.load(tmp_path / "d.npz")
    assert back.steps == ds.steps and back.contexts == ds.contexts and back.outcomes == ds.outcomes
    np.testing.assert_array_equal(back.labels("soft"), ds.labels("soft"))
    np.testing.assert_array_equal(np.concatenate(back.num_rollouts), [4, 0, 0])
    assert back.summary()["examples"] == 3


# ---------------------------------------------------------------------------------------
# (c) rollout labels on an enumerable LM

P_FAKE = np.array([
    [1.0, 0.0, 0.0, 0.0],  # after EOS (unused)
    [0.15, 0.35, 0.25, 0.25],  # after a
    [0.15, 0.30, 0.30, 0.25],  # after b
    [0.25, 0.40, 0.35, 0.00],  # after |
])


def _even_a(problem, text):
    return text.count("a") % 2 == 0


def _exact_completion_prob(last_tok, parity, max_tokens):
    """P(count('a') of prefix + continuation is even), continuation ~ bigram until EOS or
    ``max_tokens`` tokens (then judged as truncated)."""
    alive = np.zeros((4, 2))
    alive[last_tok, parity] = 1.0
    p_ok = 0.0
    for _ in range(max_tokens):
        new = np.zeros_like(alive)
        for u in range(1, 4):
            for par in range(2):
                m = alive[u, par]
                if m == 0:
                    continue
                p_ok += m * P_FAKE[u, 0] * (par == 0)
                for v in range(1, 4):
                    new[v, par ^ (v == 1)] += m * P_FAKE[u, v]
        alive = new
    return p_ok + alive[:, 0].sum()


def test_rollout_labels_match_exact_completion_probability():
    flm = FakeLM(P_FAKE, SYM)
    K, T_roll = 200, 20
    problems = [types.SimpleNamespace(id=f"p{i}") for i in range(2)]
    ds = collect_rollout_labels(
        flm, problems, key=3, num_solutions=6, num_rollouts=K, max_step_tokens=None, max_solution_tokens=12,
        max_rollout_tokens=T_roll, max_steps=3, delimiter="|", chunk_tokens=8, finish_fn=None,
        prompt_fn=lambda p: "ab", context_fn=lambda p: "ab", is_correct=_even_a,
    )
    diffs, var, n_exact = [], [], 0
    for steps, soft, hard, nroll, outcome in zip(ds.steps, ds.soft_labels, ds.hard_labels, ds.num_rollouts, ds.outcomes):
        assert len(steps) <= 3
        text = "".join(steps)
        for t in range(len(steps)):
            prefix = "".join(steps[: t + 1])
            assert hard[t] == float(soft[t] > 0)
            if nroll[t] == 0:  # final step of a finished solution: exact
                assert t == len(steps) - 1 and outcome in (0, 1)
                assert soft[t] == float(_even_a(None, text)) == outcome
                n_exact += 1
                continue
            assert nroll[t] == K and prefix.endswith("|")
            p = _exact_completion_prob(SYM.index("|") + 1, prefix.count("a") % 2, T_roll)
            se = math.sqrt(p * (1 - p) / K)
            assert abs(soft[t] - p) <= 5 * se + 1e-6, (prefix, soft[t], p)
            diffs.append(soft[t] - p)
            var.append(p * (1 - p) / K)
    assert len(diffs) >= 4 and n_exact >= 2, (len(diffs), n_exact)
    z = sum(diffs) / math.sqrt(sum(var))
    assert abs(z) < 5, z
    # the prefix's parity matters: labels of odd- and even-parity prefixes differ as predicted
    assert ds.summary()["rollouts"] == K * len(diffs)


def test_collect_rejects_bad_input():
    flm = FakeLM(P_FAKE, SYM)
    with pytest.raises(ValueError, match="at least one problem"):
        collect_rollout_labels(flm, [], key=0, prompt_fn=lambda p: "a", is_correct=_even_a)
    with pytest.raises(ValueError, match="num_rollouts"):
        collect_rollout_labels(flm, [1], key=0, num_rollouts=0, prompt_fn=lambda p: "a", is_correct=_even_a)
    with pytest.raises(ValueError, match="temperature"):
        collect_rollout_labels(flm, [1], key=0, temperature=0.0, prompt_fn=lambda p: "a", is_correct=_even_a)


# ---------------------------------------------------------------------------------------
# (d) the PRM on a tiny JaxLM


def test_score_shapes_range_and_causality(lm):
    prm = random_prm(lm)
    prefixes = [["ab|", "ba|", "a"], ["b"], ["aab|", ""]]
    sc = prm.score("ab", prefixes)
    assert [len(s) for s in sc] == [3, 1, 2]
    assert all(0 < v < 1 for s in sc for v in s)
    assert len({round(v, 9) for s in sc for v in s}) > 1  # not a constant
    # causal: a prefix's first t scores are the scores of its first t steps
    for p, s in zip(prefixes, sc):
        for t in range(1, len(p) + 1):
            np.testing.assert_allclose(prm.score("ab", [p[:t]])[0], s[:t], atol=1e-5)
    assert prm.score_prefix("ab", prefixes[0]) == pytest.approx(sc[0][-1], abs=1e-6)
    assert prm.score_prefix("ab", []) == 0.5
    assert prm.score("ab", []) == []
    # delimiter / whitespace around a step do not change its score
    assert prm.score("ab", [["ab", "ba"]])[0] == pytest.approx(prm.score("ab", [["ab|", "ba|"]])[0], abs=1e-6)
    ids, pos = prm_input(lm.tokenizer, "ab", ["ab|", "ba"], delimiter="|")
    assert ids.tolist() == [1, 2, 1, 2, 3, 2, 1] and pos.tolist() == [3, 6]
    with pytest.raises(ValueError, match="positions"):
        extract_features(lm, [ids], [np.array([7])])
    with pytest.raises(TypeError, match="hidden states"):
        LearnedPRM(FakeLM(P_FAKE, SYM), prm.params, prm.config)


@pytest.mark.parametrize("batched", [True, False], ids=["score", "score_prefix"])
def test_learned_prm_inside_particle_filter(lm, batched):
    prm = random_prm(lm)
    cfg = GenerationConfig(delimiter="|", max_new_tokens=12, max_steps=3, answer_pattern=None, temperature=1.0)
    from smcscale.text.potentials import as_prm

    assert as_prm(prm).kind == "batch"  # an object with score() is called batched
    res = particle_filter(lm, prm if batched else prm.score_prefix, "ab", 4, config=cfg, key=5)
    assert np.isfinite(res.log_z)
    assert np.isclose(res.weights.sum(), 1.0)
    assert res.budget.prm_calls > 0
    if batched:  # the PRM's own count: its real input sequences, at least one token per call
        assert res.budget.prm_input_tokens >= res.budget.prm_calls
    assert all(0 < r < 1 for r in res.scores)


@pytest.mark.slow
def test_end_to_end_on_tiny_jaxlm(lm, tmp_path):
    """Rollouts through JaxLM.generate, features, training, save/load, scoring."""
    problems = [types.SimpleNamespace(id="t0")]
    ds = collect_rollout_labels(
        lm, problems, key=1, num_solutions=3, num_rollouts=4, max_step_tokens=4, max_solution_tokens=8,
        max_rollout_tokens=8, max_steps=2, delimiter="|", chunk_tokens=4, finish_fn=lambda s: "bb" in s,
        prompt_fn=lambda p: "ab", context_fn=lambda p: "ab", is_correct=_even_a,
    )
    assert ds.num_examples >= 1
    feats = dataset_features(lm, ds, delimiter="|")
    assert feats.shape == (ds.num_examples, lm.config.hidden_size)
    res = train_prm_head(feats, ds.labels("soft"), key=0, steps=20, mlp_size=8, delimiter="|")
    prm = LearnedPRM(lm, res.params, res.config)
    # the PRM's features are the training features
    np.testing.assert_allclose(prm.features(ds.contexts[0], [ds.steps[0]]), feats[: len(ds.steps[0])], atol=1e-5)
    prm.save(tmp_path / "h")
    assert LearnedPRM.load(tmp_path / "h", lm).score("ab", ds.steps[:1]) == prm.score("ab", ds.steps[:1])


# ---------------------------------------------------------------------------------------
# evaluation against the programmatic PRM


def test_metrics():
    assert binary_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert binary_auc([0.5, 0.5], [0, 1]) == pytest.approx(0.5)
    assert binary_auc([0.1, 0.2], [1, 1]) is None
    assert spearman([1, 2, 3, 4], [10, 20, 30, 45]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 1], [1, 2, 3]) is None


def test_corruption_and_programmatic_agreement():
    problems = load_split("dev")[:6]
    rng = np.random.default_rng(0)
    sols = []
    for p in problems:
        ref = reference_solution(p)
        steps = [s + "\n\n" for s in ref.split("\n\n")[:-1]] + [ref.split("\n\n")[-1]]
        new, j = corrupt_step(steps, rng)
        assert [i for i in range(len(steps)) if new[i] != steps[i]] == [j]
        res = check_step(new[j])
        assert res["num_correct"] < res["num_claims"]
        sols.append([ref, "".join(new[: j + 1])])
    oracle = lambda c, s: programmatic_prm_score(None, [x.strip() for x in s])  # noqa: E731
    task = dict(score_steps=score_steps, is_correct=is_correct)  # the arithmetic task's
    ev = evaluate_against_programmatic(oracle, problems, sols, **task)
    assert ev["step_auc"] == 1.0 and ev["step_accuracy"] == 1.0 and ev["spearman"] == pytest.approx(1.0)
    assert ev["counts"]["wrong"] == len(problems) and ev["counts"]["solutions"] == 2 * len(problems)
    assert ev["counts"]["correct_solutions"] >= len(problems)  # a cut corrupted copy may still end on the answer
    const = evaluate_against_programmatic(lambda c, s: 0.5, problems, sols, **task)
    assert const["step_auc"] == 0.5 and const["spearman"] is None
    # corrupted copies of references: rollout labels kept before the corrupted step, 0 on it
    ds = PRMDataset([p.question for p in problems], [[s + "\n\n" for s in reference_solution(p).split("\n\n")] for p in problems],
                    [np.linspace(0.2, 1, len(reference_solution(p).split("\n\n"))) for p in problems],
                    [np.ones(len(reference_solution(p).split("\n\n"))) for p in problems],
                    [np.full(len(reference_solution(p).split("\n\n")), 4) for p in problems],
                    ["reference"] * len(problems), [p.id for p in problems], [1] * len(problems))
    aug = add_corrupted_references(ds, corrupt_fn=corrupt_step, copies=2, seed=1)
    assert aug.num_solutions > ds.num_solutions
    for i in range(ds.num_solutions, aug.num_solutions):
        src = aug.problem_ids.index(aug.problem_ids[i])
        j = len(aug.steps[i]) - 1
        assert aug.sources[i] == "corrupted" and aug.outcomes[i] == 0
        assert aug.steps[i][:j] == ds.steps[src][:j] and aug.steps[i][j] != ds.steps[src][j]
        np.testing.assert_array_equal(aug.soft_labels[i], np.r_[ds.soft_labels[src][:j], 0.0])


# ---------------------------------------------------------------------------------------
# SmolLM2 (optional, one prefix)


@pytest.mark.slow
def test_smollm2_scores_one_prefix():
    try:
        from smcscale.text import load_default_lm

        big = load_default_lm()
    except ModelNotFoundError as e:  # pragma: no cover
        pytest.skip(str(e))
    cfg = PRMHeadConfig(hidden_size=big.config.hidden_size, mlp_size=16)
    prm = LearnedPRM(big, init_head(cfg, 0), cfg)
    p = load_split("dev")[0]
    steps = [s + "\n\n" for s in reference_solution(p).split("\n\n")][:2]
    sc = prm.score(p.question, [steps])[0]
    assert len(sc) == 2 and all(0 < v < 1 for v in sc)
