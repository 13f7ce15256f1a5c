r"""Experiment runner: problems × methods × budgets × seeds, appended to JSONL, resumable.

An experiment is the grid of **units** ``(problem, method, budget N, seed)``. Each unit runs
one sampler or search method (:mod:`smcscale.text.sampler`, :mod:`smcscale.text.search`) on
one problem with compute budget ``N`` (generations / particles / beams) and is graded. Its
record (answer, correctness, budget counters, wall time, ...) is appended to
``results.jsonl`` as one line, flushed and ``fsync``-ed as soon as the unit finishes.

**Validation first.** A config is checked in full when it is built (:func:`load_config`,
:class:`ExperimentConfig`, :class:`MethodSpec`): keys, method kinds, every method's option
names against its sampler's keyword arguments (:func:`method_options`), budgets, seeds and
generation settings. :func:`run_experiment` then checks the problems and the shard before it
creates the output folder or loads the model; and a folder it created is removed again if
the run fails before its first result (an option value only the sampler can refuse), so a
corrected config never meets a folder that refuses it.

**Resuming.** On start the runner reads ``results.jsonl``; a unit whose id is already there
is skipped, so a rerun after a crash or ``kill -9`` redoes nothing that finished and loses
nothing. A torn last line (a kill in the middle of a write) is detected (it does not end
with a newline or does not parse) and cut off. ``config.json`` in the output folder records
the settings that change results (task, split, LM, PRM, generation settings, method
options); resuming with different ones is refused (use a new output folder), while
problems, budgets, seeds and methods may be added.

**Sharding.** A grid can be split over processes or machines and joined with
:func:`merge_experiments` (``smcscale merge OUT DIR...``): the folders must agree on those
settings, and a unit's key depends only on its id, so the merge equals one run of the whole
grid. Either give each process its own config (some methods, problems or seeds), or run the
same config ``n`` times with ``shard=(k, n)`` (``smcscale run --shard k/n``): shard ``k``
runs the units with ``crc32(unit id) mod n = k - 1`` (:func:`shard_units`). The deal is by
hash, not by position, so the cheap and the costly units spread evenly over the shards
and a unit stays in its shard when the grid grows (a rerun with more problems or budgets
resumes each shard in its own folder).

**Seeds.** The key of a unit is ``fold_in(key(seed), crc32("problem|method|N"))``: the same
config gives the same records, whatever the order or the number of restarts.

**Methods** (``kind`` → what runs at budget ``N``):

=======================  ==================================================================
``greedy``               temperature 0, one generation (budget-free: run at ``N = 1`` only)
``independent``          ``N`` independent samples, graded under three rules from the *same*
                         generations: ``best_of_n`` (top PRM score), ``weighted_best_of_n``
                         (largest summed score per answer) and ``majority`` (vote); the
                         record keeps every sample's answer and score (``samples``)
``beam``                 step-level beam search, ``N`` beams of width ``min(4, N)``
``dvts``                 diverse verifier tree search, ``N / min(4, N)`` subtrees
``pf``                   particle filter, ``N`` particles (twisted mode, ESS-adaptive)
``pg``                   particle Gibbs, ``iterations`` sweeps of ``N / iterations`` particles
                         (total generations ``N``; skipped when fewer than 2 per sweep)
=======================  ==================================================================

A ``pf``/``pg`` unit answers with the top-weight particle (ties, common after resampling,
go to the best PRM score: :func:`~smcscale.text.sampler.select_answer`) and, as the rule
``<name>_vote``, with the weighted majority vote; its record keeps every final particle's
answer, weight and score (``particles``).

**Summary.** Accuracy per (method, N) over problems × seeds with Wilson 95% intervals, mean
generated tokens and wall time; printed as a table, saved as ``summary.json`` and plotted as
accuracy vs budget (``accuracy_vs_budget.png``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import warnings
import zlib
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np

from smcscale.stats import wilson_interval  # re-exported: part of this module's API

__all__ = [
    "MethodSpec",
    "method_options",
    "ExperimentConfig",
    "DEFAULT_CONFIG",
    "load_config",
    "unit_id",
    "grid_problems",
    "grid_units",
    "ResultStore",
    "run_units",
    "run_experiment",
    "merge_experiments",
    "summarize",
    "format_table",
    "plot_accuracy_vs_budget",
    "wilson_interval",
    "subsampled_accuracy",
]

METHOD_KINDS = ("greedy", "independent", "beam", "dvts", "pf", "pg")
INDEPENDENT_RULES = ("best_of_n", "weighted_best_of_n", "majority")
#: suffix of the extra rule recorded for ``pf``/``pg`` units: weighted majority vote over the
#: final particles (the method's own rule is the top-weight particle, ties to the best
#: score, unless ``select="vote"``)
VOTE_SUFFIX = "_vote"


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """One method of the grid: a display ``name``, its ``kind`` (see the module docstring)
    and keyword ``options`` forwarded to the sampler (e.g. ``{"mode": "paper"}`` for ``pf``,
    ``{"iterations": 2, "ancestor_sampling": True}`` for ``pg``, ``{"beam_width": 2}``).
    The reserved option ``budgets`` overrides the grid's budgets for this method. Option
    names are checked here (:func:`method_options` lists them per kind): an unknown one is a
    ``ValueError`` naming the method, the option and the valid choices."""

    name: str
    kind: str
    options: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in METHOD_KINDS:
            raise ValueError(f"unknown method kind {self.kind!r} for method {self.name!r}; choose from {METHOD_KINDS}")
        if not isinstance(self.name, str) or not self.name or "|" in self.name:
            raise ValueError(f"method name must be non-empty and contain no '|', got {self.name!r}")
        _check_options(self.name, self.kind, self.options)

    def budgets(self, grid: Sequence[int]) -> tuple:
        """The budgets this method runs at: ``options["budgets"]`` if given (e.g. one large
        pool of independent samples to subsample from), else the grid's; greedy runs at 1."""
        if self.kind == "greedy":
            return (1,)
        return tuple(int(b) for b in self.options.get("budgets", grid))

    def sampler_options(self) -> dict:
        return {k: v for k, v in self.options.items() if k != "budgets"}

    def min_budget(self) -> int:
        if self.kind == "pg":
            return 2 * int(self.options.get("iterations", 2))
        return 1


