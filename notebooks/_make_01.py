"""Build ``notebooks/01_particle_filter.ipynb`` from the cells below.

    python notebooks/_make_01.py            # write the notebook without outputs
    python notebooks/_make_01.py --execute  # ... then run it at full size and keep the outputs

Edit the notebook here, not in Jupyter, so that the source stays reviewable as a diff.
``--execute`` runs the notebook with the ``python3`` kernel in this interpreter's
environment (``SMCSCALE_NOTEBOOK_SMALL`` unset) and stores the outputs without per-cell
timing metadata.
"""

from __future__ import annotations

import pathlib

from _nbgen import REPO, code, main, md  # noqa: F401 (REPO used in f-strings)

HERE = pathlib.Path(__file__).resolve().parent
OUT = HERE / "01_particle_filter.ipynb"


# ---------------------------------------------------------------------------------------
md(
    f"""
# Particle filtering with smcscale

[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/{REPO}/blob/main/notebooks/01_particle_filter.ipynb)

This notebook runs particle filters on the one state-space model whose answer is known
exactly, the linear-Gaussian model, and checks them against the Kalman filter:

1. a model written by hand as a `smc.FeynmanKac` (three batched JAX functions);
2. the estimate $\\hat Z$ of the marginal likelihood $Z = p(y_{{0:T-1}})$ over many
   independent runs: $\\hat Z$ is unbiased, $\\log \\hat Z$ is not;
3. filtering means against the Kalman filter;
4. the ESS, resampling times and the genealogy of the particles (path degeneracy);
5. the same model written with numpyro distributions, and what a better proposal buys.

It runs top to bottom on a CPU in a couple of minutes. Every random number comes from a
fixed `jax.random` key, and the `assert`s on the key numbers make running the notebook a
test (the test suite runs it with `SMCSCALE_NOTEBOOK_SMALL=1`, fewer particles and runs).
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
    """
import os

# SMCSCALE_NOTEBOOK_SMALL=1 (set by the test suite) runs a smaller version in under a minute.
SMALL = os.environ.get("SMCSCALE_NOTEBOOK_SMALL") == "1"

N = 500 if SMALL else 1_000            # particles of the main filter
REPEATS = 200 if SMALL else 1_000      # independent runs for the log Z study
N_PROPOSALS = 100                      # particles in the bootstrap-vs-guided comparison
T = 100                                # time steps
print("size:", "small" if SMALL else "full", dict(N=N, REPEATS=REPEATS, N_PROPOSALS=N_PROPOSALS, T=T))
"""
)

code(
    """
import time
import warnings

# numpyro imports tqdm.auto, which warns when ipywidgets is not installed: harmless.
warnings.filterwarnings("ignore", message="IProgress not found")

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import smcscale as smc
from smcscale.models import lgssm
from smcscale.workflow import plots

print("jax", jax.__version__, "on", jax.devices(), "| smcscale", smc.__version__)
"""
)

# ---------------------------------------------------------------------------------------
md(
    """
## 1. A model by hand: the linear-Gaussian state-space model

$$
x_0 \\sim \\mathcal N\\!\\Big(0, \\tfrac{\\sigma_X^2}{1-\\rho^2}\\Big), \\qquad
x_t = \\rho\\, x_{t-1} + \\sigma_X\\, \\varepsilon_t, \\qquad
y_t = x_t + \\sigma_Y\\, \\eta_t, \\qquad \\varepsilon_t, \\eta_t \\overset{iid}{\\sim} \\mathcal N(0, 1),
$$

with $\\rho = 0.9$, $\\sigma_X = 1$, $\\sigma_Y = 0.2$ (precise observations: a hard case for
the bootstrap filter). The filtering laws $p(x_t \\mid y_{0:t})$ and the likelihood
$Z = p(y_{0:T-1})$ are given exactly by the Kalman filter, so every number below has a
reference.

smcscale runs **Feynman–Kac models**: a Markov chain with initial law $M_0$ and kernels
$M_t(x_{t-1}, \\mathrm dx_t)$, reweighted by potentials $G_t(x_{t-1}, x_t)$. The particle
filter targets

$$
\\mathbb Q_t(\\mathrm dx_{0:t}) = \\frac{1}{Z_t}\\, M_0(\\mathrm dx_0)\\, G_0(x_0)
\\prod_{s=1}^{t} M_s(x_{s-1}, \\mathrm dx_s)\\, G_s(x_{s-1}, x_s).
$$

The **bootstrap** filter of this model takes

* $M_0 = \\mathcal N(0, \\sigma_X^2 / (1-\\rho^2))$, the stationary law of $x$ (the prior);
* $M_t(x_{t-1}, \\cdot) = \\mathcal N(\\rho\\, x_{t-1}, \\sigma_X^2)$, the state transition;
* $G_t(x_{t-1}, x_t) = \\mathcal N(y_t;\\, x_t, \\sigma_Y^2)$, the likelihood of the observation
  (the same for $t = 0$),

so that $\\mathbb Q_t$ is the posterior $p(x_{0:t} \\mid y_{0:t})$ and $Z_t = p(y_{0:t})$.

In code, these are three **batched** functions: the particles are an `(N,)` array (any
pytree with a leading particle axis would do), and `y` is the slice at step $t$ of the
`inputs` that `smc.run` scans over, here the observation $y_t$.
"""
)

code(
    """
RHO, SIGMA_X, SIGMA_Y = 0.9, 1.0, 0.2
SD0 = SIGMA_X / np.sqrt(1.0 - RHO**2)      # stationary standard deviation of x


def sample_initial(key, n, y0):            # x_0 ~ M_0, shape (n,)
    return SD0 * jax.random.normal(key, (n,))


def sample_transition(key, x_prev, y):     # x_t ~ M_t(x_{t-1}, .), for all particles at once
    return RHO * x_prev + SIGMA_X * jax.random.normal(key, x_prev.shape)


def log_potential(x_prev, x, y):           # log G_t = log N(y_t; x_t, sigma_Y^2), shape (n,)
    return -0.5 * ((y - x) / SIGMA_Y) ** 2 - np.log(SIGMA_Y) - 0.5 * np.log(2 * np.pi)


fk = smc.FeynmanKac(sample_initial, sample_transition, log_potential)
"""
)

md(
    """
Simulate $T = 100$ observations with `smc.kalman.simulate` and compute the exact answer
with `smc.kalman.kalman_filter` (both work on the same `LGSSMParams`).
"""
)

code(
    """
params = smc.kalman.univariate_params(RHO, SIGMA_X, SIGMA_Y)   # A, Q, C, R, m0, P0 (stationary start)
xs, ys = smc.kalman.simulate(jax.random.key(0), params, T)     # shapes (T, 1), (T, 1)
xs, ys = xs[:, 0], ys[:, 0]                                    # scalar model: (T,)

kf = smc.kalman.kalman_filter(params, ys)
log_Z = float(kf.log_likelihood)
kf_mean = np.asarray(kf.filtered_means[:, 0])
kf_sd = np.sqrt(np.asarray(kf.filtered_covs[:, 0, 0]))
print(f"exact log Z = log p(y_0:{T - 1}) = {log_Z:.4f}")

fig, ax = plt.subplots(figsize=(9, 3))
ax.plot(xs, color="k", lw=1, label="hidden state $x_t$")
ax.plot(ys, ".", color="tab:orange", ms=4, label="observation $y_t$")
ax.set_xlabel("t")
ax.legend(fontsize=8)
plt.show()
"""
)

md(
    """
One run of the filter: `N` particles, systematic resampling whenever the ESS falls below
$\\kappa N$ with $\\kappa$ = `ess_threshold` = 0.5. `summaries` are computed on the fly
after every reweighting, here the filtering mean $\\sum_i W_t^i x_t^i$ and second moment
$\\sum_i W_t^i (x_t^i)^2$, and `record=["ancestors"]` keeps the `(T, N)` ancestor indices
for the genealogy in section 4.
"""
)

code(
    """
t0 = time.perf_counter()
result = smc.run(
    jax.random.key(1), fk, ys, N,
    ess_threshold=0.5, resampling="systematic",
    summaries={"mean": smc.weighted_mean(), "m2": smc.weighted_mean(lambda x: x**2)},
    record=["ancestors"],
)
print(f"log Z-hat = {float(result.log_z):.4f}   (exact {log_Z:.4f})   [{time.perf_counter() - t0:.2f} s, with compilation]")
print(f"ESS / N after reweighting: mean {float(result.ess.mean()) / N:.2f}, min {float(result.ess.min()) / N:.3f}")
print(f"resampled before {int(result.resampled.sum())} of the {T - 1} moves")
"""
)

# ---------------------------------------------------------------------------------------
md(
    """
## 2. The likelihood estimate against the Kalman filter

`smc.run` returns $\\log \\hat Z$, the log of an **unbiased** estimate of $Z$:
$\\mathbb E[\\hat Z] = Z$ for every $N$ and every resampling threshold $\\kappa$. Its log is
*not* unbiased. For large $N$, $\\log \\hat Z - \\log Z$ is close to Gaussian,
$\\mathcal N(\\mu, s^2)$, and $\\mathbb E[\\hat Z / Z] = e^{\\mu + s^2/2} = 1$ forces
$\\mu = -s^2/2$: **$\\log \\hat Z$ is biased low by about half its variance**. A single run
therefore tends to underestimate $\\log Z$; this is not a bug.

We check both facts over many independent runs, which `jax.vmap` over the PRNG keys runs
as one batched computation. Unbiasedness of $\\hat Z$ means that the log-mean-exp of
$d = \\log \\hat Z - \\log Z$ over $R$ runs,
$\\log \\frac1R \\sum_r \\hat Z_r / Z$, is close to 0. Its Monte Carlo standard error is
(delta method) $\\operatorname{sd}(\\hat Z/Z) \\,/\\, (\\sqrt R\\, \\overline{\\hat Z / Z})$.

We compare thresholds $\\kappa$ = 1 (resample at every step), 0.5 (the default), 0.1 and
0 (never resample), all with the same keys.
"""
)

code(
    """
def many_runs(fk, num_particles, key, repeats, **kwargs):
    \"\"\"`repeats` independent runs of `smc.run`, vmapped over PRNG keys.\"\"\"
    keys = jax.random.split(key, repeats)
    return jax.vmap(lambda k: smc.run(k, fk, ys, num_particles, **kwargs))(keys)


def z_check(log_z_hat):
    \"\"\"Statistics of d = log Z-hat - log Z over the runs.\"\"\"
    d = np.asarray(log_z_hat, np.float64) - log_Z
    lme = float(smc.log_mean_exp(jnp.asarray(d)))          # log mean (Z-hat / Z)
    w = np.exp(d - d.max())                                 # Z-hat / Z, rescaled
    se = float(w.std() / (w.mean() * np.sqrt(len(d))))     # MC standard error of lme
    return dict(d=d, mean=d.mean(), var=d.var(), lme=lme, se=se)


KAPPAS = (1.0, 0.5, 0.1, 0.0)
stats = {}
t0 = time.perf_counter()
for kappa in KAPPAS:
    runs = many_runs(fk, N, jax.random.key(2), REPEATS, ess_threshold=kappa)
    stats[kappa] = z_check(runs.log_z)
    stats[kappa]["resampled"] = float(np.asarray(runs.resampled)[:, 1:].mean())
print(f"{len(KAPPAS)} x {REPEATS} runs of N = {N} particles in {time.perf_counter() - t0:.1f} s\\n")

print(f"{'kappa':>5} {'resampled':>9} {'mean d':>10} {'var d':>10} {'-var/2':>10} {'lme(d)':>10} {'MC se':>8}")
for kappa, s in stats.items():
    print(f"{kappa:5.1f} {s['resampled']:9.0%} {s['mean']:10.3f} {s['var']:10.3f} {-s['var'] / 2:10.3f} {s['lme']:10.3f} {s['se']:8.3f}")

# Z-hat is unbiased: log-mean-exp(d) is 0 within Monte Carlo error ...
for kappa in (1.0, 0.5):
    s = stats[kappa]
    assert abs(s["lme"]) < 4 * s["se"], (kappa, s["lme"], s["se"])
    # ... while log Z-hat is biased low, by about half its variance.
    assert s["mean"] < 0 and abs(s["mean"] + s["var"] / 2) < 0.5 * s["var"], (kappa, s["mean"], s["var"])
"""
)

code(
    """
fig, ax = plt.subplots(figsize=(9, 3.5))
bins = np.linspace(min(stats[k]["d"].min() for k in (1.0, 0.1)), max(stats[k]["d"].max() for k in (1.0, 0.1)), 60)
for kappa, color in ((1.0, "tab:blue"), (0.1, "tab:orange")):
    s = stats[kappa]
    label = "$\\\\kappa$ = 1 and 0.5 (identical here)" if kappa == 1.0 else f"$\\\\kappa$ = {kappa}"
    ax.hist(s["d"], bins=bins, histtype="stepfilled", alpha=0.35, color=color, label=label)
    ax.axvline(s["mean"], color=color, ls="--", lw=1.5)
ax.axvline(0.0, color="k", lw=1.5, label="exact (Kalman)")
ax.set_xlabel(r"$\\log \\hat Z - \\log Z$  (dashed: mean $\\approx -\\mathrm{Var}/2$)")
ax.set_ylabel("runs")
ax.legend(fontsize=8)
plt.show()
"""
)

md(
    """
What the table shows:

* **$\\kappa$ = 1 and $\\kappa$ = 0.5 give identical runs.** With $\\sigma_Y = 0.2$ each
  observation is so informative that the ESS falls to about a fifth of $N$ after every
  reweighting, so the adaptive rule resamples before every move, exactly as $\\kappa = 1$
  does; with the same keys the driver draws the same random numbers.
* **$\\kappa$ = 0.1** resamples only about half the time, lets the weights degenerate
  further in between, and the variance of $\\log \\hat Z$ grows. $\\hat Z$ is still unbiased.
* **$\\kappa$ = 0** (sequential importance sampling, no resampling) is still unbiased in
  theory, but the weights collapse onto one particle within a few steps, the variance is
  astronomical and the log-mean-exp over a thousand runs is nowhere near 0: unbiasedness
  alone says little; the variance is what matters.
* In every case the mean of $\\log \\hat Z - \\log Z$ is close to $-\\mathrm{Var}/2$.
"""
)

# ---------------------------------------------------------------------------------------
md(
    """
## 3. Filtering means against the Kalman filter

The summaries of the single run of section 1 give the particle estimates of
$\\mathbb E[x_t \\mid y_{0:t}]$ and $\\operatorname{sd}[x_t \\mid y_{0:t}]$; the Kalman filter
gives them exactly.
"""
)

code(
    """
pf_mean = np.asarray(result.summaries["mean"])
pf_sd = np.sqrt(np.asarray(result.summaries["m2"]) - pf_mean**2)
z = (pf_mean - kf_mean) / kf_sd                  # error in units of the posterior sd

fig, (ax, ax2) = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True, height_ratios=(2, 1))
plots.plot_filtering(kf_mean, kf_sd, truth=xs, ax=ax, label="Kalman mean ± 2 sd")
ax.plot(pf_mean, ".", color="tab:red", ms=3, label=f"particle filter mean (N = {N})")
ax.legend(loc="lower left", fontsize=8)
ax.set_xlabel("")
ax.set_ylabel("$x_t$")
ax2.plot(z, color="tab:red", lw=1, label="(PF mean − KF mean) / KF sd")
ax2.plot(pf_sd / kf_sd - 1, color="tab:green", lw=1, label="PF sd / KF sd − 1")
ax2.axhline(0, color="k", lw=0.5)
ax2.legend(loc="upper right", fontsize=8)
ax2.set_xlabel("t")
plt.show()

