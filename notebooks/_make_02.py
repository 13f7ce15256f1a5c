"""Build ``notebooks/02_particle_gibbs_and_learning.ipynb`` from the cells below.

    python notebooks/_make_02.py            # write the notebook without outputs
    python notebooks/_make_02.py --execute  # ... then run it at full size and keep the outputs

Edit the notebook here, not in Jupyter, so that the source stays reviewable as a diff.
``--execute`` runs the notebook with the ``python3`` kernel in this interpreter's
environment (``SMCSCALE_NOTEBOOK_SMALL`` unset) and stores the outputs without per-cell
timing metadata.

The cells are raw strings: what is written here is exactly the cell source.
"""

from __future__ import annotations

import pathlib

from _nbgen import REPO, code, main, md  # noqa: F401 (REPO used in f-strings)

HERE = pathlib.Path(__file__).resolve().parent
OUT = HERE / "02_particle_gibbs_and_learning.ipynb"


# ---------------------------------------------------------------------------------------
md(
    f"""
# Particle Gibbs, smoothing and learning with smcscale

[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/{REPO}/blob/main/notebooks/02_particle_gibbs_and_learning.ipynb)

Notebook 01 ran particle *filters*. This one is about the whole path $x_{{0:T-1}}$ given all
the data, and about the parameters, on the same linear-Gaussian model, where the Kalman
filter and the Rauch–Tung–Striebel (RTS) smoother give every answer exactly:

1. the model, simulated data, and the exact filter, smoother and likelihood;
2. **particle Gibbs** (conditional SMC) with and without **ancestor sampling** and
   **backward sampling**, at only $N = 10$ particles: path degeneracy, and how ancestor
   sampling cures it;
3. **smoothing** of additive functionals, $\\sum_t x_t$ and $\\sum_t x_t x_{{t-1}}$, by
   forward filtering–backward sampling (exact and Metropolis–Hastings backward draws) and
   by **PaRIS**;
4. **learning**: the score $\\nabla_\\theta \\log p_\\theta(y_{{0:T-1}})$ by PaRIS against the
   exact Kalman gradient, and maximum likelihood for $(\\rho, \\sigma_X, \\sigma_Y)$ by
   stochastic gradient ascent with `optax`.

It runs top to bottom on a CPU in a few minutes. Every random number comes from a fixed
`jax.random` key, and the `assert`s on the key numbers make running the notebook a test
(the test suite runs it with `SMCSCALE_NOTEBOOK_SMALL=1`: fewer iterations, particles
and runs).
"""
)

md(
    f"""
## Setup

The next cell installs smcscale from the project's repository,
[github.com/{REPO}](https://github.com/{REPO}), but only when it is not importable
already (on Colab, say). When running from a clone, install it from the repository root
with `pip install -e .` instead, and the cell does nothing.
"""
)

code(
    f"""
import importlib.util, sys

if importlib.util.find_spec("smcscale") is None:
    %pip install -q "smcscale @ git+https://github.com/{REPO}"
"""
)

code(
    r"""
import os

# SMCSCALE_NOTEBOOK_SMALL=1 (set by the test suite) runs a smaller version in under a minute.
SMALL = os.environ.get("SMCSCALE_NOTEBOOK_SMALL") == "1"

T = 100                                   # time steps (sections 1-4)
N_PG = 10                                 # particles of the particle Gibbs samplers
ITERS = 1_000 if SMALL else 4_000         # particle Gibbs iterations
N_SMOOTH = 300 if SMALL else 1_000        # particles of the filters in section 3
REPEATS = 8 if SMALL else 20              # independent runs of each smoother
N_SCORE = 200 if SMALL else 500           # particles of the score estimates
SCORE_RUNS = 16 if SMALL else 32          # independent score estimates
T_MLE = 250 if SMALL else 500             # length of the series for maximum likelihood
N_MLE = 50 if SMALL else 100              # particles per score estimate in the MLE
MLE_ITERS = 150 if SMALL else 500         # gradient steps
print("size:", "small" if SMALL else "full",
      dict(T=T, N_PG=N_PG, ITERS=ITERS, N_SMOOTH=N_SMOOTH, REPEATS=REPEATS, N_SCORE=N_SCORE,
           SCORE_RUNS=SCORE_RUNS, T_MLE=T_MLE, N_MLE=N_MLE, MLE_ITERS=MLE_ITERS))
"""
)

code(
    r"""
import time
import warnings

# numpyro imports tqdm.auto, which warns when ipywidgets is not installed: harmless.
warnings.filterwarnings("ignore", message="IProgress not found")

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import numpyro.distributions as dist
import optax

import smcscale as smc
from smcscale import learning, smoothing
from smcscale.csmc import csmc, particle_gibbs, sample_trajectory
from smcscale.models import lgssm
from smcscale.workflow import plots

print("jax", jax.__version__, "on", jax.devices(), "| smcscale", smc.__version__)
"""
)

