"""Nothing breaks and nothing is lost: each failure a tester found, reproduced.

A full disk, a name too long, a killed writer's temporary file, two runs into one folder and a
Keras check that fails all end with one line (exit 2, or 3 for the check) and leave a folder
that a plain rerun replaces or ``--resume`` continues; a finished map is known by its
completion marker, not by the files present.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import xarray as xr

from src import cli, report, store, validation

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--optimizers", "sgd", "--lr", "0.001,0.01", "--n", "3,20", "--epochs", "4",
        "--validate", "0", "--quiet"]  # fmt: skip


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.slow  # whole main jobs
def test_a_full_disk_is_one_line_and_the_rerun_finishes(tmp_path, capsys, monkeypatch):
    out = tmp_path / "map"

    def no_space(*_: object) -> bytes:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out / "overview.png"))

    monkeypatch.setattr(report, "save_figure", no_space)
    code, _, err = run_main(capsys, *TINY, "--out", str(out))
    assert code == 2
    assert "No space left on device" in one_line(err)
    assert not store.is_complete(out)
    assert (out / cli.PARTIAL).is_dir()  # what was simulated is kept for --resume
    assert not list(out.glob(".*.tmp"))
    monkeypatch.undo()  # space freed: the same command, no --force, finishes the run
    code, _, err = run_main(capsys, *TINY, "--out", str(out))
    assert code == 0, err
    assert store.is_complete(out) and (out / "index.html").exists()
    assert not (out / cli.PARTIAL).exists()
    code, _, err = run_main(capsys, *TINY, "--out", str(out))  # now it holds a finished map
    assert code == 2 and "already holds a stability map" in one_line(err)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None, reason="needs root")
def test_a_real_full_tmpfs_is_one_line(tmp_path, capsys):
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)],
                      capture_output=True).returncode != 0:  # fmt: skip
        pytest.skip("cannot mount a tmpfs here")
    try:
        code, _, err = run_main(capsys, *TINY, "--out", str(disk / "map"))
        assert code == 2
        assert "No space left on device" in one_line(err)
        finals = [p for p in (disk / "map").iterdir() if not p.name.startswith(".")]
        for f in finals:  # whatever exists under a final name is whole
            if f.suffix == ".nc":
                xr.load_dataset(f)
        assert not store.is_complete(disk / "map")
    finally:
        subprocess.run(["umount", str(disk)], check=False)


@pytest.mark.slow  # whole main jobs
@pytest.mark.parametrize("fault", ["write_netcdf", "write_text", "write_json"])
def test_an_error_at_any_write_leaves_nothing_half_written(tmp_path, capsys, monkeypatch, fault):
    out = tmp_path / "map"
    real = getattr(store, fault)

    def fail_once(path: Path, *args: object) -> None:
        with store.atomic_path(Path(path)) as tmp:
            tmp.write_bytes(b"half")  # a partial write, then the disk fills up
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(store, fault, fail_once)
    code, _, err = run_main(capsys, *TINY, "--out", str(out))
    assert code == 2 and "No space left on device" in one_line(err)
    assert not store.is_complete(out)
    for f in out.iterdir():
        assert f.name.startswith(".") or f.read_bytes() != b"half", f
    monkeypatch.setattr(store, fault, real)
    assert run_main(capsys, *TINY, "--out", str(out))[0] == 0


def test_a_killed_writers_temporary_files_are_removed(tmp_path, capsys):
    out = tmp_path / "map"
    out.mkdir()
    (out / cli.PARTIAL).mkdir()
    left = [out / ".stability_map.nc.k3j2x.tmp", out / cli.PARTIAL / ".0-0-8.npz.a1b2.tmp"]
    for f in left:
        f.write_bytes(b"x" * 1024)
    code, _, err = run_main(capsys, *TINY, "--out", str(out), "--resume")
    assert code == 0, err
    assert not any(f.exists() for f in left)


def test_a_second_run_into_the_same_folder_is_refused_naming_the_first(tmp_path, capsys):
    out = tmp_path / "map"
    out.mkdir()
    with store.locked(out):  # another run holds the folder
        code, _, err = run_main(capsys, *TINY, "--out", str(out))
    assert code == 2
    line = one_line(err)
    assert "in use by another run" in line and f"pid {os.getpid()}" in line
    assert run_main(capsys, *TINY, "--out", str(out))[0] == 0  # released: it runs


def test_a_second_process_is_refused_while_the_first_writes(tmp_path):
    out = tmp_path / "map"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from src import store\n"
         "with store.locked(sys.argv[1]):\n print('held', flush=True); time.sleep(600)",
         str(out)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        proc = subprocess.run(
            [sys.executable, "-m", "src.stability_map", *TINY, "--out", str(out)],
            cwd=ROOT, capture_output=True, text=True,
        )  # fmt: skip
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == 2
    assert f"pid {holder.pid}" in one_line(proc.stderr)


def test_a_failing_keras_check_keeps_the_map_and_report(tmp_path, capsys, monkeypatch):
    def broken(*_: object, **__: object) -> validation.ValidationRecord:
        raise RuntimeError("Keras fell over\nwith a second line")

    monkeypatch.setattr(validation, "validate", broken)
    monkeypatch.setattr(validation, "not_run", lambda *_: None)
    out = tmp_path / "map"
    argv = [a for a in TINY if a not in ("--validate", "0")]
    code, stdout, err = run_main(capsys, *argv, "--validate", "2", "--out", str(out))
    assert code == cli.CHECK_FAILED, err
    assert store.is_complete(out)
    ds = xr.load_dataset(out / "stability_map.nc")
    assert ds.status.size == 4 and (out / "index.html").exists()
    last = stdout.strip().splitlines()[-1]
    assert last.startswith("Keras check: failed:") and "Keras fell over with a second line" in last
    assert "Traceback" not in err


@pytest.mark.slow  # a whole main job
def test_one_configuration_is_counted_in_words(tmp_path, capsys):
    argv = ["--optimizers", "sgd", "--lr", "0.01", "--n", "5", "--epochs", "3", "--validate",
            "0", "--quiet", "--out", str(tmp_path / "one")]  # fmt: skip
    code, stdout, _ = run_main(capsys, *argv)
    assert code == 0
    first = stdout.splitlines()[0]
    assert ": 1 configuration in " in first and ": =" not in first


@pytest.mark.slow  # whole main jobs
@pytest.mark.parametrize(
    "argv",
    [
        ["--lr", "3.5e38", "--optimizers", "sgd", "--n", "2", "--epochs", "3"],
        ["--lr", "1e-5,1e-5"],  # repeated: named, not a traceback
    ],
)
def test_valid_input_prints_no_runtime_warnings(tmp_path, argv):
    proc = subprocess.run(
        [sys.executable, "-W", "default", "-m", "src.stability_map", *argv, "--validate", "0",
         "--quiet", "--out", str(tmp_path / "m")],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert "Warning" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode in (0, 2)


def test_explain_on_huge_inputs_prints_no_runtime_warnings(tmp_path):
    data = tmp_path / "huge.csv"
    data.write_text("x,y\n1e30,1\n2e30,2\n3e30,3\n")
    proc = subprocess.run(
        [sys.executable, "-W", "default", "-m", "src.stability_map", "explain", "--data",
         str(data), "--epochs", "5"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr


@pytest.mark.parametrize("parser", [cli.build_parser, cli.build_explain_parser])
def test_every_flag_says_what_it_does_and_its_default(parser):
    for action in parser()._actions:
        if action.dest == "help":
            continue
        text = action.help or ""
        assert text, action.option_strings
        assert "default" in text or action.dest in ("coordinator",), (action.option_strings, text)


def test_help_defines_the_statuses_and_the_exit_codes(capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    for status in ("overflow", "converged", "diverging", "slow"):
        assert f"  {status} " in text
    assert "exit status" in text and "4,194,303" in text and "2**32-1" in text
    assert "--validate" in text and "per epoch" in text