rms = float(np.sqrt(np.mean(z**2)))
print(f"RMS error of the filtering mean: {rms:.3f} posterior sd; mean PF sd / KF sd = {np.mean(pf_sd / kf_sd):.3f}")
assert rms < 0.25 and np.max(np.abs(z)) < 1.0
assert abs(np.mean(pf_sd / kf_sd) - 1) < 0.1
"""
)

md(
    """
The particle means are indistinguishable from the exact ones at this scale; the error is
a small fraction of the posterior standard deviation and shrinks like $1/\\sqrt N$.
"""
)

# ---------------------------------------------------------------------------------------
md(
    """
## 4. ESS, resampling, and path degeneracy

`plots.plot_ess` draws the ESS after each reweighting and marks the resampling times.
Above, the run with $\\kappa$ = 0.5 (it resamples before every move, see section 2);
below, $\\kappa$ = 0.1, which resamples only once the ESS has dropped below $0.1 N$ (dashed
line), about every other step here, and carries the weights over in between.
"""
)

code(
    """
result_01 = smc.run(jax.random.key(1), fk, ys, N, ess_threshold=0.1)

fig, (ax, ax2) = plt.subplots(2, 1, figsize=(9, 5), sharex=True)
for a, res, kappa in ((ax, result, 0.5), (ax2, result_01, 0.1)):
    plots.plot_ess(res, ax=a)
    a.axhline(kappa, color="tab:red", lw=0.8, ls="--")
    a.set_title(rf"$\\kappa$ = {kappa}", fontsize=10)
    a.legend(loc="upper right", fontsize=8)
