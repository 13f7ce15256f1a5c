"""Shared fixtures: fixed data sets and exact (Kalman) answers."""

import jax
import numpy as np
import pytest

import smcscale as smc

RHO, SIGMA_X, SIGMA_Y, T = 0.9, 1.0, 0.2, 100


@pytest.fixture(scope="session")
def lgssm_data():
    """The book LGSSM (rho=0.9, sigma_x=1, sigma_y=0.2), T=100, with its Kalman answers."""
    params = smc.kalman.univariate_params(RHO, SIGMA_X, SIGMA_Y)
    xs, ys = smc.kalman.simulate(jax.random.key(2024), params, T)
    ys = ys[:, 0]
    kf = smc.kalman.kalman_filter(params, ys)
    return {
        "params": params,
        "xs": xs[:, 0],
        "ys": ys,
        "log_z": float(kf.log_likelihood),
        "means": np.asarray(kf.filtered_means[:, 0]),
        "vars": np.asarray(kf.filtered_covs[:, 0, 0]),
    }
