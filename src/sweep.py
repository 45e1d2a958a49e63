"""A sweep -- the grid of configurations of a stability map -- and running it.

A :class:`Sweep` is the Cartesian product ``optimizer x lr x n x batch_size x seed x epochs``
for one :class:`~src.problem.Problem`. :func:`run` simulates every configuration with the
engine (one compiled program per optimizer family, fed in fixed-size chunks) and returns a
labelled :class:`xarray.Dataset` with one variable per per-config figure, plus the full loss
history of a few chosen :class:`Curve` configurations.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import xarray as xr

from src import engine, outcome, theory
from src import optimizers as opt
from src.errors import InputError
from src.problem import QUERY_X, DataTable, Problem, data_table

DIMS = ("optimizer", "lr", "n", "batch_size", "seed", "epochs")
"""Dimensions of every per-config variable, in storage order."""

DEFAULT_OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "rmsprop", "adagrad")
SEED_LR = 0.01
"""The seed's learning rate: Keras ``SGD``'s default."""

BYTES_PER_CONFIG = 256
"""Host memory per configuration, inputs and results together, generously rounded up."""

CHUNK_ELEMENTS = 1 << 17
"""Default chunk: about this many batch slots (configs x batches x width) per engine call.

Small enough for the working set to stay in cache (4096 full-batch configs of width 32 ran
~25% faster than 32768 on the 2-core machine), large enough to amortise the call."""


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

    ``curves=None`` keeps the default :func:`seed_curves`; ``chunk_size=0`` picks one.
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

    def __post_init__(self) -> None:
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
        _check_all(self.epochs, lambda v: v >= 1, "epochs", ">= 1")
        _check_all(self.seed, lambda v: 0 <= v < 2**32, "seed", "in [0, 2**32)")
        if not (math.isfinite(self.tol) and self.tol > 0):
            raise InputError(f"tol must be > 0, got {self.tol}")
        if not (math.isfinite(self.diverge_factor) and self.diverge_factor > 0):
            raise InputError(f"diverge_factor must be > 0, got {self.diverge_factor}")
        if self.dtype not in ("float32", "float64"):
            raise InputError(f"dtype must be float32 or float64, got {self.dtype!r}")
        if self.chunk_size < 0:
            raise InputError(f"chunk size must be >= 0 (0 = automatic), got {self.chunk_size}")
        for c in self.curves or ():
            opt.get(c.optimizer)
            if not (c.lr > 0 and c.n >= 1 and c.batch_size >= 1 and 0 <= c.seed < 2**32):
                raise InputError(f"bad curve {c.label}: needs lr > 0, N >= 1, batch size >= 1")
        needed, available = self.estimated_bytes(), available_memory()
        if needed > available // 2:
            limit = max(1, (available // 2) // BYTES_PER_CONFIG)
            raise InputError(
                f"the grid has {self.n_configs:,} configurations and needs about "
                f"{needed / 2**30:.1f} GiB, more than half of the {available / 2**30:.1f} GiB "
                f"available; split it into runs of at most {limit:,} configurations "
                f"(e.g. fewer --lr points, or a few --optimizers or --n ranges per run)"
            )

    def estimated_bytes(self) -> int:
        """Host memory the run needs: per-config inputs and results, datasets, histories."""
        curves = len(self.resolved_curves)
        return (
            self.n_configs * BYTES_PER_CONFIG
            + (len(self.n) + curves) * max(self.n) * 32
            + curves * max(self.epochs) * 16
        )

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(getattr(self, d)) for d in DIMS)

    @property
    def n_configs(self) -> int:
        return math.prod(self.shape)

    @property
    def resolved_curves(self) -> tuple[Curve, ...]:
        if self.curves is not None:
            return self.curves
        return seed_curves(self.optimizer, self.batch_size[0], self.seed[0])


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


def _check_all(values: Sequence[float], ok: Callable[[float], bool], what: str, rule: str) -> None:
    for v in values:
        if not ok(v):
            raise InputError(f"{what} must be {rule}, got {v}")


@dataclasses.dataclass
class _FlatConfigs:
    """Flat per-config columns (host, float64 / int64) for optimizers of one family."""

    columns: dict[str, np.ndarray]  # learning_rate, n, batch_size, seed, epochs
    hyperparameters: dict[str, np.ndarray]

    @staticmethod
    def grid(names: Sequence[str], axes: dict[str, Sequence], family: opt.Family) -> _FlatConfigs:
        """The product ``names x lr x n x batch_size x seed x epochs``, C order."""
        grids = np.meshgrid(
            np.arange(len(names)), *(np.asarray(axes[d]) for d in DIMS[1:]), indexing="ij"
        )
        which, *rest = (g.ravel() for g in grids)
        columns = dict(zip(("learning_rate", *DIMS[2:]), rest, strict=True))
        return _FlatConfigs(columns, _hyperparameters(names, which, family))

    @staticmethod
    def of_curves(curves: Sequence[Curve], family: opt.Family, epochs: int) -> _FlatConfigs:
        columns = {
            "learning_rate": np.array([c.lr for c in curves]),
            "n": np.array([c.n for c in curves]),
            "batch_size": np.array([c.batch_size for c in curves]),
            "seed": np.array([c.seed for c in curves]),
            "epochs": np.full(len(curves), epochs),
        }
        which = np.arange(len(curves))
        return _FlatConfigs(columns, _hyperparameters([c.optimizer for c in curves], which, family))

    def __len__(self) -> int:
        return len(self.columns["n"])

    def chunk(self, start: int, size: int, rows: np.ndarray, dtype: str) -> engine.Configs:
        """Configs ``start .. start+size`` (repeating the last one to fill a short chunk)."""
        idx = np.minimum(np.arange(start, start + size), len(self) - 1)
        c = self.columns
        return engine.Configs(
            learning_rate=jnp.asarray(c["learning_rate"][idx], dtype),
            hyperparameters={
                h: jnp.asarray(v[idx], dtype) for h, v in self.hyperparameters.items()
            },
            data_row=jnp.asarray(rows[c["n"][idx]], jnp.int32),
            n=jnp.asarray(c["n"][idx], jnp.int32),
            batch_size=jnp.asarray(c["batch_size"][idx], jnp.int32),
            epochs=jnp.asarray(c["epochs"][idx], jnp.int32),
            seed=jnp.asarray(c["seed"][idx], jnp.uint32),
        )


def _hyperparameters(
    names: Sequence[str], which: np.ndarray, family: opt.Family
) -> dict[str, np.ndarray]:
    """Builder arguments (Keras defaults) of configs whose optimizer is ``names[which]``."""
    return family.arguments(
        {
            h: np.array([opt.get(m).defaults[h] for m in names])[which]
            for h in family.hyperparameters
        }
    )


def _families(names: Sequence[str]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(opt.get(name).family.name, []).append(name)
    return groups


def _chunk_size(sweep: Sweep, shapes: engine.Shapes, count: int) -> int:
    if sweep.chunk_size:
        return min(sweep.chunk_size, count)
    per_config = shapes.n_batches * shapes.batch_width
    return max(1, min(count, CHUNK_ELEMENTS // per_config))


def _simulate_family(
    flat: _FlatConfigs,
    family: opt.Family,
    table: DataTable,
    rows: np.ndarray,
    sweep: Sweep,
    shapes: engine.Shapes,
    *,
    history: bool,
    progress: Callable[[int], None] | None,
) -> tuple[dict[str, np.ndarray], np.ndarray | None, float, float]:
    """Run every config of ``flat``; returns results, histories, compile and compute seconds."""
    size = _chunk_size(sweep, shapes, len(flat))
    tol = jnp.asarray(sweep.tol, sweep.dtype)
    static = dict(family=family, shapes=shapes, shuffle=sweep.shuffle, history=history)
    t0 = time.perf_counter()
    compiled = engine.simulate.lower(
        flat.chunk(0, size, rows, sweep.dtype), table, tol, **static
    ).compile()
    compile_s = time.perf_counter() - t0
    parts: list[engine.Summary] = []
    curves: list[np.ndarray] = []
    compute_s = 0.0
    for start in range(0, len(flat), size):
        configs = flat.chunk(start, size, rows, sweep.dtype)
        t0 = time.perf_counter()
        summary, losses = jax.block_until_ready(compiled(configs, table, tol))
        compute_s += time.perf_counter() - t0
        keep = min(size, len(flat) - start)
        parts.append(engine.Summary(*(np.asarray(a)[:keep] for a in summary)))
        if history:
            curves.append(np.asarray(losses)[:keep])
        if progress:
            progress(keep)
    results = {k: np.concatenate([getattr(p, k) for p in parts]) for k in engine.Summary._fields}
    return results, (np.concatenate(curves) if history else None), compile_s, compute_s


def run(sweep: Sweep, progress: Callable[[int], None] | None = None) -> tuple[xr.Dataset, RunStats]:
    """Simulate every configuration of ``sweep``; returns the labelled map and run statistics.

    ``progress(k)`` is called after every chunk with the number of configs it finished.
    """
    with jax.enable_x64(sweep.dtype == "float64"):
        return _run(sweep, progress)


def _run(sweep: Sweep, progress: Callable[[int], None] | None) -> tuple[xr.Dataset, RunStats]:
    wall0 = time.perf_counter()
    curves = sweep.resolved_curves
    sizes = sorted(set(sweep.n) | {c.n for c in curves})
    rows = np.zeros(max(sizes) + 1, np.int64)  # dataset size -> its row of the table
    rows[sizes] = np.arange(len(sizes))
    table = data_table([sweep.problem.dataset(n) for n in sizes], sweep.dtype)
    shapes = engine.Shapes.covering(sweep.n, sweep.batch_size, sweep.epochs)
    axes = {d: getattr(sweep, d) for d in DIMS}
    results = {
        k: np.empty(sweep.shape, dtype=_result_dtype(k, sweep.dtype))
        for k in engine.Summary._fields
    }
    compile_s = compute_s = 0.0
    programs = 0
    opt_index = {name: i for i, name in enumerate(sweep.optimizer)}
    for names in _families(sweep.optimizer).values():
        family = opt.get(names[0]).family
        flat = _FlatConfigs.grid(names, axes, family)
        out, _, c_s, r_s = _simulate_family(
            flat, family, table, rows, sweep, shapes, history=False, progress=progress
        )
        compile_s, compute_s, programs = compile_s + c_s, compute_s + r_s, programs + 1
        block = np.array([opt_index[n] for n in names])
        for k, v in out.items():
            results[k][block] = v.reshape((len(names), *sweep.shape[1:]))

    histories = np.full((len(curves), max(sweep.epochs)), np.nan, sweep.dtype)
    for family_name, names in _families([c.optimizer for c in curves]).items():
        family = opt.get(names[0]).family
        members = [
            i for i, c in enumerate(curves) if opt.get(c.optimizer).family.name == family_name
        ]
        chosen = [curves[i] for i in members]
        flat = _FlatConfigs.of_curves(chosen, family, max(sweep.epochs))
        curve_shapes = engine.Shapes.covering(
            [c.n for c in chosen], [c.batch_size for c in chosen], sweep.epochs
        )
        _, losses, c_s, _ = _simulate_family(
            flat, family, table, rows, sweep, curve_shapes, history=True, progress=None
        )
        compile_s, programs = compile_s + c_s, programs + 1
        histories[members] = losses[:, : histories.shape[1]]

    ds = _dataset(sweep, results, curves, histories, table, rows)
    stats = RunStats(
        n_configs=sweep.n_configs,
        config_epochs=int(sweep.n_configs // len(sweep.epochs) * sum(sweep.epochs)),
        programs=programs,
        compile_seconds=compile_s,
        compute_seconds=compute_s,
        wall_seconds=time.perf_counter() - wall0,
        devices=tuple(str(d) for d in jax.devices()),
    )
    return ds, stats


def _result_dtype(name: str, dtype: str) -> str:
    return "int32" if name.endswith("_epoch") else dtype


def _dataset(
    sweep: Sweep,
    results: dict[str, np.ndarray],
    curves: Sequence[Curve],
    histories: np.ndarray,
    table: DataTable,
    rows: np.ndarray,
) -> xr.Dataset:
    n_rows = rows[list(sweep.n)]
    scale = np.asarray(table.loss_scale, np.float64)[n_rows]
    scale_b = scale.reshape(1, 1, -1, 1, 1, 1)
    status = outcome.classify(
        results["initial_loss"],
        results["final_loss"],
        results["first_nonfinite_epoch"],
        scale_b,
        sweep.tol,
        sweep.diverge_factor,
    )
    descriptions = {
        "initial_loss": ("loss of the first epoch (History[0])", "1"),
        "final_loss": ("loss of the last epoch (History[-1])", "1"),
        "first_nonfinite_epoch": (
            "first epoch with a non-finite loss or weight (-1: none)",
            "epoch",
        ),
        "first_converged_epoch": ("first epoch with loss <= tol * mean(y^2) (-1: none)", "epoch"),
        "growth_rate": (
            f"median per-epoch loss ratio over the last {engine.GROWTH_WINDOW} finite epochs",
            "1",
        ),
        "final_w": ("kernel after training", "1"),
        "final_b": ("bias after training", "1"),
        "prediction": (f"model output at x = {QUERY_X:g} after training", "1"),
    }
    data_vars: dict[str, tuple] = {"status": (DIMS, status, outcome.cf_attributes())}
    for name, (text, units) in descriptions.items():
        data_vars[name] = (DIMS, results[name], {"long_name": text, "units": units})
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
    coords["epoch"] = np.arange(1, histories.shape[1] + 1)
    coords["curve"] = [c.label for c in curves]
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
        "tol": sweep.tol,
        "diverge_factor": sweep.diverge_factor,
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
