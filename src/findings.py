"""The headline answers read off a finished stability map.

Everything here reads the map's *reference slice*: the first batch size and seed, the
largest epoch count of the sweep (batch 32, seed 0, 500 epochs by default) and the first value
of every swept hyperparameter. The findings answer
the seed's question -- which N blow up at lr 0.01 with SGD, does Adam, and why -- and list the
largest stable learning rate seen for every N.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from typing import NotRequired, TypedDict

import numpy as np
import xarray as xr

from src import optimizers, outcome, theory
from src.problem import Problem
from src.schema import DIMS, extra_dims, optimal_loss, reference_slice, settings_at
from src.spec import SEED_LR

SEED_N, SEED_STABLE_N = 20, 10
"""The seed's two dataset sizes: N = 20 overflows at lr 0.01 and N = 10 converges."""


class SeedCase(TypedDict):
    """SGD at the seed's lr and N = 20: measured against full-batch theory."""

    optimizer: str
    lr: float
    n: int
    full_batch: bool
    hessian_eigenvalues: list[float]
    critical_lr: float
    theory: str
    theory_growth_rate: float
    measured_growth_rate: float | None
    first_nonfinite_epoch: int
    status: str


class DataRun(TypedDict):
    """One optimizer's run on a user's data (or noisy targets) at the largest N."""

    status: str
    first_nonfinite_epoch: int
    final_loss: float | None
    excess_loss: float | None


class DataCase(TypedDict):
    """Every optimizer at the lr nearest the seed's on the map's largest dataset, and that
    dataset's Hessian limit: the seed's question asked of the user's own data."""

    lr: float
    n: int
    optimal_loss: float
    hessian_max_eigenvalue: float
    gd_critical_lr: float
    runs: dict[str, DataRun]


class CriticalLRs(TypedDict):
    """One optimizer's measured and closed-form critical lr by N (``None``: none)."""

    measured: dict[int, float | None]
    theory: dict[int, float | None]
    fixed_order: dict[int, float | None]
    max_rel_diff: float | None
    non_monotone_n: list[int]


class Findings(TypedDict):
    """Everything :func:`headline` reads off a map (JSON-ready; ``summary.json``)."""

    reference_slice: dict[str, float]
    status_fraction: dict[str, float]
    optimizer_args: dict[str, float]
    seed_lr: float
    statuses_at_seed_lr: dict[str, dict[str, list[int]]]
    seed_case: SeedCase | None
    data_case: NotRequired[DataCase]
    largest_stable_lr: dict[str, dict[int, float | None]]
    critical_lr: dict[str, CriticalLRs]


def compress(values: Iterable[int]) -> str:
    """``[1, 2, 3, 5, 7, 8]`` -> ``"1-3, 5, 7-8"`` (``"none"`` when empty)."""
    runs: list[list[int]] = []
    for v in sorted(int(v) for v in values):
        if runs and v == runs[-1][1] + 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs) or "none"


def nearest_lr(ds: xr.Dataset, lr: float) -> float:
    """The grid learning rate closest to ``lr`` in log scale."""
    grid = ds.lr.values
    return float(grid[np.argmin(np.abs(np.log(grid) - math.log(lr)))])


def statuses_by_n(ref: xr.Dataset, optimizer: str, lr: float) -> dict[str, list[int]]:
    """For one optimizer and lr: the dataset sizes N in each status."""
    codes = ref.status.sel(optimizer=optimizer, lr=lr).values
    return {
        name: [int(n) for n in ref.n.values[codes == k]] for k, name in enumerate(outcome.STATUSES)
    }


def largest_stable_lr(ref: xr.Dataset) -> dict[str, dict[int, float | None]]:
    """Per optimizer and N: the largest grid lr that neither overflowed nor diverged."""
    stable = outcome.stable(ref.status)
    out: dict[str, dict[int, float | None]] = {}
    for name in ref.optimizer.values:
        rows = stable.sel(optimizer=name).transpose("n", "lr").values
        out[str(name)] = {
            int(n): (float(ref.lr.values[row].max()) if row.any() else None)
            for n, row in zip(ref.n.values, rows, strict=True)
        }
    return out


