"""``d >= 1`` input features end to end: the engine's ``Input((d,)) + Dense(1)`` against an
independent NumPy transcription of Keras's ``fit``, its two kernels against each other, real
Keras on the diabetes table and on replayed shuffled orders, noisy targets, and the seed's
one-feature problem left as it was.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from marks import quick_few
from numpy_keras import fit_features as numpy_fit
from numpy_keras import identity_orders

from src import engine, keras_reference, outcome
from src import optimizers as opt
from src.configs import FlatConfigs
from src.problem import Problem, data_table, table_rows
from src.simulator import Simulator

N, BATCH, EPOCHS, SEED = 37, 8, 30, 3  # batches of 8, 8, 8, 8 and 5


def synthetic(n: int = N, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(x, y, x_query)``: three uniform features of different scales and offsets, and
    ``y = x . w + b`` plus noise (so the loss stays well above 0), float64."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, (n, 3)) * [1.0, 3.0, 0.3] + [0.5, 0.0, 1.0]
    y = x @ [1.5, -0.5, 2.0] + 0.7 + 0.3 * rng.standard_normal(n)
    return x, y, x.mean(axis=0)


def engine_run(
    dataset: tuple[np.ndarray, np.ndarray, np.ndarray | float],
    name: str,
    lrs: list[float],
    *,
    dtype: str,
    kernel: str = "auto",
    shuffle: bool = False,
    batch_size: int = BATCH,
    epochs: int = EPOCHS,
    seed: int = SEED,
    orders: np.ndarray | None = None,
) -> tuple[engine.Summary, np.ndarray, np.ndarray]:
    """One dataset, ``name`` at each of ``lrs`` (everything else shared) through a
    :class:`Simulator`: ``(summary, history, statuses)``; ``orders`` ``(epochs, n)`` are
    replayed (shuffled only) by every config."""
    n, count = len(dataset[1]), len(lrs)
    family = opt.get(name).family
    with jax.enable_x64(dtype == "float64"):
        table = data_table([dataset], dtype)
        sim = Simulator(table, table_rows([n]), dtype, 1e-4, shuffle, kernel=kernel)
        flat = FlatConfigs.of(
            [name] * count, family, learning_rate=np.asarray(lrs, np.float64),
            n=np.full(count, n), batch_size=np.full(count, batch_size),
            seed=np.full(count, seed), epochs=np.full(count, epochs),
        )  # fmt: skip
        if orders is not None:
            flat.orders = np.broadcast_to(np.asarray(orders, np.int32), (count, *orders.shape))
        summary, history = sim.run(family, flat, history=True)
    assert summary is not None and history is not None
    status = outcome.classify(
        summary.initial_loss, summary.final_loss, summary.first_nonfinite_epoch,
        np.asarray(table.loss_scale[0], np.float64),
        optimal_loss=np.asarray(table.optimal_loss[0], np.float64),
    )  # fmt: skip
    return summary, np.asarray(history, np.float64), status


def first_nonfinite(history: np.ndarray) -> int:
    """The first epoch (from 1) whose loss is not finite, -1 if none."""
    bad = np.flatnonzero(~np.isfinite(history))
    return int(bad[0]) + 1 if bad.size else -1


def max_rel(a: np.ndarray, b: np.ndarray) -> float:
    """The largest ``|a - b| / |b|`` where both are finite."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    both = np.isfinite(a) & np.isfinite(b)
    return float(np.max(np.abs(a[both] - b[both]) / np.abs(b[both]), initial=0.0))


@pytest.fixture(scope="module")
def keras():
    """Keras on TensorFlow (the tests that use it are skipped without TensorFlow)."""
    pytest.importorskip("tensorflow")
    return keras_reference._keras()


# ------------------------------------------------ 1. float64 engine = NumPy transcription


@pytest.mark.parametrize("kernel", ["moments", "autodiff"])
@pytest.mark.parametrize(("name", "lr"), [("sgd", 0.05), ("adam", 0.02)])
def test_three_features_match_a_float64_numpy_transcription(kernel, name, lr) -> None:
    dataset = synthetic()
    x, y, query = dataset
    summary, history, status = engine_run(dataset, name, [lr], dtype="float64", kernel=kernel)
    w0 = np.asarray(engine.initial_params(SEED, "float32", d=3).w, np.float64)
    expected, kernel_w, bias = numpy_fit(x, y, w0, name, lr, BATCH, identity_orders(N, EPOCHS))
    # It trains, from a loss well above the noise floor, and stays finite.
    assert np.all(np.isfinite(expected)) and expected[-1] < 0.5 * expected[0]
    assert status[0] != outcome.OVERFLOW
    assert history.shape == (1, EPOCHS)
    np.testing.assert_allclose(history[0], expected, rtol=1e-10)
    assert summary.final_w.shape == (1, 3)
    np.testing.assert_allclose(summary.final_w[0], kernel_w, rtol=1e-10)
    np.testing.assert_allclose(summary.final_b[0], bias, rtol=1e-10)
    np.testing.assert_allclose(summary.prediction[0], query @ kernel_w + bias, rtol=1e-10)


