r"""Token-level string automata: detect a delimiter on device, one table lookup per token.

A step of text generation ends at a delimiter such as ``"\n\n"``, which may lie inside one
token, end one token, or span several. Finding it by detokenising every particle's text on
the host costs a device-to-host copy and a Python loop per decoded token. Instead, compile
once, from the vocabulary's decoded token strings, the Knuth–Morris–Pratt automaton of the
pattern lifted from characters to tokens:

* the state ``s ∈ {0, …, m-1}`` is the length of the longest suffix of the text so far that
  is a prefix of the pattern ``P`` (``m = len(P)``); ``s = 0`` at the start of a step;
* ``next_state[s, v]`` is the state after appending token ``v``'s text, and
  ``hit[s, v]`` says whether ``P`` occurs in ``P[:s] + text(v)`` ending inside ``text(v)``
  (the step ends at this token); ``hit_end[s, v]`` is the character offset in ``text(v)``
  just after the first such occurrence (the rest of the token belongs to the next step).

Building is ``O(V · m · L)`` Python steps for ``V`` tokens of mean length ``L`` (about a
second for a 49k vocabulary and a short pattern) and is cached per ``(strings, pattern)``.
Stepping is :meth:`TokenAutomaton.step`, two gathers, inside ``jit``/``scan``/``while_loop``
for a whole batch of particles. After a hit the state restarts at 0: the automaton detects
the *end of the current step*; the caller starts the next step from the token's remainder
(or from state 0 when, as is usual, the delimiter ends the token).

Reference: Knuth, Morris & Pratt (1977), "Fast pattern matching in strings"; the token
lifting is what constrained-decoding libraries (outlines-core, llguidance) do for regular
expressions.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ..static import cached_builder

__all__ = ["TokenAutomaton", "kmp_failure", "token_automaton"]


def kmp_failure(pattern: str) -> list:
    """The KMP failure function: ``f[i]`` = length of the longest proper prefix of
    ``pattern[:i + 1]`` that is also its suffix."""
    f = [0] * len(pattern)
    k = 0
    for i in range(1, len(pattern)):
        while k and pattern[i] != pattern[k]:
            k = f[k - 1]
        if pattern[i] == pattern[k]:
            k += 1
        f[i] = k
    return f


class TokenAutomaton(NamedTuple):
    """The token-level automaton of one pattern (see the module docstring).

    Attributes:
      pattern: the delimiter string ``P``.
      next_state: ``int32 [m, V]``: state after a token (0 after a hit).
      hit: ``bool [m, V]``: the pattern ends inside this token.
      hit_end: ``int32 [m, V]``: offset in the token's text just after the match (0 if no hit).
    """

    pattern: str
    next_state: jax.Array
    hit: jax.Array
    hit_end: jax.Array

    @property
    def num_states(self) -> int:
        return len(self.pattern)

    def step(self, state, tokens):
        """``(new_state, hit)`` for a batch: ``state`` and ``tokens`` are int arrays of one
        shape (one entry per particle). Jit-, vmap- and scan-friendly."""
        state = jnp.asarray(state, jnp.int32)
        tokens = jnp.asarray(tokens, jnp.int32)
        return self.next_state[state, tokens], self.hit[state, tokens]


@cached_builder
def _build(strings: tuple, pattern: str) -> TokenAutomaton:
    m = len(pattern)
    f = kmp_failure(pattern)
    v = len(strings)
    nxt = np.zeros((m, v), np.int32)
    hit = np.zeros((m, v), bool)
    end = np.zeros((m, v), np.int32)
    for s0 in range(m):
        for t, text in enumerate(strings):
            s = s0
            for j, c in enumerate(text):
                while s and c != pattern[s]:
                    s = f[s - 1]
                if c == pattern[s]:
                    s += 1
                if s == m:
                    hit[s0, t] = True
                    end[s0, t] = j + 1
                    s = 0
                    break
            nxt[s0, t] = s
    return TokenAutomaton(pattern, jnp.asarray(nxt), jnp.asarray(hit), jnp.asarray(end))


def token_automaton(token_strings: Sequence[str], pattern: str) -> TokenAutomaton:
    """Build (once; cached) the :class:`TokenAutomaton` of ``pattern`` over a vocabulary whose
    token ``v`` decodes to ``token_strings[v]`` (special tokens: ``""``, they never advance
    the state)."""
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"pattern must be a non-empty string, got {pattern!r}")
    strings = tuple(str(s) for s in token_strings)
    if not strings:
        raise ValueError("token_strings is empty: the vocabulary needs at least one token")
    return _build(strings, pattern)
