"""Every optimizer's step against real Keras 3 ``optimizer.apply`` (TensorFlow backend).

The same gradient sequence -- from 1e-9 to 1e2, where epsilon placement and clipping matter --
goes through Keras's optimizer (on a ``(1, 1)`` kernel and a ``(1,)`` bias) and through the
engine's transformation; the weights after every step must agree to a few float32 ulp.
"""

from __future__ import annotations

import numpy as np
import pytest
from keras_steps import engine_steps, gradients, keras_steps

pytest.importorskip("tensorflow")

from src import optimizers as opt

pytestmark = pytest.mark.slow  # Keras

# Options and non-default hyperparameters, each the Keras way of turning them on.
VARIANTS = [
    ("sgd", {"clipnorm": 0.5}),
    ("sgd", {"global_clipnorm": 0.5}),
    ("sgd", {"clipvalue": 0.1}),
    ("sgd", {"weight_decay": 0.05}),
    ("momentum", {"use_ema": 1.0}),
    ("nesterov", {"momentum": 0.99}),
    ("adam", {"amsgrad": 1.0}),
    ("adam", {"use_ema": 1.0, "ema_momentum": 0.9}),
    ("adam", {"weight_decay": 0.05, "clipnorm": 1.0}),
    ("adamw", {"amsgrad": 1.0, "weight_decay": 0.1}),
    ("rmsprop", {"centered": 1.0}),
    ("rmsprop", {"centered": 1.0, "momentum": 0.9}),
    ("adagrad", {"initial_accumulator_value": 1.0}),
    ("adadelta", {"rho": 0.5}),
    ("adamax", {"beta_1": 0.5, "global_clipnorm": 2.0}),
    ("nadam", {"beta_1": 0.5}),
    ("ftrl", {"l1_regularization_strength": 0.01, "l2_regularization_strength": 0.1,
              "l2_shrinkage_regularization_strength": 0.01, "beta": 0.1,
              "learning_rate_power": -0.7}),
    ("lion", {"beta_1": 0.5, "clipvalue": 0.5}),
    ("lamb", {"weight_decay": 0.1}),
    ("adafactor", {"clip_threshold": 0.1, "epsilon_2": 0.1}),
    ("muon", {"nesterov": 0.0}),
    ("schedule_free_adamw", {"warmup_steps": 10.0, "beta_1": 0.5}),
    ("muon", {"ns_steps": 3.0, "weight_decay": 0.1, "adam_lr_ratio": 0.5}),
]  # fmt: skip


def _compare(name: str, lr: float, hp: dict[str, float], seed: int) -> None:
    g = gradients(seed, 40)
    keras = keras_steps(name, lr, g, hp)
    ours = engine_steps(name, lr, g, hp)
    assert keras.shape == ours.shape
    # Ftrl and weight decay assign new weights, which an optax update (new - var) carries to
    # within an ulp of the *old* weight: hence the absolute tolerance.
    np.testing.assert_allclose(ours, keras, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("name", list(opt.OPTIMIZERS))
def test_defaults_step_like_keras(name: str) -> None:
    _compare(name, 10 * opt.get(name).learning_rate, {}, seed=0)


@pytest.mark.parametrize(("name", "hp"), VARIANTS, ids=lambda v: str(v))
def test_options_step_like_keras(name: str, hp: dict[str, float]) -> None:
    _compare(name, 0.01, hp, seed=3)


def test_every_keras_optimizer_class_is_covered() -> None:
    import keras

    classes = {
        n
        for n in dir(keras.optimizers)
        if isinstance(getattr(keras.optimizers, n), type)
        and issubclass(getattr(keras.optimizers, n), keras.optimizers.Optimizer)
        and n not in ("Optimizer", "LossScaleOptimizer", "MultiOptimizer")
    }
    assert classes == set(opt.KERAS_CLASSES)


def test_registry_defaults_are_keras_defaults() -> None:
    import keras

    for name, o in opt.OPTIMIZERS.items():
        cls, kwargs = o.keras
        k = getattr(keras.optimizers, cls)(**kwargs)
        assert float(k.learning_rate) == pytest.approx(o.learning_rate), name
        for h, v in o.defaults.items():
            assert float(getattr(k, h)) == pytest.approx(v), (name, h)
