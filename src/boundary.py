"""Measured stability boundaries: the critical learning rate of every cell, by bisection.

A *cell* is a point of the map on every axis but ``lr`` (optimizer, N, batch size, seed,
epochs). Its critical learning rate is the smallest ``lr`` at which the run *breaks*
(``overflow`` or ``diverging``). Stability need not be monotone in ``lr`` (fixed-order
minibatches have unstable windows, adaptive optimizers may recover), and a window can lie
between two grid points, so the grid alone does not bracket the first break:

1. **Refinement.** Below its first breaking grid ``lr`` every cell is simulated on a finer
   log grid from the smallest grid ``lr`` up: steps of :data:`REFINE_STEP` (2%), at most
   :data:`REFINE_MAX` (512) points per cell (so over more than 4.4 decades the step grows:
   ``(top / bottom) ** (1 / 513)``). Every unstable window wider than that step is seen.
   Where a closed form exists the caller adds its predicted windows (points just below,
   inside and just above each, :func:`src.runner._theory_candidates`), so that narrower
   windows are simulated on both sides too. All cells' points go to the engine together.
2. **Bisection.** The first breaking sample (grid, refinement or candidate) and the largest
   stable one below it bracket the critical lr; all cells are narrowed at once in log space,
   each round one batched simulation of :data:`SECTIONS` - 1 points inside every unfinished
   bracket (the first breaking one and the point below it are the new bracket), until the
   bracket is narrower than ``rtol`` (0.1% by default).

A cell that is stable again at some sampled ``lr`` above its first break (grid or refinement
point) is flagged ``non_monotone``; its critical lr is still the first break. A cell that
breaks at the smallest grid ``lr`` is bisected down from ``grid[0] / 100`` if that is stable,
else reported as nan; a cell that never breaks at any sample is nan.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

DEFAULT_RTOL = 1e-3
BELOW_GRID = 100.0
REFINE_STEP = 0.02
"""Relative step of the refinement grid below a cell's first breaking grid lr."""
REFINE_MAX = 512
"""The most refinement points per cell."""
SECTIONS = 16
"""Each bisection round cuts every bracket into this many log-spaced parts (15 engine runs
per cell, consecutive, so that runs sharing their batches group): a 2% bracket takes two
rounds to reach 0.1%."""


class Boundary(NamedTuple):
    """Per cell: the critical lr (nan: none found) and whether stability resumes above it."""

    critical_lr: np.ndarray
    non_monotone: np.ndarray


