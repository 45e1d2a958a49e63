"""Work in a forked child (:mod:`src.forked`): its result comes back, and whatever goes wrong
in the child (an exception, a crash, an unpicklable result) the work is done here instead."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from src import forked

pytestmark = pytest.mark.skipif(not forked.AVAILABLE, reason="no fork on this platform")


def test_the_result_is_computed_in_the_child() -> None:
    here = os.getpid()
    data = np.arange(100_000.0)  # the parent's memory, read in the child without pickling
    result = forked.Forked(lambda: (os.getpid(), float(data.sum()), b"x" * 300_000)).result()
    assert result[0] != here
    assert result[1] == float(data.sum()) and result[2] == b"x" * 300_000  # > a pipe's 64 KiB


def _fails_in_the_child(parent: int) -> int:
    if os.getpid() != parent:
        raise RuntimeError("only the child fails")
    return os.getpid()


def _dies_in_the_child(parent: int) -> int:
    if os.getpid() != parent:
        os.kill(os.getpid(), 9)
    return os.getpid()


@pytest.mark.parametrize("work", [_fails_in_the_child, _dies_in_the_child])
def test_a_child_that_fails_leaves_the_work_to_the_parent(work) -> None:
    here = os.getpid()
    assert forked.Forked(lambda: work(here)).result() == here


def test_an_unpicklable_result_is_computed_again_here() -> None:
    here = os.getpid()
    result = forked.Forked(lambda: (lambda: os.getpid()) if os.getpid() != here else here)
    assert result.result() == here


def test_errors_of_the_work_itself_surface_here() -> None:
    def work() -> None:
        raise ValueError("bad work")

    with pytest.raises(ValueError, match="bad work"):
        forked.Forked(work).result()


def test_closing_stops_and_reaps_a_running_child() -> None:
    job = forked.Forked(lambda: time.sleep(600))
    pid = job._pid
    assert pid is not None
    job.close()
    with pytest.raises(ChildProcessError):  # reaped: no zombie left
        os.waitpid(pid, os.WNOHANG)


def test_without_fork_the_work_is_done_here(monkeypatch) -> None:
    monkeypatch.setattr(forked, "AVAILABLE", False)
    assert forked.Forked(os.getpid).result() == os.getpid()
