"""Closed forms for gradient descent (plain, heavy-ball, Nesterov) on the quadratic MSE loss.

**Full batch.** For ``Dense(1)`` the MSE ``L(w, b) = mean_i (w x_i + b - y_i)^2`` is an exact
quadratic in ``theta = (w, b)`` with constant Hessian

    H = 2 [[mean(x^2), mean(x)],
           [mean(x),   1      ]],

so the error ``e = theta - theta*`` evolves linearly. Along an eigenvector of ``H`` with
eigenvalue ``lambda`` write ``a = lr lambda``:

* plain SGD, ``e <- (1 - a) e``: stable iff ``|1 - a| < 1``, i.e. ``a < 2``;
* Keras heavy ball (``m <- mu m - lr g``, ``theta <- theta + m``):
  ``[e, m] <- [[1 - a, mu], [-a, mu]] [e, m]``. Its characteristic polynomial
  ``z^2 - (1 + mu - a) z + mu`` has both roots inside the unit circle (Jury) iff
  ``0 < a < 2 (1 + mu)``;
* Keras Nesterov (``m <- mu m - lr g``, ``theta <- theta + mu m - lr g``):
  ``[e, m] <- [[1 - a (1 + mu), mu^2], [-a, mu]] [e, m]``, with trace ``T = 1 + mu - a (1 + mu)``
  and determinant ``D = mu (1 - a)``. Jury's conditions ``1 - T + D = a > 0``,
  ``1 + T + D = 2 (1 + mu) - a (1 + 2 mu) > 0`` and ``|D| < 1`` give, for ``0 <= mu < 1``,
  ``a < 2 (1 + mu) / (1 + 2 mu)`` (the third is looser: ``a < 1 + 1/mu``).

Hence ``lr_crit = c(mu) * 2 / lambda_max`` with ``c = 1``, ``1 + mu`` and
``(1 + mu) / (1 + 2 mu)``. Since ``L - L* = e^T H e / 2``, the loss eventually changes by
``rho^2`` per epoch, ``rho`` the spectral radius of the iteration. Seed (x = 1..20, lr 0.01):
``lambda_max = 288.54``, ``lr_crit = 0.00693`` and ``rho^2 = (1 - 2.8854)^2 = 3.5547``.

**Minibatches in a fixed order** (``shuffle=False``). Batch ``b`` has its own Hessian ``H_b``
(the same formula over its samples), so one step multiplies the state by ``A_b`` (the matrices
above with ``lr H_b`` in place of ``a``, 2x2 blocks), and one epoch by ``M = A_B ... A_2 A_1``.
Training is stable iff ``rho(M) < 1``; ``rho(M)^2`` is the per-epoch loss factor. ``rho(M)`` is
not monotone in ``lr`` in general, so the critical learning rate is the *smallest* ``lr`` with
``rho(M) > 1``, found by a fine scan and bisection. Modes with ``H v = 0`` (e.g. N = 1, where
only ``w + b`` is determined) are neutral, ``|z| = 1``, and never grow the loss, hence the small
margin in :data:`NEUTRAL`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from src import optimizers as opt

FLOAT32_MAX = float(np.finfo(np.float32).max)
NEUTRAL = 1e-9
"""``rho(M) > 1 + NEUTRAL`` counts as unstable (neutral modes have ``|z| = 1`` exactly)."""


class Dynamics(NamedTuple):
    """Which SGD: ``momentum`` 0 is plain gradient descent; ``nesterov`` is Keras's form."""

    momentum: float = 0.0
    nesterov: bool = False


PLAIN = Dynamics()
"""Plain gradient descent (Keras ``SGD()``)."""


