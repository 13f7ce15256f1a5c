"""Argument checks shared by the engine's entry points, with the messages users see.

Every public entry point (``run``, ``csmc``, ``particle_gibbs``, ``paris``, ``ppg``, the
learning estimators, ...) validates its arguments eagerly, before anything is traced, so a
mistake is reported in the caller's terms rather than as a shape error deep inside XLA.
This module owns those checks so that each message is written once.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import numpy as np

__all__ = [
    "as_key",
    "positive_int",
    "ess_threshold",
    "has_inputs",
    "num_steps_of",
    "slice_inputs",
]


def as_key(key):
    """Return ``key`` if it is a ``jax.random`` key (typed or raw ``uint32[2]``); an int is
    the commonest slip, so it gets a precise ``TypeError``."""
    if isinstance(key, (bool, int, np.integer)):
        raise TypeError("key must be a jax.random key (e.g. jax.random.key(0)), got an int")
    return key


def positive_int(value: Any, name: str) -> int:
    """``value`` as a Python ``int >= 1``; ``TypeError``/``ValueError`` naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be a Python int, got {type(value).__name__}")
    if int(value) < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def ess_threshold(value: Any) -> float:
    """``kappa`` in ``[0, 1]``: resample when ``ESS < kappa N`` (1 = every step, 0 = never)."""
    try:
        kappa = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"ess_threshold must be a number in [0, 1], got {value!r}") from None
    if not 0.0 <= kappa <= 1.0:
        raise ValueError(f"ess_threshold must be in [0, 1] (1 = resample every step, 0 = never), got {kappa}")
    return kappa


def has_inputs(inputs) -> bool:
    """Whether the per-step ``inputs`` pytree has any leaf (``None`` and ``()`` have none)."""
    return inputs is not None and len(jax.tree_util.tree_leaves(inputs)) > 0


def num_steps_of(inputs, num_steps: Optional[int] = None) -> int:
    """The number of steps ``T``: the common leading axis of ``inputs``' leaves, or
    ``num_steps`` when there are no inputs. Raises on disagreement, scalars and ``T = 0``."""
    leaves = jax.tree_util.tree_leaves(inputs)
    if not leaves:
        if num_steps is None:
            raise ValueError("inputs is empty (None): pass num_steps= to say how many steps to run")
        return positive_int(num_steps, "num_steps")
    lengths = {np.shape(leaf)[0] if np.ndim(leaf) > 0 else None for leaf in leaves}
    if None in lengths:
        raise ValueError("every leaf of inputs must have a leading time axis; found a scalar leaf")
    if len(lengths) != 1:
        raise ValueError(f"all leaves of inputs must share the leading time axis length, got lengths {sorted(lengths)}")
    t = lengths.pop()
    if num_steps is not None and int(num_steps) != t:
        raise ValueError(f"num_steps={num_steps} disagrees with the inputs' leading axis of length {t}")
    if t < 1:
        raise ValueError("inputs have zero time steps: need at least one")
    return t


def slice_inputs(inputs, t):
    """``inputs_t``: every leaf indexed at ``t`` on its leading (time) axis."""
    return jax.tree_util.tree_map(lambda leaf: leaf[t], inputs)
