"""Your own data in the main job: noise as the map's own axes, a CSV's columns as features,
and the diabetes data set checked against real Keras and against NumPy's Hessian."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from src.cli import main
from src.problem import Problem
from src.runner import run
from src.spec import Sweep

SMALL = dict(optimizer=("sgd", "adam"), lr=(1e-3, 0.01, 0.05), n=(3, 9, 20), epochs=(40,))


@pytest.mark.slow  # a map, and every cell again
def test_a_rerun_of_a_noisy_maps_cells_trains_each_on_its_own_draw() -> None:
    """The engine's re-run of picks (the page's curves of a map read back, the Keras check's
    engine side) gives every cell of a noise-swept map its own map numbers, bit for bit:
    each pick trains on its own noise draw."""
    from src import validation

    noisy, _ = run(Sweep(**SMALL, noise=(0.0, 4.0), noise_seed=(0, 7)))
    dims = noisy.status.dims
    indices = [dict(zip(dims, i, strict=True)) for i in np.ndindex(noisy.status.shape)]
    picks = validation.picks_at(noisy, indices, "random")
    rerun = validation.engine_histories(noisy, picks)
    final = np.array([s.final_loss for s in rerun.summaries])
    mapped = np.array([noisy.final_loss.values[tuple(i.values())] for i in indices])
    np.testing.assert_array_equal(final, mapped)
    assert len(np.unique(mapped[np.isfinite(mapped)])) > len(mapped) // 2  # the draws differ


@pytest.mark.slow  # three maps
def test_noise_axes_leave_the_noise_free_map_as_it_was() -> None:
    """The noise-0 slice of a noisy map is the map without noise, bit for bit; noisy draws
    have L* > 0 and their own scale; the Hessian's numbers do not depend on the noise."""
    plain, _ = run(Sweep(**SMALL))
    noisy, _ = run(Sweep(**SMALL, noise=(0.0, 4.0), noise_seed=(0, 7)))
    assert noisy.status.dims[-2:] == ("noise", "noise_seed")
    for draw in (0, 7):
        clean = noisy.sel(noise=0.0, noise_seed=draw)
        for name in ("status", "final_loss", "first_nonfinite_epoch", "final_w", "critical_lr"):
            np.testing.assert_array_equal(clean[name].values, plain[name].values, err_msg=name)
    assert np.all(noisy.optimal_loss.sel(noise=0.0) == 0)
    assert np.all(noisy.optimal_loss.sel(noise=4.0, n=[9, 20]) > 0)
    for draw in (0, 7):  # L* of each draw is NumPy's least-squares residual
        problem = Problem(noise=4.0, noise_seed=draw)
        x, y, _ = problem.dataset(20)
        a = np.c_[x.astype(np.float32), np.ones(20)].astype(np.float64)
        residual = np.linalg.lstsq(a, y.astype(np.float32).astype(np.float64), rcond=None)[1]
        got = float(noisy.optimal_loss.sel(n=20, noise=4.0, noise_seed=draw))
        assert got == pytest.approx(residual[0] / 20, rel=1e-5)
    a, b = (noisy.final_loss.sel(noise=4.0, noise_seed=k) for k in (0, 7))
    assert not np.array_equal(a.values, b.values)  # two draws, two datasets
    np.testing.assert_array_equal(noisy.hessian_max_eigenvalue, plain.hessian_max_eigenvalue)
    excess = noisy.final_loss - noisy.optimal_loss
    np.testing.assert_allclose(noisy.excess_loss, excess.transpose(*noisy.excess_loss.dims),
                               rtol=1e-6)  # fmt: skip