# ------------------------------------------------ 2. float32: moments = autodiff


LRS_32 = {
    "sgd": [1e-3, 1e-2, 0.1, 0.3, 1.0, 3.0],  # 0.3 diverges; 1.0 and 3.0 overflow
    "adam": [1e-3, 1e-2, 0.1, 0.3, 1e19],  # 1e19: steps of ~1e19 overflow the squares
    # RMSprop at 0.2-0.3 shuffled cycles near the optimum, amplifying float32 rounding (the
    # kernels part by 2e-5 - 7e-5 there): left out, as tests/test_kernels.py leaves such runs.
    "rmsprop": [1e-3, 1e-2, 0.03, 0.1, 1e19],
}


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("name", quick_few(sorted(LRS_32), ("sgd",)))
def test_float32_kernels_agree_on_three_features(name, shuffle) -> None:
    dataset = synthetic()
    runs = {
        kernel: engine_run(
            dataset, name, LRS_32[name], dtype="float32", kernel=kernel, shuffle=shuffle
        )
        for kernel in ("moments", "autodiff")
    }
    (moments, m_history, m_status), (autodiff, a_history, a_status) = runs.values()
    # The lrs cover stable and overflowing runs, or agreement would prove little.
    assert outcome.OVERFLOW in a_status and np.any(outcome.stable(a_status)), a_status
    np.testing.assert_array_equal(m_status, a_status)
    assert max_rel(m_history, a_history) <= 1e-4
    assert max_rel(moments.final_w, autodiff.final_w) <= 1e-4
    # Per-sample squares overflow a little before the moments' sums of squares do.
    overflow = a_status == outcome.OVERFLOW
    gap = moments.first_nonfinite_epoch[overflow] - autodiff.first_nonfinite_epoch[overflow]
    assert np.all((gap >= 0) & (gap <= 3)), gap
    # Where one kernel's loss is finite at an epoch both kernels agree it is, up to that gap.
    for m_h, a_h in zip(m_history, a_history, strict=True):
        assert first_nonfinite(m_h) == -1 or first_nonfinite(a_h) != -1


# ------------------------------------------------ 3. the diabetes table against real Keras


@pytest.mark.slow  # real Keras: ~10 s with TensorFlow's import
@pytest.mark.parametrize(("dtype", "rtol"), [("float32", 1e-5), ("float64", 1e-9)])
def test_diabetes_matches_keras(keras, dtype, rtol) -> None:
    del keras
    problem = Problem(data="sklearn:diabetes")
    dataset = problem.dataset(100)
    x, y, query = dataset
    assert x.shape == (100, 10) and problem.d == 10
    lrs, batch_size, epochs, seed = [1e-6, 0.01], 32, 20, 0
    summary, history, _ = engine_run(
        dataset, "sgd", lrs, dtype=dtype, batch_size=batch_size, epochs=epochs, seed=seed
    )
    w0 = np.asarray(engine.initial_params(seed, d=10).w, np.float64)
    for i, lr in enumerate(lrs):
        run = keras_reference.fit("sgd", lr, x, y, w0, 0.0, batch_size, epochs, None, query,
                                  dtype=dtype)  # fmt: skip
        first = first_nonfinite(run.history)
        assert (first == -1) == (lr == 1e-6), (lr, run.history)  # stable, and overflowing
        assert int(summary.first_nonfinite_epoch[i]) == first, (lr, history[i], run.history)
        finite = np.isfinite(run.history)
        assert np.array_equal(np.isfinite(history[i]), finite), (lr, history[i], run.history)
        np.testing.assert_allclose(history[i][finite], run.history[finite], rtol=rtol)
        if first == -1:
            np.testing.assert_allclose(summary.final_w[i], run.weights, rtol=rtol)
            np.testing.assert_allclose(summary.prediction[i], run.prediction, rtol=rtol)


# ------------------------------------------------ 4. noisy targets


