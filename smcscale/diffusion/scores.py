r"""Score models: the protocol, adapters for trained networks, and exact Gaussian mixtures.

The protocol
------------
A **score model** is a pure function ``score(x, t, condition) -> s`` with ``x`` of shape
``(N, d)``, ``t`` a scalar time of the forward SDE, and ``s ≈ ∇_x log q_t(x | condition)``
of shape ``(N, d)``. ``condition`` is anything the model understands (``None`` for an
unconditional model). A score model *may* also have

* ``null_condition``: the condition value meaning "unconditional"; it then promises to
  accept a per-row condition array of shape ``(N,)``, so that the samplers evaluate several
  conditions of the same model (e.g. the conditional and unconditional scores of
  classifier-free guidance) in **one** batched call;
* ``log_prob(x, t, condition) -> (N,)``: the exact log-density of the noised marginal
  (analytic models); the samplers then weight the initial particles exactly, so that
  ``log Z`` has no prior-mismatch error.

Networks that predict the noise ``ε`` or the clean data ``x_0`` become score models with
:func:`from_eps` and :func:`from_x0`:

    s = -ε̂ / σ_t,        s = (α_t x̂_0 − x) / σ_t²,

and Tweedie's formula :func:`denoise` goes back, ``x̂_0 = (x + σ_t² s) / α_t``.

Exact Gaussian mixtures
-----------------------
A mixture ``q = Σ_k w_k N(μ_k, Σ_k)`` stays a mixture under VP/VE noising,
``q_t = Σ_k w_k N(α_t μ_k, α_t² Σ_k + σ_t² I)``, so its score is exact at every ``t``
(:meth:`GaussianMixture.score_model`). Products of mixtures are mixtures
(``N(μ_1, Σ_1) N(μ_2, Σ_2) = N(μ_1; μ_2, Σ_1 + Σ_2) N(μ_{12}, Σ_{12})``), so ``q^β`` for
integer ``β`` and ``q_1 q_2`` are exact mixtures with known normalisers; a linear tilt
``q(x) e^{aᵀx}`` is a mixture with weights ``w_k e^{aᵀμ_k + ½ aᵀΣ_k a}`` and means
``μ_k + Σ_k a``. The classifier-free-guidance target ``q(x|c)^w q(x)^{1−w}`` (``w ≥ 1``) is
sampled exactly by rejection from ``q(x|c)`` with acceptance ``(p(c) q(x|c) / q(x))^{w−1} ≤ 1``
(:func:`sample_cfg_exact`). These are the exact targets the tests measure samplers against.
Mixture weights are kept as unnormalised log-weights, so a product's normaliser is
``logsumexp(log_weights)``.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

from ..static import Uncacheable, static_key

__all__ = [
    "ScoreModel",
    "from_eps",
    "from_x0",
    "denoise",
    "GaussianMixture",
    "AnalyticScore",
    "sample_cfg_exact",
    "cfg_log_normalizer",
]

ScoreModel = Callable[[Any, Any, Any], Any]


class _Adapter:
    """A score model built from a network; keeps ``null_condition`` of the network."""

    def __init__(self, fn, sde, kind, null_condition):
        self._fn, self._sde, self._kind = fn, sde, kind
        if null_condition is not None:
            self.null_condition = null_condition
        dim = getattr(fn, "dim", None)  # the network's data dimension, if it declares one
        if isinstance(dim, (int, np.integer)) and not isinstance(dim, bool):
            self.dim = int(dim)

    def __call__(self, x, t, condition=None):
        out = self._fn(x, t, condition)
        if self._kind == "eps":
            return -out / self._sde.sigma(t)
        return (self._sde.alpha(t) * out - x) / self._sde.sigma(t) ** 2

    def __repr__(self):
        return f"from_{self._kind}({getattr(self._fn, '__name__', self._fn)!r}, {self._sde!r})"


def from_eps(eps_fn: Callable, sde, null_condition=None) -> ScoreModel:
    """Score model from a noise predictor ``eps_fn(x, t, condition) -> ε̂``: ``s = -ε̂ / σ_t``.

    ``null_condition`` (e.g. the index of the "no class" token of a network trained with
    condition dropout) marks the unconditional input and enables batched guidance calls;
    it is read from ``eps_fn.null_condition`` if not given.
    """
    null_condition = getattr(eps_fn, "null_condition", None) if null_condition is None else null_condition
    return _Adapter(eps_fn, sde, "eps", null_condition)


def from_x0(x0_fn: Callable, sde, null_condition=None) -> ScoreModel:
    """Score model from a denoiser ``x0_fn(x, t, condition) -> x̂_0``: ``s = (α_t x̂_0 − x) / σ_t²``."""
    null_condition = getattr(x0_fn, "null_condition", None) if null_condition is None else null_condition
    return _Adapter(x0_fn, sde, "x0", null_condition)


def denoise(score, x, t, sde):
    """Tweedie's posterior mean ``x̂_0 = (x + σ_t² s) / α_t`` from a score value ``score`` at ``(x, t)``."""
    return (x + sde.sigma(t) ** 2 * score) / sde.alpha(t)


