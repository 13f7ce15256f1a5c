"""Fast checks of the reusable pieces of benchmarks/constraints.py (no real LM)."""

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "constraints.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("_bench_constraints", _PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_benchmark_uses_the_library_pieces(bench):
    """The word-count mask, the log-probability scorer and the Wilson interval are the
    library's (tested in tests/test_tasks.py, tests/test_lm.py, tests/test_stats.py)."""
    from smcscale.stats import wilson_interval
    from smcscale.tasks.constraints import WordCountMask, lipogram_constraint
    from smcscale.text.lm import continuation_logprobs, make_logprob_kernel

    assert bench.WordCountMask is WordCountMask and bench.lipogram_constraint is lipogram_constraint
    assert bench.continuation_logprobs is continuation_logprobs and bench.make_logprob_kernel is make_logprob_kernel
    assert bench.wilson_interval is wilson_interval


def test_token_strings_marks_control_tokens(bench):
    class Tok:
        eos_ids = (0,)
        table = ["<eos>", "<ctl>", "a", " b"]

        def decode(self, ids, skip_special_tokens=False):
            (i,) = ids
            if i >= len(self.table):
                raise IndexError(i)
            s = self.table[i]
            return "" if skip_special_tokens and s.startswith("<") else s

    strings, control = bench.token_strings(Tok(), 5)  # id 4: past the table (a padded vocabulary)
    assert strings == ["<eos>", "<ctl>", "a", " b", ""]
    assert control.tolist() == [False, True, False, False, False]
