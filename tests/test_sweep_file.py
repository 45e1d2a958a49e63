"""Sweep files: ``--config`` reads every flag; each run writes the resolved sweep, which
reproduces the dataset bit for bit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import xarray as xr

from src.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "src.stability_map", "--quiet", "--validate", "0", *argv],
        cwd=ROOT, capture_output=True, text=True, timeout=3600,
    )  # fmt: skip


@pytest.mark.slow  # two main jobs in subprocesses
def test_rerun_from_the_written_sweep_file_is_identical(tmp_path: Path) -> None:
    first, again = tmp_path / "first", tmp_path / "again"
    proc = run_cli("--optimizers", "sgd,adam", "--lr", "1e-3:1e-1:7", "--n", "5,20,40",
                   "--batch-size", "8,32", "--epochs", "40", "--seeds", "0,3", "--shuffle",
                   "--sweep", "momentum=0,0.9", "--optimizer-args", "beta_1=0.8",
                   "--out", str(first))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    text = (first / "sweep.toml").read_text()
    assert "shuffle = true" in text and "seeds = [0, 3]" in text and "[meta]" in text
    assert 'sweep = ["momentum=0.0,0.9"]' in text and 'optimizer_args = "beta_1=0.8"' in text
    proc = run_cli("--config", str(first / "sweep.toml"), "--out", str(again))
    assert proc.returncode == 0, proc.stderr
    with (
        xr.open_dataset(first / "stability_map.nc") as a,
        xr.open_dataset(again / "stability_map.nc") as b,
    ):
        xr.testing.assert_identical(a.load(), b.load())


@pytest.mark.slow  # two main jobs in subprocesses
def test_a_noisy_table_reruns_from_its_sweep_file(tmp_path: Path) -> None:
    """The data flags and the noise axes are written too: the rerun is the same map."""
    table = tmp_path / "t.csv"
    table.write_text("a,b,y\n" + "".join(f"{i},{i % 3},{2 * i + 1}\n" for i in range(30)))
    first, again = tmp_path / "first", tmp_path / "again"
    proc = run_cli("--data", str(table), "--features", "a,b", "--standardize", "--noise",
                   "0,1.5", "--noise-seed", "0,4", "--optimizers", "sgd", "--lr", "1e-3,0.1",
                   "--n", "10,30", "--epochs", "30", "--out", str(first))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    text = (first / "sweep.toml").read_text()
    assert "noise = [0.0, 1.5]" in text and "noise_seed = [0, 4]" in text
    assert f"data = {str(table)!r}".replace("'", '"') in text and 'features = "a,b"' in text
    proc = run_cli("--config", str(first / "sweep.toml"), "--out", str(again))
    assert proc.returncode == 0, proc.stderr
    with (
        xr.open_dataset(first / "stability_map.nc") as a,
        xr.open_dataset(again / "stability_map.nc") as b,
    ):
        xr.testing.assert_identical(a.load(), b.load())


@pytest.mark.slow  # whole main jobs
def test_flags_override_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "s.toml"
    cfg.write_text('optimizers = ["sgd"]\nlr = [0.01]\nn = [10, 20]\nepochs = 30\n')
    out = str(tmp_path / "o")
    assert (
        main(["--config", str(cfg), "--n", "20", "--quiet", "--validate", "0", "--out", out]) == 0
    )
    with xr.open_dataset(tmp_path / "o" / "stability_map.nc") as ds:
        assert list(ds.n.values) == [20] and list(ds.epochs.values) == [30]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("optimisers = ['sgd']\n", "unknown key 'optimisers'"),
        ("epochs = [0]\n", "--epochs must be >= 1"),
        ("n = 'abc'\n", "--n must be numbers"),
        ("shuffle = 'yes'\n", "shuffle must be true or false"),
        ("lr = true\n", "lr must be a number"),
        ("lr = [0.01\n", "not valid TOML"),
        ("sweep = [1]\n", 'sweep must be a list of "NAME=V1,V2,..."'),
        ("sweep = ['beta_9=1']\noptimizers = 'sgd'\n", "unknown hyperparameter 'beta_9'"),
    ],
)
def test_bad_sweep_files_name_the_key(
    tmp_path: Path, content: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "s.toml"
    cfg.write_text(content)
    assert main(["--config", str(cfg), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


@pytest.mark.slow  # whole main jobs
def test_existing_outputs_need_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--optimizers", "sgd", "--lr", "0.01", "--n", "5", "--epochs", "5", "--quiet",
            "--validate", "0", "--out", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 2
    assert "pass --force to overwrite" in capsys.readouterr().err
    assert main([*args, "--force"]) == 0
