r"""Build once, compile once: builders whose equal calls return the identical object.

:func:`smcscale.run` and every other jitted entry point treat the model (``fk``), the
summaries, optimisers and score functions as **static** arguments of ``jax.jit``: XLA code
is compiled for each distinct static value, and "distinct" means *not equal* under ``==`` /
``hash``. A builder that makes fresh closures on every call (``bootstrap(ssm)``,
``weighted_mean()``) therefore hands ``jit`` a new static value each time, and each call
recompiles (1–2 s on a CPU for a call that then runs in milliseconds).

The rule smcscale follows: every public builder is wrapped in :func:`cached_builder`, so
two calls with **equal arguments return the same object** and ``jit`` finds its compiled
code. Arguments are compared as :func:`static_key` describes:

* numbers, strings, ``None`` and other hashable values by value *and type* (``1`` and
  ``1.0`` differ, as they would as static arguments of ``jax.jit``);
* tuples, lists, named tuples and dicts element by element;
* NumPy and (concrete) JAX arrays by shape, dtype and contents, when small (at most
  :data:`MAX_ARRAY_ELEMENTS` elements);
* functions, and any other hashable object, by their own ``==`` (identity for functions:
  the *same* lambda object is equal, a new lambda with the same text is not).

A call whose arguments cannot be keyed (a traced value under ``jit``/``grad``, a large or
unhashable array) simply runs the builder: caching is an optimisation, never a change of
result. The cache is a bounded LRU (:data:`CACHE_SIZE` entries per builder).

What this means for user code (the README says the same): **keep your model objects.**
Build ``fk`` (or the ``StateSpaceModel`` and its lambdas) once and call ``run`` as often as
you like; a new lambda on every call is a new model and compiles again.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import threading
from typing import Any, Callable

import jax
import numpy as np

__all__ = [
    "cached_builder",
    "static_key",
    "count_compilations",
    "Uncacheable",
    "CACHE_SIZE",
    "MAX_ARRAY_ELEMENTS",
]

CACHE_SIZE = 256
MAX_ARRAY_ELEMENTS = 1 << 16

_SCALARS = (type(None), bool, int, float, complex, str, bytes)


class Uncacheable(Exception):
    """Raised by :func:`static_key` for a value that has no stable, hashable key."""


def static_key(value: Any):
    """A hashable key such that equal keys mean interchangeable builder arguments.

    Raises :class:`Uncacheable` for tracers, unhashable objects and large arrays.
    """
    if isinstance(value, _SCALARS):
        return (type(value), value)
    if isinstance(value, jax.core.Tracer):
        raise Uncacheable("a traced value")
    if isinstance(value, (np.ndarray, np.generic, jax.Array)):
        arr = np.asarray(value)
        if arr.size > MAX_ARRAY_ELEMENTS or arr.dtype == object:
            raise Uncacheable(f"an array of {arr.size} elements")
        return ("array", type(value).__name__, arr.shape, arr.dtype.str, arr.tobytes())
    if isinstance(value, tuple):  # named tuples included: the type is part of the key
        return (type(value), tuple(static_key(v) for v in value))
    if isinstance(value, list):
        return (list, tuple(static_key(v) for v in value))
    if isinstance(value, dict):
        return (type(value), tuple(sorted(((static_key(k), static_key(v)) for k, v in value.items()), key=repr)))
    try:
        hash(value)
    except TypeError:
        raise Uncacheable(f"an unhashable {type(value).__name__}") from None
    return ("object", value)


def cached_builder(fn: Callable = None, *, maxsize: int = CACHE_SIZE) -> Callable:
    """Decorator: calls of ``fn`` with equal arguments (:func:`static_key`) return the
    identical object, so jitted code keyed on it is compiled once.

    ``fn`` must be a pure builder: its result depends only on its arguments. The wrapper
    has ``cache_clear()`` and ``cache_len()``.
    """
    if fn is None:
        return functools.partial(cached_builder, maxsize=maxsize)
    cache: "collections.OrderedDict[Any, Any]" = collections.OrderedDict()
    lock = threading.Lock()

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            key = (static_key(args), static_key(kwargs))
            hash(key)
        except (Uncacheable, TypeError):
            return fn(*args, **kwargs)
        with lock:
            if key in cache:
                cache.move_to_end(key)
                return cache[key]
        out = fn(*args, **kwargs)
        with lock:
            cache[key] = out
            while len(cache) > maxsize:
                cache.popitem(last=False)
        return out

    wrapper.cache_clear = cache.clear
    wrapper.cache_len = lambda: len(cache)
    return wrapper


_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_compilations = [0]
_listening = [False]


def _on_event(name, *args, **kwargs):
    if name == _COMPILE_EVENT:
        _compilations[0] += 1


@contextlib.contextmanager
def count_compilations():
    """Count the XLA compilations (backend compiles) that happen inside the block.

    ``with count_compilations() as compiled: ...`` then ``compiled()`` is the number so far.
    A loop that calls a jitted function with equal static arguments should show 0 after
    its first iteration; anything else is a recompilation bug. Uses ``jax.monitoring``
    (one listener, registered on first use).
    """
    if not _listening[0]:
        jax.monitoring.register_event_duration_secs_listener(_on_event)
        _listening[0] = True
    start = _compilations[0]
    yield lambda: _compilations[0] - start
