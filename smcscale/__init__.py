"""smcscale: Sequential Monte Carlo for inference-time scaling, in JAX.

The engine (this package's top level) runs Feynman–Kac models with jitted, ESS-adaptive
particle filters. See README.md for a tour.
"""

from . import checks, csmc, kalman, learning, models, ppg, resampling, smoothing, static, stats, tempering, weights
from .fk import FeynmanKac
from .resampling import RESAMPLERS, get_resampler
from .smc import (
    FilterScan,
    ParticleCollapseError,
    ParticleCollapseWarning,
    SMCConfig,
    SMCResult,
    SMCState,
    StepHook,
    StepInfo,
    Transition,
    filter_scan,
    init,
    run,
    run_filter,
    smc_step,
    trace_genealogy,
    weighted_mean,
)
from .ssm import StateSpaceModel, auxiliary, bootstrap, guided
from .weights import ess, log_mean_exp, log_normalize, normalized_weights

__version__ = "0.1.0"

__all__ = [
    "FeynmanKac",
    "StateSpaceModel",
    "bootstrap",
    "guided",
    "auxiliary",
    "run",
    "run_filter",
    "filter_scan",
    "StepHook",
    "StepInfo",
    "Transition",
    "FilterScan",
    "init",
    "smc_step",
    "SMCConfig",
    "SMCResult",
    "SMCState",
    "ParticleCollapseError",
    "ParticleCollapseWarning",
    "weighted_mean",
    "trace_genealogy",
    "RESAMPLERS",
    "get_resampler",
    "ess",
    "log_mean_exp",
    "log_normalize",
    "normalized_weights",
    "checks",
    "static",
    "stats",
    "csmc",
    "kalman",
    "learning",
    "models",
    "ppg",
    "smoothing",
    "tempering",
    "resampling",
    "weights",
]
