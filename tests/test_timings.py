"""summary.json says where the time went: the map, the loss curves, the boundary, the report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from src import cli

PHASES = ("simulate_seconds", "boundary_seconds", "curves_seconds", "report_seconds")
TIMINGS = ("wall_seconds", "compute_seconds", "compile_seconds", *PHASES)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    """A tiny main job in this process: its summary.json and the last line of its stdout
    that gives the timings."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("timings")
    argv = ["--optimizers", "sgd", "--lr", "1e-3,0.01", "--n", "3,5", "--epochs", "20",
            "--validate", "0", "--quiet", "--out", str(out)]  # fmt: skip
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert cli.main(argv) == 0
    summary = json.loads((Path(out) / "summary.json").read_text())
    line = next(s for s in stdout.getvalue().splitlines() if s.startswith("Stability map of"))
    return summary, line


@pytest.mark.slow  # tiny_run: a whole main job
def test_summary_has_every_timing(tiny_run: tuple[dict, str]) -> None:
    summary, _ = tiny_run
    for key in TIMINGS:
        assert key in summary, key
        value = summary[key]
        assert isinstance(value, int | float) and not isinstance(value, bool), (key, value)
        assert math.isfinite(value) and value >= 0, (key, value)


@pytest.mark.slow  # tiny_run: a whole main job
def test_phases_fit_in_wall_time(tiny_run: tuple[dict, str]) -> None:
    """Every phase is measured inside wall_seconds: the report's seconds end where
    wall_seconds ends (page included, just before summary.json is written), so the phases
    add up to at most the wall time; the slack is only the rounding to 1 ms of each."""
    summary, _ = tiny_run
    total = sum(summary[k] for k in PHASES)
    assert total <= summary["wall_seconds"] + 0.005, {k: summary[k] for k in TIMINGS}
    assert summary["simulate_seconds"] > 0 and summary["report_seconds"] > 0


@pytest.mark.slow  # tiny_run: a whole main job
def test_stdout_line_gives_the_phases(tiny_run: tuple[dict, str]) -> None:
    _, line = tiny_run
    for words in ("s simulating", "s boundary", "s report"):
        assert words in line, line
