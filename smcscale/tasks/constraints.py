"""Constrained generation tasks: lipogram, exact word count, keyword inclusion.

Each task is a small object with

* ``prompt_messages()`` — chat messages for a chat template;
* ``check(text) -> bool`` — whether a finished generation satisfies the constraint;
* ``prefix_ok(text_so_far) -> bool`` — ``False`` as soon as *no* continuation of the prefix
  can satisfy the constraint (so a potential may kill the particle there); ``True`` means
  some continuation still can. ``check(t)`` implies ``prefix_ok(t)``.

:class:`Lipogram` also has ``token_allowed(token_string)`` for token masks. All functions take
*decoded* text (not byte-level BPE symbols such as ``"Ġthe"``; decode tokens first).

Token masks for the samplers of :mod:`smcscale.text` (a
:class:`~smcscale.text.potentials.TokenConstraint`): :func:`lipogram_constraint` (a static
mask) and :class:`WordCountMask` (exact next-token masks for an exact word count).

:func:`default_tasks` gives a fixed list of 10 prompts per task.
"""

from __future__ import annotations

import abc
import dataclasses
import re
import unicodedata
from typing import Optional, Sequence

import numpy as np

__all__ = [
    "Constraint",
    "Lipogram",
    "WordCount",
    "KeywordInclusion",
    "count_words",
    "WordCountMask",
    "lipogram_constraint",
    "default_tasks",
]

_SYSTEM = "You are a helpful writing assistant. Follow the instructions exactly and reply with the text only."


