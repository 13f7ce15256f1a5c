"""The machine description every benchmark writes into its JSON (shared helper)."""

from __future__ import annotations

import os
import platform
import sys
from importlib.metadata import PackageNotFoundError, version


def machine_info(packages=()) -> dict:
    """Python, platform, CPU count, JAX backend and devices, the load average, and the
    installed version of each distribution in ``packages`` (``None`` if absent; a module's
    ``__version__`` when it is imported but has no distribution metadata)."""
    import jax

    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
    }
    for name in packages:
        try:  # the distribution's version (particles 0.4 reports __version__ '0.3alpha')
            info[name] = version(name)
        except PackageNotFoundError:
            info[name] = getattr(sys.modules.get(name), "__version__", None)
    try:
        info["load_average"] = os.getloadavg()
    except OSError:  # pragma: no cover - platforms without it
        pass
    return info
