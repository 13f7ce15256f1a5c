r"""A Llama-architecture causal LM in Flax with a fixed-shape, particle-batched KV cache.

Architecture (Touvron et al. 2023; the SmolLM2 and Qwen2 families are instances):

    h_0 = E[token]
    for each layer l:
        a   = RMSNorm(h) ;  q, k, v = a W_q (+b_q), a W_k (+b_k), a W_v (+b_v)
        q, k = RoPE(q, pos), RoPE(k, pos)                 # rotate-half convention
        h  += softmax(q k^T / sqrt(d) + causal mask) v W_o  # grouped-query attention
        m   = RMSNorm(h) ;  h += (silu(m W_gate) * (m W_up)) W_down
    logits = RMSNorm(h) E^T      (tied embeddings; a separate head if untied)

with RMSNorm(x) = x / sqrt(mean(x^2) + eps) * g, and RoPE rotating pairs
``(x_i, x_{i + d/2})`` by the angle ``pos * theta^{-2i/d}``. Grouped-query attention
shares each of the ``n_kv`` key/value heads among ``n_heads / n_kv`` query heads.

**Layers are separate arrays.** Every layer has its own weight arrays (parameter
``layer_{l}``) and the forward pass is a Python loop over layers, unrolled into the compiled
graph. A stacked ``[layers, ...]`` weight array scanned with ``lax.scan`` would be cheaper to
compile, but XLA's CPU backend materialises each ``dynamic_slice`` feeding a matrix product,
i.e. it would copy every weight matrix (and cache slice) once per token -- about as much
memory traffic as the matrix products themselves.

**KV cache.** ``KVCache.k`` and ``.v`` are tuples with one array per layer, of the fixed
shapes ``[particles, kv_heads, head_dim, max_len]`` (keys, stored transposed) and
``[particles, kv_heads, max_len, head_dim]`` (values). Both attention products are then
plain batched matrix products ``q K^T`` = ``[G, hd] @ [hd, M]`` and ``P V`` =
``[G, M] @ [M, hd]`` per particle and head, read in place (with keys stored like values,
the score product contracts the minor axis of a 3-row product, which XLA's CPU kernels
run ~2x slower). A call with ``S`` tokens
first writes their keys/values to slots ``write_index .. write_index + S - 1`` (one
``dynamic_update_slice`` per layer), then query ``s`` attends to the slots
``j <= write_index + s`` of the updated cache:

    att_s = softmax_j( q_s K_j^T / sqrt(d) ; j <= write_index + s ) V,

i.e. to the earlier calls' tokens and its own causal prefix; unwritten (or stale) slots are
masked. Writing before reading makes the cache reads depend on the write, so under ``jit``
with the cache donated XLA updates it in place: the cache is never copied per token, and
the new keys are never concatenated to it. Positions are shared by all particles (text SMC
advances every particle one token per decode step; finished particles are masked by the
sampler).

**Shared prompt.** All particles of an SMC sweep continue one prompt. A
:class:`PrefixCache` stores the prompt's keys and values once (batch 1) and only the
continuations per particle; :func:`attend_shared` takes one softmax over both parts. The
result equals attention over per-particle copies of the prompt, but the prompt is read once
per step instead of once per particle (SmolLM2, a 215-token prompt and 64 particles, on
the 2-core development machine with other jobs running: the decode step took 594 ms
against 678 ms; one layer's attention 3.7 ms against 5.9 ms), and resampling copies only
the continuations.

**Memory and dtype.** Weights and cache are held in ``dtype`` (float32 by default).
SmolLM2-135M in float32 is ~0.54 GB of weights; its cache costs
``2 * 30 * 3 * 64 * 4`` B = 46 KB per token per particle (16 particles x 256 tokens ≈ 190 MB).
bfloat16 halves both, but on CPUs without native bf16 dot products it is slower; use it on
GPU/TPU. Softmax, RMSNorm statistics and logits are computed in float32 either way.

**GGUF layout.** llama.cpp's converter permutes the rows of ``W_q`` and ``W_k`` so that
RoPE can act on adjacent pairs (interleaved convention). :func:`unpermute_gguf_qk` undoes
it, so GGUF and Hugging Face checkpoints share one rotate-half implementation.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["LlamaConfig", "KVCache", "PrefixCache", "Llama", "init_cache", "unpermute_gguf_qk", "rope_tables",
           "LAYER_PARAMS"]


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Hyper-parameters of a Llama-family model."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    tie_embeddings: bool = True
    attention_bias: bool = False  # Qwen2: biases on q, k, v
    max_position: int = 8192
    architecture: str = "llama"

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")


class KVCache(NamedTuple):
    """Per-layer tuples of keys ``k[l]: [particles, kv_heads, head_dim, max_len]`` (transposed)
    and values ``v[l]: [particles, kv_heads, max_len, head_dim]``."""

    k: tuple
    v: tuple

    @property
    def max_len(self) -> int:
        return self.v[0].shape[2]

    @property
    def num_particles(self) -> int:
        return self.k[0].shape[0]


class PrefixCache(NamedTuple):
    """A prompt shared by every particle, stored once, and each particle's continuation.

    Attributes:
      prefix: :class:`KVCache` of batch 1 holding the prompt (slots ``>= length`` are
        padding, never attended to).
      length: ``()`` int32, the prompt's number of tokens.
      suffix: :class:`KVCache` of batch ``N``: slot ``j`` of row ``i`` holds particle ``i``'s
        token at position ``length + j``.

    Attention splits over the two parts with one softmax (see :func:`attend_shared`), so the
    result equals attention over a per-particle copy of the prompt, while the prompt's keys
    and values are read once per step instead of once per particle, and resampling or
    dropping rows copies only the continuations.
    """

    prefix: KVCache
    length: Any
    suffix: KVCache

    @property
    def num_particles(self) -> int:
        return self.suffix.num_particles


def init_cache(config: LlamaConfig, num_particles: int, max_len: int, dtype=jnp.float32) -> KVCache:
    """An all-zero :class:`KVCache` (every slot masked until written)."""
    shape_k = (num_particles, config.num_kv_heads, config.head_dim, max_len)
    shape_v = (num_particles, config.num_kv_heads, max_len, config.head_dim)
    zeros = lambda shape: tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers))  # noqa: E731
    return KVCache(zeros(shape_k), zeros(shape_v))


def unpermute_gguf_qk(w: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation (interleaved RoPE -> rotate-half RoPE).

    ``w`` has shape ``(num_heads * head_dim, in_features)`` (PyTorch ``Linear`` layout).
    llama.cpp stores ``w.reshape(h, 2, d/2, in).swapaxes(1, 2)``; this is its inverse.
    """
    out, rest = w.shape[0], w.shape[1:]
    d = out // num_heads
    return w.reshape(num_heads, d // 2, 2, *rest).swapaxes(1, 2).reshape(w.shape)


def rope_tables(positions, head_dim: int, theta: float):
    """cos/sin tables of shape ``positions.shape + (head_dim,)`` (rotate-half layout)."""
    inv = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    ang = positions[..., None].astype(jnp.float32) * jnp.asarray(inv, jnp.float32)
    ang = jnp.concatenate([ang, ang], axis=-1)
    return jnp.cos(ang), jnp.sin(ang)


def _rotate_half(x):
    h = x.shape[-1] // 2
    return jnp.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def _rms_norm(x, g, eps):
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return (y * g.astype(jnp.float32)).astype(x.dtype)


LAYER_PARAMS = ("attn_norm", "wq", "wk", "wv", "wo", "mlp_norm", "w_gate", "w_up", "w_down")
"""Names of one layer's parameters (plus ``bq``, ``bk``, ``bv`` with ``attention_bias``)."""


class Llama(nn.Module):
    """Flax (linen) Llama. ``__call__(tokens, positions, cache, write_index)``.

    Parameters: ``embed [V, D]``, ``final_norm [D]``, ``lm_head [D, V]`` (untied only) and,
    per layer ``l``, a dict ``layer_{l}`` of :data:`LAYER_PARAMS` (``x @ W`` orientation).

    Args (of ``__call__``):
      tokens: ``[B, S]`` int32 token ids.
      positions: ``[S]`` int32 absolute positions of these tokens (shared by the batch).
      cache: :class:`KVCache` with batch ``B``, a :class:`PrefixCache` (a shared prompt and
        ``B`` continuations), or ``None`` for a cache-free forward pass (then attention is
        causal within ``tokens``).
      write_index: scalar int, position of ``tokens[:, 0]`` (normally ``positions[0]``): its
        cache slot (its suffix slot ``write_index - length`` in a :class:`PrefixCache`).

    Returns:
      ``(logits [B, S, V] float32, new_cache, hidden [B, S, D])``; ``hidden`` is the final
      normed hidden state (for heads such as learned PRMs).
    """

    config: LlamaConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, tokens, positions, cache: Optional[KVCache] = None, write_index=0):
        c = self.config
        D, F = c.hidden_size, c.intermediate_size
        H, KV, hd = c.num_heads, c.num_kv_heads, c.head_dim
        init = nn.initializers.normal(0.02)
        ones, zeros = nn.initializers.ones, nn.initializers.zeros
        shapes = {
            "attn_norm": ((D,), ones),
            "wq": ((D, H * hd), init),
            "wk": ((D, KV * hd), init),
            "wv": ((D, KV * hd), init),
            "wo": ((H * hd, D), init),
            "mlp_norm": ((D,), ones),
            "w_gate": ((D, F), init),
            "w_up": ((D, F), init),
            "w_down": ((F, D), init),
        }
        if c.attention_bias:
            shapes.update(bq=((H * hd,), zeros), bk=((KV * hd,), zeros), bv=((KV * hd,), zeros))

        def layer_init(rng):
            rngs = jax.random.split(rng, len(shapes))
            return {n: i(r, shape, self.dtype) for r, (n, (shape, i)) in zip(rngs, shapes.items())}

        embed = self.param("embed", init, (c.vocab_size, D), self.dtype)
        layers = [self.param(f"layer_{l}", layer_init) for l in range(c.num_layers)]
        final_norm = self.param("final_norm", ones, (D,), self.dtype)
        head = None if c.tie_embeddings else self.param("lm_head", init, (D, c.vocab_size), self.dtype)
        return forward(c, embed, layers, final_norm, head, tokens, positions, cache, write_index, self.dtype)


