"""JAX's random draws of the engine, computed on the host with NumPy.

The engine draws a config's initial kernel and, shuffled, every epoch's sample order with
:mod:`jax.random` inside its compiled programs. A few callers need the same draws outside
them: the simulator replays a shuffled group's orders, all epochs at once
(:func:`src.simulator.epoch_orders`), and the focus panel and the Keras check start Keras
from the engine's initial kernel (:func:`src.engine.initial_kernel`). Compiled with XLA,
each of those draws is a program of its own, ~0.5 s and ~0.3 s of a first run's compile
time on a 2-core CPU before anything uses them; here they take milliseconds and compile
nothing. The bits are :mod:`jax.random`'s (``tests/test_groups.py``,
``tests/test_semantics.py``).

JAX's default generator, with ``jax_threefry_partitionable`` (on by default since JAX 0.5):

* **Threefry-2x32** hashes a counter pair ``(x0, x1)`` under a key ``(k0, k1)``: with
  ``k2 = k0 ^ k1 ^ 0x1BD11BDA``, ``x0 += k0``, ``x1 += k1``, then five blocks of four rounds
  (``x0 += x1; x1 = rotl(x1, r) ^ x0``, rotations ``13, 15, 26, 6`` and ``17, 29, 16, 24``
  alternately), block ``i`` (from 0) followed by ``x0 += k[(i+1) % 3]``,
  ``x1 += k[(i+2) % 3] + i + 1``; every operation modulo ``2^32``.
* ``PRNGKey(seed)`` is ``(0, seed)`` for a 32-bit seed; key ``j`` of ``split(key, k)`` is
  the hash of the counters ``(0, j)``, and ``fold_in(key, d)`` the hash of ``(0, d)``.
* ``uniform(key, shape)`` hashes ``(0, j)`` for each element ``j`` (row-major) and xors the
  pair into 32 bits; their top 23 go into the mantissa of a float in ``[1, 2)``, less 1 is
  ``u`` in ``[0, 1)``, and ``max(lo, u * (hi - lo) + lo)`` in float32 is the draw.
"""

from __future__ import annotations

import jax
import numpy as np

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)

Key = tuple[np.ndarray, np.ndarray]
"""A key's two words, each an array of uint32 (one key, or one per element)."""


def _partitionable() -> None:
    if not jax.config.jax_threefry_partitionable:
        raise RuntimeError(
            "the host's draws follow jax.random with jax_threefry_partitionable on; "
            "it is off in this process"
        )


def hash_pairs(key: Key, x0: np.ndarray, x1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Threefry-2x32 of the counter pairs ``(x0, x1)`` under ``key`` (broadcast together)."""
    k0, k1 = (np.asarray(k, np.uint32) for k in key)
    ks = (k0, k1, k0 ^ k1 ^ _PARITY)
    with np.errstate(over="ignore"):  # modulo 2^32 is the arithmetic
        x0 = np.asarray(x0, np.uint32) + ks[0]
        x1 = np.asarray(x1, np.uint32) + ks[1]
        for i in range(5):
            for r in _ROTATIONS[i % 2]:
                x0 = x0 + x1
                x1 = ((x1 << np.uint32(r)) | (x1 >> np.uint32(32 - r))) ^ x0
            x0 = x0 + ks[(i + 1) % 3]
            x1 = x1 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x0, x1


def key(seed: int | np.ndarray) -> Key:
    """``jax.random.PRNGKey(seed)`` of a seed ``0 <= seed < 2**32`` (or an array of them)."""
    seed = np.asarray(seed).astype(np.uint32)
    return np.zeros_like(seed), seed


def subkey(k: Key, j: int) -> Key:
    """``jax.random.split(k, count)[j]`` (for any ``count > j``), elementwise over ``k``."""
    k0 = np.asarray(k[0], np.uint32)
    return hash_pairs(k, np.zeros_like(k0), np.full_like(k0, j))


def fold_in(k: Key, data: np.ndarray | int) -> Key:
    """``jax.random.fold_in(k, data)``, elementwise over ``data`` (and ``k``)."""
    data = np.asarray(data).astype(np.uint32)
    return hash_pairs(k, np.zeros_like(data), data)


def uniform(k: Key, shape: tuple[int, ...] = (), lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    """``jax.random.uniform(k, shape, float32, lo, hi)``, elementwise over ``k``: an array
    of keys gives an array of draws of shape ``k``'s + ``shape``."""
    _partitionable()
    index = np.arange(int(np.prod(shape)), dtype=np.uint32).reshape(shape)
    trailing = (...,) + (None,) * len(shape)
    k = (np.asarray(k[0], np.uint32)[trailing], np.asarray(k[1], np.uint32)[trailing])
    a, b = hash_pairs(k, np.zeros_like(index), index)
    bits = (a ^ b) >> np.uint32(9) | np.float32(1.0).view(np.uint32)
    u = bits.view(np.float32) - np.float32(1.0)
    lo32, hi32 = np.float32(lo), np.float32(hi)
    return np.maximum(lo32, u * (hi32 - lo32) + lo32)


def epoch_orders(seed: int, n: int, n_max: int, epochs: int) -> np.ndarray:
    """Every epoch's sample order of a shuffled run, ``(epochs, n_max)`` int32: what
    :func:`src.engine._epoch_order` draws in the engine's steps. Epoch ``e``'s key is
    ``fold_in(split(PRNGKey(seed))[1], e)``; sample ``i`` draws ``uniform(fold_in(that, i))``,
    samples ``>= n`` sort last, and the order is the stable argsort of those keys."""
    _partitionable()
    shuffle_key = subkey(key(seed), 1)
    ek0, ek1 = fold_in(shuffle_key, np.arange(epochs))
    index = np.arange(n_max, dtype=np.uint32)
    u = uniform(fold_in((ek0[:, None], ek1[:, None]), index))
    keys = np.where(index < n, u, np.float32(2.0))
    return np.argsort(keys, axis=-1, kind="stable").astype(np.int32)
