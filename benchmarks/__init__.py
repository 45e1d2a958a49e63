"""asv benchmarks of stability-map: speed (JAX vs Keras vs a per-config JAX loop) and the
stability results, commit by commit.

Slow benchmarks (the default main job, the default map, real Keras on many configurations, a
browser) are gated as xarray's suite gates its own: ``ASV_SKIP_SLOW=1 asv run --quick`` leaves
them out (a smoke pass over everything else, CI's), plain ``asv run`` runs them all.
"""

from __future__ import annotations

import os
from typing import TypeVar

from src import xla_options

xla_options.configure()  # the main job's rounding, set before JAX starts its backend

SKIP_SLOW = os.environ.get("ASV_SKIP_SLOW", "").strip().lower() not in ("", "0", "false", "no")
"""Whether slow benchmarks are left out of this run (``ASV_SKIP_SLOW``)."""

Benchmark = TypeVar("Benchmark", bound=type)


def slow(cls: Benchmark) -> Benchmark:
    """Mark every benchmark of the class ``cls`` as slow: under :data:`SKIP_SLOW` asv's
    discovery leaves it out (it skips a function whose ``skip_benchmark`` is true), so its
    ``setup_cache`` never runs either."""
    if SKIP_SLOW:
        for name, member in vars(cls).items():
            if callable(member) and name.startswith(("time_", "track_", "peakmem_", "mem_")):
                member.skip_benchmark = True
    return cls
