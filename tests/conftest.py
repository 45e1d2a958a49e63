"""Shared fixtures: run a few configurations through the engine exactly as the sweep does."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence

os.environ.setdefault("MPLBACKEND", "Agg")
# TensorFlow's op pools of one thread each, as in the Keras check's workers
# (keras_reference._init_worker), for Keras run in a test's own process too: TensorFlow reads
# these when it starts, and its setters refuse any change after that, whichever file started it.
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")

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


SECONDS = {
    "test_keras_fidelity.py": 312, "test_own_data_map.py": 186, "test_fuzz_cli_more.py": 161,
    "test_devices.py": 140, "test_fuzz_cli.py": 138, "test_groups.py": 136, "test_cli.py": 105,
    "test_xla_options.py": 95, "test_kernels.py": 90, "test_page_curves.py": 83,
    "test_keras_fast_fit.py": 79, "test_validation.py": 77, "test_segments.py": 66,
    "test_shared_steps.py": 65, "test_resume.py": 58, "test_page.py": 54,
    "test_keras_reference.py": 51, "test_sweep_file.py": 49, "test_hyperparameter_axes.py": 46,
    "test_features.py": 46, "test_padding.py": 43, "test_robustness.py": 39,
}  # fmt: skip
"""Seconds each of the longest files took in the full suite (two workers, empty cache): the
sum of its tests' times in ``python -m pytest -n auto --junitxml=FILE``, per file. A stale
table only unbalances the workers; refresh it when a file's time changes by minutes."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest files first, the rest as collected: pytest-xdist (``--dist loadfile``,
    ``--no-loadscope-reorder``) hands each worker the next file as it finishes one, so the
    workers end together. Its own order, most tests first, put the two fuzz files (one long
    test each) last, and one worker idled ~3 minutes while the other ran them."""
    items.sort(key=lambda item: -SECONDS.get(item.path.name, 0))  # stable: files stay whole
