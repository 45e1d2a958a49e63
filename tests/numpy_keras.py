"""A plain NumPy transcription of Keras 3 ``model.fit`` and optimizers, for the tests.

Written straight from keras/src/optimizers/*.py and keras/src/trainers (one loop, one sample at
a time, no vectorisation, no padding; :func:`fit_features`, for ``d`` input features in float64,
is vectorised over the features only), in the op order Keras uses; ``dtype`` picks float32
(Keras's) or float64 (the exact reference). Python-float constants such as ``1 - beta_1`` are
formed in double precision and then rounded to ``dtype``, as Keras's ops do.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


class NumpyOptimizer:
    """One Keras optimizer over a list of scalar variables ``[w, b]``."""

    FAMILIES = ("sgd", "adam", "rmsprop", "adagrad")

    def __init__(self, family: str, lr: float, hp: Mapping[str, float], dtype: type) -> None:
        self.family, self.hp, self.dt = family, dict(hp), dtype
        self.lr = dtype(lr)
        self.iterations = 0
        self.slots: dict[str, list] = {}

    def c(self, v: float) -> np.floating:
        return self.dt(v)

    def cast(self, v: float) -> np.floating:
        """Keras's ``ops.cast`` of a Python float: on TensorFlow ``tf.cast`` makes it a float32
        tensor first, so it is rounded to float32 even in a float64 run."""
        return self.dt(np.float32(v))

    def apply(self, grads: list, variables: list) -> list:
        if not self.slots:
            init = self.cast(self.hp.get("initial_accumulator_value", 0.0))
            zeros = [self.c(0.0) for _ in variables]
            self.slots = {"m": list(zeros), "v": list(zeros), "acc": [init for _ in variables]}
        out = [
            self._step(i, g, var) for i, (g, var) in enumerate(zip(grads, variables, strict=True))
        ]
        self.iterations += 1
        return out

    def _step(self, i: int, g: np.floating, var: np.floating) -> np.floating:
        c, lr, hp, s = self.c, self.lr, self.hp, self.slots
        if self.family == "sgd":
            if hp["momentum"] != 0:
                mu = self.cast(hp["momentum"])
                s["m"][i] = s["m"][i] * mu - g * lr
                if hp["nesterov"]:
                    return var + (s["m"][i] * mu - g * lr)
                return var + s["m"][i]
            return var - g * lr
        if self.family == "adam":
            t = c(self.iterations + 1)
            b1, b2 = self.cast(hp["beta_1"]), self.cast(hp["beta_2"])
            alpha = lr * np.sqrt(c(1) - b2**t) / (c(1) - b1**t)
            s["m"][i] = s["m"][i] + (g - s["m"][i]) * c(1 - hp["beta_1"])
            s["v"][i] = s["v"][i] + (g * g - s["v"][i]) * c(1 - hp["beta_2"])
            return var - (s["m"][i] * alpha) / (np.sqrt(s["v"][i]) + c(hp["epsilon"]))
        if self.family == "rmsprop":
            rho = c(hp["rho"])
            s["v"][i] = rho * s["v"][i] + c(1 - hp["rho"]) * (g * g)
            inc = (lr * g) / np.sqrt(s["v"][i] + c(hp["epsilon"]))
            if hp["momentum"] > 0:
                s["m"][i] = c(hp["momentum"]) * s["m"][i] + inc
                return var - s["m"][i]
            return var - inc
        if self.family == "adagrad":
            s["acc"][i] = s["acc"][i] + g * g
            return var - (lr * g) / np.sqrt(s["acc"][i] + c(hp["epsilon"]))
        raise ValueError(self.family)


def fit(
    x: np.ndarray,
    y: np.ndarray,
    w0: float,
    family: str,
    lr: float,
    hp: Mapping[str, float],
    batch_size: int,
    epochs: int,
    dtype: type = np.float64,
) -> tuple[np.ndarray, float, float]:
    """Keras ``fit(shuffle=False)``: returns (History losses, final w, final b)."""
    x, y = np.asarray(x, dtype), np.asarray(y, dtype)
    w, b = dtype(w0), dtype(0.0)
    opt = NumpyOptimizer(family, lr, hp, dtype)
    n = len(x)
    history = []
    with np.errstate(all="ignore"):
        for _ in range(epochs):
            total, count = dtype(0.0), dtype(0.0)
            for start in range(0, n, batch_size):
                xb, yb = x[start : start + batch_size], y[start : start + batch_size]
                nb = dtype(len(xb))
                sq_sum, dw, db = dtype(0.0), dtype(0.0), dtype(0.0)
                for xj, yj in zip(xb, yb, strict=True):  # one sample at a time, in order
                    err = (w * xj + b) - yj
                    sq_sum = sq_sum + err * err
                    dw = dw + dtype(2) * err * xj
                    db = db + dtype(2) * err
                loss = sq_sum / nb
                w, b = opt.apply([dw / nb, db / nb], [w, b])
                total = total + loss * nb
                count = count + nb
            history.append(total / count)
    return np.array(history, dtype), float(w), float(b)


def transcribed(optimizers: object) -> list[str]:
    """The optimizer names this transcription covers (the others are checked against real
    Keras only: tests/test_keras_optimizers.py and tests/test_keras_reference.py)."""
    return [
        name
        for name, o in optimizers.items()  # type: ignore[attr-defined]
        if o.family.name in NumpyOptimizer.FAMILIES and "weight_decay" not in o.defaults
    ]


ADAM = {"beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7}
"""Keras's Adam defaults."""


