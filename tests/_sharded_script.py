"""Run by test_sharding.py in a subprocess with forced host devices (XLA_FLAGS set first).

    python _sharded_script.py stats RUNS N   # 4 devices: sharding facts and statistics
    python _sharded_script.py equal N T      # 2 devices: every scheme, sharded vs one device
"""

import json
import os
import sys

MODE = sys.argv[1]
DEVICES = {"stats": 4, "equal": 2}[MODE]
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={DEVICES}"

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

import smcscale as smc  # noqa: E402
from smcscale.models import lgssm  # noqa: E402
from smcscale.resampling import RESAMPLERS  # noqa: E402

params = smc.kalman.univariate_params(0.9, 1.0, 0.2)
fk = smc.bootstrap(lgssm.univariate(0.9, 1.0, 0.2))
mesh = Mesh(np.array(jax.devices()), ("particles",))
out = {"num_devices": len(jax.devices())}


def stats(runs, n):
    _, ys = smc.kalman.simulate(jax.random.key(2024), params, 100)
    ys = ys[:, 0]
    kf = smc.kalman.kalman_filter(params, ys)
    summ = {"mean": smc.weighted_mean()}
    out.update({"sharded": [], "single": [], "means_sharded": [], "means_single": []})
    for i in range(runs):
        key = jax.random.key(100 + i)
        rs = smc.run(key, fk, ys, n, ess_threshold=0.5, summaries=summ, mesh=mesh)
        r1 = smc.run(key, fk, ys, n, ess_threshold=0.5, summaries=summ)
        if i == 0:
            out["particle_devices"] = len(rs.particles.sharding.device_set)
            out["weight_devices"] = len(rs.log_weights.sharding.device_set)
            shard_shapes = {tuple(s.data.shape) for s in rs.particles.addressable_shards}
            out["shard_shapes"] = sorted(shard_shapes)
        out["sharded"].append(float(rs.log_z))
        out["single"].append(float(r1.log_z))
        out["means_sharded"].append(np.asarray(rs.summaries["mean"]).tolist())
        out["means_single"].append(np.asarray(r1.summaries["mean"]).tolist())
    out["kalman_log_z"] = float(kf.log_likelihood)
    out["kalman_means"] = np.asarray(kf.filtered_means[:, 0]).tolist()
    try:
        smc.run(jax.random.key(0), fk, ys, 10, mesh=mesh)
    except ValueError as e:
        out["indivisible_error"] = str(e)


def equal(n, t):
    """Same key, same model, default ESS-adaptive schedule: the sharded run against the
    one-device run, for every scheme."""
    _, ys = smc.kalman.simulate(jax.random.key(7), params, t)
    ys = ys[:, 0]
    rec = ["ancestors", "particles"]
    for name in RESAMPLERS:
        for kappa in (0.5,):
            key = jax.random.key(11)
            rs = smc.run(key, fk, ys, n, ess_threshold=kappa, resampling=name, record=rec, mesh=mesh)
            r1 = smc.run(key, fk, ys, n, ess_threshold=kappa, resampling=name, record=rec)
            out[f"{name}/{kappa}"] = {
                "log_z": [float(rs.log_z), float(r1.log_z)],
                "log_z_trace": [np.asarray(rs.log_z_trace).tolist(), np.asarray(r1.log_z_trace).tolist()],
                "resampled": int(np.asarray(r1.resampled).sum()),
                "ancestors_equal": bool(np.array_equal(np.asarray(rs.ancestors), np.asarray(r1.ancestors))),
                "particles_equal": bool(np.array_equal(np.asarray(rs.particles_history), np.asarray(r1.particles_history))),
                "log_weights": [np.asarray(rs.log_weights).tolist(), np.asarray(r1.log_weights).tolist()],
                "particle_devices": len(rs.particles.sharding.device_set),
            }


if MODE == "stats":
    stats(int(sys.argv[2]), int(sys.argv[3]))
else:
    equal(int(sys.argv[2]), int(sys.argv[3]))
print("JSON" + json.dumps(out))
