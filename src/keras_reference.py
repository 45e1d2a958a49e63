"""The same configuration trained by real Keras 3 (TensorFlow backend) ``model.fit``.

Builds the seed model, ``Sequential([Input((1,)), Dense(1)])`` with MSE, with the optimizer's
Keras class and the configuration's hyperparameters, starts it from exactly the engine's
initial weights (``set_weights``) and trains with ``fit(shuffle=False, batch_size=...,
epochs=..., verbose=0)``. TensorFlow is imported only when a run is asked for, so the rest of
the package works without it.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from src import optimizers as opt
from src.errors import InputError
from src.problem import QUERY_X

INSTALL_HINT = "pip install tensorflow-cpu  (Keras 3 with the TensorFlow backend)"


class KerasRun(NamedTuple):
    """``History`` losses, final weights and ``predict(np.array([x_query]))``."""

    history: np.ndarray
    w: float
    b: float
    prediction: float


def available() -> bool:
    """Whether TensorFlow (and so Keras's TensorFlow backend) is installed.

    Looks the package up without importing it: the import alone takes seconds, and the
    main job runs Keras in worker processes."""
    return importlib.util.find_spec("tensorflow") is not None


def _keras():  # noqa: ANN202
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import keras
    except ImportError:
        raise InputError(f"Keras/TensorFlow is not installed: {INSTALL_HINT}") from None
    if keras.backend.backend() != "tensorflow":
        raise InputError(f"Keras runs on {keras.backend.backend()}, not tensorflow (KERAS_BACKEND)")
    return keras


def fit(
    optimizer: str,
    lr: float,
    x: np.ndarray,
    y: np.ndarray,
    w0: float,
    b0: float = 0.0,
    batch_size: int = 32,
    epochs: int = 500,
    hyperparameters: Mapping[str, float] | None = None,
    x_query: float = QUERY_X,
) -> KerasRun:
    """Train one configuration in Keras, from the given initial weights."""
    keras = _keras()
    spec = opt.get(optimizer)
    cls = spec.keras[0]
    args = spec.keras_kwargs(hyperparameters or {})
    model = keras.Sequential([keras.Input(shape=(1,)), keras.layers.Dense(1)])
    model.compile(
        optimizer=getattr(keras.optimizers, cls)(learning_rate=lr, **args),
        loss="mean_squared_error",
    )
    model.set_weights([np.array([[w0]], np.float32), np.array([b0], np.float32)])
    xs = np.asarray(x, np.float32).reshape(-1, 1)
    ys = np.asarray(y, np.float32).reshape(-1, 1)
    hist = model.fit(xs, ys, batch_size=batch_size, epochs=epochs, shuffle=False, verbose=0)
    kernel, bias = model.get_weights()
    pred = model.predict(np.array([x_query], np.float32), verbose=0)
    return KerasRun(
        history=np.asarray(hist.history["loss"], np.float64),
        w=float(kernel.ravel()[0]),
        b=float(bias.ravel()[0]),
        prediction=float(np.asarray(pred).ravel()[0]),
    )