ax.set_xlabel("")
fig.tight_layout()
plt.show()
"""
)

md(
    """
Each resampling step kills some particles and duplicates others, so tracing the final
particles back in time through their ancestors (`smc.trace_genealogy`), the lineages
coalesce: a few tens of steps back, all $N$ final particles descend from a handful of
ancestors. This is **path degeneracy**. It does not hurt the *filtering* estimates of
section 3 (they use the particles at time $t$ only), but the particle approximation of the
*smoothing* law $p(x_{0:T-1} \\mid y_{0:T-1})$ carried by the final genealogy rests on very
few distinct paths near $t = 0$. More particles only delay it (the coalescence time
grows roughly linearly in $N$); smoothing algorithms (backward sampling, particle Gibbs
with ancestor sampling) are the cure.
"""
)

code(
    """
back = np.asarray(smc.trace_genealogy(result.ancestors))       # (T, N): ancestor at t of final particle i
lineages = np.array([len(np.unique(b)) for b in back])         # distinct ancestors at each t

fig, ax = plt.subplots(figsize=(9, 3))
ax.semilogy(lineages, color="tab:blue")
ax.set_xlabel("t")
ax.set_ylabel("surviving lineages")
ax.set_title(f"ancestors at time t of the N = {N} particles at time T − 1 = {T - 1}", fontsize=10)
plt.show()
print("surviving lineages at t = 0, 25, 50, 75, 90, 99:", lineages[[0, 25, 50, 75, 90, 99]])
assert lineages[-1] == N and lineages[0] <= N // 20 and np.all(np.diff(lineages) >= 0)
"""
)

md(
    """
