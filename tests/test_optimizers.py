"""Each optimizer's update against a NumPy transcription of the Keras equations."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from numpy_keras import NumpyOptimizer, transcribed

from src import keras_optax
from src import optimizers as opt
from src.engine import Params


def run_updates(
    name: str, lr: float, grads: np.ndarray, dtype: str, **override: float
) -> np.ndarray:
    o = opt.get(name)
    hp = {**o.defaults, **override}
    args = {k: jnp.asarray(v, dtype) for k, v in o.family.arguments(hp).items()}
    tx = o.family.build(jnp.asarray(lr, dtype), **args)
    params = Params(jnp.asarray(0.3, dtype), jnp.asarray(-0.2, dtype))
    state = tx.init(params)
    out = []
    for g in grads:
        updates, state = tx.update(Params(*jnp.asarray(g, dtype)), state, params)
        params = optax.apply_updates(params, updates)
        out.append([float(params.w), float(params.b)])
    return np.array(out)


def run_numpy(
    name: str, lr: float, grads: np.ndarray, dtype: type, **override: float
) -> np.ndarray:
    o = opt.get(name)
    ref = NumpyOptimizer(o.family.name, lr, {**o.defaults, **override}, dtype)
    variables = [dtype(0.3), dtype(-0.2)]
    out = []
    for g in grads:
        variables = ref.apply([dtype(g[0]), dtype(g[1])], variables)
        out.append([float(v) for v in variables])
    return np.array(out)


def gradients(seed: int, steps: int = 60) -> np.ndarray:
    """Gradients over many scales, tiny ones included (where epsilon placement matters)."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(steps, 2)) * 10.0 ** rng.uniform(-9, 2, size=(steps, 1))


# The families transcribed in numpy_keras (every family is checked against real Keras in
# test_keras_optimizers.py; this transcription also runs without TensorFlow, and in float64).
TRANSCRIBED = transcribed(opt.OPTIMIZERS)


@pytest.mark.parametrize("name", TRANSCRIBED)
def test_float32_update_is_keras_to_the_last_bits(name: str) -> None:
    g = gradients(0)
    ours = run_updates(name, 0.01, g, "float32")
    keras = run_numpy(name, 0.01, g, np.float32)
    # Same equations, same op order and constants: at most a few ulp (XLA vs NumPy sqrt/pow).
    np.testing.assert_allclose(ours, keras, rtol=2e-6, atol=1e-30)


@pytest.mark.parametrize("name", TRANSCRIBED)
def test_float64_update_matches(name: str) -> None:
    g = gradients(1)
    with jax.enable_x64(True):
        ours = run_updates(name, 0.003, g, "float64")
    np.testing.assert_allclose(ours, run_numpy(name, 0.003, g, np.float64), rtol=1e-13)


@pytest.mark.parametrize(
    ("name", "override"),
    [
        ("momentum", {"momentum": 0.5}),
        ("nesterov", {"momentum": 0.99}),
        ("rmsprop", {"momentum": 0.9}),
        ("rmsprop", {"rho": 0.5}),
        ("adam", {"beta_1": 0.5}),
        ("adagrad", {"initial_accumulator_value": 1.0}),
    ],
)
def test_hyperparameters_other_than_defaults(name: str, override: dict[str, float]) -> None:
    g = gradients(2)
    ours = run_updates(name, 0.01, g, "float32", **override)
    np.testing.assert_allclose(ours, run_numpy(name, 0.01, g, np.float32, **override), rtol=2e-6)


def test_hyperparameters_are_vmappable() -> None:
    # One compiled update serves a vector of learning rates and momenta.
    def step(lr: jax.Array, mu: jax.Array) -> jax.Array:
        tx = keras_optax.keras_sgd(lr, mu, 0.0)
        p = Params(jnp.float32(1.0), jnp.float32(0.0))
        u, _ = tx.update(Params(jnp.float32(2.0), jnp.float32(1.0)), tx.init(p), p)
        return u.w

    lrs = jnp.array([0.1, 0.01], jnp.float32)
    out = jax.jit(jax.vmap(step))(lrs, jnp.array([0.0, 0.9], jnp.float32))
    np.testing.assert_allclose(out, -2.0 * lrs, rtol=1e-7)


def test_keras_defaults() -> None:
    # The constructor defaults of keras/src/optimizers (keras 3.15).
    assert opt.get("sgd").learning_rate == 0.01 and opt.get("sgd").defaults["momentum"] == 0
    assert opt.get("momentum").defaults == {"momentum": 0.9, "nesterov": 0.0}
    assert opt.get("adam").learning_rate == 0.001
    adam = {"beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7, "amsgrad": 0.0}
    assert opt.get("adam").defaults == adam
    assert opt.get("adamw").defaults == {**adam, "weight_decay": 0.004}
    assert opt.get("rmsprop").defaults == {
        "rho": 0.9, "momentum": 0.0, "epsilon": 1e-7, "centered": 0.0
    }  # fmt: skip
    assert opt.get("schedule_free_adamw").learning_rate == 0.0025
    assert opt.get("adagrad").defaults == {"initial_accumulator_value": 0.1, "epsilon": 1e-7}


def test_optax_adam_differs_from_keras_where_the_gradient_is_tiny() -> None:
    # Why keras_adam exists: optax adds epsilon after the bias correction (and defaults to 1e-8).
    g = np.full((5, 2), 1e-8)
    keras = run_numpy("adam", 0.001, g, np.float64)
    tx = optax.adam(0.001)
    with jax.enable_x64(True):
        p = Params(jnp.float64(0.3), jnp.float64(-0.2))
        state = tx.init(p)
        for gi in g:
            u, state = tx.update(Params(*jnp.asarray(gi)), state, p)
            p = optax.apply_updates(p, u)
    step_keras, step_optax = 0.3 - keras[-1, 0], 0.3 - float(p.w)
    assert abs(step_optax / step_keras - 1) > 0.5


def test_unknown_optimizer_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="valid optimizers: sgd, momentum"):
        opt.get("adamw2")