def seed_case(ds: xr.Dataset, problem: Problem) -> SeedCase | None:
    """SGD at the seed's lr and N = 20: measured versus full-batch theory (None if absent)."""
    ref = reference_slice(ds)
    if "sgd" not in ref.optimizer.values or SEED_N not in ref.n.values:
        return None
    if settings_at(ds, "sgd", {}) != optimizers.get("sgd").settings():
        return None  # the reference slice's "sgd" is not Keras's plain SGD
    lr = nearest_lr(ds, SEED_LR)
    if not math.isclose(lr, SEED_LR, rel_tol=1e-9):
        return None
    x = problem.dataset(SEED_N)[0]
    eig = theory.hessian_eigenvalues(x)
    cell = ref.sel(optimizer="sgd", lr=lr, n=SEED_N)
    batch = int(ds.batch_size.values[0])
    return SeedCase(
        optimizer="sgd",
        lr=lr,
        n=SEED_N,
        full_batch=batch >= SEED_N,
        hessian_eigenvalues=[float(e) for e in eig],
        critical_lr=theory.gd_critical_lr(x),
        theory=(
            "full-batch GD on L = mean((w x + b - y)^2): e <- (I - lr H) e with "
            "H = 2 [[mean x^2, mean x], [mean x, 1]]; stable iff lr < 2 / lambda_max; "
            "the loss grows by (1 - lr lambda_max)^2 per epoch"
        ),
        theory_growth_rate=theory.gd_loss_growth(lr, x),
        measured_growth_rate=_finite(cell.growth_rate.item()),
        first_nonfinite_epoch=int(cell.first_nonfinite_epoch.item()),
        status=outcome.STATUSES[int(cell.status.item())],
    )


def data_case(ds: xr.Dataset) -> DataCase:
    """Each optimizer at the lr nearest the seed's, on the largest N of the reference slice."""
    ref = reference_slice(ds)
    lr = nearest_lr(ds, SEED_LR)
    n = int(ref.n.values.max())
    at = ref.sel(lr=lr, n=n)
    optimal = float(optimal_loss(at).item())
    runs = {}
    for name in ref.optimizer.values:
        cell = at.sel(optimizer=name)
        final = float(cell.final_loss.item())
        runs[str(name)] = DataRun(
            status=outcome.STATUSES[int(cell.status.item())],
            first_nonfinite_epoch=int(cell.first_nonfinite_epoch.item()),
            final_loss=_finite(final),
            excess_loss=_finite(final - optimal),
        )
    return DataCase(
        lr=lr, n=n, optimal_loss=optimal,
        hessian_max_eigenvalue=float(at.hessian_max_eigenvalue.item()),
        gd_critical_lr=float(at.gd_critical_lr.item()), runs=runs,
    )  # fmt: skip


def headline(ds: xr.Dataset, problem: Problem) -> Findings:
    """All findings as a JSON-ready dict (non-finite numbers become ``None``)."""
    ref = reference_slice(ds)
    lr = nearest_lr(ds, SEED_LR)
    status = ds.status.values
    counts = [np.count_nonzero(status == k) for k in range(len(outcome.STATUSES))]
    found: Findings = {
        "reference_slice": {
            "batch_size": int(ref.batch_size.item()),
            "seed": int(ref.seed.item()),
            "epochs": int(ref.epochs.item()),
            **{d: float(ref[d].item()) for d in extra_dims(ds)},
        },
        "status_fraction": {
            name: float(c) / ds.status.size
            for name, c in zip(outcome.STATUSES, counts, strict=True)
        },
        "optimizer_args": json.loads(ds.attrs.get("optimizer_args", "{}")),
        "seed_lr": lr,
        "statuses_at_seed_lr": {
            str(o): statuses_by_n(ref, str(o), lr) for o in ref.optimizer.values
        },
        "seed_case": seed_case(ds, problem),
        "largest_stable_lr": largest_stable_lr(ref),
        "critical_lr": critical_lrs(ref),
    }
    if problem.data or "noise" in ds.dims:  # the user's own data: their question answered
        found["data_case"] = data_case(ds)
    return found


