"""Built-in models: the linear-Gaussian SSM (with exact Kalman reference) and stochastic volatility."""

from . import lgssm, stochastic_volatility

__all__ = ["lgssm", "stochastic_volatility"]
