r"""Diffusion front end: Feynman–Kac correctors and FK steering on the SMC engine.

One concept per module:

* :mod:`~smcscale.diffusion.sde` — forward SDEs (VP, VE, EDM): drift, diffusion, marginals, grids;
* :mod:`~smcscale.diffusion.scores` — the score-model protocol, ε/x0 adapters, exact Gaussian
  mixtures (noised scores, products, powers, tilts, exact CFG sampling);
* :mod:`~smcscale.diffusion.fkc` — targets (annealing, products, CFG, reward tilts), the FKC
  Feynman–Kac model run by :func:`smcscale.run`, and the plain sampler;
* :mod:`~smcscale.diffusion.steering` — FK steering potentials and noise-search baselines;
* :mod:`~smcscale.diffusion.metrics` — MMD²;
* :mod:`~smcscale.diffusion.toy` — exact 2-D targets (annealing, product, CFG) for checks;
* :mod:`~smcscale.diffusion.digits` — a class-conditional score network and classifier on
  scikit-learn's 8×8 digits, trained offline and cached (imported on first use).

It depends on the engine only (``smcscale.fk``, ``smcscale.smc``, ``smcscale.resampling``),
never on the text front end.
"""

from . import fkc, metrics, scores, sde, steering, toy
from .fkc import (
    NOISES,
    ON_DEGENERATE,
    Diagnostics,
    DiffusionDiagnosticError,
    DiffusionDiagnosticWarning,
    DiffusionParticles,
    DiffusionResult,
    Expert,
    PlainResult,
    RewardTilt,
    Target,
    anneal,
    as_target,
    cfg,
    check_scores,
    denoise_target,
    diagnose,
    euler_maruyama,
    euler_stability,
    infer_dim,
    integrate,
    product,
    reward_tilt,
    sample,
)
from .metrics import MMD, median_bandwidth, mmd2
from .scores import AnalyticScore, GaussianMixture, cfg_log_normalizer, denoise, from_eps, from_x0, sample_cfg_exact
from .sde import EDMSDE, SDE, SDES, VESDE, VPSDE, get_sde
from .toy import TOY_NAMES, ToyTarget, toy_targets
from .steering import POTENTIALS, FKSteering, SearchResult, fk_steering, path_search, random_search, zero_order_search


def __getattr__(name):  # lazy: the digits module needs flax/optax/scikit-learn only when used
    if name == "digits":
        import importlib

        return importlib.import_module(".digits", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "SDE",
    "VPSDE",
    "VESDE",
    "EDMSDE",
    "SDES",
    "get_sde",
    "GaussianMixture",
    "AnalyticScore",
    "from_eps",
    "from_x0",
    "denoise",
    "sample_cfg_exact",
    "cfg_log_normalizer",
    "Expert",
    "RewardTilt",
    "Target",
    "anneal",
    "product",
    "cfg",
    "reward_tilt",
    "sample",
    "euler_maruyama",
    "integrate",
    "check_scores",
    "as_target",
    "infer_dim",
    "denoise_target",
    "diagnose",
    "Diagnostics",
    "euler_stability",
    "ON_DEGENERATE",
    "DiffusionDiagnosticWarning",
    "DiffusionDiagnosticError",
    "DiffusionParticles",
    "DiffusionResult",
    "PlainResult",
    "NOISES",
    "FKSteering",
    "POTENTIALS",
    "fk_steering",
    "SearchResult",
    "random_search",
    "zero_order_search",
    "path_search",
    "MMD",
    "mmd2",
    "ToyTarget",
    "toy_targets",
    "TOY_NAMES",
    "median_bandwidth",
    "fkc",
    "scores",
    "sde",
    "steering",
    "metrics",
    "toy",
    "digits",
]
