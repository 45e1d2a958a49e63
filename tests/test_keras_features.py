"""``src.keras_reference.fit`` with ``d >= 1`` input features: ``Input((d,)) + Dense(1)``.

``d = 1`` given as ``(N,)`` or ``(N, 1)`` is the same run bit for bit; for ``d = 3`` Keras's
``History``, kernel and prediction match an independent float64 NumPy transcription of
consecutive-batch SGD and Adam (to float32's precision, and to 1e-12 when Keras runs in
float64); the shuffled order read back from Keras with ``d + 1`` wide recorded rows is a
permutation that the replay reproduces; and an overflowing ``d = 2`` run reports inf/nan
rather than raising.
"""

from __future__ import annotations

import numpy as np
import pytest
from numpy_keras import fit_features as numpy_fit
from numpy_keras import identity_orders

from src import keras_reference
from src.errors import InputError

W0 = np.array([0.3, -0.2, 0.1])
QUERY = np.array([1.5, -0.5, 2.0])


@pytest.fixture(scope="module")
def keras():
    """Keras on TensorFlow (the tests that use it are skipped without TensorFlow)."""
    pytest.importorskip("tensorflow")
    return keras_reference._keras()


def _data(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(N, d)`` features of different scales and a noisy linear target (the loss stays well
    above 0), rounded to float32 so both precisions train on the same numbers."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.5, 1.0, (n, d)) * np.linspace(1.0, 0.5, d)
    y = x @ np.linspace(1.0, -1.0, d) + 0.7 + rng.normal(0.0, 0.5, n)
    return x.astype(np.float32).astype(np.float64), y.astype(np.float32).astype(np.float64)


# ----------------------------------------------------------------------------- no Keras


def test_sample_orders_matches_whole_rows_of_d_features() -> None:
    # Samples 0 and 2 are identical (interchangeable, taken in increasing order); 1 shares 0's
    # features but not its target, 3 its target and first feature but not the second.
    xs = np.array([[1, 2], [1, 2], [1, 2], [1, 3]], np.float32)
    ys = np.array([5, 6, 5, 5], np.float32)
    rows = np.array(
        [[1, 3, 5], [1, 2, 5], [1, 2, 6], [1, 2, 5], [1, 2, 5], [1, 2, 6], [1, 2, 5], [1, 3, 5]],
        np.float32,
    )
    orders = keras_reference.sample_orders(rows, xs, ys, 2)
    assert orders.dtype == np.int32
    np.testing.assert_array_equal(orders, [[3, 0, 1, 2], [0, 1, 2, 3]])
    with pytest.raises(RuntimeError, match="not a free sample"):  # [1, 3, 6] is no sample
        keras_reference.sample_orders(rows[[0, 1, 2, 3]] + [0, 0, 1], xs, ys, 1)
    with pytest.raises(RuntimeError, match="expected"):  # d + 1 = 3 columns, not 2
        keras_reference.sample_orders(rows[:4, 1:], xs, ys, 1)


# ----------------------------------------------------------------------------- real Keras


@pytest.mark.slow
@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize(("name", "lr"), [("sgd", 0.01), ("adam", 0.01)])
def test_one_feature_as_a_vector_or_a_column_is_the_same_run(keras, name, lr, shuffle) -> None:
    n, bs, epochs = 11, 4, 3
    x, y = _data(n, 1)
    runs = [
        keras_reference.fit(name, lr, xs, y, w0, 0.0, bs, epochs, None, q, shuffle=shuffle, seed=0)
        for xs, w0, q in ((x[:, 0], 0.3, 2.0), (x, [0.3], np.array([2.0])))
    ]
    vector, column = runs
    assert np.array_equal(vector.history, column.history)
    assert vector.weights is not None and vector.weights.shape == (1,)
    assert np.array_equal(vector.weights, column.weights)
    assert (vector.w, vector.b, vector.prediction) == (column.w, column.b, column.prediction)
    assert vector.w == vector.weights[0] and vector.w != 0.3
    if shuffle:
        assert vector.orders is not None and np.array_equal(vector.orders, column.orders)
    else:
        assert vector.orders is None and column.orders is None


@pytest.mark.slow
@pytest.mark.parametrize(("dtype", "rtol"), [("float32", 1e-5), ("float64", 1e-12)])
@pytest.mark.parametrize(("name", "lr"), [("sgd", 0.01), ("adam", 0.01)])
def test_three_features_match_a_numpy_transcription(keras, name, lr, dtype, rtol) -> None:
    n, bs, epochs = 20, 8, 6  # batches of 8, 8 and 4
    x, y = _data(n, 3)
    run = keras_reference.fit(name, lr, x, y, W0, 0.0, bs, epochs, None, QUERY, dtype=dtype)
    # float32 Keras holds the lr in a float32 variable; float64 Keras holds it unrounded.
    lr_held = float(np.float32(lr)) if dtype == "float32" else lr
    history, kernel, bias = numpy_fit(x, y, W0, name, lr_held, bs, identity_orders(n, epochs))
    assert run.orders is None
    assert np.all(history > 0.1) and abs(history[-1] / history[0] - 1) > 0.05  # it trains
    np.testing.assert_allclose(run.history, history, rtol=rtol)
    assert run.weights is not None and run.weights.shape == (3,)
    assert run.weights.dtype == np.float64 and run.w == run.weights[0]
    np.testing.assert_allclose(run.weights, kernel, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(run.b, bias, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(run.prediction, QUERY @ kernel + bias, rtol=rtol, atol=rtol)


@pytest.mark.slow
def test_three_features_shuffled_orders_replay_the_float64_history(keras) -> None:
    n, bs, epochs, lr = 20, 8, 4, 0.01
    x, y = _data(n, 3, seed=1)
    x[12], y[12] = x[5], y[5]  # a duplicate sample: either index is the same arithmetic
    x[13], y[13] = x[6], y[6] + 1.0  # the same features with another target: a different one
    run = keras_reference.fit(
        "sgd", lr, x, y, W0, 0.0, bs, epochs, None, QUERY, shuffle=True, seed=0, dtype="float64"
    )
    assert run.orders is not None and run.orders.shape == (epochs, n)
    for order in run.orders:
        np.testing.assert_array_equal(np.sort(order), np.arange(n))
    assert not np.array_equal(run.orders, identity_orders(n, epochs))
    history, kernel, bias = numpy_fit(x, y, W0, "sgd", lr, bs, run.orders)
    np.testing.assert_allclose(run.history, history, rtol=1e-12)
    np.testing.assert_allclose([*run.weights, run.b], [*kernel, bias], rtol=1e-12, atol=1e-12)
    # In the given order it is another run: the recovered order is the one Keras trained on.
    unshuffled, _, _ = numpy_fit(x, y, W0, "sgd", lr, bs, identity_orders(n, epochs))
    assert np.max(np.abs(run.history / unshuffled - 1)) > 1e-6


@pytest.mark.slow
def test_two_large_features_overflow_without_raising(keras) -> None:
    n = 16
    rng = np.random.default_rng(2)
    x = rng.uniform(100.0, 1000.0, (n, 2))
    job = keras_reference.KerasJob(
        optimizer="sgd", lr=0.1, x=x, y=x @ [1.0, -1.0], w0=[0.3, -0.2], b0=0.0, batch_size=4,
        epochs=5, hyperparameters={}, x_query=[1.0, 1.0],
    )  # fmt: skip
    run = keras_reference.fit(**job)
    assert not np.all(np.isfinite(run.history))
    assert run.weights is not None and run.weights.shape == (2,)
    assert not np.all(np.isfinite(run.weights))
    result = keras_reference.keras_run(job)  # the worker's path: no error, the same run
    assert result.error is None
    np.testing.assert_array_equal(result.history, run.history)
    np.testing.assert_array_equal(result.weights, run.weights)


def test_values_per_feature_must_number_d(keras) -> None:
    x, y = _data(6, 3)
    with pytest.raises(InputError, match="w0"):
        keras_reference.fit("sgd", 0.01, x, y, 0.3, 0.0, 4, 1, None, QUERY)
    with pytest.raises(InputError, match="x_query"):
        keras_reference.fit("sgd", 0.01, x, y, W0, 0.0, 4, 1)  # the default query is d = 1's
    with pytest.raises(InputError, match="shape"):
        keras_reference.fit("sgd", 0.01, x[:, :, None], y, W0, 0.0, 4, 1, None, QUERY)
    failed = keras_reference.keras_run(keras_reference.KerasJob(
        optimizer="sgd", lr=0.01, x=x, y=y, w0=[0.3, 0.1], b0=0.0, batch_size=4, epochs=1,
        hyperparameters={}, x_query=list(QUERY),
    ))  # fmt: skip
    assert failed.error is not None and "w0" in failed.error
    assert failed.weights is None and failed.orders is None