# ---------------------------------------------------------------------------------------
md(
    r"""
## 1. The model and the exact answers

$$
x_0 \sim \mathcal N\!\Big(0, \tfrac{\sigma_X^2}{1-\rho^2}\Big), \qquad
x_t = \rho\, x_{t-1} + \sigma_X\, \varepsilon_t, \qquad
y_t = x_t + \sigma_Y\, \eta_t, \qquad \varepsilon_t, \eta_t \overset{iid}{\sim} \mathcal N(0, 1),
$$

with $\rho = 0.9$, $\sigma_X = 1$, $\sigma_Y = 0.2$, the model of notebook 01.
`lgssm.univariate` gives it as a `StateSpaceModel` of numpyro distributions, and
`smc.bootstrap` turns that into the bootstrap Feynman–Kac model; unlike the hand-written
model of notebook 01, it also carries the **transition density**
$\log f(x_t \mid x_{t-1})$ (`fk.transition_log_density`), which everything below but plain
particle Gibbs needs.

The exact references: the Kalman filter gives $\log p(y_{0:T-1})$, the RTS smoother the
smoothing means $\mathbb E[x_t \mid y_{0:T-1}]$, variances, and the lag-one
cross-covariances $\operatorname{Cov}[x_{t+1}, x_t \mid y_{0:T-1}]$.
"""
)

code(
    r"""
RHO, SIGMA_X, SIGMA_Y = 0.9, 1.0, 0.2
params = smc.kalman.univariate_params(RHO, SIGMA_X, SIGMA_Y)   # A, Q, C, R, m0, P0 (stationary start)
xs, ys = smc.kalman.simulate(jax.random.key(0), params, T)     # shapes (T, 1), (T, 1)
xs, ys = xs[:, 0], ys[:, 0]                                    # scalar model: (T,)

kf = smc.kalman.kalman_filter(params, ys)
rts = smc.kalman.rts_smoother(params, kf)
sm_mean = np.asarray(rts.smoothed_means[:, 0], np.float64)           # E[x_t | y_0:T-1]
sm_sd = np.sqrt(np.asarray(rts.smoothed_covs[:, 0, 0], np.float64))  # sd[x_t | y_0:T-1]
sm_cross = np.asarray(rts.smoothed_cross_covs[:, 0, 0], np.float64)  # Cov[x_t+1, x_t | y_0:T-1]
print(f"exact log p(y_0:{T - 1}) = {float(kf.log_likelihood):.4f}")
print(f"smoothing sd: {sm_sd.min():.3f} to {sm_sd.max():.3f} (filtering sd at the end: "
      f"{np.sqrt(float(kf.filtered_covs[-1, 0, 0])):.3f})")

fk = smc.bootstrap(lgssm.univariate(RHO, SIGMA_X, SIGMA_Y))
assert fk.transition_log_density is not None

fig, ax = plt.subplots(figsize=(9, 3))
plots.plot_filtering(sm_mean, sm_sd, truth=xs, ax=ax, label="RTS smoothing mean ± 2 sd")
ax.plot(ys, ".", color="tab:orange", ms=4, label="observation $y_t$")
ax.legend(loc="lower left", fontsize=8)
plt.show()
"""
)

# ---------------------------------------------------------------------------------------
md(
    r"""
## 2. Particle Gibbs: path degeneracy and ancestor sampling

**Conditional SMC** (Andrieu, Doucet & Holenstein 2010) runs a particle filter with one
particle, slot 0, pinned to a *reference trajectory* $x^*_{0:T-1}$; the other $N - 1$
particles are drawn as usual, and resampling is conditional (slot 0 keeps its own
ancestor). A new trajectory is then drawn from the final particle system: a particle
$k \sim W_{T-1}$, traced back through its ancestors. For **any** $N \ge 2$ this maps the
reference to a new trajectory and leaves the smoothing law $p(x_{0:T-1} \mid y_{0:T-1})$
invariant, so iterating it, **particle Gibbs** (PG), is an MCMC sampler of the smoother.
`particle_gibbs(key, fk, ys, N, iterations)` runs the whole chain in one `lax.scan`.

Invariance holds for every $N$, but mixing does not. Tracing the $N$ final particles back
in time, their lineages coalesce (path degeneracy, notebook 01, section 4), and the
reference's lineage is always among the survivors. Far enough back, *every* final
particle descends from the reference, and the new trajectory equals the old one there:
the early states of the chain never move.

Two remedies, both using the transition density $f(x_t \mid x_{t-1})$:

* **Ancestor sampling** (PGAS; Lindsten, Jordan & Schön 2014): at each resampling step the
  reference's *ancestor* is redrawn, $a_t^0 = i$ with probability
  $\propto W_{t-1}^i f(x^*_t \mid x^i_{t-1})$. The reference keeps its states but its
  history is grafted onto other particles, so the traced-back trajectory can leave the
  old reference at every time.
* **Backward sampling** (Whiteley 2010): draw the new trajectory backwards,
  $x_t = x_t^i$ with probability $\propto W_t^i f(x_{t+1} \mid x_t^i)$, instead of following
  the genealogy.

One step of each, by hand: from the same reference (any trajectory will do; here the
hidden states $x_{0:T-1}$), 12 independent conditional SMC sweeps with $N = 10$
(`csmc`), and from each the next trajectory (`sample_trajectory`: genealogy tracing, or
backward sampling with `backward=True`). Plotted: how far each new trajectory is from the
reference, against the band in which a fresh draw from the smoother would fall. (The
quick test run, `SMALL`, skips backward sampling here and below.)
"""
)

