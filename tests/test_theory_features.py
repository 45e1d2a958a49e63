"""The theory with ``d`` input features, ``y = x . w + b``: against direct float64 arithmetic.

``x`` is ``(n,)`` (one feature, the seed's case) or ``(n, d)``; a ``(n, 1)`` column must give
the very bits of the ``(n,)`` array. The simulations below are plain numpy, written from the
model's definition (``H = 2/n A^T A``, ``A = [X, 1]``), not from :mod:`src.theory`.
"""

from __future__ import annotations

import numpy as np
import pytest

from src import theory
from src.problem import Problem

DYNAMICS = {
    "sgd": theory.Dynamics(),
    "momentum": theory.Dynamics(0.9),
    "nesterov": theory.Dynamics(0.9, nesterov=True),
}


def problem(
    n: int, d: int, seed: int = 0, scale: float = 3.0, mean: float = 2.0
) -> tuple[np.ndarray, np.ndarray]:
    """``X`` (``(n, d)``, features of scales 1 to ``scale`` and means ``mean / 4`` to
    ``mean``) and ``y = X w + b + noise``."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * np.linspace(1.0, scale, d) + np.linspace(mean / 4, mean, d)
    y = x @ np.linspace(-1.0, 1.0, d) + 0.7 + 0.1 * rng.normal(size=n)
    return x, y


def with_ones(x: np.ndarray) -> np.ndarray:
    """``A = [X, 1]``."""
    return np.column_stack([x, np.ones(len(x))])


def mse_gradient_steps(
    x: np.ndarray, y: np.ndarray, theta: np.ndarray, lr: float, batch_size: int, epochs: int
) -> np.ndarray:
    """Plain SGD on the MSE of consecutive batches (fixed order), as Keras does it: each epoch's
    loss is ``sum_b n_b L_b / n`` of the losses before each step. Returns the epoch losses."""
    a, out = with_ones(x), np.empty(epochs)
    for epoch in range(epochs):
        total = 0.0
        for s in range(0, len(x), batch_size):
            ab, yb = a[s : s + batch_size], y[s : s + batch_size]
            err = ab @ theta - yb
            total += float(err @ err)
            theta = theta - lr * 2.0 / len(yb) * (ab.T @ err)
        out[epoch] = total / len(x)
    return out


@pytest.mark.parametrize("d", [1, 3, 10])
def test_hessian_is_two_over_n_a_transpose_a(d: int) -> None:
    x, _ = problem(57, d, seed=d)
    a = with_ones(x)
    expected = 2.0 / len(x) * a.T @ a
    h = theory.hessian(x)
    assert h.shape == (d + 1, d + 1) and np.array_equal(h, h.T)
    np.testing.assert_allclose(h, expected, rtol=1e-12, atol=0)
    lam = theory.hessian_eigenvalues(x)
    assert lam.shape == (d + 1,)
    assert lam[-1] == pytest.approx(np.linalg.eigvalsh(expected)[-1], rel=1e-12)
    assert theory.gd_critical_lr(x) == 2.0 / lam[-1]
    assert theory.gd_loss_growth(0.9 * 2.0 / lam[-1], x) == pytest.approx(
        max(np.square(1.0 - 0.9 * 2.0 / lam[-1] * lam)), rel=1e-12
    )
    hs = theory.batch_hessians(x, 8)
    assert hs.shape == (8, d + 1, d + 1)
    np.testing.assert_allclose(hs[-1], 2.0 * a[56:].T @ a[56:], rtol=1e-12)


def test_seed_numbers_unchanged() -> None:
    # The one-feature seed, x = 1..20: the bits the one-feature module gave.
    x = Problem().dataset(20)[0]
    assert theory.hessian_eigenvalues(x)[-1] == 288.5390572032461
    assert theory.gd_critical_lr(x) == 0.0069314706278783104
    assert theory.gd_loss_growth(0.01, x) == 3.554697609108891
    assert theory.critical_lr(x, 32) == theory.gd_critical_lr(x)
    assert theory.loss_growth(x, 32, 0.01) == pytest.approx(3.554697609108891, rel=1e-12)


@pytest.mark.parametrize(
    "x",
    [
        Problem().dataset(20)[0],
        Problem(x_start=0.5, x_step=0.25, intercept=0.3).dataset(25)[0],
        np.random.default_rng(3).normal(1.0, 3.0, 45),
    ],
    ids=["seed", "fractional", "random"],
)
def test_one_feature_column_gives_the_same_bits(x: np.ndarray) -> None:
    col = x[:, None].copy()
    y = 0.5 * x + 0.3 + np.random.default_rng(4).normal(0.0, 0.1, len(x))
    n = len(x)
    assert np.array_equal(theory.hessian(x), theory.hessian(col))
    assert np.array_equal(theory.hessian_eigenvalues(x), theory.hessian_eigenvalues(col))
    lr = np.geomspace(1e-4, 0.1, 40)
    for dyn in DYNAMICS.values():
        assert theory.gd_critical_lr(x, dyn) == theory.gd_critical_lr(col, dyn)
        for bs in (1, 7, 32, n):
            theory._critical_lr.cache_clear()  # the two shapes share a key: compute both
            theory._batch_hessians.cache_clear()
            flat = theory.critical_lr(x, bs, dyn)
            theory._critical_lr.cache_clear()
            theory._batch_hessians.cache_clear()
            assert np.array_equal(flat, theory.critical_lr(col, bs, dyn), equal_nan=True)
            assert np.array_equal(
                theory.spectral_radius(x, bs, lr, dyn), theory.spectral_radius(col, bs, lr, dyn)
            )
            assert theory.loss_growth(x, bs, 3e-3, dyn) == theory.loss_growth(col, bs, 3e-3, dyn)
            assert np.array_equal(
                theory.predicted_history(x, y, 0.2, 0.1, 3e-3, bs, 40, dyn),
                theory.predicted_history(col, y, np.array([0.2]), 0.1, 3e-3, bs, 40, dyn),
                equal_nan=True,
            )
    assert theory.gd_loss_growth(0.01, x) == theory.gd_loss_growth(0.01, col)
    assert theory.unstable_windows(x, 7, DYNAMICS["sgd"], 1e-4, 1.0) == theory.unstable_windows(
        col, 7, DYNAMICS["sgd"], 1e-4, 1.0
    )


def test_caches_tell_shapes_apart() -> None:
    # The same 24 numbers as 12 samples of 2 features and as 6 of 4: different problems.
    data = np.random.default_rng(5).normal(size=24)
    two, four = data.reshape(12, 2), data.reshape(6, 4)
    assert theory.batch_hessians(two, 2).shape == (6, 3, 3)
    assert theory.batch_hessians(four, 2).shape == (3, 5, 5)
    assert theory.critical_lr(two, 12) == theory.gd_critical_lr(two)
    assert theory.critical_lr(four, 12) == theory.gd_critical_lr(four)
    assert theory.gd_critical_lr(two) != theory.gd_critical_lr(four)


@pytest.mark.parametrize(("factor", "converges"), [(0.98, True), (1.02, False)])
def test_full_batch_gradient_descent_with_three_features(factor: float, converges: bool) -> None:
    # Well-conditioned (eigenvalues of H within a factor 5), so that the largest eigenvalue
    # sets the rate within a few dozen epochs, long before the excess loss reaches rounding.
    x, y = problem(60, 3, scale=1.5, mean=0.2)
    a = with_ones(x)
    lr = factor * theory.gd_critical_lr(x)
    star = np.linalg.lstsq(a, y, rcond=None)[0]
    h = 2.0 / len(x) * a.T @ a
    theta, excess = np.zeros(4), []
    for _ in range(300):
        e = theta - star
        excess.append(e @ h @ e / 2)  # L - L*, exactly, without the cancellation of L - L*
        theta = theta - lr * 2.0 / len(x) * (a.T @ (a @ theta - y))
    excess = np.array(excess)
    growth = theory.loss_growth(x, len(x), lr)
    assert growth == pytest.approx(theory.gd_loss_growth(lr, x), rel=1e-9)
    assert (growth < 1) == converges
    assert excess[-1] / excess[-2] == pytest.approx(growth, rel=1e-3)
    if converges:
        assert excess[-1] < 1e-9 * excess[0]
        np.testing.assert_allclose(theta, star, rtol=0, atol=1e-4)  # |e| ~ 0.96^300
    else:
        assert excess[-1] > 1e9 * excess[0]  # 1.0816^300 = 1.7e10
        losses = mse_gradient_steps(x, y, np.zeros(4), lr, len(x), 300)  # Keras's loss
        assert losses[-1] / losses[-2] == pytest.approx(growth, rel=1e-3)


def test_fixed_order_minibatches_with_three_features() -> None:
    x, y = problem(50, 3)
    crit = theory.critical_lr(x, 8)
    # critical_lr is where rho(M) first passes 1: stable everywhere below, unstable above.
    below = np.geomspace(crit * theory.SCAN_RANGE[0], crit * (1 - 1e-7), 20_000)
    assert theory.spectral_radius(x, 8, below, DYNAMICS["sgd"]).max() < 1 + 1e-9
    assert theory.spectral_radius(x, 8, np.array([crit * (1 + 1e-7)]), DYNAMICS["sgd"])[0] > 1
    window = theory.unstable_windows(x, 8, DYNAMICS["sgd"], crit / 2, crit * 2)[0]
    assert window.start == pytest.approx(crit, rel=1e-8)
    # Above it the epoch loss grows by rho(M)^2 per epoch.
    lr = 1.01 * crit
    growth = theory.loss_growth(x, 8, lr)
    assert growth > 1.1
    w0, b0 = np.array([0.1, -0.2, 0.3]), 0.05
    losses = mse_gradient_steps(x, y, np.append(w0, b0), lr, 8, 1000)
    assert np.isfinite(losses).all() and losses[-1] > 1e50 * losses[0]
    assert losses[-1] / losses[-2] == pytest.approx(growth, rel=1e-3)
    ratio = (losses[-1] / losses[-101]) ** (1 / 100)
    assert ratio == pytest.approx(growth, rel=1e-3)
    # predicted_history is the same trajectory (a vector w0; the prediction X w + b).
    predicted = theory.predicted_history(x, y, w0, b0, lr, 8, 1000)
    np.testing.assert_allclose(predicted, losses, rtol=1e-9)
    # A float w0 is every weight.
    np.testing.assert_array_equal(
        theory.predicted_history(x, y, 0.25, b0, lr, 8, 5),
        theory.predicted_history(x, y, np.full(3, 0.25), b0, lr, 8, 5),
    )


@pytest.mark.parametrize("name", ["momentum", "nesterov"])
def test_momentum_with_three_features(name: str) -> None:
    x, y = problem(40, 3, seed=1)
    dyn = DYNAMICS[name]
    crit = theory.gd_critical_lr(x, dyn)
    lam = np.linalg.eigvalsh(2.0 / len(x) * with_ones(x).T @ with_ones(x))[-1]
    assert crit == pytest.approx(theory.critical_factor(dyn) * 2.0 / lam, rel=1e-12)
    rho = theory.spectral_radius(x, len(x), np.array([crit * 0.999, crit * 1.001]), dyn)
    assert rho[0] < 1 < rho[1]
    assert theory.critical_lr(x, len(x), dyn) == crit
    # The epoch map is the state [e, m] of size 2 (d + 1); its growth is the simulation's.
    m, _ = theory.epoch_matrix(x, 8, np.array([crit]), dyn)
    assert m.shape == (1, 8, 8)
    lr = crit * 1.05
    a = with_ones(x)
    theta, velocity, mu = np.zeros(4), np.zeros(4), dyn.momentum
    losses = []
    for _ in range(300):  # rho^2 is 1.3 (momentum) and 2.2 (Nesterov): at most 1e103
        err = a @ theta - y
        losses.append(err @ err / len(x))
        g = 2.0 / len(x) * (a.T @ err)
        velocity = mu * velocity - lr * g
        theta = theta + (mu * velocity - lr * g if dyn.nesterov else velocity)
    ratio = (losses[-1] / losses[-101]) ** (1 / 100)
    assert ratio == pytest.approx(theory.loss_growth(x, len(x), lr, dyn), rel=1e-3)
    np.testing.assert_allclose(
        theory.predicted_history(x, y, 0.0, 0.0, lr, len(x), 200, dyn), losses[:200], rtol=1e-9
    )


def sequential_epoch(x: np.ndarray, batch_size: int, lr: float, dyn: theory.Dynamics):
    """The epoch map ``S_B ... S_1`` from the definitions, one step after the other, as
    ``(M / max|M|, log2 of the scale)``."""
    a, p, mu = with_ones(x), x.shape[1] + 1, dyn.momentum
    eye = np.eye(p)
    m, log2 = np.eye(p if mu == 0 else 2 * p), 0.0
    for s in range(0, len(x), batch_size):
        ab = a[s : s + batch_size]
        lh = lr * 2.0 / len(ab) * ab.T @ ab
        if mu == 0:
            step = eye - lh
        elif dyn.nesterov:
            step = np.block([[eye - (1 + mu) * lh, mu * mu * eye], [-lh, mu * eye]])
        else:
            step = np.block([[eye - lh, mu * eye], [-lh, mu * eye]])
        m = step @ m
        big = np.abs(m).max()
        m, log2 = m / big, log2 + np.log2(big)
    return m, log2


@pytest.mark.parametrize("name", list(DYNAMICS))
def test_long_epochs_multiply_pairwise_with_three_features(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 1100 steps of one sample: past TREE_FROM (1024), so the steps are multiplied pairwise
    # (entry by entry for the state of 4, by matmul for 8); the definition step by step agrees.
    x, _ = problem(1100, 3, seed=2)
    dyn = DYNAMICS[name]
    assert len(theory.batch_hessians(x, 1)) >= theory.TREE_FROM
    lrs = theory.gd_critical_lr(x, dyn) * np.array([0.01, 0.1, 0.5])
    tree, exponent = theory.epoch_matrix(x, 1, lrs, dyn)
    rho = theory.spectral_radius(x, 1, lrs, dyn)
    monkeypatch.setattr(theory, "TREE_FROM", 10**9)
    one_by_one, exponent_1 = theory.epoch_matrix(x, 1, lrs, dyn)
    np.testing.assert_allclose(rho, theory.spectral_radius(x, 1, lrs, dyn), rtol=1e-9)
    for k, lr in enumerate(lrs):
        m, log2 = sequential_epoch(x, 1, lr, dyn)
        for got, e in ((tree[k], exponent[k]), (one_by_one[k], exponent_1[k])):
            big = np.abs(got).max()
            assert np.log2(big) + e == pytest.approx(log2, abs=1e-9)
            np.testing.assert_allclose(got / big, m, rtol=0, atol=1e-9)
        rho_def = np.abs(np.linalg.eigvals(m)).max() * 2.0**log2
        assert rho[k] == pytest.approx(rho_def, rel=1e-9)


def test_ten_features_critical_lr_is_quick() -> None:
    # A diabetes-sized design (442 samples, 10 features) at batch 32, every dynamics.
    x, _ = problem(442, 10, seed=6)
    for dyn in DYNAMICS.values():
        crit = theory.critical_lr(x, 32, dyn)
        assert np.isfinite(crit)
        rho = theory.spectral_radius(x, 32, np.array([crit * (1 - 1e-7), crit]), dyn)
        assert rho[0] <= 1 + theory.NEUTRAL < rho[1]
