"""Closed forms for gradient descent on the seed problem's quadratic loss.

For ``Dense(1)`` the full-batch MSE ``L(w, b) = mean_i (w x_i + b - y_i)^2`` is an exact
quadratic in ``theta = (w, b)`` with constant Hessian

    H = 2 [[mean(x^2), mean(x)],
           [mean(x),   1      ]].

Full-batch gradient descent ``theta <- theta - lr grad L`` moves the error
``e = theta - theta*`` by ``e <- (I - lr H) e``. Along an eigenvector of ``H`` with eigenvalue
``lambda`` the error is multiplied by ``1 - lr lambda`` each step, so the iteration is stable
iff ``|1 - lr lambda| < 1`` for both eigenvalues, i.e.

    lr < lr_crit = 2 / lambda_max,

and, since ``L - L* = e^T H e / 2``, the loss eventually changes by the factor

    rho^2 = max_lambda (1 - lr lambda)^2     per epoch.

For the seed (x = 1..20, lr = 0.01): ``lambda_max = 288.54``, ``lr_crit = 0.00693`` and
``(1 - 2.8854)^2 = 3.5547``, the ~3.55x per-epoch growth seen in Keras.
"""

from __future__ import annotations

import numpy as np


def hessian(x: np.ndarray) -> np.ndarray:
    """Hessian of the full-batch MSE with respect to ``(w, b)`` (float64)."""
    x = np.asarray(x, np.float64)
    return 2.0 * np.array([[np.mean(x * x), np.mean(x)], [np.mean(x), 1.0]])


def hessian_eigenvalues(x: np.ndarray) -> np.ndarray:
    """Eigenvalues of :func:`hessian`, ascending."""
    return np.linalg.eigvalsh(hessian(x))


def gd_critical_lr(x: np.ndarray) -> float:
    """Largest stable learning rate of full-batch gradient descent, ``2 / lambda_max``."""
    return float(2.0 / hessian_eigenvalues(x)[-1])


def gd_loss_growth(lr: float, x: np.ndarray) -> float:
    """Asymptotic per-epoch loss factor of full-batch GD, ``max (1 - lr lambda)^2``."""
    return float(np.max(np.square(1.0 - lr * hessian_eigenvalues(x))))