code(
    r"""
def next_trajectories(key, num, ancestor_sampling=False, backward=False):
    # `num` independent draws of the next particle Gibbs state, all from the reference xs.
    def one(k):
        k_sweep, k_draw = jax.random.split(k)
        sweep = csmc(k_sweep, fk, ys, xs, N_PG, ancestor_sampling=ancestor_sampling)
        return sample_trajectory(k_draw, sweep, fk, ys, backward=backward)[0]
    return np.asarray(jax.jit(jax.vmap(one))(jax.random.split(key, num)), np.float64)


steps = {"PG": {}, "PG + backward sampling": {"backward": True}, "PGAS": {"ancestor_sampling": True}}
if SMALL:                                  # saves two compilations in the quick test run
    steps = {"PG": {}, "PGAS": {"ancestor_sampling": True}}
fig, axes = plt.subplots(1, len(steps), figsize=(4 * len(steps), 3.4), sharey=True)
for ax, (name, kwargs) in zip(axes, steps.items()):
    new = next_trajectories(jax.random.key(11), 12, **kwargs)
    band = np.asarray(sm_mean - xs)
    ax.fill_between(np.arange(T), band - 2 * sm_sd, band + 2 * sm_sd, color="0.85", lw=0, label="smoother ± 2 sd")
    ax.plot((new - np.asarray(xs)).T, color="tab:blue", lw=0.5)
    kept = (new == np.asarray(xs)).mean(axis=0)           # fraction of draws with x_t = x*_t
    ax.axhline(0, color="tab:red", lw=1.2, ls="--", label="reference")
    ax.set_xlabel("t")
    if name == "PG":
        prefix = np.argmax(kept < 1)                       # every draw keeps x*_t for t < prefix
        ax.set_title(f"{name}: every draw keeps $x^*_t$ for t < {prefix}", fontsize=9)
        assert prefix > T // 2, prefix                     # path degeneracy
    else:
        ax.set_title(f"{name}: $x_t$ renewed in {1 - kept.mean():.0%} of draws", fontsize=9)
        assert kept.mean() < 0.7 and kept[: T // 2].mean() < 0.7, (name, kept.mean())
axes[0].set_ylabel("new $x_t$ − reference $x^*_t$")
axes[0].legend(fontsize=8, loc="lower left")
fig.tight_layout()
plt.show()
"""
)

md(
    r"""
With plain PG (left) the new trajectory coincides with the reference over most of the
path: tracing back any final particle, its lineage merges into the reference's (slot 0)
within a few steps of the end, and from there on it *is* the reference. Only the last stretch
is renewed. Backward sampling and ancestor sampling renew the whole path, and the new
states spread over the smoothing band.

Now the three samplers as MCMC chains, $N = 10$ particles, `ITERS` iterations each, all
from the same key and the same initial reference (the observations $y_{0:T-1}$: any
trajectory will do; by default `particle_gibbs` starts from an ordinary filter's
trajectory). At full size plain PG is also run with ten times more particles, $N = 100$.
`PGResult.reference_moved[k, t]` records whether iteration $k$ changed $x_t$.
"""
)

code(
    r"""
PG, PG100, PGBS, PGAS = (f"PG (N = {N_PG})", f"PG (N = {10 * N_PG})", f"PG + backward sampling (N = {N_PG})", f"PGAS (N = {N_PG})")
samplers = {
    PG: dict(num_particles=N_PG),
    PG100: dict(num_particles=10 * N_PG),
    PGBS: dict(num_particles=N_PG, backward_sampling=True),
    PGAS: dict(num_particles=N_PG, ancestor_sampling=True),
}
if SMALL:                                 # saves two compilations in the quick test run
    del samplers[PG100], samplers[PGBS]
colors = {PG: "tab:red", PG100: "tab:orange", PGBS: "tab:green", PGAS: "tab:blue"}
BURN = ITERS // 10
chains, moved = {}, {}
for name, kwargs in samplers.items():
    t0 = time.perf_counter()
    pg = particle_gibbs(jax.random.key(1), fk, ys, num_iterations=ITERS, init_reference=ys, **kwargs)
    chains[name] = np.asarray(pg.trajectories, np.float64)[BURN:]        # (ITERS - BURN, T)
    moved[name] = np.asarray(pg.reference_moved)[BURN:].mean(0)          # update rate per t
    print(f"{name:>34}: {ITERS} iterations in {time.perf_counter() - t0:4.1f} s (with compilation)")

fig, ax = plt.subplots(figsize=(9, 3.2))
for name in samplers:
    ax.plot(moved[name], color=colors[name], lw=1.3, label=name)
ax.set_xlabel("t")
ax.set_ylabel("update rate of $x_t$")
ax.set_ylim(-0.02, 1.25)
ax.legend(fontsize=8, loc="upper left", ncol=2)
plt.show()
"""
)

md(
    r"""
The update rate is the fraction of iterations that changed $x_t$. Plain PG updates the
last states (the final particle is drawn afresh every time) and essentially never the
early ones; ten times more particles push the frontier back only a few tens of steps
(the coalescence time grows roughly linearly in $N$, so PG needs $N$ of the order of $T$).
With backward sampling or ancestor sampling the update rate is flat in $t$ and set by
the local difficulty of the data, not by the distance to the end.

What this does to the chains: traces and autocorrelations of $x_0$ and $x_{T/2}$.
"""
)

