"""Tasks: arithmetic word problems (generation, splits, extraction, claim checks, programmatic
PRM) and constrained-generation tasks. Pure Python; fast."""

import math
import re

import pytest

from smcscale.tasks import arithmetic as A
from smcscale.tasks import constraints as C

# ---------------------------------------------------------------------------------------------
# generation and splits
# ---------------------------------------------------------------------------------------------


def test_generation_is_deterministic_for_a_seed():
    a = A.generate_problems(7, 50)
    b = A.generate_problems(7, 50)
    assert a == b
    c = A.generate_problems(8, 50)
    assert [p.question for p in a] != [p.question for p in c]
    assert len({p.question for p in a}) == 50  # distinct within a call


def test_generation_respects_ranges_and_answers_recompute():
    probs = A.generate_problems(3, 300, min_steps=2, max_steps=3, max_operand=20)
    ops_seen = set()
    for p in probs:
        assert 2 <= p.num_steps <= 3 and p.num_steps == len(p.operations) == len(p.values)
        assert 2 <= p.start <= 20
        assert A.apply_operations(p.start, p.operations) == p.answer == p.values[-1]
        assert isinstance(p.answer, int) and p.answer >= 0
        assert all(v >= 1 for v in p.values)
        for op, b in p.operations:
            ops_seen.add(op)
            assert (1 <= b <= 20) if op in "+-" else (2 <= b <= 5)
        # every operand is stated in the question (multipliers as words or digits)
        for op, b in p.operations:
            if op in "+-":
                assert re.search(rf"\b{b}\b", p.question)
        assert str(p.start) in p.question and p.question.endswith("now?")
    assert ops_seen == {"+", "-", "*"}
    assert len({p.template for p in probs}) == len(A.TEMPLATES)
    easy = A.generate_problems(3, 100, ops=("+", "-"))
    assert {op for p in easy for op, _ in p.operations} == {"+", "-"}
    assert all(A.apply_operations(p.start, p.operations) == p.answer >= 1 for p in easy)
    assert not any(re.search(r"\b1 (more )?[a-z]+s\b", p.question) for p in probs + easy)  # "1 apple"
    with pytest.raises(ValueError):
        A.generate_problems(1, 5, ops=("/",))
    one = A.generate_problems(1, 20, min_steps=1, max_steps=1)
    assert all(p.num_steps == 1 for p in one)
    with pytest.raises(ValueError):
        A.generate_problems(1, 5, min_steps=3, max_steps=2)


def test_splits_sizes_disjoint_and_fixed():
    sizes = {"train": 500, "dev": 100, "test": 200, "easy-train": 300, "easy-dev": 100, "easy-test": 200}
    splits = {name: A.load_split(name) for name in sizes}
    for name, n in sizes.items():
        assert len(splits[name]) == n
        assert len({p.question for p in splits[name]}) == n
        assert [p.id for p in splits[name]][:2] == [f"{name}-0000", f"{name}-0001"]
        assert all(A.apply_operations(p.start, p.operations) == p.answer for p in splits[name])
    qs = {name: {p.question for p in ps} for name, ps in splits.items()}
    names = list(qs)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not qs[a] & qs[b], (a, b)
    for name in ("easy-train", "easy-dev", "easy-test"):
        assert all(1 <= p.num_steps <= 2 and all(op in "+-" for op, _ in p.operations) for p in splits[name])
    # the example in the prompt is in no split
    assert all("Lily" not in q and "pencils" not in q for s in qs.values() for q in s)
    # pinned: a change to the generator (or to Python's random) would silently change the test set
    first = splits["test"][0]
    assert first.question.startswith("Omar has 5 marbles. A friend gives him 5 marbles.")
    assert first.answer == 27
    assert A.load_split("test") == splits["test"]  # cached, stable
    with pytest.raises(KeyError):
        A.load_split("validation")