`plots.plot_genealogy` draws the whole family tree: every particle's link to its parent
(grey) and the surviving lineages (blue). To keep it readable, a short run with 50
particles on the first 40 observations, with the particle values on the vertical axis
(`record=["particles"]` keeps them).
"""
)

code(
    """
small = smc.run(jax.random.key(3), fk, ys[:40], 50, record=["ancestors", "particles"])
fig, ax = plt.subplots(figsize=(9, 4))
plots.plot_genealogy(small.ancestors, values=small.particles_history, ax=ax)
ax.plot(xs[:40], "k--", lw=0.8, label="hidden state")
ax.legend(fontsize=8)
plt.show()
"""
)

# ---------------------------------------------------------------------------------------
md(
    """
## 5. The same model with numpyro distributions, and a better proposal

Instead of writing $M_t$ and $G_t$ by hand, a `smc.StateSpaceModel` takes the prior, the
transition and the observation as numpyro distributions (batched over particles), and
`smc.bootstrap`, `smc.guided` and `smc.auxiliary` turn it into a `FeynmanKac`.
`smcscale.models.lgssm.univariate` is exactly the model above:

```python
smc.StateSpaceModel(
    prior=lambda y: dist.Normal(0.0, sigma_x / (1 - rho**2) ** 0.5),
    transition=lambda x_prev, y: dist.Normal(rho * x_prev, sigma_x),
    observation=lambda x, y: dist.Normal(x, sigma_y),
)
```

