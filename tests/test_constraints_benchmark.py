"""Fast checks of the reusable pieces of benchmarks/constraints.py (no real LM)."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from smcscale.tasks.constraints import count_words
from smcscale.text.lm import FakeLM

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "constraints.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("_bench_constraints", _PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _fake_lm():
    P = np.array([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3], [0.25, 0.25, 0.5]])
    return FakeLM(P, symbols="ab")


def test_continuation_logprobs_match_exact_sequence_logprob(bench):
    lm = _fake_lm()
    # row j = logits of the token after ids[:, j] (a bigram); shifted by 3 to check the renormalisation
    logits_fn = lambda log_p, ids: log_p[ids] + 3.0  # noqa: E731
    prompt = [1, 2, 1]
    conts = [[], [2], [1, 1, 2, 1], [2, 2, 2, 1, 2]]
    with_eos = bench.continuation_logprobs(bench.make_logprob_kernel(logits_fn, lm.tokenizer.eos_ids), lm.log_p, prompt,
                                           conts, length=12, pad_id=2, batch=3)
    plain = bench.continuation_logprobs(bench.make_logprob_kernel(logits_fn), lm.log_p, prompt, conts, length=16,
                                        batch=8, with_eos=False)
    for c, got, got_plain in zip(conts, with_eos, plain):
        # the continuation, then EOS (id 0): its log-probability as a complete string
        assert got == pytest.approx(lm.sequence_logprob(prompt, c + [0]), abs=1e-5)
        assert got_plain == pytest.approx(lm.sequence_logprob(prompt, c), abs=1e-5)
    with pytest.raises(ValueError):
        bench.continuation_logprobs(bench.make_logprob_kernel(logits_fn), lm.log_p, prompt, [[1] * 20], length=8)


TOKENS = ["<eos>", "<ctl>", " the", "cat", "ing", ", ", ".", " --", "--", " 3", "\n\n", "", "a b", " x-y", "'s", " .",
          "é", " "]


def test_word_count_mask_is_exact(bench):
    forbidden = np.zeros(len(TOKENS), bool)
    forbidden[1] = True
    wc = bench.WordCountMask(TOKENS, forbidden=forbidden, eos_ids=[0])
    prefixes = ["", " ", "The", "The cat", "The cat ", "The cat,", "--", " -- ", "a b c d", "one two three.", "x\n\n"]
    for text in prefixes:
        for k in (1, 2, 3, 4, 5):
            m = wc.mask(text, k)
            c = count_words(text)
            for v, s in enumerate(TOKENS):
                if v == 0:
                    assert m[v] == (c == k), (text, k)
                elif v == 1:
                    assert not m[v]
                else:
                    assert m[v] == (count_words(text + s) <= k), (text, k, s)


def test_wilson(bench):
    lo, hi = bench.wilson(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-3) and hi == pytest.approx(0.7634, abs=1e-3)
    assert bench.wilson(0, 4)[0] == pytest.approx(0.0) and bench.wilson(4, 4)[1] == pytest.approx(1.0)
