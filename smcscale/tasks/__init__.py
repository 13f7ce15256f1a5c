"""Task definitions for the text front end (pure Python, no JAX).

* :mod:`~smcscale.tasks.arithmetic` — seeded multi-step arithmetic word problems with fixed
  train/dev/test splits, prompts, answer extraction and a programmatic process reward;
* :mod:`~smcscale.tasks.constraints` — constrained generation tasks (lipogram, exact word
  count, keyword inclusion) with full and prefix checks for token-mask potentials.
"""

from . import arithmetic, constraints
from .arithmetic import (
    Problem,
    check_step,
    extract_answer,
    format_prompt,
    generate_problems,
    is_correct,
    load_split,
    programmatic_prm_score,
    score_steps,
    split_steps,
)
from .constraints import KeywordInclusion, Lipogram, WordCount, default_tasks

__all__ = [
    "arithmetic",
    "constraints",
    "Problem",
    "check_step",
    "extract_answer",
    "format_prompt",
    "generate_problems",
    "is_correct",
    "load_split",
    "programmatic_prm_score",
    "score_steps",
    "split_steps",
    "KeywordInclusion",
    "Lipogram",
    "WordCount",
    "default_tasks",
]