def fit_features(
    x: np.ndarray,
    y: np.ndarray,
    w0: np.ndarray,
    family: str,
    lr: float,
    batch_size: int,
    orders: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Keras ``fit`` of ``Dense(1)`` on ``d`` features + MSE, vectorised over the features, in
    float64 (bias 0 at the start): each epoch's
    batches cut consecutively from its order (the last one partial), every batch's loss the
    mean squared error with the pre-update weights, ``History`` ``sum_b loss_b n_b / N``.
    Returns (history, kernel ``(d,)``, bias).

    Adam as keras/src/optimizers/adam.py: ``beta^t`` of the float32-rounded betas (Keras's
    ``ops.cast`` of a Python float makes a float32 tensor first), ``1 - beta`` and epsilon as
    Python floats."""
    n, d = x.shape
    xa = np.concatenate([x, np.ones((n, 1))], axis=1)  # the bias as a constant last feature
    theta = np.append(np.asarray(w0, np.float64), 0.0)
    m, v, t = np.zeros(d + 1), np.zeros(d + 1), 0
    b1, b2 = float(np.float32(ADAM["beta_1"])), float(np.float32(ADAM["beta_2"]))
    history = []
    with np.errstate(all="ignore"):
        for order in orders:
            total = 0.0
            for start in range(0, n, batch_size):
                i = order[start : start + batch_size]
                r = xa[i] @ theta - y[i]
                total += len(i) * np.mean(r * r)
                g = 2.0 * (xa[i].T @ r) / len(i)
                if family == "sgd":
                    theta = theta - g * lr
                elif family == "adam":
                    t += 1
                    alpha = lr * np.sqrt(1.0 - b2**t) / (1.0 - b1**t)
                    m = m + (g - m) * (1 - ADAM["beta_1"])
                    v = v + (g * g - v) * (1 - ADAM["beta_2"])
                    theta = theta - (m * alpha) / (np.sqrt(v) + ADAM["epsilon"])
                else:
                    raise ValueError(family)
            history.append(total / n)
    return np.array(history), theta[:d], float(theta[d])


def identity_orders(n: int, epochs: int) -> np.ndarray:
    """Every epoch in the given order: ``fit(shuffle=False)``."""
    return np.tile(np.arange(n), (epochs, 1))