code(
    r"""
# autocorrelations at lags 0..max_lag (a constant chain counts as 1), and the integrated
# autocorrelation time 1 + 2 sum_l rho_l, summed up to the first negative rho_l
from smcscale.stats import autocorrelation as acf
from smcscale.stats import integrated_autocorrelation_time as iat


MAX_LAG = 50
TIMES = (0, T // 2)
fig, axes = plt.subplots(2, 2, figsize=(11, 5.5), width_ratios=(2, 1))
for row, t in enumerate(TIMES):
    for name in [n for n in (PG, PGBS, PGAS) if n in chains]:
        if name != PGBS:                  # its trace looks like PGAS's
            axes[row, 0].plot(chains[name][:300, t], color=colors[name], lw=0.8, label=name)
        axes[row, 1].plot(acf(chains[name][:, t], MAX_LAG), color=colors[name], lw=1.3, label=name)
    axes[row, 0].axhline(sm_mean[t], color="k", lw=0.8, ls="--", label="RTS mean")
    axes[row, 0].set_ylabel(f"$x_{{{t}}}$")
    axes[row, 1].set_ylabel(f"ACF of $x_{{{t}}}$")
    axes[row, 1].axhline(0, color="k", lw=0.5)
axes[0, 0].set_title("traces (first 300 iterations after burn-in)", fontsize=10)
axes[1, 0].set_xlabel("iteration")
axes[1, 1].set_xlabel("lag")
axes[0, 0].legend(fontsize=7, loc="upper right")
axes[0, 1].legend(fontsize=7, loc="center right")
fig.tight_layout()
plt.show()

print(f"{'sampler':>34} {'rate t=0':>9} {'t=T/2':>7} {'t=T-1':>7} {'IAT x_0':>9} {'IAT x_T/2':>10}")
for name in samplers:
    m, c = moved[name], chains[name]
    print(f"{name:>34} {m[0]:9.3f} {m[T // 2]:7.3f} {m[-1]:7.3f} {iat(c[:, 0]):9.1f} {iat(c[:, T // 2]):10.1f}")

# path degeneracy: PG (N = 10) is stuck at the start, PGAS and backward sampling are not
assert moved[PG][: T // 2].max() < 0.02
if PG100 in moved:
    assert moved[PG100][0] < 0.05
for name in [n for n in (PGAS, PGBS) if n in chains]:
    assert moved[name].min() > 0.03 and moved[name][0] > 0.15, (name, moved[name].min(), moved[name][0])
    assert iat(chains[name][:, 0]) < 10 and iat(chains[name][:, T // 2]) < 10
"""
)

md(
    r"""
Plain PG with $N = 10$ never moves $x_0$ or $x_{T/2}$ after burn-in (its integrated
autocorrelation time is infinite: the chain is constant), and $N = 100$ barely helps at
$t = 0$. PGAS and PG with backward sampling behave almost identically on this model
(for state-space models the two are known to be probabilistically equivalent; Lindsten,
Jordan & Schön 2014): at ten particles the early and middle states decorrelate within a few
iterations.

Is the PGAS chain right? Its marginal means and standard deviations against the RTS
smoother, with the MCMC standard error of each mean by batch means.
"""
)

code(
    r"""
from smcscale.stats import batch_means_se  # MCMC standard error of each column's mean (40 batch means)


c = chains[PGAS]
pg_mean, pg_sd, pg_se = c.mean(0), c.std(0), batch_means_se(c)
z = (pg_mean - sm_mean) / pg_se

fig, (ax, ax2) = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True, height_ratios=(2, 1))
plots.plot_filtering(sm_mean, sm_sd, ax=ax, label="RTS smoothing mean ± 2 sd")
ax.plot(pg_mean, ".", color="tab:red", ms=3, label=f"PGAS chain mean (N = {N_PG}, {len(c)} iterations)")
ax.plot(pg_mean - 2 * pg_sd, color="tab:red", lw=0.6, ls=":")
ax.plot(pg_mean + 2 * pg_sd, color="tab:red", lw=0.6, ls=":", label="PGAS chain mean ± 2 sd")
ax.legend(loc="lower left", fontsize=8)
ax.set_xlabel("")
ax.set_ylabel("$x_t$")
ax2.plot(z, color="tab:red", lw=1, label="(chain mean − RTS mean) / MCMC se")
ax2.plot(pg_sd / sm_sd - 1, color="tab:green", lw=1, label="chain sd / RTS sd − 1")
ax2.axhline(0, color="k", lw=0.5)
ax2.legend(loc="upper right", fontsize=8)
ax2.set_xlabel("t")
plt.show()

print(f"max |chain mean - RTS mean| = {np.abs(pg_mean - sm_mean).max():.4f} "
      f"(= {np.abs(pg_mean - sm_mean).max() / sm_sd.min():.3f} smoothing sd); "
      f"RMS of z = {np.sqrt(np.mean(z**2)):.2f}, max |z| = {np.abs(z).max():.2f}")
print(f"chain sd / RTS sd: mean {np.mean(pg_sd / sm_sd):.3f}, range {np.min(pg_sd / sm_sd):.3f} to {np.max(pg_sd / sm_sd):.3f}")
assert np.abs(z).max() < 5 and np.sqrt(np.mean(z**2)) < 1.6
assert abs(np.mean(pg_sd / sm_sd) - 1) < 0.05 and np.abs(pg_sd / sm_sd - 1).max() < 0.2
"""
)

