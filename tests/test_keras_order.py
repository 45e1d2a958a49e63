"""Keras's shuffled sample order read back from real ``model.fit``, and Keras in float64.

``src.keras_reference.fit(shuffle=True)`` records which samples each training step saw; these
tests check that the recording leaves Keras's arithmetic bit for bit as a plain ``fit``, that
the orders it returns are the ones Keras trained on (an independent NumPy replay of SGD
matches the ``History`` with them and not without), and that ``dtype="float64"`` makes the
whole run float64, learning rate included.
"""

from __future__ import annotations

import numpy as np
import pytest

from src import keras_reference
from src import optimizers as opt
from src.errors import InputError

W0 = 0.3  # a fixed start (the kernel), bias 0


def _data(n: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.arange(1, n + 1, dtype=np.float64)
    return x, 0.5 * x


def sgd_replay(
    x: np.ndarray,
    y: np.ndarray,
    w: float,
    b: float,
    lr: float,
    batch_size: int,
    orders: np.ndarray,
) -> tuple[np.ndarray, float, float]:
    """Plain SGD on ``mean((w·x + b - y)²)`` in float64, batches cut from each epoch's order:
    the ``History`` (size-weighted mean of the pre-update batch losses) and final w, b."""
    n = len(x)
    history = []
    for order in orders:
        total = 0.0
        for start in range(0, n, batch_size):
            i = order[start : start + batch_size]
            r = w * x[i] + b - y[i]
            total += len(i) * np.mean(r * r)
            gw, gb = np.mean(2 * r * x[i]), np.mean(2 * r)
            w, b = w - lr * gw, b - lr * gb
        history.append(total / n)
    return np.array(history), w, b


def _identity(n: int, epochs: int) -> np.ndarray:
    return np.tile(np.arange(n), (epochs, 1))


# ----------------------------------------------------------------------------- no Keras


def test_sample_orders_maps_rows_back_and_consumes_duplicates_in_order() -> None:
    xs = np.array([1.0, 2.0, 1.0, 3.0], np.float32)
    ys = np.array([5.0, 6.0, 5.0, 7.0], np.float32)
    rows = np.array([[3, 7], [1, 5], [2, 6], [1, 5], [1, 5], [1, 5], [3, 7], [2, 6]], np.float32)
    orders = keras_reference.sample_orders(rows, xs, ys, 2)
    assert orders.dtype == np.int32
    np.testing.assert_array_equal(orders, [[3, 0, 1, 2], [0, 2, 3, 1]])


def test_sample_orders_refuses_what_is_not_a_permutation() -> None:
    xs = np.array([1.0, 2.0], np.float32)
    ys = np.array([5.0, 6.0], np.float32)
    with pytest.raises(RuntimeError, match="not a free sample"):
        keras_reference.sample_orders(np.array([[1, 5], [1, 5]], np.float32), xs, ys, 1)
    with pytest.raises(RuntimeError, match="not a free sample"):
        keras_reference.sample_orders(np.array([[1, 5], [2, 7]], np.float32), xs, ys, 1)
    with pytest.raises(RuntimeError, match="expected"):
        keras_reference.sample_orders(np.array([[1, 5]], np.float32), xs, ys, 1)


# ----------------------------------------------------------------------------- real Keras


@pytest.fixture(scope="module")
def keras():
    """Keras on TensorFlow (the tests that use it are skipped without TensorFlow)."""
    pytest.importorskip("tensorflow")
    return keras_reference._keras()


@pytest.mark.slow
def test_recording_leaves_history_and_weights_bit_identical_for_every_optimizer(keras) -> None:
    # N = 11, batch 4: two full batches and a partial one each epoch.
    n, bs, epochs, seed = 11, 4, 4, 7
    x, y = _data(n)
    xs, ys = x.astype(np.float32).reshape(-1, 1), y.astype(np.float32).reshape(-1, 1)
    for name, spec in opt.OPTIMIZERS.items():
        lr = 10 * spec.learning_rate  # the weights move visibly in 12 steps
        run = keras_reference.fit(name, lr, x, y, W0, 0.0, bs, epochs, shuffle=True, seed=seed)

        keras.utils.set_random_seed(seed)
        model = keras.Sequential([keras.Input(shape=(1,)), keras.layers.Dense(1)])
        cls = getattr(keras.optimizers, spec.keras[0])
        model.compile(optimizer=cls(learning_rate=lr, **spec.keras_kwargs({})), loss="mse")
        model.set_weights([np.array([[W0]], np.float32), np.array([0.0], np.float32)])
        plain = model.fit(xs, ys, batch_size=bs, epochs=epochs, shuffle=True, verbose=0)
        kernel, bias = model.get_weights()

        expected = np.asarray(plain.history["loss"], np.float32)
        assert np.array_equal(run.history.astype(np.float32), expected), name
        assert np.float32(run.w) == kernel.ravel()[0] and np.float32(run.b) == bias[0], name
        assert run.w != W0, name
        assert run.orders is not None and run.orders.shape == (epochs, n), name


def test_orders_are_keras_permutations(keras) -> None:
    n, bs, epochs = 11, 4, 4
    x, y = _data(n)

    def orders(seed: int | None) -> np.ndarray:
        run = keras_reference.fit("sgd", 0.001, x, y, W0, 0.0, bs, epochs, shuffle=True, seed=seed)
        assert run.orders is not None and run.orders.dtype == np.int32
        assert run.orders.shape == (epochs, n)
        for order in run.orders:
            np.testing.assert_array_equal(np.sort(order), np.arange(n))
        return run.orders

    seeded = orders(3)
    assert not np.array_equal(seeded, _identity(n, epochs))
    # The same seed reproduces the orders; another seed gives others.
    np.testing.assert_array_equal(orders(3), seeded)
    assert not np.array_equal(orders(4)[0], seeded[0])
    # A Keras 3.15.1 / TensorFlow 2.21 fact: after keras.utils.set_random_seed, fit's
    # tf.random.shuffle (seeded op inside a tf.data map that each epoch re-iterates) draws
    # the SAME permutation every epoch. Unseeded, every epoch has a fresh one.
    assert all(np.array_equal(o, seeded[0]) for o in seeded)
    unseeded = orders(None)
    assert len({tuple(o) for o in unseeded}) == epochs

    plain = keras_reference.fit("sgd", 0.001, x, y, W0, 0.0, bs, epochs)
    assert plain.orders is None


@pytest.mark.parametrize("seed", [5, None])
def test_numpy_sgd_replay_with_the_recovered_orders_matches_keras(keras, seed) -> None:
    n, bs, epochs, lr = 13, 4, 5, 0.001
    x, y = _data(n)
    run = keras_reference.fit("sgd", lr, x, y, W0, 0.0, bs, epochs, shuffle=True, seed=seed)
    assert run.orders is not None
    assert not np.array_equal(run.orders, _identity(n, epochs))
    assert run.history[-1] > 1e-3  # float32 decides the losses (not near zero; unseeded
    # orders are random: one run ended at 0.0098)
    lr32 = float(np.float32(lr))  # float32 Keras holds the lr in a float32 variable
    history, w, b = sgd_replay(x, y, W0, 0.0, lr32, bs, run.orders)
    np.testing.assert_allclose(run.history, history, rtol=1e-5)
    np.testing.assert_allclose([run.w, run.b], [w, b], rtol=1e-5)
    # In the given order the replay is a different run: the order matters, and it is right.
    unshuffled, _, _ = sgd_replay(x, y, W0, 0.0, lr32, bs, _identity(n, epochs))
    assert not np.allclose(run.history, unshuffled, rtol=1e-5)
    assert np.max(np.abs(run.history / unshuffled - 1)) > 1e-4


@pytest.mark.parametrize("shuffle", [False, True])
def test_float64_keras_matches_a_float64_numpy_replay(keras, shuffle) -> None:
    n, bs, epochs, lr = 13, 4, 5, 0.001
    x, y = _data(n)
    run = keras_reference.fit(
        "sgd", lr, x, y, W0, 0.0, bs, epochs, shuffle=shuffle, seed=2, dtype="float64"
    )
    orders = run.orders if shuffle else _identity(n, epochs)
    assert orders is not None and (run.orders is None) == (not shuffle)
    history, w, b = sgd_replay(x, y, W0, 0.0, lr, bs, orders)
    np.testing.assert_allclose(run.history, history, rtol=1e-12)
    np.testing.assert_allclose([run.w, run.b], [w, b], rtol=1e-12)
    # The lr is the double 0.001, not float32's 0.0010000000475: that replay is off by far
    # more than 1e-12.
    rounded, _, _ = sgd_replay(x, y, W0, 0.0, float(np.float32(lr)), bs, orders)
    assert np.max(np.abs(run.history / rounded - 1)) > 1e-9
    if shuffle:
        unshuffled, _, _ = sgd_replay(x, y, W0, 0.0, lr, bs, _identity(n, epochs))
        assert np.max(np.abs(run.history / unshuffled - 1)) > 1e-6
    assert keras.config.floatx() == "float32"
    assert keras.config.dtype_policy().name == "float32"


def test_float64_keras_holds_every_optimizer_variable_in_float64(keras) -> None:
    # What the docstring of fit says: under float64 the learning rate is a float64 variable
    # holding the lr unrounded, every slot is float64, and the hyperparameters are Python
    # floats (the update casts them to the weights' dtype).
    x, y = _data(5)
    with keras_reference._floatx(keras, "float64"):
        model = keras.Sequential([keras.Input(shape=(1,)), keras.layers.Dense(1)])
        assert [v.dtype for v in model.weights] == ["float64", "float64"]
        for spec in opt.OPTIMIZERS.values():
            lr = 0.1 * spec.learning_rate
            args = spec.keras_kwargs({})
            optimizer = getattr(keras.optimizers, spec.keras[0])(learning_rate=lr, **args)
            model.compile(optimizer=optimizer, loss="mean_squared_error")
            model.fit(x.reshape(-1, 1), y.reshape(-1, 1), epochs=1, verbose=0)
            assert optimizer.learning_rate.dtype == "float64", spec.name
            assert float(optimizer.learning_rate.numpy()) == lr, spec.name
            floats = {v.dtype for v in optimizer.variables} - {"int32", "int64"}
            assert floats == {"float64"}, spec.name
            for k in ("beta_1", "beta_2", "epsilon", "rho", "momentum"):
                assert isinstance(getattr(optimizer, k, 0.0), float), (spec.name, k)
    assert keras.config.floatx() == "float32"


def test_floatx_is_restored_after_an_error(keras) -> None:
    x, y = _data(5)
    with pytest.raises(ValueError):  # Keras: at most one of clipnorm and clipvalue
        keras_reference.fit(
            "sgd", 0.01, x, y, W0, 0.0, 4, 1, {"clipnorm": 1.0, "clipvalue": 1.0}, dtype="float64"
        )
    assert keras.config.floatx() == "float32"
    assert keras.config.dtype_policy().name == "float32"
    with pytest.raises(InputError, match="dtype"):
        keras_reference.fit("sgd", 0.01, x, y, W0, dtype="float16")


def test_keras_run_passes_shuffle_seed_and_dtype_through(keras) -> None:
    x, y = _data(7)
    job = keras_reference.KerasJob(
        optimizer="sgd", lr=0.001, x=x, y=y, w0=W0, b0=0.0, batch_size=3, epochs=2,
        hyperparameters={}, x_query=25.0, shuffle=True, seed=1, dtype="float64",
    )  # fmt: skip
    result = keras_reference.keras_run(job)
    assert result.error is None and result.orders is not None
    direct = keras_reference.fit(
        "sgd", 0.001, x, y, W0, 0.0, 3, 2, shuffle=True, seed=1, dtype="float64"
    )
    np.testing.assert_array_equal(result.orders, direct.orders)
    np.testing.assert_array_equal(result.history, direct.history)
    history, _, _ = sgd_replay(x, y, W0, 0.0, 0.001, 3, result.orders)
    np.testing.assert_allclose(result.history, history, rtol=1e-12)

    plain = keras_reference.keras_run({**job, "shuffle": False})
    assert plain.error is None and plain.orders is None
    failed = keras_reference.keras_run({**job, "dtype": "float16"})
    assert failed.error is not None and failed.orders is None and len(failed.history) == 0


def test_the_unshuffled_path_is_a_plain_fit(keras) -> None:
    # shuffle=False (the map's check): bit for bit the plain float32 fit it always was.
    n, bs, epochs = 11, 4, 3
    x, y = _data(n)
    xs, ys = x.astype(np.float32).reshape(-1, 1), y.astype(np.float32).reshape(-1, 1)
    for name, cls, lr in (("sgd", "SGD", 0.001), ("adam", "Adam", 0.01)):
        run = keras_reference.fit(name, lr, x, y, W0, 0.0, bs, epochs)
        model = keras.Sequential([keras.Input(shape=(1,)), keras.layers.Dense(1)])
        model.compile(optimizer=getattr(keras.optimizers, cls)(learning_rate=lr), loss="mse")
        model.set_weights([np.array([[W0]], np.float32), np.array([0.0], np.float32)])
        plain = model.fit(xs, ys, batch_size=bs, epochs=epochs, shuffle=False, verbose=0)
        expected = np.asarray(plain.history["loss"], np.float32)
        assert np.array_equal(run.history.astype(np.float32), expected), name
        assert np.float32(run.w) == model.get_weights()[0].ravel()[0], name
