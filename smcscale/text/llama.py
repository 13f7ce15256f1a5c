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

**Layers are stacked** (every weight has a leading layer axis) and the forward pass is a
``lax.scan`` over layers, so the compiled graph is one layer deep whatever the depth.

**KV cache.** ``KVCache.k`` and ``.v`` have the fixed shape
``[layers, particles, max_len, kv_heads, head_dim]``. Inside the layer scan each layer
attends over its (read-only) cache slice plus the new tokens' keys/values; the new
keys/values of all layers are written with one ``dynamic_update_slice`` after the scan.
Under ``jit`` with the cache donated, XLA updates it in place: the cache is never copied
per token. Positions are shared by all particles (text SMC advances every particle one
token per decode step; finished particles are masked by the sampler). Positions past the
write index are masked out of attention.

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

__all__ = ["LlamaConfig", "KVCache", "Llama", "init_cache", "unpermute_gguf_qk", "rope_tables"]


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
    """Keys and values, ``[layers, particles, max_len, kv_heads, head_dim]`` each."""

    k: jax.Array
    v: jax.Array

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    @property
    def num_particles(self) -> int:
        return self.k.shape[1]


def init_cache(config: LlamaConfig, num_particles: int, max_len: int, dtype=jnp.float32) -> KVCache:
    shape = (config.num_layers, num_particles, max_len, config.num_kv_heads, config.head_dim)
    return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


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


class Llama(nn.Module):
    """Flax (linen) Llama. ``__call__(tokens, positions, cache, write_index)``.

    Args (of ``__call__``):
      tokens: ``[B, S]`` int32 token ids.
      positions: ``[S]`` int32 absolute positions of these tokens (shared by the batch).
      cache: :class:`KVCache` with batch ``B`` (or ``None`` for a cache-free forward pass,
        then attention is causal within ``tokens``).
      write_index: scalar int, cache slot of ``tokens[:, 0]`` (normally ``positions[0]``).

    Returns:
      ``(logits [B, S, V] float32, new_cache, hidden [B, S, D])``; ``hidden`` is the final
      normed hidden state (for heads such as learned PRMs).
    """

    config: LlamaConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, tokens, positions, cache: Optional[KVCache] = None, write_index=0):
        c = self.config
        L, D, F = c.num_layers, c.hidden_size, c.intermediate_size
        H, KV, hd = c.num_heads, c.num_kv_heads, c.head_dim
        init = nn.initializers.normal(0.02)
        ones = nn.initializers.ones
        p = lambda name, shape, i=init: self.param(name, i, shape, self.dtype)  # noqa: E731
        embed = p("embed", (c.vocab_size, D))
        layers = {
            "attn_norm": p("attn_norm", (L, D), ones),
            "wq": p("wq", (L, D, H * hd)),
            "wk": p("wk", (L, D, KV * hd)),
            "wv": p("wv", (L, D, KV * hd)),
            "wo": p("wo", (L, H * hd, D)),
            "mlp_norm": p("mlp_norm", (L, D), ones),
            "w_gate": p("w_gate", (L, D, F)),
            "w_up": p("w_up", (L, D, F)),
            "w_down": p("w_down", (L, F, D)),
        }
        if c.attention_bias:
            zeros = nn.initializers.zeros
            layers["bq"] = p("bq", (L, H * hd), zeros)
            layers["bk"] = p("bk", (L, KV * hd), zeros)
            layers["bv"] = p("bv", (L, KV * hd), zeros)
        final_norm = p("final_norm", (D,), ones)
        head = None if c.tie_embeddings else p("lm_head", (D, c.vocab_size))
        return forward(c, embed, layers, final_norm, head, tokens, positions, cache, write_index, self.dtype)


def forward(c: LlamaConfig, embed, layers, final_norm, head, tokens, positions, cache, write_index, dtype):
    """The pure forward pass behind :class:`Llama` (see its docstring)."""
    B, S = tokens.shape
    H, KV, hd = c.num_heads, c.num_kv_heads, c.head_dim
    G = H // KV
    x = jnp.take(embed, tokens, axis=0).astype(dtype)  # [B, S, D]
    cos, sin = rope_tables(positions, hd, c.rope_theta)  # [S, hd]
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    scale = 1.0 / np.sqrt(hd)

    def rope(t):
        tf = t.astype(jnp.float32)
        return (tf * cos + _rotate_half(tf) * sin).astype(dtype)

    use_cache = cache is not None
    # Keys seen by a query at position p: the cache slots j < write_index (written by earlier
    # calls) and this call's own tokens at positions <= p. The cache is read per layer but
    # only written once, after the layer scan: one in-place update of S slots per call.
    self_mask = positions[None, :] <= positions[:, None]  # [S, S]
    if use_cache:
        M = cache.k.shape[2]
        old_mask = jnp.broadcast_to(jnp.arange(M)[None, :] < write_index, (S, M))
        mask = jnp.concatenate([old_mask, self_mask], axis=1)  # [S, M + S]
    else:
        mask = self_mask

    def layer(h, xs):
        lp, old_k, old_v = xs
        a = _rms_norm(h, lp["attn_norm"], c.rms_norm_eps)
        q = a @ lp["wq"]
        k = a @ lp["wk"]
        v = a @ lp["wv"]
        if c.attention_bias:
            q, k, v = q + lp["bq"], k + lp["bk"], v + lp["bv"]
        q = rope(q.reshape(B, S, H, hd))
        k = rope(k.reshape(B, S, KV, hd))
        v = v.reshape(B, S, KV, hd)
        if use_cache:
            keys = jnp.concatenate([old_k.astype(dtype), k], axis=1)  # [B, M + S, KV, hd]
            vals = jnp.concatenate([old_v.astype(dtype), v], axis=1)
        else:
            keys, vals = k, v
        qg = q.reshape(B, S, KV, G, hd)
        scores = jnp.einsum("bskgd,bmkd->bkgsm", qg, keys, preferred_element_type=jnp.float32) * scale
        scores = jnp.where(mask[None, None, None], scores, -jnp.inf)
        probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
        att = jnp.einsum("bkgsm,bmkd->bskgd", probs, vals).reshape(B, S, H * hd)
        h = h + att @ lp["wo"]
        m = _rms_norm(h, lp["mlp_norm"], c.rms_norm_eps)
        h = h + (jax.nn.silu(m @ lp["w_gate"]) * (m @ lp["w_up"])) @ lp["w_down"]
        return h, (k, v)

    if use_cache:
        xs = (layers, cache.k, cache.v)
    else:
        xs = (layers, None, None)
    x, (new_k, new_v) = jax.lax.scan(layer, x, xs)
    if use_cache:
        zero = jnp.zeros((), jnp.int32)
        idx = (zero, zero, jnp.asarray(write_index, jnp.int32), zero, zero)
        new_cache = KVCache(
            jax.lax.dynamic_update_slice(cache.k, new_k.astype(cache.k.dtype), idx),
            jax.lax.dynamic_update_slice(cache.v, new_v.astype(cache.v.dtype), idx),
        )
    else:
        new_cache = None
    hidden = _rms_norm(x, final_norm, c.rms_norm_eps)
    if head is None:  # tied: contract with the embedding matrix directly (no transpose copy)
        logits = jnp.einsum("bsd,vd->bsv", hidden, embed, preferred_element_type=jnp.float32)
    else:
        logits = jnp.einsum("bsd,dv->bsv", hidden, head, preferred_element_type=jnp.float32)
    return logits, new_cache, hidden
