"""Feeding flat lists of configurations through compiled engine programs, chunk by chunk.

The sweep, the boundary search and ``explain`` all reduce their work to
:class:`FlatConfigs` -- one row per configuration of one optimizer family -- and hand it to a
:class:`Simulator`, which compiles each ``(family, shapes, chunk size, history)`` program once,
pads the last chunk by repeating its last row, and keeps compile and compute seconds apart.

With several devices (GPUs, or CPU devices from
``XLA_FLAGS=--xla_force_host_platform_device_count=K``), every chunk is split along its config
axis over all of them (``jax.sharding``: a one-axis mesh, the data table replicated). The
configurations are independent, so the partitioned program needs no communication and each
one is computed exactly as on one device.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from src import engine
from src import optimizers as opt
from src.problem import DataTable

CHUNK_ELEMENTS = 1 << 17
"""Default chunk: about this many batch slots (configs x batches x width) per engine call.

Small enough for the working set to stay in cache (4096 full-batch configs of width 32 ran
~25% faster than 32768 on the 2-core machine), large enough to amortise the call."""

COLUMNS = ("learning_rate", "n", "batch_size", "seed", "epochs")


@dataclasses.dataclass
class FlatConfigs:
    """Per-config columns (host arrays) for optimizers of one family.

    ``columns`` holds :data:`COLUMNS`; ``arguments`` the family's builder arguments
    (:meth:`~src.optimizers.Family.arguments`), one value per config.
    """

    columns: dict[str, np.ndarray]
    arguments: dict[str, np.ndarray]

    @staticmethod
    def of(
        optimizers: Sequence[str],
        family: opt.Family,
        overrides: Mapping[str, np.ndarray] | None = None,
        **columns: np.ndarray,
    ) -> FlatConfigs:
        """Configs from parallel columns; hyperparameters are the Keras defaults of each
        config's optimizer unless ``overrides`` gives per-config values."""
        names = sorted(set(optimizers))
        which = np.searchsorted(names, np.asarray(optimizers))
        defaults = [opt.get(m).defaults for m in names]
        # Base options only where some optimizer sets one by default (AdamW's weight decay):
        # the others then get its "off" value, and programs without them stay lean.
        used = [k for k in opt.BASE_OPTIONS if any(k in d for d in defaults)]
        values = {
            h: np.array([d.get(h, opt.BASE_OPTIONS.get(h)) for d in defaults], np.float64)[which]
            for h in (*family.hyperparameters, *used)
        }
        for h, v in (overrides or {}).items():
            if h not in family.hyperparameters and h not in opt.BASE_OPTIONS:
                raise ValueError(f"{family.name} has no hyperparameter {h!r}")
            values[h] = np.broadcast_to(np.asarray(v, np.float64), which.shape)
        cols = {k: np.asarray(columns[k]) for k in COLUMNS}
        return FlatConfigs(cols, family.arguments(values))

    def __len__(self) -> int:
        return len(self.columns["n"])

    def chunk(self, start: int, size: int, rows: np.ndarray, dtype: str) -> engine.Configs:
        """Configs ``start .. start+size`` (repeating the last one to fill a short chunk), as
        host arrays: every process holds them alike and places them on the devices."""
        idx = np.minimum(np.arange(start, start + size), len(self) - 1)
        c = self.columns
        return engine.Configs(
            learning_rate=np.asarray(c["learning_rate"][idx], dtype),
            hyperparameters={h: np.asarray(v[idx], dtype) for h, v in self.arguments.items()},
            data_row=np.asarray(rows[c["n"][idx]], np.int32),
            n=np.asarray(c["n"][idx], np.int32),
            batch_size=np.asarray(c["batch_size"][idx], np.int32),
            epochs=np.asarray(c["epochs"][idx], np.int32),
            seed=np.asarray(c["seed"][idx], np.uint32),
        )


