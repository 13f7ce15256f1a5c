"""Multi-step arithmetic word problems, an answer checker and a programmatic process reward.

Everything here is pure Python (no JAX, no network): problems are generated offline from a
seed, so the splits are reproducible on any machine.

* :func:`generate_problems` / :func:`load_split` — "Tom has 7 apples. He buys 5 more apples.
  Then he gives 3 apples to a friend. How many apples does Tom have now?"-style problems with
  2–3 operations (add, subtract, multiply by 2–5); answers are non-negative integers.
* :func:`format_prompt` — chat messages asking for one step per paragraph and a final
  ``\\boxed{N}``, with a one-shot worked example (as chat turns by default).
* :func:`extract_answer` / :func:`is_correct` — final-answer extraction (rules below).
* :func:`check_step`, :func:`programmatic_prm_score`, :func:`score_steps` — a process reward
  model that checks every arithmetic claim ``a op b = c`` exactly (Python integers and
  :class:`fractions.Fraction`, never floats).

Scoring rule of the programmatic PRM (the score ``r_t`` of the prefix ``steps[:t+1]``; it
looks at the *latest* step, ``steps[t]``, and — for a final ``\\boxed{N}`` — at the earlier
steps' claims):

1. ``SCORE_WRONG = 0.05``   if any arithmetic claim in the latest step is false;
2. otherwise, if the latest step contains ``\\boxed{...}`` (a final step):

   * ``use_answer=False`` (default; the PRM never peeks at the reference answer):
     ``SCORE_RIGHT = 0.95`` if N is an integer that equals the result (right-hand side) of
     some claim made anywhere in the prefix (the final answer is *consistent* with the
     work shown), ``SCORE_WRONG`` if the prefix makes claims but N matches none of their
     results (or N is not an integer), ``SCORE_NEUTRAL = 0.5`` if the prefix makes no
     claim at all (nothing to be consistent with). ``consistency=False`` skips this and
     scores the final step like any other step (rule 3).
   * ``use_answer=True`` (an *oracle* reward, for ceilings and debugging only):
     ``SCORE_ANSWER_RIGHT = 0.99`` if N equals ``problem.answer``, else
     ``SCORE_ANSWER_WRONG = 0.01``.

3. otherwise ``SCORE_RIGHT = 0.95`` if the latest step has at least one claim (all true),
   ``SCORE_NEUTRAL = 0.5`` if it has none;
4. an empty prefix scores ``SCORE_NEUTRAL``.

So for a step: wrong arithmetic < no checkable arithmetic < correct arithmetic, and every
score is clipped to ``[1e-3, 1 - 1e-3]`` so that ``logit(r)`` is finite. The score is a
per-step likelihood ("this step looks right"), not a probability that the whole solution is
right; aggregate it over steps (last / min / prod) in the potential, as for a neural PRM.
"""

from __future__ import annotations

import dataclasses
import random
import re
from fractions import Fraction
from typing import Sequence

__all__ = [
    "Problem",
    "TEMPLATES",
    "SPLITS",
    "SYSTEM_PROMPT",
    "SYSTEM_INSTRUCTION",
    "SCORE_RIGHT",
    "SCORE_NEUTRAL",
    "SCORE_WRONG",
    "SCORE_ANSWER_RIGHT",
    "SCORE_ANSWER_WRONG",
    "SCORE_CLIP",
    "apply_operations",
    "generate_problems",
    "load_split",
    "reference_solution",
    "format_prompt",
    "split_steps",
    "extract_answer",
    "extract_boxed",
    "is_correct",
    "check_step",
    "programmatic_prm_score",
    "score_steps",
    "ProgrammaticPRM",
    "corrupt_step",
]

# --------------------------------------------------------------------------------------------
# Problems
# --------------------------------------------------------------------------------------------

OPS = ("+", "-", "*")


@dataclasses.dataclass(frozen=True)
class Problem:
    """One word problem: ``answer = start op_1 b_1 op_2 b_2 ...`` evaluated left to right.

    ``operations`` is a tuple of ``(op, operand)`` with ``op`` in ``"+", "-", "*"``;
    ``num_steps == len(operations)`` (the number of calculations a solution needs).
    ``values`` holds the running value after each operation (``values[-1] == answer``).
    """

    id: str
    question: str
    answer: int
    start: int
    operations: tuple[tuple[str, int], ...]
    num_steps: int
    template: str
    name: str
    values: tuple[int, ...]