def refinement(grid_lr: np.ndarray, top: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The refinement points ``(cell, lr)`` of cells whose first breaking grid lr is ``top``
    (``inf`` or ``grid_lr[0]``: none): log-spaced strictly between ``grid_lr[0]`` and ``top``,
    :data:`REFINE_STEP` apart (at most :data:`REFINE_MAX` per cell). Ordered point rank first,
    cell second, so consecutive points belong to different cells."""
    bottom = float(grid_lr[0])
    span = np.log(np.where(np.isfinite(top) & (top > bottom), top / bottom, 1.0))
    count = np.minimum(REFINE_MAX, np.ceil(span / math.log1p(REFINE_STEP)) - 1)
    count = np.maximum(count, 0).astype(np.int64)
    cell = np.repeat(np.arange(len(top)), count)
    rank = np.arange(len(cell)) - np.repeat(np.cumsum(count) - count, count) + 1
    order = np.lexsort((cell, rank))
    cell, rank = cell[order], rank[order]
    return cell, bottom * np.exp(span[cell] * rank / (count[cell] + 1))


REFINING = "refining critical lr"
BISECTING = "bisecting critical lr"
"""The phases of :func:`search`, as its ``plan`` names them."""


def bisection_rounds(lo: np.ndarray, hi: np.ndarray, rtol: float) -> np.ndarray:
    """Rounds of :func:`search`'s bisection that narrow each bracket ``[lo, hi]`` (``lo > 0``)
    to at most ``rtol``: each round leaves one of its :data:`SECTIONS` equal parts in log
    space."""
    width = np.log(np.asarray(hi, np.float64) / np.asarray(lo, np.float64))
    rounds = np.zeros(width.shape, np.int64)
    limit = math.log1p(rtol)
    while np.any(more := width > limit):
        rounds[more] += 1
        width[more] /= SECTIONS
    return rounds


def search(
    grid_lr: np.ndarray,
    breaks: np.ndarray,
    breaks_at: Callable[[np.ndarray, np.ndarray], np.ndarray],
    rtol: float = DEFAULT_RTOL,
    candidates: Sequence[np.ndarray] | None = None,
    plan: Callable[[str, list[np.ndarray]], None] | None = None,
) -> Boundary:
    """Refine and bisect every cell's first break.

    ``grid_lr`` (ascending, ``L``) and ``breaks`` (``cells x L`` booleans) come from the map;
    ``breaks_at(cells, lrs)`` simulates the given cells at the given learning rates (one value
    each) in one batched call and says which break. ``candidates[i]`` (optional) are further
    lrs to simulate for cell ``i`` (the closed form's unstable windows); those at or above
    the cell's first breaking grid lr, or below ``grid_lr[0] / 100``, are left out.

    ``plan(phase, calls)`` (optional, for progress) is told at the start of each phase,
    :data:`REFINING` then :data:`BISECTING`, the ``cells`` of every ``breaks_at`` call the
    phase will make. The bisection's rounds are predicted from its brackets' widths
    (:func:`bisection_rounds`): a rounding in the last digit may add or save a round.
    """
    grid_lr = np.asarray(grid_lr, np.float64)
    breaks = np.asarray(breaks, bool)
    n_cells = breaks.shape[0]
    first = np.argmax(breaks, axis=1)
    top = np.where(breaks.any(axis=1), grid_lr[first], math.inf)

    cell, lr = refinement(grid_lr, top)
    bottom = np.flatnonzero(np.isfinite(top) & (first == 0))
    extra_cells = [cell, bottom]
    extra_lrs = [lr, np.full(len(bottom), grid_lr[0] / BELOW_GRID)]
    if candidates is not None:
        for i, c in enumerate(candidates):
            c = np.asarray(c, np.float64)
            c = c[(c < top[i]) & (c >= grid_lr[0] / BELOW_GRID)]
            extra_cells.append(np.full(len(c), i))
            extra_lrs.append(c)
    cell, lr = np.concatenate(extra_cells).astype(np.int64), np.concatenate(extra_lrs)
    if plan is not None:
        plan(REFINING, [cell] if len(cell) else [])
    broke = breaks_at(cell, lr) if len(cell) else np.zeros(0, bool)

    hi = top.copy()  # the first breaking sample
    np.minimum.at(hi, cell[broke], lr[broke])
    lo = np.full(n_cells, -math.inf)  # the largest stable sample below it
    below_grid = np.searchsorted(grid_lr, hi) - 1  # grid lrs below hi are all stable
    lo[below_grid >= 0] = grid_lr[below_grid[below_grid >= 0]]
    keep = ~broke & (lr < hi[cell])
    np.maximum.at(lo, cell[keep], lr[keep])
    non_monotone = np.any(~breaks & (grid_lr[None, :] > hi[:, None]), axis=1)
    later = ~broke & (lr > hi[cell])
    non_monotone[cell[later]] = True

    has = np.isfinite(hi) & (lo > 0)
    if plan is not None:
        rounds = np.zeros(n_cells, np.int64)
        rounds[has] = bisection_rounds(lo[has], hi[has], rtol)
        todo_by_round = [np.flatnonzero(rounds > r) for r in range(rounds.max(initial=0))]
        plan(BISECTING, [np.repeat(todo, SECTIONS - 1) for todo in todo_by_round])
    parts = np.arange(1, SECTIONS) / SECTIONS
    while True:
        todo = np.flatnonzero(has & (hi / np.where(has, lo, 1.0) - 1 > rtol))
        if not todo.size:
            break
        mid = lo[todo, None] * (hi[todo] / lo[todo])[:, None] ** parts  # (todo, SECTIONS - 1)
        b = breaks_at(np.repeat(todo, SECTIONS - 1), mid.ravel()).reshape(mid.shape)
        k = np.where(b.any(axis=1), np.argmax(b, axis=1), SECTIONS - 1)
        non_monotone[todo] |= np.any(~b & (np.arange(SECTIONS - 1) > k[:, None]), axis=1)
        ends = np.concatenate([lo[todo, None], mid, hi[todo, None]], axis=1)
        rows = np.arange(len(todo))
        hi[todo], lo[todo] = ends[rows, k + 1], ends[rows, k]
    return Boundary(np.where(has, hi, np.nan), non_monotone)
