"""Chunks that share their batches (:class:`src.engine.Group`) compute every configuration
bit for bit as mixed chunks do, and the simulator gives them the runs worth it."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from marks import quick_few
from test_padding import same_bits

from src import engine
from src import optimizers as opt
from src.configs import FlatConfigs
from src.problem import Problem, data_table
from src.simulator import Simulator, chunk_plan

FAMILIES = sorted({o.family.name: name for name, o in opt.OPTIMIZERS.items()}.values())
# One optimizer per family, its last (SGD's family: nesterov, Adam's: adamw). The quick
# subset (-m "not slow") checks those two families; the full suite every family.
BY_FAMILY = quick_few(FAMILIES, ("nesterov", "adamw"))
LRS = [1e-4, 1e-3, 5e-3, 2e-2, 0.1, 0.6]  # converging to overflowing, for every family


def assert_same(a: tuple[engine.Summary, np.ndarray], b: tuple[engine.Summary, np.ndarray]) -> None:
    for field in engine.Summary._fields:
        assert same_bits(getattr(a[0], field), getattr(b[0], field)), field
    assert same_bits(a[1], b[1])


@pytest.mark.parametrize("name", BY_FAMILY)
def test_group_chunk_is_bit_identical_to_a_mixed_chunk(name: str, simulate: Callable) -> None:
    # Three batches of 8, 8 and 4 (masked slots), 12 epochs, one seed per config; the group
    # program differentiates slot by slot, the mixed one over arrays.
    args = (name, LRS, [20] * 6, [8] * 6, [12, 12, 12, 9, 12, 12], [0, 1, 2, 3, 4, 5])
    runs = [simulate(*args, group=g) for g in (False, True)]
    assert_same(*runs)
    assert len({float(v) for v in runs[0][0].final_loss}) > 3  # the configs differ


FULL_BATCH = quick_few(
    [("sgd", "autodiff"), ("adam", "autodiff"), ("sgd", "moments"), ("nadam", "moments")],
    [("sgd", "autodiff"), ("sgd", "moments")],
)


@pytest.mark.parametrize(("name", "kernel"), FULL_BATCH)
def test_full_batch_group_is_bit_identical(name: str, kernel: str, simulate: Callable) -> None:
    # N = 33 in a 64-slot batch: the widest slot-by-slot program, 31 masked slots.
    args = (name, LRS, [33] * 6, [64] * 6, [15] * 6, [7] * 6)
    assert_same(*(simulate(*args, kernel=kernel, group=g) for g in (False, True)))


def test_chunk_plan() -> None:
    runs = np.array([0, 10, 13, 40, 41, 42, 90])
    # speedup 2 at size 16: a run of 10 pays (1 chunk <= 20), 3 does not, 27 pays (2 <= 54)
    plan = chunk_plan(runs, 16, 2.0)
    assert plan == [(0, 10, True), (10, 13, False), (13, 29, True), (29, 40, True),
                    (40, 42, False), (42, 58, True), (58, 74, True), (74, 90, True)]  # fmt: skip
    # speedup 1: only the run of 48 (three full chunks) pays
    assert chunk_plan(runs, 16, 1.0) == [
        (0, 16, False), (16, 32, False), (32, 42, False), (42, 58, True), (58, 74, True),
        (74, 90, True),
    ]  # fmt: skip
    mixed = chunk_plan(runs, 16, 0.0)
    assert all(not g for *_, g in mixed) and [a for a, *_ in mixed] == list(range(0, 90, 16))


@pytest.mark.slow  # several maps
def test_simulator_runs_long_runs_as_groups_with_the_same_results(simulate: Callable) -> None:
    ns, lrs = (3, 20, 33), np.geomspace(1e-4, 0.5, 40)
    n, lr = (g.ravel() for g in np.meshgrid(ns[:2], lrs, indexing="ij"))  # two runs of 40
    n, lr = np.append(n, [33] * 6), np.append(lr, lrs[:6])  # and a short one
    flat = FlatConfigs.of(
        ["adam"] * len(n), opt.get("adam").family, learning_rate=lr, n=n,
        batch_size=np.full(len(n), 8), seed=np.zeros(len(n), np.int64),
        epochs=np.full(len(n), 10),
    )  # fmt: skip
    table = data_table([Problem().dataset(k) for k in ns], "float32")
    rows = np.zeros(34, np.int64)
    rows[list(ns)] = np.arange(3)
    sim = Simulator(table, rows, "float32", 1e-4, kernel="autodiff", chunk_size=32)
    grouped, _ = sim.run(opt.get("adam").family, flat)
    assert {k[-2] for k in sim._compiled} == {True, False}  # runs of 40: 2 group chunks each
    one_by_one = [simulate("adam", [v], [k], [8], [10], [0])[0] for v, k in zip(lr, n, strict=True)]
    for field in engine.Summary._fields:
        want = np.concatenate([getattr(s, field) for s in one_by_one])
        assert same_bits(getattr(grouped, field), want), field


SHUFFLED = quick_few(
    [("sgd", "moments"), ("adam", "autodiff"), ("sgd", "autodiff"), ("adam", "moments")],
    [("sgd", "moments"), ("adam", "autodiff")],
)


@pytest.mark.parametrize(("name", "kernel"), SHUFFLED)
def test_shuffled_group_is_bit_identical(name: str, kernel: str, simulate: Callable) -> None:
    # Shuffled, a group draws each epoch's order once from its seed: the configs compute what
    # each computes with its own draw (N = 20 in batches of 8: two full, one partial).
    args = (name, LRS, [20] * 6, [8] * 6, [12] * 6, [3] * 6)
    runs = [simulate(*args, kernel=kernel, shuffle=True, group=g) for g in (False, True)]
    assert_same(*runs)
    fixed = simulate(*args, kernel=kernel, shuffle=False)
    assert not same_bits(runs[0][1], fixed[1])  # the order matters


@pytest.mark.parametrize("kernel", ["moments", "autodiff"])
def test_replayed_orders_reproduce_the_engines_own(kernel: str, simulate: Callable) -> None:
    # The engine's own epoch orders, given back as orders to replay, give the same bits; a
    # different order gives different ones.
    n, epochs, seeds = [13, 20, 20], 9, [0, 5, 6]
    shapes = engine.Shapes.covering(n, [4], [epochs])
    own = np.stack([
        np.stack([
            engine._epoch_order(engine._keys(s)[1], np.int32(e), np.int32(k), shapes, True)
            for e in range(epochs)
        ])
        for s, k in zip(seeds, n, strict=True)
    ])  # fmt: skip
    args = ("sgd", [0.02, 0.01, 0.001], n, [4] * 3, [epochs] * 3, seeds)
    shuffled = simulate(*args, kernel=kernel, shuffle=True)
    assert_same(shuffled, simulate(*args, kernel=kernel, shuffle=True, orders=own))
    other = simulate(*args, kernel=kernel, shuffle=True, orders=own[:, ::-1].copy())
    assert not same_bits(shuffled[1], other[1])


@pytest.mark.parametrize("kernel", ["moments", "autodiff"])
def test_several_groups_per_call_compute_what_one_group_per_call_does(kernel: str) -> None:
    # Shuffled runs of one N, batch size and seed, 12 lrs each: with small chunks every
    # call holds one group; with the default chunk, calls of several groups (one vmap over
    # them), the last call's missing groups padded. Ragged epochs; N 5..24 gives groups of
    # one to six batches in one call.
    lrs = np.geomspace(1e-3, 0.6, 12)
    ns, seeds = np.arange(5, 24), (0, 1)  # 76 groups: the last call of 16 holds 12
    grid = np.meshgrid((4, 8), ns, seeds, lrs, indexing="ij")
    bs, n, seed, lr = (g.ravel() for g in grid)
    epochs = np.random.default_rng(0).integers(3, 12, len(n))
    family = opt.get("adam").family
    flat = FlatConfigs.of(["adam"] * len(n), family, learning_rate=lr, n=n, batch_size=bs,
                          seed=seed, epochs=epochs)  # fmt: skip
    table = data_table([Problem().dataset(int(k)) for k in ns], "float32")
    rows = np.zeros(ns[-1] + 1, np.int64)
    rows[ns] = np.arange(len(ns))

    def run(chunk_size: int) -> tuple[tuple[engine.Summary, np.ndarray], set[int]]:
        sim = Simulator(table, rows, "float32", 1e-4, shuffle=True, kernel=kernel,
                        chunk_size=chunk_size)  # fmt: skip
        summary, history = sim.run(family, flat, history=True)
        return (summary, history), {k[-2] for k in sim._compiled}

    one, groups_one = run(16)
    several, groups_several = run(256)
    assert groups_one == {1} and max(groups_several) > 1
    assert_same(one, several)
    assert len(np.unique(several[0].final_loss)) > len(lrs)  # the groups differ


def test_epoch_orders_are_the_engines_own_draws() -> None:
    # Drawn on the host at once for a shuffled group, they are the orders its steps would
    # draw epoch by epoch with jax.random, and the simulator keeps one copy per seed, N and
    # shapes.
    from src import simulator, threefry

    shapes = engine.Shapes(n_max=24, n_batches=3, batch_width=8, epochs=7)
    key = engine._keys(5)[1]
    own = np.stack([engine._epoch_order(key, np.int32(e), np.int32(19), shapes, True)
                    for e in range(7)])  # fmt: skip
    drawn = simulator.epoch_orders(5, 19, shapes)
    assert drawn.shape == (7, 24) and drawn.dtype == np.int32 and np.array_equal(drawn, own)
    assert sorted(drawn[0, :19]) == list(range(19)) and not np.array_equal(drawn[0], drawn[1])
    again = simulator.epoch_orders(5, 19, shapes)
    assert np.array_equal(again, drawn) and np.shares_memory(again, drawn)
    # Any seed (the top bit set too), N and width, and orders longer than the engine ranks
    # by comparing pairs (it sorts those): the engine's own draws, bit for bit.
    for seed, n, n_max, epochs in [(0, 1, 1, 3), (0, 20, 64, 40), (2**31 + 7, 64, 64, 5),
                                   (2**32 - 1, 150, 200, 3), (12345, 19, 300, 4)]:  # fmt: skip
        wide = engine.Shapes(n_max=n_max, n_batches=1, batch_width=1, epochs=epochs)
        key = engine._keys(np.uint32(seed))[1]
        own = np.stack([engine._epoch_order(key, np.int32(e), np.int32(n), wide, True)
                        for e in range(epochs)])  # fmt: skip
        assert np.array_equal(threefry.epoch_orders(seed, n, n_max, epochs), own), seed
    # A permutation of the first N indices does not depend on the width.
    wide = threefry.epoch_orders(5, 19, 300, 7)
    assert np.array_equal(wide[:, :24], drawn)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_orders_by_rank_are_a_stable_argsort(dtype: str) -> None:
    # Short orders are ranked, not sorted: the same permutation as a stable argsort, ties
    # (keys drawn from few values, padding's 2.0) in index order, in float32 and float64.
    rng = np.random.default_rng(7)
    with jax.enable_x64(dtype == "float64"):
        order = jax.jit(jax.vmap(engine._stable_argsort))
        for width in (1, 2, 3, 17, 64, engine.RANK_SORT_MAX, engine.RANK_SORT_MAX + 1):
            keys = rng.random((200, width)).astype(dtype)
            keys[:100] = np.round(keys[:100] * 7) / 8  # many ties
            keys[::3, width // 2 :] = 2.0  # padding
            keys[5] = np.finfo(dtype).tiny * np.arange(width)  # the smallest keys, and 0
            got = np.asarray(order(jnp.asarray(keys)))
            assert got.dtype == np.int32
            assert np.array_equal(got, np.argsort(keys, axis=-1, kind="stable")), width