def apply_operations(start: int, operations: Sequence[tuple[str, int]]) -> int:
    """Evaluate ``start op_1 b_1 op_2 b_2 ...`` left to right (the story order)."""
    v = int(start)
    for op, b in operations:
        if op == "+":
            v += b
        elif op == "-":
            v -= b
        elif op == "*":
            v *= b
        else:
            raise ValueError(f"unknown operation {op!r}")
    return v


# Each template tells a story about one kind of item. Placeholders: {name}, {He}/{he}
# (subject pronoun), {his} (possessive), {him} (object), {a} / {b} numbers, {k} multiplier.
TEMPLATES: dict[str, dict] = {
    "apples": dict(
        start="{name} has {a} apples.",
        add=["{He} buys {b} more apples.", "{He} picks {b} more apples from a tree."],
        sub=["{He} gives {b} apples to a friend.", "{He} eats {b} of the apples."],
        question="How many apples does {name} have now?",
    ),
    "books": dict(
        start="{name} has {a} books on a shelf.",
        add=["{He} gets {b} more books for {his} birthday.", "{He} buys {b} more books."],
        sub=["{He} donates {b} books to the library.", "{He} lends {b} books to a classmate."],
        question="How many books does {name} have now?",
    ),
    "coins": dict(
        start="{name} has {a} coins in a jar.",
        add=["{He} finds {b} more coins.", "{His} grandmother gives {him} {b} coins."],
        sub=["{He} spends {b} coins on a snack.", "{He} gives {b} coins to {his} sister."],
        question="How many coins does {name} have now?",
    ),
    "marbles": dict(
        start="{name} has {a} marbles.",
        add=["{He} wins {b} marbles in a game.", "A friend gives {him} {b} marbles."],
        sub=["{He} loses {b} marbles.", "{He} trades away {b} marbles."],
        question="How many marbles does {name} have now?",
    ),
    "stickers": dict(
        start="{name} has {a} stickers.",
        add=["{He} gets {b} more stickers at school.", "{He} buys a pack of {b} stickers."],
        sub=["{He} puts {b} stickers on a card.", "{He} gives {b} stickers to {his} brother."],
        question="How many stickers does {name} have now?",
    ),
    "cookies": dict(
        start="{name} bakes {a} cookies.",
        add=["{He} bakes {b} more cookies.", "A neighbor brings {him} {b} cookies."],
        sub=["{He} eats {b} cookies.", "{He} packs {b} cookies for a friend."],
        question="How many cookies does {name} have now?",
    ),
    "shells": dict(
        start="{name} collects {a} shells on the beach.",
        add=["{He} collects {b} more shells.", "{His} cousin gives {him} {b} shells."],
        sub=["{He} drops {b} shells on the way home.", "{He} gives {b} shells to {his} mother."],
        question="How many shells does {name} have now?",
    ),
}

# The multiply sentence is shared: "{He} doubles ..." etc., with the item word filled in.
_MUL = {
    2: "Then the number of {item} {he} has doubles.",
    3: "Then the number of {item} {he} has triples.",
    4: "Then the number of {item} {he} has becomes 4 times as large.",
    5: "Then the number of {item} {he} has becomes 5 times as large.",
}

_NAMES = (
    ("Tom", "he"), ("Anna", "she"), ("Ben", "he"), ("Maria", "she"), ("Sam", "he"),
    ("Emma", "she"), ("Jack", "he"), ("Sofia", "she"), ("Leo", "he"), ("Mia", "she"),
    ("Omar", "he"), ("Nina", "she"),
)
_PRONOUNS = {"he": ("he", "his", "him"), "she": ("she", "her", "her")}

# Fixed splits: (seed, size). Built test first, then dev, then train, each excluding the
# questions of the splits built before it, so they are disjoint by construction.
SPLITS: dict[str, tuple[int, int]] = {
    "test": (20250101, 200),
    "dev": (20250102, 100),
    "train": (20250103, 500),
    "easy-test": (20250111, 200),
    "easy-dev": (20250112, 100),
    "easy-train": (20250113, 300),
}
_SPLIT_ORDER = ("test", "dev", "train", "easy-test", "easy-dev", "easy-train")
#: Generator settings of the easy splits: 1-2 additions/subtractions of operands up to 10
#: (SmolLM2-135M solves the standard splits about 1 time in 32; these give the samplers
#: room to show a difference).
EASY = {"min_steps": 1, "max_steps": 2, "max_operand": 10, "ops": ("+", "-")}
_MAX_MULTIPLIER = 5


