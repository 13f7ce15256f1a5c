"""Hugging Face-layout checkpoints (Llama, Qwen2): a tiny random model written by the test,
loaded by smcscale, checked against an independent numpy implementation of the architecture."""

import json

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from smcscale.text import CheckpointError, JaxLM, load_hf
from smcscale.text.llama import unpermute_gguf_qk

V, D, F, L, H, KV = 50, 32, 48, 2, 4, 2
HD = D // H


def _weights(arch, tied, seed=0):
    rng = np.random.default_rng(seed)
    w = lambda *s: (0.2 * rng.standard_normal(s)).astype(np.float32)  # noqa: E731
    t = {"model.embed_tokens.weight": w(V, D), "model.norm.weight": 1 + w(D)}
    for i in range(L):
        b = f"model.layers.{i}."
        t[b + "input_layernorm.weight"] = 1 + w(D)
        t[b + "post_attention_layernorm.weight"] = 1 + w(D)
        t[b + "self_attn.q_proj.weight"] = w(H * HD, D)
        t[b + "self_attn.k_proj.weight"] = w(KV * HD, D)
        t[b + "self_attn.v_proj.weight"] = w(KV * HD, D)
        t[b + "self_attn.o_proj.weight"] = w(D, H * HD)
        t[b + "mlp.gate_proj.weight"] = w(F, D)
        t[b + "mlp.up_proj.weight"] = w(F, D)
        t[b + "mlp.down_proj.weight"] = w(D, F)
        if arch == "Qwen2ForCausalLM":
            t[b + "self_attn.q_proj.bias"] = w(H * HD)
            t[b + "self_attn.k_proj.bias"] = w(KV * HD)
            t[b + "self_attn.v_proj.bias"] = w(KV * HD)
    if not tied:
        t["lm_head.weight"] = w(V, D)
    return t


def _config(arch, tied):
    return {
        "architectures": [arch],
        "vocab_size": V,
        "hidden_size": D,
        "intermediate_size": F,
        "num_hidden_layers": L,
        "num_attention_heads": H,
        "num_key_value_heads": KV,
        "rope_theta": 500.0,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": tied,
        "max_position_embeddings": 128,
    }


def _write(tmp_path, arch, tied, shards=1):
    t = _weights(arch, tied)
    (tmp_path / "config.json").write_text(json.dumps(_config(arch, tied)))
    if shards == 1:
        save_file(t, str(tmp_path / "model.safetensors"))
    else:
        names = sorted(t)
        wmap = {}
        for s in range(shards):
            part = {k: t[k] for k in names[s::shards]}
            fn = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            save_file(part, str(tmp_path / fn))
            wmap.update({k: fn for k in part})
        (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wmap}))
    return t


