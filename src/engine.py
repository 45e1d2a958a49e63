"""The vectorized simulation of Keras ``model.fit`` for ``Dense(1)`` + MSE.

One jitted program trains a whole chunk of configurations at once (``vmap`` over the config
axis, ``lax.scan`` over epochs and over the batches of an epoch). Configurations may differ in
learning rate, hyperparameters, dataset, dataset size ``N``, batch size, epochs and seed; they
share only the optimizer family and the padded :class:`Shapes`.

Keras semantics reproduced (keras/src/trainers, keras/src/losses; see
docs/keras-fidelity.md):

* ``d`` input features (``Input((d,))``; the seed's line is ``d = 1``), weights
  ``w ~ U(-l, l)^d`` with ``l = sqrt(6 / (d + 1))`` (GlorotUniform of a ``(d, 1)`` kernel) from
  the config's seed, ``b = 0``;
* an epoch cuts the (optionally shuffled) indices into consecutive batches of ``batch_size``;
  the last batch holds the remainder;
* a step evaluates ``loss_b = sum_j (x_j . w + b - y_j)^2 / n_b`` with the pre-update weights,
  differentiates it and applies one optimizer update;
* the epoch loss reported in ``History`` is ``sum_b loss_b n_b / N``, accumulated in order;
* nothing stops on overflow: inf and nan propagate to the last epoch.

One padding scheme serves every ``N`` and batch size. A config's batch ``b`` occupies row ``b``
of an ``(n_batches, batch_width)`` grid; positions past the batch or past ``N`` are masked.
``batch_width`` is a power of two and batch sums use a fixed pairwise tree, so a masked slot
adds ``-0.0`` (the exact additive identity) at a fixed place of the tree: padding a config to
a larger ``N``, more batches, more epochs or a wider batch gives bit-identical results. Masked
steps (past the last batch, past the config's epochs) keep parameters *and* optimizer state,
step counters included, exactly as they were.

A batch's loss and gradient come from one of two kernels (:data:`KERNELS`): per-sample
autodiff (Keras's arithmetic) or the batch's sufficient statistics (:class:`Moments`, O(1) per
step); every other line is shared.

A chunk whose configs all share dataset and batch size (and a fixed batch order) may be run
as one :class:`Group`: its batches are then built once, not per config, and the autodiff
kernel differentiates slot by slot, so that each step is one fused pass over the configs
(~3x faster on a 2-core CPU). Every config computes the same bits either way.

Per-config results are summaries (:class:`Summary`); the per-epoch loss history is returned
only when asked for (:data:`History`): every epoch's, or the losses of a few chosen epochs,
which a config keeps as it trains, so that a large map's sampled curves cost no history.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from src import threefry
from src.keras_optax import STEP_STATE
from src.optimizers import Family
from src.problem import DataTable, design, predict

Array = jax.Array



def glorot_limit(d: int) -> float:
    """GlorotUniform's ``sqrt(6 / (fan_in + fan_out))`` for a ``(d, 1)`` kernel (``sqrt 3``
    for the seed's 1x1)."""
    return math.sqrt(6.0 / (d + 1))


GROWTH_WINDOW = 10
"""``growth_rate`` is the median loss ratio over the last this-many finite epochs."""


class Params(NamedTuple):
    """The model ``y = x . w + b`` (Keras: kernel and bias of ``Dense(1)``); ``w`` has shape
    ``(d,)``, ``b`` is a scalar."""

    w: Array
    b: Array


def keras_shapes(d: int) -> Params:
    """Shapes of ``Dense(1)``'s kernel ``(d, 1)`` and bias ``(1,)`` in Keras: optimizers take
    their steps on these (Adafactor factors and Muon orthogonalises 2-D variables)."""
    return Params(
        w=jax.ShapeDtypeStruct((d, 1), jnp.float32), b=jax.ShapeDtypeStruct((1,), jnp.float32)
    )


class Moments(NamedTuple):
    """Sufficient statistics of one batch, as deviations from a reference fit.

    With ``(w*, b*)`` the reference (``w*`` of shape ``(d,)``), ``x_mean`` ``(d,)`` and
    ``x_var`` ``(d, d)`` the batch's mean and (population) covariance of the inputs, and
    ``floor`` the variance of the reference's residuals over the batch, the loss of any
    ``(w, b)`` is exactly

        loss = dw . x_var dw + 2 dw . cross + u^2 + floor,
        dw = w - w*,  u = x_mean . dw + (b - b*)

    (``u`` is the mean residual; ``cross`` the covariance of the inputs with the reference's
    residuals), and its gradient ``(2 (x_var dw + cross + x_mean u), 2 u)``. Where the
    reference is the batch's own least-squares fit, ``cross`` vanishes (``None``: no term at
    all) and every term is non-negative, so float32 never subtracts large numbers to get a
    small loss, as the expanded ``sum y^2 - 2 w . sum x y + ...`` would. Where the batch does
    not determine its fit (all x equal; fewer samples than features) ``w*`` is the one nearest
    the dataset's own.
    """

    w_opt: Array
    b_opt: Array
    x_mean: Array
    x_var: Array
    floor: Array
    cross: Array | None = None


class Configs(NamedTuple):
    """A chunk of configurations, one entry per config along the leading axis.

    ``data_row`` indexes the :class:`~src.problem.DataTable`; ``n`` is that row's size.
    ``hyperparameters`` maps each of the family's hyperparameter names to an array (names
    compiled in as constants are absent). ``moments`` holds each batch's :class:`Moments`
    (shape ``(configs, n_batches)``) for the moments kernel with a fixed batch order.
    ``order``, shape ``(configs, epochs, n_max)``, replays given sample orders in a shuffled
    program (each epoch's first ``n`` entries a permutation of ``0 .. n-1``): the orders a
    Keras run used, recovered by :mod:`src.keras_reference`, in place of the engine's own.
    ``kernel``, shape ``(configs, d)`` float32, is each config's initial kernel as
    :func:`initial_kernels` draws it from its seed on the host; ``None``: the program draws
    it (:func:`initial_params`, the same bits). Drawn in a program, it is two threefry loops
    of every program to compile (~0.1 s each of a first run's, 2-core CPU).
    """

    learning_rate: Array
    hyperparameters: dict[str, Array]
    data_row: Array
    n: Array
    batch_size: Array
    epochs: Array
    seed: Array
    moments: Moments | None = None
    order: Array | None = None
    kernel: Array | None = None


class BatchRows(NamedTuple):
    """A chunk's batch :class:`Moments` laid out batch-major, shape ``(n_batches, configs,
    ...)``, and each config's ``slot`` (its index in the chunk): what :func:`simulate` gives
    :func:`simulate_one` for a multi-batch chunk with a fixed batch order, in place of
    :attr:`Configs.moments`."""

    moments: Moments
    slot: Array