def _fill(text: str, name: str, pron: str, **kw) -> str:
    he, his, him = _PRONOUNS[pron]
    out = text.format(name=name, He=he.capitalize(), he=he, His=his.capitalize(), his=his, him=him, **kw)
    # "1 apples" -> "1 apple" (every item word is a regular plural in -s)
    return re.sub(rf"\b1 (more )?({'|'.join(TEMPLATES)})\b", lambda m: "1 " + (m.group(1) or "") + m.group(2)[:-1], out)


def _draw_problem(rng: random.Random, min_steps: int, max_steps: int, max_operand: int, allowed=OPS):
    tname = rng.choice(sorted(TEMPLATES))
    tpl = TEMPLATES[tname]
    name, pron = rng.choice(_NAMES)
    n_ops = rng.randint(min_steps, max_steps)
    item = tname
    v = rng.randint(2, max_operand)
    start = v
    sentences = [_fill(tpl["start"], name, pron, a=v)]
    ops, values = [], []
    for _ in range(n_ops):
        choices = ["+", "+", "-", "-"]
        if v <= max_operand:  # keep products small: at most max_operand * 5
            choices.append("*")
        if v < 2:  # nothing left to give away
            choices = [c for c in choices if c != "-"]
        choices = [c for c in choices if c in allowed] or ["+" if "+" in allowed else "*"]
        op = rng.choice(choices)
        if op == "+":
            b = rng.randint(1, max_operand)
            sentences.append(_fill(rng.choice(tpl["add"]), name, pron, b=b))
            v += b
        elif op == "-":
            b = rng.randint(1, min(v - 1, max_operand))  # keep at least one item
            sentences.append(_fill(rng.choice(tpl["sub"]), name, pron, b=b))
            v -= b
        else:
            b = rng.randint(2, _MAX_MULTIPLIER)
            sentences.append(_fill(_MUL[b], name, pron, item=item))
            v *= b
        ops.append((op, b))
        values.append(v)
    # "Then" makes the order explicit for the second and later operations.
    for i in range(2, len(sentences)):
        s = sentences[i]
        if not s.startswith("Then"):
            sentences[i] = "Then " + s[0].lower() + s[1:]
    question = " ".join(sentences) + " " + _fill(tpl["question"], name, pron)
    return question, start, tuple(ops), tuple(values), tname, name


def generate_problems(
    seed: int,
    n: int,
    min_steps: int = 2,
    max_steps: int = 3,
    max_operand: int = 20,
    exclude: frozenset[str] | set[str] = frozenset(),
    ops: Sequence[str] = OPS,
) -> list[Problem]:
    """``n`` distinct problems, deterministic for ``seed`` (stdlib :class:`random.Random`).

    Each problem has ``min_steps``..``max_steps`` operations on a starting amount in
    ``[2, max_operand]``: add ``b`` in ``[1, max_operand]``, subtract ``b`` with at least one
    item left (so every running value and the answer are positive integers), or multiply by
    2..5 (only when the running value is at most ``max_operand``). Questions are unique within
    the list and never in ``exclude``. ``ops`` restricts the operations (e.g. ``("+", "-")``
    for easier problems); when no allowed operation is possible (a subtraction with one item
    left), ``"+"`` is used if allowed, else ``"*"``. Ids are ``f"arith-{seed}-{i}"``.
    """
    ops = tuple(ops)
    if not ops or not set(ops) <= set(OPS):
        raise ValueError(f"ops must be a non-empty subset of {OPS}")
    if not 1 <= min_steps <= max_steps:
        raise ValueError("need 1 <= min_steps <= max_steps")
    if max_operand < 2:
        raise ValueError("max_operand must be >= 2")
    rng = random.Random(seed)
    seen = set(exclude)
    out: list[Problem] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 100 * n + 1000:
            raise RuntimeError("could not draw enough distinct problems; widen the ranges")
        question, start, opers, values, tname, name = _draw_problem(rng, min_steps, max_steps, max_operand, ops)
        if question in seen:
            continue
        seen.add(question)
        answer = apply_operations(start, opers)
        assert answer == values[-1] and answer >= 0
        out.append(
            Problem(
                id=f"arith-{seed}-{len(out)}",
                question=question,
                answer=answer,
                start=start,
                operations=opers,
                num_steps=len(opers),
                template=tname,
                name=name,
                values=values,
            )
        )
    return out


_SPLIT_CACHE: dict[str, list[Problem]] = {}