# ---------------------------------------------------------------------------------------
md(
    r"""
## 3. Smoothing additive functionals: FFBS and PaRIS

Many quantities of interest are smoothing expectations of **additive functionals**
$S = \sum_{t} h_t(x_{t-1}, x_t)$; here

$$
S_1 = \sum_{t=0}^{T-1} x_t, \qquad S_2 = \sum_{t=1}^{T-1} x_t x_{t-1},
$$

whose exact expectations follow from the RTS smoother:
$\mathbb E[S_1 \mid y] = \sum_t m^s_t$ and
$\mathbb E[S_2 \mid y] = \sum_t \big(\operatorname{Cov}[x_t, x_{t-1} \mid y] + m^s_t m^s_{t-1}\big)$.
($S_2$ and $\sum x_t^2$ are the sufficient statistics of $\rho$: section 4's score is such
an expectation.)

All estimators below start from a bootstrap filter with `N_SMOOTH` particles:

* **genealogy**: weight the $N$ ancestral paths of the final particles by $W_{T-1}$
  (what the filter gives for free); path degeneracy makes it noisy;
* **FFBS** (`smoothing.backward_sample`; Godsill, Doucet & West 2004) draws $M$
  trajectories backwards with the backward kernel
  $B_t(j \mid x_{t+1}) \propto W_t^j f(x_{t+1} \mid x_t^j)$:
  `method="exact"` computes all $N$ terms, $O(N)$ per draw and step; `method="mh"` runs
  one independent Metropolis–Hastings step from the genealogical ancestor with
  proposal $W_t$ (Dau & Chopin 2022), $O(1)$;
* **PaRIS** (`smoothing.paris`; Olsson & Westerborn 2017) is *online*: it carries one
  statistic $\tau_t^i \approx \mathbb E[S_t \mid x_t = x_t^i]$ per particle, updated after
  each filter step with $\tilde N = 2$ backward draws per particle,
  $\tau_t^i = \frac1{\tilde N}\sum_k \big[\tau_{t-1}^{J_{i,k}} + h_t(x_{t-1}^{J_{i,k}}, x_t^i)\big]$,
  and estimates $\mathbb E[S \mid y] \approx \sum_i W_{T-1}^i \tau_{T-1}^i$: $O(N \tilde N)$ per
  step, no stored history.

Each is run `REPEATS` times with independent keys (`jax.vmap`), so the table can report
its Monte Carlo spread; the genealogy and the two FFBS rows share the same `REPEATS`
filter runs. Times are for the batch of `REPEATS` runs, compiled beforehand: the backward
pass only for the first three rows, the whole online run (filter included) for PaRIS.
"""
)

code(
    r"""
M = N_SMOOTH                                  # FFBS trajectories per filter run
exact_S = np.array([sm_mean.sum(), (sm_cross + sm_mean[1:] * sm_mean[:-1]).sum()])


def functionals(paths, weights=None):
    # (S_1, S_2) of each trajectory (paths: (T, M)), averaged with the given weights.
    s = jnp.stack([paths.sum(0), (paths[1:] * paths[:-1]).sum(0)], axis=-1)    # (M, 2)
    return s.mean(0) if weights is None else weights @ s


def additive_fn(x_prev, x, y):                # h_t for PaRIS: (S_1, S_2) increments, batched
    return jnp.stack([x, jnp.zeros_like(x) if x_prev is None else x_prev * x], axis=-1)


def timed(f, *args):
    # Run f(*args) once, compiled beforehand; return (output, seconds).
    compiled = jax.jit(f).lower(*args).compile()
    t0 = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    return out, time.perf_counter() - t0


@jax.vmap
def filters(key):                                 # REPEATS independent filters, histories recorded
    return smc.run(key, fk, ys, N_SMOOTH, record=["particles", "log_weights", "ancestors"])


@jax.vmap
def genealogy(res, key):                          # the filter's own path estimate
    lineages = smc.trace_genealogy(res.ancestors)                          # (T, N)
    paths = res.particles_history[jnp.arange(T)[:, None], lineages]        # (T, N)
    return functionals(paths, jnp.exp(res.log_weights_history[-1]))


def ffbs(method):
    @jax.vmap
    def one(res, key):
        return functionals(smoothing.backward_sample(key, fk, res, ys, M, method=method).trajectories)
    return one


@jax.vmap
def paris(res, key):                              # online: runs its own filter, needs no history
    return smoothing.paris(key, fk, ys, N_SMOOTH, additive_fn).estimate


runs, secs_filter = timed(filters, jax.random.split(jax.random.key(5), REPEATS))
keys = jax.random.split(jax.random.key(6), REPEATS)
smoothers = {
    "genealogy (filter paths)": genealogy,
    "FFBS, exact backward draws": ffbs("exact"),
    "FFBS, MH backward draws": ffbs("mh"),
    "PaRIS (2 backward draws)": paris,
}
est, secs = {}, {}
for name, f in smoothers.items():
    out, secs[name] = timed(f, runs, keys)
    est[name] = np.asarray(out, np.float64)

print(f"N = {N_SMOOTH} particles, M = {M} FFBS trajectories, {REPEATS} runs each; the {REPEATS} filters took {secs_filter:.2f} s\n")
print(f"{'':>27} {'E[S_1 | y]':>20} {'E[S_2 | y]':>20} {'z_1':>6} {'z_2':>6} {'time':>7}")
print(f"{'exact (RTS)':>27} {exact_S[0]:20.3f} {exact_S[1]:20.3f}")
for name, e in est.items():
    mean, sd = e.mean(0), e.std(0, ddof=1)
    z_ = (mean - exact_S) / (sd / np.sqrt(REPEATS))
    print(f"{name:>27} {mean[0]:11.3f} ± {sd[0]:6.3f} {mean[1]:11.3f} ± {sd[1]:6.3f} {z_[0]:6.1f} {z_[1]:6.1f} {secs[name]:6.2f}s")
print("(mean ± sd over the runs; z = (mean - exact) / standard error of the mean)")

for name, e in est.items():
    mean, sd = e.mean(0), e.std(0, ddof=1)
    assert np.all(np.abs(mean - exact_S) < 4.5 * sd / np.sqrt(REPEATS) + 0.002 * np.abs(exact_S)), name
sd_of = {name: e.std(0, ddof=1) for name, e in est.items()}
for name in list(smoothers)[1:]:
    # the backward smoothers are several times less noisy than the filter's genealogy
    assert np.all(sd_of[name] < 0.5 * sd_of["genealogy (filter paths)"]), name
"""
)

