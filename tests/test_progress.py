"""Progress you can trust: every phase after the map reports its own total and reaches it."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import xarray as xr

from src import boundary
from src.runner import run
from src.spec import Curve, Sweep


@pytest.mark.slow  # a whole map with curves and boundary
@pytest.mark.parametrize(
    ("shuffle", "curves"),
    [(True, None), (False, None), (True, (Curve("momentum", 0.02, 20, 8),))],
    ids=["shuffled", "fixed-order", "a curve off the grid"],
)
def test_every_phase_ticks_to_its_total(shuffle: bool, curves: tuple[Curve, ...] | None) -> None:
    sweep = Sweep(
        curves=curves,
        optimizer=("sgd", "momentum"),  # one family: one program to compile per phase
        lr=(0.001, 0.003, 0.01, 0.03),
        n=tuple(range(1, 41)),
        batch_size=(8,),  # minibatches: the search refines and bisects between grid points
        epochs=(30,),
        shuffle=shuffle,
    )
    started: list[tuple[str, int, str]] = []
    ticks: list[list[int]] = []
    map_ticks: list[int] = []

    def phase(name: str, total: int, unit: str) -> Callable[[int], None]:
        assert not ticks or sum(ticks[-1]) == started[-1][1], "the last phase did not finish"
        started.append((name, total, unit))
        ticks.append([])
        return ticks[-1].append

    ds, _ = run(sweep, progress=map_ticks.append, phase=phase)

    assert sum(map_ticks) == sweep.n_configs
    names = [name for name, _, _ in started]
    # The seed's SGD curves (lr 0.01, N = 20 and N = 10) are cells of this map: they come
    # from its own run, and no loss-curve phase runs; a curve off the grid runs in one.
    if curves is None:
        assert names == [boundary.REFINING, boundary.BISECTING]
    else:
        assert names == ["loss curves", boundary.REFINING, boundary.BISECTING]
        assert started[0][1:] == (1, "family")
    assert not np.isnan(ds.loss_history.values).all(axis=1).any()
    for (name, total, _), done in zip(started, ticks, strict=True):
        assert total > 0, name
        assert all(k > 0 for k in done), (name, done)
        assert sum(done) == total, (name, total, done)
    xr.testing.assert_identical(ds, run(sweep)[0])  # the hooks change nothing in the map