@jax.custom_batching.custom_vmap
def _config_row(moments: Moments, i: Array, slot: Array) -> Moments:
    """Config ``slot``'s moments of batch ``i`` (``moments`` batch-major, see
    :class:`BatchRows`)."""
    return jax.tree.map(lambda a: a[i, slot], moments)


@_config_row.def_vmap
def _config_row_vmap(
    axis_size: int, in_batched: list, moments: Moments, i: Array, slot: Array
) -> tuple[Moments, Moments]:
    """Over a chunk whose ``slot`` is ``0 .. axis_size - 1``, the configs' moments of batch
    ``i`` are row ``i`` itself: one contiguous read, where vmap's own rule would gather."""
    if any(jax.tree.leaves(in_batched[:2])):
        raise ValueError("batch rows are shared by the chunk and indexed by one batch")
    row = jax.tree.map(lambda a: a[i], moments)
    return row, jax.tree.map(lambda _: True, row)


class Group(NamedTuple):
    """What every config of a chunk shares when the chunk is one group: its dataset, size
    and batch size (and, for the moments kernel with a fixed order, the batches'
    :class:`Moments`, shape ``(n_batches,)``; for a shuffled program, the ``seed`` whose key
    draws every epoch's order). Given to :func:`simulate`, the batches' contents are built
    once for the whole chunk instead of once per config, so a step reads no per-config
    batch data; shuffled, each epoch's order and batches are drawn once for the chunk.

    Batch counts and the epoch's divisor stay per config: dividing by a value shared by the
    chunk, XLA's CPU backend rounded differently when the program was compiled for several
    devices (measured: 1 and 4 devices then disagreed in the last bits).
    """

    data_row: Array
    n: Array
    batch_size: Array
    moments: Moments | None = None
    seed: Array | None = None
    order: Array | None = None
    """Shuffled: every epoch's sample order, shape ``(epochs, n_max)``, as
    :func:`src.threefry.epoch_orders` draws them from ``seed`` (drawn once, they are
    replayed by every program that trains on this dataset size and seed, instead of each
    drawing them in its own steps)."""


