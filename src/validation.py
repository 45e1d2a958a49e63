"""The map checked against real Keras: a few of its configurations re-run in ``model.fit``.

After the map is computed, ``--validate K`` picks ``K`` of its configurations and trains each
one in Keras 3 (TensorFlow backend, :func:`src.keras_reference.fit`) from the engine's initial
weights, in parallel worker processes, then compares epoch by epoch with the engine's own loss
history of the same configuration. The picks are stratified and deterministic given a seed:

1. ``seed`` -- the sweep's first two curves when they lie on the grid (by default the seed's
   SGD at lr 0.01 with N = 20, which overflows, and N = 10, which converges);
2. ``boundary`` -- both sides of each optimizer's stability boundary: for one cell (chosen at
   random) the grid lr just below and the grid lr just above its measured ``critical_lr``; an
   optimizer that neither overflows nor diverges anywhere on the grid (Adam and Adagrad in the
   default map) has no such boundary, so its pair straddles a change of verdict between two
   neighbouring grid lrs instead (converged | slow, for one cell chosen at random);
3. ``seed`` again -- the sweep's other curves on the grid;
4. ``random`` -- uniformly random configurations of the whole map.

Keras runs in the map's dtype (``float64`` maps: ``keras.config.set_floatx``) and in its
order: a shuffled map's picks are trained by ``fit(shuffle=True)`` with a fresh permutation
every epoch, as a user's own unseeded call draws them, from a stream seeded per pick
(:func:`keras_order_seed`: the check's seed and the pick's place in the map, so the record is
the same whatever ``K``, the worker count or the worker a pick lands on), and
:mod:`src.keras_reference` records the order each epoch fed the samples in.

What is compared is what the map holds. For every configuration the record holds the map's
own status and first non-finite epoch, and the status of the Keras ``History`` under the
map's rules (:func:`src.outcome.classify`), whether they agree, and each prediction at x = 25.
The loss histories are compared epoch by epoch by re-running the pick with the kernel that
made the map (:data:`~src.engine.KERNELS`) -- for a fixed order that re-run reproduces the
map's stored values bit for bit (``reproduces_map``); for a shuffled map it replays the
exact orders Keras used (the map's own orders are the engine's random ones, so only its
verdict and overflow epoch can be held against Keras's). Where the map's kernel is not the
autodiff kernel (Keras's per-sample arithmetic) that re-run is reported as well. The largest
relative difference counts epochs where both losses are finite and above :data:`MIN_LOSS`.

The engine also trains each pick at learning rates a few ulp away: where that alone moves
its loss by more than :data:`SENSITIVE`, the run is *sensitive* to rounding (a chaotic limit
cycle, or long exponential growth), no float32 implementation has a unique trajectory to
agree with, and the pick is reported apart from the agreement totals. Everything is
JSON-ready and goes to ``validation.json``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures.process import BrokenProcessPool
from typing import NamedTuple, TypedDict

import numpy as np
import xarray as xr

from src import engine, keras_reference, outcome
from src import optimizers as opt
from src.keras_reference import KerasJob, KerasResult
from src.problem import variants_table
from src.schema import (
    DATA_DIMS,
    curve_positions,
    extra_dims,
    hyperparameters_at,
    optimal_loss,
    swept_dims,
    variant_at,
)

DEFAULT_COUNT = 14
"""Configurations checked by default on every main-job run: the seed's two, then both sides of
the boundary of each of the default map's six optimizers (:func:`pick`). Each Keras run feeds
``fit`` its input pipeline once (:func:`src.keras_reference.fit`): 2-3.6 ms per epoch against
63-90 ms for ``fit(x, y)``'s new iterators every epoch, plus ~0.5 s per run, measured side by
side in one worker on the busy 2-core machine. So fourteen 500-epoch runs on two workers take
less time than the two of the former default: 69-72 s against 83-95 s for the whole check
(``validate``'s ``seconds``, engine re-runs included, with the machine's load at ~10; most of
what is left is starting the two workers, each importing TensorFlow)."""

MIN_LOSS = 1e-2
"""Relative loss differences are taken only where both losses exceed this (tiny losses carry
no relative precision in float32)."""

SENSITIVITY_ULPS = (-4, -3, -2, -1, 1, 2, 3, 4)
"""The engine also trains every pick at these float32 neighbours of its learning rate (in ulps),
to tell configurations whose float32 trajectory is determined from sensitive ones."""

SENSITIVE = 1e-4
"""A pick is *sensitive* (to float32 rounding) when moving its learning rate by a few ulp moves
the engine's own loss by more than this (relative, where above :data:`MIN_LOSS`). Two faithful
float32 implementations round differently, so for such a run neither loss agreement within
this tolerance nor a shared verdict is to be expected: limit cycles of adaptive optimizers at
large learning rates are chaotic, and long exponential growth amplifies every rounding. Sensitive
picks are reported apart; the totals ``verdict_agreement`` and ``max_rel_err`` cover the
determined ones. For float64 maps the threshold is :data:`SENSITIVE_FLOAT64`."""

SENSITIVE_FLOAT64 = 1e-11
"""The same for float64 maps: float64 rounding is ~1e-16, so a run whose loss moves by more
than this when its lr moves a few float64 ulp amplifies rounding 1e5-fold or more, and its
agreement with Keras is no better than that, whatever the semantics."""

FLOAT32_AGREEMENT = 2.0e-5
"""Measured: the largest relative loss difference between a float32 map and Keras over a
random sample of 48 float32-determined configurations (every optimizer, full and partial
batches, data other than the seed's, swept hyperparameters;
``tests/test_keras_fidelity.py::test_float32_agreement_on_a_random_sample``, keras 3.15.1,
TensorFlow 2.21). Float64 maps agree to 1e-10 (measured: 1e-14)."""


def sensitive_above(dtype: str) -> float:
    """:data:`SENSITIVE`, or :data:`SENSITIVE_FLOAT64` for float64 maps."""
    return SENSITIVE_FLOAT64 if dtype == "float64" else SENSITIVE

PLOTTED = 4
"""Configurations whose Keras and JAX loss curves are overlaid in the report."""

OFF, DONE, UNAVAILABLE, SKIPPED, FAILED = "off", "done", "unavailable", "skipped", "failed"


class ConfigCheck(TypedDict, total=False):
    """One re-run configuration in ``validation.json``: the pick, both verdicts, and (when
    Keras ran) how far the two loss histories are apart."""

    stratum: str
    optimizer: str
    hyperparameters: dict[str, float]
    lr: float
    n: int
    batch_size: int
    seed: int
    epochs: int
    noise: float
    noise_seed: int
    status_jax: str
    status_keras: str | None
    agree: bool
    error: str | None
    float32_sensitivity: float
    sensitive: bool
    statuses_float32: list[str]
    max_rel_err: float
    first_nonfinite_epoch_jax: int
    first_nonfinite_epoch_keras: int
    order_dependent: bool
    first_nonfinite_agree: bool
    first_nonfinite_epoch_rerun: int
    reproduces_map: bool
    final_loss_jax: float
    final_loss_keras: float
    prediction_jax: float
    prediction_keras: float
    autodiff_status: str
    autodiff_max_rel_err: float
    autodiff_first_nonfinite_epoch: int
    keras_seconds: float
    keras_order_seed: int


class CurvePair(TypedDict):
    """A plotted configuration's two ``History`` loss lists."""

    label: str
    stratum: str
    jax: list[float]
    keras: list[float]


