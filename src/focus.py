"""The configuration a report is about: its verdict, why, and what would make training work.

A report opens on one configuration, the *focus*: by default the seed's own call,
``model.fit(xs, ys, epochs=500)`` with ``optimizer="sgd"`` (lr 0.01, N = 20, Keras's batch
size 32), or any other one given as ``--focus OPT:LR:N[:BATCH]``. The focus is read at the
map's nearest cell -- learning rate nearest in log scale, N and batch size nearest, the
optimizer itself if the map has it (else the map's first), the reference slice of every other
axis (:func:`src.schema.reference_slice`) -- so it is on the page even when the grid lacks its
exact values, and the page says which cell stands in for it.

:func:`panel` takes the verdict from the map's cell and asks :func:`src.explain.explain` for
the rest on that cell's own configuration (dataset, seed, epochs, batch order,
hyperparameters and the map's status rules): why it trains as it does (the closed form's
critical lr and loss factor where one exists, else the measured critical lr), and the fixes,
each simulated with its loss history, or read off the map's own run where the map keeps that
run's losses as one of its loss curves (:func:`map_trials`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import TypedDict

import numpy as np
import xarray as xr

from src import engine, explain, outcome, store
from src import optimizers as opt
from src.errors import InputError
from src.findings import SEED_N
from src.schema import DIMS, curve_positions, extra_dims, hyperparameters_at, variant_at
from src.spec import SEED_LR


@dataclasses.dataclass(frozen=True)
class Focus:
    """The configuration asked about (defaults: the seed's ``model.fit(xs, ys, epochs=500)``)."""

    optimizer: str = "sgd"
    lr: float = SEED_LR
    n: int = SEED_N
    batch_size: int = 32

    @property
    def text(self) -> str:
        return f"{self.optimizer}:{self.lr:g}:{self.n}:{self.batch_size}"


SEED_FOCUS = Focus()


def parse_focus(text: str) -> Focus:
    """``--focus OPT:LR:N[:BATCH]`` (batch size default 32, Keras's)."""
    parts = text.split(":")
    usage = f"--focus must be OPTIMIZER:LR:N[:BATCH_SIZE], e.g. sgd:0.01:20, got {text!r}"
    if len(parts) not in (3, 4):
        raise InputError(usage)
    name = parts[0].strip().lower()
    if name not in opt.OPTIMIZERS:
        raise InputError(f"--focus: unknown optimizer {parts[0]!r}; valid optimizers: "
                         f"{', '.join(opt.OPTIMIZERS)}")  # fmt: skip
    try:
        lr = float(parts[1])
        n, *batch = (int(v) for v in parts[2:])
    except ValueError:
        raise InputError(usage) from None
    if not (math.isfinite(lr) and lr > 0):
        raise InputError(f"--focus: the learning rate must be a positive number, got {parts[1]}")
    if n < 1 or any(b < 1 for b in batch):
        raise InputError(f"--focus: N and the batch size must be >= 1, got {text!r}")
    return Focus(name, lr, n, batch[0] if batch else 32)


def locate(ds: xr.Dataset, focus: Focus) -> dict[str, int]:
    """The index (along every dim of ``ds.status``) of the map's cell nearest to ``focus``."""
    names = [str(o) for o in ds.optimizer.values]
    index = {d: 0 for d in ds.status.dims}
    index["optimizer"] = names.index(focus.optimizer) if focus.optimizer in names else 0
    index["lr"] = int(np.argmin(np.abs(np.log(ds.lr.values) - math.log(focus.lr))))
    index["n"] = int(np.argmin(np.abs(ds.n.values - focus.n)))
    index["batch_size"] = int(np.argmin(np.abs(ds.batch_size.values - focus.batch_size)))
    index["epochs"] = int(np.argmax(ds.epochs.values))
    return index


class FixRow(TypedDict):
    """One simulated fix as the page shows it."""

    fix: str
    status: str
    final_loss: float | None
    works: bool


class Panel(TypedDict):
    """What the page's focus panel shows (JSON-ready)."""

    requested: str
    exact: bool
    index: dict[str, int]
    optimizer: str
    lr: float
    n: int
    batch_size: int
    seed: int
    epochs: int
    hyperparameters: dict[str, float]
    extra: dict[str, float]
    status: str
    first_nonfinite_epoch: int
    final_loss: float | None
    verdict: str
    why: str
    critical_lr: float | None
    fixes: list[FixRow]
    diagnosis: list[str]


def panel(ds: xr.Dataset, focus: Focus = SEED_FOCUS) -> tuple[Panel, list[tuple[str, np.ndarray]]]:
    """The focus panel of ``ds`` and the loss histories of its fixes (label, losses)."""
    from src.validation import pick_at

    index = locate(ds, focus)
    p = pick_at(ds, index, "focus")
    cell = ds.isel(index)
    case = explain.Case(
        optimizer=p.optimizer, lr=p.lr, n=p.n, batch_size=p.batch_size, epochs=p.epochs,
        seed=p.seed, hyperparameters=dict(p.hyperparameters), problem=variant_at(ds, index),
        tol=float(ds.attrs["tol"]), dtype=str(ds.attrs["dtype"]),
        shuffle=bool(int(ds.attrs.get("shuffle", 0))),
        diverge_factor=float(ds.attrs["diverge_factor"]),
    )  # fmt: skip
    diagnosis = explain.explain(case, histories=True, known=map_trials(ds, index))
    status = outcome.STATUSES[int(cell.status.item())]
    sim = diagnosis["simulated"]
    exact = (
        p.optimizer == focus.optimizer
        and math.isclose(p.lr, focus.lr, rel_tol=1e-6)
        and (p.n, p.batch_size) == (focus.n, focus.batch_size)
    )
    fixes = diagnosis.get("fixes", [])
    result = Panel(
        requested=focus.text,
        exact=exact,
        index=index,
        optimizer=p.optimizer,
        lr=p.lr,
        n=p.n,
        batch_size=p.batch_size,
        seed=p.seed,
        epochs=p.epochs,
        hyperparameters=dict(p.hyperparameters),
        extra={d: float(ds[d].values[index[d]]) for d in extra_dims(ds)},
        status=status,
        first_nonfinite_epoch=int(cell.first_nonfinite_epoch.item()),
        final_loss=store.finite(float(cell.final_loss.item())),
        verdict=(explain.verdict(sim, case.problem.query_words()) if sim["status"] == status
                 else _map_verdict(status, cell)),
        why=why(diagnosis),
        critical_lr=_critical(diagnosis),
        fixes=[
            FixRow(fix=f["fix"], status=f["status"], final_loss=f["final_loss"], works=f["works"])
            for f in fixes
        ],
        diagnosis=explain.describe(diagnosis),
    )
    curves = [
        (f["fix"], np.array([np.nan if v is None else v for v in f.get("history", [])]))
        for f in fixes
    ]
    return result, curves


def map_trials(ds: xr.Dataset, index: Mapping[str, int]) -> explain.Known:
    """The focus panel's trials that are loss curves of the map (``ds``, focus at ``index``),
    read off the map's own run: its cell's results and its curve's losses.

    A loss curve that is a cell of the map is that cell's run, on the first point of the
    data axes with the first value of each swept hyperparameter (``runner.CurveCapture``).
    A trial is one when it trains on that dataset (not standardised; the focus on the first
    point of the data axes) with the curve's optimizer, float32 learning rate, N, batch size,
    seed, the map's longest epoch count and the hyperparameters the map set there. The
    default panel's own configuration and its Adam fixes are: the panel then compiles the
    Adam program no more (~0.7 s of a first run on the 2-core CPU), and shows the numbers
    of the map's own run."""
    dims = list(ds.status.dims)
    curves = {
        (str(c["optimizer"]), np.float32(c["lr"]), int(c["n"]), int(c["batch_size"]),
         int(c["seed"])): i
        for i, c in curve_positions(ds)
    }  # fmt: skip
    first_points = all(index.get(d, 0) == 0 for d in dims if d not in DIMS)
    top = int(np.argmax(ds.epochs.values))

    def known(case: explain.Case) -> tuple[explain.Simulated, np.ndarray] | None:
        key = (case.optimizer, np.float32(case.lr), case.n, case.batch_size, case.seed)
        i = curves.get(key)
        if i is None or not first_points or case.epochs != int(ds.epochs.values[top]):
            return None
        at = {d: 0 for d in dims}
        for d, value in zip(DIMS[:5], key, strict=True):
            axis = ds[d].values
            found = np.flatnonzero(np.float32(axis) == value if d == "lr" else axis == value)
            if not found.size:
                return None
            at[d] = int(found[0])
        at["epochs"] = top
        if dict(case.hyperparameters) != hyperparameters_at(ds, case.optimizer, at):
            return None
        cell = ds.isel(at)
        summary = {k: cell[k].values for k in engine.Summary._fields}
        losses = ds.loss_history.values[i, : case.epochs]
        return explain.simulated(int(cell.status.item()), summary), losses

    return known


def why(diagnosis: explain.Diagnosis) -> str:
    """The reason in one sentence: how the lr compares with the limit of stability."""
    cfg = diagnosis["configuration"]
    th = diagnosis.get("theory")
    if th is not None:
        ratio = th["lr_over_critical"]
        side = "above" if ratio > 1 else "below"
        return (
            f"lr {cfg['lr']:g} is {ratio:.3g} times the critical lr {th['critical_lr']:.4g} "
            f"({th['formula']}), {side} the limit of stability: the loss changes by "
            f"{explain.factor_words(th['predicted_growth_rate'])} per epoch."
        )
    crit = diagnosis.get("measured_critical_lr")
    if crit is None:
        return (
            f"{cfg['optimizer']} has no closed-form limit; it did not break at any lr of the "
            "default grid (up to 1) on this data."
        )
    side = "above" if cfg["lr"] >= crit else "below"
    return (
        f"{cfg['optimizer']} has no closed-form limit; simulated, it breaks from lr "
        f"{crit:.4g}, and lr {cfg['lr']:g} is {cfg['lr'] / crit:.3g} times that ({side})."
    )


def _critical(diagnosis: explain.Diagnosis) -> float | None:
    th = diagnosis.get("theory")
    return th["critical_lr"] if th is not None else diagnosis.get("measured_critical_lr")


def _map_verdict(status: str, cell: xr.Dataset) -> str:
    """The map's verdict in words (used only if a re-run were ever to disagree with it)."""
    if status == "overflow":
        return f"overflow: the loss became inf/nan at epoch {int(cell.first_nonfinite_epoch)}."
    return f"{status}: final loss {float(cell.final_loss):.4g}."