def _build_splits() -> dict[str, list[Problem]]:
    if not _SPLIT_CACHE:
        taken: set[str] = set()
        built = {}
        for split in _SPLIT_ORDER:
            seed, size = SPLITS[split]
            kw = EASY if split.startswith("easy-") else {}
            probs = generate_problems(seed, size, exclude=frozenset(taken), **kw)
            probs = [dataclasses.replace(p, id=f"{split}-{i:04d}") for i, p in enumerate(probs)]
            taken.update(p.question for p in probs)
            built[split] = probs
        qs = [set(p.question for p in built[s]) for s in _SPLIT_ORDER]
        for i in range(len(qs)):
            for j in range(i + 1, len(qs)):
                assert not qs[i] & qs[j], "splits overlap"
        _SPLIT_CACHE.update(built)
    return _SPLIT_CACHE


def load_split(name: str) -> list[Problem]:
    """The fixed split ``"train"`` (500), ``"dev"`` (100) or ``"test"`` (200), or the easier
    ``"easy-train"`` (300), ``"easy-dev"`` (100), ``"easy-test"`` (200) (settings :data:`EASY`).

    Built from the seeds in :data:`SPLITS` (in the order of ``_SPLIT_ORDER``, each excluding
    earlier questions), with ids ``"{split}-0000"`` ...; disjoint by construction and checked.
    """
    if name not in SPLITS:
        raise KeyError(f"unknown split {name!r}; choose from {sorted(SPLITS)}")
    return list(_build_splits()[name])


# --------------------------------------------------------------------------------------------
# Prompting
# --------------------------------------------------------------------------------------------

_EXAMPLE_QUESTION = (
    "Lily has 4 pencils. She buys 3 more pencils. Then the number of pencils she has doubles. "
    "Then she gives 5 pencils to her brother. How many pencils does Lily have now?"
)
_EXAMPLE_SOLUTION = (
    "Lily starts with 4 pencils.\n\n"
    "She buys 3 more: 4 + 3 = 7.\n\n"
    "The number doubles: 7 x 2 = 14.\n\n"
    "She gives away 5: 14 - 5 = 9.\n\n"
    "The answer is \\boxed{9}."
)

SYSTEM_INSTRUCTION = (
    "You are a careful math tutor. Solve the problem step by step. Write each step as a short "
    "paragraph with one calculation written as an equation, like 4 + 3 = 7. Separate steps "
    "with a blank line. End with the final answer as \\boxed{N}."
)
SYSTEM_PROMPT = f"{SYSTEM_INSTRUCTION}\n\nExample problem: {_EXAMPLE_QUESTION}\n\nExample solution:\n{_EXAMPLE_SOLUTION}"


def format_prompt(problem: Problem | str, style: str = "turns") -> list[dict]:
    """Chat messages for a chat template, with a one-shot worked example.

    ``style="turns"`` (default): system instruction, then the example as a user turn and an
    assistant turn, then the question as a user turn. ``style="system"``: the example inside
    the system message, then the question. The example's item ("pencils") and name ("Lily")
    appear in no split. Pilot with SmolLM2-135M-Instruct (4 two-step add/subtract problems x
    8 samples, temperature 0.8, 160 tokens, CPU): ``"turns"`` 22/32 samples wrote a
    ``\\boxed{}`` answer, ``"system"`` 8/32; 1/32 correct with either (the model is weak).
    """
    question = problem.question if isinstance(problem, Problem) else str(problem)
    if style == "turns":
        return [
            {"role": "system", "content": SYSTEM_INSTRUCTION},
            {"role": "user", "content": _EXAMPLE_QUESTION},
            {"role": "assistant", "content": _EXAMPLE_SOLUTION},
            {"role": "user", "content": question},
        ]
    if style == "system":
        return [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": question},
        ]
    raise ValueError(f"style must be 'turns' or 'system', got {style!r}")


def reference_solution(problem: Problem) -> str:
    """A correct solution in the prompted format (steps separated by blank lines)."""
    word = {"+": "+", "-": "-", "*": "x"}
    steps = [f"{problem.name} starts with {problem.start} {problem.template}."]
    v = problem.start
    for (op, b), new in zip(problem.operations, problem.values):
        steps.append(f"{v} {word[op]} {b} = {new}.")
        v = new
    steps.append(f"The answer is \\boxed{{{problem.answer}}}.")
    return "\n\n".join(steps)


def split_steps(text: str, delimiter: str = "\n\n") -> list[str]:
    """Split a solution into steps at ``delimiter``, dropping empty/blank steps."""
    return [s for s in text.split(delimiter) if s.strip()]


# --------------------------------------------------------------------------------------------
# Numbers and answer extraction
# --------------------------------------------------------------------------------------------

