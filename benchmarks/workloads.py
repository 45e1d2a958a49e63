"""Workloads shared by the benchmarks: the seed workload and its three implementations.

The seed workload is SGD-family (or any optimizer's) training of ``Dense(1)`` on
``x = 1..N`` with ``N <= 32`` (full batch, Keras's batch size 32): a log grid of learning
rates times N. It runs three ways:

* the vectorized engine (:class:`src.simulator.Simulator`): all configurations at once;
* a per-config jitted JAX loop: what a JAX user writes without ``vmap`` -- one compiled
  ``train_one`` called config by config;
* Keras ``model.fit`` (TensorFlow backend), config by config.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Sequence

import jax
import numpy as np

from src import engine
from src import optimizers as opt
from src.configs import FlatConfigs
from src.problem import Problem, data_table
from src.simulator import Simulator
from src.spec import log_grid

N_MAX = 32
BATCH_SIZE = 32


def seed_workload(
    optimizer: str,
    configs: int,
    epochs: int,
    kernel: str = "auto",
    devices: Sequence[jax.Device] = (),
) -> tuple[Simulator, opt.Family, FlatConfigs]:
    """``configs`` configurations: N = 1..32 x lr grid, ``epochs`` each, seed 0 (for each N
    its learning rates, as a sweep walks its grid), on ``devices`` (default: all)."""
    ns = np.arange(1, N_MAX + 1)
    lrs = np.array(log_grid(1e-5, 1.0, math.ceil(configs / len(ns))))
    n, lr = (g.ravel()[:configs] for g in np.meshgrid(ns, lrs, indexing="ij"))
    family = opt.get(optimizer).family
    flat = FlatConfigs.of(
        [optimizer] * configs, family, learning_rate=lr, n=n,
        batch_size=np.full(configs, BATCH_SIZE), seed=np.zeros(configs, np.int64),
        epochs=np.full(configs, epochs),
    )  # fmt: skip
    rows = np.arange(N_MAX + 1) - 1
    table = data_table([Problem().dataset(int(k)) for k in ns], "float32")
    sim = Simulator(table, rows, "float32", 1e-4, kernel=kernel, devices=tuple(devices))
    return sim, family, flat


def sweep_rate(optimizer: str, configs: int, epochs: int, kernel: str = "auto") -> float:
    """Config-epochs per second of the vectorized engine (after compilation), end to end:
    building the chunks on the host included."""
    return sweep_rates(optimizer, configs, epochs, kernel)[0]


def sweep_rates(
    optimizer: str, configs: int, epochs: int, kernel: str = "auto", repeats: int = 3
) -> tuple[float, float]:
    """Config-epochs per second end to end, and counting only the engine calls (dispatch
    and waiting for the results: :attr:`src.simulator.Simulator.compute_seconds`); the best
    of ``repeats`` runs after a warm-up, as ``timeit`` reports (the machine is shared)."""
    sim, family, flat = seed_workload(optimizer, configs, epochs, kernel)
    sim.run(family, flat)  # compile and warm up
    best, best_compute = math.inf, math.inf
    for _ in range(repeats):
        sim.compute_seconds = 0.0
        t0 = time.perf_counter()
        sim.run(family, flat)
        best = min(best, time.perf_counter() - t0)
        best_compute = min(best_compute, sim.compute_seconds)
    work = configs * epochs
    return work / best, work / best_compute


class PerConfigLoop:
    """The same configurations, one jitted call per configuration (no vmap)."""

    def __init__(self, optimizer: str, configs: int, epochs: int, kernel: str = "auto") -> None:
        # One config per call: on one device.
        sim, family, flat = seed_workload(optimizer, configs, epochs, kernel, jax.devices()[:1])
        self.table, self.tol = sim.table, np.float32(1e-4)
        shapes = engine.Shapes.covering(flat.columns["n"], [BATCH_SIZE], [epochs])
        constants = tuple(sorted(flat.constant_arguments().items()))
        # One config is its own group: the loop gets the engine's best form for it.
        self.configs = []
        for i in range(len(flat)):
            chunk = sim.chunk(flat, i, 1, shapes, constants, grouped=True)
            configs, group = jax.device_get((chunk.configs, chunk.group))
            self.configs.append((jax.tree.map(lambda a: a[0], configs), group))
        self.train_one = jax.jit(
            functools.partial(
                engine.simulate_one,
                family=family,
                shapes=shapes,
                shuffle=False,
                history=False,
                kernel=sim.kernel,
                constants=constants,
            )
        )

    def warm_up(self) -> None:
        jax.block_until_ready(self.train_one(*self._args(0)))

    def run(self) -> None:
        for i in range(len(self.configs)):
            jax.block_until_ready(self.train_one(*self._args(i)))

    def _args(self, i: int) -> tuple:
        config, group = self.configs[i]
        return config, self.table, self.tol, group


def loop_rate(optimizer: str, configs: int, epochs: int, kernel: str = "auto") -> float:
    loop = PerConfigLoop(optimizer, configs, epochs, kernel)
    loop.warm_up()
    t0 = time.perf_counter()
    loop.run()
    return configs * epochs / (time.perf_counter() - t0)


def keras_available() -> bool:
    from src import keras_reference

    return keras_reference.available()


def keras_runs(optimizer: str, configs: int, epochs: int) -> list[tuple]:
    """Arguments of :func:`src.keras_reference.fit` for the first ``configs`` of the workload."""
    _, _, flat = seed_workload(optimizer, configs, epochs)
    w0 = float(engine.initial_params(0).w[0])
    out = []
    for i in range(configs):
        n = int(flat.columns["n"][i])
        x, y, _ = Problem().dataset(n)
        out.append((optimizer, float(flat.columns["learning_rate"][i]), x, y, w0, 0.0,
                    BATCH_SIZE, epochs))  # fmt: skip
    return out


def keras_rate(optimizer: str, configs: int, epochs: int) -> float:
    from src import keras_reference

    runs = keras_runs(optimizer, configs, epochs)
    keras_reference.fit(*runs[0][:-1], 1)  # warm up TensorFlow
    t0 = time.perf_counter()
    for args in runs:
        keras_reference.fit(*args)
    return configs * epochs / (time.perf_counter() - t0)


MIXED_N = 256
MIXED_BATCH_SIZES = (8, 32)


def mixed_rate(family_name: str, lrs: int, epochs: int, kernel: str = "auto") -> float:
    """Config-epochs per second of one family on the mixed map: every optimizer of the
    family x ``lrs`` learning rates x N = 1..256 x batch sizes 8 and 32, in the order the
    main job walks its grid (:attr:`src.configs.GridConfigs.WALK`: batch size, N, optimizer,
    learning rate)."""
    names = [n for n, o in opt.OPTIMIZERS.items() if o.family.name == family_name]
    ns = np.arange(1, MIXED_N + 1)
    grid = np.meshgrid(MIXED_BATCH_SIZES, ns, np.arange(len(names)), log_grid(1e-4, 1.0, lrs),
                       indexing="ij")  # fmt: skip
    bs, n, which, lr = (g.ravel() for g in grid)
    family = opt.get(names[0]).family
    flat = FlatConfigs.of(
        [names[i] for i in which], family, learning_rate=lr, n=n, batch_size=bs,
        seed=np.zeros(len(n), np.int64), epochs=np.full(len(n), epochs),
    )  # fmt: skip
    table = data_table([Problem().dataset(int(k)) for k in ns], "float32")
    sim = Simulator(table, np.arange(MIXED_N + 1) - 1, "float32", 1e-4, kernel=kernel)
    sim.run(family, flat)  # compile and warm up
    t0 = time.perf_counter()
    sim.run(family, flat)
    return len(n) * epochs / (time.perf_counter() - t0)
