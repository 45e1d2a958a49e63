"""A sweep -- the grid of configurations of a stability map -- and running it.

A :class:`Sweep` is the Cartesian product ``optimizer x lr x n x batch_size x seed x epochs``
for one :class:`~src.problem.Problem`. :func:`run` simulates every configuration with the
engine (one compiled program per optimizer family, fed in fixed-size chunks) and returns a
labelled :class:`xarray.Dataset` with one variable per per-config figure, plus the full loss
history of a few chosen :class:`Curve` configurations.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import jax
import numpy as np
import optax
import xarray as xr

from src import boundary, engine, outcome, theory
from src import optimizers as opt
from src.errors import InputError
from src.problem import QUERY_X, DataTable, Problem, data_table
from src.simulator import COLUMNS, FlatConfigs, Simulator, constant_arguments
from src.simulator import hyperparameters as config_hyperparameters

if TYPE_CHECKING:
    from src.resume import WorkStore

DIMS = ("optimizer", "lr", "n", "batch_size", "seed", "epochs")
"""The base dimensions of every per-config variable, in storage order; a sweep's swept
hyperparameters follow them (:attr:`Sweep.dims`)."""

RESERVED_NAMES = frozenset(
    {*DIMS, "learning_rate", "curve", "epoch", "cell", "loss_scale", "hessian_max_eigenvalue",
     "gd_critical_lr", "loss_history", "status", "critical_lr", "theory_critical_lr",
     "non_monotone"}
)  # fmt: skip
"""Names a swept hyperparameter may not take (they label other parts of the dataset)."""

DEFAULT_OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "rmsprop", "adagrad")
SEED_LR = 0.01
"""The seed's learning rate: Keras ``SGD``'s default."""


def bytes_per_config(dtype: str) -> int:
    """Host memory per configuration: the map's own arrays (six summaries in ``dtype``, two
    int32 epochs and the int8 status: 33 bytes in float32) twice over, for what writing and
    reporting the map take on top (measured: 1.6 times; ``python -m benchmarks.memory``).
    Configurations are generated and simulated chunk by chunk: nothing else grows with the
    grid."""
    return 2 * (6 * np.dtype(dtype).itemsize + 2 * 4 + 1)


def log_grid(start: float, stop: float, count: int) -> tuple[float, ...]:
    """``count`` log-spaced values from ``start`` to ``stop``, rounded to 6 significant digits.

    Rounding makes the decades exact (``1e-5:1:81`` holds 0.01 and 0.001 exactly) and the
    coordinate labels readable; the engine runs the rounded values.
    """
    if not (start > 0 and stop > 0):
        raise InputError(f"learning rates must be > 0, got {start}:{stop}")
    if count < 1:
        raise InputError(f"a grid needs at least 1 point, got {count}")
    values = np.geomspace(start, stop, count) if count > 1 else np.array([start])
    return tuple(float(f"{v:.6g}") for v in values)


def default_lr_grid() -> tuple[float, ...]:
    """81 points, 16 per decade, from 1e-5 to 1 (holds 0.01 and 0.001 exactly)."""
    return log_grid(1e-5, 1.0, 81)


@dataclasses.dataclass(frozen=True)
class Curve:
    """A configuration whose whole loss history is kept."""

    optimizer: str
    lr: float
    n: int
    batch_size: int = 32
    seed: int = 0

    @property
    def label(self) -> str:
        return (
            f"{self.optimizer} lr={self.lr:g} N={self.n} batch={self.batch_size} seed={self.seed}"
        )


def seed_curves(optimizers: Sequence[str], batch_size: int, seed: int) -> tuple[Curve, ...]:
    """The seed's story: SGD at lr 0.01 on N = 20 (overflows) and N = 10 (converges), and
    Adam on N = 20 at lr 0.01 and at its Keras default 0.001 -- for the optimizers present
    (without either, the first optimizer at lr 0.01 on N = 20 and N = 10)."""
    wanted = [
        ("sgd", SEED_LR, 20),
        ("sgd", SEED_LR, 10),
        ("adam", SEED_LR, 20),
        ("adam", 0.001, 20),
    ]
    if not {"sgd", "adam"} & set(optimizers):
        wanted = [(optimizers[0], SEED_LR, 20), (optimizers[0], SEED_LR, 10)]
    return tuple(
        Curve(name, lr, n, batch_size, seed) for name, lr, n in wanted if name in optimizers
    )


@dataclasses.dataclass(frozen=True)
class Sweep:
    """Everything that defines a stability map (defaults: the seed problem's map).

    ``curves=None`` keeps the default :func:`seed_curves`; ``chunk_size=0`` picks one;
    ``boundary_rtol`` is the relative precision of the measured critical learning rates.

    ``hyperparameters`` are swept optimizer hyperparameters, ``((name, values), ...)`` (a
    mapping works too): each becomes a dimension after ``epochs``. ``optimizer_args`` are
    fixed overrides, ``((name, value), ...)``. A name is valid if some selected optimizer's
    family has it, or if it is a Keras base option (:data:`src.optimizers.BASE_OPTIONS`); it
    applies to exactly those optimizers (:meth:`applies_to`). An optimizer without a swept
    hyperparameter is run once and its results repeated along that axis.
    """

    optimizer: tuple[str, ...] = DEFAULT_OPTIMIZERS
    lr: tuple[float, ...] = dataclasses.field(default_factory=default_lr_grid)
    n: tuple[int, ...] = tuple(range(1, 65))
    batch_size: tuple[int, ...] = (32,)
    seed: tuple[int, ...] = (0,)
    epochs: tuple[int, ...] = (500,)
    shuffle: bool = False
    tol: float = outcome.DEFAULT_TOL
    diverge_factor: float = outcome.DEFAULT_DIVERGE_FACTOR
    dtype: str = "float32"
    problem: Problem = dataclasses.field(default_factory=Problem)
    curves: tuple[Curve, ...] | None = None
    chunk_size: int = 0
    kernel: str = "auto"
    boundary_rtol: float = boundary.DEFAULT_RTOL
    hyperparameters: tuple[tuple[str, tuple[float, ...]], ...] = ()
    optimizer_args: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "hyperparameters", _swept_axes(self.hyperparameters))
        object.__setattr__(self, "optimizer_args", _fixed_args(self.optimizer_args))
        for name in DIMS:
            if not getattr(self, name):
                raise InputError(f"the {name} axis is empty")
            if len(set(getattr(self, name))) != len(getattr(self, name)):
                raise InputError(f"the {name} axis has repeated values: {getattr(self, name)}")
        for name in self.optimizer:
            opt.get(name)
        _check_all(self.lr, lambda v: math.isfinite(v) and v > 0, "learning rate", "> 0")
        _check_all(self.n, lambda v: v >= 1, "dataset size N", ">= 1")
        _check_all(self.batch_size, lambda v: v >= 1, "batch size", ">= 1")
        _check_all(
            self.epochs, lambda v: 1 <= v <= engine.MAX_EPOCHS, "epochs",
            f"in [1, {engine.MAX_EPOCHS}]",
        )  # fmt: skip
        _check_all(self.seed, lambda v: 0 <= v < 2**32, "seed", "in [0, 2**32)")
        if not (math.isfinite(self.tol) and self.tol > 0):
            raise InputError(f"tol must be > 0, got {self.tol}")
        if not (math.isfinite(self.diverge_factor) and self.diverge_factor > 0):
            raise InputError(f"diverge_factor must be > 0, got {self.diverge_factor}")
        if self.dtype not in ("float32", "float64"):
            raise InputError(f"dtype must be float32 or float64, got {self.dtype!r}")
        if not (math.isfinite(self.boundary_rtol) and 0 < self.boundary_rtol < 1):
            raise InputError(f"boundary rtol must be in (0, 1), got {self.boundary_rtol}")
        if self.kernel not in engine.KERNELS:
            raise InputError(
                f"kernel must be one of {', '.join(engine.KERNELS)}, got {self.kernel!r}"
            )
        if self.chunk_size < 0:
            raise InputError(f"chunk size must be >= 0 (0 = automatic), got {self.chunk_size}")
        for c in self.curves or ():
            opt.get(c.optimizer)
            if not (c.lr > 0 and c.n >= 1 and c.batch_size >= 1 and 0 <= c.seed < 2**32):
                raise InputError(f"bad curve {c.label}: needs lr > 0, N >= 1, batch size >= 1")
        self._check_hyperparameters()
        needed, available = self.estimated_bytes(), available_memory()
        if needed > available // 2:
            limit = max(1, (available // 2) // bytes_per_config(self.dtype))
            raise InputError(
                f"the grid has {self.n_configs:,} configurations and needs about "
                f"{needed / 2**30:.1f} GiB, more than half of the {available / 2**30:.1f} GiB "
                f"available; split it into runs of at most {limit:,} configurations "
                f"(e.g. fewer --lr points, or a few --optimizers or --n ranges per run)"
            )

    def estimated_bytes(self) -> int:
        """Host memory the run needs: the map (:func:`bytes_per_config`), datasets, histories."""
        curves = len(self.resolved_curves)
        return (
            self.n_configs * bytes_per_config(self.dtype)
            + (len(self.n) + curves) * max(self.n) * 32
            + curves * max(self.epochs) * 16
        )

    def _check_hyperparameters(self) -> None:
        valid = list(
            dict.fromkeys(
                [h for o in self.optimizer for h in opt.get(o).family.hyperparameters]
                + list(opt.BASE_OPTIONS)
            )
        )
        swept = [h for h, _ in self.hyperparameters]
        fixed = [h for h, _ in self.optimizer_args]
        for kind, names in (("swept", swept), ("fixed", fixed)):
            for h in names:
                if h in RESERVED_NAMES:
                    raise InputError(f"hyperparameter name {h!r} clashes with a dimension or "
                                     "variable of the map")  # fmt: skip
                if h not in valid:
                    raise InputError(
                        f"unknown hyperparameter {h!r} ({kind}) for optimizers "
                        f"{', '.join(self.optimizer)}; valid names: {', '.join(valid)}"
                    )
                if names.count(h) > 1:
                    raise InputError(f"hyperparameter {h!r} is {kind} more than once")
        both = sorted(set(swept) & set(fixed))
        if both:
            raise InputError(f"hyperparameter {both[0]!r} is both swept and fixed; give one")
        for h, values in self.hyperparameters:
            if not values:
                raise InputError(f"the swept hyperparameter {h} has no values")
            if len(set(values)) != len(values):
                raise InputError(f"the swept hyperparameter {h} has repeated values: {values}")
            for v in values:
                _check_hyperparameter_value(h, v)
        for h, v in self.optimizer_args:
            _check_hyperparameter_value(h, v)

    @property
    def dims(self) -> tuple[str, ...]:
        """Dimensions of every per-config variable: :data:`DIMS`, then swept hyperparameters."""
        return DIMS + tuple(h for h, _ in self.hyperparameters)

    def axis(self, dim: str) -> tuple:
        """The coordinate values of dimension ``dim`` (a base axis or a swept hyperparameter)."""
        if dim in DIMS:
            return getattr(self, dim)
        return dict(self.hyperparameters)[dim]

    def applies_to(self, name: str) -> tuple[str, ...]:
        """The selected optimizers that have hyperparameter (or base option) ``name``."""
        return tuple(o for o in self.optimizer if _applies(opt.get(o).family, name))

    def overrides_for(self, family: opt.Family) -> dict[str, float]:
        """Fixed overrides (``optimizer_args``) that apply to ``family``."""
        return {h: v for h, v in self.optimizer_args if _applies(family, h)}

    def swept_for(self, family: opt.Family) -> tuple[str, ...]:
        """The swept hyperparameters that ``family`` has (the others are broadcast)."""
        return tuple(h for h, _ in self.hyperparameters if _applies(family, h))

    def curve_settings(self, optimizer: str) -> dict[str, float]:
        """Hyperparameters of the loss curves of ``optimizer`` that differ from the Keras
        defaults' source: fixed overrides, and the *first* value of each swept axis."""
        family = opt.get(optimizer).family
        first = {h: dict(self.hyperparameters)[h][0] for h in self.swept_for(family)}
        return {**self.overrides_for(family), **first}

    def curve_label(self, curve: Curve) -> str:
        """``curve.label``, plus the hyperparameters it ran with when the sweep sets any."""
        family = opt.get(curve.optimizer).family
        swept = set(self.swept_for(family))
        parts = [
            f"{h}={v:g}" + (" (first swept value)" if h in swept else "")
            for h, v in self.curve_settings(curve.optimizer).items()
        ]
        return curve.label + (", " + ", ".join(parts) if parts else "")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(self.axis(d)) for d in self.dims)

    @property
    def n_configs(self) -> int:
        return math.prod(self.shape)

    @property
    def resolved_curves(self) -> tuple[Curve, ...]:
        if self.curves is not None:
            return self.curves
        return seed_curves(self.optimizer, self.batch_size[0], self.seed[0])