class ValidationRecord(TypedDict, total=False):
    """``validation.json``: how the Keras check went (``status``: off, done, unavailable,
    skipped or failed, with ``reason``), its totals and every :class:`ConfigCheck`."""

    status: str
    reason: str | None
    install: str
    requested: int
    checked: int
    determined: int
    agreed: int
    verdict_agreement: float | None
    max_rel_err: float | None
    sensitive: int
    sensitive_agreed: int
    sensitive_max_rel_err: float | None
    first_nonfinite_agreed: int
    overflowing: int
    agreed_all: int
    rules: dict[str, object] | str
    keras_version: str | None
    tensorflow_version: str | None
    map_dtype: str
    map_kernel: str
    shuffle: bool
    seed: int
    workers: int
    seconds: float
    configs: list[ConfigCheck]
    curves: list[CurvePair]



@dataclasses.dataclass(frozen=True)
class Pick:
    """One configuration of the map chosen for re-running, and why (``stratum``).

    ``index`` is its position along every dim of ``ds.status`` (for ``ds.isel``).
    """

    index: Mapping[str, int]
    optimizer: str
    lr: float
    n: int
    batch_size: int
    seed: int
    epochs: int
    hyperparameters: Mapping[str, float]
    stratum: str
    data: Mapping[str, float] = dataclasses.field(default_factory=dict)
    """Its place along the map's data dimensions (``noise``, ``noise_seed``), if any."""

    @property
    def label(self) -> str:
        extra = "".join(f" {k}={v:g}" for k, v in {**self.hyperparameters, **self.data}.items())
        return f"{self.optimizer} lr={self.lr:.4g} N={self.n} batch={self.batch_size}{extra}"


def parse_count(text: str) -> int:
    """``--validate K``: a whole number >= 0 (0 turns validation off)."""
    from src.errors import InputError

    try:
        value = float(text)
    except ValueError:
        raise InputError(f"--validate must be a whole number >= 0, got {text!r}") from None
    if not math.isfinite(value) or value != int(value) or value < 0:
        raise InputError(f"--validate must be a whole number >= 0, got {text!r}")
    return int(value)


# ----------------------------------------------------------------------------- picking


