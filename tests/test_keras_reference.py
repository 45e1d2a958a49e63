"""The engine against real Keras 3 ``model.fit`` (TensorFlow backend), epoch by epoch.

Skipped where TensorFlow is not installed (it becomes a dependency with the Keras-validation
work); wherever it is, these are the ground truth the whole map rests on.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import simulate

pytest.importorskip("tensorflow")

from src import engine, keras_reference
from src import optimizers as opt
from src.problem import Problem

# Non-chaotic configurations: SGD family inside or clearly outside its stable range (a full
# batch, and minibatches with a partial last batch); adaptive optimizers in their transient.
CASES = [
    ("sgd", 0.01, 20, 32, 40),  # the seed: overflows, ~3.55x per epoch
    ("sgd", 0.01, 10, 32, 40),
    ("sgd", 0.001, 45, 8, 15),
    ("momentum", 0.002, 20, 32, 40),
    ("nesterov", 0.002, 20, 6, 15),
    ("adam", 0.001, 20, 32, 40),
    ("rmsprop", 0.001, 20, 8, 15),
    ("adagrad", 0.01, 20, 32, 40),
]


@pytest.mark.parametrize(("name", "lr", "n", "bs", "epochs"), CASES)
def test_engine_history_matches_keras_fit(
    name: str, lr: float, n: int, bs: int, epochs: int
) -> None:
    x, y, _ = Problem().dataset(n)
    w0 = float(engine.initial_params(0).w)
    keras = keras_reference.fit(name, lr, x, y, w0, 0.0, bs, epochs)
    summary, history = simulate(name, [lr], [n], [bs], [epochs], [0])
    ours = history[0].astype(np.float64)
    both = np.isfinite(keras.history) & np.isfinite(ours) & (keras.history > 1e-2)
    assert both.sum() >= 3
    np.testing.assert_allclose(ours[both], keras.history[both], rtol=1e-5)
    # Overflow happens at the same epoch (inf, then nan), as Keras reports it.
    assert np.array_equal(np.isfinite(ours), np.isfinite(keras.history))
    if np.isfinite(keras.w):
        np.testing.assert_allclose(
            [summary.final_w[0], summary.prediction[0]], [keras.w, keras.prediction], rtol=1e-5
        )


def test_keras_defaults_are_what_the_registry_says() -> None:
    import keras

    for name, o in opt.OPTIMIZERS.items():
        cls, kwargs = o.keras
        k = getattr(keras.optimizers, cls)(**kwargs)
        assert float(k.learning_rate) == pytest.approx(o.learning_rate), name
        for h, v in o.defaults.items():
            assert float(getattr(k, h)) == pytest.approx(v), (name, h)
