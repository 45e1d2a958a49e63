"""The engine reproduces Keras ``fit`` semantics: batching, partial batches, the weighted epoch
loss and every optimizer's equations, checked against a plain NumPy loop (tests/numpy_keras.py)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
import pytest
from marks import quick_few
from numpy_keras import fit, transcribed

from src import engine
from src import optimizers as opt
from src.problem import Problem

# (N, batch size): one full batch, N < batch, N a multiple of the batch, a partial last batch.
CASES = [(20, 32), (7, 32), (16, 4), (45, 8), (50, 32), (33, 32)]


def reference(name: str, lr: float, n: int, bs: int, epochs: int, seed: int, dtype: str):
    with jax.enable_x64(True):
        w0 = float(engine.initial_params(seed, dtype).w[0])
    x, y, _ = Problem().dataset(n)
    o = opt.get(name)
    return fit(x, y, w0, o.family.name, lr, o.defaults, bs, epochs, getattr(np, dtype))


def assert_float32_close(actual: np.ndarray, desired: np.ndarray, n: int, what: str) -> None:
    """Two faithful float32 implementations agree to 1e-5 relative plus residual noise.

    When their weights differ by a few ulp, every residual ``w x + b - y`` differs by a few
    ``ulp(max |y|)``, which moves ``L = mean(err^2)`` by up to ``2 sqrt(L)`` times that: the
    loss is exact to 1e-5 while it is large and loses digits as it approaches zero.
    """
    y_max = float(np.max(np.abs(Problem().dataset(n)[1])))
    noise = 8 * np.spacing(np.float32(y_max)) * np.sqrt(np.abs(desired))
    np.testing.assert_array_less(np.abs(actual - desired), 1e-5 * np.abs(desired) + noise, what)


def stable_lr(name: str, n: int) -> float:
    # Inside SGD's stable region for x <= 50 (the largest curvature is ~5000); adaptive
    # optimizers stay in their smooth transient (near the optimum their steps turn chaotic
    # and float32 trajectories part ways, see docs/keras-fidelity.md).
    return 3e-5 if opt.get(name).family.name == "sgd" else 1e-3


@pytest.mark.parametrize("name", quick_few(transcribed(opt.OPTIMIZERS), ("sgd", "adam")))
def test_float64_engine_equals_numpy_keras_loop(name: str, simulate: Callable) -> None:
    ns, bss = zip(*CASES, strict=True)
    lrs = [stable_lr(name, n) for n in ns]
    summary, history = simulate(name, lrs, ns, bss, [12] * len(ns), [5] * len(ns), dtype="float64")
    for i, (n, bs) in enumerate(CASES):
        ref, w, b = reference(name, lrs[i], n, bs, 12, 5, "float64")
        np.testing.assert_allclose(history[i], ref, rtol=1e-11, err_msg=f"N={n} batch={bs}")
        np.testing.assert_allclose([summary.final_w[i], summary.final_b[i]], [w, b], rtol=1e-10)


@pytest.mark.parametrize("name", quick_few(transcribed(opt.OPTIMIZERS), ("sgd", "adam")))
def test_float32_engine_agrees_with_float32_loop(name: str, simulate: Callable) -> None:
    ns, bss = zip(*CASES, strict=True)
    lrs = [stable_lr(name, n) for n in ns]
    _, history = simulate(name, lrs, ns, bss, [40] * len(ns), [1] * len(ns))
    for i, (n, bs) in enumerate(CASES):
        ref, _, _ = reference(name, lrs[i], n, bs, 40, 1, "float32")
        assert_float32_close(history[i], ref, n, f"N={n} batch={bs}")


def test_unstable_sgd_trajectory_matches_until_overflow(simulate: Callable) -> None:
    # The seed itself: lr 0.01, N = 20 grows ~3.55x per epoch; in float32 it reaches inf.
    summary, history = simulate("sgd", [0.01], [20], [32], [200], [0])
    ref, _, _ = reference("sgd", 0.01, 20, 32, 200, 0, "float32")
    finite = np.isfinite(ref)
    np.testing.assert_allclose(history[0][finite], ref[finite], rtol=1e-5)
    first_bad = int(np.argmin(finite)) + 1
    assert summary.first_nonfinite_epoch[0] in (first_bad - 1, first_bad)
    # Keras does not stop: the loss goes to inf, then nan, and so do the weights.
    assert np.isnan(history[0][-1]) and np.isnan(ref[-1]) and np.isnan(summary.final_w[0])


def test_epoch_loss_is_the_batch_size_weighted_mean(simulate: Callable) -> None:
    # N = 50, batch 32: batches of 32 and 18. With lr = 0 the weights never move, so the epoch
    # loss must equal the full-data mean exactly, which the unweighted mean of the two batch
    # means does not.
    _, history = simulate("sgd", [1e-30], [50], [32], [2], [0], dtype="float64")
    x, y, _ = Problem().dataset(50)
    with jax.enable_x64(True):
        w0 = float(engine.initial_params(0, "float64").w[0])
    sq = (w0 * x - y) ** 2
    np.testing.assert_allclose(history[0], [sq.mean()] * 2, rtol=1e-12)
    unweighted = (sq[:32].mean() + sq[32:].mean()) / 2
    assert abs(unweighted - sq.mean()) / sq.mean() > 0.01


def test_initial_weights_are_glorot_uniform_and_seeded() -> None:
    ws = np.array([float(engine.initial_params(s).w[0]) for s in range(200)])
    assert np.all(np.abs(ws) <= np.sqrt(3)) and ws.std() > 0.8  # U(-1.73, 1.73) has std 1
    assert float(engine.initial_params(7).w[0]) == float(engine.initial_params(7).w[0])
    assert float(engine.initial_params(0).b) == 0.0


def test_the_hosts_initial_kernel_is_the_engines_draw() -> None:
    """``initial_kernel`` (drawn on the host, for the focus panel and the Keras check) has
    the bits of :func:`engine.initial_params`' ``jax.random`` draw, for any seed and width."""
    for seed in (0, 1, 7, 12345, np.int64(99), 2**31 - 1, 2**31, 2**32 - 1):
        for d in (1, 3, 10):
            ours = np.asarray(engine.initial_kernel(seed, d=d))
            theirs = np.asarray(engine.initial_params(seed, d=d).w)
            assert ours.dtype == theirs.dtype == np.float32 and ours.shape == (d,)
            assert ours.tobytes() == theirs.tobytes(), (seed, d)
    seeds = np.array([5, 0, 2**32 - 1, 5], np.uint32)  # many at once, as the simulator draws
    many = engine.initial_kernels(seeds, d=2)
    assert many.shape == (4, 2)
    for row, seed in zip(many, seeds, strict=True):
        assert row.tobytes() == np.asarray(engine.initial_params(int(seed), d=2).w).tobytes()