def _reference_logits(t, cfg, ids):
    """Independent numpy Llama/Qwen2 forward (Hugging Face conventions, rotate-half RoPE)."""
    x = t["model.embed_tokens.weight"][ids].astype(np.float64)
    S = len(ids)
    eps, theta = cfg["rms_norm_eps"], cfg["rope_theta"]
    inv = theta ** (-np.arange(0, HD, 2) / HD)
    ang = np.arange(S)[:, None] * inv[None]
    cos, sin = np.cos(np.concatenate([ang, ang], 1)), np.sin(np.concatenate([ang, ang], 1))

    def rms(v, g):
        return v / np.sqrt((v**2).mean(-1, keepdims=True) + eps) * g

    def rope(v):  # v: [S, heads, HD]
        half = np.concatenate([-v[..., HD // 2 :], v[..., : HD // 2]], -1)
        return v * cos[:, None] + half * sin[:, None]

    for i in range(L):
        b = f"model.layers.{i}."
        a = rms(x, t[b + "input_layernorm.weight"])
        q = a @ t[b + "self_attn.q_proj.weight"].T + t.get(b + "self_attn.q_proj.bias", 0)
        k = a @ t[b + "self_attn.k_proj.weight"].T + t.get(b + "self_attn.k_proj.bias", 0)
        v = a @ t[b + "self_attn.v_proj.weight"].T + t.get(b + "self_attn.v_proj.bias", 0)
        q, k, v = rope(q.reshape(S, H, HD)), rope(k.reshape(S, KV, HD)), v.reshape(S, KV, HD)
        out = np.zeros((S, H, HD))
        for h in range(H):
            kh = h // (H // KV)
            sc = q[:, h] @ k[:, kh].T / np.sqrt(HD)
            sc = np.where(np.tril(np.ones((S, S), bool)), sc, -np.inf)
            p = np.exp(sc - sc.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            out[:, h] = p @ v[:, kh]
        x = x + out.reshape(S, H * HD) @ t[b + "self_attn.o_proj.weight"].T
        m = rms(x, t[b + "post_attention_layernorm.weight"])
        g = m @ t[b + "mlp.gate_proj.weight"].T
        x = x + ((g / (1 + np.exp(-g))) * (m @ t[b + "mlp.up_proj.weight"].T)) @ t[b + "mlp.down_proj.weight"].T
    x = rms(x, t["model.norm.weight"])
    head = t.get("lm_head.weight", t["model.embed_tokens.weight"])
    return x @ head.T


@pytest.mark.parametrize(
    "arch, tied, shards",
    [("LlamaForCausalLM", False, 1), ("Qwen2ForCausalLM", True, 1), ("LlamaForCausalLM", True, 3)],
)
def test_hf_checkpoint_matches_numpy_reference(tmp_path, arch, tied, shards):
    t = _write(tmp_path, arch, tied, shards)
    config, params = load_hf(tmp_path)
    assert config.architecture == arch and config.attention_bias == (arch == "Qwen2ForCausalLM")
    lm = JaxLM(config, params)
    ids = [3, 17, 42, 0, 9, 9, 31, 5, 48, 2]
    ref = _reference_logits(t, _config(arch, tied), ids)
    np.testing.assert_allclose(np.asarray(lm.logits(ids)), ref, atol=2e-4, rtol=1e-4)
    # prefill + cached decoding reproduce the same logits
    st = lm.prefill(ids[:4], 2, 16)
    np.testing.assert_allclose(np.asarray(st.logits[1]), ref[3], atol=2e-4)
    import jax.numpy as jnp

    for j in range(4, len(ids)):
        mask = jnp.zeros((2, V), bool).at[:, ids[j]].set(True)
        st, out = lm.decode_step(st, jax.random.key(j), mask=mask)
        np.testing.assert_allclose(np.asarray(st.logits[0]), ref[j], atol=2e-4)


def test_wrong_checkpoint_layouts(tmp_path):
    with pytest.raises(CheckpointError, match="not a directory"):
        load_hf(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no config.json"):
        load_hf(tmp_path)
    cfg = _config("GPT2LMHeadModel", True)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="architecture 'GPT2LMHeadModel' is not supported"):
        load_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(_config("LlamaForCausalLM", True)))
    with pytest.raises(CheckpointError, match="no \\*.safetensors"):
        load_hf(tmp_path)
    t = _weights("LlamaForCausalLM", True)
    del t["model.layers.1.mlp.up_proj.weight"]
    save_file(t, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="missing tensor 'model.layers.1.mlp.up_proj.weight'"):
        load_hf(tmp_path)
    t = _weights("LlamaForCausalLM", True)
    t["model.layers.0.self_attn.k_proj.weight"] = t["model.layers.0.self_attn.q_proj.weight"]
    save_file(t, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="k_proj.weight has shape \\(32, 32\\), expected \\(16, 32\\)"):
        load_hf(tmp_path)
    bad = _config("LlamaForCausalLM", True)
    del bad["hidden_size"]
    (tmp_path / "config.json").write_text(json.dumps(bad))
    with pytest.raises(CheckpointError, match="lacks the field 'hidden_size'"):
        load_hf(tmp_path)


def test_gguf_qk_unpermute_inverts_llama_cpp_permutation():
    rng = np.random.default_rng(0)
    for heads, hd, din in [(9, 64, 576), (3, 64, 576), (4, 8, 5)]:
        w = rng.standard_normal((heads * hd, din))
        # llama.cpp's convert script: reshape(h, 2, d/2, in).swapaxes(1, 2)
        permuted = w.reshape(heads, 2, hd // 2, din).swapaxes(1, 2).reshape(w.shape)
        np.testing.assert_array_equal(unpermute_gguf_qk(permuted, heads), w)
