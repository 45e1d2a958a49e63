"""The outcome of one configuration: converged, slow, diverging or overflow.

Read off an engine :class:`~src.engine.Summary`, with ``scale = mean(y^2)`` (the loss of the
zero predictor; 1 where all targets are zero) making the tolerance independent of the data, and
``L*`` the data's least-squares loss (the best fit any run can reach; 0 on noise-free data):

* ``overflow``  -- some epoch had a non-finite loss or weight (``first_nonfinite_epoch >= 0``);
* ``converged`` -- otherwise, ``(final_loss - L*) / scale <= tol``: the run reached the best
  fit, to within ``tol`` of the zero predictor's loss (on noise-free data, ``L* = 0`` and this
  is ``final_loss <= tol * mean(y^2)``; on noisy data no run gets below ``L*``, so the rule
  judges the fit, not the noise);
* ``diverging`` -- otherwise, ``final_loss > diverge_factor * initial_loss``;
* ``slow``      -- everything else: finite, not worse than at the start, not yet converged.

The order matters only at the edges: a run that overflowed once stays ``overflow`` whatever
its last loss (in practice nan), and a run whose loss is tiny is ``converged`` even if it rose
a little from an already tiny start.
"""

from __future__ import annotations

import functools
from typing import TypeVar

import numpy as np
import xarray as xr

ArrayT = TypeVar("ArrayT", np.ndarray, xr.DataArray)

STATUSES: tuple[str, ...] = ("converged", "slow", "diverging", "overflow")
"""Status names; a status is stored as its index (CF ``flag_values`` / ``flag_meanings``)."""

CONVERGED, SLOW, DIVERGING, OVERFLOW = range(len(STATUSES))

DEFAULT_TOL = 1e-4
DEFAULT_DIVERGE_FACTOR = 1.0

RULES = (
    "overflow: a non-finite loss or weight at some epoch; "
    "converged: final_loss - L* <= tol * mean(y^2), L* the least-squares loss; "
    "diverging: final_loss > diverge_factor * initial_loss; slow: otherwise"
)
"""The rules of :func:`classify` in words (the map's ``status_rules`` attribute)."""

def explained(tol: float, diverge_factor: float) -> tuple[tuple[str, str], ...]:
    """Each status with its rule in words, in the order :func:`classify` tests them."""
    return (
        ("overflow", "a loss or weight became inf/nan at some epoch (the first one is recorded)"),
        ("converged", f"final loss - L* <= tol x mean(y^2), tol = {tol:g}, L* the data's "
                      "least-squares loss (the best fit; 0 without noise)"),
        ("diverging", f"finite, but final loss > {diverge_factor:g} x initial loss"),
        ("slow", "everything else: finite, no worse than at the start, not yet converged"),
    )


BREAKING: tuple[int, ...] = (DIVERGING, OVERFLOW)
"""The statuses of a learning rate that is too large: training breaks. The others are
stable (the loss stays finite and does not grow)."""


def breaks(status: ArrayT) -> ArrayT:
    """Whether each status code (:data:`STATUSES` index) is one where training breaks (same
    kind of array as ``status``: NumPy or xarray)."""
    return functools.reduce(np.logical_or, [np.equal(status, k) for k in BREAKING])


def stable(status: ArrayT) -> ArrayT:
    """Whether each status code is a stable one (converged or slow): not :func:`breaks`."""
    return np.logical_not(breaks(status))


def classify(
    initial_loss: np.ndarray,
    final_loss: np.ndarray,
    first_nonfinite_epoch: np.ndarray,
    scale: np.ndarray,
    tol: float = DEFAULT_TOL,
    diverge_factor: float = DEFAULT_DIVERGE_FACTOR,
    optimal_loss: np.ndarray | float = 0.0,
) -> np.ndarray:
    """Status codes (``int8``, indices into :data:`STATUSES`) for arrays of runs;
    ``optimal_loss`` is each run's ``L*``."""
    initial = np.asarray(initial_loss, np.float64)
    final = np.asarray(final_loss, np.float64)
    optimal = np.asarray(optimal_loss, np.float64)
    scale = np.asarray(scale, np.float64)
    scale = np.where(scale > 0, scale, 1.0)
    with np.errstate(invalid="ignore", over="ignore"):
        status = np.select(
            [
                (np.asarray(first_nonfinite_epoch) >= 0) | ~np.isfinite(final),
                (final - optimal) / scale <= tol,
                final > diverge_factor * initial,
            ],
            [OVERFLOW, CONVERGED, DIVERGING],
            default=SLOW,
        )
    return status.astype(np.int8)


def cf_attributes() -> dict[str, object]:
    """CF-convention attributes describing the status codes."""
    return {
        "flag_values": np.arange(len(STATUSES), dtype=np.int8),
        "flag_meanings": " ".join(STATUSES),
        "long_name": "outcome of training",
    }
