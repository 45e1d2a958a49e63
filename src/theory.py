"""Closed forms for gradient descent (plain, heavy-ball, Nesterov) on the quadratic MSE loss.

**Full batch.** The model is ``Dense(1)`` on ``d`` input features, ``y = x . w + b`` with
``x`` in ``R^d`` (``d = 1``, ``y = w x + b``, is the seed's case). Over ``n`` samples, the rows
of ``X`` (``n x d``), the MSE ``L(w, b) = mean_i (x_i . w + b - y_i)^2`` is an exact quadratic
in ``theta = (w, b)`` (``p = d + 1`` parameters, the bias last) with constant Hessian

    H = 2/n A^T A,   A = [X, 1]   (the ones column last),

that is ``H = 2 [[X^T X / n, mean(X)^T], [mean(X), 1]]``, ``mean(X)`` the row of the feature
means; for one feature ``H = 2 [[mean(x^2), mean(x)], [mean(x), 1]]``. The error
``e = theta - theta*`` evolves linearly. Along an eigenvector of ``H`` with eigenvalue ``lambda``
write ``a = lr lambda``:

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
``(1 + mu) / (1 + 2 mu)``, ``lambda_max`` the largest eigenvalue of the ``p x p`` matrix ``H``.
Since ``L - L* = e^T H e / 2``, the loss eventually changes by ``rho^2`` per epoch, ``rho`` the
spectral radius of the iteration. Seed (one feature, x = 1..20, lr 0.01):
``lambda_max = 288.54``, ``lr_crit = 0.00693`` and ``rho^2 = (1 - 2.8854)^2 = 3.5547``.

**Minibatches in a fixed order** (``shuffle=False``). Batch ``b`` has its own Hessian
``H_b = 2/n_b A_b^T A_b`` over its ``n_b`` rows, so one step multiplies the state (``e``, of
size ``p``, or ``[e, m]``, ``2p``) by ``S_b``: ``I - lr H_b`` for plain SGD, and the matrices
above with ``lr H_b`` in place of ``a`` (``p x p`` blocks) with momentum. One epoch multiplies
it by ``M = S_B ... S_2 S_1``. Training is stable iff ``rho(M) < 1``; ``rho(M)^2`` is the
per-epoch loss factor. ``rho(M)`` is not monotone in ``lr`` in general, so the critical
learning rate is the *smallest* ``lr`` with ``rho(M) > 1``, found by a fine scan and
bisection. Modes with ``H v = 0`` (directions the data leave undetermined: e.g. one sample,
where only ``x_1 . w + b`` is determined, or collinear features) are neutral, ``|z| = 1``, and
never grow the loss, hence the small margin in :data:`NEUTRAL`.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable, Mapping
from pathlib import Path
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


def design(x: np.ndarray) -> np.ndarray:
    """The float64 feature matrix ``X`` (``(n, d)``) of ``x``: ``(n,)`` is one feature (the
    seed's case), ``(n, d)`` is ``n`` samples of ``d`` features."""
    return np.asarray(x, np.float64).reshape(len(x), -1)


def hessian(x: np.ndarray) -> np.ndarray:
    """Hessian of the mean squared error over ``x`` (``(n,)`` or ``(n, d)``) with respect to
    ``(w, b)``, ``2/n A^T A`` with ``A = [X, 1]``: ``(d + 1, d + 1)``, float64, the bias last.

    Entry by entry as ``2 mean(x_i x_j)`` and ``2 mean(x_i)`` (numpy's pairwise sums), so
    that one feature gives the same bits as ``2 [[mean(x^2), mean(x)], [mean(x), 1]]``.
    """
    cols = np.ascontiguousarray(design(x).T)
    d = len(cols)
    h = np.empty((d + 1, d + 1))
    h[d, d] = 1.0
    for i in range(d):
        h[i, d] = h[d, i] = np.mean(cols[i])
        for j in range(i + 1):
            h[i, j] = h[j, i] = np.mean(cols[i] * cols[j])
    return 2.0 * h


def hessian_eigenvalues(x: np.ndarray) -> np.ndarray:
    """Eigenvalues of :func:`hessian` (``d + 1`` of them), ascending."""
    return np.linalg.eigvalsh(hessian(x))


def critical_factor(dynamics: Dynamics) -> float:
    """``c(mu)`` in ``lr_crit = c * 2 / lambda_max`` (module docstring)."""
    mu = dynamics.momentum
    if mu == 0:
        return 1.0
    return (1 + mu) / (1 + 2 * mu) if dynamics.nesterov else 1 + mu


def gd_critical_lr(x: np.ndarray, dynamics: Dynamics = PLAIN) -> float:
    """Critical learning rate of full-batch (Keras) SGD: ``c(mu) * 2 / lambda_max``, over
    ``x`` of shape ``(n,)`` or ``(n, d)``."""
    return critical_factor(dynamics) * 2.0 / float(hessian_eigenvalues(x)[-1])


def gd_loss_growth(lr: float, x: np.ndarray) -> float:
    """Asymptotic per-epoch loss factor of full-batch plain GD, ``max (1 - lr lambda)^2``."""
    return float(np.max(np.square(1.0 - lr * hessian_eigenvalues(x))))


def batches(n: int, batch_size: int) -> list[slice]:
    """Keras's batches of an epoch without shuffling: consecutive, the last one partial."""
    return [slice(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


def step_matrix(h: np.ndarray, lr: np.ndarray, dynamics: Dynamics) -> np.ndarray:
    """The linear map of one step on the state ``e`` (``p``) or ``[e, m]`` (``2p``), for each
    ``lr``, ``p = d + 1`` the number of parameters.

    ``h`` is a batch Hessian (``p x p``), or several stacked (``(B, p, p)``); ``lr`` an array
    of shape ``(K,)``; returns ``(K, s, s)`` (or ``(B, K, s, s)``), ``s`` the state's size.
    """
    lr_h = np.asarray(lr, np.float64)[:, None, None] * np.asarray(h)[..., None, :, :]
    eye = np.broadcast_to(np.eye(lr_h.shape[-1]), lr_h.shape)
    mu = dynamics.momentum
    if mu == 0:
        return eye - lr_h
    if dynamics.nesterov:
        return np.block([[eye - (1 + mu) * lr_h, mu * mu * eye], [-lr_h, mu * eye]])
    return np.block([[eye - lr_h, mu * eye], [-lr_h, mu * eye]])


PRODUCT_CHUNK = 1 << 21
"""Step-matrix entries built at once while multiplying an epoch's steps (bounds memory)."""

RESCALE_AT = 2.0**256
"""An epoch product whose entries pass this (checked every :data:`RESCALE_EVERY` steps) is
scaled down by an exact power of two (its exponent kept apart), so that epochs of any length
never overflow float64: a step multiplies the entries by at most ``1 + lr lambda`` (2e3 at
the top of :data:`SCAN_RANGE`), so 16 steps stay far below float64's 2^1024."""

RESCALE_EVERY = 16

TREE_FROM = 1024
"""Batches per epoch from which :func:`epoch_matrix` multiplies its steps pairwise."""

TREE_RESCALE_LEVELS = 4

TREE_ENTRYWISE_UPTO = 4
"""State sizes up to which :func:`_tree_product` multiplies entry by entry (one feature:
2 plain, 4 with momentum); larger states (several features) use batched ``matmul``, faster
once the matrices are no longer tiny."""

TREE_CHUNK = 1 << 23
"""Step-matrix entries multiplied pairwise at once (64 MB): learning rates are taken in
groups this allows, so that each array operation is long enough to outweigh its call."""


def batch_hessians(x: np.ndarray, batch_size: int) -> np.ndarray:
    """The :func:`hessian` of every batch of an epoch in a fixed order, ``(B, p, p)``,
    ``p = d + 1`` (cached per data, its shape and batch size: a million-sample epoch is summed
    once, not per lr)."""
    a = np.ascontiguousarray(design(x))
    return _batch_hessians(a.tobytes(), a.shape, int(batch_size))


@functools.lru_cache(maxsize=64)
def _batch_hessians(data: bytes, shape: tuple[int, int], batch_size: int) -> np.ndarray:
    a = np.frombuffer(data, np.float64).reshape(shape)
    return np.stack([hessian(a[s]) for s in batches(len(a), batch_size)])


def epoch_matrix(
    x: np.ndarray, batch_size: int, lr: np.ndarray, dynamics: Dynamics
) -> tuple[np.ndarray, np.ndarray]:
    """``M = S_B ... S_1`` for each ``lr`` as ``(M', k)`` with ``M = M' 2^k`` (shapes
    ``(K, s, s)`` and ``(K,)``, ``s`` the state's size: ``d + 1``, or ``2 (d + 1)`` with
    momentum), so that epochs of any length stay inside float64.

    Up to :data:`TREE_FROM` batches the steps are multiplied one after the other, the product
    rescaled by an exact power of two whenever it passes :data:`RESCALE_AT` (which changes no
    bit of it). Longer epochs (a million samples in batches of 32 is 31,250 steps) are
    multiplied pairwise, ``(S_2 S_1), (S_4 S_3), ...`` and so on up, every product normalised
    by a power of two: a few dozen array operations instead of one Python step per batch, the
    same product up to rounding.
    """
    lr = np.atleast_1d(np.asarray(lr, np.float64))
    hs = batch_hessians(x, batch_size)
    size = hs.shape[-1] * (1 if dynamics.momentum == 0 else 2)
    if len(hs) >= TREE_FROM:
        width = max(1, TREE_CHUNK // (len(hs) * size * size))
        parts = [_tree_product(step_matrix(hs, lr[k : k + width], dynamics))
                 for k in range(0, len(lr), width)]  # fmt: skip
        return np.concatenate([m for m, _ in parts]), np.concatenate([e for _, e in parts])
    chunk = max(1, PRODUCT_CHUNK // (len(lr) * size * size))
    m, exponent = None, np.zeros(len(lr), np.int64)
    for start in range(0, len(hs), chunk):
        steps = step_matrix(hs[start : start + chunk], lr, dynamics)
        for i, a in enumerate(steps, start):
            m = a if m is None else a @ m
            if i % RESCALE_EVERY:
                continue
            big = np.max(np.abs(m), axis=(-2, -1))
            if np.any(big > RESCALE_AT):
                _, e = np.frexp(np.where(big > RESCALE_AT, big, 1.0))
                m = np.ldexp(m, -e[:, None, None])
                exponent += e
    return m, exponent


def _tree_product(steps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ordered product ``S_B ... S_1`` of ``steps`` (``(B, K, d, d)``, first step first)
    by pairs, as ``(M', k)`` with ``M = M' 2^k``.

    Identity steps before the first pad ``B`` to a power of two (they change nothing). Tiny
    matrices (``d <=`` :data:`TREE_ENTRYWISE_UPTO`, one feature) are held entry by entry
    (``(d, d, B, K)``), so that each level of pairs is ``d^3`` multiply-adds over long
    contiguous arrays, not ``B K`` tiny matrix products; larger ones (several features) are
    multiplied a level at a time by one batched ``matmul``. Every :data:`TREE_RESCALE_LEVELS`
    levels (products of 16 steps: at most ``2000^16 = 2^176`` times larger, see
    :data:`RESCALE_AT`) the partial products are normalised below 1 by an exact power of two.
    """
    count, k, d = steps.shape[0], steps.shape[1], steps.shape[-1]
    if d > TREE_ENTRYWISE_UPTO:
        return _tree_matmul(steps)
    size = 1 << (count - 1).bit_length()
    m = np.zeros((d, d, size, k))
    m[np.arange(d), np.arange(d), : size - count] = 1.0
    m[:, :, size - count :] = np.moveaxis(steps, (2, 3), (0, 1))
    exponent = np.zeros((size, k), np.int64)
    level = 0
    while m.shape[2] > 1:
        later, earlier = m[:, :, 1::2], m[:, :, 0::2]
        product = np.empty((d, d, m.shape[2] // 2, k))
        for i in range(d):
            for j in range(d):
                acc = later[i, 0] * earlier[0, j]
                for q in range(1, d):
                    acc += later[i, q] * earlier[q, j]
                product[i, j] = acc
        m, exponent, level = product, exponent[1::2] + exponent[0::2], level + 1
        if level % TREE_RESCALE_LEVELS == 0 or m.shape[2] == 1:
            big = np.abs(m).max(axis=(0, 1))
            _, shift = np.frexp(np.maximum(big, np.finfo(np.float64).tiny))
            m = np.ldexp(m, -shift)
            exponent += shift
    return np.moveaxis(m[:, :, 0], 2, 0), exponent[0]


def _tree_matmul(steps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_tree_product` with the matrices kept whole (``(B, K, d, d)``), a level of pairs
    one batched ``matmul``."""
    count, k, d = steps.shape[0], steps.shape[1], steps.shape[-1]
    size = 1 << (count - 1).bit_length()
    m = np.empty((size, k, d, d))
    m[: size - count] = np.eye(d)
    m[size - count :] = steps
    exponent = np.zeros((size, k), np.int64)
    level = 0
    while len(m) > 1:
        m = np.matmul(m[1::2], m[0::2])
        exponent, level = exponent[1::2] + exponent[0::2], level + 1
        if level % TREE_RESCALE_LEVELS == 0 or len(m) == 1:
            big = np.abs(m).max(axis=(2, 3))
            _, shift = np.frexp(np.maximum(big, np.finfo(np.float64).tiny))
            m = np.ldexp(m, -shift[:, :, None, None])
            exponent += shift
    return m[0], exponent[0]


def spectral_radius(
    x: np.ndarray, batch_size: int, lr: np.ndarray, dynamics: Dynamics
) -> np.ndarray:
    """``rho(M)`` of the epoch map for each ``lr`` (``inf`` where it passes float64's range);
    ``x`` is ``(n,)`` or ``(n, d)``."""
    m, exponent = epoch_matrix(x, batch_size, lr, dynamics)
    rho = np.max(np.abs(np.linalg.eigvals(m)), axis=-1)
    with np.errstate(over="ignore"):
        return np.ldexp(rho, exponent)


def loss_growth(x: np.ndarray, batch_size: int, lr: float, dynamics: Dynamics = PLAIN) -> float:
    """Predicted asymptotic per-epoch loss factor ``rho(M)^2`` (fixed batch order)."""
    return float(spectral_radius(x, batch_size, np.array([lr]), dynamics)[0] ** 2)


class Window(NamedTuple):
    """An interval of learning rates where ``rho(M) > 1`` (see :func:`scan_windows`)."""

    start: float
    """The first unstable lr (bisected to ``rtol``; the scan's low end if that is unstable)."""
    stop: float
    """The first stable lr above it (bisected to ``rtol``; ``inf`` if unstable to the end)."""
    peak: float
    """The sampled lr of the largest ``rho`` inside."""
    rho: float
    """That ``rho``."""


SCAN_RANGE = (1e-4, 1e3)
"""Where :func:`critical_lr` looks first, in multiples of the full-batch critical lr."""
SCAN_STEP = 2e-3
"""Base step of the scan: neighbouring lrs differ by this much, relative (0.2%)."""
SCAN_BLOCK = 1024
"""Samples per vectorised call while looking for the first unstable lr."""
REFINE_SPLIT = 8
"""A suspect interval is cut into this many (log-spaced) parts, round after round."""
REFINE_SLACK = 4.0
"""An interval is suspect when its gap to 1 is at most this many times the local change of
``rho`` (see :func:`scan_windows`)."""
REFINE_FLOOR = 1e-7
"""Relative width below which an interval is not refined further."""
REFINE_ROUNDS = 40
REFINE_BATCH = 512
"""Suspect intervals refined per round, the lowest first."""


def _unstable(rho: np.ndarray) -> np.ndarray:
    return rho > 1 + NEUTRAL


def scan_windows(
    rho: Callable[[np.ndarray], np.ndarray],
    lo: float,
    hi: float,
    *,
    rtol: float = 1e-9,
    first_only: bool = False,
) -> list[Window]:
    """The windows of ``[lo, hi]`` where ``rho(lr) > 1`` (``rho`` maps an array of lrs to an
    array), ascending; with ``first_only`` only the first one.

    **Scan.** ``rho`` is sampled on a log grid of step :data:`SCAN_STEP` (0.2%) from ``lo``
    (with ``first_only`` in blocks, stopping at the first unstable sample), so every window
    wider than 0.2% of its lr holds a sample and is found.

    **Refinement.** A narrower window lies between two stable samples. ``rho`` cannot climb
    from below 1 to above it without changing, so an interval between stable samples is
    *suspect* when its gap ``1 - max(rho)`` at its two ends is at most
    :data:`REFINE_SLACK` (4) times the largest change of ``rho`` over it and its two
    neighbours. Every suspect interval is cut into :data:`REFINE_SPLIT` (8) log-spaced parts,
    and the new intervals are judged the same way, round after round, down to a relative width
    of :data:`REFINE_FLOOR` (1e-7). That catches a smooth peak that pokes above 1 between two
    samples (a parabola's samples change by more than its overshoot), and a sharp one whose
    flank shows in a neighbouring interval.

    **What it can miss.** Only a window narrower than 0.2% of its lr whose two neighbouring
    samples are both further below 1 than 4 times the change of ``rho`` around them: ``rho``
    rises from there above 1 and back within one step without showing it at any sample (for
    example a spike where two eigenvalues meet and split), or a window narrower than 1e-7
    relative. ``tests/test_theory.py`` checks both sides of this statement.

    Window ends are bisected to ``rtol`` (relative); ``peak`` and ``rho`` are the sample with
    the largest ``rho`` in the window.
    """
    if not hi > lo:
        return []
    count = max(2, math.ceil(math.log(hi / lo) / math.log1p(SCAN_STEP)) + 1)
    grid = np.geomspace(lo, hi, count)
    if first_only:
        parts = []
        for s in range(0, count, SCAN_BLOCK):
            parts.append(np.asarray(rho(grid[s : s + SCAN_BLOCK]), np.float64))
            if _unstable(parts[-1]).any():
                break
        r = np.concatenate(parts)
        grid = grid[: len(r)]
    else:
        r = np.asarray(rho(grid), np.float64)
    lr, r = _refine(rho, grid, r, first_only)
    bad = _unstable(r)
    if not bad.any():
        return []
    edges = np.diff(bad.astype(np.int8))
    starts = np.flatnonzero(edges == 1) + 1
    if bad[0]:
        starts = np.concatenate([[0], starts])
    stops = np.flatnonzero(edges == -1) + 1  # the first stable sample after a window
    if first_only:
        starts = starts[:1]
    stops = stops[stops > starts[0]][: len(starts)]
    has_stop = np.arange(len(starts)) < len(stops)
    inner = starts > 0
    start = lr[starts].copy()
    start[inner] = _bisect(rho, lr[starts[inner] - 1], lr[starts[inner]], rtol)
    stop = np.full(len(starts), math.inf)
    if len(stops):
        stop[has_stop] = _bisect(rho, lr[stops], lr[stops - 1], rtol, unstable_out=False)
    windows = []
    for i, a in enumerate(starts):
        b = stops[i] if has_stop[i] else len(r)
        k = a + int(np.argmax(r[a:b]))
        windows.append(Window(float(start[i]), float(stop[i]), float(lr[k]), float(r[k])))
    return windows


def _refine(
    rho: Callable[[np.ndarray], np.ndarray], lr: np.ndarray, r: np.ndarray, first_only: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The samples with every suspect interval cut finer (:func:`scan_windows`)."""
    for _ in range(REFINE_ROUNDS):
        bad = _unstable(r)
        gap = 1 + NEUTRAL - np.maximum(r[:-1], r[1:])
        change = np.abs(np.diff(r))
        padded = np.concatenate([[0.0], change, [0.0]])
        local = np.maximum(np.maximum(padded[:-2], padded[1:-1]), padded[2:])
        suspect = (gap > 0) & (gap <= REFINE_SLACK * local) & (lr[1:] / lr[:-1] - 1 > REFINE_FLOOR)
        if first_only and bad.any():
            suspect[int(np.argmax(bad)) :] = False
        which = np.flatnonzero(suspect)[:REFINE_BATCH]
        if not which.size:
            break
        parts = np.arange(1, REFINE_SPLIT) / REFINE_SPLIT
        new = lr[which, None] * (lr[which + 1] / lr[which])[:, None] ** parts
        lr = np.concatenate([lr, new.ravel()])
        r = np.concatenate([r, np.asarray(rho(new.ravel()), np.float64)])
        order = np.argsort(lr, kind="stable")
        lr, r = lr[order], r[order]
    return lr, r


BISECT_POINTS = 15
"""Interior points :func:`_bisect` samples per round (geometrically spaced): each call of
``rho`` then narrows an interval 16-fold instead of 2-fold, for the same cost (``rho`` is
vectorised over lrs, and its calls' fixed cost is most of theirs): 6 rounds from a 0.2%
scan step to 1e-9 instead of 21."""


def _bisect(
    rho: Callable[[np.ndarray], np.ndarray],
    stable: np.ndarray,
    unstable: np.ndarray,
    rtol: float,
    *,
    unstable_out: bool = True,
) -> np.ndarray:
    """Each pair's stable/unstable transition, to ``rtol`` relative, all pairs at once: the
    unstable end (``unstable_out``) or the stable one. Every round samples
    :data:`BISECT_POINTS` lrs between each pair's ends and keeps the first change from the
    stable end's state to the unstable end's (whichever end is lower)."""
    s, u = np.array(stable, np.float64), np.array(unstable, np.float64)
    fractions = np.arange(1, BISECT_POINTS + 1) / (BISECT_POINTS + 1)
    while True:
        todo = np.flatnonzero(np.abs(np.log(u / s)) > rtol)
        if not todo.size:
            return u if unstable_out else s
        a, b = s[todo, None], u[todo, None]
        points = a * (b / a) ** fractions  # from the stable end towards the unstable one
        flipped = _unstable(np.asarray(rho(points.ravel()), np.float64)).reshape(points.shape)
        first = np.where(flipped.any(axis=1), flipped.argmax(axis=1), BISECT_POINTS)
        rows = np.arange(len(todo))
        ends = np.concatenate([a, points, b], axis=1)  # ends[:, k + 1] is points[:, k]
        s[todo] = ends[rows, first]
        u[todo] = ends[rows, first + 1]


def unstable_windows(
    x: np.ndarray,
    batch_size: int,
    dynamics: Dynamics,
    lo: float,
    hi: float,
    rtol: float = 1e-9,
) -> list[Window]:
    """The lr windows of ``[lo, hi]`` where ``rho(M) > 1`` (fixed batch order), ascending
    (:func:`scan_windows`; one batch: the one window from the closed form on). ``x`` is
    ``(n,)`` or ``(n, d)``."""
    x = design(x)
    if batch_size >= len(x):
        full = gd_critical_lr(x, dynamics)
        if full > hi:
            return []
        rho = float(spectral_radius(x, batch_size, np.array([max(full, lo)]), dynamics)[0])
        return [Window(max(full, lo), math.inf, max(full, lo), rho)]
    return scan_windows(lambda lr: spectral_radius(x, batch_size, lr, dynamics), lo, hi, rtol=rtol)


def critical_lr(
    x: np.ndarray, batch_size: int, dynamics: Dynamics = PLAIN, rtol: float = 1e-9
) -> float:
    """The smallest learning rate at which (Keras) SGD is unstable, ``shuffle=False``.

    One batch: the closed form :func:`gd_critical_lr`. Several: the first ``lr`` with
    ``rho(M) > 1``, from :data:`SCAN_RANGE` (1e-4 to 1e3 times the full-batch value; further
    down if ``rho(M) > 1`` already at its low end) by :func:`scan_windows`: a 0.2% log grid,
    refined wherever ``rho`` comes close to 1 relative to how fast it changes, and bisected to
    ``rtol``. It can miss only a window narrower than 0.2% of its lr whose neighbouring samples
    give no sign of it (:func:`scan_windows` says exactly when), or one narrower than 1e-7.
    ``nan`` if there is no unstable ``lr`` in range. ``x`` is ``(n,)`` or ``(n, d)``. Cached
    per data (with its shape), batch size and dynamics.
    """
    a = np.ascontiguousarray(design(x))
    return _critical_lr(a.tobytes(), a.shape, int(batch_size), dynamics, float(rtol))


@functools.lru_cache(maxsize=4096)
def _critical_lr(
    data: bytes, shape: tuple[int, int], batch_size: int, dynamics: Dynamics, rtol: float
) -> float:
    x = np.frombuffer(data, np.float64).reshape(shape)
    full = gd_critical_lr(x, dynamics)
    if batch_size >= len(x):
        return full
    key = _store_key(data, shape, batch_size, dynamics, rtol)
    stored = _stored(key)
    if stored is not None:
        return stored
    found = _scanned_critical_lr(x, batch_size, dynamics, rtol, full)
    _store(key, found)
    return found


_critical_lr_store: Path | None = None


def keep_critical_lrs_in(folder: Path | None) -> None:
    """Keep every scanned critical lr (several batches: :func:`critical_lr`) in ``folder``
    and read it back from there in later processes (``None``: keep nothing).

    The scan is deterministic float64 arithmetic: the same data, batch size, dynamics and
    tolerance give the same value bit for bit with the same code and NumPy (its LAPACK), so a
    stored value is keyed by those. It is the most a second run of the default map still
    computed on the host: ~1 s of CPU (96 cells of N = 33..64 in two batches, thousands of
    small eigenvalue problems each) beside the map's own, 4.0 -> 3.6 s wall on a 2-core
    CPU. The command line keeps them beside its compiled programs
    (:func:`src.xla_options.use_compilation_cache`), ``closed_forms/``."""
    global _critical_lr_store
    _critical_lr_store = folder


def _store_key(
    data: bytes, shape: tuple[int, int], batch_size: int, dynamics: Dynamics, rtol: float
) -> str | None:
    if _critical_lr_store is None:
        return None
    import platform

    from src import xla_options

    ident = (np.__version__, platform.machine(), shape, batch_size, tuple(dynamics), rtol,
             hashlib.sha256(data).hexdigest())  # fmt: skip
    return xla_options.digest(f"critical_lr {ident!r}")


def _stored(key: str | None) -> float | None:
    """The value stored under ``key``; ``None`` if there is none, or none whole (a file
    holds the value and its key: a torn write is read as missing and scanned again)."""
    if key is None or _critical_lr_store is None:
        return None
    try:
        value, check = (_critical_lr_store / key).read_text().split()
        return float.fromhex(value) if check == key else None
    except (OSError, ValueError):
        return None


def _store(key: str | None, value: float) -> None:
    """Store ``value`` under ``key`` (not synced to disk: a lost entry costs a later run one
    scan)."""
    if key is None or _critical_lr_store is None:
        return
    from src.store import atomic_path

    try:
        _critical_lr_store.mkdir(parents=True, exist_ok=True)
        with atomic_path(_critical_lr_store / key, sync=False) as tmp:
            tmp.write_text(f"{value.hex()} {key}\n")
    except OSError:  # a full or read-only cache costs the next run a scan, not this run
        pass


def _scanned_critical_lr(
    x: np.ndarray, batch_size: int, dynamics: Dynamics, rtol: float, full: float
) -> float:
    """:func:`critical_lr` of several batches: the scan and bisection it describes."""
    lo, hi = full * SCAN_RANGE[0], full * SCAN_RANGE[1]
    for _ in range(3):
        found = scan_windows(
            lambda lr: spectral_radius(x, batch_size, lr, dynamics),
            lo, hi, rtol=rtol, first_only=True,
        )  # fmt: skip
        if not found:
            return math.nan
        if found[0].start > lo:
            return found[0].start
        lo, hi = lo * SCAN_RANGE[0], lo  # unstable at the low end already: look lower
    return lo


def predicted_history(
    x: np.ndarray,
    y: np.ndarray,
    w0: float | np.ndarray,
    b0: float,
    lr: float,
    batch_size: int,
    epochs: int,
    dynamics: Dynamics = PLAIN,
) -> np.ndarray:
    """The ``History`` losses of (Keras) SGD in exact arithmetic (float64, no rounding to f32).

    ``x`` is ``(n,)`` or ``(n, d)``; ``w0`` a float (every weight) or ``(d,)``; the prediction
    is ``X w + b``. The dynamics are affine, ``s <- S_b s + c_b`` per batch, so this is the
    closed-form trajectory evaluated step by step; the epoch loss is ``sum_b n_b L_b / N`` of
    the pre-update batch losses, as Keras reports it.
    """
    x, y = design(x), np.asarray(y, np.float64)
    d = x.shape[1]
    theta = np.append(np.broadcast_to(np.asarray(w0, np.float64), (d,)), np.float64(b0))
    m, mu, out = np.zeros(d + 1), dynamics.momentum, np.empty(epochs)
    cols = np.ascontiguousarray(x.T)
    parts = [(x[s], list(cols[:, s]), y[s]) for s in batches(len(x), batch_size)]
    with np.errstate(over="ignore", invalid="ignore"):
        for epoch in range(epochs):
            total = 0.0
            for xb, cb, yb in parts:
                err = xb @ theta[:d] + theta[d] - yb
                total += float(np.sum(err * err))
                g = 2.0 * np.array([*[np.mean(err * c) for c in cb], np.mean(err)])
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
    with np.errstate(over="ignore", invalid="ignore"):
        over = np.flatnonzero(~(n * history <= FLOAT32_MAX))  # inf and nan overflowed too
    if over.size:
        return float(over[0] + 1)
    last = float(history[-1])
    if not (growth > 1 and last > 0 and math.isfinite(last)):
        return None
    return len(history) + math.ceil(math.log(FLOAT32_MAX / (n * last)) / math.log(growth))