def test_prompt_and_reference_solution():
    p = A.load_split("dev")[0]
    msgs = A.format_prompt(p)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert msgs[-1]["content"] == p.question
    assert "\\boxed{" in msgs[0]["content"]
    example = msgs[2]["content"]
    assert "\n\n" in example and A.extract_answer(example) == 9
    assert all(A.check_step(s)["num_correct"] == A.check_step(s)["num_claims"] for s in A.split_steps(example))
    assert A.score_steps(None, A.split_steps(example))[-1] == A.SCORE_RIGHT
    msgs = A.format_prompt(p.question, style="system")
    assert [m["role"] for m in msgs] == ["system", "user"] and msgs[1]["content"] == p.question
    assert example in msgs[0]["content"]
    with pytest.raises(ValueError):
        A.format_prompt(p, style="chat")
    sol = A.reference_solution(p)
    assert A.is_correct(p, sol)
    steps = A.split_steps(sol)
    assert len(steps) == p.num_steps + 2
    assert all(A.check_step(s)["num_correct"] == A.check_step(s)["num_claims"] for s in steps)


# ---------------------------------------------------------------------------------------------
# answer extraction
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"so \boxed{12}", 12),
        (r"first \boxed{3}, then \boxed{4}", 4),  # last boxed wins
        (r"\boxed{4} but the answer is 5", 4),  # boxed beats "answer is"
        (r"\boxed{1,000}", 1000),
        (r"\boxed{ -5 }", -5),
        (r"\boxed{−7}", -7),  # unicode minus
        (r"\boxed{ $12 }", 12),
        (r"$\boxed{\$1,200}$", 1200),
        (r"\boxed{\text{12 apples}}", 12),
        (r"\boxed{12.0}", 12),
        (r"\boxed{3.5}", None),  # not an integer
        (r"\boxed{} and 5 + 3 = 8", 8),  # empty box falls back
        (r"\boxed{x}", None),
        ("The answer is 1,234.", 1234),
        ("so 5 + 3 = 8 and the final answer is: -7 apples", -7),
        ("Answer: $15", 15),
        ("answer is 5. Actually 6 is wrong", 5),  # "answer is" beats the last number
        ("The final answer is: 23 x 2 = 46.", 46),  # "= M" later in the same sentence
        ("The answer is 5. Then 3 + 4 = 7", 5),
        ("5 + 3 = 8. That is all for 2 days", 8),  # "= N" beats the last number
        ("11 - 6 = 5", 5),
        ("11-6", 6),  # last number; "-6" after a digit is not negative
        ("It is -4 degrees", -4),
        ("I have 3 apples and 4 pears", 4),
        ("I have 1,500 coins", 1500),
        ("no number here", None),
        ("", None),
        ("   \n\n  ", None),
    ],
)
def test_extract_answer(text, expected):
    assert A.extract_answer(text) == expected


def test_is_correct():
    p = A.load_split("test")[0]
    assert A.is_correct(p, f"blah\n\n\\boxed{{{p.answer}}}")
    assert not A.is_correct(p, f"\\boxed{{{p.answer + 1}}}")
    assert not A.is_correct(p, "I do not know")


# ---------------------------------------------------------------------------------------------
# claim checking
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, correct",
    [
        ("11 - 6 = 6", False),
        ("18 x 6 = 108", True),
        ("18 x 6 = 136", False),
        ("3 + 4 + 5 = 12", True),
        ("1,000 + 1 = 1,001", True),
        ("7 × 8 = 54", False),
        ("7 × 8 = 56", True),
        ("7 * 8 = 56", True),
        ("7X8=56", True),
        ("3x2=6", True),
        ("9 − 4 = 5", True),  # unicode minus
        ("9 – 4 = 6", False),  # en dash
        ("10 / 4 = 2.5", True),
        ("1 / 3 = 0.33", False),  # exact: 1/3 != 33/100
        ("12 ÷ 4 = 3", True),
        ("3 · 4 = 12", True),
        (r"18 \times 6 = 108", True),
        ("$5 + $3 = $8", True),
        ("2.5 * 4 = 10.0", True),
        ("6 - 10 = -4", True),
        ("-3 + 5 = 2", True),
        ("(3 + 4) × 2 = 14", True),
        ("3 + 4 × 2 = 11", True),  # usual precedence
        ("3 + 4 × 2 = 14", False),
        ("5 / 0 = 0", False),
        ("0.1 + 0.2 = 0.3", True),  # exact, unlike floats
        ("He had 5 + 3 = 8 apples.", True),
        ("Step 2: 20-6=14.", True),
        ("- 5 + 3 = 8", True),  # a leading dash bullet is not a sign
        (r"\(5 + 3 = 8\)", True),
        ("**5 + 3 = 8**", True),
    ],
)
def test_check_step_single_claim(text, correct):
    res = A.check_step(text)
    assert res["num_claims"] == 1, res
    assert res["claims"][0]["correct"] is correct
    assert res["num_correct"] == int(correct)