@dataclasses.dataclass
class Simulator:
    """Runs :class:`FlatConfigs` against one :class:`DataTable`.

    ``rows[n]`` is the table row of dataset size ``n``. ``chunk_size`` 0 sizes chunks by
    :data:`CHUNK_ELEMENTS`. Run under the dtype's x64 mode (see :func:`src.sweep.run`).
    """

    table: DataTable
    rows: np.ndarray
    dtype: str
    tol: float
    shuffle: bool = False
    chunk_size: int = 0
    compile_seconds: float = 0.0
    compute_seconds: float = 0.0
    devices: tuple[jax.Device, ...] = ()
    _compiled: dict[tuple, Callable] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.devices = self.devices or tuple(jax.devices())
        mesh = Mesh(np.array(self.devices), ("configs",))
        self._split = NamedSharding(mesh, PartitionSpec("configs"))
        self._replicated = NamedSharding(mesh, PartitionSpec())
        self._table = jax.device_put(_host(self.table), self._replicated)

    @property
    def programs(self) -> int:
        return len(self._compiled)

    def chunk_size_for(self, shapes: engine.Shapes, count: int) -> int:
        """Configs per engine call: a multiple of the device count (the last chunk is padded)."""
        if self.chunk_size:
            size = min(self.chunk_size, count)
        else:
            per_config = shapes.n_batches * shapes.batch_width
            size = max(1, min(count, CHUNK_ELEMENTS * len(self.devices) // per_config))
        return -(-size // len(self.devices)) * len(self.devices)

    def run(
        self,
        family: opt.Family,
        flat: FlatConfigs,
        shapes: engine.Shapes | None = None,
        *,
        history: bool = False,
        progress: Callable[[int], None] | None = None,
        pad_to: int = 0,
    ) -> tuple[engine.Summary, np.ndarray | None]:
        """Every config of ``flat``: per-config summaries and (``history``) History losses.

        ``pad_to`` sizes chunks as if there were that many configs, so that calls with
        varying counts share one compiled program.
        """
        c = flat.columns
        shapes = shapes or engine.Shapes.covering(c["n"], c["batch_size"], c["epochs"])
        size = self.chunk_size_for(shapes, max(len(flat), pad_to))
        tol = jax.device_put(jnp.asarray(self.tol, self.dtype), self._replicated)
        key = (family, tuple(flat.arguments), shapes, size, history, self.shuffle, self.dtype)
        if key not in self._compiled:
            t0 = time.perf_counter()
            self._compiled[key] = engine.simulate.lower(
                self._place(flat.chunk(0, size, self.rows, self.dtype)), self._table, tol,
                family=family, shapes=shapes, shuffle=self.shuffle, history=history,
            ).compile()  # fmt: skip
            self.compile_seconds += time.perf_counter() - t0
        compiled = self._compiled[key]
        parts: list[engine.Summary] = []
        curves: list[np.ndarray] = []
        for start in range(0, len(flat), size):
            configs = self._place(flat.chunk(start, size, self.rows, self.dtype))
            t0 = time.perf_counter()
            summary, losses = _gather(jax.block_until_ready(compiled(configs, self._table, tol)))
            self.compute_seconds += time.perf_counter() - t0
            keep = min(size, len(flat) - start)
            parts.append(engine.Summary(*(np.asarray(a)[:keep] for a in summary)))
            if history:
                curves.append(np.asarray(losses)[:keep])
            if progress:
                progress(keep)
        merged = engine.Summary(*(np.concatenate(k) for k in zip(*parts, strict=True)))
        return merged, (np.concatenate(curves) if history else None)

    def _place(self, configs: engine.Configs) -> engine.Configs:
        """A chunk split along its config axis over the devices (of every process)."""
        return jax.device_put(configs, self._split)


def _host(tree: object) -> object:
    """Host (NumPy) copies: what every process holds alike and places on a global sharding."""
    return jax.tree.map(np.asarray, tree)


def _gather(tree: object) -> object:
    """Results as host arrays; across processes (``jax.distributed``) every process gets all."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)
