"""A sweep: everything that defines a stability map, checked where it is given.

A :class:`Sweep` is the Cartesian product ``optimizer x lr x n x batch_size x seed x epochs``
(then any swept hyperparameters) for one :class:`~src.problem.Problem`, plus the settings that
decide how each configuration is run and judged. Constructing one checks every value and
raises :class:`~src.errors.InputError` with one line naming the problem; running it is
:func:`src.runner.run`.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from src import boundary, engine, outcome
from src import optimizers as opt
from src.errors import InputError
from src.problem import DataTable, Problem, variants_table
from src.schema import DATA_DIMS, DIMS, RESERVED_NAMES

DEFAULT_OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "rmsprop", "adagrad")
SEED_LR = 0.01
"""The seed's learning rate: Keras ``SGD``'s default."""



MAX_INT32 = 2**31 - 1
"""The largest batch size (the engine counts samples in int32)."""

LR_DIGITS = 6
"""Significant digits of a log grid's learning rates (the coordinate labels, the values run)."""


def log_grid(start: float, stop: float, count: int) -> tuple[float, ...]:
    """``count`` log-spaced values from ``start`` to ``stop``, rounded to :data:`LR_DIGITS`
    significant digits.

    Rounding makes the decades exact (``1e-5:1:81`` holds 0.01 and 0.001 exactly) and the
    coordinate labels readable; the engine runs the rounded values. Neighbours then stay
    distinct only if they are at least ``10**(1 - LR_DIGITS)`` apart (relative): a denser grid
    is refused, naming how many points fit (:func:`max_log_points`).
    """
    if not (start > 0 and stop > 0):
        raise InputError(f"learning rates must be > 0, got {start}:{stop}")
    if count < 1:
        raise InputError(f"a grid needs at least 1 point, got {count}")
    most = max_log_points(start, stop)
    if count > most:
        raise InputError(
            f"{count:,} log-spaced points from {start:g} to {stop:g} would repeat once rounded "
            f"to {LR_DIGITS} significant digits; at most {most:,} fit"
        )
    values = np.geomspace(start, stop, count) if count > 1 else np.array([start])
    return tuple(float(f"{v:.{LR_DIGITS}g}") for v in values)


