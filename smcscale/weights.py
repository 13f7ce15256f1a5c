"""Log-space weight arithmetic: normalisation, effective sample size, log-mean-exp.

Particle weights are always carried as **log-weights** ``lw`` (shape ``(N,)``). The
normalised weights are

    W_i = exp(lw_i - logsumexp(lw)),

and the effective sample size (Kong, Liu & Wong 1994) is

    ESS = 1 / sum_i W_i^2 = exp(-logsumexp(2 log W)),

computed entirely in log space so that weights spanning hundreds of nats neither
overflow nor underflow.

Degenerate inputs have a defined behaviour (never a silent NaN):

* ``-inf`` entries are zero weights (a "dead" particle);
* if *every* entry is ``-inf`` the population is dead: :func:`log_normalize` returns all
  ``-inf``, :func:`normalized_weights` returns all zeros, :func:`ess` returns ``0`` and
  :func:`log_mean_exp` returns ``-inf``.
* ``+inf`` and NaN are not weights; :func:`check_log_weights` (eager) raises on them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "log_normalize",
    "normalized_weights",
    "ess",
    "log_ess",
    "log_mean_exp",
    "safe_logsumexp",
    "check_log_weights",
    "reweight",
]


def safe_logsumexp(lw, axis=-1):
    """``logsumexp`` that returns ``-inf`` (not NaN) when every entry is ``-inf``."""
    lw = jnp.asarray(lw)
    m = jnp.max(lw, axis=axis, keepdims=True)
    m_safe = jnp.where(jnp.isfinite(m), m, 0.0)
    s = jnp.sum(jnp.exp(lw - m_safe), axis=axis, keepdims=True)
    out = jnp.log(s) + m_safe
    out = jnp.where(jnp.isneginf(m), -jnp.inf, out)
    return jnp.squeeze(out, axis=axis)


def reweight(log_weights, log_potentials):
    """One SMC reweighting: ``new = log_weights + log_potentials``; returns
    ``(new - logsumexp(new), logsumexp(new))``, the normalised log-weights and the
    increment of ``log Z`` (with ``log_weights`` the carried, normalised log-weights:
    ``-log N`` after a resample). A dead population (every ``new`` is ``-inf``) gives all
    ``-inf`` and an increment of ``-inf``, never NaN.

    NumPy in, NumPy out (float64, for host-side samplers such as :mod:`smcscale.text`);
    otherwise JAX (jittable). Both follow the same rule, so every sampler in the library
    weights exactly as :func:`smcscale.smc.smc_step` does.
    """
    if isinstance(log_weights, np.ndarray) and isinstance(log_potentials, np.ndarray):
        new = log_weights + log_potentials
        m = np.max(new)
        if not m > -np.inf:
            return np.full_like(new, -np.inf), -np.inf
        inc = float(m + np.log(np.sum(np.exp(new - m))))
        return new - inc, inc
    new = jnp.asarray(log_weights) + log_potentials
    inc = safe_logsumexp(new)
    return jnp.where(jnp.isfinite(inc), new - inc, -jnp.inf), inc


def log_normalize(lw, axis=-1):
    """Normalised log-weights ``lw - logsumexp(lw)``; all ``-inf`` stays all ``-inf``."""
    lw = jnp.asarray(lw)
    # (lw - max) - log sum exp(lw - max): exact shift first, so large offsets lose no precision.
    m = jnp.max(lw, axis=axis, keepdims=True)
    m_safe = jnp.where(jnp.isfinite(m), m, 0.0)
    shifted = lw - m_safe
    log_s = jnp.log(jnp.sum(jnp.exp(shifted), axis=axis, keepdims=True))
    return jnp.where(jnp.isfinite(m), shifted - log_s, -jnp.inf)


def normalized_weights(lw, axis=-1):
    """Normalised weights ``W_i = exp(lw_i) / sum_j exp(lw_j)`` (all zeros if all ``-inf``)."""
    return jnp.exp(log_normalize(lw, axis=axis))


def log_ess(lw, axis=-1):
    """``log ESS = -logsumexp(2 log W)`` with ``log W`` normalised; ``-inf`` for a dead population."""
    lnw = log_normalize(lw, axis=axis)
    b = safe_logsumexp(2.0 * lnw, axis=axis)
    return jnp.where(jnp.isfinite(b), -b, -jnp.inf)


def ess(lw, axis=-1):
    """Effective sample size ``1 / sum_i W_i^2`` in ``[1, N]`` (``0`` if all weights are zero)."""
    return jnp.exp(log_ess(lw, axis=axis))


def log_mean_exp(x, axis=-1):
    """``log( mean_i exp(x_i) )`` computed stably; ``-inf`` if all entries are ``-inf``."""
    x = jnp.asarray(x)
    n = x.shape[axis]
    return safe_logsumexp(x, axis=axis) - jnp.log(n)


def check_log_weights(lw, name: str = "log_weights") -> None:
    """Eagerly validate a log-weight vector; raise ``ValueError`` with a precise message.

    Checks: one-dimensional, floating dtype, non-empty, no NaN, no ``+inf``. Does nothing
    when ``lw`` is a JAX tracer (inside ``jit``/``vmap`` values are not available).
    """
    if isinstance(lw, jax.core.Tracer):
        _check_static(lw, name)
        return
    _check_static(lw, name)
    arr = np.asarray(lw)
    if np.isnan(arr).any():
        idx = np.flatnonzero(np.isnan(arr))[:5].tolist()
        raise ValueError(f"{name} contains NaN at indices {idx} (a log-weight must be a number or -inf)")
    if np.isposinf(arr).any():
        idx = np.flatnonzero(np.isposinf(arr))[:5].tolist()
        raise ValueError(f"{name} contains +inf at indices {idx} (weights must be finite or -inf)")


def _check_static(lw, name: str) -> None:
    shape = getattr(lw, "shape", None)
    dtype = getattr(lw, "dtype", None)
    if shape is None or dtype is None:
        raise TypeError(f"{name} must be an array, got {type(lw).__name__}")
    if len(shape) != 1:
        raise ValueError(f"{name} must have shape (N,), got {tuple(shape)}")
    if shape[0] == 0:
        raise ValueError(f"{name} is empty: need at least one particle")
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{name} must have a floating dtype (log-weights), got {dtype}")
