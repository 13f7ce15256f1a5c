"""Smoothing and tempering benchmark: smcscale against `particles` and BlackJAX.

1. PaRIS (online smoothing of the additive functional sum_t x_t) on the LGSSM
   (rho=0.9, sigma_x=1, sigma_y=0.2), same N, same number of backward draws, same T,
   same data, same process: smcscale vs `particles`' PaRIS (benchmarks/_paris_bench.py).
2. Adaptive tempered SMC on the same numpyro conjugate linear-regression model, same
   number of particles and MCMC steps: smcscale vs BlackJAX's `adaptive_tempered_smc`,
   time and |log Ẑ − log Z| (benchmarks/_tempered_bench.py).

Run: ``bash benchmarks/setup.sh && python benchmarks/smoothing.py``. Writes
``benchmarks/results/smoothing.json``; the last line is exactly
``RESULT paris_speedup_vs_particles=<x> tempered_speedup_vs_blackjax=<y>``.
Targets: x >= 5 and y >= 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "smoothing.json"))
    args = parser.parse_args(argv)
    try:
        import blackjax  # noqa: F401
        import particles  # noqa: F401
    except ImportError as e:
        print(f"missing benchmark anchor ({e}); run `bash benchmarks/setup.sh` first", file=sys.stderr)
        return 1
    from _paris_bench import run_paris_benchmark
    from _tempered_bench import run_tempered_benchmark

    paris = run_paris_benchmark(repeats=args.repeats)
    tempered = run_tempered_benchmark(repeats=args.repeats)
    record = {"timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"), "paris": paris, "tempered": tempered}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(record, f, indent=2, default=float)
    print(json.dumps(record, indent=2, default=float))
    x = float(paris["paris_speedup_vs_particles"])
    y = float(tempered["speedup_vs_blackjax"])
    print(f"RESULT paris_speedup_vs_particles={x:.2f} tempered_speedup_vs_blackjax={y:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
