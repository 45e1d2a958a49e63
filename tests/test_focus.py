"""The focus panel reads the trials that are loss curves of the map off the map's own run:
the numbers a simulation of their own gives, bit for bit, and only those trials."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import xarray as xr

from src import explain, focus, runner, simulator
from src.spec import Sweep


@pytest.fixture(scope="module")
def seed_map() -> xr.Dataset:
    # The seed's curves (SGD at 0.01 on N = 20 and 10, Adam at 0.01 and 0.001 on N = 20) are
    # cells of this map; 60 epochs keep it small.
    sweep = Sweep(
        optimizer=("sgd", "adam"), lr=(0.001, 0.003, 0.01, 0.03), n=(10, 20), epochs=(60,)
    )
    # Compiled as a large map's programs are, with LLVM's optimisations, unlike the panel's
    # own trials (a few configurations each): the same bits either way.
    with pytest.MonkeyPatch.context() as m:
        m.setattr(simulator, "SMALL_PROGRAM_STEPS", 0)
        ds, _ = runner.run(sweep)
    return ds


def _case(ds: xr.Dataset) -> tuple[dict[str, int], explain.Case]:
    # The seed's focus cell and its case, as focus.panel builds them.
    index = focus.locate(ds, focus.Focus())
    return index, explain.Case(
        optimizer="sgd", lr=float(ds.lr.values[index["lr"]]), n=20, batch_size=32, epochs=60,
        seed=0, hyperparameters={}, problem=focus.variant_at(ds, index),
        tol=float(ds.attrs["tol"]), dtype="float32", shuffle=bool(ds.attrs["shuffle"]),
        diverge_factor=float(ds.attrs["diverge_factor"]),
    )  # fmt: skip


def test_trials_that_are_curves_of_the_map_are_its_own_runs(seed_map: xr.Dataset) -> None:
    index, case = _case(seed_map)
    known = focus.map_trials(seed_map, index)
    adam = [dataclasses.replace(case, optimizer="adam", lr=lr) for lr in (0.001, 0.01)]
    for c in (case, dataclasses.replace(case, n=10), *adam):
        hit = known(c)
        assert hit is not None, c
        simulated, losses = explain.Lab(c).trial(c, history=True)  # simulated anew
        assert hit[0] == simulated
        assert losses is not None and hit[1].shape == losses.shape == (60,)
        assert np.array_equal(hit[1], losses, equal_nan=True)
    assert known(case)[0]["status"] == "diverging"  # the seed's run, 6 epochs short of inf
    # Not curves of the map: an lr off the grid, a cell without a curve, another
    # hyperparameter, epoch count or seed.
    misses = [{"lr": 0.005}, {"optimizer": "adam", "lr": 0.003},
              {"hyperparameters": {"clipnorm": 1.0}}, {"epochs": 30}, {"seed": 1}]  # fmt: skip
    for change in misses:
        assert known(dataclasses.replace(case, **change)) is None, change


def test_the_panel_from_the_map_is_the_panel_simulated(seed_map: xr.Dataset) -> None:
    # The whole diagnosis, fixes and their histories included, with and without the map's
    # runs: the same (the standardised and clipped fixes are simulated either way).
    index, case = _case(seed_map)
    asked = []
    known = focus.map_trials(seed_map, index)

    def counting(c: explain.Case) -> tuple[explain.Simulated, np.ndarray] | None:
        found = known(c)
        asked.append(found is not None)
        return found

    with_map = explain.explain(case, histories=True, known=counting)
    assert with_map == explain.explain(case, histories=True)
    assert asked.count(True) == 3 and len(asked) >= 5  # the case and both Adam fixes
