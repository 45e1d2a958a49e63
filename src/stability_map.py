"""The main job, and the Python API: build a sweep, run it, get an ``xarray.Dataset``.

``python -m src.stability_map`` with no arguments runs the seed problem's default map (six
Keras optimizers x 81 learning rates from 1e-5 to 1 x N = 1..64, 500 epochs) and writes
``reports/stability_map/``. From Python (a notebook, say)::

    from src import xla_options
    xla_options.configure()  # before JAX starts: the command line's rounding (no FMA)

    from src.stability_map import Sweep, load, render, run

    ds, stats = run(Sweep(optimizer=("sgd", "adam"), n=(10, 20)))   # the map, in memory
    render(ds, "reports/mine")                                       # the report, on disk
    ds = load("reports/mine")                                        # and back
"""

from __future__ import annotations

import atexit
import os
import sys
import time
from pathlib import Path


def _leave(status: list[int]) -> None:
    """The command line's last exit handler: every output is written and closed and the
    other handlers have run (registered after this one, they run before it), so the process
    ends here, without the interpreter's teardown of every object the run left (JAX's
    programs and traces, the figures; ~0.06 s of a cached default run, 2-core CPU)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status[0])


_STATUS = [1]
if __name__ == "__main__":  # registered before the imports below register theirs
    atexit.register(_leave, _STATUS)

import xarray as xr  # noqa: E402

from src.cli import main  # noqa: E402
from src.errors import InputError  # noqa: E402
from src.runner import RunStats, run  # noqa: E402
from src.schema import problem_of  # noqa: E402
from src.spec import Curve, Sweep  # noqa: E402

__all__ = ["Curve", "RunStats", "Sweep", "load", "main", "render", "run"]


def load(path: str | Path) -> xr.Dataset:
    """A saved map: a run's output folder or its ``stability_map.nc``, loaded into memory."""
    path = Path(path)
    file = path / "stability_map.nc" if path.is_dir() else path
    if not file.exists():
        raise InputError(f"no stability map at {file}")
    return xr.load_dataset(file)


def render(ds: xr.Dataset, out: str | Path) -> Path:
    """Write the full report of a map (netCDF, PNGs, ``index.html``, ``summary.json``) into
    ``out``; returns the page's path."""
    from src import report, store

    folder = store.prepare_output_dir(Path(out))
    with store.locked(folder):
        store.remove_temporaries(folder)
        store.incomplete(folder)
        report.publish(ds, None, problem_of(ds), folder, time.perf_counter())
        store.complete(folder)
    return folder / "index.html"


if __name__ == "__main__":
    _STATUS[0] = main()
    raise SystemExit(_STATUS[0])
