"""Feeding flat lists of configurations through compiled engine programs, chunk by chunk.

The sweep, the boundary search and ``explain`` all reduce their work to
:class:`FlatConfigs` -- one row per configuration of one optimizer family -- and hand it to a
:class:`Simulator`, which compiles each ``(family, shapes, chunk size, history)`` program once,
pads the last chunk by repeating its last row, and keeps compile and compute seconds apart.

With several devices (GPUs, or CPU devices from
``XLA_FLAGS=--xla_force_host_platform_device_count=K``), every chunk is split along its config
axis over all of them (``jax.sharding``: a one-axis mesh, the data table replicated), and each
device runs the engine on its slice (``jax.shard_map``). The configurations are independent,
so the program needs no communication and each one is computed exactly as on one device.

Chunks follow :func:`chunk_plan`: a long run of configs sharing dataset and batch size gets
chunks of its own, run as one :class:`~src.engine.Group`; shorter runs share mixed chunks.
"""

from __future__ import annotations

import dataclasses
import functools
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

MOMENT_ELEMENTS = 1 << 18
"""Default chunk of the moments kernel with a fixed batch order: configs x batches per call
(262,144 full-batch SGD configs ran ~10% faster than 131,072 on the 2-core machine; the
per-config working set is a dozen floats)."""

COLUMNS = ("learning_rate", "n", "batch_size", "seed", "epochs")

MomentsCache = dict[tuple[int, int, int, str], engine.Moments]
"""Batch moments by (data row, batch size, batches, dtype)."""

GROUP_SPEEDUP = {"autodiff": 2.0, "moments": 1.0}
"""How much faster a chunk of one :class:`~src.engine.Group` runs than a mixed one, at the
least (2-core CPU, seed workload: autodiff ~3x, as every slot then fuses into one pass;
moments ~1.05x). A run of configs sharing dataset and batch size gets chunks of its own when
that gain pays for padding its last chunk."""