def _fold(text: str) -> str:
    """Case-fold and strip accents, so "É", "é", "ë" all become "e"."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()


def count_words(text: str) -> int:
    """Words = whitespace-separated chunks containing at least one letter or digit.

    "Hello, world!" has 2 words; "well-known" and "don't" are one word each; a lone "—" or
    "..." is not a word. Appending text never decreases the count.
    """
    return sum(1 for chunk in text.split() if any(ch.isalnum() for ch in chunk))


@dataclasses.dataclass(frozen=True)
class Constraint(abc.ABC):
    """Base class: a writing ``instruction`` on a ``topic`` with an ``id``."""

    id: str
    topic: str

    name = "constraint"

    @abc.abstractmethod
    def instruction(self) -> str:
        """The instruction shown to the model."""

    def prompt_messages(self) -> list[dict]:
        return [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": self.instruction()}]

    @abc.abstractmethod
    def check(self, text: str) -> bool:
        """Whether a finished text satisfies the constraint."""

    @abc.abstractmethod
    def prefix_ok(self, text_so_far: str) -> bool:
        """False as soon as no continuation of the prefix can satisfy it."""


@dataclasses.dataclass(frozen=True)
class Lipogram(Constraint):
    """No letter ``letter`` (default ``"e"``), case-insensitive, accented forms included
    (``é``, ``È``, ``ë`` count as ``e``, as in Perec's *La Disparition*)."""

    letter: str = "e"

    name = "lipogram"

    def __post_init__(self):
        if len(self.letter) != 1 or not self.letter.isalpha():
            raise ValueError("letter must be a single letter")

    def instruction(self) -> str:
        return (
            f"Write one or two sentences about {self.topic} without using the letter "
            f"'{self.letter}' anywhere (neither '{self.letter.lower()}' nor '{self.letter.upper()}')."
        )

    def token_allowed(self, token_string: str) -> bool:
        """A token (its decoded string) is allowed iff it contains no ``letter`` in any case."""
        return _fold(self.letter) not in _fold(token_string)

    def check(self, text: str) -> bool:
        return self.token_allowed(text)

    def prefix_ok(self, text_so_far: str) -> bool:
        # The constraint is prefix-closed: once the letter appears it never goes away.
        return self.token_allowed(text_so_far)


@dataclasses.dataclass(frozen=True)
class WordCount(Constraint):
    """Exactly ``k`` words (:func:`count_words`)."""

    k: int = 10

    name = "word_count"

    def __post_init__(self):
        if self.k < 1:
            raise ValueError("k must be >= 1")

    def instruction(self) -> str:
        return f"Write a single sentence about {self.topic} that has exactly {self.k} words."

    def check(self, text: str) -> bool:
        return count_words(text) == self.k

    def prefix_ok(self, text_so_far: str) -> bool:
        # The count never decreases as text is appended (a partial last word already counts).
        return count_words(text_so_far) <= self.k

    def words_left(self, text_so_far: str) -> int:
        """How many more words may still start (negative once over budget)."""
        return self.k - count_words(text_so_far)


@dataclasses.dataclass(frozen=True)
class KeywordInclusion(Constraint):
    """Must contain every keyword as a whole word, case-insensitive ("Ocean" matches
    "ocean", "oceans" does not). With ``max_words`` set, the text must also have at most that
    many words, and a prefix fails once it is over budget or has no room left for the missing
    keywords."""

    keywords: tuple[str, ...] = ()
    max_words: int | None = None

    name = "keywords"

    def __post_init__(self):
        if not self.keywords:
            raise ValueError("need at least one keyword")
        object.__setattr__(self, "keywords", tuple(self.keywords))

    def instruction(self) -> str:
        words = ", ".join(f"'{w}'" for w in self.keywords)
        extra = f" Use at most {self.max_words} words." if self.max_words else ""
        return f"Write one or two sentences about {self.topic} that use all of these words: {words}.{extra}"

    def _present(self, text: str, kw: str) -> bool:
        pattern = r"(?<![\w])" + re.escape(_fold(kw)) + r"(?![\w])"
        return re.search(pattern, _fold(text)) is not None

    def missing(self, text: str) -> list[str]:
        """Keywords not yet in ``text``."""
        return [kw for kw in self.keywords if not self._present(text, kw)]

    def check(self, text: str) -> bool:
        if self.max_words is not None and count_words(text) > self.max_words:
            return False
        return not self.missing(text)

    def prefix_ok(self, text_so_far: str) -> bool:
        if self.max_words is None:
            return True  # any prefix can still be extended with the missing keywords
        used = count_words(text_so_far)
        if used > self.max_words:
            return False
        if not self.missing(text_so_far):
            return True
        # Missing keywords need either a new word or the open last chunk (no trailing space).
        # One chunk can hold several keywords ("wave-sand"), so one slot is enough: this is
        # the exact condition, not a heuristic.
        ends_open = bool(text_so_far) and not text_so_far[-1].isspace()
        return used < self.max_words or ends_open


# --------------------------------------------------------------------------------------------
# token masks


def lipogram_constraint(tokenizer, letter: str = "e", weighted: bool = True, vocab_size: Optional[int] = None):
    """A :class:`~smcscale.text.potentials.TokenConstraint` with a static mask forbidding
    every token whose text contains ``letter`` (any case or accent: :meth:`Lipogram.token_allowed`),
    and the non-EOS control tokens (see
    :func:`~smcscale.text.potentials.token_mask_from_predicate`). ``weighted=False`` gives
    locally constrained decoding. Decodes every token id once."""
    from smcscale.text.potentials import TokenConstraint, token_mask_from_predicate

    lip = Lipogram(id="mask", topic="", letter=letter)
    mask = token_mask_from_predicate(tokenizer, lip.token_allowed, vocab_size)
    return TokenConstraint(static_mask=mask, weighted=weighted, eos_ids=getattr(tokenizer, "eos_ids", ()) or ())


class WordCountMask:
    """Exact next-token masks for "exactly ``k`` words" (:func:`count_words`).

    ``strings[v]`` is the decoded text of token ``v``; ``forbidden`` (``bool [V]``) marks
    tokens never allowed (e.g. control tokens); ``eos_ids`` are the stop tokens.

    For a prefix text with ``c`` words, token ``v`` (text ``s``) is allowed iff
    ``count_words(text + s) <= k``; EOS iff ``c == k``. Per token: ``w(s) = count_words(s)``
    and whether the first chunk of ``s`` contains a letter or digit and glues onto the last
    chunk of the text (``s`` starts with a non-space and the text ends with one). If that last
    chunk already is a word, the glued chunk is not a new word: the increment is
    ``w(s) - 1``; otherwise it is ``w(s)``. (Exact when decoding is concatenative, i.e.
    except for tokens that split one UTF-8 character.)

    Use as ``TokenConstraint(mask_fn=lambda ids: wc.mask(tokenizer.decode(ids), k))``.
    """

    def __init__(self, strings: Sequence[str], forbidden=None, eos_ids=()):
        v = len(strings)
        self.fullw = np.array([count_words(s) for s in strings], np.int64)
        self.glue_word = np.array(
            [bool(s) and not s[0].isspace() and any(ch.isalnum() for ch in s.split()[0]) for s in strings], bool
        )
        self.ok = np.ones(v, bool) if forbidden is None else ~np.asarray(forbidden, bool)
        self.eos = sorted(int(e) for e in eos_ids)
        self.ok[self.eos] = False

    def mask(self, text: str, k: int) -> np.ndarray:
        """``bool [V]``: the tokens that may follow ``text`` so that it can still have
        exactly ``k`` words (EOS only when it has exactly ``k``)."""
        c = count_words(text)
        open_word = bool(text) and not text[-1].isspace() and any(ch.isalnum() for ch in text.split()[-1])
        inc = self.fullw - self.glue_word if open_word else self.fullw
        allowed = (c + inc <= k) & self.ok
        allowed[self.eos] = c == k
        return allowed


_TOPICS = (
    "the ocean", "a rainy afternoon", "a cat", "mountains", "a city at night",
    "a garden", "music", "a long train trip", "winter", "a favorite food",
)
_WORD_COUNTS = (5, 6, 7, 8, 9, 10, 12, 12, 15, 20)
_KEYWORDS = (
    ("blue", "wave", "sand"),
    ("umbrella", "window"),
    ("whiskers", "sleep"),
    ("snow", "peak", "climb"),
    ("lights", "quiet"),
    ("flowers", "sun", "water"),
    ("piano", "song"),
    ("window", "tickets"),
    ("cold", "fire", "tea"),
    ("pizza", "cheese"),
)


def default_tasks() -> dict[str, list[Constraint]]:
    """Ten fixed prompts per task: ``{"lipogram": [...], "word_count": [...], "keywords": [...]}``."""
    return {
        "lipogram": [Lipogram(id=f"lipogram-{i}", topic=t) for i, t in enumerate(_TOPICS)],
        "word_count": [
            WordCount(id=f"word_count-{i}", topic=t, k=k) for i, (t, k) in enumerate(zip(_TOPICS, _WORD_COUNTS))
        ],
        "keywords": [
            KeywordInclusion(id=f"keywords-{i}", topic=t, keywords=kw)
            for i, (t, kw) in enumerate(zip(_TOPICS, _KEYWORDS))
        ],
    }