def test_noisy_targets_on_the_seed_line() -> None:
    problem = Problem(noise=2.0, noise_seed=1)
    assert problem.d == 1
    full_x, full_y, query = problem.dataset(50)
    assert query == 25.0
    for n in (1, 5, 20, 50):
        x, y, _ = problem.dataset(n)
        noise = 2 * np.random.default_rng(1).standard_normal(n)
        np.testing.assert_array_equal(x, np.arange(1.0, n + 1))
        np.testing.assert_array_equal(y, 0.5 * x + noise)  # the same float64 arithmetic
        np.testing.assert_allclose(y - 0.5 * x, noise, rtol=0, atol=4 * np.spacing(y.max()))
        # A point's noise does not depend on the dataset's size.
        np.testing.assert_array_equal(y, full_y[:n])
        np.testing.assert_array_equal(x, full_x[:n])
    assert not np.array_equal(Problem(noise=2.0, noise_seed=2).dataset(5)[1], full_y[:5])
    sizes = (5, 20, 50)
    table = data_table([problem.dataset(n) for n in sizes], "float64")
    for row, n in enumerate(sizes):
        x, y, _ = problem.dataset(n)
        _, residual, *_ = np.linalg.lstsq(np.c_[x, np.ones(n)], y, rcond=None)
        assert float(table.optimal_loss[row]) > 0
        assert float(table.optimal_loss[row]) == pytest.approx(residual[0] / n, rel=1e-12)


# ------------------------------------------------ 5. Keras's shuffled orders, replayed


@pytest.mark.slow  # real Keras
@pytest.mark.parametrize(("name", "lr"), [("sgd", 0.05), ("adam", 0.02)])
def test_replayed_keras_orders_give_keras_float64_history(keras, name, lr) -> None:
    del keras
    dataset = synthetic(seed=1)
    x, y, query = dataset
    epochs = 6
    w0 = np.asarray(engine.initial_params(SEED, d=3).w, np.float64)
    run = keras_reference.fit(name, lr, x, y, w0, 0.0, BATCH, epochs, None, query,
                              shuffle=True, seed=None, dtype="float64")  # fmt: skip
    assert run.orders is not None and run.orders.shape == (epochs, N)
    for order in run.orders:
        np.testing.assert_array_equal(np.sort(order), np.arange(N))
    assert len({o.tobytes() for o in run.orders}) > 1  # unseeded: fresh orders each epoch
    # The order matters: the same run in the given order is another run.
    unshuffled, _, _ = numpy_fit(x, y, w0, name, lr, BATCH, identity_orders(N, epochs))
    assert max_rel(run.history, unshuffled) > 1e-6
    for kernel in ("moments", "autodiff"):
        summary, history, _ = engine_run(
            dataset, name, [lr], dtype="float64", kernel=kernel, shuffle=True, epochs=epochs,
            orders=run.orders,
        )  # fmt: skip
        np.testing.assert_allclose(history[0], run.history, rtol=1e-10, err_msg=kernel)
        np.testing.assert_allclose(summary.final_w[0], run.weights, rtol=1e-10, err_msg=kernel)
        np.testing.assert_allclose(summary.final_b[0], run.b, rtol=1e-10, err_msg=kernel)


# ------------------------------------------------ 6. the seed's problem is unchanged


def test_the_seed_stays_one_feature() -> None:
    x, y, query = Problem().dataset(20)
    assert x.shape == (20,) and y.shape == (20,) and query == 25.0
    np.testing.assert_array_equal(x, np.arange(1.0, 21.0))
    np.testing.assert_array_equal(y, 0.5 * x)
    table = data_table([Problem().dataset(20)], "float32")
    assert table.x.shape == (1, 20, 1) and table.x.shape[-1] == 1 and table.d == 1
    assert table.w_opt.shape == (1, 1) and float(table.w_opt[0, 0]) == pytest.approx(0.5)
    for seed in (0, 1, 7, 42, 12345):
        default, one = engine.initial_params(seed), engine.initial_params(seed, d=1)
        assert default.w.shape == (1,) and one.w.shape == (1,)
        assert float(default.w[0]) == float(one.w[0])
        # The draw the one-feature engine always made: one scalar U(-sqrt 3, sqrt 3).
        key = jax.random.split(jax.random.PRNGKey(seed))[0]
        scalar = jax.random.uniform(key, (), jnp.float32, -np.sqrt(3.0), np.sqrt(3.0))
        assert float(one.w[0]) == float(scalar)
        assert abs(float(one.w[0])) <= np.sqrt(3.0)  # GlorotUniform of a 1x1 kernel
        assert float(default.b) == 0.0
