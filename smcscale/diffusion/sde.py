r"""Forward noising SDEs: variance preserving (VP), variance exploding (VE) and EDM.

A forward SDE ``dx = f_t(x) dt + g_t dW`` on ``t ∈ [t_min, T]`` with a linear drift
``f_t(x) = -(λ_t / 2) x`` noises data ``x_0`` into

    x_t | x_0 ~ N(α_t x_0, σ_t² I),     α_t = exp(-½ ∫_0^t λ_s ds),   σ_t² = ∫_0^t α_t²/α_s² g_s² ds.

Samplers run it backwards in time. Everything a sampler needs is here: ``f``, ``g²``,
the divergence ``∇·f = -(λ_t / 2) d`` (the same for all particles: it only matters for
``log Z``), the marginal ``α_t``, ``σ_t``, the reverse-time grid and the prior
``N(0, (α_T² + σ_T²) I)`` (data of unit variance assumed; for VP that is ``N(0, I)``).

* **VP** (Ho et al. 2020; Song et al. 2021, "Score-based generative modeling through SDEs"):
  ``λ_t = β(t) = β_min + t (β_max − β_min)`` on ``[0, 1]``, ``g_t² = β(t)``,
  ``α_t = exp(-½ (β_min t + ½ (β_max − β_min) t²))``, ``σ_t² = 1 − α_t²``.
* **VE** (Song et al. 2021): ``f = 0``, ``σ(t) = σ_min (σ_max / σ_min)^t``,
  ``g_t² = dσ(t)²/dt = 2 log(σ_max / σ_min) σ(t)²``; the exact marginal from ``x_0`` at
  ``t = 0`` has ``α_t = 1`` and ``σ_t² = σ(t)² − σ_min²`` (not ``σ(t)²`` as in the common
  approximation), so analytic scores are exact.
* **EDM** (Karras et al. 2022, "Elucidating the design space"): time is the noise level,
  ``σ_t = t``, ``f = 0``, ``g_t² = 2t``; the reverse grid is Karras' ρ-schedule
  ``t_i = (σ_max^{1/ρ} + i/K (σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ``, ``i = 0..K`` (ρ = 7).

The SDE classes are frozen dataclasses (hashable: they can be static arguments of
``jax.jit``); their methods are pure ``jnp`` functions of ``t``. :func:`get_sde` builds one
by name and rejects unknown names.
"""

from __future__ import annotations

import abc
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["SDE", "VPSDE", "VESDE", "EDMSDE", "SDES", "get_sde"]


class SDE(abc.ABC):
    """Base class of the forward SDEs (see the module docstring). Subclasses define
    ``T``, ``t_min``, ``lam(t)`` (the drift rate, ``f = -(lam/2) x``), ``g2(t)``,
    ``alpha(t)``, ``sigma(t)`` and optionally ``time_grid``."""

    name = "sde"
    #: the "tempered noise" choice σ² = g²/B makes the target an unstable fixed point above
    #: this total exponent B (FKC paper, Skreta et al. 2025): 2 for VP, 3 for VE/EDM.
    tempered_noise_max_beta = 2.0
    T: float
    t_min: float

    @abc.abstractmethod
    def lam(self, t):
        """See the class docstring."""

    @abc.abstractmethod
    def g2(self, t):
        """See the class docstring."""

    @abc.abstractmethod
    def alpha(self, t):
        """See the class docstring."""

    @abc.abstractmethod
    def sigma(self, t):
        """See the class docstring."""

    # derived ---------------------------------------------------------------------------

    def f(self, x, t):
        """Drift ``f_t(x) = -(λ_t / 2) x``."""
        return -0.5 * self.lam(t) * x

    def g(self, t):
        return jnp.sqrt(self.g2(t))

    def div_f(self, t, dim: int):
        """``∇·f_t = -(λ_t / 2) d`` for ``x ∈ R^d`` (the same for every particle)."""
        return -0.5 * self.lam(t) * dim

    def prior_var(self):
        """Variance of the Gaussian prior ``N(0, v I)`` used at ``t = T`` (``α_T² + σ_T²``)."""
        with jax.ensure_compile_time_eval():
            return float(self.alpha(self.T)) ** 2 + float(self.sigma(self.T)) ** 2

    def time_grid(self, num_steps: int):
        """Decreasing times ``T = t_0 > t_1 > ... > t_K = t_min`` (``K = num_steps``), numpy float64."""
        if int(num_steps) < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        return np.linspace(self.T, self.t_min, int(num_steps) + 1)

    def transition(self, t_from, t_to):
        """The exact forward kernel ``x_{t_to} | x_{t_from} ~ N(a x, s² I)`` for ``t_to > t_from``;
        returns ``(a, s)`` (used to re-noise in the search-over-paths baseline)."""
        a = self.alpha(t_to) / self.alpha(t_from)
        s2 = self.sigma(t_to) ** 2 - a**2 * self.sigma(t_from) ** 2
        return a, jnp.sqrt(jnp.maximum(s2, 0.0))


