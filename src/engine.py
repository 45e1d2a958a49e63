"""The vectorized simulation of Keras ``model.fit`` for ``Dense(1)`` + MSE.

One jitted program trains a whole chunk of configurations at once (``vmap`` over the config
axis, ``lax.scan`` over epochs and over the batches of an epoch). Configurations may differ in
learning rate, hyperparameters, dataset, dataset size ``N``, batch size, epochs and seed; they
share only the optimizer family and the padded :class:`Shapes`.

Keras semantics reproduced (keras/src/trainers, keras/src/losses; see
../shared/reference/keras-semantics.md):

* weights ``w ~ U(-sqrt 3, sqrt 3)`` (GlorotUniform of a 1x1 kernel) from the config's seed,
  ``b = 0``;
* an epoch cuts the (optionally shuffled) indices into consecutive batches of ``batch_size``;
  the last batch holds the remainder;
* a step evaluates ``loss_b = sum_j (w x_j + b - y_j)^2 / n_b`` with the pre-update weights,
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

Per-config results are summaries (:class:`Summary`); the per-epoch loss history is returned
only when asked for, for a handful of configurations.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from src.optimizers import Family
from src.problem import DataTable

Array = jax.Array

GLOROT_LIMIT = math.sqrt(3.0)
"""GlorotUniform's ``sqrt(6 / (fan_in + fan_out))`` for a 1x1 kernel."""

GROWTH_WINDOW = 10
"""``growth_rate`` is the median loss ratio over the last this-many finite epochs."""


class Params(NamedTuple):
    """The model ``y = w x + b`` (Keras: kernel and bias of ``Dense(1)``)."""

    w: Array
    b: Array


KERAS_SHAPES = Params(
    w=jax.ShapeDtypeStruct((1, 1), jnp.float32), b=jax.ShapeDtypeStruct((1,), jnp.float32)
)
"""Shapes of ``Dense(1)``'s kernel and bias in Keras: optimizers take their steps on these
(Adafactor factors and Muon orthogonalises 2-D variables)."""


class Configs(NamedTuple):
    """A chunk of configurations, one entry per config along the leading axis.

    ``data_row`` indexes the :class:`~src.problem.DataTable`; ``n`` is that row's size.
    ``hyperparameters`` maps each of the family's hyperparameter names to an array.
    """

    learning_rate: Array
    hyperparameters: dict[str, Array]
    data_row: Array
    n: Array
    batch_size: Array
    epochs: Array
    seed: Array