def test_a_program_given_the_hosts_kernels_runs_as_one_that_draws_them() -> None:
    """The simulator gives every program its configs' initial kernels, drawn on the host
    (``Configs.kernel``); a program without them draws them itself: the same run, bit for
    bit, one feature or several, fixed order or shuffled."""
    from src.problem import data_table

    rng = np.random.default_rng(3)
    x3 = rng.uniform(-1.0, 1.0, (24, 3))
    for d, shuffle in ((1, False), (1, True), (3, True)):
        dataset = Problem().dataset(24) if d == 1 else (x3, x3 @ [1.5, -0.5, 2.0], x3.mean(0))
        table = data_table([dataset], "float32")
        seeds = np.array([0, 9, 2**32 - 1, 123456], np.uint32)
        k = len(seeds)
        configs = engine.Configs(
            learning_rate=np.full(k, 0.01, np.float32), hyperparameters={},
            data_row=np.zeros(k, np.int32), n=np.full(k, 24, np.int32),
            batch_size=np.full(k, 8, np.int32), epochs=np.full(k, 30, np.int32), seed=seeds,
        )  # fmt: skip
        shapes = engine.Shapes.covering([24], [8], [30])
        static = dict(
            family=opt.get("sgd").family, shapes=shapes, shuffle=shuffle, history=True,
            kernel="autodiff", constants=(("momentum", 0.0), ("nesterov", 0.0)),
        )  # fmt: skip
        tol = np.float32(1e-4)
        drawn = engine.simulate(configs, table, tol, **static)
        given = engine.simulate(
            configs._replace(kernel=engine.initial_kernels(seeds, d)), table, tol, **static
        )
        for a, b in zip(jax.tree.leaves(drawn), jax.tree.leaves(given), strict=True):
            assert np.asarray(a).tobytes() == np.asarray(b).tobytes(), (d, shuffle)
        assert len(np.unique(np.asarray(given[0].initial_loss))) == k  # the seeds differ
        # and the program starts from the kernels it is given
        zero = engine.simulate(
            configs._replace(kernel=np.zeros((k, d), np.float32)), table, tol, **static
        )
        assert not np.array_equal(np.asarray(zero[0].initial_loss), given[0].initial_loss)


def test_shuffle_permutes_each_epoch_and_keeps_the_full_batch_loss(simulate: Callable) -> None:
    # Full batch: shuffling only reorders one sum. Minibatches: the trajectory changes.
    _, full_fixed = simulate("sgd", [1e-3], [20], [32], [20], [0], dtype="float64")
    _, full_shuf = simulate("sgd", [1e-3], [20], [32], [20], [0], dtype="float64", shuffle=True)
    np.testing.assert_allclose(full_shuf, full_fixed, rtol=1e-12)
    _, mini_fixed = simulate("sgd", [1e-3], [20], [4], [20], [0], dtype="float64")
    _, mini_shuf = simulate("sgd", [1e-3], [20], [4], [20], [0], dtype="float64", shuffle=True)
    assert not np.allclose(mini_shuf, mini_fixed, rtol=1e-6)
    _, other_seed = simulate("sgd", [1e-3], [20], [4], [20], [1], dtype="float64", shuffle=True)
    assert not np.allclose(other_seed, mini_shuf, rtol=1e-6)
