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

import gc
import time
from pathlib import Path

import xarray as xr

from src.cli import main
from src.errors import InputError
from src.runner import RunStats, run
from src.schema import problem_of
from src.spec import Curve, Sweep

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
    status = main()
    # The interpreter's last garbage collection would walk every object the run left (JAX's
    # traces and caches, the figures): ~0.5 s of a cached default run's ~6.5 s (2-core
    # CPU). Frozen, they are still freed at exit, without the walk.
    gc.freeze()
    raise SystemExit(status)