def test_check_step_multiple_and_chains():
    res = A.check_step("First 5 + 3 = 8, then 8 - 2 = 7.")
    assert (res["num_claims"], res["num_correct"]) == (2, 1)
    assert [c["correct"] for c in res["claims"]] == [True, False]
    # running computation: each link is checked
    res = A.check_step("5 + 3 = 8 - 2 = 6")
    assert (res["num_claims"], res["num_correct"]) == (2, 2)
    res = A.check_step("5 + 3 = 9 - 2 = 7")
    assert (res["num_claims"], res["num_correct"]) == (2, 1)
    res = A.check_step("5 + 3 = 4 + 4")
    assert (res["num_claims"], res["num_correct"]) == (1, 1)
    res = A.check_step("12 - 6 = 6\n\n6 x 3 = 18")  # newlines separate claims
    assert (res["num_claims"], res["num_correct"]) == (2, 2)
    c = A.check_step("7 / 2 = 3.5")["claims"][0]
    assert c["lhs_value"] == "7/2" and c["rhs_value"] == "7/2" and c["result"] == "7/2"


@pytest.mark.parametrize(
    "text",
    [
        "Tom has 5 apples.",
        "8 = 8",  # no operator: not a claim
        "x = 5",
        "The box has 6 items x 2 boxes",
        "six x 2 = 12",
        "Call 555-1234 today",
        "",
    ],
)
def test_check_step_no_claims(text):
    res = A.check_step(text)
    assert res == dict(num_claims=0, num_correct=0, claims=[])


# ---------------------------------------------------------------------------------------------
# programmatic PRM
# ---------------------------------------------------------------------------------------------


def _in_open_unit(r):
    return 0.0 < r < 1.0 and math.isfinite(math.log(r / (1 - r)))


def test_prm_scores_ordering_and_range():
    p = A.load_split("test")[0]
    right = A.programmatic_prm_score(p, ["11 - 6 = 5"])
    neutral = A.programmatic_prm_score(p, ["Let me think about it."])
    wrong = A.programmatic_prm_score(p, ["11 - 6 = 6"])
    mixed = A.programmatic_prm_score(p, ["5 + 3 = 8 and 8 - 2 = 7"])
    assert wrong < neutral < right
    assert mixed == wrong
    assert (right, neutral, wrong) == (A.SCORE_RIGHT, A.SCORE_NEUTRAL, A.SCORE_WRONG)
    assert A.programmatic_prm_score(p, []) == A.SCORE_NEUTRAL
    # only the latest step counts for r_t
    assert A.programmatic_prm_score(p, ["11 - 6 = 6", "5 + 3 = 8"]) == right
    for r in (right, neutral, wrong, mixed):
        assert _in_open_unit(r)


