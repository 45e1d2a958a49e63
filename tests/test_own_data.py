"""A user's own data: noisy targets are judged against the best possible fit, a spreadsheet's
CSV (with its byte-order mark) reads, and the numbers match a NumPy least-squares fit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from src import explain, outcome
from src.problem import Problem, data_table, read_xy_csv


def noisy_points(path: Path, bom: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """50 points of y = 3x + 7 + N(0, 10^2), x = 1..50, written as a CSV (values rounded to 6
    decimals, as written)."""
    rng = np.random.default_rng(0)
    x = np.arange(1, 51, dtype=np.float64)
    y = np.round(3 * x + 7 + rng.normal(0, 10, x.size), 6)
    lines = ["x,y", *(f"{a:g},{b:.6f}" for a, b in zip(x, y, strict=True))]
    path.write_text(("\ufeff" if bom else "") + "\n".join(lines) + "\n", encoding="utf-8")
    return x, y


def test_a_csv_with_a_byte_order_mark_reads(tmp_path: Path) -> None:
    x, y = noisy_points(tmp_path / "bom.csv")
    got = read_xy_csv(tmp_path / "bom.csv")
    np.testing.assert_array_equal(got[0], x)
    np.testing.assert_array_equal(got[1], y)


def test_optimal_loss_is_the_least_squares_loss(tmp_path: Path) -> None:
    x, y = noisy_points(tmp_path / "d.csv")
    table = data_table([(x, y, 25.0)], "float64")
    a = np.c_[x, np.ones_like(x)]
    (w, b), residual, *_ = np.linalg.lstsq(a, y, rcond=None)
    assert float(table.w_opt[0, 0]) == pytest.approx(w, rel=1e-12)
    assert float(table.b_opt[0]) == pytest.approx(b, rel=1e-10)
    assert float(table.optimal_loss[0]) == pytest.approx(residual[0] / x.size, rel=1e-12)
    # noise-free data: L* = 0 exactly, so the rule is the one of a map without noise
    seed = Problem().table(range(1, 65), "float32")[0]
    assert np.all(seed.optimal_loss == 0)


def test_converged_means_the_best_fit_was_reached() -> None:
    scale, optimal, tol = 100.0, 50.0, 1e-4
    final = np.array([50.005, 50.02, 49.99])  # within tol * scale of L*, outside, below it
    status = outcome.classify(np.full(3, 1e4), final, np.full(3, -1), scale, tol, 1.0, optimal)
    assert list(status) == [outcome.CONVERGED, outcome.SLOW, outcome.CONVERGED]
    # without L*, noisy data could never converge: the old rule called them all slow
    assert set(outcome.classify(np.full(3, 1e4), final, np.full(3, -1), scale, tol)) == {
        outcome.SLOW
    }


def test_explain_on_noisy_points_says_standardising_reaches_the_best_fit(
    tmp_path: Path,
) -> None:
    """The issue's case: on raw x, SGD at lr 0.01 overflows; standardising x converges, to the
    least-squares fit that NumPy finds; nothing prints as "xnan"."""
    x, y = noisy_points(tmp_path / "d.csv")
    case = explain.Case(lr=0.01, n=len(x), problem=Problem(data=str(tmp_path / "d.csv")))
    report = explain.explain(case)
    assert report["simulated"]["status"] == "overflow"
    fit = report["best_fit"]
    w, b = np.polyfit(x.astype(np.float32).astype(np.float64),
                      y.astype(np.float32).astype(np.float64), 1)  # fmt: skip
    assert fit["w"] == pytest.approx(w, rel=1e-6) and fit["b"] == pytest.approx(b, rel=1e-5)
    fixes = {f["fix"].split(" (")[0]: f for f in report["fixes"]}
    standardised = fixes["standardise x"]
    assert standardised["status"] == "converged" and standardised["works"]
    excess = standardised["final_loss"] - fit["optimal_loss"]
    assert 0 <= excess <= 1e-4 * float(np.mean(y**2))
    text = "\n".join(explain.describe(report))
    assert "xnan" not in text and "nan," not in text and "nan)" not in text
    assert f"L* = {fit['optimal_loss']:.6g}" in text


def test_long_epochs_multiply_pairwise_as_one_by_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """An epoch of 1,501 batches multiplied pairwise against one by one: the same spectral
    radius to rounding, for plain SGD, heavy ball and Nesterov, inf for both past float64's
    range; and a 6,250-batch epoch far past that range gives inf, not an error."""
    from src import theory

    x = np.random.default_rng(0).uniform(0, 3, 3001)
    lr = np.geomspace(1e-3, 0.6, 9)
    for dyn in (theory.PLAIN, theory.Dynamics(0.9), theory.Dynamics(0.5, True)):
        tree = theory.spectral_radius(x, 2, lr, dyn)
        monkeypatch.setattr(theory, "TREE_FROM", 10**9)
        sequential = theory.spectral_radius(x, 2, lr, dyn)
        monkeypatch.setattr(theory, "TREE_FROM", 1024)
        finite = np.isfinite(sequential)
        assert finite.sum() >= 5 and not finite.all()
        np.testing.assert_array_equal(np.isfinite(tree), finite)
        np.testing.assert_allclose(tree[finite], sequential[finite], rtol=1e-11)
    huge = np.random.default_rng(1).uniform(0, 100, 200_000)
    rho = theory.spectral_radius(huge, 32, np.array([1e-6, 1e-2]), theory.PLAIN)
    assert rho[0] < 1 and rho[1] == np.inf


@pytest.mark.slow
def test_explain_a_million_row_csv(tmp_path: Path) -> None:
    """A million rows: explain answers (overflow at lr 0.01; standardising works) without a
    traceback, and never prints a non-number."""
    import subprocess
    import sys

    rng = np.random.default_rng(1)
    x = rng.uniform(0, 100, 1_000_000)
    y = 3 * x + 7 + rng.normal(0, 10, x.size)
    path = tmp_path / "big.csv"
    with path.open("w") as f:
        f.write("x,y\n")
        np.savetxt(f, np.c_[x, y], fmt="%.6f", delimiter=",")
    proc = subprocess.run(
        [sys.executable, "-m", "src.stability_map", "explain", "--lr", "0.01", "--data",
         str(path)],
        capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    out = proc.stdout
    assert "Verdict: overflow" in out and "works: standardise x" in out
    assert "xnan" not in out and "xinf" not in out