The bootstrap filter built from it is the same algorithm as our hand-written `fk`; it even
draws the same random numbers, so the same key gives the same $\\log \\hat Z$.
"""
)

code(
    """
ssm = lgssm.univariate(RHO, SIGMA_X, SIGMA_Y)
boot = smc.bootstrap(ssm)
same = smc.run(jax.random.key(1), boot, ys, N)
print(f"hand-written: {float(result.log_z):.4f}   numpyro bootstrap: {float(same.log_z):.4f}")
assert abs(float(same.log_z) - float(result.log_z)) < 1e-2
"""
)

md(
    """
The bootstrap filter proposes from the transition, blind to $y_t$: with $\\sigma_Y = 0.2$
most proposed particles land far from the observation and get negligible weight. A
**guided** filter proposes from $q_t(x_t \\mid x_{t-1}, y_t)$ and corrects with
$G_t = g(y_t \\mid x_t)\\, f(x_t \\mid x_{t-1}) / q_t(x_t \\mid x_{t-1})$. The **locally
optimal** proposal $q_t \\propto f\\, g$ is Gaussian here,

$$
q_t(x_t \\mid x_{t-1}, y_t) = \\mathcal N\\!\\Big(s\\,\\big(\\tfrac{\\rho x_{t-1}}{\\sigma_X^2} + \\tfrac{y_t}{\\sigma_Y^2}\\big),\\; s\\Big),
\\qquad s = \\big(\\sigma_X^{-2} + \\sigma_Y^{-2}\\big)^{-1},
$$

