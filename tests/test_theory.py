"""Stability theory against the engine: closed forms, measured boundaries, growth, overflow."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from src import engine, theory
from src.explain import Case, explain
from src.problem import Problem, read_xy_csv
from src.runner import run
from src.spec import Sweep, log_grid

ROOT = Path(__file__).resolve().parents[1]
DYNAMICS = {
    "sgd": theory.Dynamics(),
    "momentum": theory.Dynamics(0.9),
    "nesterov": theory.Dynamics(0.9, nesterov=True),
}


@pytest.mark.parametrize("name", list(DYNAMICS))
@pytest.mark.parametrize("n", [2, 7, 20, 50])
def test_closed_forms_are_where_the_spectral_radius_crosses_one(name: str, n: int) -> None:
    x = Problem().dataset(n)[0]
    crit = theory.gd_critical_lr(x, DYNAMICS[name])
    rho = theory.spectral_radius(x, n, np.array([crit * 0.999, crit * 1.001]), DYNAMICS[name])
    assert rho[0] < 1 < rho[1]
    assert theory.critical_lr(x, n, DYNAMICS[name]) == crit


def test_nesterov_closed_form_value() -> None:
    # Keras Nesterov: a = lr lambda < 2 (1 + mu) / (1 + 2 mu); mu = 0.9 gives 1.3571 / lambda.
    x = Problem().dataset(20)[0]
    lam = theory.hessian_eigenvalues(x)[-1]
    assert theory.gd_critical_lr(x, DYNAMICS["nesterov"]) * lam == pytest.approx(3.8 / 2.8)
    assert theory.gd_critical_lr(x, DYNAMICS["momentum"]) * lam == pytest.approx(3.8)


@pytest.fixture(scope="module")
def boundary_map():
    sweep = Sweep(
        optimizer=tuple(DYNAMICS),
        lr=log_grid(1e-4, 1.0, 33),
        n=(3, 10, 20, 33, 45),
        batch_size=(8, 64),
        epochs=(300,),
        shuffle=False,  # a closed form needs a fixed batch order
    )
    return run(sweep)[0]


def test_measured_critical_lr_equals_closed_form(boundary_map) -> None:
    # Cells chosen where the epoch map turns sharply unstable (rho(1.005 lr_crit) > 1.01): in
    # a weakly unstable window (e.g. Nesterov, N = 37, batch 8: rho <= 1.0023 just above
    # lr_crit) the loss hardly grows within the epochs run, and the measured break comes later.
    ds = boundary_map
    assert ds.critical_lr.dims == ("optimizer", "n", "batch_size", "seed", "epochs")
    measured, closed = ds.critical_lr.values, ds.theory_critical_lr.values
    assert np.isfinite(closed).all() and np.isfinite(measured).all()
    rel = np.abs(measured / closed - 1)
    worst = np.unravel_index(np.argmax(rel), rel.shape)
    assert rel.max() <= 0.005, f"{rel.max():.4f} at {worst}"


@pytest.mark.slow  # a map of every adaptive optimizer
def test_theory_critical_lr_absent_for_adaptive_optimizers() -> None:
    ds, _ = run(Sweep(optimizer=("adam", "sgd"), lr=log_grid(1e-3, 1.0, 13), n=(5,), epochs=(50,)))
    assert np.isnan(ds.theory_critical_lr.sel(optimizer="adam")).all()
    assert np.isfinite(ds.theory_critical_lr.sel(optimizer="sgd")).all()


UNSTABLE = [  # (optimizer, lr, N, batch size): full batch and fixed-order minibatches
    ("sgd", 0.01, 20, 32),
    ("sgd", 0.006, 24, 32),
    ("momentum", 0.02, 20, 32),
    ("nesterov", 0.01, 16, 32),
    ("sgd", 0.01, 20, 8),
    ("momentum", 0.002, 40, 8),
    ("nesterov", 0.003, 30, 16),
]


@pytest.mark.parametrize(("name", "lr", "n", "bs"), UNSTABLE)
def test_predicted_growth_and_overflow_epoch(
    name: str, lr: float, n: int, bs: int, simulate: Callable
) -> None:
    dyn = DYNAMICS[name]
    x, y, _ = Problem().dataset(n)
    summary, history = simulate(name, [lr], [n], [bs], [2000], [0])
    growth = theory.loss_growth(x, bs, lr, dyn)
    assert summary.growth_rate[0] == pytest.approx(growth, rel=1e-3)
    w0 = np.asarray(engine.initial_params(0).w, np.float64)  # (d,) = (1,): one feature
    predicted = theory.predicted_history(x, y, w0, 0.0, lr, bs, 2000, dyn)
    over = theory.predicted_overflow_epoch(predicted, n, growth)
    simulated = int(summary.first_nonfinite_epoch[0])
    assert simulated > 0 and abs(over - simulated) <= 2, (over, simulated)
    finite = np.isfinite(history[0])
    np.testing.assert_allclose(history[0][finite][:50], predicted[finite][:50], rtol=1e-4)


def test_explain_answers_the_seed_question() -> None:
    report = explain(Case(optimizer="sgd", lr=0.01, n=20))
    assert report["simulated"]["status"] == "overflow"
    th = report["theory"]
    assert th["first_breaking_n"] == 17
    assert th["critical_lr"] == pytest.approx(0.0069315, rel=1e-4)
    assert th["predicted_growth_rate"] == pytest.approx(3.5547, abs=1e-4)
    assert abs(th["predicted_overflow_epoch"] - report["simulated"]["first_nonfinite_epoch"]) <= 2
    fixes = {f["fix"].split(" (")[0]: f for f in report["fixes"]}
    # Every fix was simulated: its verdict is an engine status, and "works" means converged.
    assert all(f["works"] == (f["status"] == "converged") for f in report["fixes"])
    assert fixes["standardise x"]["works"]
    half = next(f for f in report["fixes"] if "half the critical lr" in f["fix"])
    assert half["works"] and half["prediction_at_25"] == pytest.approx(12.5, abs=0.05)


@pytest.mark.parametrize("shuffle", [False, True])
def test_explains_trials_are_the_plain_runs_bits_in_one_program(shuffle: bool) -> None:
    """The diagnosis's trials keep ``clipnorm`` as an argument (inf: off) so that the
    clipping fix shares the program of the other trials of the case: each trial, clipped or
    not, gives the bits of the plain engine run, constants compiled in."""
    from src import optimizers as opt
    from src.configs import FlatConfigs
    from src.explain import CLIPNORM_FIX, Lab
    from src.problem import data_table, table_rows
    from src.simulator import Simulator

    case = Case(optimizer="momentum", lr=0.01, n=20, epochs=120, shuffle=shuffle)
    lab = Lab(case)
    clipped = dataclasses.replace(case, hyperparameters={"clipnorm": CLIPNORM_FIX})
    x, y, q = case.dataset()
    plain = Simulator(data_table([(x, y, q)], "float32"), table_rows([20]), "float32",
                      case.tol, shuffle)  # fmt: skip
    family = opt.get("momentum").family
    finals = []
    for c in (case, clipped):
        _, ours, history = lab.run(c, np.array([c.lr]), history=True)
        finals.append(np.asarray(history).tobytes())
        flat = FlatConfigs.of(["momentum"], family, dict(c.hyperparameters),
                              learning_rate=np.array([c.lr]), n=np.array([20]),
                              batch_size=np.array([32]), seed=np.array([0]),
                              epochs=np.array([c.epochs]))  # fmt: skip
        theirs, their_history = plain.run(family, flat, history=True)
        assert theirs is not None and their_history is not None and history is not None
        for name in ("final_loss", "first_nonfinite_epoch", "final_w", "final_b"):
            assert np.asarray(ours[name]).tobytes() == np.asarray(getattr(theirs, name)).tobytes()
        assert np.asarray(history).tobytes() == np.asarray(their_history).tobytes()
    assert lab._simulator(False).programs == 1  # clipped or not: one program
    assert finals[0] != finals[1]  # the clip is applied where asked


@pytest.mark.slow  # the command line in a subprocess
def test_explain_on_a_csv(tmp_path: Path) -> None:
    f = tmp_path / "points.csv"
    f.write_text("x,y\n1,0.6\n2,1.1\n3,1.4\n\n4,2.1\n5,2.4\n30,15.2\n")
    x, y = read_xy_csv(f)
    assert list(x) == [1, 2, 3, 4, 5, 30] and y[-1] == 15.2
    proc = subprocess.run(
        [sys.executable, "-m", "src.stability_map", "explain", "--lr", "0.01", "--data", str(f),
         "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["configuration"]["n"] == 6
    assert report["configuration"]["data"].startswith(f"{f}: the first N of 6 rows; predict y")
    lam = theory.hessian_eigenvalues(x)[-1]
    assert report["hessian_eigenvalues"][-1] == pytest.approx(lam)
    assert report["simulated"]["status"] == "overflow"  # 0.01 > 2 / 319
    assert "first_breaking_n" not in report["theory"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("a,b\n1,2\n", "no column 'y' to predict (give --target COLUMN"),
        ("x,y\n1,2\n2,abc\n", "line 3: y = 'abc' is not a number"),
        ("x,y\n1,2,3\n", "line 2: expected 2 columns, got 3"),
        ("x,y\n1,nan\n", "line 2: y = nan is not finite"),
        ("x,y\n", "no data rows"),
        ("", "the file is empty"),
    ],
)
def test_explain_rejects_malformed_csv(
    tmp_path: Path, content: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from src.cli import main

    f = tmp_path / "bad.csv"
    f.write_text(content)
    assert main(["explain", "--data", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --data ") and message in err, err
    assert err.count("\n") == 1


def _rho_of(shape: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    """A made-up ``rho(lr)`` from its shape in ``u = ln(lr)``."""
    return lambda lr: shape(np.log(np.asarray(lr, np.float64)))


STEP = np.log1p(theory.SCAN_STEP)  # the base grid's step in ln(lr), at most


@pytest.mark.parametrize("offset", np.linspace(0.0, 1.0, 21))
def test_scan_finds_every_window_wider_than_a_step(offset: float) -> None:
    # The worst case: rho far below 1 up to the window's edges, a box of 1.02 steps.
    a = np.log(0.01) + offset * STEP
    b = a + 1.02 * STEP
    rho = _rho_of(lambda u: np.where((u >= a) & (u <= b), 1.5, 0.5))
    (w,) = theory.scan_windows(rho, 1e-3, 1.0)
    assert w.start == pytest.approx(np.exp(a), rel=1e-8)
    assert w.stop == pytest.approx(np.exp(b), rel=1e-8)
    assert theory.scan_windows(rho, 1e-3, 1.0, first_only=True)[0].start == w.start


@pytest.mark.parametrize("offset", [0.0, 0.13, 0.5, 0.77])
@pytest.mark.parametrize("width", [1e-3, 1e-4, 1e-5, 1e-6])
def test_scan_refines_windows_narrower_than_a_step(offset: float, width: float) -> None:
    # Windows far narrower than the 0.2% step, between samples: a smooth peak barely above 1
    # (curvature 1e4 in ln lr) and a sharp one (a kink of slope 50).
    u0 = np.log(0.01) + (0.5 + offset) * STEP
    half = width / 2
    smooth = _rho_of(lambda u: np.maximum(0.2, 1 + 1e4 * half**2 - 1e4 * (u - u0) ** 2))
    sharp = _rho_of(lambda u: np.maximum(0.2, 1 + 50 * half - 50 * np.abs(u - u0)))
    # Where rho passes 1 + NEUTRAL, the threshold of "unstable":
    inside = (np.sqrt(half**2 - theory.NEUTRAL / 1e4), half - theory.NEUTRAL / 50)
    for rho, h in zip((smooth, sharp), inside, strict=True):
        windows = theory.scan_windows(rho, 1e-3, 1.0)
        assert len(windows) == 1
        assert windows[0].start == pytest.approx(np.exp(u0 - h), rel=1e-8)
        assert windows[0].stop == pytest.approx(np.exp(u0 + h), rel=1e-8)
        first = theory.scan_windows(rho, 1e-3, 1.0, first_only=True)
        assert first[0].start == windows[0].start


def test_scan_can_miss_only_a_window_its_neighbours_do_not_show() -> None:
    # The documented blind spot: a spike narrower than a step between samples, with rho flat
    # far below 1 on both sides. The same spike on the flank of a peak that nears 1 is found.
    grid_u = np.log(np.geomspace(1e-3, 1.0, 1 + int(np.ceil(np.log(1e3) / STEP))))
    k = int(np.searchsorted(grid_u, np.log(0.01)))
    a, b = (
        grid_u[k] + 0.3 * (grid_u[k + 1] - grid_u[k]),
        grid_u[k] + 0.6 * (grid_u[k + 1] - grid_u[k]),
    )
    spike = (a, b)
    hidden = _rho_of(lambda u: np.where((u > spike[0]) & (u < spike[1]), 1.5, 0.5))
    assert theory.scan_windows(hidden, 1e-3, 1.0) == []
    shown = _rho_of(
        lambda u: np.where((u > a) & (u < b), 1.5, 0.999 - 10 * np.abs(u - (a + b) / 2))
    )
    (w,) = theory.scan_windows(shown, 1e-3, 1.0)
    assert w.start == pytest.approx(np.exp(a), rel=1e-8)


# Fixed-order cells with an unstable window narrower than a 16-per-decade grid step below the
# first breaking grid lr (x = x_start + x_step i, y = 0.5 x + 0.3).
WINDOWS = [  # (x_start, x_step, N, batch size, optimizer, window start, window stop)
    (0.5, 0.75, 40, 3, "nesterov", 1.33934e-3, 1.53536e-3),
    (-1.5, 1.5, 33, 3, "nesterov", 5.70441e-4, 6.38975e-4),
    (0.5, 0.25, 25, 6, "sgd", 4.92249e-2, 5.41299e-2),
    (3.25, 1.5, 17, 4, "sgd", 2.89557e-3, 3.13847e-3),
]


@pytest.mark.parametrize(("x_start", "x_step", "n", "bs", "name", "start", "stop"), WINDOWS)
def test_critical_lr_is_the_first_window(
    x_start: float, x_step: float, n: int, bs: int, name: str, start: float, stop: float
) -> None:
    x = Problem(x_start=x_start, x_step=x_step, intercept=0.3).dataset(n)[0]
    dyn = DYNAMICS[name]
    crit = theory.critical_lr(x, bs, dyn)
    assert crit == pytest.approx(start, rel=1e-5)
    first = theory.unstable_windows(x, bs, dyn, crit / 2, crit * 2)[0]
    assert first.start == pytest.approx(crit, rel=1e-8)
    assert first.stop == pytest.approx(stop, rel=1e-5) and first.rho > 1.01
    # A brute-force scan, 100 times finer than the theory's, finds nothing unstable below.
    lr = np.geomspace(theory.gd_critical_lr(x, dyn) * theory.SCAN_RANGE[0], crit, 200_000)[:-1]
    assert theory.spectral_radius(x, bs, lr, dyn).max() <= 1 + theory.NEUTRAL


def test_bisect_narrows_each_pair_16_fold_per_call_to_the_transition() -> None:
    calls = []

    def rho(lr: np.ndarray) -> np.ndarray:
        calls.append(len(lr))
        up = np.where(lr > 0.3, 2.0, 0.5)  # unstable above 0.3
        return np.where(lr < 1e-3, 2.0, up)  # ... and below 1e-3

    # Pairs given either way round: (stable, unstable) ends, below or above each other.
    found = theory._bisect(rho, np.array([0.1, 0.002]), np.array([1.0, 1e-4]), 1e-9)
    rounds = len(calls)  # ln-widths 2.3 and 3.0 down to 1e-9: 8 rounds; halving takes 32
    assert rounds <= 8 and all(c == 2 * theory.BISECT_POINTS for c in calls)
    np.testing.assert_allclose(found, [0.3, 1e-3], rtol=1e-9)
    assert rho(found).min() > 1  # the unstable ends
    stable = theory._bisect(rho, np.array([0.1]), np.array([1.0]), 1e-9, unstable_out=False)
    assert stable[0] <= 0.3 and stable[0] == pytest.approx(0.3, rel=1e-9)


def test_scanned_critical_lrs_are_kept_and_read_back_bit_for_bit(tmp_path, monkeypatch) -> None:
    """The command line keeps the scanned (several-batch) critical lrs in its cache folder; a
    later process reads them back instead of scanning, the same bits; an unreadable or torn
    entry is scanned again; one batch (a closed form) and no folder store nothing."""
    store = tmp_path / "closed_forms"
    monkeypatch.setattr(theory, "_critical_lr_store", None)
    x = Problem().dataset(37)[0]
    momentum = theory.Dynamics(0.9, False)
    theory._critical_lr.cache_clear()
    scanned = {bs: theory.critical_lr(x, bs, momentum) for bs in (16, 32)}
    assert not store.exists()
    theory.keep_critical_lrs_in(store)
    theory._critical_lr.cache_clear()
    assert theory.critical_lr(x, 40, momentum) == theory.gd_critical_lr(x, momentum)
    assert not store.exists()  # one batch: nothing scanned, nothing kept
    for bs, value in scanned.items():
        assert theory.critical_lr(x, bs, momentum) == value
    entries = sorted(store.iterdir())
    assert len(entries) == 2 and not [p for p in entries if p.name.startswith(".")]

    def no_scan(*args: object) -> float:
        raise AssertionError("scanned again")

    theory._critical_lr.cache_clear()  # a later process
    with monkeypatch.context() as m:
        m.setattr(theory, "_scanned_critical_lr", no_scan)
        for bs, value in scanned.items():
            assert np.float64(theory.critical_lr(x, bs, momentum)).tobytes() == (
                np.float64(value).tobytes()
            )
    entries[0].write_text(entries[0].read_text()[:9])  # torn
    entries[1].write_text("not a number " + entries[1].name)
    theory._critical_lr.cache_clear()
    for bs, value in scanned.items():
        assert theory.critical_lr(x, bs, momentum) == value
    theory.keep_critical_lrs_in(None)
    theory._critical_lr.cache_clear()