# ---------------------------------------------------------------------------------------
# Gaussian mixtures


class GaussianMixture(NamedTuple):
    """``Σ_k exp(log_weights_k) N(means_k, covs_k)`` with optional integer class ``labels``.

    ``log_weights`` need not be normalised (products carry their normaliser in them).
    ``labels[k]`` is the class of component ``k``: ``q(x | c)`` is the mixture of the
    components labelled ``c`` (renormalised), ``q(x)`` the whole mixture.
    """

    log_weights: Any  # (K,)
    means: Any  # (K, d)
    covs: Any  # (K, d, d)
    labels: Any = None  # (K,) int or None

    # construction -----------------------------------------------------------------------

    @classmethod
    def create(cls, weights, means, covs=None, stds=None, labels=None):
        """Build from (unnormalised) weights, means ``(K, d)`` and covariances ``(K, d, d)``
        (or per-component isotropic ``stds`` ``(K,)``, or scalars)."""
        means = np.atleast_2d(np.asarray(means, np.float64))
        k, d = means.shape
        w = np.broadcast_to(np.asarray(weights, np.float64), (k,))
        if np.any(w <= 0):
            raise ValueError("mixture weights must be > 0")
        if covs is None:
            s = np.broadcast_to(np.asarray(1.0 if stds is None else stds, np.float64), (k,))
            covs = (s**2)[:, None, None] * np.eye(d)[None]
        covs = np.broadcast_to(np.asarray(covs, np.float64), (k, d, d))
        if np.any(np.linalg.eigvalsh(covs) <= 0):
            raise ValueError("mixture covariances must be positive definite")
        lab = None if labels is None else jnp.asarray(np.broadcast_to(np.asarray(labels), (k,)), jnp.int32)
        return cls(jnp.asarray(np.log(w), jnp.float32), jnp.asarray(means, jnp.float32), jnp.asarray(covs, jnp.float32), lab)

    @property
    def dim(self) -> int:
        return int(self.means.shape[-1])

    @property
    def num_components(self) -> int:
        return int(self.means.shape[0])

    @property
    def log_normalizer(self):
        """``log ∫ q = logsumexp(log_weights)``."""
        return logsumexp(self.log_weights)

    def normalized(self) -> "GaussianMixture":
        return self._replace(log_weights=self.log_weights - self.log_normalizer)

    def select(self, condition) -> "GaussianMixture":
        """The components labelled ``condition`` (a Python int), renormalised: ``q(x | c)``."""
        if condition is None:
            return self.normalized()
        if self.labels is None:
            raise ValueError("this mixture has no labels; cannot condition on a class")
        keep = np.flatnonzero(np.asarray(self.labels) == int(condition))
        if keep.size == 0:
            raise ValueError(f"no component has label {condition}")
        sub = GaussianMixture(self.log_weights[keep], self.means[keep], self.covs[keep], self.labels[keep])
        return sub.normalized()

    def class_log_prob(self, condition):
        """``log p(c)``: the share of the total weight carried by class ``condition``."""
        keep = np.asarray(self.labels) == int(condition)
        return logsumexp(self.log_weights[keep]) - self.log_normalizer

    # densities --------------------------------------------------------------------------

    def _precisions(self):
        prec = jnp.linalg.inv(self.covs)  # (K, d, d), small matrices
        _, logdet = jnp.linalg.slogdet(self.covs)
        return prec, logdet

    def component_terms(self, x):
        """Per-component terms at ``x`` ``(N, d)``: ``(log N(x; μ_k, Σ_k)`` ``(N, K)``,
        ``Σ_k^{-1}(μ_k − x)`` ``(N, K, d))`` — the component log-densities (without the
        weights) and their gradients in ``x``, from which the mixture's density and score follow."""
        prec, logdet = self._precisions()
        diff = self.means[None, :, :] - x[:, None, :]  # (N, K, d)
        pd = jnp.einsum("kij,nkj->nki", prec, diff)
        quad = jnp.sum(diff * pd, -1)
        d = self.dim
        return -0.5 * quad - 0.5 * logdet[None, :] - 0.5 * d * jnp.log(2 * jnp.pi), pd

    def _component_logpdf(self, x):
        return self.component_terms(x)[0]

    def log_prob(self, x):
        """Log of the (unnormalised, if ``log_weights`` is) density at ``x`` ``(N, d)``."""
        return logsumexp(self._component_logpdf(x) + self.log_weights, axis=-1)

    def score(self, x):
        """``∇ log q(x)`` for ``x`` ``(N, d)``."""
        lp, pd = self.component_terms(x)
        r = jax.nn.softmax(lp + self.log_weights, axis=-1)  # (N, K)
        return jnp.einsum("nk,nkd->nd", r, pd)

    def noised(self, sde, t) -> "GaussianMixture":
        """The marginal at time ``t`` of the forward SDE started from this mixture."""
        a, s = sde.alpha(t), sde.sigma(t)
        d = self.dim
        return self._replace(means=a * self.means, covs=a**2 * self.covs + (s**2) * jnp.eye(d))

    def sample(self, key, n: int):
        """``n`` exact draws (from the normalised mixture), shape ``(n, d)``."""
        k1, k2 = jax.random.split(key)
        comp = jax.random.categorical(k1, self.log_weights, shape=(n,))
        chol = jnp.linalg.cholesky(self.covs)
        z = jax.random.normal(k2, (n, self.dim))
        return self.means[comp] + jnp.einsum("nij,nj->ni", chol[comp], z)

    def mean(self):
        w = jax.nn.softmax(self.log_weights)
        return w @ self.means

    def cov(self):
        w = jax.nn.softmax(self.log_weights)
        m = self.mean()
        dm = self.means - m
        return jnp.einsum("k,kij->ij", w, self.covs) + jnp.einsum("k,ki,kj->ij", w, dm, dm)

    # algebra (exact targets) --------------------------------------------------------------

    def product(self, other: "GaussianMixture") -> "GaussianMixture":
        """The (unnormalised) product density ``q_1(x) q_2(x)``, a mixture of ``K_1 K_2`` components."""
        lw, means, covs = [], [], []
        m1, c1, w1 = (np.asarray(a, np.float64) for a in (self.means, self.covs, self.log_weights))
        m2, c2, w2 = (np.asarray(a, np.float64) for a in (other.means, other.covs, other.log_weights))
        for i, j in itertools.product(range(len(w1)), range(len(w2))):
            p1, p2 = np.linalg.inv(c1[i]), np.linalg.inv(c2[j])
            c = np.linalg.inv(p1 + p2)
            m = c @ (p1 @ m1[i] + p2 @ m2[j])
            s = c1[i] + c2[j]
            diff = m1[i] - m2[j]
            _, logdet = np.linalg.slogdet(2 * np.pi * s)
            lw.append(w1[i] + w2[j] - 0.5 * logdet - 0.5 * diff @ np.linalg.solve(s, diff))
            means.append(m)
            covs.append(c)
        return GaussianMixture(
            jnp.asarray(lw, jnp.float32), jnp.asarray(np.stack(means), jnp.float32), jnp.asarray(np.stack(covs), jnp.float32)
        )

    def power(self, k: int) -> "GaussianMixture":
        """``q(x)^k`` for an integer ``k >= 1`` (repeated product)."""
        if int(k) != k or k < 1:
            raise ValueError(f"power needs an integer exponent >= 1, got {k}")
        out = self
        for _ in range(int(k) - 1):
            out = out.product(self)
        return out

    def tilt_linear(self, a) -> "GaussianMixture":
        """The (unnormalised) tilted density ``q(x) exp(aᵀ x)``, exactly a mixture."""
        a = jnp.asarray(a, jnp.float32)
        sa = jnp.einsum("kij,j->ki", self.covs, a)
        lw = self.log_weights + self.means @ a + 0.5 * jnp.einsum("ki,i->k", sa, a)
        return self._replace(log_weights=lw, means=self.means + sa)

    def score_model(self, sde) -> "AnalyticScore":
        """The exact score model of this mixture noised by ``sde`` (see :class:`AnalyticScore`)."""
        return AnalyticScore(self, sde)