_MINUS = "\\-\u2212\u2013"  # (regex class body) ASCII hyphen-minus, unicode minus sign, en dash
# An unsigned number: digits with thousands commas (1,000 / 12,345,678) or plain digits, with
# an optional decimal part. Thousands groups need exactly three digits, so "3,4" is two numbers.
_UNUM = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
# A signed number as it appears in free text: the sign must touch the digits (optionally via a
# "$") and must not follow a digit/letter/closing bracket, so "11 - 6" and "11-6" are not "-6".
_SNUM_RE = re.compile(rf"(?<![\w)\]}}.,])(?P<sign>[{_MINUS}])?\$?(?P<num>{_UNUM})(?![\d])")


def _to_fraction(num: str, sign: str | None = None) -> Fraction:
    val = Fraction(num.replace(",", ""))
    return -val if sign else val


def _as_int(val: Fraction | None) -> int | None:
    if val is None or val.denominator != 1:
        return None
    return int(val)


def _last_number(text: str) -> Fraction | None:
    last = None
    for m in _SNUM_RE.finditer(text):
        last = m
    return None if last is None else _to_fraction(last.group("num"), last.group("sign"))


def _normalize(text: str) -> str:
    """Map LaTeX and unicode spellings to plain ones ("\\times" -> "×", "\\$" -> "$", ...)."""
    text = text.replace("\\$", "$").replace("\\!", "").replace("\\,", ",")
    text = re.sub(r"\\times(?![a-zA-Z])", "×", text)
    text = re.sub(r"\\cdot(?![a-zA-Z])", "·", text)
    text = re.sub(r"\\div(?![a-zA-Z])", "÷", text)
    return text


