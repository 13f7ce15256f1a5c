"""Task definitions for the text front end (pure Python and NumPy; JAX only inside the
functions that build :mod:`smcscale.text` objects, e.g. :func:`~.constraints.lipogram_constraint`).

A task hands its pieces to :mod:`smcscale.text` as arguments: answer functions
(``answer_fn=arithmetic.extract_answer``), PRMs (:class:`~.arithmetic.ProgrammaticPRM`),
prompt formatters, correctness checks and token constraints; :mod:`smcscale.text` never
imports this package.

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
    ProgrammaticPRM,
    corrupt_step,
    programmatic_prm_score,
    score_steps,
    split_steps,
)
from .constraints import KeywordInclusion, Lipogram, WordCount, WordCountMask, default_tasks, lipogram_constraint

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
    "ProgrammaticPRM",
    "corrupt_step",
    "score_steps",
    "split_steps",
    "KeywordInclusion",
    "Lipogram",
    "WordCount",
    "WordCountMask",
    "lipogram_constraint",
    "default_tasks",
]