def attend(q, keys, values, mask):
    r"""Grouped-query attention ``softmax(q K^T + mask) V``, scores and softmax in float32.

    Args:
      q: ``[B, KV, G, S, hd]`` queries (already scaled by ``1/sqrt(hd)``).
      keys: ``[B, KV, hd, T]`` (transposed), values: ``[B, KV, T, hd]``.
      mask: ``[S, T]`` bool, key ``t`` visible to query ``s`` (every row has a visible key).

    Returns ``[B, KV, G, S, hd]``.
    """
    scores = jnp.einsum("bkgsd,bkdt->bkgst", q, keys.astype(q.dtype), preferred_element_type=jnp.float32)
    probs = jax.nn.softmax(jnp.where(mask, scores, -jnp.inf), axis=-1)
    return jnp.einsum("bkgst,bktd->bkgsd", probs.astype(values.dtype), values)


def attend_shared(q, prefix_keys, prefix_values, prefix_mask, keys, values, mask):
    r"""Attention over a prefix shared by the batch and each row's own keys, one softmax:
    ``softmax([q K_p^T, q K_i^T] + masks) [V_p; V_i]`` computed as two partial products
    against a common max and normaliser (no per-row copy of the prefix).

    Args:
      q: ``[B, KV, G, S, hd]`` (already scaled).
      prefix_keys: ``[1, KV, hd, P]``, prefix_values: ``[1, KV, P, hd]``, prefix_mask: ``[S, P]``
        (every query sees at least one prefix key).
      keys, values, mask: each row's own, as in :func:`attend`.
    """
    f32 = jnp.float32
    b, kv, g, s, d = q.shape
    p = prefix_keys.shape[-1]
    # the prefix part as one plain batched product per kv head, [KV, B*G*S, hd] @ [KV, hd, P]
    # (XLA's CPU backend runs the equivalent broadcasting einsum ~2x slower)
    qt = q.transpose(1, 0, 2, 3, 4).reshape(kv, b * g * s, d)
    sp = jnp.matmul(qt, prefix_keys[0].astype(q.dtype), preferred_element_type=f32)
    sp = sp.reshape(kv, b, g, s, p).transpose(1, 0, 2, 3, 4)
    ss = jnp.einsum("bkgsd,bkdt->bkgst", q, keys.astype(q.dtype), preferred_element_type=f32)
    sp = jnp.where(prefix_mask, sp, -jnp.inf)
    ss = jnp.where(mask, ss, -jnp.inf)
    m = jax.lax.stop_gradient(jnp.maximum(jnp.max(sp, -1, keepdims=True), jnp.max(ss, -1, keepdims=True)))
    ep, es = jnp.exp(sp - m), jnp.exp(ss - m)
    z = jnp.sum(ep, -1, keepdims=True) + jnp.sum(es, -1, keepdims=True)
    pp = (ep / z).astype(prefix_values.dtype).transpose(1, 0, 2, 3, 4).reshape(kv, b * g * s, p)
    out = jnp.matmul(pp, prefix_values[0]).reshape(kv, b, g, s, d).transpose(1, 0, 2, 3, 4)
    return out + jnp.einsum("bkgst,bktd->bkgsd", (es / z).astype(values.dtype), values)