def extract_boxed(text: str) -> list[str]:
    """Contents of every ``\\boxed{...}`` (balanced braces), in order."""
    out = []
    for m in re.finditer(r"\\boxed\s*\{", text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
            i += 1
        if depth == 0:
            out.append(text[m.end() : i - 1])
    return out


def _boxed_value(content: str) -> Fraction | None:
    content = _normalize(content)
    content = re.sub(r"\\(?:text|mathrm|textbf|mathbf)\s*\{([^{}]*)\}", r"\1", content)
    content = content.replace("{", " ").replace("}", " ")
    content = re.sub(r"(?<=\d),\s+(?=\d{3}\b)", ",", content)  # "1, 000" is rare; tolerate
    return _last_number(content)


_ANSWER_IS_RE = re.compile(
    rf"answer\s*(?:is|:|=|would be|will be)\s*:?\s*(?:\*\*)?\s*(?P<sign>[{_MINUS}])?\s*\$?\s*(?P<num>{_UNUM})(?!\d)",
    re.IGNORECASE,
)
_EQUALS_RE = re.compile(rf"=\s*(?P<sign>[{_MINUS}])?\s*\$?\s*(?P<num>{_UNUM})(?!\d)")


def extract_answer(text: str) -> int | None:
    """The final integer answer in a generation, or ``None``.

    Rules, in priority order (each takes its *last* match in the text):

    1. the last ``\\boxed{...}`` whose content has a number (``\\boxed{1,000}``,
       ``\\boxed{ $12 }``, ``\\boxed{\\text{12 apples}}``): that content's last number;
    2. ``answer is N`` / ``answer: N`` / ``answer = N`` (case-insensitive); if the rest of
       that sentence continues with ``= M`` ("the answer is 23 x 2 = 46."), the last such M;
    3. ``= N``;
    4. the last number anywhere in the text.

    Numbers may carry a sign (ASCII ``-``, unicode minus ``−``, en dash), a ``$``, thousands
    commas (``1,000``) and a decimal part. The chosen number must be an integer (``12.0`` is
    12); a non-integer (``3.5``) gives ``None``, as does text without any number.
    """
    if not text:
        return None
    text = _normalize(text)
    for content in reversed(extract_boxed(text)):
        val = _boxed_value(content)
        if val is not None:
            return _as_int(val)
    last = None
    for m in _ANSWER_IS_RE.finditer(text):
        last = m
    if last is not None:
        # "the answer is 23 x 2 = 46.": within the rest of that sentence, a later "= N" wins
        clause = re.split(r"\n|\.(?:\s|$)", text[last.end() :], maxsplit=1)[0]
        eqs = list(_EQUALS_RE.finditer(clause))
        m = eqs[-1] if eqs else last
        return _as_int(_to_fraction(m.group("num"), m.group("sign")))
    for m in reversed(list(_EQUALS_RE.finditer(text))):
        return _as_int(_to_fraction(m.group("num"), m.group("sign")))
    return _as_int(_last_number(text))


def is_correct(problem: Problem, text: str) -> bool:
    """Whether :func:`extract_answer` of ``text`` equals ``problem.answer``."""
    return extract_answer(text) == problem.answer


# --------------------------------------------------------------------------------------------
# Arithmetic claim checking
# --------------------------------------------------------------------------------------------

# Tokens of an arithmetic run. "x"/"X" is an operator only between numbers (the parser
# rejects it elsewhere, and letters of words around it break the run).
_TOKEN_RE = re.compile(
    rf"(?P<num>{_UNUM})|(?P<op>[+{_MINUS}×xX*·÷/])|(?P<eq>=)|(?P<lp>\()|(?P<rp>\))|(?P<skip>[ \t$]+)"
)
_OP_NORM = {
    "-": "-", "\u2212": "-", "\u2013": "-", "+": "+",
    "×": "*", "x": "*", "X": "*", "*": "*", "·": "*", "÷": "/", "/": "/",
}


def _runs(text: str):
    """Maximal runs of arithmetic tokens: lists of (kind, value, start, end)."""
    runs, cur = [], []
    pos = 0
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None:  # any other character (letters, newline, ".", ",", ":") ends the run
            if cur:
                runs.append(cur)
                cur = []
            pos += 1
            continue
        kind = m.lastgroup
        if kind == "op" and m.group() in "xX":
            # a letter x glued to other letters is part of a word ("box", "xylophone")
            before = text[m.start() - 1] if m.start() > 0 else " "
            after = text[m.end()] if m.end() < len(text) else " "
            if before.isalpha() or after.isalpha():
                if cur:
                    runs.append(cur)
                    cur = []
                pos = m.end()
                continue
        if kind == "num":
            before = text[m.start() - 1] if m.start() > 0 else " "
            glued_x = bool(cur) and cur[-1][0] == "op" and cur[-1][3] == m.start()
            if (before.isalpha() or before == "_") and not glued_x:  # "step2", "a2": skip
                if cur:
                    runs.append(cur)
                    cur = []
                pos = m.end()
                continue
        if kind != "skip":
            cur.append((kind, m.group(), m.start(), m.end()))
        pos = m.end()
    if cur:
        runs.append(cur)
    return runs


class _ParseError(Exception):
    pass


def _parse(tokens) -> tuple[Fraction, bool]:
    """Evaluate ``tokens`` (a full expression) exactly; returns (value, has_binary_operator).

    Grammar with the usual precedence: expr := term (('+'|'-') term)*;
    term := factor (('*'|'/') factor)*; factor := '-' factor | num | '(' expr ')'.
    Division by zero raises ZeroDivisionError.
    """
    pos = 0
    has_op = False

    def peek():
        return tokens[pos] if pos < len(tokens) else None

    def take():
        nonlocal pos
        tok = tokens[pos]
        pos += 1
        return tok

    def factor():
        tok = peek()
        if tok is None:
            raise _ParseError
        if tok[0] == "op" and _OP_NORM[tok[1]] == "-":  # unary minus: not a binary operator
            take()
            return -factor()
        if tok[0] == "num":
            take()
            return _to_fraction(tok[1])
        if tok[0] == "lp":
            take()
            v = expr()
            if peek() is None or peek()[0] != "rp":
                raise _ParseError
            take()
            return v
        raise _ParseError

    def term():
        nonlocal has_op
        v = factor()
        while peek() is not None and peek()[0] == "op" and _OP_NORM[peek()[1]] in "*/":
            op = _OP_NORM[take()[1]]
            has_op = True
            rhs = factor()
            v = v * rhs if op == "*" else v / rhs
        return v

    def expr():
        nonlocal has_op
        v = term()
        while peek() is not None and peek()[0] == "op" and _OP_NORM[peek()[1]] in "+-":
            op = _OP_NORM[take()[1]]
            has_op = True
            rhs = term()
            v = v + rhs if op == "+" else v - rhs
        return v

    v = expr()
    if pos != len(tokens):
        raise _ParseError
    return v, has_op


def _try_parse(tokens):
    """(value, has_op), ``("div0", has_op)`` on division by zero, or None if not an expression."""
    if not tokens:
        return None
    try:
        return _parse(tokens)
    except _ParseError:
        return None
    except ZeroDivisionError:
        return ("div0", True)


def _longest_suffix(tokens):
    for i in range(len(tokens)):
        tok = tokens[i]
        if tok[0] == "op" and i + 1 < len(tokens) and tokens[i + 1][2] != tok[3]:
            continue  # "- 5 + 3": a dash/bullet followed by a space is not a sign
        r = _try_parse(tokens[i:])
        if r is not None:
            return i, r
    return None


def _longest_prefix(tokens):
    for j in range(len(tokens), 0, -1):
        r = _try_parse(tokens[:j])
        if r is not None:
            return j, r
    return None


def _fmt(v) -> str:
    if isinstance(v, str):
        return v
    return str(v.numerator) if v.denominator == 1 else f"{v.numerator}/{v.denominator}"


def _span_text(text, toks):
    return text[toks[0][2] : toks[-1][3]]


def _claims_in_run(text: str, run) -> list[dict]:
    # split at "=" into segments
    segs, cur = [], []
    for tok in run:
        if tok[0] == "eq":
            segs.append(cur)
            cur = []
        else:
            cur.append(tok)
    segs.append(cur)
    if len(segs) < 2:
        return []
    claims = []
    # left side: longest parseable suffix of the first segment
    left = _longest_suffix(segs[0])
    left_toks = segs[0][left[0]:] if left else None
    left_val = left[1] if left else None
    for k in range(1, len(segs)):
        seg = segs[k]
        last = k == len(segs) - 1
        if last:
            right = _longest_prefix(seg)
            right_toks = seg[: right[0]] if right else None
        else:
            r = _try_parse(seg)
            if r is None:  # a middle segment that is not an expression breaks the chain here
                right = _longest_prefix(seg)
                right_toks = seg[: right[0]] if right else None
            else:
                right, right_toks = (len(seg), r), seg
        right_val = right[1] if right else None
        if left_val is not None and right_val is not None and (left_val[1] or right_val[1]):
            lv, rv = left_val[0], right_val[0]
            if lv == "div0" or rv == "div0":
                ok = False
            else:
                ok = lv == rv
                # running-computation style "5 + 3 = 8 - 2 = 6": the middle segment starts
                # with the result of the left side; accept "5 + 3 = 8" there.
                result = rv
                if not ok and not last and right_toks and right_toks[0][0] == "num":
                    ok = lv == _to_fraction(right_toks[0][1])
                    if ok:
                        result = lv
            claims.append(
                dict(
                    text=text[left_toks[0][2] : right_toks[-1][3]],
                    lhs=_span_text(text, left_toks),
                    rhs=_span_text(text, right_toks),
                    lhs_value=_fmt(lv),
                    rhs_value=_fmt(rv),
                    result=_fmt(rv if lv == "div0" or rv == "div0" else result),
                    correct=bool(ok),
                )
            )
        if right is None or (not last and right_toks is not seg):
            # chain broken: restart from the tail of this segment
            nxt = _longest_suffix(seg)
            left_toks = seg[nxt[0]:] if nxt else None
            left_val = nxt[1] if nxt else None
        else:
            left_toks, left_val = right_toks, right_val
    return claims


def check_step(step_text: str) -> dict:
    """Find and check every arithmetic claim in a step, exactly.

    A claim is ``expr = expr`` where at least one side has an operator: ``11 - 6 = 5``,
    chains ``3 + 4 + 5 = 12``, products written ``x``, ``X``, ``×``, ``*``, ``·`` or
    ``\\times``, minus as ``-``, ``−`` (unicode) or ``–``, division ``/``, ``÷``, parentheses,
    ``$`` signs, thousands commas (``1,000``) and decimals (``2.5``). Evaluation uses
    :class:`fractions.Fraction` with the usual precedence (``×``, ``/`` before ``+``, ``-``).
    Chains ``a = b = c`` give one claim per ``=``; in a running computation
    ``5 + 3 = 8 - 2 = 6`` the middle ``= 8 - 2`` also counts as right when its first number
    is the left side's value. Bare equalities without an operator (``8 = 8``) are not claims;
    division by zero is a wrong claim.

    Returns ``dict(num_claims, num_correct, claims=[dict(text, lhs, rhs, lhs_value,
    rhs_value, result, correct), ...])`` where values are exact strings ("7", "7/2") and
    ``result`` is the value the claim asserts (the right-hand side's value, or the left
    side's value for an accepted running-computation middle link).
    """
    text = _normalize(step_text)
    claims = []
    for run in _runs(text):
        claims.extend(_claims_in_run(text, run))
    return dict(num_claims=len(claims), num_correct=sum(c["correct"] for c in claims), claims=claims)


# --------------------------------------------------------------------------------------------
# Programmatic PRM
# --------------------------------------------------------------------------------------------

SCORE_RIGHT = 0.95
SCORE_NEUTRAL = 0.5
SCORE_WRONG = 0.05
SCORE_ANSWER_RIGHT = 0.99
SCORE_ANSWER_WRONG = 0.01
SCORE_CLIP = (1e-3, 1.0 - 1e-3)


def _clip(r: float) -> float:
    return float(min(max(r, SCORE_CLIP[0]), SCORE_CLIP[1]))


def programmatic_prm_score(
    problem: Problem | None,
    prefix_steps: Sequence[str],
    use_answer: bool = False,
    consistency: bool = True,
) -> float:
    """Score ``r_t`` in (0, 1) of a solution prefix, judged on its latest step.

    See the module docstring for the exact rule. ``use_answer=True`` compares a final
    ``\\boxed{N}`` with ``problem.answer`` — an oracle, not a fair PRM; by default the score
    never looks at the answer (``problem`` may then be ``None``).
    """
    if not prefix_steps:
        return _clip(SCORE_NEUTRAL)
    step = prefix_steps[-1]
    res = check_step(step)
    if res["num_correct"] < res["num_claims"]:
        return _clip(SCORE_WRONG)
    boxed = extract_boxed(_normalize(step))
    if boxed:
        val = None
        for content in reversed(boxed):
            val = _boxed_value(content)
            if val is not None:
                break
        n = _as_int(val)
        if use_answer:
            if problem is None:
                raise ValueError("use_answer=True needs the problem")
            return _clip(SCORE_ANSWER_RIGHT if n is not None and n == problem.answer else SCORE_ANSWER_WRONG)
        if consistency:
            results = set()
            for s in prefix_steps:
                for c in check_step(s)["claims"]:
                    results.add(c["result"])
            if not results:
                return _clip(SCORE_NEUTRAL)
            return _clip(SCORE_RIGHT if n is not None and str(n) in results else SCORE_WRONG)
    return _clip(SCORE_RIGHT if res["num_claims"] > 0 else SCORE_NEUTRAL)


def score_steps(
    problem: Problem | None, steps: Sequence[str], use_answer: bool = False, consistency: bool = True
) -> list[float]:
    """``[programmatic_prm_score(problem, steps[:t+1]) for t in range(len(steps))]``."""
    return [
        programmatic_prm_score(problem, steps[: t + 1], use_answer=use_answer, consistency=consistency)
        for t in range(len(steps))
    ]


class ProgrammaticPRM:
    """:func:`programmatic_prm_score` as a PRM object (``score_prefix(context, steps)``), for
    the samplers of :mod:`smcscale.text`.

    ``problem`` is only needed with ``use_answer=True`` (an oracle). Steps are stripped of
    surrounding whitespace before checking; ``context`` is ignored.
    """

    def __init__(self, problem: Problem | None = None, use_answer: bool = False, consistency: bool = True):
        self.problem, self.use_answer, self.consistency = problem, use_answer, consistency

    def score_prefix(self, context: str, steps: Sequence[str]) -> float:
        steps = [s.strip() for s in steps]
        return programmatic_prm_score(self.problem, steps, use_answer=self.use_answer, consistency=self.consistency)


# --------------------------------------------------------------------------------------------
# Synthetic wrong steps (negative examples for a learned PRM)
# --------------------------------------------------------------------------------------------

_CLAIM_RE = re.compile(r"(\d+)(\s*[+\-x×*]\s*\d+\s*=\s*)(\d+)")


def corrupt_step(steps: Sequence[str], rng):
    """Change the result ``c`` of one true claim ``a op b = c`` in a random step to a wrong
    non-negative integer ``c + d`` (``0 < |d| <= 5``). ``rng`` is a
    ``numpy.random.Generator`` (only ``rng.integers(n)`` is used). Returns
    ``(new_steps, j)`` with ``j`` the corrupted step, or ``None`` if no step has such a
    claim. The ``corrupt_fn`` of :func:`smcscale.text.learned_prm.add_corrupted_references`
    for this task."""
    cands = []
    for j, s in enumerate(steps):
        for m in _CLAIM_RE.finditer(s):
            if check_step(m.group(0))["num_correct"] == 1:
                cands.append((j, m))
    if not cands:
        return None
    j, m = cands[int(rng.integers(len(cands)))]
    c = int(m.group(3))
    ds = [d for d in range(-5, 6) if d != 0 and c + d >= 0]
    new = str(c + ds[int(rng.integers(len(ds)))])
    s = steps[j]
    out = list(steps)
    out[j] = s[: m.start(3)] + new + s[m.end(3) :]
    return out, j