def pick_at(ds: xr.Dataset, index: Mapping[str, int], stratum: str) -> Pick:
    """The configuration at ``index`` (a position along every dim of ``ds.status``)."""
    return picks_at(ds, [index], stratum)[0]


def picks_at(ds: xr.Dataset, indices: Sequence[Mapping[str, int]], stratum: str) -> list[Pick]:
    """:func:`pick_at` at many positions: the coordinates are read once, and the
    hyperparameters once per optimizer and position along the swept axes."""
    dims = list(ds.status.dims)
    coords = {d: ds[d].values for d in dims}
    swept = swept_dims(ds)
    settings: dict[tuple, Mapping[str, float]] = {}
    out = []
    for at in indices:
        index = {d: int(at[d]) for d in dims}
        name = str(coords["optimizer"][index["optimizer"]])
        key = (name, *(index[d] for d in swept))
        if key not in settings:
            settings[key] = hyperparameters_at(ds, name, index)
        out.append(
            Pick(
                index=index,
                optimizer=name,
                lr=float(coords["lr"][index["lr"]]),
                n=int(coords["n"][index["n"]]),
                batch_size=int(coords["batch_size"][index["batch_size"]]),
                seed=int(coords["seed"][index["seed"]]),
                epochs=int(coords["epochs"][index["epochs"]]),
                hyperparameters=settings[key],
                stratum=stratum,
                data={d: coords[d][index[d]].item() for d in dims if d in DATA_DIMS},
            )
        )
    return out


def _position(ds: xr.Dataset, dim: str, value: object) -> int | None:
    values = ds[dim].values
    if values.dtype.kind == "f":
        hits = np.flatnonzero(np.isclose(values, float(value), rtol=1e-9, atol=0))  # type: ignore[arg-type]
    else:
        hits = np.flatnonzero(values == value)
    return int(hits[0]) if hits.size else None


def curve_indices(ds: xr.Dataset) -> list[dict[str, int]]:
    """Positions of the sweep's curves that lie on the grid (largest epochs, first value of
    every swept hyperparameter), in the curves' order."""
    out = []
    for _, where in curve_positions(ds):
        index: dict[str, int] = {"epochs": int(np.argmax(ds.epochs.values))}
        for dim, value in where.items():
            at = _position(ds, dim, value)
            if at is None:
                break
            index[dim] = at
        else:
            index.update({d: 0 for d in extra_dims(ds)})  # first noise draw and setting
            out.append(index)
    return out


def boundary_indices(
    ds: xr.Dataset, rng: np.random.Generator, taken: Sequence[Mapping[str, int]] = ()
) -> list[dict[str, int]]:
    """For each optimizer, one cell chosen at random among those with a measured critical lr
    strictly inside the grid (and no stable grid lr above it): the grid lr just below the
    critical lr, then the one just above. An optimizer that overflows and diverges nowhere on
    the grid (no critical lr in any cell) gets a pair of neighbouring grid lrs whose verdicts
    differ instead (:func:`_verdict_changes`), where there is one. Cells with a side among
    ``taken`` are avoided while others remain."""
    cells = ds.critical_lr.transpose("optimizer", ...)
    flags = ds.non_monotone.transpose(*cells.dims).values.astype(bool)
    crit = cells.values.astype(np.float64)
    grid = ds.lr.values.astype(np.float64)
    order = np.argsort(grid)  # the lr axis need not be sorted (``--lr 0.01,0.001``)
    seen = {tuple(sorted(t.items())) for t in taken}
    out = []
    for o in range(ds.sizes["optimizer"]):
        c = crit[o]
        with np.errstate(invalid="ignore"):
            ok = np.isfinite(c) & ~flags[o] & (c > grid.min()) & (c <= grid.max())
        candidates = rng.permutation(np.flatnonzero(ok.ravel()))
        pairs: Iterable[list[dict[str, int]]] = (
            (_sides(cells.dims[1:], c, flat, grid, order, o) for flat in candidates)
            if np.isfinite(c).any()
            else _verdict_changes(ds, o, order, rng)  # no stability boundary anywhere
        )
        first = None
        for pair in pairs:
            first = first or pair
            if not any(tuple(sorted(side.items())) in seen for side in pair):
                first = pair
                break
        out += first or []
    return out


def _verdict_changes(
    ds: xr.Dataset, o: int, order: np.ndarray, rng: np.random.Generator
) -> list[list[dict[str, int]]]:
    """Optimizer ``o``'s pairs of neighbouring grid lrs (``order`` sorts the lr axis) whose
    verdicts differ, the lower lr first, in a random order (one per cell and change)."""
    status = ds.status.isel(optimizer=o).transpose("lr", ...)
    dims = status.dims[1:]
    ranked = status.values[order].reshape(len(order), -1)
    steps, cells = np.nonzero(ranked[1:] != ranked[:-1])
    out = []
    for k in rng.permutation(len(steps)):
        rest = np.unravel_index(int(cells[k]), status.shape[1:])
        where = {str(d): int(i) for d, i in zip(dims, rest, strict=True)}
        lower, upper = order[steps[k]], order[steps[k] + 1]
        out.append([{"optimizer": o, "lr": int(i), **where} for i in (lower, upper)])
    return out