@dataclasses.dataclass(frozen=True)
class Shapes:
    """Static padded sizes shared by every config of a compiled program."""

    n_max: int
    n_batches: int
    batch_width: int
    epochs: int
    ragged_epochs: bool = True
    """Whether configs may train for fewer than ``epochs`` (then every epoch is masked)."""

    @staticmethod
    def covering(n: Sequence[int], batch_size: Sequence[int], epochs: Sequence[int]) -> Shapes:
        """The smallest shapes that hold every combination of the sizes given."""
        n, batch_size = np.asarray(n), np.asarray(batch_size)
        n_max, widest = int(n.max()), int(min(batch_size.max(), n.max()))
        return Shapes(
            n_max=n_max,
            n_batches=-(-n_max // int(batch_size.min())),
            batch_width=1 << (widest - 1).bit_length(),
            epochs=int(np.max(epochs)),
            ragged_epochs=bool(np.ptp(np.asarray(epochs)) > 0),
        )


History = bool | tuple[int, ...]
"""The History losses a run returns per config: none (``False``), every epoch's (``True``:
shape ``(configs, epochs)``), or those of the epochs (from 1, ascending) of a tuple (shape
``(configs, len(epochs))``). A tuple's losses are kept in the config's state as it trains,
one slot per chosen epoch: a map of a million configs and 500 epochs would otherwise write
(and copy out) 2 GB of losses to keep 16 of them per config (2-core CPU, full-batch SGD:
~6x the run's time). The values are those of ``True``'s columns, bit for bit."""


class Summary(NamedTuple):
    """Per-config results of a run (epochs count from 1; -1 means "never").

    ``initial_loss`` and ``final_loss`` are the first and last ``History`` losses.
    ``first_nonfinite_epoch`` is the first epoch whose loss is not finite (the last epoch if
    only the final weights are); ``first_converged_epoch`` the first whose loss is
    ``<= tol * mean(y^2)`` (for a run that later overflows, convergence within the last
    :data:`GROWTH_WINDOW` epochs before its first non-finite loss may go unrecorded).
    ``growth_rate`` is the geometric-mean per-epoch loss ratio between the last two window
    ends (epochs ``1 + k GROWTH_WINDOW``) with a finite loss, or from epoch 1 to the only one
    (nan if none). ``final_w`` has shape ``(d,)``; ``prediction`` is the model's output at the
    problem's query input (x = 25 on the seed's line).
    """

    initial_loss: Array
    final_loss: Array
    first_nonfinite_epoch: Array
    first_converged_epoch: Array
    growth_rate: Array
    final_w: Array
    final_b: Array
    prediction: Array


KERNELS = ("auto", "moments", "autodiff")
"""How a batch's loss and gradient are computed (``--kernel``): ``autodiff`` differentiates
every sample's squared error (Keras's arithmetic); ``moments`` uses the batch's sufficient
statistics (:class:`Moments`), O(1) per step whatever the batch size; ``auto`` is
:func:`resolve_kernel`."""


def resolve_kernel(kernel: str) -> str:
    """The kernel ``auto`` stands for: ``moments``. With a fixed order the batches'
    statistics are computed once, in float64, and every step is O(1); shuffled, a chunk of
    configs sharing dataset, batch size and seed (a :class:`Group`) computes each epoch's
    batch statistics once for all of them."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
    return "moments" if kernel == "auto" else kernel


PER_SLOT_WIDTH = 64
"""The widest batch the autodiff kernel differentiates slot by slot when a chunk shares its
batches (:class:`Group`); wider batches take the array form (a longer program otherwise)."""


def slot_by_slot(shapes: Shapes) -> bool:
    """Whether a :class:`Group` chunk of these shapes runs the autodiff kernel slot by slot."""
    return shapes.batch_width <= PER_SLOT_WIDTH


_NEVER = 2.0**22
"""Stands for "never" while epochs are tracked as float32 with ``min`` (reported as -1):
every key, down to ``-2 NEVER``, is then an exact float32 integer."""

MAX_EPOCHS = int(_NEVER) - 1
"""Epochs a config may train (epoch numbers must stay exact in float32)."""


class _Tracker(NamedTuple):
    initial_loss: Array
    final_loss: Array
    events: Array  # running min of _event_key: the first converged or non-finite epoch
    converged_seen: Array  # first converged epoch, read at window ends before any overflow
    mark: Array  # loss at the last window end with a finite loss, and the one before
    mark_epoch: Array
    prev: Array
    prev_epoch: Array
    sampled: Array | None = None  # the losses of a History tuple's epochs


def _keys(seed: Array | int) -> Array:
    """The config's two PRNG keys: ``[initialisation, shuffling]``."""
    return jax.random.split(jax.random.PRNGKey(seed))


def initial_params(seed: Array | int, dtype: jnp.dtype | str = jnp.float32, d: int = 1) -> Params:
    """Keras's initial weights for a seed: ``w ~ U(-l, l)^d``, ``l = sqrt(6 / (d + 1))``
    (GlorotUniform of a ``(d, 1)`` kernel), ``b = 0``.

    Drawn in float32 whatever ``dtype``, so a float64 run starts where the float32 one does.
    """
    limit = glorot_limit(d)
    w = jax.random.uniform(_keys(seed)[0], (d,), jnp.float32, -limit, limit)
    return Params(w=w.astype(dtype), b=jnp.zeros((), dtype))


def initial_kernels(seeds: np.ndarray | int, d: int = 1) -> np.ndarray:
    """:func:`initial_params`' kernels ``w`` (float32), shape ``seeds``' + ``(d,)``, for seeds
    ``0 <= seed < 2**32``, drawn on the host (:mod:`src.threefry`): the bits of the
    ``jax.random`` draw where the engine's programs round every product
    (:mod:`src.xla_options`). The simulator gives them to its programs
    (:attr:`Configs.kernel`), and the focus panel and the Keras check start from them."""
    limit = glorot_limit(d)
    return threefry.uniform(threefry.subkey(threefry.key(seeds), 0), (d,), -limit, limit)


@functools.lru_cache(maxsize=1 << 12)
def initial_kernel(seed: int, d: int = 1) -> np.ndarray:
    """:func:`initial_kernels` of one seed, shape ``(d,)``, read-only, drawn once per
    process: a map's chunks, the boundary search's hundreds of small calls and the curves
    share a few seeds, and a draw costs ~0.7 ms of NumPy calls however small."""
    kernel = initial_kernels(seed, d)
    kernel.setflags(write=False)
    return kernel


def pairwise_sum(v: Array, axis: int = -1) -> Array:
    """Sum over ``axis`` by a fixed pairwise tree: halves added elementwise, ``v[:h] + v[h:]``.

    The tree depends only on the length, and a zero tail only adds ``-0.0`` at its top
    levels, so the result does not depend on how much masked padding follows the data.
    Adding contiguous halves keeps every level a plain vector add (no strided shuffles).
    """
    v = jnp.moveaxis(v, axis, -1)
    while v.shape[-1] > 1:
        h = v.shape[-1] // 2
        v = v[..., :h] + v[..., h:]
    return v[..., 0]


def autodiff_loss_and_grad(
    params: Params, x: Array, y: Array, valid: Array, count: Array, *, per_slot: bool = False
) -> tuple[Array, Params]:
    """Mean squared error of one batch and its gradient, by per-sample autodiff.

    ``loss = sum_j (x_j . w + b - y_j)^2 / count`` over the valid slots (``x``: ``(slots,
    d)``); the gradient is the
    sum of per-sample gradients (``jax.grad``) divided by ``count``. Sums use
    :func:`pairwise_sum` so that masked slots are exact no-ops.

    ``per_slot`` differentiates slot by slot (a Python loop over the batch's slots) and adds
    the slots by the same tree: the same operations in the same order, so bit-identical.
    With the batch shared by every config of a chunk (:class:`Group`) every slot is then an
    elementwise expression of the configs' parameters, and XLA fuses the whole batch into one
    pass over the configs; the array form materialises each tree level instead.
    """

    def sample_loss(p: Params, xj: Array, yj: Array) -> Array:
        return jnp.square(jnp.sum(p.w * xj) + p.b - yj)

    neg_zero = jnp.array(-0.0, x.dtype)

    def masked(v: Array, keep: Array) -> Array:
        return jnp.where(keep.reshape(keep.shape + (1,) * (v.ndim - keep.ndim)), v, neg_zero)

    if per_slot:
        slots = [
            jax.tree.map(
                functools.partial(masked, keep=valid[j]),
                jax.value_and_grad(sample_loss)(params, x[j], y[j]),
            )
            for j in range(valid.shape[-1])
        ]
        loss, grads = _pairwise_sum_list(slots)
        return loss / count, jax.tree.map(lambda g: g / count, grads)
    losses, grads = jax.vmap(jax.value_and_grad(sample_loss), in_axes=(None, 0, 0))(params, x, y)

    def mean(v: Array) -> Array:  # over the slots, the leading axis
        return pairwise_sum(masked(v, valid), axis=0) / count

    return mean(losses), jax.tree.map(mean, grads)


def _pairwise_sum_list(terms: list) -> object:
    """:func:`pairwise_sum` of a list of pytrees (a power of two long): the same tree."""
    while len(terms) > 1:
        h = len(terms) // 2
        terms = [jax.tree.map(jnp.add, terms[i], terms[i + h]) for i in range(h)]
    return terms[0]


def moments_loss_and_grad(
    params: Params, m: Moments, count: Array | None = None
) -> tuple[Array, Params]:
    """Mean squared error of one batch and its gradient from its :class:`Moments` (exact in
    real arithmetic for a linear model; a dozen flops however large the batch).

    Keras forms the batch's *sum* of squared errors before dividing by its ``count``
    samples, so its loss is already ``inf`` once ``count * loss`` exceeds the dtype's
    largest value, while the mean formed here would still be finite (for the seed, 2-3
    epochs later). Given ``count``, the loss becomes ``inf`` exactly there; finite losses
    keep every bit. The gradient needs no such care: Keras scales each sample's term by
    ``1 / count`` before summing.
    """
    dw = params.w - m.w_opt
    u = jnp.sum(m.x_mean * dw) + (params.b - m.b_opt)
    s = jnp.sum(m.x_var * dw, axis=-1)
    quadratic = jnp.sum(s * dw)
    if m.cross is not None:
        quadratic = quadratic + 2 * jnp.sum(dw * m.cross)
        s = s + m.cross
    loss = quadratic + u * u + m.floor
    if count is not None:
        total = loss * count
        loss = jnp.where(jnp.isfinite(total), loss, total)
    return loss, Params(w=2 * (s + m.x_mean * u), b=2 * u)


def fixed_batch_moments(
    x: np.ndarray, y: np.ndarray, w_ref: np.ndarray | float, batch_size: int, n_batches: int
) -> Moments:
    """:class:`Moments` of the consecutive batches of one dataset, in float64 (host), each
    about the batch's own least-squares fit (no ``cross`` term).

    ``x`` (``(n,)`` or ``(n, d)``) and ``y`` are the dataset as the engine holds it (its
    dtype's values); ``w_ref`` is the dataset's fit, which a batch's fit stays nearest to
    where the batch does not determine one. Rows past the last batch are zeros.
    """
    x, y = design(x), np.asarray(y, np.float64)
    n, d = x.shape
    width = min(batch_size, n)
    pos = np.arange(n_batches)[:, None] * batch_size + np.arange(width)[None, :]
    valid = (pos < n) & (np.arange(width)[None, :] < batch_size)
    take = np.minimum(pos, n - 1)
    xs = np.where(valid[..., None], x[take], 0.0)
    ys = np.where(valid, y[take], 0.0)
    count = np.maximum(valid.sum(axis=1), 1)

    def mean(v: np.ndarray) -> np.ndarray:
        # Summed along a contiguous last axis: numpy's pairwise order, whatever d.
        keep = valid.reshape(valid.shape + (1,) * (v.ndim - 2))
        kept = np.ascontiguousarray(np.moveaxis(np.where(keep, v, 0.0), 1, -1))
        return kept.sum(axis=-1) / count.reshape((-1,) + (1,) * (v.ndim - 2))

    x_mean, y_mean = mean(xs), mean(ys)
    xc, yc = xs - x_mean[:, None, :], ys - y_mean[:, None]
    x_var = mean(xc[..., :, None] * xc[..., None, :])
    w_ref = np.broadcast_to(np.asarray(w_ref, np.float64), (d,))
    if d == 1:
        var = x_var[:, 0, 0]
        spread = var > 0
        slope = np.where(spread, mean(xc[..., 0] * yc) / np.where(spread, var, 1.0), w_ref[0])
        w_opt = slope[:, None]
    else:  # the batch's fit nearest the dataset's: minimum-norm steps from w_ref
        w_opt = np.stack([
            w_ref + np.linalg.lstsq(xc[b][valid[b]], (yc[b] - xc[b] @ w_ref)[valid[b]],
                                    rcond=None)[0]
            for b in range(n_batches)
        ])  # fmt: skip
    b_opt = y_mean - np.sum(x_mean * w_opt, axis=1)
    residual = predict(xs, w_opt[:, None, :], b_opt[:, None]) - ys
    return Moments(w_opt, b_opt, x_mean, x_var, mean(residual * residual))


def _shuffled_moments(
    x: Array, residual: Array, valid: Array, w_ref: Array, b_ref: Array
) -> Moments:
    """:class:`Moments` of shuffled batches (``x``: ``(batches, slots, d)``), in the engine's
    dtype, from each sample's residual from the dataset's own fit ``(w_ref, b_ref)``
    (computed in float64 once).

    One feature: the reference moves to each batch's own fit (a division), so no ``cross``
    term remains and every term of the loss is non-negative. Several features keep the
    dataset's fit as reference and the ``cross`` term: solving each batch's normal equations
    in float32 would cost more accuracy than the term does.
    """
    dtype = x.dtype
    count = jnp.maximum(jnp.sum(valid, axis=-1), 1).astype(dtype)
    neg_zero = jnp.array(-0.0, dtype)

    def mean(v: Array) -> Array:
        keep = valid.reshape(valid.shape + (1,) * (v.ndim - valid.ndim))
        moved = jnp.moveaxis(jnp.where(keep, v, neg_zero), valid.ndim - 1, -1)
        return pairwise_sum(moved) / count.reshape(count.shape + (1,) * (v.ndim - valid.ndim))

    x_mean, e_mean = mean(x), mean(residual)
    xc = jnp.where(valid[..., None], x - x_mean[..., None, :], 0)
    ec = jnp.where(valid, residual - e_mean[..., None], 0)
    x_var = mean(xc[..., :, None] * xc[..., None, :])
    xe, ee = mean(xc * ec[..., None]), mean(ec * ec)
    if x.shape[-1] > 1:
        return Moments(
            w_opt=jnp.broadcast_to(w_ref, xe.shape),
            b_opt=b_ref - e_mean,
            x_mean=x_mean,
            x_var=x_var,
            floor=ee,
            cross=xe,
        )
    var, xe = x_var[..., 0, 0], xe[..., 0]
    # Equal x leave a rounding-level variance: no slope is defined, keep the dataset's.
    resolvable = var > (64 * jnp.finfo(dtype).eps * jnp.abs(x_mean[..., 0])) ** 2
    shift = jnp.where(resolvable, -xe / jnp.where(resolvable, var, 1), 0)
    return Moments(
        w_opt=w_ref + shift[..., None],
        b_opt=b_ref - e_mean - shift * x_mean[..., 0],
        x_mean=x_mean,
        x_var=x_var,
        floor=jnp.maximum(ee + shift * xe, 0),
    )


def _tree_select(pred: Array, on_true: optax.Params, on_false: optax.Params) -> optax.Params:
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def shares_steps(shapes: Shapes) -> bool:
    """Whether every configuration of a program takes its optimizer steps together: one
    batch per epoch, so that a config's step ``t`` is the program's epoch ``t`` (a config
    past its own epochs never steps again, and its counter is never read)."""
    return shapes.n_batches == 1


def is_step_state(path: tuple) -> bool:
    """Whether the optimizer-state leaf at ``path`` (a key path) depends on the step count
    alone: a field named in :data:`src.keras_optax.STEP_STATE`."""
    return bool(path) and getattr(path[-1], "name", None) in STEP_STATE


def has_step_state(family: Family, argument_names: Sequence[str], d: int) -> bool:
    """Whether the family's optimizer state, built with these arguments (any values), holds
    step state (:func:`is_step_state`): only then do configurations gain by sharing it."""

    def init() -> optax.OptState:
        arguments = {k: jnp.zeros((), jnp.float32) for k in argument_names}
        opt = family.transformation(jnp.float32(0), arguments, keras_shapes(d))
        return opt.init(initial_params(0, jnp.float32, d))

    leaves = jax.tree_util.tree_leaves_with_path(jax.eval_shape(init))
    return any(is_step_state(path) for path, _ in leaves)


def _select_state(
    pred: Array,
    on_true: optax.OptState,
    on_false: optax.OptState,
    shared_steps: bool,
    stepped: Array | None = None,
) -> optax.OptState:
    """:func:`_tree_select` of optimizer states, but with ``shared_steps``
    (:func:`shares_steps`, or a segment's :func:`simulate_one`) the step state
    (:func:`is_step_state`) takes the new value where ``stepped``, one flag for all the
    configs that share it (always, if ``None``): selected per config, it would become one
    value per config again."""
    if not shared_steps:
        return _tree_select(pred, on_true, on_false)

    def select(path: tuple, a: Array, b: Array) -> Array:
        if not is_step_state(path):
            return jnp.where(pred, a, b)
        return a if stepped is None else jnp.where(stepped, a, b)

    return jax.tree_util.tree_map_with_path(select, on_true, on_false)


def _batch_layout(order: Array, n: Array, batch_size: Array, shapes: Shapes) -> tuple[Array, Array]:
    """Sample indices and validity of the ``(n_batches, batch_width)`` batch grid."""
    slot = jnp.arange(shapes.batch_width, dtype=jnp.int32)
    pos = jnp.arange(shapes.n_batches, dtype=jnp.int32)[:, None] * batch_size + slot[None, :]
    valid = (slot[None, :] < batch_size) & (pos < n)
    return order[jnp.clip(pos, 0, shapes.n_max - 1)], valid


def _epoch_order(key: Array, epoch: Array, n: Array, shapes: Shapes, shuffle: bool) -> Array:
    """The sample order of one epoch: identity, or a fresh permutation of ``0..n-1``.

    Each index draws its sort key from ``fold_in(key, epoch, index)``, so the permutation
    does not depend on ``n_max`` (padding invariance); indices ``>= n`` sort last.
    """
    index = jnp.arange(shapes.n_max, dtype=jnp.int32)
    if not shuffle:
        return index
    epoch_key = jax.random.fold_in(key, epoch)
    u = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(epoch_key, i)))(index)
    return _stable_argsort(jnp.where(index < n, u, 2.0))


