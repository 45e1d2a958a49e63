"""Measured stability boundaries: the critical learning rate of every cell, by bisection.

A *cell* is a point of the map on every axis but ``lr`` (optimizer, N, batch size, seed,
epochs). Its critical learning rate is the smallest ``lr`` at which the run *breaks*
(``overflow`` or ``diverging``). The grid brackets it: the first breaking grid ``lr`` and the
stable one below it. Then all cells are bisected at once in log space, each round one batched
simulation of every unfinished cell, until the bracket is narrower than ``rtol`` (0.1% by
default, 8 rounds from a 16-per-decade grid).

Adaptive optimizers need not be monotone in ``lr``: a cell that is stable again at some grid
``lr`` above its first break is flagged ``non_monotone``; its critical lr is still the first
break. A cell that breaks at the smallest grid ``lr`` is bisected down from ``grid[0] / 100``
if that is stable, else reported as nan; a cell that never breaks on the grid is nan.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

DEFAULT_RTOL = 1e-3
BELOW_GRID = 100.0


class Boundary(NamedTuple):
    """Per cell: the critical lr (nan: none found) and whether stability resumes above it."""

    critical_lr: np.ndarray
    non_monotone: np.ndarray


def search(
    grid_lr: np.ndarray,
    breaks: np.ndarray,
    breaks_at: Callable[[np.ndarray, np.ndarray], np.ndarray],
    rtol: float = DEFAULT_RTOL,
) -> Boundary:
    """Bisect every cell's first break.

    ``grid_lr`` (ascending, ``L``) and ``breaks`` (``cells x L`` booleans) come from the map;
    ``breaks_at(cells, lrs)`` simulates the given cells at the given learning rates (one value
    each) in one batched call and says which break.
    """
    grid_lr = np.asarray(grid_lr, np.float64)
    has = breaks.any(axis=1)
    first = np.argmax(breaks, axis=1)
    later = np.arange(breaks.shape[1])[None, :] > first[:, None]
    non_monotone = has & np.any(~breaks & later, axis=1)
    hi = np.where(has, grid_lr[first], np.nan)
    lo = np.where(first > 0, grid_lr[np.maximum(first - 1, 0)], grid_lr[0] / BELOW_GRID)
    at_bottom = np.flatnonzero(has & (first == 0))
    if at_bottom.size:
        below = breaks_at(at_bottom, lo[at_bottom])
        has[at_bottom[below]] = False
    while True:
        todo = np.flatnonzero(has & (hi / lo - 1 > rtol))
        if not todo.size:
            break
        mid = np.sqrt(lo[todo] * hi[todo])
        b = breaks_at(todo, mid)
        hi[todo] = np.where(b, mid, hi[todo])
        lo[todo] = np.where(b, lo[todo], mid)
    return Boundary(np.where(has, hi, np.nan), non_monotone)