def _sides(
    dims: Sequence[str], crit: np.ndarray, flat: int, grid: np.ndarray, order: np.ndarray, o: int
) -> list[dict[str, int]]:
    """The grid lr just below and just above the critical lr of one cell (flat index)."""
    where = dict(zip(dims, np.unravel_index(int(flat), crit.shape), strict=True))
    above = int(np.searchsorted(grid[order], crit.ravel()[flat], side="left"))
    rest = {str(k): int(v) for k, v in where.items()}
    return [{"optimizer": o, "lr": int(i), **rest} for i in order[[above - 1, above]]]


def pick(ds: xr.Dataset, count: int, seed: int = 0) -> list[Pick]:
    """``count`` distinct configurations of the map, stratified (see the module docstring) and
    deterministic given ``seed``; every configuration when ``count`` exceeds the map."""
    dims = ds.status.dims
    shape = ds.status.shape
    total = math.prod(shape)
    rng = np.random.default_rng(seed)
    curves = curve_indices(ds)
    ordered = [(i, "seed") for i in curves[:2]]
    ordered += [(i, "boundary") for i in boundary_indices(ds, rng, curves[:2])]
    ordered += [(i, "seed") for i in curves[2:]]
    chosen: dict[int, Pick] = {}
    for index, stratum in ordered:
        if len(chosen) >= count:
            break
        flat = int(np.ravel_multi_index(tuple(index[d] for d in dims), shape))
        if flat not in chosen:
            chosen[flat] = pick_at(ds, index, stratum)
    left = min(count, total) - len(chosen)
    if left > 0:
        free = np.setdiff1d(np.arange(total), np.fromiter(chosen, np.int64), assume_unique=True)
        for flat in rng.choice(free, size=left, replace=False):
            where = np.unravel_index(int(flat), shape)
            chosen[int(flat)] = pick_at(ds, dict(zip(dims, where, strict=True)), "random")
    return list(chosen.values())


# ----------------------------------------------------------------------------- running


def nudged(p: Pick, ulps: int, dtype: str = "float32") -> Pick:
    """``p`` with its learning rate, in ``dtype``, moved by ``ulps`` units in the last place."""
    lr = np.asarray(p.lr, dtype)
    step = np.asarray(np.inf if ulps > 0 else -np.inf, dtype)
    for _ in range(abs(ulps)):
        lr = np.nextafter(lr, step)
    return dataclasses.replace(p, lr=float(lr))


def float32_neighbours(picks: Sequence[Pick], dtype: str = "float32") -> list[Pick]:
    """Every pick at each of :data:`SENSITIVITY_ULPS` (ulps of ``dtype``), pick by pick."""
    return [nudged(p, k, dtype) for p in picks for k in SENSITIVITY_ULPS]


class Rerun(NamedTuple):
    """The engine's re-run of picks: ``History`` losses (float64, one entry per epoch) and
    summaries, pick by pick."""

    histories: list[np.ndarray]
    summaries: list[engine.Summary]


def padded_orders(picks: Sequence[Pick], orders: Sequence[np.ndarray]) -> np.ndarray:
    """Per-pick sample orders ``(epochs, n)`` as one ``(picks, max epochs, max n)`` array
    (:attr:`src.configs.FlatConfigs.orders`): short ones padded with the identity."""
    epochs, n = max(p.epochs for p in picks), max(p.n for p in picks)
    out = np.broadcast_to(np.arange(n, dtype=np.int32), (len(picks), epochs, n)).copy()
    for i, o in enumerate(orders):
        out[i, : o.shape[0], : o.shape[1]] = o
    return out