def test_prm_final_answer_without_and_with_oracle():
    p = A.load_split("test")[1]
    gold = A.split_steps(A.reference_solution(p))
    bad = gold[:-1] + [f"The answer is \\boxed{{{p.answer + 1}}}."]
    # default: never peeks; the final answer must be consistent with the claims made
    s_gold = A.score_steps(p, gold)
    s_bad = A.score_steps(p, bad)
    assert s_gold[0] == A.SCORE_NEUTRAL and all(s == A.SCORE_RIGHT for s in s_gold[1:])
    assert s_bad[-1] == A.SCORE_WRONG and s_bad[:-1] == s_gold[:-1]
    # a PRM without use_answer gives the same score whatever the reference answer is
    other = A.Problem(**{**p.__dict__, "answer": p.answer + 1})
    assert A.score_steps(other, gold) == s_gold and A.score_steps(None, gold) == s_gold
    # consistent with a wrong earlier claim: the final step itself is consistent (the wrong
    # step was already penalised)
    assert A.score_steps(p, ["11 - 6 = 6", "\\boxed{6}"]) == [A.SCORE_WRONG, A.SCORE_RIGHT]
    assert A.score_steps(p, ["\\boxed{6}"]) == [A.SCORE_NEUTRAL]  # nothing to be consistent with
    assert A.score_steps(p, ["2 + 2 = 4", "\\boxed{}"]) == [A.SCORE_RIGHT, A.SCORE_WRONG]
    # consistency off: the final step is scored like any other
    assert A.score_steps(p, bad, consistency=False)[-1] == A.SCORE_NEUTRAL
    # oracle
    o_gold = A.score_steps(p, gold, use_answer=True)
    o_bad = A.score_steps(p, bad, use_answer=True)
    assert o_gold[-1] == A.SCORE_ANSWER_RIGHT and o_bad[-1] == A.SCORE_ANSWER_WRONG
    assert o_bad[-1] < A.SCORE_WRONG < A.SCORE_NEUTRAL < A.SCORE_RIGHT < o_gold[-1]
    # a wrong claim in the final step stays low even with the right answer boxed
    assert A.programmatic_prm_score(p, [f"1 + 1 = 3 so \\boxed{{{p.answer}}}"], use_answer=True) == A.SCORE_WRONG
    with pytest.raises(ValueError):
        A.programmatic_prm_score(None, ["\\boxed{3}"], use_answer=True)
    for s in o_gold + o_bad + s_gold + s_bad:
        assert _in_open_unit(s)


def test_score_steps_matches_prefix_scores():
    p = A.load_split("dev")[3]
    steps = ["Start.", "4 + 3 = 7", "7 x 2 = 15", "15 - 5 = 10", "\\boxed{10}"]
    scores = A.score_steps(p, steps)
    assert scores == [A.programmatic_prm_score(p, steps[: t + 1]) for t in range(len(steps))]
    assert scores == [A.SCORE_NEUTRAL, A.SCORE_RIGHT, A.SCORE_WRONG, A.SCORE_RIGHT, A.SCORE_RIGHT]


# ---------------------------------------------------------------------------------------------
# constraints
# ---------------------------------------------------------------------------------------------


def test_default_tasks():
    tasks = C.default_tasks()
    assert set(tasks) == {"lipogram", "word_count", "keywords"}
    for name, lst in tasks.items():
        assert len(lst) == 10
        assert len({t.id for t in lst}) == 10
        for t in lst:
            msgs = t.prompt_messages()
            assert [m["role"] for m in msgs] == ["system", "user"] and t.topic in msgs[1]["content"]
            assert t.prefix_ok("")
    assert C.default_tasks() == tasks  # fixed


def test_lipogram():
    t = C.Lipogram(id="x", topic="cats")
    assert t.check("A cat is an animal of calm charm.")
    assert not t.check("The cat sat.")
    assert not t.check("CAT IS HERE")
    assert not t.check("un café")  # accented e counts
    assert t.prefix_ok("A cat is") and t.prefix_ok("A cat is nic")
    assert not t.prefix_ok("A cat is nice") and not t.prefix_ok("A cat is nice and calm")
    assert t.token_allowed(" cat") and t.token_allowed("!") and t.token_allowed("")
    assert not t.token_allowed(" the") and not t.token_allowed("E") and not t.token_allowed("é")
    assert "'e'" in t.prompt_messages()[1]["content"]
    z = C.Lipogram(id="z", topic="cats", letter="a")
    assert z.check("The cool dog") and not z.check("A dog")
    with pytest.raises(ValueError):
        C.Lipogram(id="bad", topic="cats", letter="ab")


