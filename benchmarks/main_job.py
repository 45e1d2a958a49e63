"""The full default main job end to end, as a user runs it."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from . import slow

ROOT = Path(__file__).resolve().parents[1]


@slow
class MainJob:
    number = 1
    repeat = (1, 2, 60.0)
    timeout = 900

    def time_default_main_job(self) -> None:
        with tempfile.TemporaryDirectory() as out:
            subprocess.run(
                [sys.executable, "-m", "src.stability_map", "--quiet", "--out", out],
                cwd=ROOT, check=True, capture_output=True,
            )  # fmt: skip
