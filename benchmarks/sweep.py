"""Timing of the vectorized sweep per optimizer family, its compilation, and its memory."""

from __future__ import annotations

from src import optimizers as opt
from src.runner import run
from src.spec import Sweep, log_grid

from . import SKIP_SLOW, slow
from .workloads import seed_workload


def one_per_family() -> list[str]:
    """The first optimizer name of every family (a family is one compiled program)."""
    first: dict[str, str] = {}
    for name, o in opt.OPTIMIZERS.items():
        first.setdefault(o.family.name, name)
    return list(first.values())


OPTIMIZERS = one_per_family()
EPOCHS = 100


class TimeSweep:
    """The seed workload (N <= 32, full batch), all configurations in one engine call each
    chunk; compilation happens in ``setup``, so this times execution only."""

    # The smoke pass (``ASV_SKIP_SLOW``) times the small size only.
    params = ([10_000] if SKIP_SLOW else [10_000, 100_000], OPTIMIZERS, ["moments", "autodiff"])
    param_names = ["configs", "optimizer", "kernel"]
    number = 1
    repeat = (1, 5, 20.0)
    timeout = 600

    def setup(self, configs: int, optimizer: str, kernel: str) -> None:
        self.sim, self.family, self.flat = seed_workload(optimizer, configs, EPOCHS, kernel)
        self.sim.run(self.family, self.flat)  # compile + warm-up

    def time_sweep(self, configs: int, optimizer: str, kernel: str) -> None:
        self.sim.run(self.family, self.flat)  # blocks until the results are ready


class TrackCompile:
    """Compilation of one family's program, tracked apart from execution."""

    params = [OPTIMIZERS]
    param_names = ["optimizer"]
    unit = "seconds"
    timeout = 300

    def track_compile_seconds(self, optimizer: str) -> float:
        sim, family, flat = seed_workload(optimizer, 4096, EPOCHS)
        sim.run(family, flat)
        return sim.compile_seconds


@slow
class PeakMemSweep:
    """Peak memory of a whole SGD sweep (engine, boundary search, dataset) at two sizes."""

    params = [[25_000, 250_000]]
    param_names = ["configs"]
    timeout = 600

    def peakmem_sweep(self, configs: int) -> None:
        run(Sweep(optimizer=("sgd",), lr=log_grid(1e-5, 1.0, configs // 32), n=tuple(range(1, 33)),
                  epochs=(50,)))  # fmt: skip