RANK_SORT_MAX = 128
"""The longest order :func:`_stable_argsort` ranks by comparing every pair (``n^2`` compares,
vectorised) rather than by sorting; XLA's CPU sort calls a comparator per comparison: for
500 epochs of 64 samples, 0.6 ms against 3.2 ms (2-core CPU)."""


def _stable_argsort(keys: Array) -> Array:
    """``jnp.argsort(keys)`` (stable: equal keys keep their index order) of a row of
    non-negative float32 or float64 keys, as int32. Up to :data:`RANK_SORT_MAX` keys, each
    key's rank is the number of keys before it (smaller, or equal at a smaller index) and the
    order puts each index at its rank: the same permutation. The keys are compared as their
    bits, which order non-negative floats as their values do."""
    index = jnp.arange(keys.shape[-1], dtype=jnp.int32)
    if keys.shape[-1] > RANK_SORT_MAX:
        return jnp.argsort(keys).astype(jnp.int32)
    bits = jax.lax.bitcast_convert_type(keys, jnp.int64 if keys.dtype == jnp.float64 else jnp.int32)
    before = (bits[None, :] < bits[:, None]) | (
        (bits[None, :] == bits[:, None]) & (index[None, :] < index[:, None])
    )
    rank = jnp.sum(before, axis=-1, dtype=jnp.int32)
    return jnp.zeros_like(index).at[rank].set(index, unique_indices=True)


