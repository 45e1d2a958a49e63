"""The engine against real Keras 3 ``model.fit`` (TensorFlow backend), epoch by epoch.

Skipped where TensorFlow is not installed (it becomes a dependency with the Keras-validation
work); wherever it is, these are the ground truth the whole map rests on.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from src import engine, keras_reference
from src.problem import Problem

pytestmark = pytest.mark.slow  # Keras model.fit, ~3 s a case

# Non-chaotic configurations, at least one per optimizer and per base option: SGD inside or
# clearly outside its stable range (a full batch, and minibatches with a partial last batch);
# the others in their transient, at learning rates where they move visibly.
CASES = [
    ("sgd", 0.01, 20, 32, 40, {}),  # the seed: overflows, ~3.55x per epoch
    ("sgd", 0.01, 10, 32, 40, {}),
    ("sgd", 0.001, 45, 8, 15, {}),
    ("momentum", 0.002, 20, 32, 40, {}),
    ("nesterov", 0.002, 20, 6, 15, {}),
    ("adam", 0.001, 20, 32, 40, {}),
    ("adam", 0.01, 20, 8, 15, {"amsgrad": 1.0}),
    ("adamw", 0.01, 20, 32, 40, {}),
    ("rmsprop", 0.001, 20, 8, 15, {}),
    ("rmsprop", 0.001, 20, 32, 40, {"centered": 1.0, "momentum": 0.5}),
    ("adagrad", 0.01, 20, 32, 40, {}),
    ("adadelta", 1.0, 20, 32, 40, {}),
    ("adamax", 0.01, 20, 8, 15, {}),
    ("nadam", 0.01, 20, 32, 40, {}),
    ("ftrl", 0.1, 20, 32, 40, {}),
    ("lion", 0.001, 20, 32, 40, {}),
    ("lamb", 0.01, 20, 32, 40, {}),
    ("adafactor", 0.01, 20, 32, 40, {}),
    ("muon", 0.01, 20, 32, 40, {}),
    ("schedule_free_adamw", 0.0025, 20, 8, 15, {}),
    ("sgd", 0.01, 20, 32, 40, {"clipnorm": 1.0}),
    ("sgd", 0.01, 20, 32, 40, {"global_clipnorm": 1.0}),
    ("sgd", 0.01, 20, 32, 40, {"clipvalue": 0.5}),
    ("momentum", 0.002, 20, 8, 15, {"weight_decay": 0.1}),
    ("adam", 0.01, 20, 32, 40, {"use_ema": 1.0, "ema_momentum": 0.9}),
]


@pytest.mark.parametrize(
    ("name", "lr", "n", "bs", "epochs", "hp"), CASES, ids=lambda v: str(v).replace(" ", "")
)
def test_engine_history_matches_keras_fit(
    name: str, lr: float, n: int, bs: int, epochs: int, hp: dict[str, float], simulate: Callable
) -> None:
    x, y, _ = Problem().dataset(n)
    w0 = float(engine.initial_params(0).w[0])
    keras = keras_reference.fit(name, lr, x, y, w0, 0.0, bs, epochs, hp)
    summary, history = simulate(name, [lr], [n], [bs], [epochs], [0], hyperparameters=hp)
    ours = history[0].astype(np.float64)
    both = np.isfinite(keras.history) & np.isfinite(ours) & (keras.history > 1e-2)
    assert both.sum() >= 3
    np.testing.assert_allclose(ours[both], keras.history[both], rtol=1e-5)
    # Overflow happens at the same epoch (inf, then nan), as Keras reports it.
    assert np.array_equal(np.isfinite(ours), np.isfinite(keras.history))
    if np.isfinite(keras.w):
        np.testing.assert_allclose(
            [summary.final_w[0], summary.final_b[0], summary.prediction[0]],
            [keras.w, keras.b, keras.prediction],
            rtol=1e-5,
            atol=1e-6,
        )


def test_use_ema_leaves_the_average_in_the_model() -> None:
    # History is unaffected by the EMA; the final weights are the average, not the last step.
    x, y, _ = Problem().dataset(20)
    w0 = float(engine.initial_params(0).w[0])
    plain = keras_reference.fit("adam", 0.01, x, y, w0, 0.0, 32, 20)
    ema = keras_reference.fit("adam", 0.01, x, y, w0, 0.0, 32, 20, {"use_ema": 1.0})
    np.testing.assert_array_equal(plain.history, ema.history)
    assert abs(plain.w - ema.w) > 1e-3
