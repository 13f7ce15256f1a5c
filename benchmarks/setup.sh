#!/usr/bin/env bash
# Install the benchmark anchors into the *current* Python environment (activate your
# virtual environment first, or set PYTHON=/path/to/python).
#
#   bash benchmarks/setup.sh && python benchmarks/pf_lgssm.py
#
# 1. smcscale itself (editable) with its `bench` extra, which brings BlackJAX (and
#    scipy, numba, joblib, scikit-learn).
# 2. `particles` (N. Chopin's SMC library) WITHOUT its dependencies: particles 0.4 pins
#    numpy<2, and letting pip resolve that would downgrade numpy and, with it, drag jax
#    back to 0.7. particles runs fine on numpy 2 in practice, so we install it with
#    --no-deps and then install the dependencies it actually imports (numba, scipy,
#    joblib, scikit-learn) explicitly, without any numpy pin.
set -euo pipefail

PYTHON="${PYTHON:-python}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

"$PYTHON" -m pip install -e ".[bench]"
# --no-deps: see (2) above; particles' own numpy<2 pin must not be resolved.
"$PYTHON" -m pip install --no-deps particles
"$PYTHON" -m pip install numba scipy joblib scikit-learn

"$PYTHON" - <<'EOF'
from importlib.metadata import version
import jax, numpy, blackjax, particles  # noqa: F401  (fails loudly if an anchor is missing)
print(f"ok: jax {jax.__version__}, numpy {numpy.__version__}, "
      f"blackjax {version('blackjax')}, particles {version('particles')}")
EOF
