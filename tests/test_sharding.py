"""The particle axis sharded over forced host devices: the same result as one device.

Each check runs ``_sharded_script.py`` in a subprocess whose ``XLA_FLAGS`` force several CPU
devices (set in the child only, so this is safe under pytest-xdist).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from smcscale.resampling import RESAMPLERS

RUNS, N = 24, 8000


def _script(*args):
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    script = os.path.join(os.path.dirname(__file__), "_sharded_script.py")
    proc = subprocess.run([sys.executable, script, *map(str, args)], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("JSON")][-1]
    return json.loads(line[4:])


@pytest.fixture(scope="module")
def sharded_output():
    return _script("stats", RUNS, N)


@pytest.mark.slow
def test_every_scheme_sharded_equals_single_device():
    """README "Many devices": for the same key, 2 devices give the result of one, for every
    scheme in RESAMPLERS. Ancestors and particles: bitwise. log Z, its trace and the final
    log-weights: to float32 rounding (1e-6 relative); the sharded and the
    one-device programs are compiled separately, and XLA may round an elementwise log-density
    differently by an ulp (seen once: killing, one step of 30), never enough to move a
    resampling decision here."""
    out = _script("equal", 1000, 30)
    assert out["num_devices"] == 2
    for name in RESAMPLERS:
        for kappa in (0.5,):
            r = out[f"{name}/{kappa}"]
            what = f"{name}, ess_threshold={kappa}"
            assert r["particle_devices"] == 2, what
            assert r["resampled"] >= 10, what  # resampling really happened
            assert r["ancestors_equal"], what
            assert r["particles_equal"], what
            (zs, z1), (ts, t1) = r["log_z"], r["log_z_trace"]
            np.testing.assert_allclose(zs, z1, rtol=1e-6, err_msg=what)
            np.testing.assert_allclose(ts, t1, rtol=1e-6, atol=1e-5, err_msg=what)
            ws, w1 = map(np.array, r["log_weights"])
            np.testing.assert_array_equal(np.isfinite(ws), np.isfinite(w1), err_msg=what)
            np.testing.assert_allclose(ws, w1, rtol=1e-6, atol=1e-6, err_msg=what)


@pytest.mark.slow
def test_particles_are_really_sharded(sharded_output):
    out = sharded_output
    assert out["num_devices"] == 4
    assert out["particle_devices"] == 4 and out["weight_devices"] == 4
    assert out["shard_shapes"] == [[N // 4]]
    assert "divisible" in out["indivisible_error"]


@pytest.mark.slow
def test_sharded_log_z_matches_single_device_statistics(sharded_output):
    out = sharded_output
    s, o = np.array(out["sharded"]), np.array(out["single"])
    log_z = out["kalman_log_z"]
    # Two-sample comparison of the mean of log Ẑ: within 4 standard errors of the difference.
    se = np.sqrt(s.var(ddof=1) / RUNS + o.var(ddof=1) / RUNS)
    assert abs(s.mean() - o.mean()) < 4 * se, (s.mean(), o.mean(), se)
    # spreads agree (ratio of variances of 24 draws each: well inside [1/4, 4])
    assert 0.25 < s.var() / o.var() < 4.0
    # and both are unbiased for Z
    for arr in (s, o):
        ratio = np.exp(arr - log_z)
        assert abs(ratio.mean() - 1) < 4 * ratio.std(ddof=1) / np.sqrt(RUNS) + 1e-3


@pytest.mark.slow
def test_sharded_filtering_means_match_kalman(sharded_output):
    out = sharded_output
    ms, m1 = np.array(out["means_sharded"]), np.array(out["means_single"])
    kal = np.array(out["kalman_means"])
    se = ms.std(0, ddof=1) / np.sqrt(RUNS)
    assert (np.abs(ms.mean(0) - kal) < 5 * se + 1e-4).all()
    se_diff = np.sqrt(ms.var(0, ddof=1) / RUNS + m1.var(0, ddof=1) / RUNS)
    assert (np.abs(ms.mean(0) - m1.mean(0)) < 5 * se_diff + 1e-4).all()