@dataclasses.dataclass(frozen=True)
class VPSDE(SDE):
    """Variance-preserving SDE with the linear schedule ``β(t) = β_min + t (β_max − β_min)``."""

    beta_min: float = 0.1
    beta_max: float = 20.0
    T: float = 1.0
    t_min: float = 1e-3
    name = "vp"
    tempered_noise_max_beta = 2.0

    def __post_init__(self):
        if not (0 <= self.beta_min < self.beta_max):
            raise ValueError(f"VP SDE needs 0 <= beta_min < beta_max, got {self.beta_min}, {self.beta_max}")
        if not (0 <= self.t_min < self.T):
            raise ValueError(f"need 0 <= t_min < T, got t_min={self.t_min}, T={self.T}")

    def lam(self, t):
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def g2(self, t):
        return self.lam(t) * jnp.ones_like(jnp.asarray(t, jnp.float32))

    def _int_beta(self, t):
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def alpha(self, t):
        return jnp.exp(-0.5 * self._int_beta(t))

    def sigma(self, t):
        return jnp.sqrt(-jnp.expm1(-self._int_beta(t)))


@dataclasses.dataclass(frozen=True)
class VESDE(SDE):
    """Variance-exploding SDE, ``σ(t) = σ_min (σ_max/σ_min)^t``, exact marginal ``σ_t² = σ(t)² − σ_min²``."""

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    T: float = 1.0
    t_min: float = 1e-3
    name = "ve"
    tempered_noise_max_beta = 3.0

    def __post_init__(self):
        if not (0 < self.sigma_min < self.sigma_max):
            raise ValueError(f"VE SDE needs 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")
        if not (0 <= self.t_min < self.T):
            raise ValueError(f"need 0 <= t_min < T, got t_min={self.t_min}, T={self.T}")

    def lam(self, t):
        return jnp.zeros_like(jnp.asarray(t, jnp.float32))

    def f(self, x, t):
        return jnp.zeros_like(x)

    def g2(self, t):
        log_r = math.log(self.sigma_max / self.sigma_min)
        return 2.0 * log_r * (self.sigma_min**2) * jnp.exp(2.0 * log_r * t)

    def alpha(self, t):
        return jnp.ones_like(jnp.asarray(t, jnp.float32))

    def sigma(self, t):
        log_r = math.log(self.sigma_max / self.sigma_min)
        return self.sigma_min * jnp.sqrt(jnp.expm1(2.0 * log_r * t))


@dataclasses.dataclass(frozen=True)
class EDMSDE(SDE):
    """EDM (Karras et al. 2022): ``σ_t = t``, ``f = 0``, ``g² = 2t``, ρ-schedule time grid."""

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    name = "edm"
    tempered_noise_max_beta = 3.0

    def __post_init__(self):
        if not (0 < self.sigma_min < self.sigma_max):
            raise ValueError(f"EDM needs 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")
        if self.rho <= 0:
            raise ValueError(f"EDM needs rho > 0, got {self.rho}")

    @property
    def T(self):  # noqa: N802 (the SDE interface)
        return self.sigma_max

    @property
    def t_min(self):
        return self.sigma_min

    def lam(self, t):
        return jnp.zeros_like(jnp.asarray(t, jnp.float32))

    def f(self, x, t):
        return jnp.zeros_like(x)

    def g2(self, t):
        return 2.0 * t

    def alpha(self, t):
        return jnp.ones_like(jnp.asarray(t, jnp.float32))

    def sigma(self, t):
        return t * jnp.ones_like(jnp.asarray(t, jnp.float32))

    def time_grid(self, num_steps: int):
        if int(num_steps) < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        i = np.arange(int(num_steps) + 1) / int(num_steps)
        a, b = self.sigma_max ** (1.0 / self.rho), self.sigma_min ** (1.0 / self.rho)
        return (a + i * (b - a)) ** self.rho


SDES = {"vp": VPSDE, "ve": VESDE, "edm": EDMSDE}


def get_sde(sde="vp", **kwargs) -> SDE:
    """Return an SDE: an :class:`SDE` instance is returned as is; a name in :data:`SDES`
    (``"vp"``, ``"ve"``, ``"edm"``) is built with ``kwargs``. Anything else raises."""
    if isinstance(sde, SDE):
        if kwargs:
            raise ValueError("keyword arguments are only used when the SDE is given by name")
        return sde
    if isinstance(sde, str):
        try:
            cls = SDES[sde.lower()]
        except KeyError:
            raise ValueError(f"unknown SDE {sde!r}; choose one of {sorted(SDES)} or pass an smcscale.diffusion.SDE") from None
        return cls(**kwargs)
    raise TypeError(
        f"sde must be an smcscale.diffusion.SDE or one of the names {sorted(SDES)}, got {type(sde).__name__}"
    )
