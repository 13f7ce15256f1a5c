"""Constrained generation tasks: lipogram, exact word count, keyword inclusion.

Each task is a small object with

* ``prompt_messages()`` — chat messages for a chat template;
* ``check(text) -> bool`` — whether a finished generation satisfies the constraint;
* ``prefix_ok(text_so_far) -> bool`` — ``False`` as soon as *no* continuation of the prefix
  can satisfy the constraint (so a potential may kill the particle there); ``True`` means
  some continuation still can. ``check(t)`` implies ``prefix_ok(t)``.

:class:`Lipogram` also has ``token_allowed(token_string)`` for token masks. All functions take
*decoded* text (not byte-level BPE symbols such as ``"Ġthe"``; decode tokens first).

:func:`default_tasks` gives a fixed list of 10 prompts per task.
"""

from __future__ import annotations

import abc
import dataclasses
import re
import unicodedata

__all__ = [
    "Constraint",
    "Lipogram",
    "WordCount",
    "KeywordInclusion",
    "count_words",
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