def _event_key(number: Array, finite: Array, converged: Array) -> Array:
    """An epoch's key for the running minimum that tracks both events in one value: the
    epoch number if it converged, ``number - 2 NEVER`` if its loss is not finite (so the
    first non-finite epoch wins over everything), ``NEVER`` otherwise."""
    return jnp.where(finite, jnp.where(converged, number, _NEVER), number - 2 * _NEVER)


def _converged_epoch(tr: _Tracker) -> Array:
    """The first converged epoch: from the running minimum while no loss has been non-finite,
    else as last read at a window end (convergence in the window of the first non-finite
    loss, after the last window end, is not recorded)."""
    return jnp.where(tr.events > 0, tr.events, tr.converged_seen)


def _growth_rate(tr: _Tracker) -> Array:
    """Geometric-mean loss ratio per epoch between the last two window marks (or epoch 1)."""
    use_prev = tr.prev_epoch > 0
    base = jnp.where(use_prev, tr.prev, tr.initial_loss)
    span = tr.mark_epoch - jnp.where(use_prev, tr.prev_epoch, 1)
    ok = (tr.mark_epoch > 0) & (span > 0) & (base > 0)
    span = jnp.where(ok, span, 1).astype(tr.mark.dtype)
    return jnp.where(ok, (tr.mark / jnp.where(ok, base, 1)) ** (1 / span), jnp.nan)


def new_tracker(dtype: jnp.dtype) -> _Tracker:
    """A config's epoch tracker before its first epoch: losses nan, no event, no mark."""
    nan = jnp.array(jnp.nan, dtype)
    never = jnp.array(_NEVER, dtype)
    none = jnp.array(0, jnp.int32)
    return _Tracker(nan, nan, never, never, nan, none, nan, none)


def track_epoch(
    tr: _Tracker, loss: Array, number: Array, live: Array, threshold: Array, ragged: bool
) -> _Tracker:
    """The tracker after epoch ``number`` (from 1) ended with History loss ``loss``.

    ``live``: whether the config trains this epoch (only with ``ragged`` epoch counts; an
    epoch past a config's count changes nothing). The running minimum of :func:`_event_key`
    keeps the first converged (``loss <= threshold``) and the first non-finite epoch.
    """
    finite, converged = jnp.isfinite(loss), loss <= threshold
    if ragged:
        final = jnp.where(live, loss, tr.final_loss)
        finite, converged = finite | ~live, converged & live
    else:
        final = loss
    number = number.astype(loss.dtype)  # float: AVX has no 256-bit integer ops
    return tr._replace(
        final_loss=final,
        events=jnp.minimum(tr.events, _event_key(number, finite, converged)),
    )


def history_slots(epochs: tuple[int, ...], total: int) -> np.ndarray:
    """Per epoch index (0 .. ``total - 1``), the slot of a :data:`History` tuple ``epochs``
    that keeps its loss; ``len(epochs)`` where none does."""
    slots = np.full(total, len(epochs), np.int32)
    slots[np.asarray(epochs, np.int64) - 1] = np.arange(len(epochs))
    return slots


def keep_loss(sampled: Array, slot: Array, loss: Array) -> Array:
    """``sampled`` with ``loss`` in ``slot`` (no change for a slot past its end).

    The slot is the epoch loop's, the same for every config of a chunk: under ``vmap`` the
    ``cond`` stays a branch, and an epoch that keeps nothing touches nothing. A select or
    a scatter on every epoch would stream every config's slots through memory each epoch
    (2-core CPU, 2^20 full-batch SGD configs, 16 slots: ~5x the run's time; with the
    branch, 1.0-1.35x)."""
    return jax.lax.cond(
        slot < sampled.shape[-1], lambda s, v: s.at[slot].set(v), lambda s, _: s, sampled, loss
    )


