"""Configurations: the rows an engine program trains, one per configuration.

Every caller of the engine -- the sweep, the boundary search, ``explain``, the Keras check --
reduces its work to a :class:`ConfigSource` of one optimizer family and hands it to a
:class:`~src.simulator.Simulator`. Two sources exist:

* :class:`FlatConfigs` -- parallel per-config columns, built from explicit lists;
* :class:`GridConfigs` -- one family's block of a sweep's Cartesian grid, generating the
  columns of a chunk's rows on demand, so no per-config array of the whole grid is built.

Row for row both give the same :class:`~src.engine.Configs`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

from src import engine
from src import optimizers as opt
from src.schema import DIMS

if TYPE_CHECKING:
    from src.spec import Sweep

COLUMNS = ("learning_rate", "n", "batch_size", "seed", "epochs")
"""The per-config columns besides the optimizer's builder arguments."""


def hyperparameters(
    family: opt.Family,
    names: Sequence[str],
    which: np.ndarray,
    overrides: Mapping[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Float64 hyperparameters of configs of optimizers ``names[which]`` of ``family``: each
    optimizer's Keras defaults, unless ``overrides`` gives (per-config) values.

    Base options appear only where one of ``names`` sets one by default (AdamW's weight
    decay): the others then get its "off" value, and programs without them stay lean.
    """
    defaults = [opt.get(m).defaults for m in names]
    used = [k for k in opt.BASE_OPTIONS if any(k in d for d in defaults)]
    values = {
        h: np.array([d.get(h, opt.BASE_OPTIONS.get(h)) for d in defaults], np.float64)[which]
        for h in (*family.hyperparameters, *used)
    }
    for h, v in (overrides or {}).items():
        if h not in family.hyperparameters and h not in opt.BASE_OPTIONS:
            raise ValueError(f"{family.name} has no hyperparameter {h!r}")
        values[h] = np.broadcast_to(np.asarray(v, np.float64), which.shape)
    return values


def constant_arguments(arguments: Mapping[str, np.ndarray]) -> dict[str, float]:
    """The builder arguments that take one value only (NaN never counts as one value)."""
    out = {}
    for name, values in arguments.items():
        v = np.asarray(values)
        if v.size and np.all(v == v.flat[0]):
            out[name] = float(v.flat[0])
    return out


@dataclasses.dataclass
class FlatConfigs:
    """Per-config columns (host arrays) for optimizers of one family.

    ``columns`` holds :data:`COLUMNS` (and optionally ``variant``: which of the data table's
    problem variants, e.g. noise draws, each config trains on; default the first; and
    ``run``, labels that end a run of configs sharing their batches where they change, so
    that a caller can keep two equal runs apart);
    ``arguments`` the family's builder arguments
    (:meth:`~src.optimizers.Family.arguments`), one value per config. ``orders``, shape
    ``(configs, max epochs, max n)``, are sample orders to replay in a shuffled program
    (:attr:`src.engine.Configs.order`). ``kept``: arguments that stay arguments even where
    every config has one value, so that calls differing only there share one program.
    """

    columns: dict[str, np.ndarray]
    arguments: dict[str, np.ndarray]
    orders: np.ndarray | None = None
    kept: tuple[str, ...] = ()

    @staticmethod
    def of(
        optimizers: Sequence[str],
        family: opt.Family,
        overrides: Mapping[str, np.ndarray] | None = None,
        **columns: np.ndarray,
    ) -> FlatConfigs:
        """Configs from parallel columns; hyperparameters are the Keras defaults of each
        config's optimizer unless ``overrides`` gives per-config values."""
        names = sorted(set(optimizers))
        which = np.searchsorted(names, np.asarray(optimizers))
        cols = {k: np.asarray(columns[k]) for k in (*COLUMNS, "variant", "run") if k in columns}
        return FlatConfigs(cols, family.arguments(hyperparameters(family, names, which, overrides)))

    def __len__(self) -> int:
        return len(self.columns["n"])

    @property
    def argument_names(self) -> tuple[str, ...]:
        return tuple(self.arguments)

    def constant_arguments(self) -> dict[str, float]:
        """Arguments equal for every config (less :attr:`kept`): compiled into the program
        as constants."""
        same = constant_arguments(self.arguments)
        return {k: v for k, v in same.items() if k not in self.kept}

    def covering_shapes(self) -> engine.Shapes:
        c = self.columns
        return engine.Shapes.covering(c["n"], c["batch_size"], c["epochs"])

    def runs(self, by_seed: bool = False) -> np.ndarray:
        """Where runs of consecutive configs with one dataset size and batch size (and
        seed, ``by_seed``) start, and the end: ``[0, ..., len(self)]``. Replayed orders
        are per config: every config is then a run of its own."""
        by = ("n", "batch_size", *(("seed",) if by_seed else ()), "variant", "run")
        keys = [self.columns[k] for k in by if k in self.columns]
        if self.orders is not None:
            keys.append(np.arange(len(self)))
        change = np.flatnonzero(np.any([k[1:] != k[:-1] for k in keys], axis=0)) + 1
        return np.concatenate([[0], change, [len(self)]]).astype(np.int64)

    def chunk(self, start: int, size: int, rows: np.ndarray, dtype: str) -> engine.Configs:
        """Configs ``start .. start+size`` (repeating the last one to fill a short chunk), as
        host arrays: every process holds them alike and places them on the devices."""
        return self.take(span(start, size, len(self)), rows, dtype)

    def take(self, idx: np.ndarray, rows: np.ndarray, dtype: str) -> engine.Configs:
        """The configs at indices ``idx``, as :meth:`chunk` gives them."""
        c = self.columns
        orders = None if self.orders is None else np.asarray(self.orders[idx], np.int32)
        variant = c["variant"][idx] if "variant" in c else 0
        return engine.Configs(
            learning_rate=np.asarray(c["learning_rate"][idx], dtype),
            hyperparameters={h: np.asarray(v[idx], dtype) for h, v in self.arguments.items()},
            data_row=np.asarray(_table_rows(rows)[variant, c["n"][idx]], np.int32),
            n=np.asarray(c["n"][idx], np.int32),
            # A batch size of N or more is one batch of N: the same run, and sample counts
            # (batch index x size) stay inside int32.
            batch_size=np.asarray(np.minimum(c["batch_size"][idx], c["n"][idx]), np.int32),
            epochs=np.asarray(c["epochs"][idx], np.int32),
            seed=np.asarray(c["seed"][idx], np.uint32),
            order=orders,
        )


def span(start: int, size: int, count: int) -> np.ndarray:
    """Indices ``start .. start+size`` of ``count`` rows, the last row repeated past the end."""
    return np.minimum(np.arange(start, start + size), count - 1)


def _table_rows(rows: np.ndarray) -> np.ndarray:
    """A data table's row lookup as ``rows[variant, n]`` (a lookup by ``n`` alone is the
    table of one problem)."""
    return rows if rows.ndim == 2 else rows[None, :]


class ConfigSource(Protocol):
    """What a :class:`~src.simulator.Simulator` runs: rows of one optimizer family."""

    def __len__(self) -> int: ...

    @property
    def argument_names(self) -> tuple[str, ...]:
        """The family's builder arguments (:meth:`~src.optimizers.Family.arguments`)."""
        ...

    def constant_arguments(self) -> dict[str, float]:
        """Builder arguments equal for every row: compiled into the program as constants."""
        ...

    def runs(self, by_seed: bool = False) -> np.ndarray:
        """Where runs of consecutive rows sharing dataset size and batch size (and seed,
        ``by_seed``) start, and the end: ``[0, ..., len(self)]``."""
        ...

    def covering_shapes(self) -> engine.Shapes:
        """The smallest program shapes that hold every row."""
        ...

    def chunk(self, start: int, size: int, rows: np.ndarray, dtype: str) -> engine.Configs:
        """Rows ``start .. start+size`` (the last one repeated to fill a short chunk), as host
        arrays; ``rows[n]`` (or ``rows[variant, n]``) is the data-table row of dataset size
        ``n``."""
        ...

    def take(self, idx: np.ndarray, rows: np.ndarray, dtype: str) -> engine.Configs:
        """The rows at indices ``idx``, as :meth:`chunk` gives them."""
        ...


@dataclasses.dataclass(frozen=True)
class GridConfigs:
    """One optimizer family's block of a sweep's grid, as a config source made chunk by chunk.

    :attr:`shape` is ``(optimizers of the family, lr, n, batch_size, seed, epochs)``, then the
    sweep's data dimensions (``data``: the noise axes, if any), then the swept
    hyperparameters the family has (``own``; it is repeated along the others). Rows walk it
    in C order of :attr:`walk`: data dimensions, dataset size, batch size and seed outermost:
    each ``(variant, n, batch_size)``, and each ``(variant, n, batch_size, seed)``, is then
    one run of rows that can share its batches (:func:`runs`, :class:`src.engine.Group`;
    shuffled batches depend on the seed). :meth:`chunk` computes the columns and builder
    arguments of its rows only, so no per-config array of the whole block is ever built; row
    for row it gives what :class:`FlatConfigs` of the same grid gives.
    """

    WALK = (3, 2, 4, 0, 1, 5)
    """The order rows walk the grid's first six axes in (after the data dimensions; the
    swept hyperparameters follow): batch size outermost, then dataset size, so that a
    chunk of consecutive rows holds configs with about as many batches per epoch, and runs
    few padded steps (:class:`src.simulator.Chunk`)."""

    names: tuple[str, ...]
    family: opt.Family
    axes: tuple[np.ndarray, ...]  # coordinates of every axis of shape after the first
    own: tuple[str, ...]
    fixed: Mapping[str, float]  # the sweep's fixed overrides for this family
    data: int = 0  # how many data dimensions follow the six base axes

    @staticmethod
    def of(sweep: Sweep, names: Sequence[str]) -> GridConfigs:
        family = opt.get(names[0]).family
        own = sweep.swept_for(family)
        dims = (*DIMS[1:], *sweep.data_dims, *own)
        axes = tuple(np.asarray(sweep.axis(d)) for d in dims)
        return GridConfigs(
            tuple(names), family, axes, own, sweep.overrides_for(family), len(sweep.data_dims)
        )

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.names), *(len(a) for a in self.axes))

    @property
    def walk(self) -> tuple[int, ...]:
        """The order rows walk the axes of :attr:`shape` in (C order, first outermost)."""
        base = len(self.WALK)
        data = tuple(range(base, base + self.data))
        return (*data, *self.WALK, *range(base + self.data, len(self.shape)))

    @property
    def variants(self) -> int:
        """Points of the data dimensions: the problem variants each row may train on."""
        return math.prod(self.shape[len(self.WALK) : len(self.WALK) + self.data])

    def variant(self, at: Sequence[np.ndarray]) -> np.ndarray:
        """The problem variant of rows at indices ``at`` (along every axis of :attr:`shape`)."""
        base = len(self.WALK)
        if not self.data:
            return np.zeros(len(at[0]), np.int64)
        return np.ravel_multi_index(
            tuple(at[base : base + self.data]), self.shape[base : base + self.data]
        )

    def __len__(self) -> int:
        return math.prod(self.shape)

    def _at(self, rows: np.ndarray) -> tuple[np.ndarray, ...]:
        """The indices of ``rows`` along every axis of :attr:`shape`."""
        walk = self.walk
        walked = np.unravel_index(rows, [self.shape[d] for d in walk])
        at: list[np.ndarray] = [np.empty(0)] * len(walk)
        for d, i in zip(walk, walked, strict=True):
            at[d] = i
        return tuple(at)

    def runs(self, by_seed: bool = False) -> np.ndarray:
        """Where each ``(variant, n, batch_size)``'s (``by_seed``: ``(variant, n,
        batch_size, seed)``'s) run of rows starts, and the end."""
        count = self.variants * self.shape[2] * self.shape[3] * (self.shape[4] if by_seed else 1)
        return np.arange(0, len(self) + 1, len(self) // count)

    def covering_shapes(self) -> engine.Shapes:
        return engine.Shapes.covering(self.axes[1], self.axes[2], self.axes[4])

    def repeats(self, sweep: Sweep) -> int:
        """How many configurations of the map each row stands for (its copies along the
        swept axes the family lacks)."""
        return len(self.names) * math.prod(sweep.shape[1:]) // len(self)

    def _arguments(self, which: np.ndarray, at: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        first = 5 + self.data  # ``at`` and ``axes`` leave out the optimizer axis
        swept = {h: a[i] for h, a, i in zip(self.own, self.axes[first:], at[first:], strict=True)}
        values = hyperparameters(self.family, self.names, which, {**self.fixed, **swept})
        return self.family.arguments(values)

    @property
    def argument_names(self) -> tuple[str, ...]:
        zero = np.zeros(1, np.int64)
        return tuple(self._arguments(zero, [zero] * len(self.axes)))

    def constant_arguments(self) -> dict[str, float]:
        """Builder arguments equal for every row (:func:`src.simulator.constant_arguments`),
        read off the block's distinct settings only: optimizer x own swept values."""
        first = 5 + self.data
        settings = np.meshgrid(
            np.arange(len(self.names)), *(np.arange(len(a)) for a in self.axes[first:]),
            indexing="ij",
        )  # fmt: skip
        which, *own = (g.ravel() for g in settings)
        return constant_arguments(self._arguments(which, [which] * first + own))

    def chunk(self, start: int, size: int, rows: np.ndarray, dtype: str) -> engine.Configs:
        """Rows ``start .. start+size`` (the last one repeated to fill a short chunk), as
        :meth:`src.simulator.FlatConfigs.chunk` gives them."""
        return self.take(span(start, size, len(self)), rows, dtype)

    def take(self, idx: np.ndarray, rows: np.ndarray, dtype: str) -> engine.Configs:
        """The rows at indices ``idx``, as :meth:`FlatConfigs.take` gives them."""
        full = self._at(idx)
        which, *at = full
        columns = {k: a[i] for k, a, i in zip(COLUMNS, self.axes, at, strict=False)}
        columns["variant"] = self.variant(full)
        return FlatConfigs(columns, self._arguments(which, at)).chunk(0, len(idx), rows, dtype)

    def positions(
        self, sweep: Sweep, block: np.ndarray, start: int, stop: int
    ) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
        """Rows ``start .. stop``: their indices along :attr:`shape`, and their flat positions
        in the map's arrays, ``(rows, repeats)`` (``block``: the family's optimizers' indices
        on the map's optimizer axis)."""
        at = self._at(np.arange(start, stop))
        strides = np.cumprod((1, *sweep.shape[:0:-1]))[::-1]  # in elements, C order
        dims = sweep.dims
        present = len(DIMS) + self.data  # axes every row has: the base and data dimensions
        own = dict(zip(self.own, at[present:], strict=True))
        where = block[at[0]] * strides[0]
        offsets = np.zeros(1, np.int64)
        for i in range(1, len(dims)):
            if i < present or dims[i] in own:
                where = where + (at[i] if i < present else own[dims[i]]) * strides[i]
            else:  # a swept axis the family lacks: the row goes to every position along it
                offsets = np.add.outer(offsets, np.arange(sweep.shape[i]) * strides[i]).ravel()
        return at, where[:, None] + offsets[None, :]
