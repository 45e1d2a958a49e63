"""Feeding flat lists of configurations through compiled engine programs, chunk by chunk.

The sweep, the boundary search and ``explain`` all reduce their work to a
:class:`~src.configs.ConfigSource` -- rows of configurations of one optimizer family -- and
hand it to a :class:`Simulator`, which compiles each ``(family, shapes, chunk size, history)``
program once, pads the last chunk by repeating its last row, and keeps compile and compute
seconds apart.

With several devices (GPUs, or CPU devices from
``XLA_FLAGS=--xla_force_host_platform_device_count=K``), every chunk is split along its config
axis over all of them (``jax.sharding``: a one-axis mesh, the data table replicated), and each
device runs the engine on its slice (``jax.shard_map``). The configurations are independent,
so the program needs no communication and each one is computed exactly as on one device.

Chunks follow :func:`chunk_plan`: a long run of configs sharing dataset and batch size gets
chunks of its own, run as one :class:`~src.engine.Group`; shorter runs share mixed chunks.
The moments kernel with a fixed batch order and several batches per epoch follows
:func:`segment_plan` instead, for optimizers with step counters: every call holds segments of
configs that take equally many batch steps per epoch, and so share their step state.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from src import engine, threefry, xla_options
from src import optimizers as opt
from src.configs import ConfigSource, span
from src.problem import DataTable
from src.store import atomic_path

CHUNK_ELEMENTS = 1 << 17
"""Default chunk: about this many batch slots (configs x batches x width) per engine call.

Small enough for the working set to stay in cache (4096 full-batch configs of width 32 ran
~25% faster than 32768 on the 2-core machine), large enough to amortise the call."""

MOMENT_ELEMENTS = 1 << 15
"""Default chunk of the moments kernel with a fixed batch order and one batch: configs per
call (per device). Each device (one per core, :mod:`src.xla_options`) runs its share as one
compiled function whose working set, a dozen floats per config, stays in the core's cache:
on the 2-core machine the seed workload (2^20 SGD configs, 100 epochs) ran 6.7-7.5e8
config-epochs/s with 16,384 to 65,536 per device, 6.0e8 with 8,192. Chunks of 262,144 on one
device, their loops split over both cores by XLA, had run 4.4-5.3e8."""

MINIBATCH_CONFIGS = 1 << 10
"""Default chunk of the moments kernel with a fixed order and several batches: configs per
call (per device). Its rows walk the grid batch size first, then dataset size
(:attr:`src.configs.GridConfigs.WALK`), so a chunk this small holds configs with about as
many batches, and runs few padded steps. On the 2-core machine (a device per core, loops
compiled whole) the mixed map (500 epochs) ran the SGD family at 3.4-3.7e7 config-epochs/s
with 1024 per device, 3.2-3.3e7 with 2048 and 2.3e7 with 4096; Nadam's at 2.1e7, 1.8e7 and
1.1e7."""

MomentsCache = dict[tuple[int, int, int, str], engine.Moments]
"""Batch moments by (data row, batch size, batches, dtype)."""

GROUP_SPEEDUP = {"autodiff": 2.0, "moments": 1.0}
"""How much faster a chunk of one :class:`~src.engine.Group` runs than a mixed one, at the
least (2-core CPU, seed workload: autodiff ~3x, as every slot then fuses into one pass;
moments ~1.05x). A run of configs sharing dataset and batch size gets chunks of its own when
that gain pays for padding its last chunk."""


SHUFFLED_GROUP_SPEEDUP = 4.0
"""The same for shuffled batches, where a group also draws each epoch's order and gathers its
batches once for the chunk instead of once per config."""

MIN_SHUFFLED_GROUP = 16
"""The smallest chunk of a shuffled group: shorter runs (the boundary search's cells, one
config each) share mixed chunks rather than each compiling into a call of its own."""


def chunk_plan(
    runs: np.ndarray, size: int, speedup: float, group_size: int = 0
) -> list[tuple[int, int, bool]]:
    """Chunks ``(start, stop, is_group)`` covering ``0 .. runs[-1]`` in order.

    ``runs`` are the boundaries of runs of one dataset size and batch size (and seed, for
    shuffled batches). A run of ``L`` configs is cut into group chunks of ``group_size``
    (default ``size``) if ``ceil(L / group_size) * group_size <= speedup * L`` (its group
    chunks, the last one padded, cost no more than its share of mixed chunks); the configs
    between such runs go into mixed chunks of at most ``size``. ``speedup`` 0: no groups;
    a run of one config is never a group (it would share nothing).
    """
    group_size = group_size or size
    plan: list[tuple[int, int, bool]] = []

    def mixed(a: int, b: int) -> None:
        plan.extend((s, min(s + size, b), False) for s in range(a, b, size))

    loose = 0  # start of the configs not yet planned
    for a, b in zip(runs[:-1].tolist(), runs[1:].tolist(), strict=True):
        if b - a > 1 and -(-(b - a) // group_size) * group_size <= speedup * (b - a):
            mixed(loose, a)
            plan.extend((s, min(s + group_size, b), True) for s in range(a, b, group_size))
            loose = b
    mixed(loose, int(runs[-1]))
    return plan


SEGMENT_PADDING = 1 / 8
"""The most a :func:`segment_plan` may add to a run's configs by padding its segments."""


