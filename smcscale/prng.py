r"""Threefry keys with an unrolled hash: the same random numbers, faster on CPU.

JAX's default PRNG is Threefry-2x32 (Salmon et al. 2011): a counter-based generator whose
``random_bits(key, shape)`` hashes the flat index of every element with the key in 20
add-rotate-xor rounds. On CPU, JAX lowers that hash as a ``while`` loop of 5 iterations of 4
rounds (to keep compile times small), and XLA:CPU materialises the two ``uint32`` words of
every element in memory between iterations. In a particle filter whose move draws ``N``
normals per step, that loop is a large share of the step: at ``N = 1e5`` on a 2-core CPU,
``jax.random.normal`` costs ~0.65 ms, against ~0.25 ms when the 20 rounds are unrolled and
fused with the conversion to floats.

:func:`fast_key` re-wraps a typed Threefry key (``jax.random.key(seed)``) as a key of
:data:`FAST_THREEFRY`, a PRNG implementation registered with
``jax.extend.random.define_prng_impl`` whose ``split`` and ``random_bits`` compute the
hash with the rounds unrolled. It is **bit-identical** to ``threefry2x32``: every
``jax.random`` function (``normal``, ``uniform``, ``categorical``, ``split``, ...) returns
exactly what it returns for the original key, so the same key still gives the same result
(``tests/test_prng.py`` checks this for many shapes, widths and samplers). Where the fast path
does not apply (the legacy ``jax_threefry_partitionable=False`` mode, 64-bit draws, more than
``2**32`` elements), each function defers to JAX's own ``threefry2x32`` on the same key data.

The SMC driver applies :func:`fast_key` to the key it is given, so model code (the
``sample_transition`` of a Feynman–Kac model) receives fast keys without any change. Raw
``uint32`` keys (``jax.random.PRNGKey``) and keys of other implementations pass through
unchanged. On GPU and TPU JAX already unrolls the hash; the fast implementation lowers to
the same operations there.
"""

from __future__ import annotations

import math

import jax
import jax.extend.random
import jax.numpy as jnp
import numpy as np

__all__ = ["FAST_THREEFRY", "fast_key", "threefry2x32_hash"]

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)


def _rotl(x, r: int):
    return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def threefry2x32_hash(k1, k2, x1, x2):
    """The Threefry-2x32 block function with 20 rounds, unrolled.

    ``k1, k2``: the two ``uint32`` key words (scalars); ``x1, x2``: ``uint32`` counter
    words of one shape. Returns the two output words. Key schedule: ``ks = (k1, k2,
    k1 ^ k2 ^ 0x1BD11BDA)``, injected after every 4 rounds with the injection count added to
    the second word; a round is ``x1 += x2; x2 = rotl(x2, r) ^ x1``.
    """
    ks = (k1, k2, k1 ^ k2 ^ _PARITY)
    x1 = x1 + ks[0]
    x2 = x2 + ks[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x1 = x1 + x2
            x2 = _rotl(x2, r) ^ x1
        x1 = x1 + ks[(i + 1) % 3]
        x2 = x2 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x1, x2


_MIN_SIZE = 64


def _fast_path(shape) -> bool:
    """Unroll for draws of ``_MIN_SIZE`` to ``2**32 - 1`` elements (partitionable mode).

    Small draws keep JAX's loop: XLA fuses an unrolled hash into each consumer, so a scalar
    draw read by a per-particle computation (the uniform of systematic resampling) would
    be hashed once per particle; a loop is never fused.
    """
    size = math.prod(shape)
    return bool(jax.config.jax_threefry_partitionable) and _MIN_SIZE <= size < 2**32


def _stock(key_data):
    return jax.random.wrap_key_data(key_data, impl="threefry2x32")


def _counters(shape):
    """High and low words of the flat (row-major) index of each element (< 2**32)."""
    lo = jax.lax.iota(jnp.uint32, math.prod(shape)).reshape(shape)
    return jnp.zeros(shape, jnp.uint32), lo


def _seed(seed):
    return jax.random.key_data(jax.random.key(seed, impl="threefry2x32"))


def _split(key_data, shape):
    shape = tuple(int(d) for d in shape)
    if not _fast_path(shape):
        return jax.random.key_data(jax.random.split(_stock(key_data), shape))
    hi, lo = _counters(shape)
    b1, b2 = threefry2x32_hash(key_data[0], key_data[1], hi, lo)
    return jnp.stack([b1, b2], axis=-1)


def _fold_in(key_data, data):
    return jax.random.key_data(jax.random.fold_in(_stock(key_data), data))


def _random_bits(key_data, bit_width, shape):
    shape = tuple(int(d) for d in shape)
    if bit_width not in (8, 16, 32) or not _fast_path(shape):
        return jax.random.bits(_stock(key_data), shape, dtype=jnp.dtype(f"uint{bit_width}"))
    hi, lo = _counters(shape)
    b1, b2 = threefry2x32_hash(key_data[0], key_data[1], hi, lo)
    bits = b1 ^ b2
    return bits if bit_width == 32 else bits.astype(jnp.dtype(f"uint{bit_width}"))


FAST_THREEFRY = jax.extend.random.define_prng_impl(
    key_shape=(2,),
    seed=_seed,
    split=_split,
    random_bits=_random_bits,
    fold_in=_fold_in,
    name="smcscale_threefry2x32",
    tag="sfry",
)
"""The unrolled, bit-identical Threefry-2x32 implementation (pass as ``impl=``)."""


def fast_key(key):
    """``key`` as a :data:`FAST_THREEFRY` key if it is a typed ``threefry2x32`` key.

    Works on batched keys and under ``jit``/``vmap``. Any other key (a raw ``uint32`` key,
    another implementation, already fast) is returned unchanged.
    """
    dtype = getattr(key, "dtype", None)
    if dtype is None or not jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        return key
    if str(jax.random.key_impl(key)) != "threefry2x32":
        return key
    return jax.random.wrap_key_data(jax.random.key_data(key), impl=FAST_THREEFRY)
