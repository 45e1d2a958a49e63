"""Running a sweep: the map, its loss curves, its measured boundary, as one labelled dataset.

:func:`run` checks that the grid fits in memory, feeds every optimizer family's block of
the grid (:class:`~src.configs.GridConfigs`) through one :class:`~src.simulator.Simulator`
chunk by chunk (classifying each chunk into the map as it finishes, and saving it for
``--resume``), keeps the whole history of the few :class:`~src.spec.Curve` configurations
(read off the map's own run where they are cells of it, :class:`CurveCapture`; trained
apart otherwise), bisects every cell's critical learning rate with the engine
(:func:`src.boundary.search`), evaluates the closed forms on the grid (:mod:`src.theory`),
and lays it all out with :func:`src.schema.to_dataset`.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import jax
import numpy as np
import xarray as xr

from src import boundary, engine, outcome, schema, theory
from src import optimizers as opt
from src.configs import FlatConfigs, GridConfigs
from src.errors import InputError
from src.problem import DataTable
from src.simulator import Simulator
from src.spec import Curve, Sweep, families

if TYPE_CHECKING:
    from src.resume import WorkStore

def bytes_per_config(dtype: str) -> int:
    """Host memory per configuration: the map's own arrays (six summaries in ``dtype``, two
    int32 epochs and the int8 status: 33 bytes in float32) twice over, for what writing and
    reporting the map take on top (measured: 1.6 times; ``python -m tools.memory``).
    Configurations are generated and simulated chunk by chunk: nothing else grows with the
    grid."""
    return 2 * (6 * np.dtype(dtype).itemsize + 2 * 4 + 1)


SAMPLED_LOSS_BYTES = 64 << 20
"""The most host memory the map's own sampled losses (:class:`src.schema.SampledLosses`, for
the page's stored curves) may take: a million float32 configurations at 16 epochs. A larger
map keeps none, and its page re-runs the cells it displays instead."""


def sampled_epochs(sweep: Sweep) -> np.ndarray:
    """The epochs at which the page samples a stored loss curve of any of the map's
    configurations (:func:`src.page.curve_epochs` of each epoch count swept), sorted."""
    from src.page import curve_epochs  # the page decides what it draws; imported late

    return np.unique(np.concatenate([curve_epochs(e) for e in sweep.epochs]))


def sampled_loss_bytes(sweep: Sweep) -> int:
    """Host memory of the map's sampled losses (their values and the recorded flags); 0 where
    none are kept (more than :data:`SAMPLED_LOSS_BYTES`). Asks nothing of JAX: the memory
    check runs before its backend may start (``jax.distributed``, XLA flags)."""
    k = len(sampled_epochs(sweep))
    size = sweep.n_configs * (k * np.dtype(sweep.dtype).itemsize + 1)
    return size if size <= SAMPLED_LOSS_BYTES else 0



@dataclasses.dataclass(frozen=True)
class RunStats:
    """How the run went: sizes and seconds (compute excludes compilation). The phases' wall
    times, each inside ``wall_seconds``: ``simulate_seconds`` the map's chunks,
    ``curves_seconds`` the loss curves, ``boundary_seconds`` the measured-critical-lr search.
    ``report_started``: the :func:`time.perf_counter` at which the report began, set by the
    caller that writes it (``dataclasses.replace``); :func:`src.report.publish` counts
    ``report_seconds`` from it (``None``: not known). ``sampled``: the map's own losses at
    the page's curve epochs (:func:`sampled_loss_bytes`: ``None`` where none are kept), which
    :func:`src.report.publish` hands to the page instead of re-running its cells."""

    n_configs: int
    config_epochs: int
    programs: int
    compile_seconds: float
    compute_seconds: float
    wall_seconds: float
    devices: tuple[str, ...]
    simulate_seconds: float = 0.0
    curves_seconds: float = 0.0
    boundary_seconds: float = 0.0
    report_started: float | None = None
    sampled: schema.SampledLosses | None = dataclasses.field(
        default=None, repr=False, compare=False
    )

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


def estimated_bytes(sweep: Sweep) -> int:
    """Host memory the run needs: the map (:func:`bytes_per_config`), datasets, histories,
    the map's sampled losses (:func:`sampled_loss_bytes`)."""
    curves = sweep.resolved_curves
    n_max = max([*sweep.n, *(c.n for c in curves)])
    return (
        sweep.n_configs * bytes_per_config(sweep.dtype)
        + sampled_loss_bytes(sweep)
        + (len(sweep.n) + len(curves)) * n_max * 32
        + len(curves) * max(sweep.epochs) * 16
    )


