"""The map is what Keras does: float64 runs agree with Keras to 1e-10, and float32 runs
overflow at Keras's own epoch, whichever kernel made the map.

A float64 run takes rounding out of the comparison: what is left is a difference of
semantics, a bug. Shuffled runs replay the order Keras recorded (:mod:`src.keras_reference`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from test_keras_reference import CASES

from src import engine, keras_reference, theory
from src.problem import Problem
from src.validation import FLOAT32_AGREEMENT, first_nonfinite, max_relative_error

pytestmark = pytest.mark.slow  # Keras model.fit, ~2-5 s a case

FLOAT64_RTOL = 1e-10


def _orders(run: keras_reference.KerasRun, n: int, epochs: int) -> np.ndarray:
    assert run.orders is not None
    return run.orders.reshape(1, epochs, n)


@pytest.mark.parametrize(
    ("name", "lr", "n", "bs", "epochs", "hp"), CASES, ids=lambda v: str(v).replace(" ", "")
)
def test_float64_history_matches_keras_to_1e_10(
    name: str, lr: float, n: int, bs: int, epochs: int, hp: dict[str, float], simulate: Callable
) -> None:
    # Keras in float64 (floatx), shuffled as fit does by default; the engine replays Keras's
    # order, with both kernels.
    x, y, _ = Problem().dataset(n)
    w0 = float(engine.initial_params(0).w[0])
    keras = keras_reference.fit(
        name, lr, x, y, w0, 0.0, bs, epochs, hp, shuffle=True, seed=None, dtype="float64"
    )
    for kernel in ("moments", "autodiff"):
        summary, history = simulate(
            name, [lr], [n], [bs], [epochs], [0], dtype="float64", shuffle=True,
            hyperparameters=hp, kernel=kernel, orders=_orders(keras, n, epochs),
        )  # fmt: skip
        ours = history[0].astype(np.float64)
        assert np.array_equal(np.isfinite(ours), np.isfinite(keras.history)), kernel
        err = max_relative_error(ours, keras.history)
        assert err <= FLOAT64_RTOL, (kernel, err)
        if np.isfinite(keras.w):
            np.testing.assert_allclose(
                [summary.final_w[0], summary.final_b[0]], [keras.w, keras.b],
                rtol=FLOAT64_RTOL, atol=1e-12,
            )  # fmt: skip


# Overflowing SGD-family runs on data other than the seed's: x from 0.5 in steps of 0.7,
# y = -0.8 x + 1.3; a full batch, and minibatches with a partial last batch.
DATA = Problem(slope=-0.8, intercept=1.3, x_start=0.5, x_step=0.7)
OVERFLOWING = [
    (name, n, bs)
    for name in ("sgd", "momentum", "nesterov")
    for n, bs in ((20, 32), (13, 4), (22, 8))
]


@pytest.mark.parametrize(("name", "n", "bs"), OVERFLOWING)
def test_first_nonfinite_epoch_is_keras_s(name: str, n: int, bs: int, simulate: Callable) -> None:
    # Above the closed-form critical lr, where the loss grows >= 2.5x per epoch: it overflows
    # float32 within ~100 epochs, and the
    # epoch Keras first reports inf (its batch sums of squares overflow) is the map's, with
    # either kernel.
    from src import optimizers as opt

    x, y, _ = DATA.dataset(n)
    settings = opt.get(name).settings({})
    dynamics = theory.Dynamics(settings["momentum"], bool(settings["nesterov"]))
    lr = theory.critical_lr(x, bs, dynamics)
    while theory.loss_growth(x, bs, lr, dynamics) < 2.5:  # rho(M) need not grow with lr
        lr *= 1.05
    lr = float(np.float32(lr))
    epochs = 160
    w0 = float(engine.initial_params(0).w[0])
    keras = keras_reference.fit(name, lr, x, y, w0, 0.0, bs, epochs)
    want = first_nonfinite(keras.history)
    assert 5 < want < epochs
    for kernel in ("moments", "autodiff"):
        summary, history = simulate(
            name, [lr], [n], [bs], [epochs], [0], problem=DATA, kernel=kernel
        )
        assert first_nonfinite(history[0]) == want, kernel
        assert int(summary.first_nonfinite_epoch[0]) == want, kernel


FLOAT32_BOUND = 1.5 * FLOAT32_AGREEMENT
"""The measured agreement (:data:`src.validation.FLOAT32_AGREEMENT`, 2.0e-5 with keras 3.15.1,
TensorFlow 2.21 on a 2-core x86 CPU), with a margin for other CPUs' rounding of TensorFlow's
sums: the sample is the same every time (a fixed order, fixed seeds)."""

SAMPLE_PROBLEM = Problem(slope=1.7, intercept=-2.0, x_start=-1.5, x_step=0.35)


def test_float32_agreement_on_a_random_sample() -> None:
    # Every optimizer, full and partial batches, non-default data and hyperparameters: a map,
    # and 48 of its configurations re-run in Keras by the map's own check. Fixed order, so
    # that the sample is the same every time.
    from src import optimizers as opt
    from src import runner, validation
    from src.spec import Sweep

    sweep = Sweep(
        optimizer=tuple(opt.OPTIMIZERS), lr=tuple(np.geomspace(1e-3, 0.3, 7).round(6)),
        n=(7, 13, 24), batch_size=(4, 32), epochs=(40,), shuffle=False,
        problem=SAMPLE_PROBLEM, hyperparameters=(("momentum", (0.0, 0.6)), ("beta_1", (0.8, 0.9))),
    )  # fmt: skip
    ds, _ = runner.run(sweep)
    record = validation.validate(ds, 48, seed=1)
    print(
        f"float32 sample: {record['determined']} determined of {record['checked']}, "
        f"max_rel_err {record['max_rel_err']:.3g}, verdicts {record['agreed']}/"
        f"{record['determined']}, overflow epochs {record['first_nonfinite_agreed']}/"
        f"{record['overflowing']}, sensitive {record['sensitive']}"
    )
    assert record["checked"] == 48 and record["determined"] >= 30
    assert record["verdict_agreement"] == 1.0
    assert record["first_nonfinite_agreed"] == record["overflowing"]
    assert all(c.get("reproduces_map") for c in record["configs"])
    assert record["max_rel_err"] is not None and record["max_rel_err"] <= FLOAT32_BOUND


def test_shuffled_minibatch_map_is_checked_in_keras_s_orders() -> None:
    # A shuffled map with several batches per epoch, some runs overflowing: the check replays
    # the orders Keras drew, and verdicts, overflow epochs and losses agree with Keras.
    from src import runner, validation
    from src.spec import Sweep

    sweep = Sweep(
        optimizer=("sgd", "momentum"), lr=(0.001, 0.004, 0.01, 0.02), n=(12, 30),
        batch_size=(8,), epochs=(60,), shuffle=True, problem=DATA,
    )  # fmt: skip
    ds, _ = runner.run(sweep)
    record = validation.validate(ds, 10, seed=2)
    configs = record["configs"]
    assert record["shuffle"] and len(configs) == 10
    assert sum(c["order_dependent"] for c in configs) >= 4  # minibatches, reshuffled
    # Keras draws fresh orders every run, and long growth amplifies rounding: a pick may be
    # sensitive in one run and determined in the next; the determined ones must all agree.
    assert sum(c["first_nonfinite_epoch_keras"] > 0 for c in configs) >= 2
    assert record["overflowing"] >= 1
    assert record["verdict_agreement"] == 1.0
    assert record["first_nonfinite_agreed"] == record["overflowing"]
    assert record["max_rel_err"] is not None and record["max_rel_err"] <= FLOAT32_BOUND


def test_float64_main_job_is_checked_in_float64(tmp_path: Path) -> None:
    # The command that once ended in a JAX traceback: a float64 map with the default check.
    # Keras now runs in float64 too, and the map's own values agree with it to 1e-10.
    import json

    from src.cli import main

    out = tmp_path / "f64"
    argv = ["--dtype", "float64", "--optimizers", "sgd,adam", "--n", "5,20", "--epochs", "40",
            "--validate", "4", "--quiet", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    record = json.loads((out / "validation.json").read_text())
    assert record["status"] == "done" and record["map_dtype"] == "float64"
    assert record["checked"] == 4 and record["verdict_agreement"] == 1.0
    assert record["max_rel_err"] is not None and record["max_rel_err"] <= FLOAT64_RTOL