def write_table(path: Path, rows: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """A table with a text column, three features on different scales and a noisy target."""
    rng = np.random.default_rng(3)
    x = np.c_[rng.uniform(0, 1, rows), rng.uniform(10, 20, rows), rng.uniform(-5, 5, rows)]
    y = x @ np.array([2.0, -0.5, 1.0]) + 3 + rng.normal(0, 0.3, rows)
    lines = ["name,a,b,c,price"] + [
        f"row{i},{a:.6f},{b:.6f},{c:.6f},{t:.6f}"
        for i, ((a, b, c), t) in enumerate(zip(x, y, strict=True))
    ]
    path.write_text("\n".join(lines) + "\n")
    return np.round(x, 6), np.round(y, 6)


@pytest.mark.slow  # a whole main job, report included
def test_a_csv_in_the_main_job(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--data FILE --target COL``: every other numeric column is a feature (the text column
    is not); the map names them, holds a kernel weight per feature, and the report names the
    file, d and N; ``--features`` picks columns."""
    x, y = write_table(tmp_path / "t.csv")
    out = tmp_path / "map"
    argv = ["--data", str(tmp_path / "t.csv"), "--target", "price", "--optimizers", "sgd",
            "--lr", "1e-3,0.01,0.1", "--n", "10,60", "--epochs", "30", "--validate", "0",
            "--quiet", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    ds = xr.open_dataset(out / "stability_map.nc")
    assert list(ds.feature.values) == ["a", "b", "c"]
    assert ds.final_w.dims[-1] == "feature" and ds.final_w.shape[-1] == 3
    a = np.c_[x[:60], np.ones(60)].astype(np.float32).astype(np.float64)
    lam = np.linalg.eigvalsh(2 / 60 * a.T @ a)[-1]
    assert float(ds.hessian_max_eigenvalue.sel(n=60)) == pytest.approx(lam, rel=1e-6)
    assert float(ds.gd_critical_lr.sel(n=60)) == pytest.approx(2 / lam, rel=1e-6)
    ls = np.linalg.lstsq(a, y[:60].astype(np.float32), rcond=None)[1][0] / 60
    assert float(ds.optimal_loss.sel(n=60)) == pytest.approx(ls, rel=1e-4)
    page = (out / "index.html").read_text()
    assert "t.csv" in page and "d = 3" in page
    summary = json.loads((out / "summary.json").read_text())
    assert "t.csv" in json.dumps(summary)
    capsys.readouterr()
    assert main([*argv, "--features", "a,c", "--force"]) == 0
    assert list(xr.open_dataset(out / "stability_map.nc").feature.values) == ["a", "c"]


@pytest.mark.slow  # two main jobs with the Keras check
def test_the_diabetes_data_against_keras_and_numpy(tmp_path: Path) -> None:
    """The diabetes data (raw features, d = 10) through the main job: SGD at Keras's default
    lr 0.01 overflows, standardised it converges; the Keras check agrees on every determined
    pick; lambda_max and 2 / lambda_max are NumPy's on the design matrix with a bias column."""
    from sklearn.datasets import load_diabetes

    raw = load_diabetes(scaled=False)
    results = {}
    for standardize in (False, True):
        out = tmp_path / f"s{int(standardize)}"
        argv = ["--data", "sklearn:diabetes", "--optimizers", "sgd", "--lr", "1e-4,0.01",
                "--n", "442", "--epochs", "40", "--validate", "3", "--quiet",
                "--out", str(out)] + (["--standardize"] if standardize else [])  # fmt: skip
        assert main(argv) == 0
        ds = xr.open_dataset(out / "stability_map.nc")
        x = raw.data.astype(np.float64)
        if standardize:
            x = (x - x.mean(axis=0)) / x.std(axis=0)
        a = np.c_[x.astype(np.float32), np.ones(442)].astype(np.float64)
        lam = np.linalg.eigvalsh(2 / 442 * a.T @ a)[-1]
        assert float(ds.hessian_max_eigenvalue.sel(n=442)) == pytest.approx(lam, rel=1e-6)
        assert float(ds.gd_critical_lr.sel(n=442)) == pytest.approx(2 / lam, rel=1e-6)
        check = json.loads((out / "validation.json").read_text())
        assert check["status"] == "done" and check["determined"] >= 1, check
        assert check["verdict_agreement"] == 1.0, check
        results[standardize] = str(ds.status.attrs["flag_meanings"].split()[
            int(ds.status.sel(optimizer="sgd", lr=0.01).squeeze())])
    assert results[False] == "overflow"
    assert results[True] in ("converged", "slow")


@pytest.mark.slow  # the Keras check
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_keras_check_on_noisy_targets(tmp_path: Path, dtype: str) -> None:
    """A map of noisy targets re-checked in real Keras (in its own shuffled orders): every
    pick is a noisy dataset, the verdicts agree, and the losses agree to float32 rounding, or
    to float64 rounding in a float64 map."""
    out = tmp_path / "map"
    argv = ["--noise", "3", "--noise-seed", "5", "--optimizers", "sgd,adam", "--lr",
            "1e-3,0.01,0.03", "--n", "4,12,20", "--epochs", "60", "--validate", "4",
            "--dtype", dtype, "--quiet", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    check = json.loads((out / "validation.json").read_text())
    assert check["status"] == "done" and check["determined"] >= 3, check
    assert check["verdict_agreement"] == 1.0
    assert all(c["noise"] == 3.0 and c["noise_seed"] == 5 for c in check["configs"])
    assert check["max_rel_err"] <= (5e-5 if dtype == "float32" else 1e-10), check["max_rel_err"]