def max_log_points(start: float, stop: float) -> int:
    """The most log-spaced points from ``start`` to ``stop`` that stay distinct at
    :data:`LR_DIGITS` significant digits: neighbours a relative ``10**(1 - LR_DIGITS)`` apart
    (the widest gap between such numbers, just above a power of ten)."""
    span = abs(math.log(stop / start))
    return 1 + math.floor(span / math.log1p(10.0 ** (1 - LR_DIGITS)) * (1 + 1e-12))


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
    shuffle: bool = True
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
    noise: tuple[float, ...] = ()
    noise_seed: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "hyperparameters", _swept_axes(self.hyperparameters))
        object.__setattr__(self, "optimizer_args", _fixed_args(self.optimizer_args))
        if self.noise_seed and not self.noise:
            raise InputError("noise seeds without noise levels: give --noise SIGMA[,...] too")
        if self.noise and not self.noise_seed:
            object.__setattr__(self, "noise_seed", (0,))
        if self.noise and self.problem.noise:
            raise InputError("noise is given twice: as the problem's and as the noise axis")
        _check_all(self.noise, lambda v: math.isfinite(v) and v >= 0, "noise", ">= 0 and finite")
        _check_all(self.noise_seed, lambda v: 0 <= v < 2**32, "noise seed", "in [0, 2**32)")
        for name in (*DIMS, *self.data_dims):
            if not getattr(self, name):
                raise InputError(f"the {name} axis is empty")
            if len(set(getattr(self, name))) != len(getattr(self, name)):
                repeated = _repeats(getattr(self, name))
                raise InputError(f"the {name} axis has repeated values: {repeated}")
        for name in self.optimizer:
            opt.get(name)
        _check_all(self.lr, lambda v: math.isfinite(v) and v > 0, "learning rate", "> 0")
        _check_all(self.n, lambda v: v >= 1, "dataset size N", ">= 1")
        rows = self.problem.max_n
        if rows is not None and max(self.n) > rows:
            raise InputError(f"dataset size N = {max(self.n):,} is more than the {rows:,} rows "
                             f"of {self.problem.data} (--n takes its first N rows)")  # fmt: skip
        _check_all(self.batch_size, lambda v: 1 <= v <= MAX_INT32, "batch size",
                   f"in [1, {MAX_INT32:,}]")  # fmt: skip
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
        if self.curves is not None and len(set(self.curves)) != len(self.curves):
            raise InputError(f"a curve is given twice: {_repeats([c.label for c in self.curves])}")
        for c in self.curves or ():
            opt.get(c.optimizer)
            if not (c.lr > 0 and c.n >= 1 and 1 <= c.batch_size <= MAX_INT32
                    and 0 <= c.seed < 2**32):  # fmt: skip
                raise InputError(
                    f"bad curve {c.label}: needs lr > 0, N >= 1, batch size in "
                    f"[1, {MAX_INT32:,}] and seed in [0, 2**32)"
                )
        self._check_hyperparameters()

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
                raise InputError(
                    f"the swept hyperparameter {h} has repeated values: {_repeats(values)}"
                )
            for v in values:
                _check_hyperparameter_value(h, v)
        for h, v in self.optimizer_args:
            _check_hyperparameter_value(h, v)

    @property
    def data_dims(self) -> tuple[str, ...]:
        """The dataset's own axes: the targets' noise and its seed, where noise is swept."""
        return DATA_DIMS if self.noise else ()

    @property
    def dims(self) -> tuple[str, ...]:
        """Dimensions of every per-config variable: :data:`DIMS`, the :attr:`data_dims`, then
        swept hyperparameters."""
        return DIMS + self.data_dims + tuple(h for h, _ in self.hyperparameters)

    def axis(self, dim: str) -> tuple:
        """The coordinate values of dimension ``dim`` (a base or data axis, or a swept
        hyperparameter)."""
        if dim in DIMS or dim in DATA_DIMS:
            return getattr(self, dim)
        return dict(self.hyperparameters)[dim]

    @property
    def variants(self) -> tuple[Problem, ...]:
        """The problem at every point of the :attr:`data_dims`, in C order (the problem
        alone where there are none)."""
        if not self.noise:
            return (self.problem,)
        return tuple(
            self.problem.with_noise(s, k) for s in self.noise for k in self.noise_seed
        )  # fmt: skip

    def data_table(self, sizes: Sequence[int]) -> tuple[DataTable, np.ndarray]:
        """Every variant's datasets of ``sizes``: :func:`src.problem.variants_table`."""
        return variants_table(self.variants, sizes, self.dtype)

    def applies_to(self, name: str) -> tuple[str, ...]:
        """The selected optimizers that have hyperparameter (or base option) ``name``."""
        return tuple(o for o in self.optimizer if opt.get(o).family.takes(name))

    def overrides_for(self, family: opt.Family) -> dict[str, float]:
        """Fixed overrides (``optimizer_args``) that apply to ``family``."""
        return {h: v for h, v in self.optimizer_args if family.takes(h)}

    def swept_for(self, family: opt.Family) -> tuple[str, ...]:
        """The swept hyperparameters that ``family`` has (the others are broadcast)."""
        return tuple(h for h, _ in self.hyperparameters if family.takes(h))

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
        rows = self.problem.max_n
        return tuple(
            c for c in seed_curves(self.optimizer, self.batch_size[0], self.seed[0])
            if rows is None or c.n <= rows
        )  # fmt: skip



def _repeats(values: Sequence[object], shown: int = 5) -> str:
    """The values that occur more than once (a few of them: an axis can be long)."""
    twice = [v for v, k in collections.Counter(values).items() if k > 1]
    more = f" and {len(twice) - shown:,} more" if len(twice) > shown else ""
    return ", ".join(map(str, twice[:shown])) + more


def _check_all(values: Sequence[float], ok: Callable[[float], bool], what: str, rule: str) -> None:
    for v in values:
        if not ok(v):
            raise InputError(f"{what} must be {rule}, got {v}")


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


def families(names: Sequence[str]) -> dict[str, list[str]]:
    """``names`` grouped by optimizer family (one compiled program each), in order."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(opt.get(name).family.name, []).append(name)
    return groups
