r"""Resampling schemes: log-weights in, ancestor indices out.

Every scheme is a pure function

    resample(key, log_weights, num_samples) -> ancestors   # int32, shape (num_samples,)

that is jittable and vmappable (``num_samples`` must be static under ``jit``). Given
normalised weights ``W`` (computed in log space from ``log_weights``), each scheme is
*unbiased*: the expected number of offspring of particle ``i`` is ``M * W_i`` with
``M = num_samples``. They differ in the variance of the offspring counts
(Douc, Cappé & Moulines 2005; Gerber, Chopin & Whiteley 2019; Chopin & Papaspiliopoulos
2020, ch. 9):

============  =========================================================  ==============  =========
scheme        offspring counts                                           cost            uniforms
============  =========================================================  ==============  =========
multinomial   iid draws from ``W``                                       O(M log N)      M
stratified    one uniform in each stratum ``[k/M, (k+1)/M)``             O(N + M)        M
systematic    one uniform shifted over the M evenly spaced points        O(N + M)        1
residual      ``floor(M W_i)`` copies, then multinomial on the rest      O(N + M log N)  M
ssp           Srinivasan sampling process: counts within 1 of ``M W_i``  O(N) sequential N - 1
killing       keep ``i`` w.p. ``W_i / max W``, else a multinomial draw   O(N log N)      2N
============  =========================================================  ==============  =========

Systematic and stratified resampling avoid any binary search: with cumulative weights
``C_i`` the number of grid points below ``C_i`` is computed in closed form (e.g.
``ceil(M C_i - U)`` for systematic), and the ancestor of output slot ``k`` is
``#{i : ncum_i <= k}``, a scatter-add followed by a cumulative sum. The output of these
two (and of ``ssp``/``residual``'s deterministic part) is sorted.

Defined behaviour on degenerate input (never a silent NaN):

* a particle with log-weight ``-inf`` is never chosen;
* if **all** log-weights are ``-inf`` there is no valid ancestor: every scheme returns
  ``arange(M) % N`` (each particle keeps itself). The SMC driver detects this case and
  reports ``log Z = -inf``; see :mod:`smcscale.smc`;
* ``num_samples`` must be a positive Python int (``killing`` requires ``M == N``);
* NaN or ``+inf`` log-weights are rejected by an eager check (``ValueError``) when the
  inputs are concrete; under ``jit`` a NaN weight is treated as zero.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from .weights import check_log_weights

__all__ = [
    "multinomial",
    "stratified",
    "systematic",
    "residual",
    "ssp",
    "killing",
    "RESAMPLERS",
    "get_resampler",
    "offspring_counts",
    "stable_ancestors",
]

Resampler = Callable[[jax.Array, jax.Array, int], jax.Array]


# ---------------------------------------------------------------------------------------
# shared pieces


def _prepare(log_weights, num_samples: int, name: str, normalize: bool = True):
    """Validate; return ``(w, dead, M)`` with ``w`` proportional to the weights (zeros where
    ``-inf``/NaN), summing to 1 if ``normalize`` and otherwise scaled so that ``max w = 1``
    (enough for the schemes that only use normalised cumulative weights, and one pass
    cheaper). ``dead``: no finite log-weight (a ``+inf`` under ``jit`` also counts as dead).
    """
    if not isinstance(num_samples, int) or isinstance(num_samples, bool):
        try:
            num_samples = int(num_samples)
        except Exception as e:  # pragma: no cover - defensive
            raise TypeError(f"{name}: num_samples must be a Python int, got {num_samples!r}") from e
    if num_samples < 1:
        raise ValueError(f"{name}: num_samples must be >= 1, got {num_samples}")
    check_log_weights(log_weights, name=f"{name}: log_weights")
    lw = jnp.asarray(log_weights)
    lw = jnp.where(jnp.isnan(lw), -jnp.inf, lw)
    top = jnp.max(lw)
    dead = ~jnp.isfinite(top)
    w = jnp.where(dead, 0.0, jnp.exp(lw - jnp.where(dead, 0.0, top)))
    if normalize:
        total = jnp.sum(w)  # >= 1 unless dead: the top weight is exactly 1
        w = w / jnp.where(total > 0, total, 1.0)
    return w, dead, num_samples


def _impossible(log_weights):
    """Particles that must never be chosen: log-weight ``-inf`` (or NaN)."""
    lw = jnp.asarray(log_weights)
    return ~(lw > -jnp.inf)


def _finish(ancestors, w, dead, num_samples):
    """Clip to the last positive-weight particle; identity ancestors if all dead."""
    n = w.shape[0]
    # last positive-weight index (a max reduction: XLA:CPU's argmax is a slower variadic reduce)
    last = jnp.max(jnp.where(w > 0, jnp.arange(n, dtype=jnp.int32), 0))
    ancestors = jnp.clip(ancestors, 0, last)
    fallback = jnp.arange(num_samples, dtype=jnp.int32) % n
    return jnp.where(dead, fallback, ancestors).astype(jnp.int32)


_BLOCK = 32


def _blocked_cumsum(x, block: int = _BLOCK):
    """Inclusive cumulative sum of a 1-D float array as blocked triangular matmuls.

    XLA:CPU lowers ``cumsum`` to a tree of reduce-windows, several passes over memory;
    a ``(N / B, B) @ triu(ones(B, B))`` product plus a recursive cumulative sum of the
    ``N / B`` block totals is several times faster there. The rounding is that of a
    sequential sum within blocks of ``B`` and between block totals (no worse than a plain
    cumulative sum). ``precision=HIGHEST`` keeps TPUs from rounding operands to bfloat16.
    """
    n = x.shape[0]
    if n <= block:
        return jnp.cumsum(x)
    nb = -(-n // block)
    xp = jnp.pad(x, (0, nb * block - n)).reshape(nb, block)
    tri = jnp.triu(jnp.ones((block, block), x.dtype))
    within = jnp.matmul(xp, tri, precision=jax.lax.Precision.HIGHEST)
    totals = within[:, -1]
    offsets = jnp.concatenate([jnp.zeros((1,), x.dtype), _blocked_cumsum(totals, block)[:-1]])
    return (within + offsets[:, None]).reshape(-1)[:n]


def _cumsum(x):
    """Cumulative sum of a 1-D float array: blocked matmuls on CPU, ``jnp.cumsum`` elsewhere
    (GPUs have a dedicated scan kernel)."""
    return jax.lax.platform_dependent(x, cpu=_blocked_cumsum, default=jnp.cumsum)


def _cumulative(w, impossible=None):
    """Cumulative weights normalised so that the last entry is exactly 1.

    ``impossible`` (bool, like ``w``; default ``w == 0``) marks particles that must get no
    offspring. A parallel prefix sum (a tree, or blocks) does not add exact zeros exactly:
    across a block boundary ``C_i`` of a zero-weight particle can differ from ``C_{i-1}`` by
    an ulp, and a grid point or uniform falling in that sliver would pick it. When some
    particle is impossible, ``C`` is therefore forward-filled over those particles
    (``C_i = C_{last possible j < i}``, a cumulative max; only paid then), which makes their
    intervals exactly empty.
    """
    c = _cumsum(w)
    if impossible is None:
        impossible = w == 0
    c = jax.lax.cond(
        jnp.any(impossible),
        lambda v: jax.lax.cummax(jnp.where(impossible, jnp.zeros_like(v), v)),
        lambda v: v,
        c,
    )
    total = c[-1]
    return c / jnp.where(total > 0, total, 1.0)


def _ancestors_from_cumcounts(ncum, num_samples: int):
    """Ancestors from cumulative offspring counts ``ncum`` (non-decreasing, last == M).

    The ancestor of slot ``k`` is ``#{i : ncum_i <= k}``: one scatter-add of the counts'
    end positions and one cumulative sum, O(N + M), no search.
    """
    if num_samples <= 2**24:
        # float32 marks: their partial sums are integers below 2**24, hence exact, and
        # the float path is the fast one on CPU (see ``_cumsum``)
        marks = jnp.zeros((num_samples,), jnp.float32).at[ncum].add(1.0, mode="drop")
        return _cumsum(marks).astype(jnp.int32)
    marks = jnp.zeros((num_samples,), jnp.int32).at[ncum].add(1, mode="drop")
    return jnp.cumsum(marks, dtype=jnp.int32)


def _inverse_cdf(c, u):
    """Index ``i`` with ``C_{i-1} <= u < C_i`` for each ``u`` (binary search)."""
    return jnp.searchsorted(c, u, side="right").astype(jnp.int32)


def _multinomial_from_w(key, w, num_samples, impossible=None):
    c = _cumulative(w, impossible)
    u = jax.random.uniform(key, (num_samples,), dtype=c.dtype)
    return _inverse_cdf(c, u)


# ---------------------------------------------------------------------------------------
# schemes


def multinomial(key, log_weights, num_samples: int):
    """Multinomial resampling: ``M`` iid draws from ``W``. Cost O(M log N), M uniforms."""
    w, dead, m = _prepare(log_weights, num_samples, "multinomial", normalize=False)
    return _finish(_multinomial_from_w(key, w, m, _impossible(log_weights)), w, dead, m)


def stratified(key, log_weights, num_samples: int):
    """Stratified resampling: point ``k`` is ``(k + U_k) / M`` with ``U_k`` iid uniform.

    Cost O(N + M) with no search: the number of points below ``C_i`` is
    ``k* + 1{U_{k*} < M C_i - k*}`` with ``k* = floor(M C_i)``.
    """
    w, dead, m = _prepare(log_weights, num_samples, "stratified", normalize=False)
    c = _cumulative(w, _impossible(log_weights))
    u = jax.random.uniform(key, (m,), dtype=c.dtype)
    mc = m * c
    kstar = jnp.floor(mc).astype(jnp.int32)
    kc = jnp.clip(kstar, 0, m - 1)
    ncum = kstar + (u[kc] < mc - kstar).astype(jnp.int32)
    ncum = jnp.where(kstar >= m, m, ncum)
    ncum = ncum.at[-1].set(m)
    return _finish(_ancestors_from_cumcounts(ncum, m), w, dead, m)


def systematic(key, log_weights, num_samples: int):
    """Systematic resampling: points ``(k + U) / M`` with a single uniform ``U``.

    Cost O(N + M), one uniform, no search: ``ncum_i = ceil(M C_i - U)``.
    """
    w, dead, m = _prepare(log_weights, num_samples, "systematic", normalize=False)
    c = _cumulative(w, _impossible(log_weights))
    u = jax.random.uniform(key, (), dtype=c.dtype)
    ncum = jnp.clip(jnp.ceil(m * c - u), 0, m).astype(jnp.int32)
    ncum = ncum.at[-1].set(m)
    return _finish(_ancestors_from_cumcounts(ncum, m), w, dead, m)


def residual(key, log_weights, num_samples: int):
    """Residual resampling: ``floor(M W_i)`` deterministic copies of each particle, the
    remaining ``R = M - sum floor(M W_i)`` slots drawn multinomially from the residual
    weights ``M W_i - floor(M W_i)``. Cost O(N + M log N), M uniforms.
    """
    w, dead, m = _prepare(log_weights, num_samples, "residual")
    r = m * w
    f = jnp.floor(r)
    ncum_det = jnp.minimum(jnp.cumsum(f).astype(jnp.int32), m)
    n_det = ncum_det[-1]
    det = _ancestors_from_cumcounts(ncum_det, m)
    rest = _multinomial_from_w(key, jnp.maximum(r - f, 0.0), m)
    slots = jnp.arange(m)
    return _finish(jnp.where(slots < n_det, det, rest), w, dead, m)


def ssp(key, log_weights, num_samples: int):
    """Srinivasan sampling process (Gerber, Chopin & Whiteley 2019).

    Each particle gets ``floor(M W_i)`` or ``ceil(M W_i)`` offspring. The fractional parts
    are resolved pairwise: an "open" fraction ``a`` meets the next fraction ``b``; if
    ``a + b <= 1`` one of them absorbs the sum (the first w.p. ``a / (a + b)``) and the other
    is fixed at 0; otherwise one is fixed at 1 (the first w.p. ``(1 - b) / (2 - a - b)``)
    and the other keeps ``a + b - 1``. Both moves preserve expectations. Cost O(N), a
    sequential ``lax.scan`` over particles, N - 1 uniforms.
    """
    w, dead, m = _prepare(log_weights, num_samples, "ssp")
    n = w.shape[0]
    r = m * w
    f = jnp.floor(r)
    xi = r - f
    u = jax.random.uniform(key, (n,), dtype=w.dtype)

    def body(carry, inp):
        open_idx, a, extra = carry
        k, b, uk = inp
        s = a + b
        low = s <= 1.0
        # a + b <= 1: open keeps the sum w.p. a / (a + b) (1 if both are 0).
        p_keep = jnp.where(s > 0, a / jnp.where(s > 0, s, 1.0), 1.0)
        # a + b > 1: open is fixed at 1 w.p. (1 - b) / (2 - a - b).
        denom = 2.0 - s
        p_one = jnp.where(denom > 0, (1.0 - b) / jnp.where(denom > 0, denom, 1.0), 1.0)
        first = uk < jnp.where(low, p_keep, p_one)
        # low & first: open stays, k fixed at 0.   low & ~first: open fixed at 0, k opens with s.
        # high & first: open fixed at 1, k opens with s-1.  high & ~first: open stays with s-1, k fixed at 1.
        new_open = jnp.where(low, jnp.where(first, open_idx, k), jnp.where(first, k, open_idx))
        new_a = jnp.where(low, s, s - 1.0)
        fixed_idx = jnp.where(new_open == k, open_idx, k)
        fixed_val = jnp.where(low, 0, 1).astype(jnp.int32)
        extra = extra.at[fixed_idx].add(fixed_val)
        return (new_open, new_a, extra), None

    init = (jnp.int32(0), xi[0], jnp.zeros((n,), jnp.int32))
    ks = jnp.arange(1, n, dtype=jnp.int32)
    (open_idx, _, extra), _ = jax.lax.scan(body, init, (ks, xi[1:], u[1:]))
    counts = f.astype(jnp.int32) + extra
    # The open particle takes whatever remains (its fraction is 0 or 1 up to rounding).
    remaining = jnp.maximum(m - jnp.sum(counts), 0)
    counts = counts.at[open_idx].add(jnp.where(w[open_idx] > 0, remaining, 0))
    ncum = jnp.minimum(jnp.cumsum(counts), m)
    return _finish(_ancestors_from_cumcounts(ncum, m), w, dead, m)


def killing(key, log_weights, num_samples: int):
    """Killing resampling (Del Moral 2004): particle ``i`` survives in place with
    probability ``W_i / max_j W_j``; a killed slot is refilled by a multinomial draw.
    Requires ``num_samples == N``. Cost O(N log N), 2N uniforms.
    """
    w, dead, m = _prepare(log_weights, num_samples, "killing", normalize=False)
    n = w.shape[0]
    if m != n:
        raise ValueError(f"killing: resampling requires num_samples == N ({n}), got {m}")
    k1, k2 = jax.random.split(key)
    wmax = jnp.max(w)
    keep = jax.random.uniform(k1, (n,), dtype=w.dtype) * wmax < w
    draws = _multinomial_from_w(k2, w, n, _impossible(log_weights))
    return _finish(jnp.where(keep, jnp.arange(n, dtype=jnp.int32), draws), w, dead, m)


RESAMPLERS: dict[str, Resampler] = {
    "multinomial": multinomial,
    "stratified": stratified,
    "systematic": systematic,
    "residual": residual,
    "ssp": ssp,
    "killing": killing,
}


def get_resampler(scheme) -> Resampler:
    """Return the resampling function for ``scheme`` (a name in :data:`RESAMPLERS` or a callable)."""
    if callable(scheme):
        return scheme
    try:
        return RESAMPLERS[scheme]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown resampling scheme {scheme!r}; choose one of {sorted(RESAMPLERS)} "
            "or pass a function (key, log_weights, num_samples) -> int32 ancestors"
        ) from None


def offspring_counts(ancestors, num_particles: int):
    """Number of offspring of each of ``num_particles`` parents given ``ancestors``."""
    return jnp.zeros((num_particles,), jnp.int32).at[ancestors].add(1)


def stable_ancestors(ancestors, num_particles: Optional[int] = None):
    """Rearrange ancestors so that every surviving particle keeps its own slot.

    SMC is invariant to the order of the resampled particles, so any permutation of
    ``ancestors`` is an equally valid resampling. This one puts ``a[j] = j`` for every
    particle ``j`` that has at least one offspring and fills the slots of particles with no
    offspring with the extra copies. Then ``a[a[i]] = a[i]`` for all ``i``: a reorder only has
    to copy the rows whose ancestor changed, in any order (``JaxLM.reorder`` exploits this
    to move only those KV-cache rows). O(N): a bincount, cumulative sums and a gather.
    """
    a = jnp.asarray(ancestors, jnp.int32)
    m = a.shape[0]
    n = m if num_particles is None else int(num_particles)
    if n != m:
        raise ValueError(f"stable_ancestors needs as many ancestors as particles ({n}), got {m}")
    counts = offspring_counts(a, n)
    survives = counts > 0
    extra = jnp.maximum(counts - 1, 0)
    # the extra copies, in particle order: slot r holds particle #{i : cumsum(extra)_i <= r}
    extras = _ancestors_from_cumcounts(jnp.cumsum(extra, dtype=jnp.int32), n)
    free_rank = jnp.cumsum(~survives, dtype=jnp.int32) - 1
    filled = extras[jnp.clip(free_rank, 0, n - 1)]
    return jnp.where(survives, jnp.arange(n, dtype=jnp.int32), filled).astype(jnp.int32)