and makes $G_t = p(y_t \\mid x_{t-1}) = \\mathcal N(y_t;\\, \\rho x_{t-1}, \\sigma_X^2 + \\sigma_Y^2)$
independent of the new particle: the weights only vary through $x_{t-1}$.
`lgssm.univariate_optimal_proposal` returns it (and the matching $q_0$). Adding the
look-ahead $\\eta_t(x_{t-1}) = p(y_t \\mid x_{t-1})$ at resampling gives the *fully adapted*
auxiliary filter (`smc.auxiliary`).

We compare the three with only `N_PROPOSALS` = 100 particles each, over the same
`REPEATS` runs.
"""
)

code(
    """
proposal, proposal_initial = lgssm.univariate_optimal_proposal(RHO, SIGMA_X, SIGMA_Y)
filters = {
    "bootstrap": boot,
    "guided (locally optimal)": smc.guided(ssm, proposal, proposal_initial),
    "fully adapted auxiliary": smc.auxiliary(
        ssm, lgssm.univariate_lookahead(RHO, SIGMA_X, SIGMA_Y), proposal, proposal_initial
    ),
}
pstats = {}
for name, f in filters.items():
    runs = many_runs(f, N_PROPOSALS, jax.random.key(4), REPEATS)
    pstats[name] = z_check(runs.log_z)
    pstats[name]["ess"] = float(np.asarray(runs.ess).mean()) / N_PROPOSALS

print(f"N = {N_PROPOSALS} particles, {REPEATS} runs each\\n")
print(f"{'filter':>26} {'mean ESS/N':>10} {'mean d':>9} {'var d':>9} {'lme(d)':>9} {'MC se':>7}")
for name, s in pstats.items():
    print(f"{name:>26} {s['ess']:10.2f} {s['mean']:9.3f} {s['var']:9.3f} {s['lme']:9.3f} {s['se']:7.3f}")
ratio = pstats["bootstrap"]["var"] / pstats["guided (locally optimal)"]["var"]
print(f"\\nvariance of log Z-hat: bootstrap / guided = {ratio:.0f}")

g = pstats["guided (locally optimal)"]
assert ratio > 20, ratio
assert abs(g["lme"]) < 4 * g["se"], (g["lme"], g["se"])
"""
)

code(
    """
colors = dict(zip(pstats, ("tab:blue", "tab:orange", "tab:green")))
fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
for ax, names in zip(axes, (list(pstats), list(pstats)[1:])):
    for name in names:
        ax.hist(pstats[name]["d"], bins=50, histtype="step", lw=1.5, color=colors[name], label=name)
    ax.axvline(0.0, color="k", lw=1)
    ax.set_xlabel(r"$\\log \\hat Z - \\log Z$")
axes[0].set_ylabel("runs")
axes[0].legend(fontsize=8, loc="upper left")
axes[1].set_title("zoom: the two adapted filters", fontsize=10)
fig.tight_layout()
plt.show()
"""
)

md(
    """
With 100 particles the bootstrap filter's $\\log \\hat Z$ sits about 5 nats low, with a
standard deviation above 4 nats: its $\\hat Z$ is still unbiased (the log-mean-exp is
within its, large, standard error of 0), but a single run says little. The locally
optimal proposal cuts the variance of $\\log \\hat Z$ by two to three orders of magnitude
at the same cost per particle, and its estimates pass the unbiasedness check; the look-ahead
adds little here, because with this proposal the weights are already nearly flat.

**Take-aways.** Write a model as three batched functions, or as numpyro distributions;
`smc.run` gives an unbiased $\\hat Z$ (expect $\\log \\hat Z$ to sit about $\\mathrm{Var}/2$
low), on-the-fly summaries, and the genealogy; `jax.vmap` runs many filters at once; and
a proposal that looks at the data is worth far more than extra particles.
"""
)


if __name__ == "__main__":
    main(OUT, __doc__)