def check_memory(sweep: Sweep) -> None:
    """Refuse (:class:`~src.errors.InputError`) a grid needing more than half the memory
    available, naming how many configurations a run could have instead."""
    needed, available = estimated_bytes(sweep), available_memory()
    if needed > available // 2:
        limit = max(1, (available // 2) // bytes_per_config(sweep.dtype))
        raise InputError(
            f"the grid has {sweep.n_configs:,} configuration{'s' if sweep.n_configs != 1 else ''}"
            f" and needs about "
            f"{needed / 2**30:.1f} GiB, more than half of the {available / 2**30:.1f} GiB "
            f"available; split it into runs of at most {limit:,} configurations "
            f"(e.g. fewer --lr points, or a few --optimizers or --n ranges per run)"
        )



Phase = Callable[[str, int, str], Callable[[int], None]]
"""A progress hook for the phases after the map: ``tick = phase(name, total, unit)`` starts
one, ``tick(k)`` says ``k`` more of its ``total`` units are done."""


class _Phases:
    """The later phases' progress (:data:`Phase`; ``hook=None``: none shown). A phase with
    nothing to do is not started; every phase started ends ticked to its total exactly
    (where a prediction was off, the rest comes at its end)."""

    def __init__(self, hook: Phase | None) -> None:
        self.hook, self.tick, self.left = hook, None, 0

    def start(self, name: str, total: int, unit: str) -> None:
        self.finish()
        if self.hook is not None and total > 0:
            self.tick, self.left = self.hook(name, total, unit), total

    def advance(self, k: int) -> None:
        k = min(k, self.left)
        if self.tick is not None and k > 0:
            self.left -= k
            self.tick(k)

    def finish(self) -> None:
        self.advance(self.left)
        self.tick = None


def run(
    sweep: Sweep,
    progress: Callable[[int], None] | None = None,
    phase: Phase | None = None,
    work: WorkStore | None = None,
) -> tuple[xr.Dataset, RunStats]:
    """Simulate every configuration of ``sweep``; returns the labelled map and run statistics.

    ``progress(k)`` is called after every chunk of the map with the number of configs it
    finished. ``phase`` (a :data:`Phase`) is told each later phase that has work:
    ``"loss curves"`` (unit ``"family"``: one engine run of each optimizer family's curves),
    then the boundary search's :data:`src.boundary.REFINING` and
    :data:`src.boundary.BISECTING` (unit ``"config"``: the configurations the engine
    computes, each call padded to its family's full width); each is ticked to its total.

    With ``work`` (a :class:`src.resume.WorkStore` opened for this sweep), every finished chunk
    is also saved there, and the chunks it already holds are read instead of simulated
    (:func:`resumed_configs` counts them); the map is the same either way.
    """
    check_memory(sweep)
    with jax.enable_x64(sweep.dtype == "float64"):
        return _run(sweep, progress, _Phases(phase), work)


def resumed_configs(sweep: Sweep, work: WorkStore) -> int:
    """Configurations of the map (repeats along swept axes included) that ``work`` holds."""
    total = 0
    for f, names in enumerate(families(sweep.optimizer).values()):
        grid = GridConfigs.of(sweep, names)
        total += work.finished(f).overlap(0, len(grid)) * grid.repeats(sweep)
    return total


def _run(
    sweep: Sweep,
    progress: Callable[[int], None] | None,
    phases: _Phases,
    work: WorkStore | None = None,
) -> tuple[xr.Dataset, RunStats]:
    wall0 = time.perf_counter()
    curves = sweep.resolved_curves
    table, rows = sweep.data_table([*sweep.n, *(c.n for c in curves)])  # rows[variant, n]
    sim = Simulator(  # every device of every process: the map is sharded over all of them
        table, rows, sweep.dtype, sweep.tol, sweep.shuffle, sweep.chunk_size, sweep.kernel,
        devices=tuple(jax.devices()),
    )
    shapes = engine.Shapes.covering(sweep.n, sweep.batch_size, sweep.epochs)

    features = (table.d,) if table.d > 1 else ()  # several: a kernel weight each
    results = {
        k: np.empty(sweep.shape + (features if k == "final_w" else ()),
                    schema.result_dtype(k, sweep.dtype))
        for k in engine.Summary._fields
    }  # fmt: skip
    status = np.empty(sweep.shape, np.int8)
    sampled = None
    # A resumed run's saved chunks have no losses: its page re-runs its cells anyway, so the
    # rest of the map need not keep any. Nor does a run of several processes, which would
    # gather every chunk's whole history across them (the same in every process: each must
    # run the same programs).
    if (
        sampled_loss_bytes(sweep)
        and jax.process_count() == 1
        and (work is None or not resumed_configs(sweep, work))
    ):
        epochs = sampled_epochs(sweep)
        sampled = schema.SampledLosses(
            epochs,
            np.full((sweep.n_configs, len(epochs)), np.nan, sweep.dtype),
            np.zeros(sweep.n_configs, bool),
        )
    # The closed forms are NumPy (LAPACK's eigenvalues, most of their ~1 s on the default
    # map), computed in a thread while this one feeds the engine, each mostly outside the GIL.
    theory_thread = ThreadPoolExecutor(1, thread_name_prefix="theory")
    closed = [theory_thread.submit(theory_critical_lr, sweep, fixed) for fixed in (False, True)]
    theory_thread.shutdown(wait=False)
    histories = np.full((len(curves), max(sweep.epochs)), np.nan, sweep.dtype)
    # A curve that is a cell of the map is read off the map's own run where that keeps its
    # losses: the same program's numbers, and no program of its own to compile.
    captured = CurveCapture(sweep, curves, histories) if sampled is not None else None
    history = map_history(sweep, sampled, captured)
    if history is not True:
        captured = None
    t0 = time.perf_counter()
    simulated = _simulate_map(
        sweep, sim, shapes, table, rows, results, status, progress, work, sampled, captured,
        history,
    )
    simulate_seconds = time.perf_counter() - t0

    t0 = time.perf_counter()
    pending = [i for i in range(len(curves)) if captured is None or i not in captured.done]
    curve_families = families([curves[i].optimizer for i in pending])
    phases.start("loss curves", len(curve_families), "family")
    for names in curve_families.values():
        members = [i for i in pending if curves[i].optimizer in names]
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
        phases.advance(1)
    curves_seconds = time.perf_counter() - t0

    t0 = time.perf_counter()
    critical = _measured_boundary(sweep, status, sim, shapes, table, rows, phases, history)
    phases.finish()
    boundary_seconds = time.perf_counter() - t0
    ds = schema.to_dataset(
        sweep, results, status, critical, closed[0].result(), closed[1].result(),
        per_n_variables(sweep, table, rows),
        curves, histories,
    )  # fmt: skip
    stats = RunStats(
        n_configs=sweep.n_configs,
        config_epochs=simulated * sum(sweep.epochs) // len(sweep.epochs),
        programs=sim.programs,
        compile_seconds=sim.compile_seconds,
        compute_seconds=sim.compute_seconds,
        wall_seconds=time.perf_counter() - wall0,
        devices=tuple(str(d) for d in jax.devices()),
        simulate_seconds=simulate_seconds,
        curves_seconds=curves_seconds,
        boundary_seconds=boundary_seconds,
        sampled=sampled,
    )
    return ds, stats


WHOLE_HISTORY_EPOCHS = 1 << 26
"""The most config-epochs of History losses a map computes to read its loss curves off its
own run (:class:`CurveCapture`). A whole history costs ~6 ns per config-epoch more than the
sampled epochs' (2-core CPU, full-batch SGD: +3 s on 2^20 configs x 500 epochs), ~0.4 s at
this bound, less than the curve programs it saves compile on a first run (the default job's
curves took 3.9 s apart; its map is 1.6e7 config-epochs). A larger map keeps only the
sampled epochs' losses as it trains (:data:`src.engine.History`) and its curves run apart."""


def map_history(
    sweep: Sweep, sampled: schema.SampledLosses | None, captured: CurveCapture | None
) -> engine.History:
    """What the map's engine runs return of each config's losses: none without ``sampled``;
    every epoch's where a loss curve is read off the map (``captured``) and that costs at
    most :data:`WHOLE_HISTORY_EPOCHS`; else just those of ``sampled.epochs``."""
    if sampled is None:
        return False
    if captured is not None and captured.wanted and (
        sweep.n_configs * max(sweep.epochs) <= WHOLE_HISTORY_EPOCHS
    ):
        return True
    return tuple(int(e) for e in sampled.epochs)


class CurveCapture:
    """The loss curves that are cells of the map, picked out of the map's chunks as they
    finish (:func:`_simulate_map` with its histories): the map's own program computed them,
    so a separate run would only repeat its numbers (bit for bit: padding and chunking change
    none), after compiling a program of its own.

    A curve is a cell when its optimizer, lr, N, batch size and seed are on the map's axes;
    it trains for the longest epoch count, on the first point of any data axes, with the
    first value of each swept hyperparameter (:meth:`src.spec.Sweep.curve_settings`)."""

    def __init__(self, sweep: Sweep, curves: Sequence[Curve], histories: np.ndarray) -> None:
        self.histories = histories
        self.done: set[int] = set()
        self._cells: dict[int, list[int]] = {}
        strides = np.cumprod((1, *sweep.shape[:0:-1]))[::-1]
        top = sweep.epochs.index(max(sweep.epochs))
        for i, c in enumerate(curves):
            at = [_index(sweep.optimizer, c.optimizer), _index(sweep.lr, c.lr),
                  _index(sweep.n, c.n), _index(sweep.batch_size, c.batch_size),
                  _index(sweep.seed, c.seed), top]  # fmt: skip
            if None not in at:  # the data and hyperparameter axes: their first points
                cell = int(np.dot(at, strides[: len(at)]))
                self._cells.setdefault(cell, []).append(i)

    @property
    def wanted(self) -> bool:
        """Whether any curve is a cell of the map."""
        return bool(self._cells)

    def take(self, where: np.ndarray, losses: np.ndarray) -> None:
        """From a finished chunk: its flat map positions ``(rows, repeats)`` and histories."""
        if not self._cells:
            return
        hit = np.isin(where, list(self._cells))
        for row, k in zip(*np.nonzero(hit), strict=True):
            for i in self._cells[int(where[row, k])]:
                self.histories[i] = losses[row, : self.histories.shape[1]]
                self.done.add(i)


def _index(axis: Sequence[object], value: object) -> int | None:
    found = [i for i, v in enumerate(axis) if v == value]
    return found[0] if found else None


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
    sampled: schema.SampledLosses | None = None,
    captured: CurveCapture | None = None,
    history: engine.History = False,
) -> int:
    """Fill ``results`` and ``status`` (the map's arrays) chunk by chunk, family by family;
    returns how many configurations were simulated (not read from ``work``).

    Each finished chunk is classified and written into the map at once (and saved in
    ``work``), so nothing but the map itself grows with the grid. With ``sampled``, the map
    runs with its History losses (``history``, :func:`map_history`) and each chunk's, at
    ``sampled.epochs``, are kept there (a whole history is dropped as soon as it is
    sampled), except the whole histories of the loss curves that ``captured`` looks for.
    """
    scale = np.asarray(table.loss_scale, np.float64)[rows]  # (variant, N) -> mean(y^2)
    optimal = np.asarray(table.optimal_loss, np.float64)[rows]  # (variant, N) -> L*
    opt_index = {name: i for i, name in enumerate(sweep.optimizer)}
    into = {k: v.reshape(-1, *v.shape[status.ndim :]) for k, v in results.items()}
    into["status"] = status.reshape(-1)
    simulated = 0
    try:
        for f, names in enumerate(families(sweep.optimizer).values()):
            grid = GridConfigs.of(sweep, names)
            block = np.array([opt_index[n] for n in names])
            simulated += _simulate_family(
                sweep, sim, shapes, (scale, optimal), f, grid, block, into, progress, work,
                sampled, captured, history,
            )  # fmt: skip
    finally:
        if work is not None:
            work.flush()  # what finished before an interruption is kept
    return simulated


def _simulate_family(
    sweep: Sweep,
    sim: Simulator,
    shapes: engine.Shapes,
    floors: tuple[np.ndarray, np.ndarray],
    f: int,
    grid: GridConfigs,
    block: np.ndarray,
    into: dict[str, np.ndarray],
    progress: Callable[[int], None] | None,
    work: WorkStore | None,
    sampled: schema.SampledLosses | None = None,
    captured: CurveCapture | None = None,
    history: engine.History = False,
) -> int:
    """One family's part of :func:`_simulate_map` (``f``: its index, ``block``: its
    optimizers' indices on the map's optimizer axis; ``into``: the map's arrays, flat;
    ``floors``: ``mean(y^2)`` and ``L*`` by problem variant and dataset size; ``sampled``:
    where the chunks' sampled losses go, if anywhere)."""
    scale, optimal = floors
    repeats = grid.repeats(sweep)
    done = work.finished(f) if work is not None else None
    simulated = 0

    def place(start: int, s: engine.Summary) -> np.ndarray:
        """Writes a chunk into the map; returns its flat positions ``(rows, repeats)``."""
        at, where = grid.positions(sweep, block, start, start + len(s.final_loss))
        values = {
            k: np.asarray(v, into[k].dtype) for k, v in zip(engine.Summary._fields, s, strict=True)
        }
        dataset = (grid.variant(at), grid.axes[1][at[2]])
        code = outcome.classify(
            values["initial_loss"], values["final_loss"], values["first_nonfinite_epoch"],
            scale[dataset], sweep.tol, sweep.diverge_factor, optimal[dataset],
        )  # fmt: skip
        for k, v in (*values.items(), ("status", code)):
            into[k][where] = v[:, None]
        return where

    def finished(start: int, s: engine.Summary, losses: np.ndarray | None) -> None:
        nonlocal simulated
        stop = start + len(s.final_loss)
        where = place(start, s)
        if sampled is not None and losses is not None:
            picked = losses if isinstance(history, tuple) else losses[:, sampled.epochs - 1]
            sampled.losses[where] = picked[:, None, :]
            sampled.recorded[where] = True
            if captured is not None:
                captured.take(where, losses)
        simulated += stop - start
        if work is not None:
            work.add(f, start, s)
        if progress is not None:
            new = stop - start - (done.overlap(start, stop) if done is not None else 0)
            progress(new * repeats)

    if work is not None:
        for start, s in work.load(f):
            place(start, s)
    sim.run(
        grid.family, grid, shapes, history=history, each=finished,
        skip=None if done is None else done.covers,
    )  # fmt: skip
    if work is not None:
        work.flush()
    return simulated


BOUNDARY_PIECE = (256, 4096)
"""Bounds of the configs per engine call of the boundary search: a power of two that holds a
bisection round (fixed order: of all the family's cells; shuffled: of one group's), clipped to
these. Every call of a family has that size: one compiled program for all of them."""
ALL_BLOCKS = 1 << 40
"""What a shuffled boundary round pads its configs to (:meth:`src.simulator.Simulator.run`'s
``pad_to``): more than any round has, so that its chunks are full-size whatever its count."""
THEORY_WINDOWS = 8
"""The most closed-form unstable windows per cell simulated as candidates."""


def _measured_boundary(
    sweep: Sweep,
    status: np.ndarray,
    sim: Simulator,
    shapes: engine.Shapes,
    table: DataTable,
    rows: np.ndarray,
    phases: _Phases | None = None,
    history: engine.History = False,
) -> boundary.Boundary:
    """Critical lr of every cell (all dims but lr), refined and bisected with the engine
    (:func:`src.boundary.search`; the closed form's windows, where there is one, as
    candidates: :func:`_theory_candidates`). ``phases`` is told the search's phases, in
    configurations the engine computes (padding included), and ticked after each call.

    Cells that differ only in a swept hyperparameter their optimizer does not have are the
    same run: only the first of them is searched and its result repeated. Every engine call
    of a family has the same size (:data:`BOUNDARY_PIECE`), so the whole search compiles one
    program per family. Shuffled, its calls are laid out as the map's (its groups' width,
    and ``history`` as the map ran), so that they run the program the map compiled.
    """
    dims = sweep.dims
    cell_dims = tuple(d for d in dims if d != "lr")
    by_cell = np.moveaxis(status, dims.index("lr"), -1)  # (optimizer, n, bs, seed, epochs, ..., lr)
    cell_shape = by_cell.shape[:-1]
    coords = [np.ravel(g) for g in np.meshgrid(*(np.arange(k) for k in cell_shape), indexing="ij")]
    values = {d: np.asarray(sweep.axis(d))[c] for d, c in zip(cell_dims, coords, strict=True)}
    families = np.array([opt.get(o).family.name for o in values["optimizer"]])
    scale = np.asarray(table.loss_scale, np.float64)
    optimal = np.asarray(table.optimal_loss, np.float64)
    lacks = {  # per swept hyperparameter: which optimizers (by index) do not have it
        h: np.array([not opt.get(o).family.takes(h) for o in sweep.optimizer])
        for h, _ in sweep.hyperparameters
    }
    variant = (  # each cell's problem variant: its place along the data dimensions
        np.ravel_multi_index([coords[cell_dims.index(d)] for d in sweep.data_dims],
                             [len(sweep.axis(d)) for d in sweep.data_dims])
        if sweep.data_dims else np.zeros(len(coords[0]), np.int64)
    )  # fmt: skip
    values["variant"] = variant
    searched = np.ones(len(coords[0]), bool)
    for h, lacking in lacks.items():
        searched &= ~lacking[coords[0]] | (coords[cell_dims.index(h)] == 0)
    searched = np.flatnonzero(searched)
    lo_piece, hi_piece = BOUNDARY_PIECE
    piece, kinds = {}, {}
    for name in dict.fromkeys(families[searched]):
        own = searched[families[searched] == name]
        per_call = len(own)  # cells in one call: all of them; shuffled, those of one group
        if sweep.shuffle:
            keys = np.stack([values[d][own] for d in ("n", "batch_size", "seed", "variant")])
            per_call = int(np.unique(keys, axis=1, return_counts=True)[1].max())
        wanted = per_call * (boundary.SECTIONS - 1)  # a bisection round in one call
        piece[name] = min(hi_piece, max(lo_piece, 1 << (wanted - 1).bit_length()))
        family = opt.get(values["optimizer"][own[0]]).family
        swept = [values[h][own] for h in sweep.swept_for(family)]
        _, first = np.unique(np.stack([coords[0][own], *swept]), axis=1, return_index=True)
        kinds[name] = own[first]  # a cell of each optimizer and swept setting of the family
        if sweep.shuffle:  # the map's group width, if a block holds its kinds and a cell
            names = [o for o in sweep.optimizer if opt.get(o).family.name == name]
            grid = GridConfigs.of(sweep, names)
            width = sim.group_width(grid.runs(by_seed=True), sim.chunk_size_for(shapes, len(grid)))
            piece[name] = max(width, 1 << len(kinds[name]).bit_length())

    def blocks(name: str, which: np.ndarray, ids: np.ndarray) -> list[np.ndarray]:
        """``which`` (positions in a call whose configs are cells ``ids``, all of family
        ``name``) in engine calls of at most ``piece[name]`` configs less one per kind.
        Shuffled, each call holds one dataset size, batch size and seed only: it runs as one
        group (its batches drawn once for all its lrs)."""
        width = max(1, piece[name] - len(kinds[name]))
        if sweep.shuffle:
            group_by = ("seed", "batch_size", "n", "variant")
            key = [values[d][ids[which]] for d in group_by]
            which = which[np.lexsort(key)]
            key = [values[d][ids[which]] for d in group_by]
            change = np.flatnonzero(np.any([k[1:] != k[:-1] for k in key], axis=0)) + 1
        else:
            change = np.zeros(0, np.int64)
        runs = np.split(which, change)
        return [r[s : s + width] for r in runs for s in range(0, len(r), width)]

    def calls_of(cells: np.ndarray) -> int:
        """Configurations the engine computes for ``breaks_at(cells, ...)``."""
        ids = searched[cells]
        return sum(
            piece[name] * len(blocks(name, np.flatnonzero(families[ids] == name), ids))
            for name in dict.fromkeys(families[ids])
        )

    def plan(name: str, calls: list[np.ndarray]) -> None:
        assert phases is not None
        phases.start(name, sum(calls_of(c) for c in calls), "config")

    def block(
        name: str, pick: np.ndarray, ids: np.ndarray, lrs: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One block's rows, ``(setting, data, lr)`` by ``piece[name]``: the cells, then one
        row of each kind (so that no hyperparameter is a constant of one call only), padded
        to the full width with the last cell's data: one compiled program for the search."""
        k = kinds[name]
        pad = max(0, piece[name] - len(pick) - len(k))
        last = ids[pick[-1]]
        setting = np.concatenate([ids[pick], k, np.full(pad, last)])  # optimizer, swept
        data = np.concatenate([ids[pick], np.full(len(k) + pad, last)])  # n, bs, ...
        lr = np.concatenate([lrs[pick], np.full(len(k) + pad, lrs[pick[-1]])])
        return setting, data, lr

    def breaks_at(cells: np.ndarray, lrs: np.ndarray) -> np.ndarray:
        ids = searched[cells]
        out = np.empty(len(cells), bool)
        for name in dict.fromkeys(families[ids]):
            family = opt.get(name).family
            picks = blocks(name, np.flatnonzero(families[ids] == name), ids)
            # Shuffled, every block is one group: all go to the simulator at once, which runs
            # several groups per call (their ``run`` labels keep equal groups apart).
            for call in [picks] if sweep.shuffle else [[p] for p in picks]:
                setting, data, lr = (
                    np.concatenate(c)
                    for c in zip(*(block(name, p, ids, lrs) for p in call), strict=True)
                )
                overrides = {
                    **sweep.overrides_for(family),
                    **{h: values[h][setting] for h in sweep.swept_for(family)},
                }
                flat = FlatConfigs.of(
                    values["optimizer"][setting], family, overrides,
                    learning_rate=lr, n=values["n"][data],
                    batch_size=values["batch_size"][data], seed=values["seed"][data],
                    epochs=values["epochs"][data], variant=values["variant"][data],
                    run=np.repeat(np.arange(len(call)), piece[name]),
                )  # fmt: skip
                # Shuffled, chunks are sized as for a long run: every call then holds as
                # many groups as a chunk does, however many blocks the round has.
                pad_to = ALL_BLOCKS if sweep.shuffle else piece[name]
                summary = _summaries(
                    sim, family, flat, shapes, history if sweep.shuffle else False, pad_to
                )
                at = rows[values["variant"][data], values["n"][data]]
                st = outcome.classify(
                    summary.initial_loss, summary.final_loss, summary.first_nonfinite_epoch,
                    scale[at], sweep.tol, sweep.diverge_factor, optimal[at],
                )  # fmt: skip
                broken = outcome.breaks(st).reshape(len(call), piece[name])
                for pick, b in zip(call, broken, strict=True):
                    out[pick] = b[: len(pick)]
                if phases is not None:
                    phases.advance(piece[name] * len(call))
        return out

    grid_breaks = outcome.breaks(by_cell).reshape(-1, by_cell.shape[-1])[searched]
    grid = np.asarray(sweep.lr, np.float64)
    top = np.where(grid_breaks.any(axis=1), grid[np.argmax(grid_breaks, axis=1)], grid[-1])
    found = boundary.search(
        grid,
        grid_breaks,
        breaks_at,
        sweep.boundary_rtol,
        _theory_candidates(sweep, {d: v[searched] for d, v in values.items()}, top),
        plan if phases is not None and phases.hook is not None else None,
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


def _summaries(
    sim: Simulator,
    family: opt.Family,
    flat: FlatConfigs,
    shapes: engine.Shapes,
    history: engine.History,
    pad_to: int,
) -> engine.Summary:
    """``sim.run``'s summaries of ``flat``; with ``history`` (to run the program the map
    compiled) each chunk's losses are dropped as soon as they come."""
    parts: list[engine.Summary] = []
    sim.run(family, flat, shapes, history=history, pad_to=pad_to,
            each=lambda _, s, __: parts.append(s))  # fmt: skip
    return engine.Summary(*map(np.concatenate, zip(*parts, strict=True)))


def _theory_candidates(
    sweep: Sweep, values: dict[str, np.ndarray], top: np.ndarray
) -> list[np.ndarray]:
    """Per cell (``values``: each cell dimension's value per cell): extra lrs for the
    boundary search where the closed form (:func:`src.theory.closed_form`, fixed-order
    minibatches) predicts unstable windows below ``top`` (the cell's first breaking grid lr,
    else the largest grid lr): just below each window's start, at its peak ``rho(M)`` and just
    above its end (``boundary_rtol`` away), for the first :data:`THEORY_WINDOWS` windows. A
    window narrower than the refinement step is then simulated on both sides."""
    rtol = sweep.boundary_rtol
    cache: dict[tuple, np.ndarray] = {}
    out = []
    for c, name in enumerate(values["optimizer"]):
        family = opt.get(name).family
        overrides = {
            **sweep.overrides_for(family),
            **{h: float(values[h][c]) for h in sweep.swept_for(family)},
        }
        n, bs = int(values["n"][c]), int(values["batch_size"][c])
        dyn = theory.closed_form(name, overrides, one_batch=bs >= n, shuffle=sweep.shuffle)
        if dyn is None or bs >= n:
            out.append(np.zeros(0))
            continue
        key = (n, bs, dyn, float(top[c]))
        if key not in cache:
            x = sweep.problem.dataset(n)[0]
            crit = theory.critical_lr(x, bs, dyn)
            points: list[float] = []
            if crit < top[c]:
                windows = theory.unstable_windows(x, bs, dyn, crit * (1 - 1e-6), float(top[c]))
                for w in windows[:THEORY_WINDOWS]:
                    points += [w.start * (1 - rtol), w.peak]
                    if math.isfinite(w.stop):
                        points.append(w.stop * (1 + rtol))
            cache[key] = np.array(points)
        out.append(cache[key])
    return out


def theory_critical_lr(sweep: Sweep, fixed_order: bool = False) -> np.ndarray:
    """Closed-form critical lr per cell (dims of :attr:`~src.spec.Sweep.dims` but lr), where
    :func:`src.theory.closed_form` says there is one; nan elsewhere. ``fixed_order``: the
    closed form for the batches in a fixed order, even where the map shuffles them (then it
    describes ``fit(shuffle=False)``, not the map's run)."""
    cell_dims = tuple(d for d in sweep.dims if d != "lr")
    out = np.full(tuple(len(sweep.axis(d)) for d in cell_dims), np.nan)
    swept = sweep.hyperparameters
    cache: dict[tuple, float] = {}
    for i, name in enumerate(sweep.optimizer):
        family = opt.get(name).family
        for hidx in itertools.product(*(range(len(v)) for _, v in swept)):
            overrides = {**sweep.overrides_for(family)}
            overrides.update({h: v[k] for (h, v), k in zip(swept, hidx, strict=True)})
            for j, n in enumerate(sweep.n):
                x = sweep.problem.dataset(n)[0]
                for k, bs in enumerate(sweep.batch_size):
                    dyn = theory.closed_form(
                        name, overrides, one_batch=bs >= n,
                        shuffle=sweep.shuffle and not fixed_order,
                    )  # fmt: skip
                    if dyn is None:
                        continue
                    key = (n, min(bs, n), dyn)
                    if key not in cache:
                        cache[key] = theory.critical_lr(x, bs, dyn)
                    # seed and epochs, then the data dimensions: the Hessian is x's alone
                    keep = (slice(None),) * (2 + len(sweep.data_dims))
                    out[(i, j, k, *keep, *hidx)] = cache[key]
    return out


def per_n_variables(sweep: Sweep, table: DataTable, rows: np.ndarray) -> dict[str, np.ndarray]:
    """:data:`src.schema.PER_N_VARIABLES` along ``sweep.n`` (the targets' scale and ``L*``
    also along the data dimensions, where there are some; ``rows[variant, n]``)."""
    xs = [sweep.problem.dataset(n)[0] for n in sweep.n]
    at = rows[:, list(sweep.n)].T  # (n, variant)
    if sweep.data_dims:  # (n, noise, noise_seed)
        at = at.reshape(len(sweep.n), *(len(sweep.axis(d)) for d in sweep.data_dims))
    else:
        at = at[:, 0]
    return {
        "loss_scale": np.asarray(table.loss_scale, np.float64)[at],
        "optimal_loss": np.asarray(table.optimal_loss, np.float64)[at],
        "hessian_max_eigenvalue": np.array([theory.hessian_eigenvalues(x)[-1] for x in xs]),
        "gd_critical_lr": np.array([theory.gd_critical_lr(x) for x in xs]),
    }