def test_ftrl_default_power_runs_as_a_square_root() -> None:
    """Keras's default ``learning_rate_power`` (-0.5), known when tracing, runs as ``sqrt``,
    correctly rounded (XLA's pow is exp(0.5 log n), ~2x slower, and 1 ulp off for ~0.06% of
    accumulators); a power that differs per configuration stays a pow. Through 300 updates
    the two stay within a few ulps (``python -m tools.sqrt_power`` counts every float32)."""
    rng = np.random.default_rng(7)
    n = rng.integers(np.float32(0.1).view(np.uint32), 0x7F000000, 1 << 20, dtype=np.uint32)
    n = n.view(np.float32)
    root = np.asarray(jax.jit(jnp.sqrt)(n)).view(np.int32).astype(np.int64)
    power = jax.jit(lambda x, p: jnp.power(x, p))(n, np.float32(0.5))
    gap = np.abs(np.asarray(power).view(np.int32).astype(np.int64) - root)
    assert gap.max() <= 1 and 0 < np.count_nonzero(gap) < 0.01 * len(n)
    assert np.array_equal(np.sqrt(n.astype(np.float64)).astype(np.float32).view(np.int32), root)

    grads = rng.standard_normal((300, 2)).astype(np.float32)
    grads *= np.geomspace(1e-3, 1e3, 300, dtype=np.float32)[:, None]
    o = opt.get("ftrl")
    hp = o.family.arguments(o.defaults)
    runs = {}
    for static in (True, False):
        args = {k: (np.float32(v) if static else jnp.asarray(v, jnp.float32))
                for k, v in hp.items()}  # fmt: skip
        tx = o.family.build(jnp.float32(0.05), **args)
        params = Params(jnp.float32(0.3), jnp.float32(-0.2))
        state = tx.init(params)
        seen = []
        for g in grads:
            updates, state = tx.update(Params(*jnp.asarray(g)), state, params)
            params = optax.apply_updates(params, updates)
            seen.append(np.asarray(jax.tree.leaves((params, state)), np.float32))
        runs[static] = np.array(seen)
    assert np.isfinite(runs[True]).all()
    np.testing.assert_allclose(runs[True], runs[False], rtol=1e-5, atol=0)


def _same_floats(a: jax.Array | np.ndarray, b: jax.Array | np.ndarray) -> bool:
    """Bit for bit, any NaN equal to any other."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    nan = np.isnan(a)
    return bool(np.array_equal(nan, np.isnan(b)) and np.array_equal(a[~nan].view(np.uint32),
                                                                    b[~nan].view(np.uint32)))


def test_step_term_divisions_are_float32_divisions_bit_for_bit() -> None:
    """``_divisors`` (x times a float64 reciprocal) against a float32 division: XLA's, with a
    divisor per element (which it does not rewrite), and NumPy's in the normal range."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(300_000) * 10.0 ** rng.uniform(-45, 38.5, 300_000)).astype(np.float32)
    specials = [0.0, -0.0, np.inf, -np.inf, np.nan, 3.4e38, -3.4e38, 1.2e-38, -1.5e-38, 1e-41]
    x[: len(specials)] = specials
    lr = jnp.float32(0.01)
    shared = jax.jit(lambda x, d: keras_optax._divisors((d,), lr)[0](x))
    divided = jax.jit(lambda x, d: x / d)
    tiny = np.finfo(np.float32).tiny
    for d in np.float32([0.1, 0.100000024, 0.04, 0.999, 1.0, 1.5, 3.0, 1e-3, 7e5, 1e-30]):
        ours = shared(x, d)
        assert _same_floats(ours, divided(x, jnp.full_like(x, d))), d
        with np.errstate(all="ignore"):
            expected = x / d
        normal = (np.abs(x) >= tiny) & (np.abs(expected) >= tiny)
        assert _same_floats(np.asarray(ours)[normal], expected[normal]), d
    # One divisor per configuration (the engine's vmap, per-config step counts).
    ds = rng.uniform(0.01, 2.0, 4096).astype(np.float32)
    xs = x[: 4096 * 8].reshape(4096, 8)
    per_config = jax.jit(jax.vmap(lambda x, d, lr: keras_optax._divisors((d,), lr)[0](x)))
    ours = per_config(xs, ds, jnp.full(4096, 0.01, jnp.float32))
    assert _same_floats(ours, divided(xs, jnp.asarray(np.repeat(ds[:, None], 8, axis=1))))