code(
    r"""
fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
for j, ax in enumerate(axes):
    for i, (name, e) in enumerate(est.items()):
        ax.plot(np.full(REPEATS, i) + np.linspace(-0.15, 0.15, REPEATS), e[:, j], "o", ms=3, alpha=0.7)
    ax.axhline(exact_S[j], color="k", lw=1, label="exact (RTS)")
    ax.set_xticks(range(len(est)), [n.split(",")[0].split(" (")[0] + ("\nexact" if "exact" in n else "\nMH" if "MH" in n else "") for n in est], fontsize=8)
    ax.set_title(f"$E[S_{j + 1} \\mid y]$: {REPEATS} independent runs", fontsize=10)
    ax.legend(fontsize=8)
fig.tight_layout()
plt.show()
"""
)

md(
    r"""
All four estimators agree with the RTS values within their Monte Carlo error (their
$O(1/N)$ biases are below it at this $N$). The genealogy estimate is several times
noisier than the others because the $N$ paths it averages share a handful of ancestors at
early times. FFBS with exact backward draws and with a single MH step are about equally
accurate, but the MH draws cost $O(1)$ instead of $O(N)$ per trajectory and step (an
$O(TMN)$ against an $O(TM)$ algorithm; compare the times). PaRIS gets the same accuracy
online, with neither the stored particle history nor the $M$ backward passes, and its
cost is linear in $N$.

## 4. Learning: the score and maximum likelihood

For parameters $\theta = (\rho, \sigma_X, \sigma_Y)$, **Fisher's identity** writes the score
as a smoothing expectation of an additive functional,

$$
\nabla_\theta \log p_\theta(y_{0:T-1}) = \mathbb E_\theta\Big[\sum_{t} \nabla_\theta \log p_\theta(x_t, y_t \mid x_{t-1}) \,\Big|\, y_{0:T-1}\Big],
$$

which `learning.score_paris` estimates with PaRIS, $h_t = \nabla_\theta \log p_\theta(x_t, y_t \mid x_{t-1})$
computed per particle by `jax.grad`. The alternative `learning.score_stop_gradient`
differentiates the filter's $\log \hat Z$ with stop-gradient resampling (Ścibior & Wood
2021): the same identity evaluated on the filter's genealogy, with its path degeneracy.
The exact score is `jax.grad` of the Kalman log-likelihood.

A model is a function `theta -> StateSpaceModel`. The filter can be the bootstrap filter,
or any other construction with the same target: here also the guided filter with the
locally optimal proposal of notebook 01, section 5, which must follow $\theta$, so the
model function returns the `FeynmanKac` itself and the complete-data log-density is given
separately (`learning.complete_data_log_density` builds it from the state-space model).
"""
)

