"""Work done in a forked child process, beside this one: the report's figures.

matplotlib draws in pure Python, one thread at a time, so a process draws its figures on one
core however many it has. A forked child gets a copy of this process's memory as it is at
the fork (the map, the imported modules), so nothing is pickled on the way in; what the work
returns comes back pickled through a pipe.

The child runs only the work it is given, with the garbage collector off (a collection could
finalise objects of this process's libraries, JAX's arrays say, whose threads did not come
along), and leaves with ``os._exit`` (no exit handlers). The work must not use JAX or print.
Whatever goes wrong in the child (an exception, a signal, a result that cannot be pickled,
no answer within :data:`WAIT_SECONDS`) costs only time: :meth:`Forked.result` then does the
work itself, in this process, so its own errors surface here as usual. Where ``os.fork`` is
missing or unsafe (anything but Linux), the work is done in this process from the start.
"""

from __future__ import annotations

import gc
import os
import pickle
import signal
import sys
import threading
import warnings
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

WAIT_SECONDS = 300.0
"""How long :meth:`Forked.result` waits for the child's answer before doing the work itself
(the default report's figures take about a second)."""

AVAILABLE = sys.platform == "linux" and hasattr(os, "fork")
"""Whether work is forked at all: macOS's system libraries are not safe to use after a fork
of a threaded process, and Windows has no fork."""


class Forked(Generic[T]):
    """``work()`` under way in a forked child; :meth:`result` is its return value."""

    def __init__(self, work: Callable[[], T]) -> None:
        self._work = work
        self._pid: int | None = None
        self._answer: bytes | None = None
        self._reader: threading.Thread | None = None
        if AVAILABLE:
            self._start()

    def _start(self) -> None:
        read_end, write_end = os.pipe()
        with warnings.catch_warnings():
            # JAX (and Python from 3.12) warn that a threaded process forks: the child keeps
            # off everything those threads serve.
            warnings.simplefilter("ignore")
            pid = os.fork()
        if pid == 0:
            os.close(read_end)
            _child(self._work, write_end)  # never returns
        os.close(write_end)
        self._pid = pid
        # Read as the child writes: a pipe holds 64 KiB, and the child would otherwise wait
        # on a full pipe until result() is called.
        self._reader = threading.Thread(target=self._read, args=(read_end,), daemon=True)
        self._reader.start()

    def _read(self, fd: int) -> None:
        chunks = []
        with os.fdopen(fd, "rb") as pipe:
            while chunk := pipe.read(1 << 16):
                chunks.append(chunk)
        self._answer = b"".join(chunks)

    def result(self) -> T:
        """The work's return value: the child's, or, if the child gave none, computed here."""
        if self._pid is not None and self._reader is not None:
            self._reader.join(WAIT_SECONDS)
            done = not self._reader.is_alive()
            status = self._reap(kill=not done)
            if done and status == 0 and self._answer:
                try:
                    return pickle.loads(self._answer)
                except Exception:  # a truncated answer: the work is done again below
                    pass
        return self._work()

    def close(self) -> None:
        """Stop the child if it is still running (the work is no longer wanted)."""
        if self._pid is not None:
            self._reap(kill=True)

    def _reap(self, kill: bool) -> int | None:
        """Wait for the child (after killing it, if ``kill``); its exit status, or ``None``
        if it was killed or already reaped."""
        pid, self._pid = self._pid, None
        if pid is None:
            return None
        if kill:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status)


def _child(work: Callable[[], object], fd: int) -> None:
    """The child's whole life: do the work, write its pickled result to ``fd``, exit 0 (1 if
    anything failed, and the parent does the work itself)."""
    code = 1
    try:
        gc.disable()
        answer = pickle.dumps(work(), protocol=pickle.HIGHEST_PROTOCOL)
        with os.fdopen(fd, "wb") as pipe:
            pipe.write(answer)
        code = 0
    except BaseException:  # whatever it was, the parent does the work again
        pass
    finally:
        os._exit(code)
