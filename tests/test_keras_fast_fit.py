"""``src.keras_reference.fit`` feeds ``model.fit`` Keras's own input pipeline once, repeated,
instead of ``fit(x, y)``'s new iterator every epoch: these tests hold it to the plain call.

For every optimizer of the map, shuffled (seeded) and not, the ``History`` (every epoch's
loss), the final kernel and bias and the prediction are bit for bit those of a plain
``model.fit(x, y, batch_size=..., epochs=..., shuffle=...)`` written out here, and the recorded
sample orders are the plain call's. A ``reshuffle`` run (a fresh seeded permutation every
epoch, which no single plain call draws) is held to plain ``fit`` calls of one epoch each on
its recorded orders. N = 11 and batch 4: two full batches and a partial one every epoch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from src import keras_reference
from src import optimizers as opt

pytestmark = pytest.mark.slow  # ~100 Keras runs of a few epochs, ~1-2 minutes

N, BATCH, EPOCHS, SEED, W0 = 11, 4, 3, 7, 0.3
QUERY = 25.0
NAMES = list(opt.OPTIMIZERS)
BASE_OPTIONS = [("adam", {"use_ema": 1.0, "ema_momentum": 0.5}), ("sgd", {"clipnorm": 1.0})]
"""Base options that act outside the step: ``use_ema`` swaps the average into the model when
``fit`` ends, ``clipnorm`` rescales the gradient."""


class Plain(NamedTuple):
    """What a plain Keras run gives: the ``History`` losses and the final model's numbers."""

    history: np.ndarray
    kernel: np.ndarray
    bias: np.ndarray
    prediction: np.ndarray


def _data() -> tuple[np.ndarray, np.ndarray]:
    x = np.arange(1, N + 1, dtype=np.float64)
    return x, 0.5 * x


def _lr(name: str) -> float:
    return 10 * opt.get(name).learning_rate  # the weights move visibly in 9 steps


@pytest.fixture(scope="module")
def keras():
    """Keras on TensorFlow, with the worker's one-thread settings: its initializer's, or, if
    an earlier test file started TensorFlow in this process, the same pools from the
    session's ``TF_NUM_*_THREADS`` (conftest.py)."""
    try:
        keras_reference._init_worker()
    except RuntimeError as e:
        if "cannot be modified after initialization" not in str(e):
            raise
    return keras_reference._keras()


def _model(keras, name: str, lr: float, hyperparameters: Mapping[str, float]):
    spec = opt.get(name)
    model = keras.Sequential([keras.Input(shape=(1,)), keras.layers.Dense(1)])
    optimizer = getattr(keras.optimizers, spec.keras[0])
    model.compile(
        optimizer=optimizer(learning_rate=lr, **spec.keras_kwargs(hyperparameters)),
        loss="mean_squared_error",
    )
    model.set_weights([np.array([[W0]], np.float32), np.array([0.0], np.float32)])
    return model


def _finish(model, losses: list[float]) -> Plain:
    kernel, bias = model.get_weights()
    prediction = model.predict(np.array([[QUERY]], np.float32), verbose=0)
    return Plain(np.asarray(losses, np.float32), kernel.ravel(), bias.ravel(), prediction.ravel())


def plain_fit(
    keras, name: str, shuffle: bool, hyperparameters: Mapping[str, float] | None = None
) -> Plain:
    """The plain call, as a user writes it (seeded with :data:`SEED` when shuffled)."""
    x, y = _data()
    if shuffle:
        keras.utils.set_random_seed(SEED)
    model = _model(keras, name, _lr(name), hyperparameters or {})
    xs, ys = x.astype(np.float32).reshape(-1, 1), y.astype(np.float32).reshape(-1, 1)
    hist = model.fit(xs, ys, batch_size=BATCH, epochs=EPOCHS, shuffle=shuffle, verbose=0)
    return _finish(model, hist.history["loss"])