@dataclasses.dataclass(frozen=True)
class GridConfigs:
    """One optimizer family's block of a sweep's grid, as a config source made chunk by chunk.

    :attr:`shape` is ``(optimizers of the family, lr, n, batch_size, seed, epochs)``, then the
    swept hyperparameters the family has (``own``; it is repeated along the others). Rows
    walk it in C order of :data:`WALK`, dataset size and batch size outermost: each
    ``(n, batch_size)`` is then one run of rows that can share its batches (:func:`runs`,
    :class:`src.engine.Group`). :meth:`chunk` computes the columns and builder arguments
    of its rows only, so no per-config array of the whole block is ever built; row for row it
    gives what :class:`~src.simulator.FlatConfigs` of the same grid gives.
    """

    WALK = (2, 3, 0, 1, 4, 5)
    """The order rows walk the grid's first six axes in (the swept hyperparameters follow)."""

    names: tuple[str, ...]
    family: opt.Family
    axes: tuple[np.ndarray, ...]  # coordinates of every axis of shape after the first
    own: tuple[str, ...]
    fixed: Mapping[str, float]  # the sweep's fixed overrides for this family

    @staticmethod
    def of(sweep: Sweep, names: Sequence[str]) -> GridConfigs:
        family = opt.get(names[0]).family
        own = sweep.swept_for(family)
        axes = tuple(np.asarray(sweep.axis(d)) for d in (*DIMS[1:], *own))
        return GridConfigs(tuple(names), family, axes, own, sweep.overrides_for(family))

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.names), *(len(a) for a in self.axes))

    def __len__(self) -> int:
        return math.prod(self.shape)

    def _at(self, rows: np.ndarray) -> tuple[np.ndarray, ...]:
        """The indices of ``rows`` along every axis of :attr:`shape`."""
        walk = (*self.WALK, *range(len(self.WALK), len(self.shape)))
        walked = np.unravel_index(rows, [self.shape[d] for d in walk])
        at: list[np.ndarray] = [np.empty(0)] * len(walk)
        for d, i in zip(walk, walked, strict=True):
            at[d] = i
        return tuple(at)

    def runs(self) -> np.ndarray:
        """Where each ``(n, batch_size)``'s run of rows starts, and the end."""
        return np.arange(0, len(self) + 1, len(self) // (self.shape[2] * self.shape[3]))

    def repeats(self, sweep: Sweep) -> int:
        """How many configurations of the map each row stands for (its copies along the
        swept axes the family lacks)."""
        return len(self.names) * math.prod(sweep.shape[1:]) // len(self)

    def _arguments(self, which: np.ndarray, at: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        swept = {h: a[i] for h, a, i in zip(self.own, self.axes[5:], at[5:], strict=True)}
        values = config_hyperparameters(self.family, self.names, which, {**self.fixed, **swept})
        return self.family.arguments(values)

    @property
    def argument_names(self) -> tuple[str, ...]:
        zero = np.zeros(1, np.int64)
        return tuple(self._arguments(zero, [zero] * len(self.axes)))

    def constant_arguments(self) -> dict[str, float]:
        """Builder arguments equal for every row (:func:`src.simulator.constant_arguments`),
        read off the block's distinct settings only: optimizer x own swept values."""
        settings = np.meshgrid(
            np.arange(len(self.names)), *(np.arange(len(a)) for a in self.axes[5:]), indexing="ij"
        )
        which, *own = (g.ravel() for g in settings)
        return constant_arguments(self._arguments(which, [which] * 5 + own))

    def chunk(self, start: int, size: int, rows: np.ndarray, dtype: str) -> engine.Configs:
        """Rows ``start .. start+size`` (the last one repeated to fill a short chunk), as
        :meth:`src.simulator.FlatConfigs.chunk` gives them."""
        idx = np.minimum(np.arange(start, start + size), len(self) - 1)
        which, *at = self._at(idx)
        columns = {k: a[i] for k, a, i in zip(COLUMNS, self.axes, at, strict=False)}
        return FlatConfigs(columns, self._arguments(which, at)).chunk(0, size, rows, dtype)

    def positions(
        self, sweep: Sweep, block: np.ndarray, start: int, stop: int
    ) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
        """Rows ``start .. stop``: their indices along :attr:`shape`, and their flat positions
        in the map's arrays, ``(rows, repeats)`` (``block``: the family's optimizers' indices
        on the map's optimizer axis)."""
        at = self._at(np.arange(start, stop))
        strides = np.cumprod((1, *sweep.shape[:0:-1]))[::-1]  # in elements, C order
        dims = sweep.dims
        own = dict(zip(self.own, at[len(DIMS) :], strict=True))
        where = block[at[0]] * strides[0]
        offsets = np.zeros(1, np.int64)
        for i in range(1, len(dims)):
            if i < len(DIMS) or dims[i] in own:
                where = where + (at[i] if i < len(DIMS) else own[dims[i]]) * strides[i]
            else:  # a swept axis the family lacks: the row goes to every position along it
                offsets = np.add.outer(offsets, np.arange(sweep.shape[i]) * strides[i]).ravel()
        return at, where[:, None] + offsets[None, :]


@dataclasses.dataclass(frozen=True)
class RunStats:
    """How the run went: sizes and seconds (compute excludes compilation)."""

    n_configs: int
    config_epochs: int
    programs: int
    compile_seconds: float
    compute_seconds: float
    wall_seconds: float
    devices: tuple[str, ...]

    @property
    def config_epochs_per_second(self) -> float:
        return self.config_epochs / self.compute_seconds if self.compute_seconds > 0 else math.nan


def available_memory() -> int:
    """Bytes of memory available to this process (MemAvailable, else physical memory)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def problem_of(ds: xr.Dataset) -> Problem:
    """The :class:`~src.problem.Problem` a saved map was computed on (from its attributes)."""
    a = ds.attrs
    return Problem(
        slope=float(a["problem_slope"]),
        intercept=float(a["problem_intercept"]),
        x_start=float(a["problem_x_start"]),
        x_step=float(a["problem_x_step"]),
        standardize=bool(a["problem_standardize"]),
    )


def _check_all(values: Sequence[float], ok: Callable[[float], bool], what: str, rule: str) -> None:
    for v in values:
        if not ok(v):
            raise InputError(f"{what} must be {rule}, got {v}")


def _applies(family: opt.Family, name: str) -> bool:
    return name in family.hyperparameters or name in opt.BASE_OPTIONS


def _swept_axes(axes: object) -> tuple[tuple[str, tuple[float, ...]], ...]:
    items = axes.items() if isinstance(axes, Mapping) else axes
    try:
        return tuple((str(h).strip(), tuple(float(v) for v in values)) for h, values in items)
    except (TypeError, ValueError):
        raise InputError(
            f"swept hyperparameters must be (name, numbers) pairs, got {axes!r}"
        ) from None


def _fixed_args(args: object) -> tuple[tuple[str, float], ...]:
    items = args.items() if isinstance(args, Mapping) else args
    try:
        return tuple((str(h).strip(), float(v)) for h, v in items)
    except (TypeError, ValueError):
        raise InputError(
            f"optimizer arguments must be (name, number) pairs, got {args!r}"
        ) from None


def _check_hyperparameter_value(name: str, value: float) -> None:
    """Finite, or a base option's "off" value (``clipnorm = inf``)."""
    if not (math.isfinite(value) or value == opt.BASE_OPTIONS.get(name)):
        raise InputError(f"hyperparameter {name} must be a finite number, got {value}")


def _families(names: Sequence[str]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(opt.get(name).family.name, []).append(name)
    return groups


def run(
    sweep: Sweep,
    progress: Callable[[int], None] | None = None,
    stage: Callable[[str], None] | None = None,
    work: WorkStore | None = None,
) -> tuple[xr.Dataset, RunStats]:
    """Simulate every configuration of ``sweep``; returns the labelled map and run statistics.

    ``progress(k)`` is called after every chunk of the map with the number of configs it
    finished; ``stage(text)`` names each later phase (loss curves, boundary search).

    With ``work`` (a :class:`src.resume.WorkStore` opened for this sweep), every finished chunk
    is also saved there, and the chunks it already holds are read instead of simulated
    (:func:`resumed_configs` counts them); the map is the same either way.
    """
    with jax.enable_x64(sweep.dtype == "float64"):
        return _run(sweep, progress, stage or (lambda _: None), work)


def resumed_configs(sweep: Sweep, work: WorkStore) -> int:
    """Configurations of the map (repeats along swept axes included) that ``work`` holds."""
    total = 0
    for f, names in enumerate(_families(sweep.optimizer).values()):
        grid = GridConfigs.of(sweep, names)
        total += work.finished(f).overlap(0, len(grid)) * grid.repeats(sweep)
    return total


def _run(
    sweep: Sweep,
    progress: Callable[[int], None] | None,
    stage: Callable[[str], None],
    work: WorkStore | None = None,
) -> tuple[xr.Dataset, RunStats]:
    wall0 = time.perf_counter()
    curves = sweep.resolved_curves
    sizes = sorted(set(sweep.n) | {c.n for c in curves})
    rows = np.zeros(max(sizes) + 1, np.int64)  # dataset size -> its row of the table
    rows[sizes] = np.arange(len(sizes))
    table = data_table([sweep.problem.dataset(n) for n in sizes], sweep.dtype)
    sim = Simulator(
        table, rows, sweep.dtype, sweep.tol, sweep.shuffle, sweep.chunk_size, sweep.kernel
    )
    shapes = engine.Shapes.covering(sweep.n, sweep.batch_size, sweep.epochs)

    results = {
        k: np.empty(sweep.shape, _result_dtype(k, sweep.dtype)) for k in engine.Summary._fields
    }
    status = np.empty(sweep.shape, np.int8)
    simulated = _simulate_map(sweep, sim, shapes, table, rows, results, status, progress, work)

    stage("loss curves")
    histories = np.full((len(curves), max(sweep.epochs)), np.nan, sweep.dtype)
    for names in _families([c.optimizer for c in curves]).values():
        members = [i for i, c in enumerate(curves) if c.optimizer in names]
        chosen = [curves[i] for i in members]
        family = opt.get(names[0]).family
        flat = FlatConfigs.of(
            [c.optimizer for c in chosen], family, sweep.curve_settings(names[0]),
            learning_rate=np.array([c.lr for c in chosen]),
            n=np.array([c.n for c in chosen]), batch_size=np.array([c.batch_size for c in chosen]),
            seed=np.array([c.seed for c in chosen]), epochs=np.full(len(chosen), max(sweep.epochs)),
        )  # fmt: skip
        _, losses = sim.run(family, flat, history=True)
        histories[members] = losses[:, : histories.shape[1]]

    stage("bisecting critical lr")
    critical = _measured_boundary(sweep, status, sim, shapes, table, rows)
    ds = _dataset(sweep, results, status, critical, curves, histories, table, rows)
    stats = RunStats(
        n_configs=sweep.n_configs,
        config_epochs=simulated * sum(sweep.epochs) // len(sweep.epochs),
        programs=sim.programs,
        compile_seconds=sim.compile_seconds,
        compute_seconds=sim.compute_seconds,
        wall_seconds=time.perf_counter() - wall0,
        devices=tuple(str(d) for d in jax.devices()),
    )
    return ds, stats


def _simulate_map(
    sweep: Sweep,
    sim: Simulator,
    shapes: engine.Shapes,
    table: DataTable,
    rows: np.ndarray,
    results: dict[str, np.ndarray],
    status: np.ndarray,
    progress: Callable[[int], None] | None,
    work: WorkStore | None,
) -> int:
    """Fill ``results`` and ``status`` (the map's arrays) chunk by chunk, family by family;
    returns how many configurations were simulated (not read from ``work``).

    Each finished chunk is classified and written into the map at once (and saved in
    ``work``), so nothing but the map itself grows with the grid.
    """
    scale = np.asarray(table.loss_scale, np.float64)[rows]  # dataset size -> mean(y^2)
    opt_index = {name: i for i, name in enumerate(sweep.optimizer)}
    into = {k: v.reshape(-1) for k, v in results.items()} | {"status": status.reshape(-1)}
    simulated = 0
    try:
        for f, names in enumerate(_families(sweep.optimizer).values()):
            grid = GridConfigs.of(sweep, names)
            block = np.array([opt_index[n] for n in names])
            simulated += _simulate_family(
                sweep, sim, shapes, scale, f, grid, block, into, progress, work
            )
    finally:
        if work is not None:
            work.flush()  # what finished before an interruption is kept
    return simulated


def _simulate_family(
    sweep: Sweep,
    sim: Simulator,
    shapes: engine.Shapes,
    scale: np.ndarray,
    f: int,
    grid: GridConfigs,
    block: np.ndarray,
    into: dict[str, np.ndarray],
    progress: Callable[[int], None] | None,
    work: WorkStore | None,
) -> int:
    """One family's part of :func:`_simulate_map` (``f``: its index, ``block``: its
    optimizers' indices on the map's optimizer axis; ``into``: the map's arrays, flat)."""
    repeats = grid.repeats(sweep)
    done = work.finished(f) if work is not None else None
    simulated = 0

    def place(start: int, s: engine.Summary) -> None:
        at, where = grid.positions(sweep, block, start, start + len(s.final_loss))
        values = {
            k: np.asarray(v, into[k].dtype) for k, v in zip(engine.Summary._fields, s, strict=True)
        }
        code = outcome.classify(
            values["initial_loss"], values["final_loss"], values["first_nonfinite_epoch"],
            scale[grid.axes[1][at[2]]], sweep.tol, sweep.diverge_factor,
        )  # fmt: skip
        for k, v in (*values.items(), ("status", code)):
            into[k][where] = v[:, None]

    def finished(start: int, s: engine.Summary) -> None:
        nonlocal simulated
        stop = start + len(s.final_loss)
        place(start, s)
        simulated += stop - start
        if work is not None:
            work.add(f, start, s)
        if progress is not None:
            new = stop - start - (done.overlap(start, stop) if done is not None else 0)
            progress(new * repeats)

    if work is not None:
        for start, s in work.load(f):
            place(start, s)
    sim.run(grid.family, grid, shapes, each=finished, skip=None if done is None else done.covers)
    if work is not None:
        work.flush()
    return simulated


def _measured_boundary(
    sweep: Sweep,
    status: np.ndarray,
    sim: Simulator,
    shapes: engine.Shapes,
    table: DataTable,
    rows: np.ndarray,
) -> boundary.Boundary:
    """Critical lr of every cell (all dims but lr), bisected with the engine.

    Cells that differ only in a swept hyperparameter their optimizer does not have are the
    same run: only the first of them is bisected and its result repeated.
    """
    dims = sweep.dims
    cell_dims = tuple(d for d in dims if d != "lr")
    by_cell = np.moveaxis(status, dims.index("lr"), -1)  # (optimizer, n, bs, seed, epochs, ..., lr)
    cell_shape = by_cell.shape[:-1]
    coords = [np.ravel(g) for g in np.meshgrid(*(np.arange(k) for k in cell_shape), indexing="ij")]
    values = {d: np.asarray(sweep.axis(d))[c] for d, c in zip(cell_dims, coords, strict=True)}
    families = np.array([opt.get(o).family.name for o in values["optimizer"]])
    scale = np.asarray(table.loss_scale, np.float64)
    lacks = {  # per swept hyperparameter: which optimizers (by index) do not have it
        h: np.array([not _applies(opt.get(o).family, h) for o in sweep.optimizer])
        for h in dims[len(DIMS) :]
    }
    searched = np.ones(len(coords[0]), bool)
    for h, lacking in lacks.items():
        searched &= ~lacking[coords[0]] | (coords[cell_dims.index(h)] == 0)
    searched = np.flatnonzero(searched)

    def breaks_at(cells: np.ndarray, lrs: np.ndarray) -> np.ndarray:
        cells = searched[cells]
        out = np.empty(len(cells), bool)
        for name in dict.fromkeys(families[cells]):
            pick = np.flatnonzero(families[cells] == name)
            c = cells[pick]
            family = opt.get(values["optimizer"][c[0]]).family
            overrides = {
                **sweep.overrides_for(family), **{h: values[h][c] for h in sweep.swept_for(family)}
            }  # fmt: skip
            flat = FlatConfigs.of(
                values["optimizer"][c], family, overrides, learning_rate=lrs[pick],
                n=values["n"][c], batch_size=values["batch_size"][c], seed=values["seed"][c],
                epochs=values["epochs"][c],
            )  # fmt: skip
            s, _ = sim.run(family, flat, shapes, pad_to=1 << (len(c) - 1).bit_length())
            st = outcome.classify(
                s.initial_loss, s.final_loss, s.first_nonfinite_epoch,
                scale[rows[values["n"][c]]], sweep.tol, sweep.diverge_factor,
            )  # fmt: skip
            out[pick] = st >= outcome.DIVERGING
        return out

    found = boundary.search(
        np.asarray(sweep.lr),
        (by_cell >= outcome.DIVERGING).reshape(-1, by_cell.shape[-1])[searched],
        breaks_at,
        sweep.boundary_rtol,
    )
    critical = np.full(len(coords[0]), np.nan)
    non_monotone = np.zeros(len(coords[0]), bool)
    critical[searched], non_monotone[searched] = found
    result = boundary.Boundary(critical.reshape(cell_shape), non_monotone.reshape(cell_shape))
    for a in result:
        for i in range(len(sweep.optimizer)):
            first = tuple(
                slice(0, 1) if d in lacks and lacks[d][i] else slice(None) for d in cell_dims[1:]
            )
            a[i] = np.broadcast_to(a[i][first], a[i].shape)
    return result


def theory_critical_lr(sweep: Sweep) -> np.ndarray:
    """Closed-form critical lr per cell (dims of :attr:`Sweep.dims` but lr).

    Defined for the SGD family at the cell's momentum and nesterov (Keras defaults, fixed
    overrides or the swept value), with ``0 <= momentum < 1`` and every base option (clipping
    ...) off; nan otherwise, and for shuffled minibatches.
    """
    cell_dims = tuple(d for d in sweep.dims if d != "lr")
    out = np.full(tuple(len(sweep.axis(d)) for d in cell_dims), np.nan)
    swept = sweep.hyperparameters
    cache: dict[tuple, float] = {}
    for i, name in enumerate(sweep.optimizer):
        o = opt.get(name)
        if o.family is not opt.SGD:
            continue
        for hidx in itertools.product(*(range(len(v)) for _, v in swept)):
            settings = {**o.defaults, **sweep.overrides_for(o.family)}
            settings.update(
                {h: v[k] for (h, v), k in zip(swept, hidx, strict=True) if _applies(o.family, h)}
            )
            if any(settings.get(b, off) != off for b, off in opt.BASE_OPTIONS.items()):
                continue
            if not 0 <= settings["momentum"] < 1:
                continue
            dyn = theory.Dynamics(float(settings["momentum"]), bool(settings["nesterov"]))
            for j, n in enumerate(sweep.n):
                x = sweep.problem.dataset(n)[0]
                for k, bs in enumerate(sweep.batch_size):
                    if bs >= n or not sweep.shuffle:
                        key = (n, min(bs, n), dyn)
                        if key not in cache:
                            cache[key] = theory.critical_lr(x, bs, dyn)
                        out[(i, j, k, slice(None), slice(None), *hidx)] = cache[key]
    return out


def _result_dtype(name: str, dtype: str) -> str:
    return "int32" if name.endswith("_epoch") else dtype


def _dataset(
    sweep: Sweep,
    results: dict[str, np.ndarray],
    status: np.ndarray,
    critical: boundary.Boundary,
    curves: Sequence[Curve],
    histories: np.ndarray,
    table: DataTable,
    rows: np.ndarray,
) -> xr.Dataset:
    scale = np.asarray(table.loss_scale, np.float64)[rows[list(sweep.n)]]
    descriptions = {
        "initial_loss": ("loss of the first epoch (History[0])", "1"),
        "final_loss": ("loss of the last epoch (History[-1])", "1"),
        "first_nonfinite_epoch": (
            "first epoch with a non-finite loss or weight (-1: none)",
            "epoch",
        ),
        "first_converged_epoch": ("first epoch with loss <= tol * mean(y^2) (-1: none)", "epoch"),
        "growth_rate": (
            f"per-epoch loss ratio (geometric mean) between the last two {engine.GROWTH_WINDOW}"
            "-epoch window ends with a finite loss",
            "1",
        ),
        "final_w": ("kernel after training", "1"),
        "final_b": ("bias after training", "1"),
        "prediction": (f"model output at x = {QUERY_X:g} after training", "1"),
    }
    dims = sweep.dims
    data_vars: dict[str, tuple] = {"status": (dims, status, outcome.cf_attributes())}
    for name, (text, units) in descriptions.items():
        data_vars[name] = (dims, results[name], {"long_name": text, "units": units})
    cell_dims = tuple(d for d in dims if d != "lr")
    data_vars["critical_lr"] = (
        cell_dims, critical.critical_lr,
        {"long_name": "smallest lr at which training overflows or diverges (measured by "
         f"bisection to {sweep.boundary_rtol:g} relative; nan: none found)"},
    )  # fmt: skip
    data_vars["non_monotone"] = (
        cell_dims, critical.non_monotone.astype(np.int8),
        {"long_name": "1 if a grid lr above critical_lr is stable again"},
    )  # fmt: skip
    data_vars["theory_critical_lr"] = (
        cell_dims, theory_critical_lr(sweep),
        {"long_name": "closed-form critical lr of (Keras) SGD, momentum and Nesterov: "
         "2 c(mu) / lambda_max for one batch, rho(epoch map) = 1 for fixed-order minibatches "
         "(nan: no closed form: adaptive optimizers, momentum outside [0, 1), a base option "
         "such as clipnorm set)"},
    )  # fmt: skip
    xs = [sweep.problem.dataset(n)[0] for n in sweep.n]
    data_vars["loss_scale"] = (
        "n",
        scale,
        {"long_name": "mean(y^2) (1 if all y are 0): converged if loss <= tol * this"},
    )
    data_vars["hessian_max_eigenvalue"] = (
        "n",
        np.array([theory.hessian_eigenvalues(x)[-1] for x in xs]),
        {"long_name": "largest eigenvalue of the full-batch loss Hessian"},
    )
    data_vars["gd_critical_lr"] = (
        "n",
        np.array([theory.gd_critical_lr(x) for x in xs]),
        {"long_name": "full-batch gradient descent critical learning rate 2 / lambda_max"},
    )
    data_vars["loss_history"] = (
        ("curve", "epoch"),
        histories,
        {"long_name": "History losses of selected configurations"},
    )
    coords: dict[str, object] = {d: list(getattr(sweep, d)) for d in DIMS}
    applies = {
        h: list(sweep.applies_to(h)) for h in (*dims[len(DIMS) :], *dict(sweep.optimizer_args))
    }
    for h, values in sweep.hyperparameters:
        coords[h] = (h, np.array(values, np.float64), {
            "long_name": f"swept optimizer hyperparameter {h} (applies to "
            f"{', '.join(applies[h]) or 'no optimizer'}; the other optimizers ran once, "
            "their results repeated along this axis)",
        })  # fmt: skip
    coords["epoch"] = np.arange(1, histories.shape[1] + 1)
    coords["curve"] = [sweep.curve_label(c) for c in curves]
    for field in ("optimizer", "lr", "n", "batch_size", "seed"):
        coords[f"curve_{field}"] = ("curve", [getattr(c, field) for c in curves])
    p = sweep.problem
    attrs = {
        "title": "Stability map of Keras Dense(1) + MSE trained by model.fit",
        "problem": p.describe(),
        "problem_slope": p.slope,
        "problem_intercept": p.intercept,
        "problem_x_start": p.x_start,
        "problem_x_step": p.x_step,
        "problem_standardize": int(p.standardize),
        "dtype": sweep.dtype,
        "shuffle": int(sweep.shuffle),
        "kernel": engine.resolve_kernel(sweep.kernel, sweep.shuffle),
        "tol": sweep.tol,
        "diverge_factor": sweep.diverge_factor,
        "optimizer_args": json.dumps(dict(sweep.optimizer_args)),
        "hyperparameters_apply_to": json.dumps(applies),
        "status_rules": (
            "overflow: a non-finite loss or weight at some epoch; "
            "converged: final_loss <= tol * mean(y^2); "
            "diverging: final_loss > diverge_factor * initial_loss; slow: otherwise"
        ),
        "jax_version": jax.__version__,
        "optax_version": optax.__version__,
        "numpy_version": np.__version__,
        "xarray_version": xr.__version__,
    }
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)