#: the sampler or search function that runs each kind at budget ``N`` (greedy: ``best_of_n``
#: at ``N = 1``, temperature 0, without options)
_KIND_FUNCTIONS = {
    "independent": ("smcscale.text.search", "best_of_n"),
    "beam": ("smcscale.text.search", "beam_search"),
    "dvts": ("smcscale.text.search", "dvts"),
    "pf": ("smcscale.text.sampler", "particle_filter"),
    "pg": ("smcscale.text.sampler", "particle_gibbs"),
}
#: arguments the runner passes itself (the model, the problem, the budget, the key...)
_RUNNER_ARGUMENTS = frozenset({"lm", "prm", "prompt", "num_samples", "num_beams", "num_particles", "config", "key",
                               "answer_fn", "prm_context"})
#: options with positive-integer values (``budgets``: a list of them)
_POSITIVE_INT_OPTIONS = ("iterations", "beam_width")


def method_options(kind: str) -> tuple:
    """The option names a method of ``kind`` accepts in :attr:`MethodSpec.options`: the
    keyword arguments of its sampler (:mod:`smcscale.text.sampler`,
    :mod:`smcscale.text.search`) that the runner does not set itself, plus the reserved
    ``budgets``. ``greedy`` takes ``budgets`` only (it runs at ``N = 1`` anyway)."""
    import importlib
    import inspect

    if kind not in METHOD_KINDS:
        raise ValueError(f"unknown method kind {kind!r}; choose from {METHOD_KINDS}")
    names = {"budgets"}
    if kind in _KIND_FUNCTIONS:
        module, fn = _KIND_FUNCTIONS[kind]
        params = inspect.signature(getattr(importlib.import_module(module), fn)).parameters.values()
        names |= {p.name for p in params
                  if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in _RUNNER_ARGUMENTS}
    return tuple(sorted(names))


