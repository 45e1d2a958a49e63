"""The map checked against real Keras (``--validate K``): picks, the record, the page, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from src import keras_reference, schema, validation
from src.cli import main
from src.optimizers import OPTIMIZERS
from src.outcome import DIVERGING, SLOW, STATUSES

pytest.importorskip("tensorflow")

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--optimizers", "sgd", "--lr", "0.01", "--n", "5", "--epochs", "5", "--quiet"]
CONFIG_KEYS = {
    "optimizer", "lr", "n", "batch_size", "seed", "epochs", "hyperparameters", "stratum",
    "status_jax", "status_keras", "agree", "max_rel_err", "first_nonfinite_epoch_jax",
    "first_nonfinite_epoch_keras", "prediction_jax", "prediction_keras",
    "float32_sensitivity", "sensitive", "statuses_float32",
}  # fmt: skip


@pytest.fixture(scope="module")
def checked(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("validated")
    proc = subprocess.run(
        [sys.executable, "-m", "src.stability_map", "--optimizers", "sgd,adam",
         "--lr", "1e-3:0.1:7", "--n", "5,10,20", "--epochs", "30", "--validate", "6",
         "--sweep", "momentum=0,0.5",
         "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return out, proc


@pytest.mark.slow  # checked: the main job with Keras in a subprocess
def test_validation_json_schema_and_agreement(checked: tuple[Path, subprocess.CompletedProcess]):
    out, proc = checked
    record = json.loads((out / "validation.json").read_text())
    assert record["status"] == "done" and record["requested"] == record["checked"] == 6
    assert len(record["configs"]) == 6
    for c in record["configs"]:
        assert CONFIG_KEYS <= set(c), CONFIG_KEYS - set(c)
        assert c["status_jax"] in STATUSES and c["status_keras"] in STATUSES
        assert c["epochs"] == 30 and c["stratum"] in ("seed", "boundary", "random")
        # A swept hyperparameter reaches Keras only for the optimizers that have it.
        assert ("momentum" in c["hyperparameters"]) == (c["optimizer"] == "sgd")
    assert record["verdict_agreement"] == 1.0
    assert 0 <= record["max_rel_err"] < 1e-4
    # This small map is float32-determined: every pick counts.
    assert record["sensitive"] == 0 and record["determined"] == record["agreed"] == 6
    import keras
    import tensorflow as tf

    assert record["keras_version"] == keras.__version__
    assert record["tensorflow_version"] == tf.__version__
    assert record["seconds"] > 0
    # The seed's configurations come first: SGD at lr 0.01 on N = 20, then N = 10.
    first = [(c["optimizer"], c["lr"], c["n"], c["stratum"]) for c in record["configs"][:2]]
    assert first == [("sgd", 0.01, 20, "seed"), ("sgd", 0.01, 10, "seed")]
    # Epoch by epoch: the overlaid curves hold both histories.
    curve = record["curves"][0]
    assert len(curve["jax"]) == len(curve["keras"]) == 30
    line = [x for x in proc.stdout.splitlines() if x.startswith("Keras check:")]
    assert len(line) == 1 and "verdicts agree for 6/6 float32-determined" in line[0], proc.stdout
    assert "checking in Keras" in proc.stderr  # the progress bar
    assert "oneDNN" not in proc.stderr  # TensorFlow's start-up lines are kept quiet


@pytest.mark.slow  # checked: the main job with Keras in a subprocess
def test_stratification_picks_both_sides_of_a_boundary(
    checked: tuple[Path, subprocess.CompletedProcess],
) -> None:
    out, _ = checked
    ds = xr.load_dataset(out / "stability_map.nc")
    picks = validation.pick(ds, 6, seed=0)
    assert [(p.optimizer, p.lr, p.n, p.stratum) for p in picks] == [
        (c["optimizer"], c["lr"], c["n"], c["stratum"])
        for c in json.loads((out / "validation.json").read_text())["configs"]
    ]  # the run's picks, deterministic given the seed
    pairs = [p for p in picks if p.stratum == "boundary"]
    assert len(pairs) >= 2 and len(pairs) % 2 == 0
    below, above = pairs[0], pairs[1]
    cell = {k: v for k, v in below.index.items() if k != "lr"}
    assert {k: v for k, v in above.index.items() if k != "lr"} == cell
    critical = float(ds.critical_lr.isel(cell))
    grid = np.sort(ds.lr.values)
    assert below.lr < critical <= above.lr
    assert not ((grid > below.lr) & (grid < above.lr)).any()  # neighbours on the grid
    assert int(ds.status.isel(below.index)) <= SLOW < DIVERGING <= int(ds.status.isel(above.index))
    # A K beyond the map takes every configuration, each once.
    everything = validation.pick(ds, 10**6)
    assert len(everything) == ds.status.size
    assert len({tuple(p.index.values()) for p in everything}) == ds.status.size


@pytest.mark.slow  # checked: the main job with Keras in a subprocess
def test_page_has_the_validation_section(checked: tuple[Path, subprocess.CompletedProcess]):
    out, _ = checked
    page = (out / "index.html").read_text()
    assert "Checked against real Keras" in page and 'id="validation-table"' in page
    assert page.count("<tr>", page.index('id="validation-table"')) >= 7  # heading + 6 configs
    assert "Verdicts agree for 6 of 6 float32-determined configurations (100%)" in page
    assert (out / "validation_curves.png").read_bytes()[:4] == b"\x89PNG"


def test_negative_count_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*TINY, "--validate", "-1", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --validate must be a whole number >= 0") and err.count("\n") == 1
    assert not (tmp_path / "stability_map.nc").exists()


@pytest.mark.parametrize("where", ["flag", "sweep file"])
def test_validate_0_runs_nothing_in_keras(
    where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keras_reference, "keras_pool", lambda *_: pytest.fail("Keras was started"))
    (tmp_path / "s.toml").write_text("validate = 0\n")
    off = ["--validate", "0"] if where == "flag" else ["--config", str(tmp_path / "s.toml")]
    assert main([*TINY, *off, "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "validation.json").read_text())
    assert record["status"] == "off" and record["configs"] == [] and record["checked"] == 0
    assert "Keras check: off (--validate 0)." in capsys.readouterr().out


def test_without_tensorflow_the_report_says_how_to_install_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keras_reference, "available", lambda: False)
    assert main([*TINY, "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "validation.json").read_text())
    assert record["status"] == "unavailable" and record["configs"] == []
    assert "TensorFlow is not installed" in record["reason"]
    assert keras_reference.INSTALL_HINT in record["reason"]
    out = capsys.readouterr().out
    assert "TensorFlow is not installed" in out and keras_reference.INSTALL_HINT in out
    page = (tmp_path / "index.html").read_text()
    assert "Checked against real Keras" in page and "TensorFlow is not installed" in page


def test_hyperparameters_of_a_pick_come_from_the_map() -> None:
    dims = ("optimizer", "lr", "n", "batch_size", "seed", "epochs", "momentum")
    ds = xr.Dataset(
        {"status": (dims, np.zeros((2, 1, 1, 1, 1, 1, 2), np.int8))},
        coords={"optimizer": ["sgd", "adam"], "lr": [0.01], "n": [5], "batch_size": [32],
                "seed": [0], "epochs": [5], "momentum": [0.0, 0.5]},
        attrs={"optimizer_args": json.dumps({"clipnorm": 1.0, "beta_1": 0.8})},
    )  # fmt: skip
    at = {"optimizer": 0, "lr": 0, "n": 0, "batch_size": 0, "seed": 0, "epochs": 0, "momentum": 1}
    assert schema.hyperparameters_at(ds, "sgd", at) == {"clipnorm": 1.0, "momentum": 0.5}
    assert schema.hyperparameters_at(ds, "adam", at) == {"clipnorm": 1.0, "beta_1": 0.8}
    ds.attrs["optimizer_args"] = json.dumps({"clipnorm": float("inf")})
    assert schema.hyperparameters_at(ds, "adam", at) == {}  # clipnorm off: Keras's None
    if "adamw" in OPTIMIZERS:  # off for the base optimizer, but not AdamW's default: kept
        ds.attrs["optimizer_args"] = json.dumps({"weight_decay": 0.0})
        assert schema.hyperparameters_at(ds, "adamw", at) == {"weight_decay": 0.0}


def test_parse_count() -> None:
    assert validation.parse_count("0") == 0 and validation.parse_count("12") == 12
    for bad in ("-1", "2.5", "x", "nan"):
        with pytest.raises(Exception, match="--validate must be a whole number"):
            validation.parse_count(bad)


@pytest.mark.slow  # two optimizers, and their float32 neighbours, in a map
def test_a_sensitive_run_is_told_apart_by_its_float32_neighbours() -> None:
    # RMSprop at lr 0.27 on N = 36 ends in a limit cycle around the optimum: a few ulp of lr
    # change its path, while SGD at lr 1e-3 is a smooth contraction the same nudges barely move.
    from src.runner import run
    from src.spec import Sweep

    ds, _ = run(Sweep(optimizer=("sgd", "rmsprop"), lr=(0.001, 0.273842), n=(36,)))
    at = {"n": 0, "batch_size": 0, "seed": 0, "epochs": 0}
    rough = validation.pick_at(ds, {**at, "optimizer": 1, "lr": 1}, "random")
    smooth = validation.pick_at(ds, {**at, "optimizer": 0, "lr": 0}, "random")
    base = validation.engine_histories(ds, [rough, smooth]).histories
    near = validation.engine_histories(ds, validation.float32_neighbours([rough, smooth])).histories
    k = len(validation.SENSITIVITY_ULPS)
    spread = [
        max(validation.max_relative_error(h, base[i]) for h in near[i * k : (i + 1) * k])
        for i in range(2)
    ]
    assert spread[0] > validation.SENSITIVE > spread[1] and spread[0] > 1e3 * spread[1]
    assert validation.nudged(smooth, 1).lr > smooth.lr > validation.nudged(smooth, -2).lr