def forward(c: LlamaConfig, embed, layers, final_norm, head, tokens, positions, cache, write_index, dtype):
    """The pure forward pass behind :class:`Llama` (see its docstring); ``layers`` is the
    sequence of per-layer parameter dicts."""
    B, S = tokens.shape
    H, KV, hd = c.num_heads, c.num_kv_heads, c.head_dim
    G = H // KV
    x = jnp.take(embed, tokens, axis=0).astype(dtype)  # [B, S, D]
    cos, sin = rope_tables(positions, hd, c.rope_theta)  # [S, hd]
    cos, sin = cos[None, None], sin[None, None]  # [1, 1, S, hd] against [B, heads, S, hd]
    scale = 1.0 / np.sqrt(hd)

    def rope(t):
        tf = t.astype(jnp.float32)
        return (tf * cos + _rotate_half(tf) * sin).astype(dtype)

    shared = isinstance(cache, PrefixCache)
    rows = cache.suffix if shared else cache  # the per-particle part of the cache
    if cache is None:
        mask = positions[None, :] <= positions[:, None]  # [S, S] causal
    else:
        # This call's tokens are written to slots write_index + s first; query s then sees
        # the slots j <= write_index + s (earlier calls' tokens and its own causal prefix).
        write_index = jnp.asarray(write_index, jnp.int32)
        if shared:  # positions past the shared prompt live in the suffix
            write_index = write_index - cache.length
            prefix_mask = jnp.broadcast_to(jnp.arange(cache.prefix.max_len)[None, :] < cache.length,
                                           (S, cache.prefix.max_len))
        zero = jnp.zeros((), jnp.int32)
        idx_k, idx_v = (zero, zero, zero, write_index), (zero, zero, write_index, zero)
        mask = jnp.arange(rows.max_len)[None, :] <= write_index + jnp.arange(S)[:, None]  # [S, M]
    new_k, new_v = [], []
    for l, lp in enumerate(layers):
        a = _rms_norm(x, lp["attn_norm"], c.rms_norm_eps)
        q, k, v = a @ lp["wq"], a @ lp["wk"], a @ lp["wv"]
        if c.attention_bias:
            q, k, v = q + lp["bq"], k + lp["bk"], v + lp["bv"]
        heads = lambda t, n: t.reshape(B, S, n, hd).transpose(0, 2, 1, 3)  # noqa: E731  [B, n, S, hd]
        q = rope(heads(q, H) * scale).reshape(B, KV, G, S, hd)
        k = jnp.swapaxes(rope(heads(k, KV)), 2, 3)  # [B, KV, hd, S]: keys are kept transposed
        v = heads(v, KV).astype(dtype)  # [B, KV, S, hd]
        if cache is not None:  # in place under donation: the cache is never copied
            k = jax.lax.dynamic_update_slice(rows.k[l], k.astype(rows.k[l].dtype), idx_k)
            v = jax.lax.dynamic_update_slice(rows.v[l], v.astype(rows.v[l].dtype), idx_v)
            new_k.append(k)
            new_v.append(v)
        if shared:
            att = attend_shared(q, cache.prefix.k[l], cache.prefix.v[l], prefix_mask, k, v, mask)
        else:
            att = attend(q, k, v, mask)
        att = att.reshape(B, H, S, hd).transpose(0, 2, 1, 3).reshape(B, S, H * hd)
        x = x + att @ lp["wo"]
        m = _rms_norm(x, lp["mlp_norm"], c.rms_norm_eps)
        x = x + (jax.nn.silu(m @ lp["w_gate"]) * (m @ lp["w_up"])) @ lp["w_down"]
    new_cache = None if cache is None else KVCache(tuple(new_k), tuple(new_v))
    if shared:
        new_cache = PrefixCache(cache.prefix, cache.length, new_cache)
    hidden = _rms_norm(x, final_norm, c.rms_norm_eps)
    if head is None:  # tied: contract with the embedding matrix directly (no transpose copy)
        logits = jnp.einsum("bsd,vd->bsv", hidden, embed, preferred_element_type=jnp.float32)
    else:
        logits = jnp.einsum("bsd,dv->bsv", hidden, head, preferred_element_type=jnp.float32)
    return logits, new_cache, hidden