def chunk_plan(runs: np.ndarray, size: int, speedup: float) -> list[tuple[int, int, bool]]:
    """Chunks ``(start, stop, is_group)`` covering ``0 .. runs[-1]`` in order.

    ``runs`` are the boundaries of runs of one dataset size and batch size. A run of ``L``
    configs is cut into group chunks if ``ceil(L / size) <= speedup * L / size`` (its group
    chunks, the last one padded, cost no more than its share of mixed chunks); the configs
    between such runs go into mixed chunks of at most ``size``. ``speedup`` 0: no groups.
    """
    plan: list[tuple[int, int, bool]] = []

    def mixed(a: int, b: int) -> None:
        plan.extend((s, min(s + size, b), False) for s in range(a, b, size))

    loose = 0  # start of the configs not yet planned
    for a, b in zip(runs[:-1].tolist(), runs[1:].tolist(), strict=True):
        if -(-(b - a) // size) * size <= speedup * (b - a):
            mixed(loose, a)
            plan.extend((s, min(s + size, b), True) for s in range(a, b, size))
            loose = b
    mixed(loose, int(runs[-1]))
    return plan


def hyperparameters(
    family: opt.Family,
    names: Sequence[str],
    which: np.ndarray,
    overrides: Mapping[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Float64 hyperparameters of configs of optimizers ``names[which]`` of ``family``: each
    optimizer's Keras defaults, unless ``overrides`` gives (per-config) values.

    Base options appear only where one of ``names`` sets one by default (AdamW's weight
    decay): the others then get its "off" value, and programs without them stay lean.
    """
    defaults = [opt.get(m).defaults for m in names]
    used = [k for k in opt.BASE_OPTIONS if any(k in d for d in defaults)]
    values = {
        h: np.array([d.get(h, opt.BASE_OPTIONS.get(h)) for d in defaults], np.float64)[which]
        for h in (*family.hyperparameters, *used)
    }
    for h, v in (overrides or {}).items():
        if h not in family.hyperparameters and h not in opt.BASE_OPTIONS:
            raise ValueError(f"{family.name} has no hyperparameter {h!r}")
        values[h] = np.broadcast_to(np.asarray(v, np.float64), which.shape)
    return values


def constant_arguments(arguments: Mapping[str, np.ndarray]) -> dict[str, float]:
    """The builder arguments that take one value only (NaN never counts as one value)."""
    out = {}
    for name, values in arguments.items():
        v = np.asarray(values)
        if v.size and np.all(v == v.flat[0]):
            out[name] = float(v.flat[0])
    return out


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
        cols = {k: np.asarray(columns[k]) for k in COLUMNS}
        return FlatConfigs(cols, family.arguments(hyperparameters(family, names, which, overrides)))

    def __len__(self) -> int:
        return len(self.columns["n"])

    @property
    def argument_names(self) -> tuple[str, ...]:
        return tuple(self.arguments)

    def constant_arguments(self) -> dict[str, float]:
        """Arguments equal for every config: compiled into the program as constants."""
        return constant_arguments(self.arguments)

    def runs(self) -> np.ndarray:
        """Where runs of consecutive configs with one dataset size and batch size start, and
        the end: ``[0, ..., len(self)]``."""
        n, bs = self.columns["n"], self.columns["batch_size"]
        change = np.flatnonzero((n[1:] != n[:-1]) | (bs[1:] != bs[:-1])) + 1
        return np.concatenate([[0], change, [len(n)]]).astype(np.int64)

    def chunk(self, start: int, size: int, rows: np.ndarray, dtype: str) -> engine.Configs:
        """Configs ``start .. start+size`` (repeating the last one to fill a short chunk), as
        host arrays: every process holds them alike and places them on the devices."""
        idx: slice | np.ndarray = slice(start, start + size)
        if start + size > len(self):
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
    kernel: str = "auto"
    compile_seconds: float = 0.0
    compute_seconds: float = 0.0
    devices: tuple[jax.Device, ...] = ()
    _compiled: dict[tuple, Callable] = dataclasses.field(default_factory=dict)
    _moments: MomentsCache = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.kernel = engine.resolve_kernel(self.kernel, self.shuffle)
        self.devices = self.devices or tuple(jax.devices())
        self._mesh = Mesh(np.array(self.devices), ("configs",))
        self._split = NamedSharding(self._mesh, PartitionSpec("configs"))
        self._replicated = NamedSharding(self._mesh, PartitionSpec())
        self._table = jax.device_put(_host(self.table), self._replicated)

    @property
    def programs(self) -> int:
        return len(self._compiled)

    def chunk_size_for(self, shapes: engine.Shapes, count: int) -> int:
        """Configs per engine call: a multiple of the device count (the last chunk is padded)."""
        if self.chunk_size:
            size = min(self.chunk_size, count)
        elif self.kernel == "moments" and not self.shuffle:
            size = max(1, min(count, MOMENT_ELEMENTS * len(self.devices) // shapes.n_batches))
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
        each: Callable[[int, engine.Summary], None] | None = None,
        skip: Callable[[int, int], bool] | None = None,
    ) -> tuple[engine.Summary | None, np.ndarray | None]:
        """Every config of ``flat``: per-config summaries and (``history``) History losses.

        ``pad_to`` sizes chunks as if there were that many configs, so that calls with
        varying counts share one compiled program.

        With ``each``, every chunk's summary goes to ``each(start, summary)`` (configs
        ``start .. start + len``) as soon as it is computed and nothing is kept: the call
        returns ``(None, None)``. ``skip(start, stop)`` true leaves that chunk out (it must
        say the same in every process). ``flat`` may be any source with ``len``,
        ``argument_names`` and ``chunk`` (e.g. :class:`src.sweep.GridConfigs`) when
        ``shapes`` is given.
        """
        if shapes is None:
            c = flat.columns
            shapes = engine.Shapes.covering(c["n"], c["batch_size"], c["epochs"])
        size = self.chunk_size_for(shapes, max(len(flat), pad_to))
        tol = jax.device_put(jnp.asarray(self.tol, self.dtype), self._replicated)
        constants = tuple(sorted(flat.constant_arguments().items()))
        if self.shuffle:
            speedup = 0.0  # batches differ per config
        elif self.kernel == "autodiff" and not engine.slot_by_slot(shapes):
            speedup = 1.0
        else:
            speedup = GROUP_SPEEDUP[self.kernel]
        plan = chunk_plan(flat.runs(), size, speedup)

        def program(configs: engine.Configs, group: engine.Group | None) -> Callable:
            key = (family, flat.argument_names, shapes, size, history, self.shuffle,
                   self.dtype, constants, group is not None)  # fmt: skip
            if key not in self._compiled:
                t0 = time.perf_counter()
                self._compiled[key] = self._program(
                    family, shapes, history, constants, configs, tol, group
                )
                self.compile_seconds += time.perf_counter() - t0
            return self._compiled[key]

        parts: list[engine.Summary] = []
        curves: list[np.ndarray] = []

        def finish(start: int, keep: int, outputs: tuple) -> None:
            t0 = time.perf_counter()
            summary, losses = _gather(jax.block_until_ready(outputs))
            self.compute_seconds += time.perf_counter() - t0
            done = engine.Summary(*(np.asarray(a)[:keep] for a in summary))
            if each is not None:
                each(start, done)
            else:
                parts.append(done)
            if history:
                curves.append(np.asarray(losses)[:keep])
            if progress:
                progress(keep)

        # JAX dispatches asynchronously: the next chunk is built on the host while the
        # devices compute this one.
        pending: tuple[int, int, tuple] | None = None
        for start, stop, grouped in plan:
            keep = stop - start
            if skip is not None and skip(start, stop):
                continue
            configs, group = self.chunk(flat, start, size, shapes, constants, grouped)
            compiled = program(configs, group)
            t0 = time.perf_counter()
            outputs = compiled(configs, self._table, tol, group)
            self.compute_seconds += time.perf_counter() - t0
            if pending is not None:
                finish(*pending)
            pending = (start, keep, outputs)
        if pending is not None:
            finish(*pending)
        if each is not None:
            return None, None
        merged = engine.Summary(*(np.concatenate(k) for k in zip(*parts, strict=True)))
        return merged, (np.concatenate(curves) if history else None)

    def _program(
        self,
        family: opt.Family,
        shapes: engine.Shapes,
        history: bool,
        constants: tuple[tuple[str, float], ...],
        configs: engine.Configs,
        tol: jax.Array,
        group: engine.Group | None,
    ) -> Callable:
        """The engine compiled for chunks like ``configs``: every device runs
        :func:`src.engine.simulate` on its own slice of the configs (``shard_map``), so a
        config computes the very program it would on one device, with nothing to
        communicate; the data table, ``tol`` and ``group`` are replicated."""
        simulate = functools.partial(
            engine.simulate, family=family, shapes=shapes, shuffle=self.shuffle,
            history=history, kernel=self.kernel, constants=constants,
        )  # fmt: skip
        split, whole = PartitionSpec("configs"), PartitionSpec()
        per_device = jax.shard_map(
            lambda c, data, t, g: simulate(c, data, t, group=g),
            mesh=self._mesh,
            in_specs=(split, whole, whole, whole),
            out_specs=split,
            check_vma=False,  # the engine is written per device; nothing crosses devices
        )
        return jax.jit(per_device).lower(configs, self._table, tol, group).compile()

    def chunk(
        self,
        flat: FlatConfigs,
        start: int,
        size: int,
        shapes: engine.Shapes,
        constants: tuple[tuple[str, float], ...],
        grouped: bool = False,
    ) -> tuple[engine.Configs, engine.Group | None]:
        """One chunk on the devices, constants left out; with ``grouped`` (every config of
        the chunk has the first one's dataset and batch size) also its
        :class:`~src.engine.Group`, replicated. Batch moments are added for the moments
        kernel: the group's, or every config's."""
        c = flat.chunk(start, size, self.rows, self.dtype)
        fixed = dict(constants)
        c = c._replace(
            hyperparameters={k: v for k, v in c.hyperparameters.items() if k not in fixed}
        )
        moments = None
        if self.kernel == "moments" and not self.shuffle:
            first = slice(None, 1 if grouped else None)  # a group's batches are its first's
            moments = batch_moments(
                self.table, c.data_row[first], c.batch_size[first], shapes.n_batches,
                self.dtype, self._moments,
            )  # fmt: skip
        if not grouped:
            return self._place(c._replace(moments=moments)), None
        group = engine.Group(
            data_row=c.data_row[0], n=c.n[0], batch_size=c.batch_size[0],
            moments=None if moments is None else engine.Moments(*(m[0] for m in moments)),
        )  # fmt: skip
        return self._place(c), jax.device_put(group, self._replicated)

    def _place(self, configs: engine.Configs) -> engine.Configs:
        """A chunk split along its config axis over the devices (of every process)."""
        return jax.device_put(configs, self._split)


def batch_moments(
    table: DataTable,
    data_row: np.ndarray,
    batch_size: np.ndarray,
    n_batches: int,
    dtype: str,
    cache: MomentsCache | None = None,
) -> engine.Moments:
    """Per-config :class:`~src.engine.Moments` of every batch, shape ``(configs, n_batches)``:
    computed in float64 once per dataset and batch size and rounded to ``dtype`` (kept in
    ``cache``), then gathered per config."""
    cache = {} if cache is None else cache
    row, bs = np.asarray(data_row, np.int64), np.asarray(batch_size, np.int64)
    stride = int(bs.max()) + 1
    key = row * stride + bs
    slot = np.zeros(int(key.max()) + 1, np.int64)  # a dense lookup: no sort on the hot path
    slot[key] = 1
    keys = np.flatnonzero(slot)
    slot[keys] = np.arange(len(keys))
    which = slot[key]
    pairs = zip(*np.divmod(keys, stride), strict=True)
    per_pair = []
    for row, bs in pairs:
        key = (int(row), int(bs), n_batches, dtype)
        if key not in cache:
            n = int(table.n[row])
            exact = engine.fixed_batch_moments(
                table.x[row, :n], table.y[row, :n], float(table.w_opt[row]), int(bs), n_batches
            )
            cache[key] = engine.Moments(*(np.asarray(f, dtype) for f in exact))
        per_pair.append(cache[key])
    return engine.Moments(*(np.stack(f)[which] for f in zip(*per_pair, strict=True)))


def _host(tree: object) -> object:
    """Host (NumPy) copies: what every process holds alike and places on a global sharding."""
    return jax.tree.map(np.asarray, tree)


def _gather(tree: object) -> object:
    """Results as host arrays; across processes (``jax.distributed``) every process gets all."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)