code(
    r"""
NAMES = ("rho", "sigma_x", "sigma_y")


def ssm_of(theta):
    rho, sx, sy = theta["rho"], theta["sigma_x"], theta["sigma_y"]
    return smc.StateSpaceModel(
        prior=lambda u: dist.Normal(0.0, sx / jnp.sqrt(1.0 - rho**2)),
        transition=lambda x_prev, u: dist.Normal(rho * x_prev, sx),
        observation=lambda x, u: dist.Normal(x, sy),
    )


def guided_of(theta):
    # The guided filter with the locally optimal proposal of the model at theta.
    rho, sx, sy = theta["rho"], theta["sigma_x"], theta["sigma_y"]
    s = 1.0 / (1.0 / sx**2 + 1.0 / sy**2)                     # Var[x_t | x_t-1, y_t]
    s0 = 1.0 / ((1.0 - rho**2) / sx**2 + 1.0 / sy**2)         # Var[x_0 | y_0]
    return smc.guided(
        ssm_of(theta),
        lambda x_prev, y: dist.Normal(s * (rho * x_prev / sx**2 + y / sy**2), jnp.sqrt(s)),
        lambda y: dist.Normal(s0 * y / sy**2, jnp.sqrt(s0)),
    )


log_density = learning.complete_data_log_density(ssm_of)     # (theta, x_prev, x, y_t) -> log p(x_t, y_t | x_t-1)


def kalman_loglik(theta, ys):
    return smc.kalman.log_likelihood(smc.kalman.univariate_params(theta["rho"], theta["sigma_x"], theta["sigma_y"]), ys)


def as_vector(tree):
    return np.stack([np.asarray(tree[k], np.float64) for k in NAMES], axis=-1)


theta_true = {k: jnp.float32(v) for k, v in zip(NAMES, (RHO, SIGMA_X, SIGMA_Y))}
exact_score = as_vector(jax.grad(kalman_loglik)(theta_true, ys))

estimators = {
    "PaRIS, guided": lambda k: learning.score_paris(k, guided_of, theta_true, ys, N_SCORE, log_density_fn=log_density),
    "PaRIS, bootstrap": lambda k: learning.score_paris(k, ssm_of, theta_true, ys, N_SCORE),
    "stop-gradient, guided": lambda k: learning.score_stop_gradient(k, guided_of, theta_true, ys, N_SCORE, log_density_fn=log_density),
    "stop-gradient, bootstrap": lambda k: learning.score_stop_gradient(k, ssm_of, theta_true, ys, N_SCORE),
}
if SMALL:                                     # saves two compilations in the quick test run
    del estimators["PaRIS, guided"], estimators["stop-gradient, guided"]
keys = jax.random.split(jax.random.key(7), SCORE_RUNS)
scores = {}
t0 = time.perf_counter()
for name, f in estimators.items():
    scores[name] = as_vector(jax.jit(jax.vmap(f))(keys).score)
print(f"{len(estimators)} x {SCORE_RUNS} score estimates, N = {N_SCORE}, in {time.perf_counter() - t0:.1f} s\n")

header = "".join(f"{'d/d ' + n:>22}" for n in NAMES)
print(f"{'':>25}{header}")
print(f"{'exact (Kalman)':>25}" + "".join(f"{g:22.2f}" for g in exact_score))
for name, s in scores.items():
    mean, sd = s.mean(0), s.std(0, ddof=1)
    print(f"{name:>25}" + "".join(f"{m:13.2f} ± {d:6.2f}" for m, d in zip(mean, sd)))
print("(mean ± sd over the runs)")

for name, s in scores.items():
    z = (s.mean(0) - exact_score) / (s.std(0, ddof=1) / np.sqrt(SCORE_RUNS))
    # the bootstrap filter's O(1/N) bias is not negligible in d/d sigma_y at this N: not tested
    checked = z if "guided" in name else z[:2]
    assert np.all(np.abs(checked) < 4), (name, z)
sd = {name: s.std(0, ddof=1) for name, s in scores.items()}
assert np.all(sd["PaRIS, bootstrap"] < 0.6 * sd["stop-gradient, bootstrap"])
"""
)

md(
    r"""
Both estimators are centred on the exact gradient, up to the $O(1/N)$ bias of the
bootstrap filter, which shows in $\partial/\partial\sigma_Y$, the hardest direction
(the guided filter's is far smaller). With the
bootstrap filter, whose weights are very uneven when $\sigma_Y = 0.2$, the genealogy-based
stop-gradient score is several times noisier than PaRIS; with the guided filter, whose
weights are nearly flat, path degeneracy is much milder and the two are close. PaRIS is
the robust choice, and the variance of its estimate grows only linearly with $T$.

**Maximum likelihood.** `learning.mle` runs stochastic gradient ascent,
$\theta_{k+1} = \theta_k + \text{step}(\widehat{\nabla \log p}(\theta_k))$, with any `optax`
optimiser (here Adam with an exponentially decaying step), a fresh PaRIS score estimate at
each iteration, all in one jitted `lax.scan`. The parameters must be unconstrained:
$\rho = \tanh u_1$, $\sigma_X = e^{u_2}$, $\sigma_Y = e^{u_3}$. The iterates are noisy, so the
estimate is the Polyak–Ruppert average of the second half.

The data: a new series of `T_MLE` observations from the true model. The reference: the
exact maximum likelihood estimate (Newton's method on the exact Kalman log-likelihood,
with `jax.grad` and `jax.hessian`) and its standard errors (from the observed
information, minus the Hessian at the maximum).
"""
)

code(
    r"""
_, ys_mle = smc.kalman.simulate(jax.random.key(1), params, 500)
ys_mle = ys_mle[:T_MLE, 0]


def constrain(u):
    return {"rho": jnp.tanh(u[0]), "sigma_x": jnp.exp(u[1]), "sigma_y": jnp.exp(u[2])}


def unconstrain(theta):
    return jnp.array([jnp.arctanh(theta["rho"]), jnp.log(theta["sigma_x"]), jnp.log(theta["sigma_y"])])


def exact_loglik_u(u):
    return kalman_loglik(constrain(u), ys_mle)


u0 = unconstrain({"rho": 0.7, "sigma_x": 0.7, "sigma_y": 0.4})    # a poor start


@jax.jit
def grad_and_hessian(u):
    return jax.grad(exact_loglik_u)(u), jax.hessian(exact_loglik_u)(u)


t0 = time.perf_counter()
u_mle = unconstrain(theta_true)        # Newton's method from the truth, to |gradient| < 1e-3
for _ in range(30):
    g, h = (np.asarray(a, np.float64) for a in grad_and_hessian(u_mle))
    if np.abs(g).max() < 1e-3:
        break
    u_mle = u_mle - np.linalg.solve(h, g).astype(np.float32)
info = -h                                            # observed information (in u)
se_u = np.sqrt(np.diag(np.linalg.inv(info)))
theta_mle = as_vector(constrain(u_mle))
print(f"exact MLE in {time.perf_counter() - t0:.1f} s; |gradient| = {np.abs(g).max():.1e}")
print(f"{'':>12}" + "".join(f"{n:>10}" for n in NAMES))
print(f"{'truth':>12}" + "".join(f"{v:10.3f}" for v in (RHO, SIGMA_X, SIGMA_Y)))
print(f"{'exact MLE':>12}" + "".join(f"{v:10.3f}" for v in theta_mle))
print(f"{'se (in u)':>12}" + "".join(f"{v:10.3f}" for v in se_u))
assert np.abs(g).max() < 1e-3 and np.all(np.linalg.eigvalsh(info) > 0)
"""
)

