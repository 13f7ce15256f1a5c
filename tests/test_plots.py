"""Plots: the genealogy tree's surviving lineages on a hand-made genealogy, and smoke tests."""

import matplotlib

matplotlib.use("Agg")

import jax  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import smcscale as smc  # noqa: E402
from smcscale.workflow import plots  # noqa: E402
from smcscale.models import lgssm  # noqa: E402

# ancestors[t][i] = parent at t-1 of particle i at t
ANC = np.array([[0, 1, 2], [0, 0, 2], [1, 1, 0]])


def test_surviving_marks_the_ancestral_tree_of_the_final_particles():
    # final particles 0 and 1 descend from particle 1 at t=1, final 2 from particle 0;
    # both of those descend from particle 0 at t=0
    expected = np.array([[True, False, False], [True, True, False], [True, True, True]])
    np.testing.assert_array_equal(plots._surviving(ANC), expected)


def test_plot_genealogy_draws_every_surviving_link():
    fig, ax = plt.subplots()
    plots.plot_genealogy(ANC, ax=ax)
    grey, bold = ax.collections
    assert len(grey.get_segments()) == 2 * 3  # every link, t = 1, 2
    segs = bold.get_segments()
    assert len(segs) == 2 + 3  # the surviving links: 2 at t = 1, 3 at t = 2
    # the bold links at t = 1 join parent 0 (t=0) to children 0 and 1 (t=1)
    t1 = sorted(tuple(map(tuple, s)) for s in segs if s[1][0] == 1)
    assert t1 == [((0.0, 0.0), (1.0, 0.0)), ((0.0, 0.0), (1.0, 1.0))]
    assert ax.get_title() == "genealogy: 1 lineage(s) survive from t=0"
    plt.close(fig)


def test_plots_run_on_a_filter():
    p = smc.kalman.univariate_params(0.9, 1.0, 0.2)
    _, ys = smc.kalman.simulate(jax.random.key(0), p, 30)
    res = smc.run(jax.random.key(1), smc.bootstrap(lgssm.univariate()), ys[:, 0], 50, record=["ancestors", "particles"])
    fig, (a, b) = plt.subplots(2)
    plots.plot_ess(res, ax=a)
    plots.plot_genealogy(res.ancestors, values=res.particles_history, ax=b)
    alive = plots._surviving(res.ancestors)
    assert alive[-1].all() and alive[0].sum() >= 1 and len(b.collections[1].get_segments()) == alive[1:].sum()
    plt.close(fig)
