"""Shared fixtures: run a few configurations through the engine exactly as the sweep does."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence

os.environ.setdefault("MPLBACKEND", "Agg")

import jax
import numpy as np
import pytest

from src import engine, xla_options
from src import optimizers as opt
from src.configs import FlatConfigs
from src.problem import Problem
from src.simulator import Simulator

xla_options.configure()  # the main job's rounding, before JAX starts its backend
# As the command line does: the suite's processes (two workers, the main jobs they start)
# compile many identical small programs, each then traced and compiled once.
xla_options.use_compilation_cache()

Simulate = Callable[..., tuple[engine.Summary, np.ndarray]]


@functools.lru_cache(maxsize=32)
def _simulator(
    problem: Problem,
    sizes: tuple[int, ...],
    dtype: str,
    tol: float,
    shuffle: bool,
    chunk_size: int,
    kernel: str,
    groups: bool,
) -> Simulator:
    """A :class:`~src.simulator.Simulator` of the datasets of ``sizes``, kept (with the
    programs it compiled) for later calls alike, as the sweep keeps one for all its chunks.
    Call it under the dtype's x64 mode."""
    table, rows = problem.table(sizes, dtype)
    return Simulator(
        table, rows, dtype, tol, shuffle, chunk_size=chunk_size, kernel=kernel, groups=groups
    )


def _simulate(
    name: str,
    lr: Sequence[float],
    n: Sequence[int],
    batch_size: Sequence[int],
    epochs: Sequence[int],
    seed: Sequence[int],
    *,
    dtype: str = "float32",
    shuffle: bool = False,
    tol: float = 1e-4,
    problem: Problem | None = None,
    shapes: engine.Shapes | None = None,
    hyperparameters: dict[str, float] | None = None,
    kernel: str = "autodiff",
    group: bool = False,
    orders: np.ndarray | None = None,
) -> tuple[engine.Summary, np.ndarray]:
    """Run configs (parallel lists) of optimizer ``name`` with history, in one chunk of a
    :class:`~src.simulator.Simulator`; numpy results. ``hyperparameters`` override the
    optimizer's Keras defaults for every config.

    ``group``: the configs share the first one's dataset and batch size, and run as one
    :class:`~src.engine.Group` (as the simulator runs long runs of such configs); otherwise
    they run as one mixed chunk. ``orders`` (shuffled only): sample orders to replay,
    ``(configs, max epochs, max n)``."""
    if group:
        assert len(set(n)) == 1 and len(set(batch_size)) == 1, "a group shares n and batch"
        assert not shuffle or len(set(seed)) == 1, "a shuffled group shares its seed"
    family = opt.get(name).family
    count = len(lr)
    overrides = {k: np.full(count, v, np.float64) for k, v in (hyperparameters or {}).items()}
    with jax.enable_x64(dtype == "float64"):
        simulator = _simulator(
            problem or Problem(),
            tuple(sorted({int(k) for k in n})),
            dtype,
            tol,
            shuffle,
            count,
            kernel,
            group,
        )
        flat = FlatConfigs.of(
            [name] * count, family, overrides, learning_rate=np.asarray(lr, np.float64),
            n=np.asarray(n), batch_size=np.asarray(batch_size), seed=np.asarray(seed, np.int64),
            epochs=np.asarray(epochs),
        )  # fmt: skip
        flat.orders = orders
        summary, history = simulator.run(family, flat, shapes, history=True)
    assert summary is not None and history is not None
    return summary, history


@pytest.fixture(scope="session")
def simulate() -> Simulate:
    """``simulate(name, lr, n, batch_size, epochs, seed, *, dtype, shuffle, tol, problem,
    shapes, hyperparameters, kernel, group, orders)`` -> ``(summary, history)`` (see
    :func:`_simulate`). Results depend on the arguments only, so one serves the session
    (and hypothesis tests, which cannot take function-scoped fixtures)."""
    return _simulate