code(
    r"""
model_u = lambda u: guided_of(constrain(u))                                  # noqa: E731
log_density_u = learning.complete_data_log_density(lambda u: ssm_of(constrain(u)))

t0 = time.perf_counter()
fit = learning.mle(
    jax.random.key(3), model_u, u0, ys_mle, N_MLE, MLE_ITERS,
    optimizer=optax.adam(optax.exponential_decay(0.05, MLE_ITERS, 0.05)),
    log_density_fn=log_density_u,
)
jax.block_until_ready(fit.thetas)
print(f"{MLE_ITERS} iterations with N = {N_MLE}, T = {T_MLE} in {time.perf_counter() - t0:.1f} s (with compilation)")

theta_sga = as_vector(constrain(fit.theta_average))
z_u = (np.asarray(fit.theta_average, np.float64) - np.asarray(u_mle, np.float64)) / se_u
ll = lambda u: float(exact_loglik_u(u))                                      # noqa: E731
print(f"{'':>22}" + "".join(f"{n:>10}" for n in NAMES) + f"{'log-lik':>12}")
print(f"{'start':>22}" + "".join(f"{v:10.3f}" for v in as_vector(constrain(u0))) + f"{ll(u0):12.3f}")
print(f"{'SGA (Polyak average)':>22}" + "".join(f"{v:10.3f}" for v in theta_sga) + f"{ll(fit.theta_average):12.3f}")
print(f"{'exact MLE':>22}" + "".join(f"{v:10.3f}" for v in theta_mle) + f"{ll(u_mle):12.3f}")
print(f"SGA - exact MLE, in MLE standard errors (u scale): {np.round(z_u, 3)}")
assert np.all(np.abs(z_u) < (0.5 if SMALL else 0.3)), z_u                  # fewer, shorter iterations when SMALL
assert ll(u_mle) - ll(fit.theta_average) < 0.1
assert np.abs((np.asarray(u0) - np.asarray(u_mle)) / se_u).max() > 2     # and the start was far away
"""
)

code(
    r"""
path = as_vector(jax.vmap(constrain)(fit.thetas))                           # (MLE_ITERS + 1, 3)
path_ll = np.asarray(jax.jit(jax.vmap(exact_loglik_u))(fit.thetas))
labels = (r"$\rho$", r"$\sigma_X$", r"$\sigma_Y$")
avg_from = MLE_ITERS // 2

fig, axes = plt.subplots(1, 4, figsize=(13, 3.2))
for j, ax in enumerate(axes[:3]):
    ax.plot(path[:, j], color="tab:blue", lw=1, label="SGA iterates")
    ax.axhline(theta_mle[j], color="k", lw=1, label="exact MLE")
    ax.axhline((RHO, SIGMA_X, SIGMA_Y)[j], color="k", lw=1, ls=":", label="truth")
    ax.plot([avg_from, MLE_ITERS], [theta_sga[j]] * 2, color="tab:red", lw=2, label="Polyak average")
    ax.set_title(labels[j])
    ax.set_xlabel("iteration")
axes[0].legend(fontsize=7)
axes[3].plot(path_ll, color="tab:blue", lw=1)
axes[3].axhline(ll(u_mle), color="k", lw=1)
axes[3].set_ylim(ll(u_mle) - 30, ll(u_mle) + 3)
axes[3].set_title(r"exact $\log p_\theta(y)$ along the path")
axes[3].set_xlabel("iteration")
fig.tight_layout()
plt.show()
"""
)

md(
    r"""
Stochastic gradient ascent from a poor start reaches the exact maximum likelihood
estimate: the Polyak average sits a small fraction of a standard error from it, and its
log-likelihood is within a few hundredths of a nat of the maximum. Note the scale: the
MLE itself is only as accurate as its standard error, and $\sigma_Y$ is poorly identified
from $T$ observations (the state noise dominates), so the gap between the MLE and the truth
is statistical, not an optimisation error.

**Take-aways.**
* Particle Gibbs is exact for any $N$, but plain PG mixes only where the genealogy has not
  collapsed; **ancestor sampling** (`ancestor_sampling=True`) or **backward sampling**
  (`backward_sampling=True`) make ten particles enough for a series of length 100.
* For smoothing expectations of additive functionals, backward smoothing beats the
  filter's genealogy; **MH backward draws** make FFBS linear in $N$, and **PaRIS** does the
  same job online.
* The score is an additive smoothing expectation (Fisher's identity): `learning.score_paris`
  estimates it, and `learning.mle` turns it into maximum likelihood with any `optax`
  optimiser, all jitted.
"""
)


if __name__ == "__main__":
    main(OUT, __doc__)