def test_word_count():
    t = C.WordCount(id="x", topic="cats", k=4)
    assert C.count_words("Hello, world!") == 2
    assert C.count_words("well-known don't — ...") == 2
    assert C.count_words("  ") == 0
    assert t.check("Cats sleep all day.")
    assert not t.check("Cats sleep.")
    assert not t.check("Cats sleep all day long.")
    assert t.prefix_ok("Cats sleep all da") and t.prefix_ok("Cats sleep all day. ")
    assert not t.prefix_ok("Cats sleep all day long")
    assert t.words_left("Cats sleep") == 2
    # prefix_ok is monotone: once False, stays False for every extension
    text = "One two three four five six"
    oks = [t.prefix_ok(text[:i]) for i in range(len(text) + 1)]
    assert oks == sorted(oks, reverse=True) and oks[0] and not oks[-1]
    assert "exactly 4 words" in t.prompt_messages()[1]["content"]


def test_keyword_inclusion():
    t = C.KeywordInclusion(id="x", topic="sea", keywords=("blue", "wave"))
    assert t.check("A Blue wave rolls in.")
    assert not t.check("A blue sky.")  # missing "wave"
    assert not t.check("Bluewave waves")  # whole words only
    assert t.missing("The waves are blue") == ["wave"]
    assert t.prefix_ok("Nothing relevant yet, and a very long prefix " * 5)  # no length limit
    b = C.KeywordInclusion(id="y", topic="sea", keywords=("blue", "wave"), max_words=4)
    assert b.check("blue wave")
    assert not b.check("the big blue wave rolls")  # 5 words > 4
    assert b.prefix_ok("the big blue")  # one word left for "wave"
    assert b.prefix_ok("the big blue wa")  # the open last chunk may still become "wave"
    assert not b.prefix_ok("the big blue sea ")  # no room left for "wave"
    assert b.prefix_ok("the big blue wave ")  # all present, within budget
    assert not b.prefix_ok("a b c d e")
    assert "'blue', 'wave'" in b.prompt_messages()[1]["content"]
    with pytest.raises(ValueError):
        C.KeywordInclusion(id="z", topic="sea", keywords=())


@pytest.mark.parametrize("task", [t for lst in C.default_tasks().values() for t in lst][::3])
def test_check_implies_prefix_ok(task):
    samples = ["", "A calm sky.", "The ocean is blue and a wave hits the sand", "one two three four five"]
    for s in samples:
        if task.check(s):
            assert task.prefix_ok(s)


WC_TOKENS = ["<eos>", "<ctl>", " the", "cat", "ing", ", ", ".", " --", "--", " 3", "\n\n", "", "a b", " x-y", "'s",
             " .", "é", " "]


def test_word_count_mask_is_exact():
    import numpy as np

    forbidden = np.zeros(len(WC_TOKENS), bool)
    forbidden[1] = True
    wc = C.WordCountMask(WC_TOKENS, forbidden=forbidden, eos_ids=[0])
    prefixes = ["", " ", "The", "The cat", "The cat ", "The cat,", "--", " -- ", "a b c d", "one two three.", "x\n\n"]
    for text in prefixes:
        for k in (1, 2, 3, 4, 5):
            m = wc.mask(text, k)
            c = C.count_words(text)
            for v, s in enumerate(WC_TOKENS):
                if v == 0:
                    assert m[v] == (c == k), (text, k)
                elif v == 1:
                    assert not m[v]
                else:
                    assert m[v] == (C.count_words(text + s) <= k), (text, k, s)


def test_programmatic_prm_object():
    p = A.load_split("dev")[0]
    steps = ["  2 + 3 = 5\n\n", "5 * 2 = 11\n\n", f"so \\boxed{{{p.answer}}}"]
    prm = A.ProgrammaticPRM()
    for t in range(1, len(steps) + 1):
        assert prm.score_prefix("ignored", steps[:t]) == A.programmatic_prm_score(None, [s.strip() for s in steps[:t]])
    assert prm.score_prefix("", steps[:2]) == pytest.approx(A.SCORE_WRONG)
    oracle = A.ProgrammaticPRM(p, use_answer=True)
    assert oracle.score_prefix("", steps) == pytest.approx(A.SCORE_ANSWER_RIGHT)
