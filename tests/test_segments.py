"""Segments: with the moments kernel, a fixed batch order and several batches per epoch, the
simulator runs calls of segments, configs that take equally many batch steps per epoch
(:func:`src.simulator.segment_plan`), and each segment keeps one step state for all its
configs, as a one-batch program does (:func:`src.engine.shares_steps`).

That must change no bit: the same configurations in plain mixed chunks (per-config step
counters, every config of a chunk stepping as often as the chunk's largest dataset needs,
the extra steps masked) give identical summaries and histories, with ragged epochs, float64
and hyperparameters that differ per config; the calls report every config once, whatever
order they run in and whatever a resumed run leaves out."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from marks import quick_few
from test_shared_steps import STEP_TERMS, assert_same_bits

from src import engine
from src import optimizers as opt
from src.configs import FlatConfigs
from src.problem import Problem
from src.simulator import SEGMENT_PADDING, Simulator, segment_plan

NS = np.arange(1, 25)
BATCH_SIZES = (4, 16)
LRS = np.geomspace(1e-4, 0.3, 6)
CHUNK = 64
"""Small calls: several of them, with different batch counts, some with masked steps."""
COUNTED = tuple(name for name in STEP_TERMS if name != "ftrl")
"""The optimizers whose state holds step counters: those run in segments."""


def configs(name: str, overrides: dict[str, list[float]] | None = None) -> FlatConfigs:
    """Batch sizes x N x lr in the main job's walk order, ragged epochs (5..40)."""
    bs, n, lr = (g.ravel() for g in np.meshgrid(BATCH_SIZES, NS, LRS, indexing="ij"))
    count = len(n)
    epochs = np.random.default_rng(1).integers(5, 41, count)
    extra = {k: np.resize(np.asarray(v, np.float64), count) for k, v in (overrides or {}).items()}
    return FlatConfigs.of([name] * count, opt.get(name).family, extra, learning_rate=lr, n=n,
                          batch_size=bs, seed=np.arange(count) % 3, epochs=epochs)  # fmt: skip


def simulator(dtype: str = "float32", **options: object) -> Simulator:
    table, rows = Problem().table(tuple(NS), dtype)
    return Simulator(table, rows, dtype, 1e-4, kernel="moments", chunk_size=CHUNK, **options)


def run(name: str, segments: bool, dtype: str = "float32", **overrides: list[float]) -> tuple:
    flat = configs(name, overrides)
    with jax.enable_x64(dtype == "float64"):
        summary, history = simulator(dtype, segments=segments).run(
            opt.get(name).family, flat, history=True
        )
    assert summary is not None and history is not None
    return summary, history


def test_segment_plan_cuts_blocks_of_equal_batch_counts() -> None:
    runs = np.array([0, 3, 6, 10, 12, 14])
    batches = np.array([2, 2, 1, 3, 1])
    # Blocks: 0..6 (2 batches), 6..10 (1), 10..12 (3), 12..14 (1). Segments of 4 would pad
    # three blocks by 2 (6 > 14 / 8); of 2, nothing.
    length, segments = segment_plan(runs, batches, 8)
    assert length == 2
    assert segments == [(6, 8, 1), (8, 10, 1), (12, 14, 1), (0, 2, 2), (2, 4, 2), (4, 6, 2),
                        (10, 12, 3)]  # fmt: skip


def test_segment_plan_covers_every_config_once_within_its_padding() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        lengths = rng.integers(1, 300, rng.integers(1, 30))
        runs = np.concatenate([[0], np.cumsum(lengths)])
        batches = rng.integers(1, 5, len(lengths))
        size = int(2 ** rng.integers(0, 12))
        length, segments = segment_plan(runs, batches, size)
        assert length & (length - 1) == 0 and length <= max(size, 1)
        covered = np.concatenate([np.arange(a, b) for a, b, _ in segments])
        assert np.array_equal(np.sort(covered), np.arange(runs[-1]))
        run_batches = np.repeat(batches, lengths)
        assert all(np.all(run_batches[a:b] == k) and b - a <= length for a, b, k in segments)
        assert [k for _, _, k in segments] == sorted(k for _, _, k in segments)
        padding = len(segments) * length - runs[-1]
        assert padding <= SEGMENT_PADDING * runs[-1] or length == 1


def test_the_maps_segments_share_steps_in_several_calls() -> None:
    """What the bit-for-bit checks below compare really runs in segments, several per call."""
    flat = configs("adam")
    runs = flat.runs()
    firsts = flat.take(runs[:-1], np.arange(NS[-1] + 1), "float32")
    length, segments = segment_plan(runs, -(-firsts.n // firsts.batch_size), CHUNK)
    assert length > 1 and len(segments) * length > 2 * CHUNK
    assert len({k for _, _, k in segments}) > 3


def test_only_optimizers_with_step_counters_run_in_segments() -> None:
    counted = {
        name
        for name, o in opt.OPTIMIZERS.items()
        if engine.has_step_state(o.family, tuple(o.family.arguments(o.defaults)), 1)
    }
    assert counted == set(COUNTED)


@pytest.mark.parametrize("name", quick_few(COUNTED, ("adam", "nadam")))
def test_segments_give_the_per_config_bits(name: str) -> None:
    segmented, segmented_history = run(name, True)
    alone, alone_history = run(name, False)
    assert np.isfinite(segmented.final_loss).any()
    assert_same_bits(segmented, alone, segmented_history, alone_history)


@pytest.mark.slow  # eight more programs
@pytest.mark.parametrize(
    ("name", "dtype", "overrides"),
    [
        ("adam", "float64", {}),
        ("nadam", "float64", {}),
        ("adam", "float32", {"beta_1": [0.8, 0.9, 0.95], "amsgrad": [0, 1]}),
        ("schedule_free_adamw", "float32", {"warmup_steps": [0, 10, 3, 50]}),
    ],
)
def test_segments_give_the_per_config_bits_everywhere(
    name: str, dtype: str, overrides: dict[str, list[float]]
) -> None:
    segmented, segmented_history = run(name, True, dtype, **overrides)
    alone, alone_history = run(name, False, dtype, **overrides)
    assert_same_bits(segmented, alone, segmented_history, alone_history)


def test_segments_report_every_config_once_and_skip_what_a_resume_has() -> None:
    name = "adam"
    flat, family = configs(name), opt.get(name).family
    whole, _ = simulator().run(family, flat)
    seen: list[tuple[int, engine.Summary]] = []
    skipped = lambda a, b: a < 40  # noqa: E731  (a resumed run has these)
    simulator().run(family, flat, each=lambda start, s, _: seen.append((start, s)), skip=skipped)
    starts = [start for start, _ in seen]
    assert starts != sorted(starts)  # segments run by batch count, not in order
    covered = np.concatenate([np.arange(a, a + len(s.final_loss)) for a, s in seen])
    assert np.array_equal(np.sort(covered), np.arange(covered.min(), len(flat)))
    assert covered.min() >= 40 and len(covered) == len(np.unique(covered))
    for start, s in seen:
        stop = start + len(s.final_loss)
        for got, want in zip(s, whole, strict=True):
            assert np.array_equal(got, np.asarray(want)[start:stop], equal_nan=True)