def closed_form(
    optimizer: str, overrides: Mapping[str, float], *, one_batch: bool, shuffle: bool
) -> Dynamics | None:
    """The dynamics whose critical lr has a closed form here, or ``None`` if it has none.

    Covered: the SGD family (Keras ``SGD``, heavy ball, Nesterov) at its settings (the
    Keras defaults with ``overrides``) when ``0 <= momentum < 1``, every base option
    (``clipnorm``, ``weight_decay``, ``use_ema``, ...) is off, and the batches of an epoch come
    in a fixed order (``one_batch``, or not ``shuffle``). The one rule for the sweep,
    ``explain`` and the report.
    """
    o = opt.get(optimizer)
    settings = o.settings(overrides)
    if o.family is not opt.SGD or (shuffle and not one_batch):
        return None
    if any(settings[b] != off for b, off in opt.BASE_OPTIONS.items()):
        return None
    if not 0 <= settings["momentum"] < 1:
        return None
    return Dynamics(float(settings["momentum"]), bool(settings["nesterov"]))


def hessian(x: np.ndarray) -> np.ndarray:
    """Hessian of the mean squared error over ``x`` with respect to ``(w, b)`` (float64)."""
    x = np.asarray(x, np.float64)
    return 2.0 * np.array([[np.mean(x * x), np.mean(x)], [np.mean(x), 1.0]])


def hessian_eigenvalues(x: np.ndarray) -> np.ndarray:
    """Eigenvalues of :func:`hessian`, ascending."""
    return np.linalg.eigvalsh(hessian(x))


def critical_factor(dynamics: Dynamics) -> float:
    """``c(mu)`` in ``lr_crit = c * 2 / lambda_max`` (module docstring)."""
    mu = dynamics.momentum
    if mu == 0:
        return 1.0
    return (1 + mu) / (1 + 2 * mu) if dynamics.nesterov else 1 + mu


def gd_critical_lr(x: np.ndarray, dynamics: Dynamics = PLAIN) -> float:
    """Critical learning rate of full-batch (Keras) SGD: ``c(mu) * 2 / lambda_max``."""
    return critical_factor(dynamics) * 2.0 / float(hessian_eigenvalues(x)[-1])


def gd_loss_growth(lr: float, x: np.ndarray) -> float:
    """Asymptotic per-epoch loss factor of full-batch plain GD, ``max (1 - lr lambda)^2``."""
    return float(np.max(np.square(1.0 - lr * hessian_eigenvalues(x))))


