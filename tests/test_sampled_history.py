"""A run that keeps only a few epochs' losses (:data:`src.engine.History` as a tuple, what a
large map keeps for its page) returns exactly the columns of the whole history at those
epochs, and the same summaries, in every program layout: full batch and minibatches, both
kernels, a fixed order in segments, shuffled groups, ragged epoch counts."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from marks import quick_few

from src import engine, runner, schema
from src import optimizers as opt
from src.configs import FlatConfigs
from src.problem import Problem
from src.simulator import Simulator
from src.spec import Curve, Sweep

NS = np.arange(1, 21)
KEPT = (1, 2, 3, 7, 19, 30)
"""Epochs to keep: the first (run apart from the loop), inside growth windows, window ends,
one past the shorter configs' epoch counts, the last."""


def configs(name: str, batch_sizes: tuple[int, ...]) -> FlatConfigs:
    bs, n, lr = (g.ravel() for g in np.meshgrid(batch_sizes, NS, np.geomspace(1e-3, 0.3, 4),
                                                 indexing="ij"))  # fmt: skip
    epochs = np.where(np.arange(len(n)) % 3 == 0, 12, 30)  # ragged: some stop at 12
    return FlatConfigs.of([name] * len(n), opt.get(name).family, learning_rate=lr, n=n,
                          batch_size=bs, seed=np.arange(len(n)) % 2, epochs=epochs)  # fmt: skip


CASES = [
    ("sgd", "moments", False, (32,)),
    ("adam", "moments", False, (4, 16)),  # segments: shared step counters
    ("sgd", "autodiff", False, (4,)),
    ("adam", "moments", True, (4, 16)),  # shuffled groups
    ("rmsprop", "autodiff", True, (8,)),
]


@pytest.mark.parametrize(
    ("name", "kernel", "shuffle", "batch_sizes"), quick_few(CASES, CASES[:2])
)
def test_kept_epochs_are_the_whole_history_at_those_epochs(
    name: str, kernel: str, shuffle: bool, batch_sizes: tuple[int, ...]
) -> None:
    table, rows = Problem().table(tuple(NS), "float32")
    sim = Simulator(table, rows, "float32", 1e-4, shuffle, chunk_size=32, kernel=kernel)
    flat = configs(name, batch_sizes)
    whole_summary, whole = sim.run(opt.get(name).family, flat, history=True)
    summary, kept = sim.run(opt.get(name).family, flat, history=KEPT)
    assert kept.shape == (len(flat), len(KEPT))
    np.testing.assert_array_equal(kept, whole[:, np.array(KEPT) - 1])
    assert np.isnan(kept[flat.columns["epochs"] == 12][:, KEPT.index(19)]).all()
    assert np.isfinite(kept[:, 0]).any()
    for a, b in zip(summary, whole_summary, strict=True):
        np.testing.assert_array_equal(a, b)


def test_history_slots() -> None:
    slots = engine.history_slots((1, 3, 5), 6)
    assert slots.tolist() == [0, 3, 1, 3, 2, 3]


def test_a_map_keeps_whole_histories_only_where_a_curve_needs_them_and_they_are_small() -> None:
    sweep = Sweep(optimizer=("sgd",), lr=(0.01, 0.1), n=(5, 10), epochs=(50,),
                  curves=(Curve("sgd", 0.01, 10),))  # fmt: skip
    epochs = runner.sampled_epochs(sweep)
    sampled = schema.SampledLosses(epochs, np.zeros((4, len(epochs))), np.zeros(4, bool))
    captured = runner.CurveCapture(sweep, sweep.resolved_curves, np.zeros((1, 50)))
    assert captured.wanted
    assert runner.map_history(sweep, None, captured) is False
    assert runner.map_history(sweep, sampled, captured) is True
    epochs = tuple(int(e) for e in epochs)
    off_grid = dataclasses.replace(sweep, curves=(Curve("sgd", 0.05, 10),))
    elsewhere = runner.CurveCapture(off_grid, off_grid.resolved_curves, np.zeros((1, 50)))
    assert not elsewhere.wanted
    assert runner.map_history(off_grid, sampled, elsewhere) == epochs
    with pytest.MonkeyPatch.context() as m:
        m.setattr(runner, "WHOLE_HISTORY_EPOCHS", sweep.n_configs * 50 - 1)
        assert runner.map_history(sweep, sampled, captured) == epochs