def _first_epoch_ended(tr: _Tracker) -> _Tracker:
    """The tracker after epoch 1: its loss is the run's initial loss."""
    return tr._replace(initial_loss=tr.final_loss)


def close_window(tr: _Tracker, end: Array, epochs: Array) -> _Tracker:
    """The tracker at the end of a :data:`GROWTH_WINDOW` (epoch ``end`` of ``epochs``): the
    converged epoch so far is read, and a finite loss becomes the newest growth mark."""
    mark = jnp.isfinite(tr.final_loss) & (end <= epochs)
    return tr._replace(
        converged_seen=_converged_epoch(tr),
        mark=jnp.where(mark, tr.final_loss, tr.mark),
        mark_epoch=jnp.where(mark, end, tr.mark_epoch),
        prev=jnp.where(mark, tr.mark, tr.prev),
        prev_epoch=jnp.where(mark, tr.mark_epoch, tr.prev_epoch),
    )


def batches_of_epoch(
    batching: Configs | Group,
    data: DataTable,
    key: Array,
    epoch: Array,
    shapes: Shapes,
    kernel: str,
    shuffle: bool,
    order: Array | None = None,
) -> Moments | tuple[Array, Array, Array]:
    """What a step needs of each batch of one epoch (leading axis: batches).

    The moments kernel with a fixed order reads the precomputed :class:`Moments` of
    ``batching`` (a config, or its :class:`Group`); otherwise the epoch's sample order
    (``order`` where given, else :func:`_epoch_order`) is cut into the
    ``(n_batches, batch_width)`` grid and gathered: the moments of each batch (moments
    kernel, shuffled) or ``(x, y, valid)`` (autodiff).
    """
    if kernel == "moments" and not shuffle:
        return batching.moments
    row, n = batching.data_row, batching.n
    if order is None:
        order = _epoch_order(key, epoch, n, shapes, shuffle)
    idx, valid = _batch_layout(order, n, batching.batch_size, shapes)
    x = data.x[row][idx]
    if kernel == "moments":
        w_ref, b_ref = data.w_opt[row], data.b_opt[row]
        return _shuffled_moments(x, data.residual[row][idx], valid, w_ref, b_ref)
    return x, data.y[row][idx], valid


def batch_loss_and_grad(
    params: Params, batch: object, count: Array, kernel: str, per_slot: bool
) -> tuple[Array, Params]:
    """One batch's loss and gradient (as :func:`batches_of_epoch` gave the batch)."""
    if kernel == "moments":
        return moments_loss_and_grad(params, batch, jnp.maximum(count, 1))
    x, y, valid = batch
    return autodiff_loss_and_grad(params, x, y, valid, jnp.maximum(count, 1), per_slot=per_slot)


