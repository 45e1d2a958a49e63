"""The second half of the command-line fuzz (:mod:`test_fuzz_cli`), a file of its own so
that the two halves run on two workers (the suite distributes whole files)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_fuzz_cli import CASES, fuzz


@pytest.mark.slow  # hundreds of command lines, a few dozen of which run a tiny map
def test_fuzz_command_line_second_half(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Other command lines than the first half's (another seed), the same contract."""
    fuzz(tmp_path, capfd, CASES - CASES // 2, 1, [])
