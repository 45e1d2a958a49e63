"""How Ftrl's ``n^0.5`` rounds three ways, for every float32 an accumulator can hold.

``python -m tools.sqrt_power`` walks every float32 ``n`` from 0.1 (Keras's initial
accumulator) to the largest finite one, in blocks, and counts how often

* ``sqrt(n)`` (XLA, correctly rounded: what the engine runs for Keras's default power),
* XLA's ``pow(n, p)`` with ``p = 0.5`` known only at run time (what the engine runs for a
  power that differs per configuration), and
* TensorFlow's ``pow(n, 0.5)`` (what Keras's ``Ftrl`` runs: ``fit`` on the TensorFlow
  backend does not compile with XLA)

agree, and by how many units in the last place they differ at most. docs/keras-fidelity.md
quotes its output. About a minute on the 2-core machine.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

from src import xla_options

BLOCK = 1 << 25


def main() -> None:
    xla_options.configure()
    import jax
    import jax.numpy as jnp
    import tensorflow as tf

    square_root = jax.jit(jnp.sqrt)
    power = jax.jit(lambda n, p: jnp.power(n, p))
    first = int(np.float32(0.1).view(np.uint32))
    last = int(np.finfo(np.float32).max.view(np.uint32))
    total = 0
    differ = {"xla pow vs sqrt": 0, "tf pow vs sqrt": 0, "tf pow vs xla pow": 0}
    most = dict.fromkeys(differ, 0)
    for start in range(first, last + 1, BLOCK):
        n = np.arange(start, min(start + BLOCK, last + 1), dtype=np.uint32).view(np.float32)
        s = np.asarray(square_root(n)).view(np.int32).astype(np.int64)
        p = np.asarray(power(n, np.float32(0.5))).view(np.int32).astype(np.int64)
        t = tf.pow(n, np.float32(0.5)).numpy().view(np.int32).astype(np.int64)
        for key, (a, b) in {"xla pow vs sqrt": (p, s), "tf pow vs sqrt": (t, s),
                            "tf pow vs xla pow": (t, p)}.items():  # fmt: skip
            gap = np.abs(a - b)
            differ[key] += int(np.count_nonzero(gap))
            most[key] = max(most[key], int(gap.max()))
        total += len(n)
    print(f"{total:,} float32 values n in [0.1, max]:")
    for key in differ:
        print(f"  {key}: differ for {differ[key] / total:.4%}, by at most {most[key]} ulp")


if __name__ == "__main__":
    main()
