r"""Exact 2-D targets for checking samplers: annealing, product of experts, CFG.

Each :class:`ToyTarget` bundles a :class:`~smcscale.diffusion.fkc.Target` built from analytic
mixture scores (exact under VP/VE noising), an exact sampler of its ``t = 0`` law, and its
normaliser ``log ∫ Π q_i^{β_i}`` (exact for annealing and products; a Monte Carlo estimate
for CFG). They are the targets of the tests, the benchmark and the notebook:

* ``"anneal"``: ``q^3`` with ``q = ½ N((−2, 0), 0.4² I) + ½ N((2, 0), 0.8² I)``. Annealing
  favours the narrow mode by ``(0.8/0.4)^{2(β−1)} = 16``: the exact law puts 94% of its mass
  there; the naive sampler (score ``3 s``) cannot see widths and misses it.
* ``"product"``: ``q_1 q_2`` with ``q_1`` modes at ``(∓1.5, ∓1.5)`` and ``q_2`` at ``(∓1.5, ±1.5)``
  (std 0.8, equal weights): the product lives where they overlap, near ``(1.5, 1.5)``, plus
  thin cross terms.
* ``"cfg"``: three classes ``N((−2, 0))``, ``N((2, 0))``, ``N((0, 2.5))`` (std 0.8, equal
  weights), guidance ``q(x|0)^3 q(x)^{−2}``, sampled exactly by rejection.
"""

from __future__ import annotations

from typing import Callable

import jax

from .fkc import Target, anneal, cfg, product
from .scores import GaussianMixture, cfg_log_normalizer, sample_cfg_exact

__all__ = ["ToyTarget", "toy_targets", "TOY_NAMES"]

TOY_NAMES = ("anneal", "product", "cfg")


class ToyTarget:
    """``name``, ``target`` (a :class:`~smcscale.diffusion.fkc.Target`), ``sample_exact(key, n)``,
    ``log_z`` (log of the normaliser of the ``t = 0`` target; computed on first access) and
    ``description``."""

    def __init__(self, name: str, target: Target, sample_exact: Callable, log_z: Callable, description: str):
        self.name, self.target, self.sample_exact, self.description = name, target, sample_exact, description
        self._log_z, self._log_z_value = log_z, None

    @property
    def log_z(self) -> float:
        if self._log_z_value is None:
            self._log_z_value = float(self._log_z())
        return self._log_z_value

    def __repr__(self):
        return f"ToyTarget({self.name!r}: {self.description})"


def toy_targets(sde) -> dict:
    """``{name: ToyTarget}`` for ``"anneal"``, ``"product"``, ``"cfg"`` under ``sde``."""
    q = GaussianMixture.create([0.5, 0.5], [[-2.0, 0.0], [2.0, 0.0]], stds=[0.4, 0.8])
    q_cube = q.power(3)
    q1 = GaussianMixture.create([0.5, 0.5], [[-1.5, -1.5], [1.5, 1.5]], stds=[0.8, 0.8])
    q2 = GaussianMixture.create([0.5, 0.5], [[-1.5, 1.5], [1.5, 1.5]], stds=[0.8, 0.8])
    q12 = q1.product(q2)
    classes = GaussianMixture.create([1, 1, 1], [[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]], stds=0.8, labels=[0, 1, 2])
    return {
        "anneal": ToyTarget(
            "anneal", anneal(q.score_model(sde), 3.0), lambda k, n: q_cube.normalized().sample(k, n),
            lambda: q_cube.log_normalizer, "q^3, two modes of std 0.4 and 0.8",
        ),
        "product": ToyTarget(
            "product", product([q1.score_model(sde), q2.score_model(sde)]), lambda k, n: q12.normalized().sample(k, n),
            lambda: q12.log_normalizer, "q1 q2, two 2-mode mixtures sharing one mode",
        ),
        "cfg": ToyTarget(
            "cfg", cfg(classes.score_model(sde), 3.0, 0), lambda k, n: sample_cfg_exact(k, classes, 0, 3.0, n),
            lambda: cfg_log_normalizer(jax.random.key(0), classes, 0, 3.0, 200_000)[0], "q(x|0)^3 q(x)^-2, three classes",
        ),
    }