@dataclasses.dataclass(frozen=True)
class Shapes:
    """Static padded sizes shared by every config of a compiled program."""

    n_max: int
    n_batches: int
    batch_width: int
    epochs: int

    @staticmethod
    def covering(n: Sequence[int], batch_size: Sequence[int], epochs: Sequence[int]) -> Shapes:
        """The smallest shapes that hold every combination of the sizes given."""
        n_max, widest = int(max(n)), int(min(max(batch_size), max(n)))
        return Shapes(
            n_max=n_max,
            n_batches=-(-n_max // int(min(batch_size))),
            batch_width=1 << (widest - 1).bit_length(),
            epochs=int(max(epochs)),
        )


class Summary(NamedTuple):
    """Per-config results of a run (epochs count from 1; -1 means "never").

    ``initial_loss`` and ``final_loss`` are the first and last ``History`` losses.
    ``first_nonfinite_epoch`` is the first epoch whose loss or end-of-epoch weights are not
    finite; ``first_converged_epoch`` the first whose loss is ``<= tol * mean(y^2)``.
    ``growth_rate`` is the median ratio of consecutive losses over the last
    :data:`GROWTH_WINDOW` finite epochs (nan with fewer than two). ``prediction`` is the
    model's output at x = 25.
    """

    initial_loss: Array
    final_loss: Array
    first_nonfinite_epoch: Array
    first_converged_epoch: Array
    growth_rate: Array
    final_w: Array
    final_b: Array
    prediction: Array


class _Tracker(NamedTuple):
    initial_loss: Array
    final_loss: Array
    first_nonfinite: Array
    first_converged: Array
    recent: Array  # the last GROWTH_WINDOW + 1 finite losses, oldest first
    recent_count: Array


def _keys(seed: Array | int) -> Array:
    """The config's two PRNG keys: ``[initialisation, shuffling]``."""
    return jax.random.split(jax.random.PRNGKey(seed))


def initial_params(seed: Array | int, dtype: jnp.dtype | str = jnp.float32) -> Params:
    """Keras's initial weights for a seed: ``w ~ U(-sqrt 3, sqrt 3)`` (GlorotUniform), ``b = 0``."""
    w = jax.random.uniform(_keys(seed)[0], (), dtype, -GLOROT_LIMIT, GLOROT_LIMIT)
    return Params(w=w, b=jnp.zeros((), dtype))


def pairwise_sum(v: Array) -> Array:
    """Sum over the last axis (a power of two long) by a fixed pairwise tree.

    The tree depends only on the length, and a zero tail only adds ``-0.0`` at its top
    levels, so the result does not depend on how much masked padding follows the data.
    """
    while v.shape[-1] > 1:
        v = v[..., 0::2] + v[..., 1::2]
    return v[..., 0]


def autodiff_loss_and_grad(
    params: Params, x: Array, y: Array, valid: Array, count: Array
) -> tuple[Array, Params]:
    """Mean squared error of one batch and its gradient, by per-sample autodiff.

    ``loss = sum_j (w x_j + b - y_j)^2 / count`` over the valid slots; the gradient is the
    sum of per-sample gradients (``jax.grad``) divided by ``count``. Sums use
    :func:`pairwise_sum` so that masked slots are exact no-ops.
    """

    def sample_loss(p: Params, xj: Array, yj: Array) -> Array:
        return jnp.square(p.w * xj + p.b - yj)

    losses, grads = jax.vmap(jax.value_and_grad(sample_loss), in_axes=(None, 0, 0))(params, x, y)
    neg_zero = jnp.array(-0.0, x.dtype)

    def mean(v: Array) -> Array:
        return pairwise_sum(jnp.where(valid, v, neg_zero)) / count

    return mean(losses), jax.tree.map(mean, grads)


def _tree_select(pred: Array, on_true: optax.Params, on_false: optax.Params) -> optax.Params:
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


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
    return jnp.argsort(jnp.where(index < n, u, 2.0)).astype(jnp.int32)


def _growth_rate(recent: Array, count: Array) -> Array:
    """Median ratio of consecutive entries among the last ``count`` of ``recent``."""
    size = recent.shape[0]
    ratios = recent[1:] / recent[:-1]
    usable = (jnp.arange(1, size) >= size - count) & (recent[:-1] > 0)
    k = jnp.sum(usable)
    ordered = jnp.sort(jnp.where(usable, ratios, jnp.inf))
    lo = ordered[jnp.maximum((k - 1) // 2, 0)]
    hi = ordered[jnp.maximum(k // 2, 0)]
    return jnp.where(k > 0, (lo + hi) / 2, jnp.nan)


def simulate_one(
    cfg: Configs,
    data: DataTable,
    tol: Array,
    *,
    family: Family,
    shapes: Shapes,
    shuffle: bool,
    history: bool,
) -> tuple[Summary, Array | None]:
    """Train one configuration; ``vmap`` this over a chunk (see :func:`simulate`)."""
    dtype = data.x.dtype
    x_row, y_row = data.x[cfg.data_row], data.y[cfg.data_row]
    threshold = tol * data.loss_scale[cfg.data_row]
    params = initial_params(cfg.seed, dtype)
    shuffle_key = _keys(cfg.seed)[1]
    opt = family.transformation(cfg.learning_rate, cfg.hyperparameters, KERAS_SHAPES)
    n_float = cfg.n.astype(dtype)

    def epoch_batches(epoch: Array) -> tuple[Array, Array, Array]:
        order = _epoch_order(shuffle_key, epoch, cfg.n, shapes, shuffle)
        idx, valid = _batch_layout(order, cfg.n, cfg.batch_size, shapes)
        return x_row[idx], y_row[idx], valid

    fixed_batches = None if shuffle else epoch_batches(jnp.zeros((), jnp.int32))

    def run_batch(
        carry: tuple[Params, optax.OptState, Array], batch: tuple[Array, Array, Array, Array]
    ) -> tuple[tuple[Params, optax.OptState, Array], None]:
        params, opt_state, total = carry
        x, y, valid, active = batch
        count = jnp.sum(valid).astype(dtype)
        loss, grads = autodiff_loss_and_grad(params, x, y, valid, jnp.maximum(count, 1))
        updates, new_state = opt.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        params, opt_state = _tree_select(active, (new_params, new_state), (params, opt_state))
        total = jnp.where(active, total + loss * count, total)
        return (params, opt_state, total), None

    def run_epoch(
        carry: tuple[Params, optax.OptState, _Tracker], epoch: Array
    ) -> tuple[tuple[Params, optax.OptState, _Tracker], Array | None]:
        params, opt_state, tr = carry
        live = epoch < cfg.epochs
        x, y, valid = epoch_batches(epoch) if shuffle else fixed_batches
        (params, opt_state, total), _ = jax.lax.scan(
            run_batch,
            (params, opt_state, jnp.zeros((), dtype)),
            (x, y, valid, live & valid[:, 0]),
        )
        loss = total / n_float
        number = epoch + 1
        bad = ~(jnp.isfinite(loss) & jnp.isfinite(params.w) & jnp.isfinite(params.b))
        finite = jnp.isfinite(loss)
        tr = _Tracker(
            initial_loss=jnp.where(epoch == 0, loss, tr.initial_loss),
            final_loss=jnp.where(live, loss, tr.final_loss),
            first_nonfinite=jnp.where(
                live & bad & (tr.first_nonfinite < 0), number, tr.first_nonfinite
            ),
            first_converged=jnp.where(
                live & (loss <= threshold) & (tr.first_converged < 0), number, tr.first_converged
            ),
            recent=jnp.where(
                live & finite, jnp.concatenate([tr.recent[1:], loss[None]]), tr.recent
            ),
            recent_count=tr.recent_count + (live & finite).astype(jnp.int32),
        )
        return (params, opt_state, tr), (jnp.where(live, loss, jnp.nan) if history else None)

    nan = jnp.array(jnp.nan, dtype)
    tracker = _Tracker(
        initial_loss=nan,
        final_loss=nan,
        first_nonfinite=jnp.array(-1, jnp.int32),
        first_converged=jnp.array(-1, jnp.int32),
        recent=jnp.full((GROWTH_WINDOW + 1,), jnp.nan, dtype),
        recent_count=jnp.array(0, jnp.int32),
    )
    (params, opt_state, tr), losses = jax.lax.scan(
        run_epoch,
        (params, opt.init(params), tracker),
        jnp.arange(shapes.epochs, dtype=jnp.int32),
    )
    weights = family.final_weights(cfg.hyperparameters, params, opt_state)
    summary = Summary(
        initial_loss=tr.initial_loss,
        final_loss=tr.final_loss,
        first_nonfinite_epoch=tr.first_nonfinite,
        first_converged_epoch=tr.first_converged,
        growth_rate=_growth_rate(tr.recent, jnp.minimum(tr.recent_count, GROWTH_WINDOW + 1)),
        final_w=weights.w,
        final_b=weights.b,
        prediction=weights.w * data.x_query[cfg.data_row] + weights.b,
    )
    return summary, losses


@functools.partial(jax.jit, static_argnames=("family", "shapes", "shuffle", "history"))
def simulate(
    configs: Configs,
    data: DataTable,
    tol: Array,
    *,
    family: Family,
    shapes: Shapes,
    shuffle: bool = False,
    history: bool = False,
) -> tuple[Summary, Array | None]:
    """Train every configuration of the chunk ``configs`` at once.

    Returns per-config :class:`Summary` arrays and, with ``history=True``, the per-epoch
    ``History`` losses of shape ``(configs, shapes.epochs)`` (nan past a config's epochs).
    """
    run = functools.partial(
        simulate_one, family=family, shapes=shapes, shuffle=shuffle, history=history
    )
    return jax.vmap(run, in_axes=(0, None, None))(configs, data, tol)
