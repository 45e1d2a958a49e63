"""One owner per idea: the rules that several modules rely on, each tested where it lives.

* :mod:`src.outcome` says what is stable and what breaks, for NumPy and xarray alike;
* :func:`src.theory.closed_form` decides alone whether a closed form applies (sweep, explain);
* :mod:`src.schema` serialises every :class:`~src.problem.Problem` field and reads it back;
* the engine's batch building and epoch tracker are plain functions, tested alone;
* importing the package changes nothing in the process (no ``XLA_FLAGS``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

from src import engine, explain, outcome, schema, theory
from src.problem import Problem
from src.runner import theory_critical_lr
from src.spec import Sweep

ROOT = Path(__file__).resolve().parents[1]


def test_stable_and_breaking_partition_the_statuses() -> None:
    codes = np.arange(len(outcome.STATUSES))
    breaks, stable = outcome.breaks(codes), outcome.stable(codes)
    assert list(breaks) == [s in ("diverging", "overflow") for s in outcome.STATUSES]
    assert np.array_equal(stable, ~breaks)
    labelled = xr.DataArray(codes, dims="k", coords={"k": list(outcome.STATUSES)})
    assert isinstance(outcome.stable(labelled), xr.DataArray)  # keeps labels for .sel
    assert bool(outcome.stable(labelled).sel(k="slow"))
    assert [name for name, _ in outcome.explained(1e-4, 1.0)] == sorted(
        outcome.STATUSES, key=["overflow", "converged", "diverging", "slow"].index
    )


@pytest.mark.parametrize(
    ("optimizer", "overrides", "one_batch", "shuffle", "expected"),
    [
        ("sgd", {}, True, False, theory.Dynamics(0.0, False)),
        ("nesterov", {}, False, False, theory.Dynamics(0.9, True)),
        ("momentum", {"momentum": 0.5}, True, True, theory.Dynamics(0.5, False)),
        ("sgd", {}, False, True, None),  # shuffled minibatches: no fixed epoch map
        ("sgd", {"clipvalue": 1.0}, True, False, None),  # any base option, not only clipnorm
        ("sgd", {"clipnorm": math.inf}, True, False, theory.Dynamics(0.0, False)),  # "off"
        ("momentum", {"momentum": 1.0}, True, False, None),
        ("adam", {}, True, False, None),
        ("sgd", {"beta_1": 0.5}, True, False, theory.Dynamics(0.0, False)),  # not SGD's: ignored
    ],
)
def test_one_rule_decides_the_closed_form(optimizer, overrides, one_batch, shuffle, expected):
    got = theory.closed_form(optimizer, overrides, one_batch=one_batch, shuffle=shuffle)
    assert got == expected


def test_explain_and_sweep_agree_on_the_closed_form() -> None:
    # clipvalue is a base option: neither the sweep nor explain may use the closed form.
    clipped = {"clipvalue": 1.0}
    case = explain.Case(optimizer="sgd", lr=0.01, n=20, epochs=30, hyperparameters=clipped)
    assert explain.dynamics_of(case) is None
    sweep = Sweep(optimizer=("sgd",), lr=(0.01,), n=(20,), epochs=(30,),
                  optimizer_args=(("clipvalue", 1.0),))  # fmt: skip
    assert np.isnan(theory_critical_lr(sweep)).all()
    plain = dataclasses.replace(case, hyperparameters={})
    closed = theory_critical_lr(dataclasses.replace(sweep, optimizer_args=()))
    assert explain.dynamics_of(plain) == theory.PLAIN
    assert closed.ravel()[0] == pytest.approx(theory.gd_critical_lr(Problem().dataset(20)[0]))


def test_every_problem_field_round_trips_through_the_map_attributes() -> None:
    p = Problem(slope=-1.5, intercept=2.25, x_start=0.5, x_step=0.125, standardize=True)
    attrs = schema.problem_attrs(p)
    assert set(attrs) == {f"problem_{f.name}" for f in dataclasses.fields(Problem)}
    assert schema.problem_of(xr.Dataset(attrs=attrs)) == p


def test_one_lookup_from_dataset_size_to_table_row() -> None:
    table, rows = Problem().table([7, 3, 7, 20], "float32")
    assert list(table.n) == [3, 7, 20]
    assert [int(table.n[rows[n]]) for n in (3, 7, 20)] == [3, 7, 20]


def test_batches_of_an_epoch_cover_the_data_once() -> None:
    table, rows = Problem().table([5], "float32")
    shapes = engine.Shapes.covering([5], [2], [3])
    cfg = engine.Group(data_row=np.int32(rows[5]), n=np.int32(5), batch_size=np.int32(2))
    key = engine._keys(0)[1]
    for shuffle in (False, True):
        x, y, valid = engine.batches_of_epoch(
            cfg, table, key, jnp.int32(1), shapes, "autodiff", shuffle
        )
        assert x.shape == (3, 2, 1) and valid.sum() == 5  # (batches, slots, features)
        x = np.asarray(x)[..., 0]
        assert sorted(x[np.asarray(valid)]) == [1, 2, 3, 4, 5]
        np.testing.assert_array_equal(np.asarray(y)[np.asarray(valid)],
                                      0.5 * x[np.asarray(valid)])  # fmt: skip


def test_the_epoch_tracker_records_first_events_and_growth() -> None:
    tr = engine.new_tracker(jnp.float32)
    threshold = jnp.float32(1e-3)
    losses = [4.0, 2.0, 1e-4, 5e-5, jnp.inf, jnp.nan]
    for number, loss in enumerate(losses, 1):
        tr = engine.track_epoch(tr, jnp.float32(loss), jnp.int32(number), True, threshold, False)
        if number in (2, 4):  # window ends: the growth marks, the converged epoch so far
            tr = engine.close_window(tr, jnp.int32(number), jnp.int32(6))
    assert float(engine._converged_epoch(tr)) == 3  # first loss <= threshold, read at epoch 4
    assert float(tr.events) + 2 * engine._NEVER == 5  # first non-finite epoch wins the minimum
    assert float(tr.mark) == np.float32(5e-5) and int(tr.mark_epoch) == 4
    assert float(tr.prev) == 2.0 and int(tr.prev_epoch) == 2
    # A config past its own epoch count (ragged) changes nothing.
    same = engine.track_epoch(tr, jnp.float32(0.0), jnp.int32(7), False, threshold, True)
    assert float(same.events) == float(tr.events) and np.isnan(float(same.final_loss))


def test_importing_the_package_leaves_xla_flags_alone() -> None:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    code = (
        "import os, src, src.stability_map, src.runner, src.report, src.validation\n"
        "print(repr(os.environ.get('XLA_FLAGS')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, check=True).stdout.strip()  # fmt: skip
    assert out == "None"