def engine_histories(
    ds: xr.Dataset,
    picks: Sequence[Pick],
    kernel: str | None = None,
    orders: Sequence[np.ndarray] | None = None,
) -> Rerun:
    """The engine's run of each pick with ``kernel`` (default: the map's), in the map's
    order, or replaying ``orders`` (one ``(epochs, n)`` array per pick; shuffled maps)."""
    import jax

    from src.configs import FlatConfigs
    from src.simulator import Simulator

    dtype = str(ds.attrs["dtype"])
    # Each pick's own problem (its noise draw, where the map sweeps noise), each made once:
    # a page re-running a large map's cells has tens of thousands of picks.
    keys = [tuple(p.index.get(d, 0) for d in DATA_DIMS) for p in picks]
    made = {k: variant_at(ds, dict(zip(DATA_DIMS, k, strict=True))) for k in dict.fromkeys(keys)}
    distinct = list(dict.fromkeys(made.values()))
    position = {k: distinct.index(q) for k, q in made.items()}
    variant = np.array([position[k] for k in keys]) if len(distinct) > 1 else None
    table, rows = variants_table(distinct, [p.n for p in picks], dtype)
    sim = Simulator(
        table, rows, dtype, float(ds.attrs["tol"]), bool(ds.attrs["shuffle"]),
        kernel=kernel or str(ds.attrs["kernel"]),
    )  # fmt: skip
    replay = None if orders is None else padded_orders(picks, orders)
    histories: list[np.ndarray] = [np.empty(0)] * len(picks)
    summaries: list[engine.Summary] = [engine.Summary(*[np.empty(0)] * 8)] * len(picks)
    families: dict[str, list[int]] = {}
    for i, p in enumerate(picks):
        families.setdefault(opt.get(p.optimizer).family.name, []).append(i)
    with jax.enable_x64(dtype == "float64"):
        for members in families.values():
            chosen = [picks[i] for i in members]
            family = opt.get(chosen[0].optimizer).family
            names = sorted({h for p in chosen for h in p.hyperparameters})
            settings = [opt.get(p.optimizer).settings(p.hyperparameters) for p in chosen]
            overrides = {h: np.array([s[h] for s in settings], np.float64) for h in names}
            flat = FlatConfigs.of(
                [p.optimizer for p in chosen], family, overrides,
                learning_rate=np.array([p.lr for p in chosen], np.float64),
                **{c: np.array([getattr(p, c) for p in chosen]) for c in _INT_COLUMNS},
                variant=np.zeros(len(members), np.int64) if variant is None else variant[members],
            )  # fmt: skip
            if replay is not None:
                flat.orders = replay[members]
            summary, losses = sim.run(family, flat, history=True)
            assert summary is not None and losses is not None
            for k, (i, p) in enumerate(zip(members, chosen, strict=True)):
                histories[i] = np.asarray(losses[k, : p.epochs], np.float64)
                summaries[i] = engine.Summary(*(np.asarray(a)[k] for a in summary))
    return Rerun(histories, summaries)


_INT_COLUMNS = ("n", "batch_size", "seed", "epochs")


def keras_order_seed(ds: xr.Dataset, p: Pick, seed: int = 0) -> int:
    """The seed of pick ``p``'s Keras shuffling stream (< 2**31): a function of the check's
    ``seed`` and of the pick's place in the map alone, so a configuration is trained in the
    same orders whatever ``K``, the worker count or the worker that runs it."""
    dims = ds.status.dims
    flat = int(np.ravel_multi_index(tuple(p.index[d] for d in dims), ds.status.shape))
    return int(np.random.SeedSequence([seed, flat]).generate_state(1)[0] >> 1)


def keras_jobs(ds: xr.Dataset, picks: Sequence[Pick], seed: int = 0) -> list[KerasJob]:
    """Arguments of :func:`src.keras_reference.fit` for each pick: the engine's initial
    weights, the map's dtype and, for a shuffled map, ``fit(shuffle=True)`` with a fresh
    order every epoch (as in a user's own call) drawn from :func:`keras_order_seed`'s stream
    (``reshuffle``); the orders come back recorded."""
    shuffle = bool(ds.attrs["shuffle"])
    jobs = []
    for p in picks:
        problem = variant_at(ds, p.index)
        x, y, x_query = problem.dataset(p.n)
        w0 = np.asarray(engine.initial_kernel(p.seed, d=problem.d), np.float64)
        jobs.append(KerasJob(
            optimizer=p.optimizer, lr=p.lr, x=x, y=y, w0=float(w0[0]) if len(w0) == 1 else w0,
            b0=0.0, batch_size=p.batch_size, epochs=p.epochs,
            hyperparameters=dict(p.hyperparameters), x_query=x_query,
            shuffle=shuffle, seed=keras_order_seed(ds, p, seed), reshuffle=True,
            dtype=str(ds.attrs["dtype"]),
        ))  # fmt: skip
    return jobs


# ----------------------------------------------------------------------------- comparing


def first_nonfinite(history: np.ndarray) -> int:
    """First epoch (from 1) whose loss is not finite; -1 if none."""
    bad = np.flatnonzero(~np.isfinite(history))
    return int(bad[0]) + 1 if bad.size else -1


def max_relative_error(a: np.ndarray, b: np.ndarray, floor: float = MIN_LOSS) -> float:
    """Largest ``|a/b - 1|`` over epochs where both are finite and above ``floor`` (nan: none)."""
    k = min(len(a), len(b))
    a, b = np.asarray(a[:k], np.float64), np.asarray(b[:k], np.float64)
    with np.errstate(invalid="ignore"):
        both = np.isfinite(a) & np.isfinite(b) & (a > floor) & (b > floor)
    return float(np.max(np.abs(a[both] / b[both] - 1))) if both.any() else math.nan


