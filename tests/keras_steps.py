"""Optimizer steps side by side: real Keras ``optimizer.apply`` and the engine's transformation.

Both see the same gradient sequence on the ``Dense(1)`` variables (kernel ``(1, 1)``, bias
``(1,)``) from the same start; the weights after every step are returned.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from src import optimizers as opt
from src.engine import Params, keras_shapes

START = (0.3, -0.2)


def gradients(seed: int, steps: int = 60) -> np.ndarray:
    """Gradients over many scales, tiny ones included (where epsilon placement matters)."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(steps, 2)) * 10.0 ** rng.uniform(-9, 2, size=(steps, 1))


def keras_steps(
    name: str, lr: float, grads: np.ndarray, hyperparameters: Mapping[str, float]
) -> np.ndarray:
    """``(steps, 2)`` weights ``[w, b]`` after each Keras ``apply`` (float32)."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    o = opt.get(name)
    k = getattr(keras.optimizers, o.keras[0])(
        learning_rate=lr, **o.keras_kwargs({**o.defaults, **hyperparameters})
    )
    w = keras.Variable(np.array([[START[0]]], np.float32), name="kernel")
    b = keras.Variable(np.array([START[1]], np.float32), name="bias")
    k.build([w, b])
    if o.keras[0] == "ScheduleFreeAdamW":  # as under fit, where build's copy of w is lost
        for v in k.variables:
            if "momentum" in v.path:
                v.assign(np.zeros(v.shape, np.float32))
    out = []
    for g in np.asarray(grads, np.float32):
        k.apply([np.array([[g[0]]], np.float32), np.array([g[1]], np.float32)], [w, b])
        out.append([float(w.numpy().ravel()[0]), float(b.numpy().ravel()[0])])
    if k.use_ema:  # what fit's finalize_variable_values leaves in the model
        k.finalize_variable_values([w, b])
        out.append([float(w.numpy().ravel()[0]), float(b.numpy().ravel()[0])])
    return np.array(out, np.float64)


def engine_steps(
    name: str, lr: float, grads: np.ndarray, hyperparameters: Mapping[str, float]
) -> np.ndarray:
    """The same through :meth:`Family.transformation` (float32, jitted)."""
    o = opt.get(name)
    values = {**o.defaults, **hyperparameters}
    args = {k: jnp.asarray(v, jnp.float32) for k, v in o.family.arguments(values).items()}

    @jax.jit
    def run(g: jax.Array) -> jax.Array:
        tx = o.family.transformation(jnp.float32(lr), args, keras_shapes(1))
        params = Params(jnp.float32(START[0]), jnp.float32(START[1]))

        def step(carry: tuple, gi: jax.Array) -> tuple:
            params, state = carry
            updates, state = tx.update(Params(gi[0], gi[1]), state, params)
            params = optax.apply_updates(params, updates)
            return (params, state), jnp.stack([params.w, params.b])

        (params, state), ws = jax.lax.scan(step, (params, tx.init(params)), g)
        final = o.family.final_weights(args, params, state)
        return jnp.concatenate([ws, jnp.stack([final.w, final.b])[None]])

    out = np.asarray(run(jnp.asarray(grads, jnp.float32)), np.float64)
    return out if values.get("use_ema", 0) else out[:-1]
