"""Padding and masking are exact no-ops: a configuration run alone (with the smallest shapes
that hold it) and the same configuration padded into a larger chunk give identical bits;
so does running it in a chunk that shares its batches (:class:`src.engine.Group`, where the
autodiff kernel differentiates slot by slot)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from src import engine
from src import optimizers as opt

# One padded shape for every example, so the padded program compiles once per family.
PADDED = engine.Shapes(n_max=24, n_batches=24, batch_width=32, epochs=9)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    both_nan = np.isnan(a) & np.isnan(b) if a.dtype.kind == "f" else np.zeros(a.shape, bool)
    view = {4: np.uint32, 8: np.uint64}[a.dtype.itemsize]
    return bool(np.all(both_nan | (a.view(view) == b.view(view))))


config = st.fixed_dictionaries(
    {
        "name": st.sampled_from(sorted(opt.OPTIMIZERS)),
        "lr": st.floats(-4.5, -0.5).map(lambda e: float(10**e)),
        "n": st.integers(1, 12),
        "batch_size": st.integers(1, 16),
        "epochs": st.integers(1, 6),
        "seed": st.integers(0, 2**32 - 1),
        "shuffle": st.booleans(),
        "kernel": st.sampled_from(["autodiff", "moments"]),
        "group": st.booleans(),
    }
)


@pytest.mark.slow  # 25 examples, most compiling programs of their own
@settings(max_examples=25, deadline=None)
@given(config)
def test_padded_run_is_bit_identical_to_the_run_alone(simulate: Callable, c: dict) -> None:
    grouped = c["group"] and not c["shuffle"]  # a group's batches are fixed
    alone_shapes = engine.Shapes.covering([c["n"]], [c["batch_size"]], [c["epochs"]])
    alone, alone_hist = simulate(
        c["name"],
        [c["lr"]],
        [c["n"]],
        [c["batch_size"]],
        [c["epochs"]],
        [c["seed"]],
        shuffle=c["shuffle"],
        shapes=alone_shapes,
        kernel=c["kernel"],
        group=grouped,
    )
    # Neighbours with a larger N, more and smaller batches and more epochs force every kind
    # of padding onto the config under test (index 1).
    padded, padded_hist = simulate(
        c["name"],
        [0.01, c["lr"], 0.001],
        [24, c["n"], 20],
        [1, c["batch_size"], 32],
        [9, c["epochs"], 3],
        [1, c["seed"], 2],
        shuffle=c["shuffle"],
        shapes=PADDED,
        kernel=c["kernel"],
    )
    for field in engine.Summary._fields:
        assert same_bits(getattr(alone, field)[0], getattr(padded, field)[1]), field
    assert same_bits(alone_hist[0], padded_hist[1, : c["epochs"]])
    assert np.all(np.isnan(padded_hist[1, c["epochs"] :]))
    if grouped:  # padded as a group: neighbours share its dataset and batch size
        shared, shared_hist = simulate(
            c["name"],
            [0.01, c["lr"], 0.001],
            [c["n"]] * 3,
            [c["batch_size"]] * 3,
            [9, c["epochs"], 3],
            [1, c["seed"], 2],
            shuffle=c["shuffle"],
            shapes=PADDED,
            kernel=c["kernel"],
            group=True,
        )
        for field in engine.Summary._fields:
            assert same_bits(getattr(alone, field)[0], getattr(shared, field)[1]), field
        assert same_bits(alone_hist[0], shared_hist[1, : c["epochs"]])


def test_masked_steps_do_not_advance_the_adam_step_counter(simulate: Callable) -> None:
    # Adam's bias correction depends on t: had masked batches counted, the padded run with
    # 24 batch rows would see t grow 24 per epoch instead of 1 and its weights would differ.
    alone, _ = simulate("adam", [0.05], [5], [32], [4], [0])
    padded, _ = simulate("adam", [0.05, 0.05], [24, 5], [1, 32], [9, 4], [0, 0], shapes=PADDED)
    assert same_bits(alone.final_w[0], padded.final_w[1])
    more_steps, _ = simulate("adam", [0.05], [5], [1], [4], [0])  # 5 real steps per epoch
    assert not same_bits(alone.final_w[0], more_steps.final_w[0])
