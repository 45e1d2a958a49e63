"""Finished chunks of a map on disk, so that an interrupted run resumes where it stopped.

A run given a :class:`WorkStore` (the main job keeps one in ``<out>/.partial``) saves the
per-config summaries of its finished chunks there as it goes: consecutive chunks of one
optimizer family are gathered into one file, ``<family>-<start>-<stop>.npz`` (rows
``start .. stop`` of that family's block of the grid, see :class:`src.configs.GridConfigs`),
written atomically once it holds :data:`FLUSH_CONFIGS` configurations or is
:data:`FLUSH_SECONDS` old, at the end of every family, and when the run is interrupted.
``fingerprint.txt`` holds a hash of the sweep and of the software computing it.

Resuming (``resume=True``) keeps those files if the fingerprint matches -- a different sweep is
refused with an :class:`~src.errors.InputError` -- and the run simulates only the chunks they do
not cover. The engine computes every configuration alike whatever chunk it is in, so the map
does not depend on which chunks came from disk. Without ``resume`` the directory is emptied.
"""

from __future__ import annotations

import bisect
import hashlib
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from src import engine, store
from src.errors import InputError

FORMAT = 2
"""Version of the files' layout: part of the fingerprint."""

FLUSH_CONFIGS = 1 << 18
"""A file is written once this many finished configurations wait (about 9 MB)..."""

FLUSH_SECONDS = 10.0
"""... or once the oldest has waited this long: an interrupted run loses at most that much."""

FINGERPRINT = "fingerprint.txt"
_SEGMENT = re.compile(r"^(\d+)-(\d+)-(\d+)\.npz$")


class Intervals:
    """A union of half-open integer intervals ``[a, b)``, kept sorted and disjoint."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._stops: list[int] = []

    def add(self, a: int, b: int) -> None:
        if b <= a:
            return
        i = bisect.bisect_left(self._stops, a)  # first interval that ends at or after a
        j = bisect.bisect_right(self._starts, b)  # intervals before j start at or before b
        if i < j:
            a, b = min(a, self._starts[i]), max(b, self._stops[j - 1])
        self._starts[i:j], self._stops[i:j] = [a], [b]

    def overlap(self, a: int, b: int) -> int:
        """How many of ``a .. b`` the intervals hold."""
        i = bisect.bisect_right(self._stops, a)
        total = 0
        while i < len(self._starts) and self._starts[i] < b:
            total += min(b, self._stops[i]) - max(a, self._starts[i])
            i += 1
        return total

    def covers(self, a: int, b: int) -> bool:
        return self.overlap(a, b) == b - a

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(zip(self._starts, self._stops, strict=True))


def fingerprint(sweep: object) -> str:
    """A hash of everything that decides the map: the sweep (every field, by its ``repr``),
    the contents of a user's table (a file edited between runs is new data), the versions of
    the numerical libraries and the JAX backend."""
    import jax
    import jaxlib
    import optax

    table = getattr(getattr(sweep, "problem", None), "user_table", None)
    contents = "" if table is None else hashlib.sha256(
        np.ascontiguousarray(table.features).tobytes() + table.target.tobytes()
    ).hexdigest()  # fmt: skip
    text = "\n".join(
        [
            f"stability-map partial results, format {FORMAT}",
            repr(sweep),
            contents,
            f"jax {jax.__version__}, jaxlib {jaxlib.__version__}, optax {optax.__version__}, "
            f"numpy {np.__version__}, backend {jax.default_backend()}",
        ]
    )
    return hashlib.sha256(text.encode()).hexdigest()


class WorkStore:
    """The finished chunks of one sweep in directory ``path`` (see the module docstring).

    Open it with :meth:`open`; :func:`src.runner.run` then :meth:`load`\\ s and :meth:`add`\\ s
    chunks. :meth:`discard` removes the directory once the map is safely written.
    """

    def __init__(self, path: Path, resumed: dict[int, Intervals], files: list[tuple]) -> None:
        self.path = path
        self._finished = resumed
        self._files = files  # (family, start, stop, path) read at open
        self._pending: list[tuple[int, int, engine.Summary]] = []
        self._pending_since = 0.0

    @staticmethod
    def open(path: str | Path, sweep: object, resume: bool = False) -> WorkStore:
        """The store of ``sweep`` in ``path``: with ``resume``, keeping the chunks a run of the
        same sweep left there (refusing another sweep's); without, emptied."""
        path = Path(path)
        mark = fingerprint(sweep)
        found = path / FINGERPRINT
        if resume and found.exists():
            if found.read_text(encoding="utf-8").strip() != mark:
                raise InputError(
                    f"cannot resume: {path} holds an unfinished run of another sweep (or of "
                    "other software versions); run without --resume to start over"
                )
        elif path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
        if not found.exists():
            store.write_text(found, mark + "\n")
        finished: dict[int, Intervals] = {}
        files = []
        for p in sorted(path.iterdir()):
            m = _SEGMENT.match(p.name)
            if m is None:
                if p.name.endswith(".tmp"):  # a write cut short: never renamed, never read
                    p.unlink(missing_ok=True)
                continue
            family, start, stop = map(int, m.groups())
            files.append((family, start, stop, p))
            finished.setdefault(family, Intervals()).add(start, stop)
        return WorkStore(path, finished, files)

    def finished(self, family: int) -> Intervals:
        """Rows of ``family``'s block already on disk when the store was opened."""
        return self._finished.get(family, Intervals())

    def load(self, family: int) -> Iterator[tuple[int, engine.Summary]]:
        """``(start, summary)`` of every file of ``family`` found at open, one at a time."""
        for f, start, stop, p in self._files:
            if f != family:
                continue
            try:
                with np.load(p) as data:
                    summary = engine.Summary(*(data[k] for k in engine.Summary._fields))
            except (OSError, ValueError, KeyError) as e:
                raise InputError(
                    f"cannot resume: {p} is unreadable ({e}); run without --resume to start over"
                ) from None
            if any(len(a) != stop - start for a in summary):
                raise InputError(
                    f"cannot resume: {p} does not hold rows {start}-{stop}; "
                    "run without --resume to start over"
                )
            yield start, summary

    def add(self, family: int, start: int, summary: engine.Summary) -> None:
        """A finished chunk (rows ``start ..`` of ``family``): saved with its neighbours."""
        if self._pending:
            f, s, last = self._pending[-1]
            if f != family or s + len(last.final_loss) != start:
                self.flush()
        if not self._pending:
            self._pending_since = time.monotonic()
        self._pending.append((family, start, summary))
        waiting = sum(len(s.final_loss) for _, _, s in self._pending)
        if waiting >= FLUSH_CONFIGS or time.monotonic() - self._pending_since >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Write the waiting chunks as one file (atomically)."""
        if not self._pending:
            return
        family, start, _ = self._pending[0]
        stop = start + sum(len(s.final_loss) for _, _, s in self._pending)
        arrays = {
            k: np.concatenate([getattr(s, k) for _, _, s in self._pending])
            for k in engine.Summary._fields
        }
        with (
            store.atomic_path(self.path / f"{family}-{start}-{stop}.npz") as tmp,
            open(tmp, "wb") as f,
        ):
            np.savez(f, **arrays)
        self._pending = []

    def discard(self) -> None:
        """Remove the directory (the map it served is written)."""
        self._pending = []
        shutil.rmtree(self.path, ignore_errors=True)