def critical_lrs(ref: xr.Dataset) -> dict[str, CriticalLRs]:
    """Per optimizer: measured and closed-form critical lr by N, and their largest relative
    difference where both exist (``None`` where there is no closed form). ``fixed_order``:
    the closed form of the same run without shuffling, where the map shuffles minibatches
    (maps saved before it existed: none)."""
    out: dict[str, CriticalLRs] = {}
    for name in ref.optimizer.values:
        cell = ref.sel(optimizer=name)
        measured, closed = cell.critical_lr.values, cell.theory_critical_lr.values
        fixed = cell.get("fixed_order_critical_lr", cell.theory_critical_lr).values
        fixed = np.where(np.isfinite(closed), np.nan, fixed)
        both = np.isfinite(measured) & np.isfinite(closed)
        out[str(name)] = {
            "measured": {int(n): _finite(v) for n, v in zip(ref.n.values, measured, strict=True)},
            "theory": {int(n): _finite(v) for n, v in zip(ref.n.values, closed, strict=True)},
            "fixed_order": {int(n): _finite(v) for n, v in zip(ref.n.values, fixed, strict=True)},
            "max_rel_diff": float(np.max(np.abs(measured[both] / closed[both] - 1)))
            if both.any()
            else None,
            "non_monotone_n": [int(n) for n in ref.n.values[cell.non_monotone.values > 0]],
        }
    return out


def describe(findings: Findings, optimizers: Sequence[str]) -> list[str]:
    """The findings in words, one line each (the main job's stdout)."""
    lr = findings["seed_lr"]
    by_opt = findings["statuses_at_seed_lr"]
    ref = findings["reference_slice"]
    swept = {k: v for k, v in ref.items() if k not in DIMS}
    lines = [
        "Findings and tables read the first value of each swept hyperparameter: "
        + ", ".join(f"{k} = {v:g}" for k, v in swept.items())
        + " (where an optimizer has it; every value is in stability_map.nc)."
    ] if swept else []  # fmt: skip
    fixed = findings["optimizer_args"]
    if fixed:
        lines.append(
            "Fixed optimizer arguments (where an optimizer has them): "
            + ", ".join(f"{k} = {v:g}" for k, v in fixed.items())
            + "."
        )
    lines += [
        f"At lr {lr:g}"
        + (" (the seed's)" if math.isclose(lr, SEED_LR) else " (nearest to 0.01)")
        + ":"
    ]
    for name in optimizers:
        groups = by_opt[name]
        parts = [f"{s} N = {compress(groups[s])}" for s in reversed(outcome.STATUSES) if groups[s]]
        if not groups["overflow"]:
            parts.insert(0, "never overflows")
        lines.append(f"  {name:<9} " + "; ".join(parts))
    case = findings["seed_case"]
    if case is not None:
        sgd = by_opt["sgd"]
        lines.append(
            f"The seed's question: with SGD at lr {lr:g} the loss "
            + (
                f"overflows for N = {compress(sgd['overflow'])}"
                if sgd["overflow"]
                else "never overflows"
            )
            + (f", N = {SEED_N} included" if SEED_N in sgd["overflow"] else "")
            + (
                f"; N = {SEED_STABLE_N} {_status_of(sgd, SEED_STABLE_N)}"
                if any(SEED_STABLE_N in v for v in sgd.values())
                else ""
            )
            + "."
        )
        if "adam" in by_opt:
            adam = _status_of(by_opt["adam"], SEED_N)
            note = "" if adam == "overflow" else " (it does not overflow)"
            lines.append(f"Adam at lr {lr:g}, N = {SEED_N}: {adam}{note}.")
        lam = case["hessian_eigenvalues"][-1]
        measured = case["measured_growth_rate"]
        kind = "full-batch " if case["full_batch"] else ""
        lines.append(
            f"Why: {kind}gradient descent multiplies the loss by (1 - lr*lambda_max)^2 per epoch,"
            f" lambda_max being the largest eigenvalue of the loss Hessian."
        )
        lines.append(
            f"  For N = {SEED_N}, lambda_max = {lam:.2f}, so at lr {lr:g} the factor is "
            f"{case['theory_growth_rate']:.4f} (measured: "
            + (f"{measured:.4f}" if measured is not None else "n/a")
            + f"); the largest stable lr is 2/lambda_max = {case['critical_lr']:.6f}."
        )
        if case["first_nonfinite_epoch"] > 0:
            lines.append(
                f"  The loss first became non-finite at epoch {case['first_nonfinite_epoch']}."
            )
    data = findings.get("data_case")
    if data is not None:
        lines += describe_data(data)
    return lines


