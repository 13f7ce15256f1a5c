"""Run by test_sharding.py in a subprocess with 4 forced host devices (XLA_FLAGS set first)."""

import json
import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

import smcscale as smc  # noqa: E402
from smcscale.models import lgssm  # noqa: E402

runs, n = int(sys.argv[1]), int(sys.argv[2])
params = smc.kalman.univariate_params(0.9, 1.0, 0.2)
_, ys = smc.kalman.simulate(jax.random.key(2024), params, 100)
ys = ys[:, 0]
kf = smc.kalman.kalman_filter(params, ys)
fk = smc.bootstrap(lgssm.univariate(0.9, 1.0, 0.2))
mesh = Mesh(np.array(jax.devices()), ("particles",))
summ = {"mean": smc.weighted_mean()}

out = {"num_devices": len(jax.devices()), "sharded": [], "single": [], "means_sharded": [], "means_single": []}
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
print("JSON" + json.dumps(out))
