"""The main job's command line: outputs, their schema, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from src import store
from src.cli import main, parse_lr, parse_n
from src.outcome import STATUSES

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("run")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "src.stability_map",
            "--optimizers",
            "sgd,momentum,adam",
            "--lr",
            "1e-3:0.1:7",
            "--n",
            "5,10,20,40",
            "--batch-size",
            "8,32",
            "--epochs",
            "60",
            "--seeds",
            "0,1",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert proc.returncode == 0, proc.stderr
    return out, proc.stdout


@pytest.mark.slow  # small_run: the main job with Keras in a subprocess
def test_outputs_are_written(small_run: tuple[Path, str]) -> None:
    out, stdout = small_run
    names = {p.name for p in out.iterdir()}
    assert {
        "stability_map.nc",
        "summary.json",
        "index.html",
        "heatmaps.png",
        "loss_curves.png",
        "heatmap_sgd.png",
        "heatmap_momentum.png",
        "heatmap_adam.png",
        "critical_lr.png",
    } <= names
    assert not [n for n in names if n.endswith(".tmp")]
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "At lr 0.01 (the seed's):" in stdout and "overflow" in stdout


@pytest.mark.slow  # small_run: the main job with Keras in a subprocess
def test_netcdf_schema(small_run: tuple[Path, str]) -> None:
    out, _ = small_run
    with xr.open_dataset(out / "stability_map.nc") as ds:
        assert ds.status.dims == ("optimizer", "lr", "n", "batch_size", "seed", "epochs")
        assert ds.status.shape == (3, 7, 4, 2, 2, 1)
        assert list(ds.optimizer.values) == ["sgd", "momentum", "adam"]
        assert ds.status.dtype == np.int8
        assert ds.status.attrs["flag_meanings"].split() == list(STATUSES)
        assert list(ds.status.attrs["flag_values"]) == [0, 1, 2, 3]
        for name in (
            "initial_loss",
            "final_loss",
            "first_nonfinite_epoch",
            "first_converged_epoch",
            "growth_rate",
            "final_w",
            "final_b",
            "prediction",
        ):
            assert ds[name].dims == ds.status.dims, name
        assert ds.final_loss.dtype == np.float32
        assert np.isclose(ds.lr.values, 0.01).any()
        # Overflowed configs record where, and their last loss is not finite.
        over = (ds.status == STATUSES.index("overflow")).values
        assert over.any() and (ds.first_nonfinite_epoch.values[over] >= 1).all()
        assert (ds.first_nonfinite_epoch.values[~over] == -1).all()
        assert ds.loss_history.dims == ("curve", "epoch") and ds.sizes["epoch"] == 60
        cells = ("optimizer", "n", "batch_size", "seed", "epochs")
        assert ds.critical_lr.dims == cells and ds.theory_critical_lr.dims == cells
        assert np.isnan(ds.theory_critical_lr.sel(optimizer="adam")).all()
        # Shuffled (the default): a closed form for full batches only; the fixed-order one
        # for every SGD-family cell, the same where both exist.
        sgd = ds.sel(optimizer=["sgd", "momentum"])
        full = (sgd.batch_size >= sgd.n).broadcast_like(sgd.theory_critical_lr)
        assert int(ds.attrs["shuffle"]) == 1
        assert np.isfinite(sgd.theory_critical_lr.where(full)).sum() == full.sum()
        assert np.isnan(sgd.theory_critical_lr.where(~full)).all()
        assert np.isfinite(sgd.fixed_order_critical_lr).all()
        xr.testing.assert_equal(
            sgd.fixed_order_critical_lr.where(full), sgd.theory_critical_lr.where(full)
        )
        assert ds.attrs["dtype"] == "float32"


@pytest.mark.slow  # small_run: the main job with Keras in a subprocess
def test_summary_json(small_run: tuple[Path, str]) -> None:
    out, _ = small_run
    s = json.loads((out / "summary.json").read_text())
    for key in (
        "versions",
        "devices",
        "grid",
        "n_configs",
        "wall_seconds",
        "compute_seconds",
        "config_epochs_per_second",
        "findings",
    ):
        assert key in s, key
    assert s["n_configs"] == 3 * 7 * 4 * 2 * 2
    assert s["grid"] == {"optimizer": 3, "lr": 7, "n": 4, "batch_size": 2, "seed": 2, "epochs": 1}
    assert s["devices"] and s["config_epochs_per_second"] > 0
    assert 0 < s["compute_seconds"] <= s["wall_seconds"]
    assert abs(sum(s["findings"]["status_fraction"].values()) - 1) < 1e-9


@pytest.mark.slow  # small_run: the main job with Keras in a subprocess
def test_index_html_is_self_contained(small_run: tuple[Path, str]) -> None:
    out, _ = small_run
    page = (out / "index.html").read_text()
    assert page.count("data:image/png;base64,") >= 2  # loss curves, critical lr
    assert '<script type="application/json" id="data">' in page  # the heatmaps' data, inline
    assert "http://" not in page and "https://" not in page and "<script src" not in page


def test_default_lr_grid_holds_the_seed_rates() -> None:
    grid = parse_lr("1e-5:1:81")
    assert (
        len(grid) == 81 and 0.01 in grid and 0.001 in grid and grid[0] == 1e-5 and grid[-1] == 1.0
    )
    assert parse_n("1:64") == tuple(range(1, 65)) and parse_n("3,5") == (3, 5)


BAD = [
    (["--optimizers", "sgd,adamx"], "unknown optimizer 'adamx'; valid optimizers: sgd, momentum"),
    (["--lr", "0"], "--lr values must be > 0"),
    (["--lr=-0.1,0.2"], "--lr values must be > 0"),
    (["--lr", "abc"], "--lr must be numbers"),
    (["--lr", "1e-5:1"], "--lr takes a comma list or start:stop:count"),
    (["--n", "0"], "N must be >= 1"),
    (["--n", "5:2"], "start <= stop"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--epochs", "2.5"], "whole numbers"),
    (["--dtype", "float16"], "--dtype must be float32 or float64"),
    (["--tol", "-1"], "tol must be > 0"),
    (["--curve", "sgd:0.01"], "--curve takes"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--boundary-rtol", "0"], "boundary rtol must be in (0, 1)"),
    (["explain", "--optimizer", "nope"], "unknown optimizer 'nope'"),
    (["explain", "--lr", "0.01,0.1"], "explain takes one --lr and one --n"),
    (["explain", "--n", "5", "--data", "x.csv"], "--data x.csv: cannot read it"),
    (["--data", "missing.csv"], "--data missing.csv: cannot read it"),
    (["--data", "sklearn:iris"], "unknown; scikit-learn data sets offered: diabetes"),
    (["--data", "sklearn:diabetes", "--n", "400:500"], "is more than the 442 rows"),
    (["--data", "sklearn:diabetes", "--target", "zzz"], "no column 'zzz' to predict"),
    (["--data", "sklearn:diabetes", "--features", "age,qq"], "no feature column 'qq'"),
    (["--target", "y"], "--target and --features name columns of --data"),
    (["--noise", "-1"], "noise must be >= 0"),
    (["--noise", "1", "--noise-seed", "-2"], "noise seed must be in [0, 2**32)"),
    (["--noise-seed", "3"], "--noise-seed without --noise"),
    (["explain", "--noise", "1,2"], "--noise must be one finite number"),
    (["explain", "--optimizer-args", "beta_1=0.5"], "is not NAME=VALUE with NAME one of"),
    (["--lr", "1e-5:1:100000", "--n", "1:100000"], "split it into runs of at most"),
]


@pytest.mark.parametrize(("argv", "message"), BAD)
def test_bad_input_is_one_line_and_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = [] if argv[0] == "explain" else ["--out", str(tmp_path / "o")]
    assert main([*argv, *out]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_unwritable_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["--n", "3", "--lr", "0.01", "--out", str(blocker / "sub")]) == 2
    assert "--out" in capsys.readouterr().err
    assert main(["--n", "3", "--lr", "0.01", "--out", str(blocker)]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_bad_input_from_the_real_command_line() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "src.stability_map", "--optimizers", "nope"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: unknown optimizer 'nope'")
    assert proc.stderr.count("\n") == 1 and proc.stdout == ""


def test_atomic_write_leaves_nothing_behind_when_interrupted(tmp_path: Path) -> None:
    target = tmp_path / "summary.json"
    store.write_json(target, {"v": 1})
    with pytest.raises(KeyboardInterrupt), store.atomic_path(target) as tmp:
        tmp.write_text('{"v": 2, "half": ')
        raise KeyboardInterrupt
    assert json.loads(target.read_text()) == {"v": 1}  # the old file survives intact
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]
    store.write_json(target, {"v": float("nan")})
    assert json.loads(target.read_text()) == {"v": None}  # JSON has no nan


@pytest.mark.slow  # the whole default main job in a subprocess
def test_default_main_job(tmp_path: Path) -> None:
    """The acceptance run: no arguments but where to write."""
    proc = subprocess.run(
        [sys.executable, "-m", "src.stability_map", "--quiet", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    with xr.open_dataset(tmp_path / "stability_map.nc") as ds:
        assert ds.sizes["lr"] >= 64 and ds.sizes["n"] == 64 and ds.sizes["optimizer"] == 6
        assert {0.01, 0.001} <= set(ds.lr.values.tolist())
        at = ds.status.sel(lr=0.01, batch_size=32, seed=0, epochs=500)
        assert STATUSES[int(at.sel(optimizer="sgd", n=20))] == "overflow"
        assert STATUSES[int(at.sel(optimizer="sgd", n=10))] == "converged"
        assert STATUSES[int(at.sel(optimizer="adam", n=20))] != "overflow"
        sgd = ds.sel(optimizer="sgd")
        rel = np.abs(sgd.critical_lr / sgd.theory_critical_lr - 1).values
        both = np.isfinite(rel)  # shuffled minibatches (N > 32) have no closed form
        assert both.sum() == 32 and np.all(rel[both] <= 0.005), np.nanmax(rel)
    summary = json.loads((tmp_path / "summary.json").read_text())
    case = summary["findings"]["seed_case"]
    assert abs(case["measured_growth_rate"] / case["theory_growth_rate"] - 1) < 1e-4
    assert "overflows for N = 17-64, N = 20 included" in proc.stdout
    # Keras's default fit: shuffled, and the seed overflows where Keras's does, in every output.
    with xr.open_dataset(tmp_path / "stability_map.nc") as ds:
        assert int(ds.attrs["shuffle"]) == 1
        seed = ds.sel(optimizer="sgd", lr=0.01, n=20, batch_size=32, seed=0, epochs=500)
        assert int(seed.first_nonfinite_epoch) == 66
    assert "The loss first became non-finite at epoch 66." in proc.stdout
    assert "non-finite at epoch 66" in (tmp_path / "index.html").read_text()
    assert case["first_nonfinite_epoch"] == 66
    # The check compares what the map holds with Keras, in Keras's own shuffled orders.
    record = json.loads((tmp_path / "validation.json").read_text())
    assert record["status"] == "done" and record["shuffle"] and record["map_kernel"] == "moments"
    first = record["configs"][0]
    epochs = (first["first_nonfinite_epoch_jax"], first["first_nonfinite_epoch_keras"])
    assert first["n"] == 20 and epochs == (66, 66)
    assert all(c["agree"] and c["first_nonfinite_agree"] for c in record["configs"])
