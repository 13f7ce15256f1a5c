"""The particle axis sharded over 4 (forced host) devices gives the same statistics as one device."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

RUNS, N = 24, 8000


@pytest.fixture(scope="module")
def sharded_output():
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    script = os.path.join(os.path.dirname(__file__), "_sharded_script.py")
    proc = subprocess.run([sys.executable, script, str(RUNS), str(N)], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("JSON")][-1]
    return json.loads(line[4:])


def test_particles_are_really_sharded(sharded_output):
    out = sharded_output
    assert out["num_devices"] == 4
    assert out["particle_devices"] == 4 and out["weight_devices"] == 4
    assert out["shard_shapes"] == [[N // 4]]
    assert "divisible" in out["indivisible_error"]


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


def test_sharded_filtering_means_match_kalman(sharded_output):
    out = sharded_output
    ms, m1 = np.array(out["means_sharded"]), np.array(out["means_single"])
    kal = np.array(out["kalman_means"])
    se = ms.std(0, ddof=1) / np.sqrt(RUNS)
    assert (np.abs(ms.mean(0) - kal) < 5 * se + 1e-4).all()
    se_diff = np.sqrt(ms.var(0, ddof=1) / RUNS + m1.var(0, ddof=1) / RUNS)
    assert (np.abs(ms.mean(0) - m1.mean(0)) < 5 * se_diff + 1e-4).all()
