"""The workflow layer: experiments, plots and the command line, on top of the library.

This subpackage sits above every other part of smcscale and uses only their public API:

- :mod:`smcscale.workflow.experiment` — experiment configs (:class:`ExperimentConfig`:
  task, methods with their options, budgets, seeds), validated in full before anything is
  written or loaded, and the resumable runner that appends each finished unit to
  ``results.jsonl`` in the output folder, so an interrupted run continues where it stopped.
- :mod:`smcscale.workflow.plots` — matplotlib figures of SMC runs (ESS traces,
  genealogies, filtering bands); the experiment's accuracy-vs-budget plot is in
  :mod:`~smcscale.workflow.experiment`.
- :mod:`smcscale.workflow.cli` — the ``smcscale`` console script (``python -m
  smcscale.workflow.cli``): demos, ``--config FILE`` runs, merging and plotting results.
  Errors are one line on stderr with exit code 2; Ctrl-C exits 130 and says how to resume.

Nothing below this layer (the engine at the top level of :mod:`smcscale`, the text,
diffusion and tasks subpackages) imports it; ``tests/test_layers.py`` checks that with
import-linter. Import the modules directly, e.g. ``from smcscale.workflow import
experiment``; this package imports nothing itself, so ``import smcscale.workflow`` stays
cheap.
"""