def simulate_one(
    cfg: Configs,
    data: DataTable,
    tol: Array,
    group: Group | None = None,
    steps: Array | None = None,
    rows: BatchRows | None = None,
    segment_steps: Array | None = None,
    *,
    family: Family,
    shapes: Shapes,
    shuffle: bool,
    history: History,
    kernel: str = "autodiff",
    constants: tuple[tuple[str, float], ...] = (),
) -> tuple[Summary, Array | None]:
    """Train one configuration; ``vmap`` this over a chunk (see :func:`simulate`).

    ``kernel`` is ``autodiff`` or ``moments`` (for a fixed batch order ``cfg.moments``, or
    ``group.moments``, must be given); ``constants`` are hyperparameters shared by every
    config of the program, compiled in (``momentum = 0`` removes the momentum branch of SGD
    altogether). With ``group``, the config's dataset and batch size are the group's (see
    :class:`Group`). ``steps`` (unbatched, at most ``shapes.n_batches``; default all of them)
    is how many of an epoch's batch steps run: those past every config's batch count are
    masked no-ops, and a chunk of small datasets need not run the padding its shapes hold
    (the loop's trip count is then dynamic, the results the same bit for bit). ``rows``
    (from :func:`simulate` only) holds the batch moments in place of ``cfg.moments``.
    ``segment_steps`` (unbatched) says that every config of the chunk takes exactly that
    many batch steps per epoch (a segment, see :func:`simulate`; a ``group`` is one): they
    then step together, and share their step state as a one-batch program does
    (:func:`shares_steps`).
    """
    if group is not None and shuffle and (
        (group.seed is None and group.order is None) or cfg.order is not None
    ):
        raise ValueError("a shuffled group draws its orders from the group's seed")
    if cfg.order is not None and not shuffle:
        raise ValueError("replayed sample orders need a shuffled program")
    dtype = data.x.dtype
    batching = cfg if group is None else group
    threshold = tol * data.loss_scale[cfg.data_row] + data.optimal_loss[cfg.data_row]
    if cfg.kernel is None:
        params = initial_params(cfg.seed, dtype, data.d)
    else:
        params = Params(w=cfg.kernel.astype(dtype), b=jnp.zeros((), dtype))
    shuffle_key = _keys(cfg.seed if group is None or group.seed is None else group.seed)[1]
    arguments = {**cfg.hyperparameters, **{k: np.dtype(dtype).type(v) for k, v in constants}}
    opt = family.transformation(cfg.learning_rate, arguments, keras_shapes(data.d))
    n_float = cfg.n.astype(dtype)

    def count(i: Array | int) -> Array:
        """Samples in batch ``i``: computed where it is used, so a step reads no batch counts."""
        return jnp.clip(cfg.n - i * cfg.batch_size, 0, cfg.batch_size).astype(dtype)

    one_batch = shapes.n_batches == 1
    if group is not None and segment_steps is None:  # a group is a segment too
        segment_steps = -(-group.n // group.batch_size)
    shared_steps = shares_steps(shapes) or segment_steps is not None
    per_slot = group is not None and slot_by_slot(shapes)

    replayed = cfg.order if group is None or group.order is None else group.order

    def epoch_batches(epoch: Array) -> object:
        order = None if replayed is None else replayed[epoch]
        return batches_of_epoch(batching, data, shuffle_key, epoch, shapes, kernel, shuffle, order)

    fixed = None if shuffle else epoch_batches(jnp.zeros((), jnp.int32))

    def step(params: Params, opt_state: optax.OptState, batch: object, count: Array):  # noqa: ANN202
        loss, grads = batch_loss_and_grad(params, batch, count, kernel, per_slot)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def train_epoch(
        params: Params, opt_state: optax.OptState, epoch: Array, live: Array
    ) -> tuple[Params, optax.OptState, Array]:
        batches = epoch_batches(epoch) if shuffle else fixed
        if one_batch and kernel == "moments":
            # One batch: History's weighted mean of one batch loss is that loss (to an ulp).
            return step(params, opt_state, jax.tree.map(lambda a: a[0], batches), count(0))

        def run_batch(i: Array, carry: tuple) -> tuple:
            params, opt_state, total, last = carry
            samples = count(i)
            active = samples > 0
            if shapes.ragged_epochs:
                active = active & live
            if rows is None:
                batch = jax.tree.map(lambda a: a[i], batches)
            else:  # the chunk's batch-major moments (see :func:`simulate`)
                batch = _config_row(rows.moments, i, rows.slot)
            new_params, new_state, loss = step(params, opt_state, batch, samples)
            params = _tree_select(active, new_params, params)
            stepped = None if segment_steps is None else i < segment_steps
            opt_state = _select_state(active, new_state, opt_state, shared_steps, stepped)
            total = jnp.where(active, total + loss * samples, total)
            return params, opt_state, total, jnp.where(active, loss, last)

        zero = jnp.zeros((), dtype)
        # The chunk's own batch count (``steps``): steps past it are padding for every config.
        trips = shapes.n_batches if steps is None else steps
        params, opt_state, total, last = jax.lax.fori_loop(
            0, trips, run_batch, (params, opt_state, zero, zero)
        )
        if kernel == "moments":  # as the one-batch program above: padding changes no bit
            return params, opt_state, jnp.where(count(1) > 0, total / n_float, last)
        return params, opt_state, total / n_float

    def run_epoch(
        carry: tuple[Params, optax.OptState, _Tracker], epoch: Array
    ) -> tuple[tuple[Params, optax.OptState, _Tracker], Array | None]:
        params, opt_state, tr = carry
        number = epoch + 1
        live = number <= cfg.epochs
        new_params, new_state, loss = train_epoch(params, opt_state, epoch, live)
        if shapes.ragged_epochs:
            params = _tree_select(live, new_params, params)
            opt_state = _select_state(live, new_state, opt_state, shared_steps)
        else:  # every config trains every epoch: nothing to mask
            params, opt_state = new_params, new_state
        tr = track_epoch(tr, loss, number, live, threshold, shapes.ragged_epochs)
        shown = jnp.where(live, loss, jnp.nan)
        if slots is not None:
            tr = tr._replace(sampled=keep_loss(tr.sampled, slots[epoch], shown))
        return (params, opt_state, tr), (shown if history is True else None)

    def run_marked_epoch(
        carry: tuple[Params, optax.OptState, _Tracker], epoch: Array
    ) -> tuple[tuple[Params, optax.OptState, _Tracker], Array | None]:
        """An epoch, then what the window loop does between windows, each a branch on the
        epoch number (the loop's, the same for every config: under ``vmap`` a branch stays
        a branch, and an epoch that is no window's end runs none)."""
        (params, opt_state, tr), loss = run_epoch(carry, epoch)
        number = epoch + 1
        tr = jax.lax.cond(number == 1, _first_epoch_ended, lambda t: t, tr)
        tr = jax.lax.cond(
            (number > 1) & ((number - 1) % GROWTH_WINDOW == 0),
            lambda t: close_window(t, number, cfg.epochs),
            lambda t: t,
            tr,
        )
        return (params, opt_state, tr), loss

    def run_window(
        carry: tuple[Params, optax.OptState, _Tracker], first: Array
    ) -> tuple[tuple[Params, optax.OptState, _Tracker], Array | None]:
        carry, losses = run_epochs(carry, first, GROWTH_WINDOW)
        params, opt_state, tr = carry
        return (params, opt_state, close_window(tr, first + GROWTH_WINDOW, cfg.epochs)), losses

    def run_epochs(
        carry: tuple[Params, optax.OptState, _Tracker],
        first: Array | int,
        count: int,
        unroll: int = 2,
    ) -> tuple[tuple[Params, optax.OptState, _Tracker], Array | None]:
        """Epochs ``first .. first + count - 1`` (by default two per loop trip: XLA then
        fuses each value's update over both, halving the trips through memory)."""
        epochs = first + jnp.arange(count, dtype=jnp.int32)
        return jax.lax.scan(run_epoch, carry, epochs, unroll=unroll)

    tracker = new_tracker(dtype)
    slots = None
    if isinstance(history, tuple):
        slots = jnp.asarray(history_slots(history, shapes.epochs))
        tracker = tracker._replace(sampled=jnp.full(len(history), jnp.nan, dtype))
    # The barrier keeps XLA from folding the first step's constants (step count 0) with the
    # host's libm, which rounds pow and exp differently from the compiled kernels.
    # Every state leaf one value per config, except, where every config steps together,
    # the step state (counters, Nadam's momentum product): one value for the whole chunk,
    # so that bias corrections and the like, a pow or two each, are computed once per step
    # and not once per config. The transformations spread those terms over the configs
    # before using them (:func:`src.keras_optax._per_config`): XLA would otherwise rewrite
    # the arithmetic between a shared value and per-config ones, rounded differently.
    state = jax.tree_util.tree_map_with_path(
        lambda path, a: (
            a
            if shared_steps and is_step_state(path)
            else a + (cfg.learning_rate * 0).astype(a.dtype)
        ),
        opt.init(params),
    )
    start = jax.lax.optimization_barrier((params, state, tracker))
    if one_batch and history is not True:
        # An epoch of one batch is a few fused loops: two epochs per trip of a window's
        # loop fuse each value's update over both (full-batch SGD: ~1.3x the rate of
        # one loop over every epoch). Epoch 1 and the tail after the last window run on
        # their own, so four copies of the epoch are compiled.
        carry, _ = run_epoch(start, jnp.zeros((), jnp.int32))
        carry = (*carry[:2], _first_epoch_ended(carry[2]))
        windows, tail = divmod(shapes.epochs - 1, GROWTH_WINDOW)
        starts = 1 + jnp.arange(windows, dtype=jnp.int32) * GROWTH_WINDOW
        carry, _ = jax.lax.scan(run_window, carry, starts)
        # The tail (fewer than GROWTH_WINDOW epochs, once) one per trip: unrolled, an odd
        # tail compiles three copies of the epoch (two in the loop, one left over) for no
        # speed worth having.
        carry, losses = run_epochs(carry, 1 + windows * GROWTH_WINDOW, tail, unroll=1)
    else:
        # Several batches are a loop per epoch, which no unrolling fuses across; a program
        # that keeps every epoch's loss writes it each epoch anyway. One loop over every
        # epoch compiles one copy of the epoch: the default map's four minibatch programs
        # compile in ~60% of the time the four copies took (2-core CPU), and run as fast.
        carry, losses = jax.lax.scan(
            run_marked_epoch, start, jnp.arange(shapes.epochs, dtype=jnp.int32)
        )
    params, opt_state, tr = carry
    weights = family.final_weights(arguments, params, opt_state)
    finite_end = jnp.all(jnp.isfinite(weights.w)) & jnp.isfinite(weights.b)
    first_nonfinite = jnp.where(tr.events < 0, tr.events + 2 * _NEVER, _NEVER)
    first_nonfinite = jnp.where(
        finite_end | (first_nonfinite < _NEVER), first_nonfinite, cfg.epochs.astype(dtype)
    )

    def epoch_number(tracked: Array) -> Array:
        return jnp.where(tracked == _NEVER, -1, tracked).astype(jnp.int32)

    summary = Summary(
        initial_loss=tr.initial_loss,
        final_loss=tr.final_loss,
        first_nonfinite_epoch=epoch_number(first_nonfinite),
        first_converged_epoch=epoch_number(_converged_epoch(tr)),
        growth_rate=_growth_rate(tr),
        final_w=weights.w,
        final_b=weights.b,
        prediction=jnp.sum(weights.w * data.x_query[cfg.data_row]) + weights.b,
    )
    if slots is not None:
        losses = tr.sampled
    return summary, losses


@functools.partial(
    jax.jit, static_argnames=("family", "shapes", "shuffle", "history", "kernel", "constants")
)
def simulate(
    configs: Configs,
    data: DataTable,
    tol: Array,
    *,
    family: Family,
    shapes: Shapes,
    shuffle: bool = False,
    history: History = False,
    kernel: str = "autodiff",
    constants: tuple[tuple[str, float], ...] = (),
    group: Group | None = None,
    steps: Array | None = None,
    segments: Array | None = None,
) -> tuple[Summary, Array | None]:
    """Train every configuration of the chunk ``configs`` at once.

    Returns per-config :class:`Summary` arrays and, with ``history=True``, the per-epoch
    ``History`` losses of shape ``(configs, shapes.epochs)`` (nan past a config's epochs), or
    with a tuple of epochs those epochs' (:data:`History`).
    With ``group`` every config has the group's dataset and batch size, and the chunk's
    batches are built once (see :class:`Group`); a ``group`` whose fields have a leading axis
    is several groups, the configs group-major (:func:`_simulate_groups`). ``steps``: the
    batch steps each epoch runs (see :func:`simulate_one`).

    ``segments``, shape ``(segments,)``, cuts the chunk into that many segments of equal
    length (the configs segment-major), every config of segment ``s`` taking exactly
    ``segments[s]`` batch steps per epoch: each segment then keeps one step state (step
    counters, Nadam's momentum product) for all its configs, and computes the terms that
    depend on it alone (bias corrections and the like, a ``pow`` or two each) once per
    step, not once per config, with the same bits (:func:`_simulate_segments`).
    """
    static = dict(
        family=family, shapes=shapes, shuffle=shuffle, history=history, kernel=kernel,
        constants=constants,
    )  # fmt: skip
    if segments is not None:
        if group is not None:
            raise ValueError("a chunk is cut into groups or into segments, not both")
        return _simulate_segments(configs, data, tol, segments, steps, **static)
    if group is not None and group.n.ndim == 1:
        return _simulate_groups(configs, data, tol, group, steps, **static)
    return _simulate_chunk(configs, data, tol, group, steps, None, **static)


def _simulate_chunk(
    configs: Configs,
    data: DataTable,
    tol: Array,
    group: Group | None,
    steps: Array | None,
    segment_steps: Array | None,
    **static: object,
) -> tuple[Summary, Array | None]:
    """:func:`simulate` of one chunk (one group, one segment or neither): ``vmap`` of
    :func:`simulate_one` over its configs."""
    shapes: Shapes = static["shapes"]  # type: ignore[assignment]
    run = functools.partial(simulate_one, **static)
    vmapped = jax.vmap(run, in_axes=(0, None, None, None, None, None, None))
    if configs.moments is None or shapes.n_batches == 1:
        return vmapped(configs, data, tol, group, steps, None, segment_steps)
    # Several batches: each step reads its batch's moments for the whole chunk as one
    # contiguous row (batch-major), not as one strided element per config; the transposed
    # copy is made once per call (mixed map, 2-core CPU: a minibatch step ~2x faster).
    rows = BatchRows(
        jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), configs.moments),
        jnp.arange(configs.n.shape[0], dtype=jnp.int32),
    )
    run_rows = jax.vmap(run, in_axes=(0, None, None, None, None, BatchRows(None, 0), None))
    return run_rows(configs._replace(moments=None), data, tol, group, steps, rows, segment_steps)


