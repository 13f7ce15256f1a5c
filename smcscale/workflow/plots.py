"""Plots people would rather look at than read: ESS traces and genealogies.

Part of the workflow layer (:mod:`smcscale.workflow`): it reads the engine's results
(:class:`smcscale.SMCResult`, :func:`smcscale.trace_genealogy`) and the engine never imports
it. All functions take an optional matplotlib ``Axes`` and return it; matplotlib is imported
lazily, so importing this module needs no display.
"""

from __future__ import annotations

import numpy as np

__all__ = ["plot_ess", "plot_genealogy", "plot_filtering"]


def _axes(ax):
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(7, 3))
    return ax


def plot_ess(result, ax=None, num_particles=None):
    """ESS against time, with resampling times marked (from an ``SMCResult``)."""
    ax = _axes(ax)
    ess = np.asarray(result.ess)
    n = num_particles or np.asarray(result.log_weights).shape[-1]
    t = np.arange(len(ess))
    ax.plot(t, ess / n, lw=1.2, label="ESS / N")
    res = np.flatnonzero(np.asarray(result.resampled))
    if len(res):
        ax.plot(res, np.zeros_like(res, dtype=float), "|", color="tab:red", ms=8, label="resampled")
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("t")
    ax.set_ylabel("ESS / N")
    ax.legend(loc="lower right", fontsize=8)
    return ax


def _surviving(ancestors) -> np.ndarray:
    """``(T, N)`` bool: particle ``i`` at time ``t`` has a descendant among the final particles."""
    from smcscale.smc import trace_genealogy

    back = np.asarray(trace_genealogy(ancestors))
    alive = np.zeros(back.shape, bool)
    np.put_along_axis(alive, back, True, axis=1)
    return alive


def plot_genealogy(ancestors, values=None, ax=None, max_particles=200):
    """Genealogy tree: every particle's link to its parent (grey, the first ``max_particles``
    particles) and the whole ancestral tree of the final particles (bold): every link whose
    child still has a descendant at the last step, so branch points show where lineages merge.

    Args:
      ancestors: ``(T, N)`` recorded ancestors.
      values: optional ``(T, N)`` particle values for the y axis (default: particle index).
    """
    from matplotlib.collections import LineCollection

    ax = _axes(ax)
    anc = np.asarray(ancestors)
    T, N = anc.shape
    y = np.tile(np.arange(N, dtype=float), (T, 1)) if values is None else np.asarray(values, float)
    t_idx = np.arange(1, T)[:, None]

    def segments(rows, cols):
        return np.stack([np.stack([rows - 1, y[rows - 1, anc[rows, cols]]], -1), np.stack([rows, y[rows, cols]], -1)], 1)

    keep = np.arange(min(N, max_particles))
    if T > 1:
        r, c = np.broadcast_arrays(t_idx, keep[None, :])
        ax.add_collection(LineCollection(segments(r.ravel(), c.ravel()), colors="0.8", linewidths=0.4))
        alive = _surviving(anc)
        r, c = np.nonzero(alive[1:])
        ax.add_collection(LineCollection(segments(r + 1, c), colors="tab:blue", linewidths=1.2))
        roots = int(alive[0].sum())
    else:
        roots = N
    ax.plot(np.zeros(min(N, max_particles)), y[0, :max_particles], ".", color="0.6", ms=2)
    ax.autoscale_view()
    ax.set_xlabel("t")
    ax.set_ylabel("particle" if values is None else "x_t")
    ax.set_title(f"genealogy: {roots} lineage(s) survive from t=0")
    return ax


def plot_filtering(mean, sd=None, truth=None, ax=None, label="filtering mean"):
    """Filtering mean (with a ±2 sd band when ``sd`` is given) and, optionally, the truth."""
    ax = _axes(ax)
    mean = np.asarray(mean)
    t = np.arange(len(mean))
    ax.plot(t, mean, color="tab:blue", lw=1.2, label=label)
    if sd is not None:
        sd = np.asarray(sd)
        ax.fill_between(t, mean - 2 * sd, mean + 2 * sd, color="tab:blue", alpha=0.2, lw=0)
    if truth is not None:
        ax.plot(t, np.asarray(truth), color="k", lw=0.8, ls="--", label="truth")
    ax.set_xlabel("t")
    ax.legend(loc="upper right", fontsize=8)
    return ax