def _check_options(name: str, kind: str, options) -> None:
    """Validate a method's options up front (names, and the values the runner itself reads),
    so that a typo fails before an output folder is created or the model is loaded."""
    if not isinstance(options, dict):
        raise ValueError(f"method {name!r}: options must be a mapping, got {options!r}")
    valid = method_options(kind)
    unknown = sorted(k for k in options if k not in valid)
    if unknown:
        raise ValueError(f"method {name!r} (kind {kind!r}): unknown option{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(map(repr, unknown))}; valid options: {', '.join(valid)}")

    def positive_int(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1

    budgets = options.get("budgets", [1])
    if isinstance(budgets, (str, bytes)) or not hasattr(budgets, "__iter__") or not list(budgets) \
            or not all(positive_int(b) for b in budgets):
        raise ValueError(f"method {name!r}: option 'budgets' must be a non-empty list of positive integers, "
                         f"got {budgets!r}")
    for k in _POSITIVE_INT_OPTIONS:
        if k in options and not positive_int(options[k]):
            raise ValueError(f"method {name!r}: option {k!r} must be a positive integer, got {options[k]!r}")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """A grid of problems × methods × budgets × seeds (see the module docstring).

    Attributes:
      task: ``"arithmetic"`` (:mod:`smcscale.tasks.arithmetic`).
      split: a split of the task (``"test"``, ``"dev"``, ``"train"``, or the easier
        ``"easy-test"``...).
      problems: how many problems from the start of the split, or a list of problem ids.
      methods: :class:`MethodSpec` list.
      budgets: the budgets ``N``.
      seeds: seeds (each gives an independent run of every unit).
      lm: ``"smollm2"`` (the embedded SmolLM2-135M-Instruct).
      prm: ``"programmatic"`` (the exact arithmetic checker of the task).
      generation: keyword arguments of :class:`~smcscale.text.sampler.GenerationConfig`.
    """

    task: str = "arithmetic"
    split: str = "easy-test"
    problems: Any = 4
    methods: tuple = ()
    budgets: tuple = (1, 4)
    seeds: tuple = (0,)
    lm: str = "smollm2"
    prm: str = "programmatic"
    generation: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        fields = {f.name for f in dataclasses.fields(MethodSpec)}
        for m in self.methods:
            if not isinstance(m, MethodSpec) and (not isinstance(m, dict) or not {"name", "kind"} <= set(m) <= fields):
                raise ValueError(f"each method needs 'name' and 'kind' (and optionally 'options'), got {m!r}")
        methods = tuple(m if isinstance(m, MethodSpec) else MethodSpec(**m) for m in self.methods)
        object.__setattr__(self, "methods", methods)
        object.__setattr__(self, "budgets", tuple(int(b) for b in self.budgets))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        if not methods:
            raise ValueError("an experiment needs at least one method")
        names = [m.name for m in methods]
        if len(set(names)) != len(names):
            raise ValueError(f"method names must be unique, got {names}")
        if not self.budgets or any(b < 1 for b in self.budgets):
            raise ValueError(f"budgets must be positive integers, got {self.budgets}")
        if not self.seeds:
            raise ValueError("give at least one seed")
        if self.task != "arithmetic":
            raise ValueError(f"unknown task {self.task!r}; choose from ('arithmetic',)")
        if self.lm != "smollm2":
            raise ValueError(f"unknown lm {self.lm!r}; choose from ('smollm2',)")
        if self.prm != "programmatic":
            raise ValueError(f"unknown prm {self.prm!r}; choose from ('programmatic',)")
        from smcscale.text.sampler import GenerationConfig

        GenerationConfig(**self.generation)  # validate early, with its messages

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["methods"] = [dataclasses.asdict(m) for m in self.methods]
        d["budgets"], d["seeds"] = list(self.budgets), list(self.seeds)
        return d

    def fingerprint(self) -> dict:
        """The settings that change results (resuming with other values is refused)."""
        d = self.as_dict()
        out = {k: d[k] for k in ("task", "split", "lm", "prm", "generation")}
        out["methods"] = {m["name"]: m for m in d["methods"]}
        return out


#: The main job (``smcscale`` with no arguments): particle filtering vs best-of-N with the
#: embedded SmolLM2 on a few easy arithmetic problems, at budgets 1 and 4 (a few minutes on
#: two CPU cores). The programmatic PRM judges each step on its own, so a solution's score
#: is the product of its step scores (``aggregation="prod"``: one wrong claim anywhere sinks
#: it); with ``"last"`` a wrong step followed by a consistent final line would score as well as
#: a correct solution, and best-of-N would not improve with N (measured: see
#: ``benchmarks/results/scaling_arithmetic*``).
DEFAULT_CONFIG = ExperimentConfig(
    task="arithmetic",
    split="easy-test",
    problems=4,
    methods=(MethodSpec("pf", "pf", {"aggregation": "prod"}),
             MethodSpec("independent", "independent", {"aggregation": "prod"})),
    budgets=(1, 4),
    seeds=(0,),
    generation={"max_new_tokens": 96, "max_step_tokens": 24, "temperature": 0.8},
)


def load_config(path) -> ExperimentConfig:
    """An :class:`ExperimentConfig` from a JSON or TOML file (keys as its fields).

    Everything is validated here, before anything is written or loaded: the keys, every
    method's kind and option names (:func:`method_options`), budgets, seeds and generation
    settings. A missing file raises ``FileNotFoundError``; a file that does not parse, or
    does not validate, a ``ValueError`` whose one-line message starts with the path (and,
    for a parse error, gives the parser's line and column)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(2, "no such config file", path)
    try:
        if path.endswith(".toml"):
            import tomllib

            with open(path, "rb") as f:
                data = tomllib.load(f)
        else:
            with open(path) as f:
                data = json.load(f)
    except ValueError as e:  # tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError
        kind = "TOML" if path.endswith(".toml") else "JSON"
        raise ValueError(f"{path}: not valid {kind}: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config must be a mapping of ExperimentConfig fields")
    known = {f.name for f in dataclasses.fields(ExperimentConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path}: unknown config keys {unknown}; known: {sorted(known)}")
    try:
        return ExperimentConfig(**data)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None


def unit_id(problem_id: str, method: str, budget: int, seed: int) -> str:
    return f"{problem_id}|{method}|{int(budget)}|{int(seed)}"


def shard_units(units: Sequence[dict], shard: tuple) -> list[dict]:
    """The units of shard ``k`` of ``n`` (``shard = (k, n)``, ``1 <= k <= n``): those whose
    ``crc32(unit id) mod n`` is ``k - 1``. The ``n`` shards partition the grid."""
    k, n = _check_shard(shard)
    return [u for u in units if zlib.crc32(u["unit"].encode()) % n == k - 1]


def _check_shard(shard) -> tuple:
    try:
        k, n = (int(v) for v in shard)
        ok = all(float(v) == int(v) for v in shard)
    except (TypeError, ValueError):
        ok = False
    if not ok or not 1 <= k <= n:
        raise ValueError(f"shard must be (k, n) with integers 1 <= k <= n, got {shard!r}")
    return k, n


# ---------------------------------------------------------------------------------------
# the store: append-only JSONL


class ResultStore:
    """Append-only JSONL of unit records with crash-safe resume (see the module docstring)."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self.records: list[dict] = []
        self.done: set[str] = set()
        self._load()

    def _load(self) -> None:
        if not os.path.exists(self.path):
            return
        with open(self.path, "rb") as f:
            data = f.read()
        good = data.rfind(b"\n") + 1  # bytes up to the last complete line
        if good < len(data):
            warnings.warn(
                f"{self.path}: dropping a torn last line ({len(data) - good} bytes) left by an interrupted write",
                stacklevel=3,
            )
            with open(self.path, "r+b") as f:
                f.truncate(good)
        for n, line in enumerate(data[:good].splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{self.path}:{n}: corrupt record ({e}); fix or remove that line") from None
            if rec.get("unit") in self.done:
                raise ValueError(f"{self.path}:{n}: duplicate record for unit {rec.get('unit')!r}")
            self.records.append(rec)
            self.done.add(rec["unit"])

    def append(self, record: dict) -> None:
        if record["unit"] in self.done:
            raise ValueError(f"unit {record['unit']!r} already recorded")
        line = json.dumps(record, sort_keys=True, default=_json_default) + "\n"
        with open(self.path, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self.records.append(record)
        self.done.add(record["unit"])


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def run_units(units: Sequence[dict], solve: Callable[[dict], dict], store: ResultStore, *, progress: bool = True,
              desc: str = "units") -> list[dict]:
    """Run every unit not yet in ``store`` through ``solve(unit) -> record fields`` and
    append each record as soon as it is done. ``unit`` is a dict with at least ``"unit"``
    (its id). Returns the records of all ``units`` (old and new), in ``units`` order."""
    todo = [u for u in units if u["unit"] not in store.done]
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(units), initial=len(units) - len(todo), desc=desc, unit="unit", dynamic_ncols=True)
    try:
        for u in todo:
            rec = dict(u)
            rec.update(solve(u))
            store.append(rec)
            if bar is not None:
                bar.set_postfix_str(f"{u['unit']}", refresh=False)
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    by_id = {r["unit"]: r for r in store.records}
    return [by_id[u["unit"]] for u in units]


# ---------------------------------------------------------------------------------------
# the arithmetic task


def grid_problems(cfg: ExperimentConfig) -> list:
    """The problems of ``cfg``'s grid, in order: the first ``cfg.problems`` of
    ``cfg.split`` (an int), or the listed problem ids (a sequence of ids)."""
    from smcscale.tasks import arithmetic as A

    probs = A.load_split(cfg.split)
    if isinstance(cfg.problems, int):
        if not 1 <= cfg.problems <= len(probs):
            raise ValueError(f"problems must be in [1, {len(probs)}] for split {cfg.split!r}, got {cfg.problems}")
        return probs[: cfg.problems]
    by_id = {p.id: p for p in probs}
    missing = [i for i in cfg.problems if i not in by_id]
    if missing:
        raise ValueError(f"unknown problem ids in split {cfg.split!r}: {missing[:5]}")
    return [by_id[i] for i in cfg.problems]


def grid_units(cfg: ExperimentConfig, problems: Optional[Sequence] = None) -> list[dict]:
    """Every unit of ``cfg``'s grid (unsharded), as ``{"unit", "problem", "method", "kind",
    "budget", "seed"}`` dicts in run order; ``problems`` defaults to
    :func:`grid_problems` ``(cfg)``. A unit's ``"unit"`` is its :func:`unit_id`, the key of
    its record in ``results.jsonl``."""
    if problems is None:
        problems = grid_problems(cfg)
    out = []
    for seed in cfg.seeds:
        for p in problems:
            for m in cfg.methods:
                for n in m.budgets(cfg.budgets):
                    if n < m.min_budget():
                        continue
                    out.append({"unit": unit_id(p.id, m.name, n, seed), "problem": p.id, "method": m.name,
                                "kind": m.kind, "budget": n, "seed": seed})
    return out


def _unit_key(u: dict):
    import jax

    h = zlib.crc32(f"{u['problem']}|{u['method']}|{u['budget']}".encode())
    return jax.random.fold_in(jax.random.key(u["seed"]), h & 0x7FFFFFFF)


def _solver(cfg: ExperimentConfig, lm, problems) -> Callable[[dict], dict]:
    from smcscale.tasks import arithmetic as A
    from smcscale.text import sampler as S
    from smcscale.text import search as Q

    by_id = {p.id: p for p in problems}
    methods = {m.name: m for m in cfg.methods}
    gen = S.GenerationConfig(**cfg.generation)

    def solve(u: dict) -> dict:
        p, m, n = by_id[u["problem"]], methods[u["method"]], u["budget"]
        prompt = A.format_prompt(p)
        prm = A.ProgrammaticPRM()
        common = dict(key=_unit_key(u), answer_fn=A.extract_answer, prm_context=p.question)
        opts = m.sampler_options()
        t0 = time.perf_counter()
        rules = None
        if m.kind == "greedy":
            res = Q.best_of_n(lm, prm, prompt, 1, config=dataclasses.replace(gen, temperature=0.0), **common)
        elif m.kind == "independent":
            res = Q.best_of_n(lm, prm, prompt, n, config=gen, **common, **opts)
            rules = {r: res.info["selections"].get(r) for r in INDEPENDENT_RULES}
        elif m.kind == "beam":
            res = Q.beam_search(lm, prm, prompt, n, beam_width=opts.pop("beam_width", min(4, n)), config=gen,
                                **common, **opts)
        elif m.kind == "dvts":
            res = Q.dvts(lm, prm, prompt, n, beam_width=opts.pop("beam_width", min(4, n)), config=gen, **common, **opts)
        elif m.kind == "pf":
            res = S.particle_filter(lm, prm, prompt, n, config=gen, **common, **opts)
        elif m.kind == "pg":
            iters = int(opts.pop("iterations", 2))
            res = S.particle_gibbs(lm, prm, prompt, n // iters, iters, config=gen, **common, **opts)
        else:  # pragma: no cover - validated in MethodSpec
            raise AssertionError(m.kind)
        wall = time.perf_counter() - t0
        answers = rules if rules is not None else {m.name: res.selected_answer}
        if m.kind in ("pf", "pg") and opts.get("select", "argmax") != "vote":
            # the same particles, answered by weighted majority vote instead of the top weight
            answers[f"{m.name}{VOTE_SUFFIX}"] = S.select_answer(res.answers, res.weights, "vote")[1]
        rec = {
            "answers": {k: _plain(v) for k, v in answers.items()},
            "correct": {k: bool(v is not None and v == p.answer) for k, v in answers.items()},
            "reference_answer": p.answer,
            "num_generations": len(res.texts),
            "finish_reasons": _counts(res.finish_reasons),
            "budget_counters": res.budget.as_dict(),
            "wall_time_s": wall,
            "selected_text": res.selected_text,
        }
        if m.kind == "independent":  # the whole pool, to estimate best-of-k for k < N by subsampling
            rec["samples"] = [[_plain(a), float(sc)] for a, sc in zip(res.answers, res.scores)]
        if m.kind in ("pf", "pg"):
            rec["log_z"] = _plain(res.log_z)
            rec["posterior_accuracy"] = res.weighted(lambda a: a is not None and a == p.answer)
            rec["ess"] = np.asarray(res.ess, float).round(3).tolist()
            rec["num_resamples"] = int(np.sum(res.resampled))
            # every particle's (answer, normalised weight, PRM score r): other selection rules
            # can be computed from the record without rerunning
            rec["particles"] = [[_plain(a), round(float(w), 9), round(float(r), 6)]
                                for a, w, r in zip(res.answers, res.weights, res.scores)]
        return rec

    return solve


def _plain(v):
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else repr(v)
    try:
        return int(v) if float(v) == int(v) else float(v)
    except (TypeError, ValueError):
        return str(v)


def _counts(xs: Iterable) -> dict:
    out: dict = {}
    for x in xs:
        out[str(x)] = out.get(str(x), 0) + 1
    return out


def _fingerprint_diff(fp: dict, old_fp: dict) -> list:
    """The result-affecting settings on which two fingerprints disagree (a method present in
    both must have the same options; methods present in one only are fine)."""
    same = lambda a, b: json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # noqa: E731
    diff = sorted(k for k in set(fp) | set(old_fp) if k != "methods" and not same(fp.get(k), old_fp.get(k)))
    old_m, new_m = old_fp.get("methods", {}), fp.get("methods", {})
    return diff + [f"method {n!r}" for n in sorted(set(old_m) & set(new_m)) if not same(old_m[n], new_m[n])]


def _read_config(out_dir: str) -> Optional[dict]:
    path = os.path.join(out_dir, "config.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _write_config(cfg: ExperimentConfig, out_dir: str) -> None:
    path = os.path.join(out_dir, "config.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"config": cfg.as_dict(), "fingerprint": cfg.fingerprint()}, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def _check_resume(cfg: ExperimentConfig, out_dir: str) -> None:
    old = _read_config(out_dir)
    if old is not None:
        diff = _fingerprint_diff(cfg.fingerprint(), old.get("fingerprint", {}))
        if diff:
            raise ValueError(
                f"{out_dir} holds results of a different experiment (differs in: {', '.join(diff)}); "
                "use another output folder (--out) to start a new one"
            )
    _write_config(cfg, out_dir)


def merge_experiments(out_dir, sources: Sequence, *, echo: Callable[[str], None] = print) -> dict:
    """Merge the experiment folders ``sources`` into ``out_dir`` (created if needed; its own
    results are kept). For a grid sharded over processes or machines, each shard with its own
    ``--out``.

    Every folder (``out_dir`` too, if it has results) must agree on the settings that change
    results (task, split, LM, PRM, generation settings; a method name means the same options
    everywhere); otherwise a ``ValueError`` names the difference before anything is written.
    A unit's key depends only on its id, so a unit present in several folders is one and the
    same computation: the first copy is kept (``out_dir``'s own, then in ``sources`` order)
    and later ones are counted as ``duplicates``. The merged ``config.json`` has the union of
    the methods, budgets, seeds and problems. Merging again adds nothing.

    Returns ``{"added", "duplicates", "units"}`` (``units``: records in ``out_dir`` now).
    """
    out_dir = os.fspath(out_dir)
    sources = [os.fspath(s) for s in sources]
    if not sources:
        raise ValueError("give at least one experiment folder to merge")
    configs = []
    for d in sources:
        c = _read_config(d)
        if c is None:
            raise ValueError(f"{d} is not an experiment folder (no config.json)")
        configs.append((d, c))
    own = _read_config(out_dir)
    if own is not None:
        configs.insert(0, (out_dir, own))
    base_dir, base = configs[0]
    for d, c in configs[1:]:
        diff = _fingerprint_diff(c["fingerprint"], base["fingerprint"])
        if diff:
            raise ValueError(f"{d} and {base_dir} are different experiments (they differ in: {', '.join(diff)}); "
                             "nothing was merged")
    cfgs = [ExperimentConfig(**c["config"]) for _, c in configs]
    methods = {}
    for c in cfgs:
        for m in c.methods:
            methods.setdefault(m.name, m)
    if all(isinstance(c.problems, int) for c in cfgs):
        problems = max(c.problems for c in cfgs)
    else:
        from smcscale.tasks import arithmetic as A

        order = {p.id: i for i, p in enumerate(A.load_split(cfgs[0].split))}
        ids = {p.id for c in cfgs for p in grid_problems(c)}
        problems = sorted(ids, key=order.__getitem__)
    merged = dataclasses.replace(
        cfgs[0], methods=tuple(methods.values()), problems=problems,
        budgets=tuple(sorted({b for c in cfgs for b in c.budgets})), seeds=tuple(sorted({s for c in cfgs for s in c.seeds})),
    )
    os.makedirs(out_dir, exist_ok=True)
    _write_config(merged, out_dir)
    store = ResultStore(os.path.join(out_dir, "results.jsonl"))
    added = duplicates = 0
    for d in sources:
        if os.path.abspath(d) == os.path.abspath(out_dir):
            continue
        for rec in ResultStore(os.path.join(d, "results.jsonl")).records:  # none if it has not run
            if rec["unit"] in store.done:
                duplicates += 1
            else:
                store.append(rec)
                added += 1
    echo(f"smcscale: merged {len(sources)} folder(s) into {out_dir}: {added} units added, {duplicates} already "
         f"there; {len(store.done)} units in all")
    return {"added": added, "duplicates": duplicates, "units": len(store.done)}


def run_experiment(cfg: ExperimentConfig, out_dir, *, lm=None, progress: bool = True, plot: bool = True,
                   shard: Optional[tuple] = None, echo: Callable[[str], None] = print) -> dict:
    """Run (or resume) the grid of ``cfg``, writing into ``out_dir``: ``config.json``,
    ``results.jsonl`` (one line per unit, appended as it finishes), ``summary.json`` and
    ``accuracy_vs_budget.png``. ``lm`` defaults to the embedded SmolLM2. ``shard=(k, n)``
    runs only the ``k``-th of ``n`` parts of the grid (:func:`shard_units`; join the folders
    with :func:`merge_experiments`). Returns the summary (of the units run here).

    The problems and the shard are checked before ``out_dir`` is created or the model is
    loaded (the config itself was checked when it was built). If this call created
    ``out_dir`` and fails, or is interrupted, before the first result is recorded, the
    folder is removed again."""
    out_dir = os.fspath(out_dir)
    problems = grid_problems(cfg)
    units = grid_units(cfg, problems)
    total, part = len(units), ""
    if shard is not None:
        units = shard_units(units, shard)
        if not units:
            raise ValueError(f"shard {shard[0]}/{shard[1]} of this grid is empty ({total} units): use fewer shards")
        part = f"shard {shard[0]}/{shard[1]}: {len(units)} of "
    created = not os.path.exists(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    try:
        _check_resume(cfg, out_dir)
        store = ResultStore(os.path.join(out_dir, "results.jsonl"))
        todo = sum(u["unit"] not in store.done for u in units)
        echo(f"smcscale: {part}{total} units ({len(problems)} problems x {len(cfg.methods)} methods x budgets "
             f"{list(cfg.budgets)} x seeds {list(cfg.seeds)}); {len(units) - todo} already done in {out_dir}")
        if todo:
            if lm is None:
                from smcscale.text.lm import load_default_lm

                lm = load_default_lm()
            run_units(units, _solver(cfg, lm, problems), store, progress=progress, desc="experiment")
    except BaseException:
        # a folder this call created and that holds no result yet (the model failed to load, an
        # option value was refused by the sampler...) is removed, so that it cannot refuse the
        # corrected config on the next run
        results = os.path.join(out_dir, "results.jsonl")
        if created and (not os.path.exists(results) or os.path.getsize(results) == 0):
            import shutil

            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    records = [r for r in store.records if r["unit"] in {u["unit"] for u in units}]
    summary = summarize(records, cfg)
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2, default=_json_default)
    echo(format_table(summary))
    if plot:
        png = plot_accuracy_vs_budget(summary, os.path.join(out_dir, "accuracy_vs_budget.png"))
        summary["plot"] = png
        echo(f"plot: {png}")
    echo(f"results: {store.path}")
    return summary


# ---------------------------------------------------------------------------------------
# summary, table, plot


def summarize(records: Sequence[dict], cfg: Optional[ExperimentConfig] = None) -> dict:
    """Accuracy per (rule, budget) with Wilson 95% intervals and mean costs.

    A record of an ``independent`` unit contributes to its three rules. Greedy (budget-free)
    rows have budget 1. Returns ``{"rows": [...], "num_records": ...}``; each row has
    ``method, budget, n, correct, accuracy, ci_low, ci_high, mean_generated_tokens,
    mean_lm_forward_tokens, mean_wall_time_s``.
    """
    cells: dict = {}
    for r in records:
        for rule, ok in r["correct"].items():
            c = cells.setdefault((rule, r["budget"]), {"k": 0, "n": 0, "tok": [], "fwd": [], "wall": [], "kind": r["kind"]})
            c["k"] += bool(ok)
            c["n"] += 1
            c["tok"].append(r["budget_counters"]["generated_tokens"])
            c["fwd"].append(r["budget_counters"]["lm_forward_tokens"])
            c["wall"].append(r["wall_time_s"])
    order = []
    if cfg is not None:
        for m in cfg.methods:
            if m.kind == "independent":
                order += list(INDEPENDENT_RULES)
            else:
                order += [m.name] + ([m.name + VOTE_SUFFIX] if m.kind in ("pf", "pg") else [])
    rank = {name: i for i, name in enumerate(order)}
    rows = []
    for (rule, n), c in sorted(cells.items(), key=lambda kv: (rank.get(kv[0][0], len(rank)), kv[0][0], kv[0][1])):
        lo, hi = wilson_interval(c["k"], c["n"])
        rows.append({"method": rule, "kind": c["kind"], "budget": n, "n": c["n"], "correct": c["k"],
                     "accuracy": c["k"] / c["n"], "ci_low": lo, "ci_high": hi,
                     "mean_generated_tokens": float(np.mean(c["tok"])),
                     "mean_lm_forward_tokens": float(np.mean(c["fwd"])),
                     "mean_wall_time_s": float(np.mean(c["wall"]))})
    return {"rows": rows, "num_records": len(records)}


def subsampled_accuracy(samples: Sequence, reference, k: int, rule: str = "best_of_n", *, num_subsets: int = 200,
                        seed: int = 0) -> float:
    """Expected accuracy of ``rule`` with ``k`` samples, estimated from a pool of ``N >= k``
    independent ``(answer, score)`` samples by averaging over ``num_subsets`` random subsets
    of size ``k`` drawn without replacement (all of them when ``k = N``): an unbiased
    estimate of the best-of-k accuracy on that problem, for every ``k`` from one pool.
    ``rule`` is ``best_of_n`` (top score, ties: first), ``weighted_best_of_n`` (largest
    summed score per answer) or ``majority``."""
    from smcscale.text.sampler import majority_vote, select_answer, weighted_majority_vote

    n = len(samples)
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}] (the pool size), got {k}")
    if rule not in INDEPENDENT_RULES:
        raise ValueError(f"unknown rule {rule!r}; choose from {INDEPENDENT_RULES}")
    answers = [a for a, _ in samples]
    scores = np.array([sc for _, sc in samples], float)
    rng = np.random.default_rng(seed)
    subsets = [np.arange(n)] if k == n else [np.sort(rng.choice(n, k, replace=False)) for _ in range(num_subsets)]
    hits = 0
    for idx in subsets:
        a = [answers[i] for i in idx]
        if rule == "best_of_n":
            pick = select_answer(a, scores[idx] + 1e-300, "argmax")[1]
        elif rule == "weighted_best_of_n":
            pick = weighted_majority_vote(a, scores[idx])
        else:
            pick = majority_vote(a)
        hits += pick is not None and pick == reference
    return hits / len(subsets)


def format_table(summary: dict) -> str:
    """The summary as a fixed-width text table."""
    head = f"{'method':<20} {'N':>4} {'acc':>6} {'95% CI':>15} {'n':>4} {'gen tok':>8} {'LM fwd tok':>10} {'wall s':>7}"
    lines = [head, "-" * len(head)]
    for r in summary["rows"]:
        ci = f"[{r['ci_low']:.2f}, {r['ci_high']:.2f}]"
        lines.append(f"{r['method']:<20} {r['budget']:>4} {r['accuracy']:>6.3f} {ci:>15} {r['n']:>4} "
                     f"{r['mean_generated_tokens']:>8.0f} {r['mean_lm_forward_tokens']:>10.0f} {r['mean_wall_time_s']:>7.1f}")
    return "\n".join(lines)


def plot_accuracy_vs_budget(summary: dict, path) -> str:
    """Accuracy (with 95% intervals) vs budget ``N`` (log2 axis) and vs mean generated
    tokens, one line per method; greedy as a horizontal line. Returns the PNG path."""
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for i, m in enumerate(methods):
        rs = sorted((r for r in rows if r["method"] == m), key=lambda r: r["budget"])
        color = f"C{i % 10}"
        acc = np.array([r["accuracy"] for r in rs])
        err = np.array([[r["accuracy"] - r["ci_low"] for r in rs], [r["ci_high"] - r["accuracy"] for r in rs]])
        if rs[0]["kind"] == "greedy":
            for ax in axes:
                ax.axhline(acc[0], color=color, ls="--", lw=1, label=f"{m} (N=1)")
            continue
        xs = [r["budget"] for r in rs]
        axes[0].errorbar(xs, acc, yerr=err, marker="o", capsize=3, color=color, label=m)
        axes[1].plot([r["mean_generated_tokens"] for r in rs], acc, marker="o", color=color, label=m)
    axes[0].set_xscale("log", base=2)
    axes[0].set_xlabel("budget N (generations / particles / beams)")
    axes[1].set_xscale("log")
    axes[1].set_xlabel("mean generated tokens per problem")
    for ax in axes:
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"accuracy vs budget ({summary['num_records']} runs; 95% Wilson intervals)")
    fig.tight_layout()
    path = os.fspath(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