class SegmentPlan(NamedTuple):
    """Configs cut into segments of ``length`` configs (the last of a block padded), each
    ``(start, stop, batches)``, ordered by their batch steps per epoch (stable)."""

    length: int
    segments: list[tuple[int, int, int]]


def segment_plan(runs: np.ndarray, batches: np.ndarray, size: int) -> SegmentPlan:
    """Segments for calls of ``size`` configs (a power of two): ``runs`` are the boundaries
    of runs of one dataset size and batch size, ``batches`` each run's batch steps per epoch.

    Consecutive runs with equal ``batches`` form a block; each block is cut into segments of
    the longest power-of-two length (at most ``size``) for which padding the blocks' last
    segments adds at most :data:`SEGMENT_PADDING` of the configs. Ordered by their batches,
    the segments of one call need about as many steps (a call runs the most any of them
    needs; the others' extra steps are masked: ~12% of the steps on the mixed map, as many
    as consecutive chunks of its walk order run), and every segment shares its step state
    (:func:`src.engine.simulate`): on the mixed map, Adam's minibatch steps then cost about
    what SGD's do.
    """
    runs, batches = np.asarray(runs, np.int64), np.asarray(batches, np.int64)
    first = np.concatenate([[0], np.flatnonzero(batches[1:] != batches[:-1]) + 1])
    starts, stops = runs[first], runs[np.append(first[1:], len(batches))]
    lengths = stops - starts
    length, candidate = 1, 2
    while candidate <= size:
        padding = np.sum(-(-lengths // candidate) * candidate - lengths)
        if padding <= SEGMENT_PADDING * runs[-1]:
            length = candidate
        candidate *= 2
    segments = [
        (s, min(s + length, b), int(k))
        for a, b, k in zip(starts.tolist(), stops.tolist(), batches[first].tolist(), strict=True)
        for s in range(a, b, length)
    ]
    return SegmentPlan(length, sorted(segments, key=lambda segment: segment[2]))


class Chunk(NamedTuple):
    """What one engine call takes besides the data table: the configs, their
    :class:`~src.engine.Group` if they form one, and ``steps``, the batch steps each epoch
    runs: the most any config of the chunk needs (``ceil(n / batch_size)``), so that a chunk
    of small datasets runs none of the padded steps its program's shapes hold."""

    configs: engine.Configs
    group: engine.Group | None
    steps: jax.Array
    segments: jax.Array | None = None
    """Each segment's batch steps per epoch, for a chunk of segments (:func:`segment_plan`)."""


@dataclasses.dataclass
class Simulator:
    """Runs configurations (:class:`~src.configs.ConfigSource`) against one :class:`DataTable`.

    ``rows[n]`` is the table row of dataset size ``n``. ``chunk_size`` 0 sizes chunks by
    :data:`CHUNK_ELEMENTS`. Run under the dtype's x64 mode (see :func:`src.runner.run`).
    """

    table: DataTable
    rows: np.ndarray
    dtype: str
    tol: float
    shuffle: bool = False
    chunk_size: int = 0
    kernel: str = "auto"
    groups: bool | None = None
    """Whether runs of configs sharing dataset and batch size become groups: ``None`` when it
    pays (:func:`chunk_plan`), ``True`` always (fixed order), ``False`` never."""
    segments: bool = True
    """Whether the moments kernel with a fixed order and several batches per epoch runs
    :func:`segment_plan`'s calls, for families whose state holds step counters
    (:func:`src.engine.has_step_state`; unless ``groups`` is ``True``, or ``pad_to`` is
    given). The others gain nothing by them: ordered by batch count, calls of 1,024 configs
    per device run as many padded steps as consecutive chunks do (mixed map: ~12%)."""
    compile_seconds: float = 0.0
    compute_seconds: float = 0.0
    devices: tuple[jax.Device, ...] = ()
    _compiled: dict[tuple, Callable] = dataclasses.field(default_factory=dict)
    _moments: MomentsCache = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.kernel = engine.resolve_kernel(self.kernel)
        # Default: this process's devices. The map passes every process's (jax.distributed);
        # what the report re-runs afterwards (explain, stored curves, the Keras check's engine
        # side) runs in the writing process alone, the others having finished.
        self.devices = self.devices or tuple(jax.local_devices())
        self._mesh = Mesh(np.array(self.devices), ("configs",))
        self._split = NamedSharding(self._mesh, PartitionSpec("configs"))
        self._replicated = NamedSharding(self._mesh, PartitionSpec())
        with jax.enable_x64(self.dtype == "float64"):  # float64 tables stay float64
            self._table = jax.device_put(_host(self.table), self._replicated)

    @property
    def programs(self) -> int:
        return len(self._compiled)

    def chunk_size_for(self, shapes: engine.Shapes, count: int) -> int:
        """Configs per engine call: a multiple of the device count (the last chunk is padded)."""
        if self.chunk_size:
            size = min(self.chunk_size, count)
        elif self.kernel == "moments" and not self.shuffle and shapes.n_batches == 1:
            size = max(1, min(count, MOMENT_ELEMENTS * len(self.devices)))
        elif self.kernel == "moments" and not self.shuffle:
            size = max(1, min(count, MINIBATCH_CONFIGS * len(self.devices)))
        else:
            per_config = shapes.n_batches * shapes.batch_width
            size = max(1, min(count, CHUNK_ELEMENTS * len(self.devices) // per_config))
        return self._whole_devices(size)

    def group_width(self, runs: np.ndarray, size: int) -> int:
        """Configs per group in a shuffled run's chunks of ``size`` (``runs``: its runs'
        boundaries, :meth:`~src.configs.ConfigSource.runs`): its longest run, rounded up to
        a power of two, so that padding stays small."""
        longest = int(np.max(np.diff(runs), initial=1))
        return self._whole_devices(
            min(size, max(MIN_SHUFFLED_GROUP, 1 << (longest - 1).bit_length()))
        )

    def _whole_devices(self, size: int) -> int:
        """``size`` rounded up to a multiple of the device count."""
        return -(-size // len(self.devices)) * len(self.devices)

    def run(
        self,
        family: opt.Family,
        flat: ConfigSource,
        shapes: engine.Shapes | None = None,
        *,
        history: engine.History = False,
        progress: Callable[[int], None] | None = None,
        pad_to: int = 0,
        each: Callable[[int, engine.Summary, np.ndarray | None], None] | None = None,
        skip: Callable[[int, int], bool] | None = None,
    ) -> tuple[engine.Summary | None, np.ndarray | None]:
        """Every config of ``flat``: per-config summaries and (``history``) History losses.
        ``final_w`` is one value per config for one feature, ``(configs, d)`` for several.

        ``pad_to`` sizes chunks as if there were that many configs, and calls of several
        groups (shuffled) hold as many groups as they can, so that calls with varying counts
        share one compiled program.

        With ``each``, every chunk's summary and (``history``, else ``None``) History losses go
        to ``each(start, summary, losses)`` (configs ``start .. start + len``) as soon as they
        are computed and nothing is kept: the call returns ``(None, None)``.
        ``skip(start, stop)`` true leaves that chunk out (it must say the same in every
        process). ``shapes`` defaults to the smallest that hold
        every row (:meth:`~src.configs.ConfigSource.covering_shapes`).
        """
        shapes = shapes or flat.covering_shapes()
        size = self.chunk_size_for(shapes, max(len(flat), pad_to))
        tol = jax.device_put(jnp.asarray(self.tol, self.dtype), self._replicated)
        constants = tuple(sorted(flat.constant_arguments().items()))
        runs = flat.runs(by_seed=self.shuffle)
        group_size = size
        if self.groups is False:
            speedup = 0.0
        elif self.groups:
            speedup = math.inf
        elif self.shuffle:
            # Shuffled, a group draws each epoch's order and batches once instead of once
            # per config; its chunks are sized to the runs, so padding stays small.
            speedup = SHUFFLED_GROUP_SPEEDUP
            group_size = self.group_width(runs, size)
        elif self.kernel == "autodiff" and not engine.slot_by_slot(shapes):
            speedup = 1.0
        else:
            speedup = GROUP_SPEEDUP[self.kernel]
        segmented = (
            self.segments and not self.groups and not pad_to and not self.shuffle
            and self.kernel == "moments" and shapes.n_batches > 1
            and engine.has_step_state(family, flat.argument_names, self.table.d)
        )  # fmt: skip

        def program(chunk: Chunk) -> Callable:
            configs, group = chunk.configs, chunk.group
            groups = 0 if group is None else max(1, int(np.size(group.n)))
            segments = 0 if chunk.segments is None else int(np.size(chunk.segments))
            key = (family, flat.argument_names, shapes, len(configs.n), history, self.shuffle,
                   self.dtype, constants, segments, groups, configs.order is not None)  # fmt: skip
            if key not in self._compiled:
                t0 = time.perf_counter()
                self._compiled[key] = shared_program(
                    (key, self.kernel, self.devices, _avals(self._table)),
                    lambda: self._program(family, shapes, history, constants, chunk, tol),
                )
                self.compile_seconds += time.perf_counter() - t0
            return self._compiled[key]

        parts: list[tuple[int, engine.Summary, np.ndarray | None]] = []

        def finish(pieces: list[tuple[int, int, int]], outputs: tuple) -> None:
            t0 = time.perf_counter()
            summary, losses = _gather(jax.block_until_ready(outputs))
            self.compute_seconds += time.perf_counter() - t0
            for start, keep, at in pieces:  # configs start .. start + keep, from row at
                done = engine.Summary(*(np.asarray(a)[at : at + keep] for a in summary))
                if done.final_w.shape[-1] == 1:  # one feature: one kernel value per config
                    done = done._replace(final_w=done.final_w[..., 0])
                kept = np.asarray(losses)[at : at + keep] if history else None
                if each is not None:  # the caller keeps what it needs: nothing grows here
                    each(start, done, kept)
                else:
                    parts.append((start, done, kept))
                if progress:
                    progress(keep)

        # JAX dispatches asynchronously: the next chunk is built on the host while the
        # devices compute this one.
        pending: tuple[list[tuple[int, int, int]], tuple] | None = None
        if segmented:
            calls = self._segment_calls(flat, runs, size, shapes, constants, skip)
        else:
            plan = chunk_plan(runs, size, speedup, group_size)
            calls = self._plan_calls(flat, plan, size, group_size, shapes, constants, skip,
                                     fixed=pad_to > 0)  # fmt: skip
        for pieces, chunk in calls:
            compiled = program(chunk)
            t0 = time.perf_counter()
            outputs = compiled(chunk.configs, self._table, tol, chunk.group, chunk.steps,
                               chunk.segments)  # fmt: skip
            self.compute_seconds += time.perf_counter() - t0
            if pending is not None:
                finish(*pending)
            pending = (pieces, outputs)
        if pending is not None:
            finish(*pending)
        if each is not None:
            return None, None
        parts.sort(key=lambda part: part[0])  # segments run out of order
        done = [p for _, p, _ in parts]
        merged = engine.Summary(*(np.concatenate(k) for k in zip(*done, strict=True)))
        return merged, (np.concatenate([c for _, _, c in parts]) if history else None)

    def _plan_calls(
        self,
        flat: ConfigSource,
        plan: list[tuple[int, int, bool]],
        size: int,
        group_size: int,
        shapes: engine.Shapes,
        constants: tuple[tuple[str, float], ...],
        skip: Callable[[int, int], bool] | None,
        fixed: bool,
    ) -> Iterator[tuple[list[tuple[int, int, int]], Chunk]]:
        """The calls of a :func:`chunk_plan`: each one's pieces ``(start, configs, row)``
        (configs ``start ..`` are the call's rows from ``row``) and its chunk, built as the
        calls are made."""
        calls, groups = self._calls(plan, size // group_size, skip, fixed=fixed)
        for call in calls:
            grouped = call[0][2]
            width = group_size if grouped else size
            pieces = [(start, stop - start, i * width) for i, (start, stop, _) in enumerate(call)]
            if grouped and groups > 1:  # the last call's missing groups repeat its last one
                starts = [start for start, _, _ in call]
                starts += starts[-1:] * (groups - len(starts))
                yield pieces, self.groups_chunk(flat, starts, width, shapes, constants)
            else:
                yield pieces, self.chunk(flat, call[0][0], width, shapes, constants, grouped)

    def _segment_calls(
        self,
        flat: ConfigSource,
        runs: np.ndarray,
        size: int,
        shapes: engine.Shapes,
        constants: tuple[tuple[str, float], ...],
        skip: Callable[[int, int], bool] | None,
    ) -> Iterator[tuple[list[tuple[int, int, int]], Chunk]]:
        """The calls of a :func:`segment_plan`, as :meth:`_plan_calls` gives them: each holds
        ``size`` configs (the last call's missing segments repeat its last one)."""
        firsts = flat.take(runs[:-1], self.rows, self.dtype)
        batches = -(-np.asarray(firsts.n) // np.asarray(firsts.batch_size))
        length, segments = segment_plan(runs, batches, 1 << (size - 1).bit_length())
        per_call = self._whole_devices((1 << (size - 1).bit_length()) // length)
        kept = [c for c in segments if skip is None or not skip(c[0], c[1])]
        for at in range(0, len(kept), per_call):
            call = kept[at : at + per_call]
            pieces = [(start, stop - start, i * length) for i, (start, stop, _) in enumerate(call)]
            call += call[-1:] * (per_call - len(call))
            index = np.concatenate([span(start, length, stop) for start, stop, _ in call])
            configs, _, steps = self._host_chunk(flat, index, shapes, constants, False)
            counts = np.asarray([k for _, _, k in call], np.int32)
            yield pieces, Chunk(self._place(configs), None, self._steps(steps),
                                self._place(counts))  # fmt: skip

    def _program(
        self,
        family: opt.Family,
        shapes: engine.Shapes,
        history: engine.History,
        constants: tuple[tuple[str, float], ...],
        chunk: Chunk,
        tol: jax.Array,
    ) -> Callable:
        """The engine compiled for chunks like ``chunk``: every device runs
        :func:`src.engine.simulate` on its own slice of the configs (``shard_map``), so a
        config computes the very program it would on one device, with nothing to
        communicate; the data table, ``tol`` and a ``group`` are replicated, several groups
        and segments split as their configs are."""
        configs, group = chunk.configs, chunk.group
        simulate = functools.partial(
            engine.simulate, family=family, shapes=shapes, shuffle=self.shuffle,
            history=history, kernel=self.kernel, constants=constants,
        )  # fmt: skip
        split, whole = PartitionSpec("configs"), PartitionSpec()
        several = group is not None and np.ndim(group.n) == 1  # each device: its own groups
        per_device = jax.shard_map(
            lambda c, data, t, g, k, s: simulate(c, data, t, group=g, steps=k, segments=s),
            mesh=self._mesh,
            in_specs=(split, whole, whole, split if several else whole, whole, split),
            out_specs=split,
            check_vma=False,  # the engine is written per device; nothing crosses devices
        )
        args = (configs, self._table, tol, group, self._steps(shapes.n_batches), chunk.segments)
        # Everything that fixes the traced program, in stable terms (names, numbers, shapes).
        ident = (family.name, shapes, history, constants, self.shuffle, self.kernel, self.dtype,
                 tuple(f"{d.platform}:{d.id}" for d in self.devices), _avals(args))  # fmt: skip
        steps = len(configs.n) // len(self.devices) * shapes.epochs * shapes.n_batches
        small = steps <= SMALL_PROGRAM_STEPS
        return _compile(jax.jit(per_device), args, repr(ident), small)

    def _steps(self, steps: int) -> jax.Array:
        """A chunk's batch steps per epoch, replicated: one value for every device."""
        return jax.device_put(np.int32(steps), self._replicated)

    def _calls(
        self,
        plan: list[tuple[int, int, bool]],
        most: int,
        skip: Callable[[int, int], bool] | None,
        fixed: bool = False,
    ) -> tuple[list[list[tuple[int, int, bool]]], int]:
        """The engine calls of ``plan`` (less the chunks ``skip`` leaves out): a mixed chunk
        is a call of its own, consecutive group chunks share calls of up to ``most`` groups
        (:func:`src.engine.simulate` of several groups). Returns the calls and the groups
        of every multi-group call: one count for the whole run (one compiled program), at
        most the run's group chunks (``fixed``: ``most`` however many there are, so that
        runs of any length share the program), a multiple of the device count (each device
        runs whole groups)."""
        kept = [c for c in plan if skip is None or not skip(c[0], c[1])]
        groups = most if fixed else min(most, sum(grouped for _, _, grouped in kept))
        if groups > 1:
            groups = self._whole_devices(groups)
        calls: list[list[tuple[int, int, bool]]] = []
        for c in kept:
            last = calls[-1] if calls else None
            if c[2] and groups > 1 and last and last[-1][2] and len(last) < groups:
                last.append(c)
            else:
                calls.append([c])
        return calls, groups

    def groups_chunk(
        self,
        flat: ConfigSource,
        starts: list[int],
        size: int,
        shapes: engine.Shapes,
        constants: tuple[tuple[str, float], ...],
    ) -> Chunk:
        """Several group chunks (``size`` configs from each of ``starts``) as one: the
        configs one after the other, every :class:`~src.engine.Group` field stacked, both
        split over the devices group by group; the steps are the most any group needs."""
        parts = [
            self._host_chunk(flat, span(s, size, len(flat)), shapes, constants, True)
            for s in starts
        ]
        configs = jax.tree.map(lambda *a: np.concatenate(a), *(c for c, _, _ in parts))
        group = jax.tree.map(lambda *a: np.stack(a), *(g for _, g, _ in parts))
        steps = max(k for _, _, k in parts)
        return Chunk(self._place(configs), self._place(group), self._steps(steps))

    def chunk(
        self,
        flat: ConfigSource,
        start: int,
        size: int,
        shapes: engine.Shapes,
        constants: tuple[tuple[str, float], ...],
        grouped: bool = False,
    ) -> Chunk:
        """One chunk on the devices, constants left out; with ``grouped`` (every config of
        the chunk has the first one's dataset and batch size) also its
        :class:`~src.engine.Group`, replicated. Batch moments are added for the moments
        kernel: the group's, or every config's."""
        index = span(start, size, len(flat))
        configs, group, steps = self._host_chunk(flat, index, shapes, constants, grouped)
        placed = None if group is None else jax.device_put(group, self._replicated)
        return Chunk(self._place(configs), placed, self._steps(steps))

    def _host_chunk(
        self,
        flat: ConfigSource,
        index: np.ndarray,
        shapes: engine.Shapes,
        constants: tuple[tuple[str, float], ...],
        grouped: bool,
    ) -> tuple[engine.Configs, engine.Group | None, int]:
        """:meth:`chunk` of the configs at ``index`` as host arrays, with its batch steps per
        epoch."""
        c = flat.take(index, self.rows, self.dtype)
        seeds, which = np.unique(np.asarray(c.seed), return_inverse=True)
        drawn = np.stack([engine.initial_kernel(int(seed), self.table.d) for seed in seeds])
        c = c._replace(kernel=drawn[which])
        steps = int(np.max(-(-np.asarray(c.n) // np.asarray(c.batch_size))))
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
            if self.shuffle and c.order is None and _replay_fits(len(c.n), shapes):
                drawn = [
                    epoch_orders(int(k), int(n), shapes)
                    for k, n in zip(c.seed, c.n, strict=True)
                ]
                c = c._replace(order=np.stack(drawn))
            return c._replace(moments=moments), None, steps
        group = engine.Group(
            data_row=c.data_row[0], n=c.n[0], batch_size=c.batch_size[0],
            moments=None if moments is None else jax.tree.map(lambda m: m[0], moments),
            seed=c.seed[0] if self.shuffle else None,
            order=epoch_orders(int(c.seed[0]), int(c.n[0]), shapes) if self.shuffle else None,
        )  # fmt: skip
        return c, group, steps

    def _place(self, tree: object) -> object:
        """A chunk (or its groups) split along the leading axis over the devices (of
        every process)."""
        return jax.device_put(tree, self._split)


PROGRAM_CACHE_SIZE = 64
"""Compiled programs kept for the process (least recently used dropped first)."""

_programs: collections.OrderedDict[tuple, Callable] = collections.OrderedDict()


def shared_program(key: tuple, build: Callable[[], Callable]) -> Callable:
    """The compiled program for ``key``, built once per process: a program takes its data
    table as an argument, so simulators of equally shaped tables on the same devices (the
    focus panel's raw and standardised data, a report's re-runs) share it instead of each
    tracing, lowering and compiling its own."""
    if key in _programs:
        _programs.move_to_end(key)
        return _programs[key]
    program = _programs[key] = build()
    if len(_programs) > PROGRAM_CACHE_SIZE:
        _programs.popitem(last=False)
    return program


@functools.cache
def _serializable() -> None:
    """Name the engine's argument and result types for :mod:`jax.export` (once)."""
    for cls in (engine.Configs, engine.Group, engine.Summary, engine.Moments, engine.Params,
                engine.BatchRows, DataTable):  # fmt: skip
        jax.export.register_namedtuple_serialization(
            cls, serialized_name=f"{cls.__module__}.{cls.__qualname__}"
        )


SMALL_PROGRAM_STEPS = 1 << 17
"""Programs of at most this many configuration-steps per device (configurations x epochs x
batches per epoch: 64 configurations of 500 epochs of 4 batches) are compiled with LLVM's
optimisations off (:func:`_compile`)."""

_UNOPTIMISED = {"xla_backend_optimization_level": 0}


def _compile(jitted: Callable, args: tuple, ident: str, small: bool = False) -> Callable:
    """``jitted`` compiled for ``args``; ``small`` (little to compute) with LLVM's
    optimisations off.

    Most of a program's compile time is LLVM generating its code, and most of that is LLVM
    optimising it: off, the default map's programs compiled in ~0.35 s instead of ~0.65-1.0
    s, and ran ~10x slower (2-core CPU). A program of a few configurations, a focus panel's
    trial or the Keras check's re-runs of its picks, computes for milliseconds either way
    (:data:`SMALL_PROGRAM_STEPS` bounds it). LLVM keeps IEEE arithmetic at every level (no
    reassociation; on x86-64 no FMA to contract into either, :mod:`src.xla_options`): the
    results are the same bit for bit (``tests/test_xla_options.py``: every optimizer, both kernels,
    fixed and shuffled batches; ``tests/test_focus.py``; the Keras check's own comparison of
    its re-runs with a fixed-order map). The default job's Keras check traced, compiled and
    ran its eight re-run programs in 4.1 s instead of 4.6 s.

    Where :func:`src.xla_options.program_store` keeps traced programs (the command line's
    cache; one process), a program is traced once per version of the code and ``ident`` (the
    caller's description of everything its trace depends on) and serialised with
    :mod:`jax.export`; later processes load it instead of tracing the engine again, which is
    most of what a second run still spends on its programs once JAX's persistent cache holds
    the compiled code (default map, 2-core CPU: 4.4 s -> 1.1 s). Every process, the first
    included, compiles the stored program, so that all run the same one; its results are
    those of ``jitted`` bit for bit (``tests/test_program_store.py``)."""
    options = _UNOPTIMISED if small else None
    store = xla_options.program_store()
    if store is None or jax.process_count() > 1:
        return jitted.lower(*args).compile(compiler_options=options)
    _serializable()
    path = store / f"{xla_options.digest(ident)}.jaxexport"
    exported = _stored(path)
    if exported is None:
        exported = jax.export.export(jitted)(*args)
        try:
            with atomic_path(path) as tmp:
                tmp.write_bytes(exported.serialize())
        except OSError:  # a full or read-only cache costs the next run a trace, not this run
            pass
    return jax.jit(exported.call).lower(*args).compile(compiler_options=options)


def _stored(path: Path) -> jax.export.Exported | None:
    """The program stored at ``path``; ``None`` if there is none, or none that this JAX reads
    (truncated, or written in another serialisation format): it is then traced again."""
    try:
        blob = path.read_bytes()
    except OSError:
        return None
    try:
        return jax.export.deserialize(bytearray(blob))
    except Exception:  # whatever the deserialiser raises on bytes it cannot read
        return None


REPLAYED_ORDER_BYTES = 1 << 24
"""The most a mixed shuffled chunk's sample orders may take to be replayed (drawn once per
seed and N, :func:`epoch_orders`) rather than drawn in its steps: the small chunks of the
loss curves and the focus panel; a map's mixed chunks draw their own."""


def _replay_fits(configs: int, shapes: engine.Shapes) -> bool:
    return configs * shapes.epochs * shapes.n_max * 4 <= REPLAYED_ORDER_BYTES


ORDER_CACHE_BYTES = 1 << 28
"""Shuffled groups' sample orders kept for the process (least recently used dropped first)."""

_orders: collections.OrderedDict[tuple[int, int, int, int], np.ndarray] = (
    collections.OrderedDict()
)


def epoch_orders(seed: int, n: int, shapes: engine.Shapes) -> np.ndarray:
    """Every epoch's sample order of a shuffled group (:func:`src.threefry.epoch_orders`,
    on the host), drawn once per process: the map's families, the boundary search's rounds,
    the curves and the focus panel all train on the same dataset sizes and seeds, and
    drawing an order (two threefry hashes per sample and a sort, every epoch) in a chunk's
    steps costs a one-group step loop about as much as its training (2-core CPU, 256 configs
    of 64 samples: ~4 of ~8 ms). On the host, 500 epochs of 64 samples take ~2 ms."""
    key = (seed, n, shapes.n_max, shapes.epochs)
    if key in _orders:
        _orders.move_to_end(key)
        return _orders[key]
    drawn = threefry.epoch_orders(seed, n, shapes.n_max, shapes.epochs)
    _orders[key] = drawn
    while sum(a.nbytes for a in _orders.values()) > ORDER_CACHE_BYTES and len(_orders) > 1:
        _orders.popitem(last=False)
    return drawn


def _avals(tree: object) -> tuple:
    """The structure, shapes and dtypes of ``tree``'s arrays: what a compiled program fixes."""
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple((a.shape, str(a.dtype)) for a in leaves)


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
                table.x[row, :n], table.y[row, :n], table.w_opt[row], int(bs), n_batches
            )
            cache[key] = jax.tree.map(lambda f: np.asarray(f, dtype), exact)
        per_pair.append(cache[key])
    return jax.tree.map(lambda *f: np.stack(f)[which], *per_pair)


def _host(tree: object) -> object:
    """Host (NumPy) copies: what every process holds alike and places on a global sharding."""
    return jax.tree.map(np.asarray, tree)


def _gather(tree: object) -> object:
    """Results as host arrays; across processes (``jax.distributed``) every process gets all
    (a simulator of this process's devices alone has nothing to gather)."""
    leaves = jax.tree.leaves(tree)
    if jax.process_count() == 1 or all(a.is_fully_addressable for a in leaves):
        return jax.tree.map(np.asarray, tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)