class AnalyticScore:
    """Exact score (and log-density) of a :class:`GaussianMixture` noised by an SDE.

    ``condition``: ``None`` or ``-1`` (``null_condition``) for the whole mixture; an int class
    label for ``q(x | c)``; or an int array ``(N,)`` of per-row labels (``-1`` = unconditional).

    Equal (and equally hashed) when built from equal mixtures (compared by value: shapes,
    dtypes and contents of their arrays, see :func:`smcscale.static.static_key`) and equal
    SDEs, so a sampler built from it is compiled once, even from a fresh
    ``mixture.score_model(sde)``; a mixture with traced arrays is compared by identity.
    """

    null_condition = -1

    def __init__(self, mixture: GaussianMixture, sde):
        self.mixture = mixture
        self.sde = sde

    def __eq__(self, other):
        if self is other:
            return True
        if not isinstance(other, AnalyticScore):
            return NotImplemented
        return _analytic_key(self) == _analytic_key(other)

    def __hash__(self):
        return hash(_analytic_key(self))

    @property
    def dim(self) -> int:
        return self.mixture.dim

    def _masked(self, x, t, condition):
        q = self.mixture.noised(self.sde, t)
        lpdf, pd = q.component_terms(x)
        lp = lpdf + q.log_weights  # (N, K)
        if condition is None:
            return lp, jnp.broadcast_to(q.log_weights, lp.shape), pd
        if q.labels is None:
            raise ValueError("a condition was given but the mixture has no labels")
        c = jnp.broadcast_to(jnp.asarray(condition, jnp.int32), (x.shape[0],))[:, None]
        keep = (c < 0) | (q.labels[None, :] == c)
        masked = jnp.where(keep, lp, -jnp.inf)
        lw_masked = jnp.where(keep, q.log_weights[None, :], -jnp.inf)
        return masked, lw_masked, pd

    def __call__(self, x, t, condition=None):
        masked, _, pd = self._masked(x, t, condition)
        r = jax.nn.softmax(masked, axis=-1)
        return jnp.einsum("nk,nkd->nd", r, pd)

    def log_prob(self, x, t, condition=None):
        """``log q_t(x | condition)`` (normalised over the selected components)."""
        masked, lw, _ = self._masked(x, t, condition)
        return logsumexp(masked, axis=-1) - logsumexp(lw, axis=-1)

    def __repr__(self):
        return f"AnalyticScore(K={self.mixture.num_components}, d={self.mixture.dim}, sde={self.sde!r})"


