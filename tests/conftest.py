"""Shared helpers: run a few configurations through the engine exactly as the sweep does."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("MPLBACKEND", "Agg")

import jax
import jax.numpy as jnp
import numpy as np

import src  # noqa: F401  (sets XLA's CPU flags before JAX starts its backend)
from src import engine
from src import optimizers as opt
from src.problem import Problem, data_table
from src.simulator import batch_moments


def simulate(
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
) -> tuple[engine.Summary, np.ndarray]:
    """Run configs (parallel lists) of optimizer ``name`` with history; numpy results.

    ``group``: the configs share the first one's dataset and batch size, and run as one
    :class:`~src.engine.Group` (as the simulator runs long runs of such configs)."""
    o = opt.get(name)
    hp = {**o.defaults, **(hyperparameters or {})}
    sizes = sorted(set(n))
    problem = problem or Problem()
    table = data_table([problem.dataset(k) for k in sizes], dtype)
    shapes = shapes or engine.Shapes.covering(n, batch_size, epochs)
    with jax.enable_x64(dtype == "float64"):
        rows = np.asarray([sizes.index(k) for k in n], np.int32)
        moments = shared = None
        if kernel == "moments" and not shuffle:
            moments = batch_moments(table, rows, np.asarray(batch_size), shapes.n_batches, dtype)
        if group:
            assert len(set(n)) == 1 and len(set(batch_size)) == 1, "a group shares n and batch"
            shared = engine.Group(
                data_row=rows[0], n=np.int32(n[0]), batch_size=np.int32(batch_size[0]),
                moments=None if moments is None else engine.Moments(*(m[0] for m in moments)),
            )  # fmt: skip
            moments = None
        configs = engine.Configs(
            learning_rate=jnp.asarray(lr, dtype),
            hyperparameters={
                k: jnp.full(len(lr), v, dtype) for k, v in o.family.arguments(hp).items()
            },
            data_row=jnp.asarray(rows),
            n=jnp.asarray(n, jnp.int32),
            batch_size=jnp.asarray(batch_size, jnp.int32),
            epochs=jnp.asarray(epochs, jnp.int32),
            seed=jnp.asarray(seed, jnp.uint32),
            moments=moments,
        )
        summary, history = engine.simulate(
            configs,
            table,
            jnp.asarray(tol, dtype),
            family=o.family,
            shapes=shapes,
            shuffle=shuffle,
            history=True,
            kernel=kernel,
            group=shared,
        )
        return jax.tree.map(np.asarray, summary), np.asarray(history)