def assert_same(run: keras_reference.KerasRun, plain: Plain, what: object) -> None:
    """``History``, kernel, bias and prediction equal bit for bit (float32)."""
    assert np.array_equal(run.history.astype(np.float32), plain.history), what
    assert np.float32(run.w) == plain.kernel[0] and np.float32(run.b) == plain.bias[0], what
    assert np.float32(run.prediction) == plain.prediction[0], what
    assert run.w != W0, what  # it trained


@pytest.mark.parametrize("shuffle", [False, True], ids=["fixed", "shuffled"])
@pytest.mark.parametrize(
    ("name", "hyperparameters"),
    [*((name, {}) for name in NAMES), *BASE_OPTIONS],
    ids=[*NAMES, *(f"{n}-{'-'.join(h)}" for n, h in BASE_OPTIONS)],
)
def test_history_and_weights_are_plain_fits_bit_for_bit(
    keras, name: str, hyperparameters: dict[str, float], shuffle: bool
) -> None:
    x, y = _data()
    run = keras_reference.fit(
        name, _lr(name), x, y, W0, 0.0, BATCH, EPOCHS, hyperparameters, QUERY,
        shuffle=shuffle, seed=SEED,
    )  # fmt: skip
    assert_same(run, plain_fit(keras, name, shuffle, hyperparameters), name)
    if shuffle:  # a seeded plain fit feeds its first permutation in every epoch
        assert run.orders is not None and run.orders.shape == (EPOCHS, N)
        assert all(np.array_equal(o, run.orders[0]) for o in run.orders)
        assert not np.array_equal(run.orders[0], np.arange(N))
    else:
        assert run.orders is None


def test_recorded_orders_are_the_plain_fits(keras) -> None:
    # The recording step inside Keras's own per-epoch loop and inside the repeated pipeline.
    x, y = _data()
    for seed in (SEED, 3):
        args = ("sgd", 1e-3, x, y, W0, 0.0, BATCH, EPOCHS)
        fast = keras_reference.fit(*args, shuffle=True, seed=seed)
        plain = keras_reference.fit(*args, shuffle=True, seed=seed, plain=True)
        assert fast.orders is not None and plain.orders is not None
        np.testing.assert_array_equal(fast.orders, plain.orders)
        np.testing.assert_array_equal(fast.history, plain.history)


@pytest.mark.parametrize("name", NAMES)
def test_a_reshuffled_run_is_plain_fits_of_its_recorded_orders(keras, name: str) -> None:
    # Every epoch a fresh permutation from the seeded stream; epoch by epoch, a plain fit of one
    # epoch over the samples in the recorded order (unshuffled) gives the same loss, and the
    # model ends the same. (One fit per epoch: the optimizer's state carries over, and Keras's
    # end-of-fit step only acts with use_ema, off here.)
    x, y = _data()
    run = keras_reference.fit(
        name, _lr(name), x, y, W0, 0.0, BATCH, EPOCHS, None, QUERY, shuffle=True, seed=SEED,
        reshuffle=True,
    )  # fmt: skip
    assert run.orders is not None
    assert len({tuple(o) for o in run.orders}) == EPOCHS  # fresh every epoch
    again = keras_reference.fit(
        name, _lr(name), x, y, W0, 0.0, BATCH, EPOCHS, shuffle=True, seed=SEED, reshuffle=True
    )
    np.testing.assert_array_equal(again.orders, run.orders)  # reproducible from the seed
    np.testing.assert_array_equal(again.history, run.history)

    model = _model(keras, name, _lr(name), {})
    xs, ys = x.astype(np.float32).reshape(-1, 1), y.astype(np.float32).reshape(-1, 1)
    losses = []
    for order in run.orders:
        hist = model.fit(xs[order], ys[order], batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
        losses += hist.history["loss"]
    assert_same(run, _finish(model, losses), name)


def test_plain_with_a_reshuffled_seed_is_refused(keras) -> None:
    from src.errors import InputError

    x, y = _data()
    with pytest.raises(InputError, match="reshuffle"):
        keras_reference.fit(
            "sgd", 0.01, x, y, W0, 0.0, BATCH, 1, shuffle=True, seed=1, reshuffle=True, plain=True
        )