def batches(n: int, batch_size: int) -> list[slice]:
    """Keras's batches of an epoch without shuffling: consecutive, the last one partial."""
    return [slice(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


def step_matrix(h: np.ndarray, lr: np.ndarray, dynamics: Dynamics) -> np.ndarray:
    """The linear map of one step on the state ``e`` (2) or ``[e, m]`` (4), for each ``lr``.

    ``h`` is the batch Hessian (2x2); ``lr`` an array of shape ``(K,)``; returns ``(K, d, d)``.
    """
    lr_h = np.asarray(lr, np.float64)[:, None, None] * h
    eye = np.broadcast_to(np.eye(2), lr_h.shape)
    mu = dynamics.momentum
    if mu == 0:
        return eye - lr_h
    if dynamics.nesterov:
        return np.block([[eye - (1 + mu) * lr_h, mu * mu * eye], [-lr_h, mu * eye]])
    return np.block([[eye - lr_h, mu * eye], [-lr_h, mu * eye]])


def epoch_matrix(x: np.ndarray, batch_size: int, lr: np.ndarray, dynamics: Dynamics) -> np.ndarray:
    """``M = A_B ... A_1`` for each ``lr`` (shape ``(K, d, d)``)."""
    lr = np.atleast_1d(np.asarray(lr, np.float64))
    m = None
    for s in batches(len(x), batch_size):
        a = step_matrix(hessian(np.asarray(x)[s]), lr, dynamics)
        m = a if m is None else a @ m
    return m


def spectral_radius(
    x: np.ndarray, batch_size: int, lr: np.ndarray, dynamics: Dynamics
) -> np.ndarray:
    """``rho(M)`` of the epoch map for each ``lr``."""
    return np.max(np.abs(np.linalg.eigvals(epoch_matrix(x, batch_size, lr, dynamics))), axis=-1)


def loss_growth(x: np.ndarray, batch_size: int, lr: float, dynamics: Dynamics = PLAIN) -> float:
    """Predicted asymptotic per-epoch loss factor ``rho(M)^2`` (fixed batch order)."""
    return float(spectral_radius(x, batch_size, np.array([lr]), dynamics)[0] ** 2)


def critical_lr(
    x: np.ndarray, batch_size: int, dynamics: Dynamics = PLAIN, rtol: float = 1e-9
) -> float:
    """The smallest learning rate at which (Keras) SGD is unstable, ``shuffle=False``.

    One batch: the closed form :func:`gd_critical_lr`. Several: the first ``lr`` with
    ``rho(M) > 1``, scanned on a log grid from 1e-4 to 1e3 times the full-batch value (so an
    unstable window narrower than 0.2% of ``lr`` could be missed) and bisected to ``rtol``.
    ``nan`` if the scan finds no unstable ``lr``.
    """
    x = np.asarray(x, np.float64)
    full = gd_critical_lr(x, dynamics)
    if batch_size >= len(x):
        return full
    grid = full * np.geomspace(1e-4, 1e3, 8001)
    unstable = spectral_radius(x, batch_size, grid, dynamics) > 1 + NEUTRAL
    if not unstable.any():
        return math.nan
    k = int(np.argmax(unstable))
    if k == 0:
        return float(grid[0])
    lo, hi = float(grid[k - 1]), float(grid[k])
    while hi / lo - 1 > rtol:
        mid = math.sqrt(lo * hi)
        if spectral_radius(x, batch_size, np.array([mid]), dynamics)[0] > 1 + NEUTRAL:
            hi = mid
        else:
            lo = mid
    return hi


def predicted_history(
    x: np.ndarray,
    y: np.ndarray,
    w0: float,
    b0: float,
    lr: float,
    batch_size: int,
    epochs: int,
    dynamics: Dynamics = PLAIN,
) -> np.ndarray:
    """The ``History`` losses of (Keras) SGD in exact arithmetic (float64, no rounding to f32).

    The dynamics are affine, ``s <- A_b s + c_b`` per batch, so this is the closed-form
    trajectory evaluated step by step; the epoch loss is ``sum_b n_b L_b / N`` of the
    pre-update batch losses, as Keras reports it.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    theta, m = np.array([w0, b0], np.float64), np.zeros(2)
    mu, out = dynamics.momentum, np.empty(epochs)
    with np.errstate(over="ignore", invalid="ignore"):
        for epoch in range(epochs):
            total = 0.0
            for s in batches(len(x), batch_size):
                xb, yb = x[s], y[s]
                err = theta[0] * xb + theta[1] - yb
                total += float(np.sum(err * err))
                g = 2.0 * np.array([np.mean(err * xb), np.mean(err)])
                if mu == 0:
                    theta = theta - lr * g
                else:
                    m = mu * m - lr * g
                    theta = theta + (mu * m - lr * g if dynamics.nesterov else m)
            out[epoch] = total / len(x)
    return out


def predicted_overflow_epoch(history: np.ndarray, n: int, growth: float) -> float | None:
    """First epoch (from 1) whose float32 epoch loss overflows, from exact-arithmetic losses.

    In float32 the epoch total ``sum_b n_b L_b`` (``= N L``) is the largest sum formed, so the
    loss becomes inf once ``N L > FLOAT32_MAX``. Past the end of ``history`` the last loss is
    extrapolated with ``growth`` per epoch; ``None`` if it never overflows.
    """
    over = np.flatnonzero(n * history > FLOAT32_MAX)
    if over.size:
        return float(over[0] + 1)
    last = float(history[-1])
    if not (growth > 1 and last > 0 and math.isfinite(last)):
        return None
    return len(history) + math.ceil(math.log(FLOAT32_MAX / (n * last)) / math.log(growth))
