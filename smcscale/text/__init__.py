"""Text front end: LLM generation as a Feynman–Kac model.

* :mod:`~smcscale.text.llama` — a Llama-family causal LM in Flax with a particle-batched KV cache;
* :mod:`~smcscale.text.checkpoints` — GGUF and Hugging Face (Llama/Qwen2) weight loaders;
* :mod:`~smcscale.text.tokenizer` — byte-level BPE tokenizer and chat template from GGUF metadata;
* :mod:`~smcscale.text.lm` — the LM protocol (prefill / decode_step / reorder), :class:`JaxLM`
  and :class:`FakeLM`;
* :mod:`~smcscale.text.potentials` — PRM protocol, step potentials (``twisted`` / ``paper``),
  token-mask constraints;
* :mod:`~smcscale.text.sampler` — generation as a Feynman–Kac model: particle filter,
  particle Gibbs, parallel tempering; :mod:`~smcscale.text.search` — best-of-N, votes,
  beam search, DVTS;
* :mod:`~smcscale.text.learned_prm` — a learned PRM: a Flax head on the LM's hidden states
  trained on Math-Shepherd rollout labels, saved/loaded, evaluated against the programmatic PRM.
"""

from .checkpoints import CheckpointError, load_gguf, load_hf, load_smollm2
from .llama import KVCache, Llama, LlamaConfig, PrefixCache, init_cache
from .lm import DecodeOutput, FakeLM, FakeTokenizer, JaxLM, LanguageModel, LMState, load_default_lm, sample_next
from .tokenizer import ModelNotFoundError, Tokenizer, TokenizerError, locate_smollm2_gguf
from . import learned_prm, potentials, sampler, search
from .learned_prm import LearnedPRM, LearnedPRMError, PRMDataset, PRMHead, PRMHeadConfig
from .sampler import GenerationConfig, TextSMCResult, parallel_tempering, particle_filter, particle_gibbs

__all__ = [
    "CheckpointError",
    "load_gguf",
    "load_hf",
    "load_smollm2",
    "KVCache",
    "PrefixCache",
    "Llama",
    "LlamaConfig",
    "init_cache",
    "DecodeOutput",
    "FakeLM",
    "FakeTokenizer",
    "JaxLM",
    "LanguageModel",
    "LMState",
    "load_default_lm",
    "sample_next",
    "ModelNotFoundError",
    "Tokenizer",
    "TokenizerError",
    "locate_smollm2_gguf",
    "learned_prm",
    "LearnedPRM",
    "LearnedPRMError",
    "PRMDataset",
    "PRMHead",
    "PRMHeadConfig",
    "potentials",
    "sampler",
    "search",
    "GenerationConfig",
    "TextSMCResult",
    "particle_filter",
    "particle_gibbs",
    "parallel_tempering",
]