def _simulate_groups(
    configs: Configs,
    data: DataTable,
    tol: Array,
    group: Group,
    steps: Array | None,
    **static: object,
) -> tuple[Summary, Array | None]:
    """:func:`simulate` of a chunk of several groups: ``group``'s fields have a leading
    axis of ``groups``, and ``configs`` are group-major, an equal number per group. Each
    group runs as a one-group chunk would (``vmap`` over the groups), so one call and one
    loop over the epochs' steps serve them all: a group of a few hundred configs alone
    spends most of each step on the step itself (2-core CPU, shuffled SGD, 256 configs of
    one group: ~5x the time per config of 4096)."""
    groups = group.n.shape[0]
    split = jax.tree.map(lambda a: a.reshape(groups, -1, *a.shape[1:]), configs)

    def one(c: Configs, g: Group) -> tuple[Summary, Array | None]:
        # The traced function, not a jitted one: a jit inside the vmap would be traced
        # and then batched, which doubles the tracing time of the program.
        return _simulate_chunk(c, data, tol, g, steps, None, **static)

    out = jax.vmap(one)(split, group)
    return jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:]), out)


def _simulate_segments(
    configs: Configs,
    data: DataTable,
    tol: Array,
    segments: Array,
    steps: Array | None,
    **static: object,
) -> tuple[Summary, Array | None]:
    """:func:`simulate` of a chunk cut into segments (``segments``: each one's batch steps
    per epoch; ``configs`` segment-major, an equal number per segment): ``vmap`` over the
    segments of the chunk's own program, each segment's batch count unbatched within it.

    A config's step count is then the segment's: with several batches per epoch and
    per-config counters, Adam's step on a 2-core CPU cost ~3x SGD's, most of it the
    per-config ``beta^t``; sharing it, about as much (mixed map, 2,048 configs per call)."""
    count = segments.shape[0]
    split = jax.tree.map(lambda a: a.reshape(count, -1, *a.shape[1:]), configs)

    def one(c: Configs, k: Array) -> tuple[Summary, Array | None]:
        return _simulate_chunk(c, data, tol, None, steps, k, **static)

    out = jax.vmap(one)(split, segments)
    return jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:]), out)