def _analytic_key(score: AnalyticScore):
    try:
        return ("value", static_key(score.mixture), score.sde)
    except Uncacheable:
        return ("identity", id(score))


# ---------------------------------------------------------------------------------------
# exact classifier-free-guidance targets


def sample_cfg_exact(key, mixture: GaussianMixture, condition: int, w: float, n: int, max_rounds: int = 1000):
    """``n`` exact draws from ``q(x|c)^w q(x)^{1-w}`` (normalised), for ``w >= 1``, by rejection.

    Proposal ``q(x|c)``; accept with probability ``(p(c) q(x|c) / q(x))^{w-1}``, which is
    ``<= 1`` because ``q(x) >= p(c) q(x|c)``. Returns a numpy array ``(n, d)``.
    """
    if w < 1:
        raise ValueError(f"exact CFG sampling needs w >= 1, got {w}")
    qc = mixture.select(condition)
    q = mixture.normalized()
    log_pc = float(mixture.class_log_prob(condition))
    out, total = [], 0
    batch = max(4 * n, 1024)
    for r in range(max_rounds):
        key, k1, k2 = jax.random.split(key, 3)
        x = qc.sample(k1, batch)
        log_acc = (w - 1.0) * (log_pc + qc.log_prob(x) - q.log_prob(x))
        u = jax.random.uniform(k2, (batch,))
        acc = np.asarray(jnp.log(u) < log_acc)
        out.append(np.asarray(x)[acc])
        total += int(acc.sum())
        if total >= n:
            return np.concatenate(out)[:n]
    raise RuntimeError(f"rejection sampler accepted only {total} of {n} draws after {max_rounds} rounds")


def cfg_log_normalizer(key, mixture: GaussianMixture, condition: int, w: float, num_samples: int = 1_000_000):
    """Monte Carlo ``log ∫ q(x|c)^w q(x)^{1-w} dx = log E_{q(x|c)}[(q(x|c)/q(x))^{w-1}]``.

    Returns ``(estimate, standard_error)`` (the error of the log, by the delta method).
    """
    qc = mixture.select(condition)
    q = mixture.normalized()
    x = qc.sample(key, num_samples)
    lr = np.asarray((w - 1.0) * (qc.log_prob(x) - q.log_prob(x)), np.float64)
    m = lr.max()
    e = np.exp(lr - m)
    return float(m + np.log(e.mean())), float(e.std() / np.sqrt(num_samples) / e.mean())