def keras_status(
    run: KerasResult, scale: float, tol: float, diverge_factor: float, optimal: float = 0.0
) -> int:
    """The map's rules applied to a Keras run (non-finite final weights count as overflow)."""
    h = run.history
    nonfinite = first_nonfinite(h)
    kernel = run.weights if run.weights is not None else np.array([run.w])
    if nonfinite < 0 and not (np.all(np.isfinite(kernel)) and math.isfinite(run.b)):
        nonfinite = len(h)
    return int(outcome.classify(h[0], h[-1], nonfinite, scale, tol, diverge_factor, optimal))


def _finite_errors(configs: Sequence[ConfigCheck]) -> list[float]:
    errors = (c.get("max_rel_err") for c in configs)
    return [float(e) for e in errors if e is not None and math.isfinite(e)]


def history_status(
    history: np.ndarray, scale: float, tol: float, diverge_factor: float, optimal: float = 0.0
) -> int:
    """The map's rules applied to a loss history alone."""
    h = np.asarray(history, np.float64)
    nonfinite = first_nonfinite(h)
    return int(outcome.classify(h[0], h[-1], nonfinite, scale, tol, diverge_factor, optimal))


def compare(
    ds: xr.Dataset,
    p: Pick,
    rerun: tuple[np.ndarray, engine.Summary],
    run: KerasResult,
    neighbours: Sequence[np.ndarray] = (),
    autodiff: np.ndarray | None = None,
) -> ConfigCheck:
    """The JSON record of one re-run configuration.

    The verdict and first non-finite epoch are the map's own (``ds`` at the pick). ``rerun``
    is the engine's re-run with the map's kernel (replaying Keras's orders in a shuffled
    map): its history is compared epoch by epoch with Keras's, and for a fixed order it must
    reproduce the map. ``neighbours`` are the re-run's histories at the learning rates
    :data:`SENSITIVITY_ULPS` away: their largest relative departure from the re-run is the
    pick's ``float32_sensitivity``; above :data:`SENSITIVE` the pick is sensitive.
    ``autodiff``: the autodiff kernel's history, where the map's kernel is another.
    """
    at = ds.isel(p.index)
    status_jax = int(at.status)
    nonfinite_jax = int(at.first_nonfinite_epoch)
    history, summary = rerun
    record = ConfigCheck(
        optimizer=p.optimizer, lr=p.lr, n=p.n, batch_size=p.batch_size, seed=p.seed,
        epochs=p.epochs, hyperparameters=dict(p.hyperparameters), stratum=p.stratum,
        **p.data,  # type: ignore[typeddict-item]
        status_jax=outcome.STATUSES[status_jax], first_nonfinite_epoch_jax=nonfinite_jax,
        final_loss_jax=float(at.final_loss),
    )  # fmt: skip
    if run.error is not None or len(run.history) == 0:
        return {**record, "status_keras": None, "agree": False, "error": run.error}
    scale = float(at.loss_scale)  # of the pick's dataset: its N (and noise draw)
    optimal = float(optimal_loss(at))
    rules = (scale, float(ds.attrs["tol"]), float(ds.attrs["diverge_factor"]), optimal)
    status_keras = keras_status(run, *rules)
    spreads = [max_relative_error(h, history) for h in neighbours]
    sensitivity = max((e for e in spreads if math.isfinite(e)), default=0.0)
    reachable = {status_jax, *(history_status(h, *rules) for h in neighbours)}
    nonfinite_keras = first_nonfinite(run.history)
    # Shuffled minibatches: the map's own run drew its own orders, so its overflow epoch is one
    # draw of a random quantity; the re-run in Keras's orders is the one to match exactly.
    order_dependent = bool(ds.attrs["shuffle"]) and p.batch_size < p.n
    matched = int(summary.first_nonfinite_epoch) if order_dependent else nonfinite_jax
    out: ConfigCheck = {
        **record,
        "status_keras": outcome.STATUSES[status_keras],
        "agree": status_keras == status_jax,
        "float32_sensitivity": sensitivity,
        "sensitive": sensitivity > sensitive_above(str(ds.attrs["dtype"])),
        "statuses_float32": sorted(outcome.STATUSES[s] for s in reachable),
        "max_rel_err": max_relative_error(history, run.history),
        "first_nonfinite_epoch_keras": nonfinite_keras,
        "order_dependent": order_dependent,
        "first_nonfinite_agree": nonfinite_keras == matched,
        "first_nonfinite_epoch_rerun": int(summary.first_nonfinite_epoch),
        "final_loss_keras": float(run.history[-1]),
        "prediction_jax": float(at.prediction),
        "prediction_keras": run.prediction,
        "keras_seconds": round(run.seconds, 3),
    }
    if not bool(ds.attrs["shuffle"]):
        out["reproduces_map"] = bool(
            int(summary.first_nonfinite_epoch) == nonfinite_jax
            and _same_float(summary.final_loss, at.final_loss.values)
            and _same_float(summary.initial_loss, at.initial_loss.values)
        )
    if autodiff is not None:
        out["autodiff_status"] = outcome.STATUSES[history_status(autodiff, *rules)]
        out["autodiff_max_rel_err"] = max_relative_error(autodiff, run.history)
        out["autodiff_first_nonfinite_epoch"] = first_nonfinite(autodiff)
    return out


