"""The stability results themselves, tracked commit by commit: a changed critical lr after a
refactor is a bug. Values are plain floats; non-finite ones are NaN (asv publish needs that)."""

from __future__ import annotations

import math

from src.outcome import STATUSES
from src.runner import run
from src.spec import DEFAULT_OPTIMIZERS, Sweep

from . import slow

TRACKED_N = [5, 20, 33, 64]  # full batch (5, 20) and two-batch epochs (33, 64)


def _float(v: float) -> float:
    v = float(v)
    return v if math.isfinite(v) else math.nan


@slow
class CriticalLR:
    """Measured and closed-form critical lr per optimizer x N (batch 32, seed 0, 500 epochs)."""

    params = (list(DEFAULT_OPTIMIZERS), TRACKED_N)
    param_names = ["optimizer", "n"]
    unit = "learning rate"
    timeout = 900

    def setup_cache(self) -> dict[tuple[str, int], tuple[float, float]]:
        ds, _ = run(Sweep(n=tuple(TRACKED_N)))
        cell = ds.isel(batch_size=0, seed=0, epochs=0)
        return {
            (o, n): (
                _float(cell.critical_lr.sel(optimizer=o, n=n)),
                _float(cell.theory_critical_lr.sel(optimizer=o, n=n)),
            )
            for o in DEFAULT_OPTIMIZERS
            for n in TRACKED_N
        }

    def track_critical_lr(self, cache: dict, optimizer: str, n: int) -> float:
        return cache[optimizer, n][0]

    def track_theory_critical_lr(self, cache: dict, optimizer: str, n: int) -> float:
        return cache[optimizer, n][1]


@slow
class DefaultMapStatus:
    """Fraction of the default map in each status."""

    params = [list(STATUSES)]
    param_names = ["status"]
    unit = "fraction"
    timeout = 900

    def setup_cache(self) -> dict[str, float]:
        ds, _ = run(Sweep())
        codes = ds.status.values.ravel()
        return {name: float((codes == k).mean()) for k, name in enumerate(STATUSES)}

    def track_status_fraction(self, cache: dict[str, float], status: str) -> float:
        return cache[status]


class SeedCase:
    """The seed itself: SGD at lr 0.01 on N = 20 -- its loss growth and overflow epoch."""

    timeout = 300

    def setup_cache(self) -> dict[str, float]:
        ds, _ = run(Sweep(optimizer=("sgd",), lr=(0.01,), n=(20,)))
        cell = ds.squeeze()
        return {
            "growth": _float(cell.growth_rate),
            "epoch": float(cell.first_nonfinite_epoch),
        }

    def track_sgd_growth_rate_n20(self, cache: dict[str, float]) -> float:
        return cache["growth"]

    track_sgd_growth_rate_n20.unit = "loss ratio per epoch"  # type: ignore[attr-defined]

    def track_sgd_overflow_epoch_n20(self, cache: dict[str, float]) -> float:
        return cache["epoch"]

    track_sgd_overflow_epoch_n20.unit = "epoch"  # type: ignore[attr-defined]
