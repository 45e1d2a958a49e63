"""The seed problem, end to end through a sweep, against the closed-form theory."""

from __future__ import annotations

import math

import numpy as np
import pytest

from src import findings, outcome, theory
from src.problem import Problem
from src.runner import run
from src.spec import Sweep


@pytest.fixture(scope="module")
def seed_map():
    return run(Sweep(optimizer=("sgd", "adam"), lr=(0.001, 0.01), n=tuple(range(8, 22))))


def test_sgd_overflows_at_n20_converges_at_n10_adam_does_not_overflow(seed_map) -> None:
    ds, _ = seed_map
    at = ds.status.sel(lr=0.01, batch_size=32, seed=0, epochs=500)
    assert outcome.STATUSES[int(at.sel(optimizer="sgd", n=20))] == "overflow"
    assert outcome.STATUSES[int(at.sel(optimizer="sgd", n=10))] == "converged"
    assert int(at.sel(optimizer="adam", n=20)) != outcome.OVERFLOW
    assert int(ds.status.sel(optimizer="adam", lr=0.001, n=20).item()) != outcome.OVERFLOW
    # The boundary sits where 2 / lambda_max(N) crosses 0.01: between N = 16 and 17.
    sgd = at.sel(optimizer="sgd")
    assert all(int(sgd.sel(n=k)) == outcome.OVERFLOW for k in range(17, 22))
    assert all(int(sgd.sel(n=k)) != outcome.OVERFLOW for k in range(8, 17))


def test_growth_rate_matches_full_batch_gradient_descent(seed_map) -> None:
    ds, _ = seed_map
    x = Problem().dataset(20)[0]
    predicted = theory.gd_loss_growth(0.01, x)
    assert predicted == pytest.approx(3.5547, abs=1e-4)
    measured = float(ds.growth_rate.sel(optimizer="sgd", lr=0.01, n=20).item())
    assert measured == pytest.approx(predicted, rel=1e-4)
    for n in range(17, 22):  # every overflowing N grows as predicted
        got = float(ds.growth_rate.sel(optimizer="sgd", lr=0.01, n=n).item())
        assert got == pytest.approx(theory.gd_loss_growth(0.01, Problem().dataset(n)[0]), rel=1e-3)


def test_overflow_epoch_matches_the_growth(seed_map) -> None:
    ds, _ = seed_map
    cell = ds.sel(optimizer="sgd", lr=0.01, n=20, batch_size=32, seed=0, epochs=500)
    # Loss L0 * g^k exceeds float32's max (3.4e38) at k = log(3.4e38 / L0) / log(g).
    g = theory.gd_loss_growth(0.01, Problem().dataset(20)[0])
    expected = math.log(np.finfo(np.float32).max / float(cell.initial_loss)) / math.log(g)
    assert abs(int(cell.first_nonfinite_epoch) - expected) <= 3


def test_critical_lr_and_eigenvalues() -> None:
    x = Problem().dataset(20)[0]
    lam = theory.hessian_eigenvalues(x)
    assert lam[-1] == pytest.approx(288.54, abs=0.01)
    assert theory.gd_critical_lr(x) == pytest.approx(2 / lam[-1])
    # lr 0.01 is stable exactly up to N = 16.
    crit = [theory.gd_critical_lr(Problem().dataset(n)[0]) for n in (16, 17)]
    assert crit[0] > 0.01 > crit[1]


def test_findings_answer_the_seed_question(seed_map) -> None:
    ds, _ = seed_map
    found = findings.headline(ds, Problem())
    sgd = found["statuses_at_seed_lr"]["sgd"]
    assert sgd["overflow"] == list(range(17, 22))
    case = found["seed_case"]
    assert case["theory_growth_rate"] == pytest.approx(case["measured_growth_rate"], rel=1e-4)
    text = "\n".join(findings.describe(found, ["sgd", "adam"]))
    assert "overflows for N = 17-21, N = 20 included" in text
    assert "N = 10 converged" in text


def test_standardizing_x_makes_lr_001_stable_at_n20() -> None:
    ds, _ = run(Sweep(optimizer=("sgd",), lr=(0.01,), n=(20,), problem=Problem(standardize=True)))
    assert int(ds.status.item()) == outcome.CONVERGED
    assert float(ds.prediction.item()) == pytest.approx(12.5, rel=1e-3)  # 0.5 * 25