def _same_float(a: object, b: object) -> bool:
    """The same value in the map's dtype (nan equals nan)."""
    a, b = np.asarray(a), np.asarray(b, np.asarray(a).dtype)
    return bool(a == b or (np.isnan(a) and np.isnan(b)))


def _plotted(picks: Sequence[Pick]) -> list[int]:
    """Up to :data:`PLOTTED` picks to draw: the first of each stratum, then the next ones."""
    firsts = list(dict.fromkeys(p.stratum for p in picks))
    chosen = [next(i for i, p in enumerate(picks) if p.stratum == s) for s in firsts]
    chosen += [i for i in range(len(picks)) if i not in chosen]
    return sorted(chosen[:PLOTTED])


def _base_record(
    ds: xr.Dataset, count: int, status: str, reason: str | None
) -> ValidationRecord:
    return {
        "status": status,
        "reason": reason,
        "requested": count,
        "checked": 0,
        "rules": {
            "tol": float(ds.attrs["tol"]),
            "diverge_factor": float(ds.attrs["diverge_factor"]),
            "min_loss_for_relative_error": MIN_LOSS,
            "first_nonfinite_epoch": "first epoch whose History loss is not finite (-1: none)",
        },
        "verdict_agreement": None,
        "max_rel_err": None,
        "keras_version": None,
        "tensorflow_version": None,
        "seconds": 0.0,
        "configs": [],
        "curves": [],
    }


def failed(ds: xr.Dataset, count: int, reason: str) -> ValidationRecord:
    """The record of a check that went wrong (``reason``: one line)."""
    return _base_record(ds, count, FAILED, reason)


def not_run(ds: xr.Dataset, count: int) -> ValidationRecord | None:
    """The record of a validation that cannot or need not run (None when it should run)."""
    if count == 0:
        return _base_record(ds, 0, OFF, "turned off (--validate 0)")
    if not keras_reference.available():
        reason = (
            "TensorFlow is not installed, so the map was not checked against real Keras; "
            f"install it with: {keras_reference.INSTALL_HINT}"
        )
        return {
            **_base_record(ds, count, UNAVAILABLE, reason),
            "install": keras_reference.INSTALL_HINT,
        }
    return None