def describe_data(case: DataCase) -> list[str]:
    """The user's question in words: what each optimizer did on their largest dataset."""
    floor = case["optimal_loss"]
    lines = [f"Your data, N = {case['n']}, at lr {case['lr']:g}:"]
    for name, run in case["runs"].items():
        words = run["status"]
        if run["first_nonfinite_epoch"] > 0:
            words += f": the loss became inf/nan at epoch {run['first_nonfinite_epoch']}"
        elif run["final_loss"] is not None:
            words += f": final loss {run['final_loss']:.4g}"
            if floor > 0 and run["excess_loss"] is not None:
                words += f", {run['excess_loss'] / floor:.2%} above the best fit"
        lines.append(f"  {name:<9} {words}")
    lines.append(
        f"  The best fit (least squares) has loss L* = {floor:.4g}; the loss Hessian's largest "
        f"eigenvalue is {case['hessian_max_eigenvalue']:.4g}, so full-batch gradient descent "
        f"is stable only for lr < 2/lambda_max = {case['gd_critical_lr']:.4g}."
    )
    return lines


SHOWN_NS = (1, 2, 5, 10, 16, 17, 20, 24, 32, 33, 48, 64, 128, 256)
"""The dataset sizes of the text tables when the map has many (all are in summary.json)."""


def shown_ns(ns: Sequence[int]) -> list[int]:
    """All ``ns`` if there are few, else those in :data:`SHOWN_NS` plus the first and last."""
    ns = list(ns)
    return ns if len(ns) <= 12 else [n for n in ns if n in SHOWN_NS or n in (ns[0], ns[-1])]


def critical_lr_table(
    findings: Findings, optimizers: Sequence[str], ns: Sequence[int]
) -> list[str]:
    """Rows of measured vs closed-form critical lr (optimizers with a closed form)."""
    crit = findings["critical_lr"]
    names = [o for o in optimizers if crit[o]["max_rel_diff"] is not None]
    if not names:
        return []

    def theory(o: str, n: int) -> str:
        fixed = crit[o].get("fixed_order", {}).get(n)
        return f"{_g(fixed)}*" if fixed is not None else f"{_g(crit[o]['theory'][n])} "

    rows = [f"{'N':>5}" + "".join(f"{o + ' meas.':>17}{'theory':>12}" for o in names)]
    for n in ns:
        cells = [f"{_g(crit[o]['measured'][n]):>17}{theory(o, n):>12}" for o in names]
        rows.append((f"{n:>5}" + "".join(cells)).rstrip())
    rows.append(
        "max |measured/theory - 1|: "
        + ", ".join(f"{o} {crit[o]['max_rel_diff']:.2%}" for o in names)
    )
    if any(v is not None for o in names for v in crit[o].get("fixed_order", {}).values()):
        rows.append(
            "* fixed order: this map shuffles its minibatches, which have no closed form; the "
            "value is what the same run with shuffle=False would do"
        )
    return rows


def _g(v: float | None) -> str:
    return "-" if v is None else f"{v:.5g}"


def stable_lr_table(
    findings: Findings,
    optimizers: Sequence[str],
    ns: Sequence[int],
    grid_top: float | None = None,
) -> list[str]:
    """Rows of "largest stable lr" for the given N (a fixed-width text table). In words where
    a number would mislead: ``none`` (no lr of the grid is stable) and, given the grid's
    largest lr ``grid_top``, ``grid edge`` (stable at every lr of the grid)."""
    table = findings["largest_stable_lr"]
    head = f"{'N':>5}" + "".join(f"{name:>11}" for name in optimizers)
    rows = [head]

    def word(v: float | None) -> str:
        if v is None:
            return "none"
        return "grid edge" if grid_top is not None and math.isclose(v, grid_top) else f"{v:.4g}"

    for n in ns:
        rows.append(f"{n:>5}" + "".join(f"{word(table[name][n]):>11}" for name in optimizers))
    edge = grid_top is not None and any(
        word(table[name][n]) == "grid edge" for name in optimizers for n in ns
    )
    if edge:
        rows.append(f"grid edge: stable at every lr of the grid, up to {grid_top:g}")
    return rows


def _status_of(groups: dict[str, list[int]], n: int) -> str:
    for status, members in groups.items():
        if n in members:
            return status
    return "not in the grid"


def _finite(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None
