"""The same map on 1 device, on 4 (forced host CPU) devices and on 2 processes: identical.

The configurations of a chunk are independent, so splitting the config axis over devices
(``jax.sharding``) or over processes (``jax.distributed``, Gloo on CPU) must not change a bit.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import xarray as xr

ROOT = Path(__file__).resolve().parents[1]
MAP = ["--optimizers", "sgd,adam", "--lr", "1e-3:1:7", "--n", "1:12", "--batch-size", "4,32",
       "--epochs", "30", "--seeds", "0,1", "--shuffle", "--validate", "0", "--quiet"]  # fmt: skip
# Fixed batches, 80 configs per (N, batch size), chunks of 64: every run goes in group chunks.
GROUPS = ["--optimizers", "sgd,adam", "--lr", "1e-3:1:40", "--n", "1:5", "--batch-size", "4,32",
          "--epochs", "30", "--seeds", "0,1", "--kernel", "autodiff", "--chunk-size", "64",
          "--validate", "0", "--quiet"]  # fmt: skip
# Fixed batches, the moments kernel, chunks of 64: calls of segments (each device its own).
SEGMENTS = ["--optimizers", "adam,nadam", "--lr", "1e-3:1:16", "--n", "1:24", "--batch-size",
            "4,16", "--epochs", "30", "--no-shuffle", "--kernel", "moments", "--chunk-size", "64",
            "--validate", "0", "--quiet"]  # fmt: skip
MAPS = pytest.mark.parametrize(
    "grid", [MAP, GROUPS, SEGMENTS], ids=["shuffled", "groups", "segments"]
)


def _env(devices: int) -> dict[str, str]:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def _main_job(out: Path, devices: int = 1, *extra: str, grid: list[str] = MAP) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "src.stability_map", *grid, "--out", str(out), *extra],
        cwd=ROOT, env=_env(devices), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=3600)
    assert proc.returncode == 0, err


def _devices(out: Path) -> list[str]:
    return json.loads((out / "summary.json").read_text())["devices"]


@pytest.mark.slow  # main jobs in subprocesses, several devices
@MAPS
def test_one_and_four_devices_give_identical_maps(tmp_path: Path, grid: list[str]) -> None:
    one, four = tmp_path / "one", tmp_path / "four"
    _finish(_main_job(one, 1, grid=grid))
    _finish(_main_job(four, 4, grid=grid))
    assert len(_devices(one)) == 1 and len(_devices(four)) == 4
    with (
        xr.open_dataset(one / "stability_map.nc") as a,
        xr.open_dataset(four / "stability_map.nc") as b,
    ):
        xr.testing.assert_identical(a.load(), b.load())


@pytest.mark.slow  # main jobs in subprocesses, several processes
def test_two_processes_give_the_map_of_one(tmp_path: Path, grid: list[str] = MAP) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    group = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"]
    alone, shared = tmp_path / "alone", tmp_path / "shared"
    workers = [_main_job(shared, 1, *group, "--process-id", str(i), grid=grid) for i in (1, 0)]
    for proc in workers:
        _finish(proc)
    _finish(_main_job(alone, grid=grid))
    assert len(_devices(shared)) == 2  # one CPU device in each process
    with (
        xr.open_dataset(alone / "stability_map.nc") as a,
        xr.open_dataset(shared / "stability_map.nc") as b,
    ):
        xr.testing.assert_identical(a.load(), b.load())


def test_bad_process_group_flags_are_one_line_errors(capsys) -> None:
    from src.cli import main

    base = ["--optimizers", "sgd", "--lr", "0.01", "--n", "5", "--quiet", "--validate", "0"]
    for extra, message in (
        (["--coordinator", "127.0.0.1:9", "--num-processes", "2", "--process-id", "2"],
         "--process-id must be in [0, 2)"),
        (["--coordinator", "nohost", "--num-processes", "2"], "--coordinator takes HOST:PORT"),
    ):  # fmt: skip
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