def validate(
    ds: xr.Dataset,
    count: int = DEFAULT_COUNT,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
    workers: int = 0,
    started: float | None = None,
) -> ValidationRecord:
    """Re-run ``count`` configurations of ``ds`` in Keras and compare (the record of
    ``validation.json``). ``workers`` 0 means ``min(count, os.cpu_count())``; ``started`` is
    the ``time.perf_counter()`` the check's seconds count from (default: now)."""
    t0 = time.perf_counter() if started is None else started
    skipped = not_run(ds, count)
    if skipped is not None:
        return skipped
    picks = pick(ds, count, seed)
    jobs = keras_jobs(ds, picks, seed)
    workers = workers or max(1, min(len(picks), os.cpu_count() or 1))
    dtype, kernel = str(ds.attrs["dtype"]), str(ds.attrs["kernel"])
    shuffled = bool(ds.attrs["shuffle"])
    k = len(SENSITIVITY_ULPS)
    both = [*picks, *float32_neighbours(picks, dtype)]
    try:
        with keras_reference.keras_pool(workers) as pool:
            futures = keras_reference.submit_keras(pool, jobs)
            # Meanwhile, in this process, what needs no Keras order: a fixed order's runs.
            fixed = None if shuffled else engine_histories(ds, both)
            runs = keras_reference.collect_keras(futures, progress)
    except (BrokenProcessPool, OSError) as e:  # the map is still worth writing
        return failed(ds, count, f"the Keras worker processes failed ({e})")
    orders = None
    if shuffled:  # Keras's own orders, replayed (a failed run's: the identity)
        orders = [
            r.orders if r.orders is not None else np.arange(p.n)[None].repeat(p.epochs, 0)
            for p, r in zip(picks, runs, strict=True)
        ]
        orders = orders + [o for o in orders for _ in SENSITIVITY_ULPS]
    rerun = fixed if fixed is not None else engine_histories(ds, both, orders=orders)
    histories, neighbours = rerun.histories[: len(picks)], rerun.histories[len(picks) :]
    autodiff = (
        None
        if kernel == "autodiff"
        else engine_histories(
            ds, picks, "autodiff", None if orders is None else orders[: len(picks)]
        ).histories
    )
    configs = [
        compare(
            ds, p, (histories[i], rerun.summaries[i]), r, neighbours[i * k : (i + 1) * k],
            None if autodiff is None else autodiff[i],
        )
        for i, (p, r) in enumerate(zip(picks, runs, strict=True))
    ]  # fmt: skip
    if shuffled:  # fit(..., seed=keras_order_seed, reshuffle=True) trains it in the same orders
        for config, p in zip(configs, picks, strict=True):
            config["keras_order_seed"] = keras_order_seed(ds, p, seed)
    determined = [c for c in configs if not c.get("sensitive")]
    sensitive = [c for c in configs if c.get("sensitive")]
    finite = _finite_errors(determined)
    rough = _finite_errors(sensitive)
    versions = next((r.versions for r in runs if r.versions), {})
    note = None if len(picks) == count else f"the map has only {len(picks)} configurations"
    curves = [
        {"label": picks[i].label, "stratum": picks[i].stratum,
         "jax": histories[i].tolist(), "keras": runs[i].history.tolist()}
        for i in _plotted(picks)
    ]  # fmt: skip
    return {
        **_base_record(ds, count, DONE, note),
        "checked": len(configs),
        "determined": len(determined),
        "agreed": sum(bool(c["agree"]) for c in determined),
        "verdict_agreement": (
            sum(bool(c["agree"]) for c in determined) / len(determined) if determined else None
        ),
        "max_rel_err": max(finite) if finite else None,
        "sensitive": len(sensitive),
        "sensitive_agreed": sum(bool(c["agree"]) for c in sensitive),
        "sensitive_max_rel_err": max(rough) if rough else None,
        "first_nonfinite_agreed": sum(
            bool(c.get("first_nonfinite_agree")) for c in determined
            if c["first_nonfinite_epoch_jax"] > 0 or c.get("first_nonfinite_epoch_keras", -1) > 0
        ),
        "overflowing": sum(
            c["first_nonfinite_epoch_jax"] > 0 or c.get("first_nonfinite_epoch_keras", -1) > 0
            for c in determined
        ),
        "agreed_all": sum(bool(c["agree"]) for c in configs),
        "rules": (
            f"a configuration is sensitive when moving its {dtype} learning rate by up to "
            f"{max(SENSITIVITY_ULPS)} ulp moves the engine's own loss by more than "
            f"{sensitive_above(dtype):g} relative (where above {MIN_LOSS:g}); verdict_agreement "
            "and max_rel_err cover the other (determined) configurations, sensitive_agreed and "
            "sensitive_max_rel_err the sensitive ones"
        ),
        "keras_version": versions.get("keras"),
        "tensorflow_version": versions.get("tensorflow"),
        "map_dtype": dtype,
        "map_kernel": kernel,
        "shuffle": shuffled,
        "seed": seed,
        "workers": workers,
        "seconds": round(time.perf_counter() - t0, 3),
        "configs": configs,
        "curves": curves,
    }


# ----------------------------------------------------------------------------- reporting


def headline(record: ValidationRecord) -> str:
    """One line: how the check went (or why it did not run)."""
    status = record["status"]
    if status == OFF:
        return "Keras check: off (--validate 0)."
    if status != DONE:
        return f"Keras check: {'failed' if status == FAILED else 'not run'}: {record['reason']}."
    err = record["max_rel_err"]
    worst = "no comparable epochs" if err is None else f"largest loss difference {err:.2g} relative"
    sensitive = record.get("sensitive") or 0
    rough = record.get("sensitive_max_rel_err")
    aside = (
        f"; {sensitive} more are sensitive to float32 rounding (a few ulp of lr move the loss "
        f"by > {sensitive_above(record.get('map_dtype', 'float32')):g}): same verdict for "
        f"{record['sensitive_agreed']}/{sensitive}"
        + ("" if rough is None else f", loss difference up to {rough:.2g}")
        if sensitive
        else ""
    )
    overflowing = record.get("overflowing") or 0
    epochs = (
        f", first non-finite epoch the same for {record['first_nonfinite_agreed']}/{overflowing}"
        " that overflow"
        if overflowing
        else ""
    )
    order = ", in Keras's own shuffled orders" if record.get("shuffle") else ""
    return (
        f"Keras check: {record['checked']} configurations re-run in Keras "
        f"{record['keras_version']} (TensorFlow {record['tensorflow_version']}, "
        f"{record.get('map_dtype', 'float32')}{order}) in {record['seconds']:.1f} s: verdicts "
        f"agree for {record['agreed']}/{record['determined']} "
        f"{record.get('map_dtype', 'float32')}-determined ones{epochs}, "
        f"{worst}{aside} (validation.json)."
    )
