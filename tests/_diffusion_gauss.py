"""Exact answers for 1-D Gaussian experts under the VP SDE, for the diffusion tests.

With Gaussian experts ``N(m_i, v_i)`` every score is affine in ``x``, so the FKC weight
increments are quadratic and the Euler–Maruyama moves affine: the weighted law of the
discretised sampler stays an (unnormalised) Gaussian, which this module propagates exactly
in float64 — independently of the library's code (the formulas are written out here). It
gives the N → ∞ limit of the sampler at a given number of steps (mean, variance and the
normaliser ``log Z``), hence the exact discretisation error.
"""

from __future__ import annotations

import numpy as np


class GaussMeasure:
    """exp(c) N(m, v)."""

    def __init__(self, c, m, v):
        self.c, self.m, self.v = float(c), float(m), float(v)

    def times_exp_quadratic(self, q2, q1, q0):
        prec = 1.0 / self.v - 2.0 * q2
        assert prec > 0, "weight not integrable"
        v = 1.0 / prec
        m = v * (self.m / self.v + q1)
        c = self.c + q0 + 0.5 * np.log(v / self.v) + 0.5 * (m**2 / v - self.m**2 / self.v)
        return GaussMeasure(c, m, v)

    def affine_move(self, a, b, noise_var):
        return GaussMeasure(self.c, a * self.m + b, a * a * self.v + noise_var)


def vp(beta_min=0.1, beta_max=20.0):
    lam = lambda t: beta_min + t * (beta_max - beta_min)
    ib = lambda t: beta_min * t + 0.5 * (beta_max - beta_min) * t**2
    alpha = lambda t: np.exp(-0.5 * ib(t))
    sig2 = lambda t: -np.expm1(-ib(t))
    return lam, alpha, sig2


def fkc_limit(experts, num_steps, *, weights=True, tilt=None, t_min=1e-3, T=1.0):
    """Limit law of the discretised sampler: experts [(beta, mean, var)], tilt (beta, a) for
    exp(beta a x). Returns (log_z, mean, var). ``weights=False``: the plain sampler (no
    weights; log_z meaningless)."""
    lam, alpha, sig2 = vp()
    grid = np.linspace(T, t_min, num_steps + 1)
    B = sum(b for b, _, _ in experts)

    def coeffs(t):
        al, s2 = alpha(t), sig2(t)
        P = [1.0 / (al**2 * v + s2) for _, _, v in experts]
        A = sum(b * p for (b, _, _), p in zip(experts, P))
        C = sum(b * p * al * m for (b, m, _), p in zip(experts, P))
        return al, P, A, C

    # t = 0: x ~ N(0, 1/B) weighted by prod_i N(x; alpha m_i, V_i)^beta_i / N(x; 0, 1/B)
    al, P, A, C = coeffs(T)
    if weights:
        # the unnormalised measure is prod_i N(x; al m_i, 1/P_i)^beta_i: exp(-A x^2/2 + C x + const)
        const = sum(b * (0.5 * np.log(p / (2 * np.pi)) - 0.5 * p * (al * m) ** 2) for (b, m, _), p in zip(experts, P))
        mu = GaussMeasure(0.0, 0.0, 1e12).times_exp_quadratic(-0.5 * A, C, 0.0)
        # remove the flat start: GaussMeasure(0, 0, 1e12) stood for Lebesgue measure times N(0,1e12)'s density
        mu = GaussMeasure(mu.c + const + 0.5 * np.log(2 * np.pi * 1e12), mu.m, mu.v)
    else:
        mu = GaussMeasure(0.0, 0.0, 1.0 / B)
    for k in range(num_steps):
        t, tn = grid[k], grid[k + 1]
        h = t - tn
        g2 = lam(t)
        al, P, A, C = coeffs(t)
        bt = bt_next = 0.0
        if tilt is not None:
            frac = lambda s: np.clip((T - s) / (T - t_min), 0, 1)
            bt, bt_next = tilt[0] * frac(t), tilt[0] * frac(tn)
        if weights:
            # rate = (B-1)(-lam/2) + g2/2 [ (C - A x)^2 - sum b (P al m - P x)^2 ]
            q2 = 0.5 * g2 * (A**2 - sum(b * p * p for (b, _, _), p in zip(experts, P)))
            q1 = 0.5 * g2 * (-2 * A * C + 2 * sum(b * p * p * al * m for (b, m, _), p in zip(experts, P)))
            q0 = 0.5 * g2 * (C**2 - sum(b * (p * al * m) ** 2 for (b, m, _), p in zip(experts, P))) + (B - 1) * (-0.5 * g2)
            q2, q1, q0 = q2 * h, q1 * h, q0 * h
            if tilt is not None:
                a = tilt[1]
                # bt a ((g2/2)(C - A x) - f),  f = -lam x / 2
                q1 += h * bt * a * (-0.5 * g2 * A + 0.5 * g2)
                q0 += h * bt * a * 0.5 * g2 * C
                q1 += (bt_next - bt) * a
            mu = mu.times_exp_quadratic(q2, q1, q0)
        # drift = lam x/2 + g2 (C - A x) + (g2/2) bt a
        a_move = 1.0 + h * (0.5 * g2 - g2 * A)
        b_move = h * (g2 * C + (0.5 * g2 * bt * tilt[1] if tilt is not None else 0.0))
        mu = mu.affine_move(a_move, b_move, g2 * h)
    return mu.c, mu.m, mu.v


def exact(experts, tilt=None):
    """Exact (log Z, mean, var) of prod_i N(m_i, v_i)^beta_i exp(beta a x)."""
    prec = sum(b / v for b, _, v in experts)
    lin = sum(b * m / v for b, m, v in experts)
    const = sum(b * (-0.5 * np.log(2 * np.pi * v) - 0.5 * m * m / v) for b, m, v in experts)
    if tilt is not None:
        lin += tilt[0] * tilt[1]
    var = 1.0 / prec
    mean = lin * var
    log_z = const + 0.5 * np.log(2 * np.pi * var) + 0.5 * mean**2 / var
    return log_z, mean, var
