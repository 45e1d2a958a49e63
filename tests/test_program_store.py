"""The store of traced programs (:func:`src.xla_options.program_store`): a second process
loads the engine's programs instead of tracing them, and they compute the same bits as the
programs traced in place; a stored file that cannot be read is traced again."""

from __future__ import annotations

import collections
from pathlib import Path

import jax
import numpy as np
import pytest

from src import engine, simulator, xla_options
from src import optimizers as opt
from src.configs import FlatConfigs
from src.problem import Problem
from src.simulator import Simulator

NS = (3, 8, 20)
CASES = {
    # (optimizer, shuffle): Adam's fixed-order minibatches run in segments, SGD's shuffled
    # ones in groups and mixed chunks: every argument layout the engine takes.
    "adam": ("adam", False),
    "sgd-shuffled": ("sgd", True),
}


def run(name: str, shuffle: bool) -> tuple[engine.Summary, np.ndarray]:
    lr, n, bs = (g.ravel() for g in np.meshgrid([1e-3, 0.01, 0.3], NS, [4, 32], indexing="ij"))
    flat = FlatConfigs.of([name] * len(n), opt.get(name).family, {}, learning_rate=lr, n=n,
                          batch_size=bs, seed=np.arange(len(n)) % 2,
                          epochs=np.full(len(n), 12))  # fmt: skip
    table, rows = Problem().table(NS, "float32")
    sim = Simulator(table, rows, "float32", 1e-4, shuffle, chunk_size=8, kernel="moments")
    summary, history = sim.run(opt.get(name).family, flat, history=True)
    assert summary is not None and history is not None
    return summary, history


def assert_same_bits(a: tuple, b: tuple) -> None:
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty store, and no compiled program left from earlier tests."""
    monkeypatch.setattr(xla_options, "_program_store", tmp_path)
    monkeypatch.setattr(simulator, "_programs", collections.OrderedDict())
    return tmp_path


def forget_programs(monkeypatch: pytest.MonkeyPatch) -> None:
    """As a new process: nothing compiled, and tracing the engine fails the test."""
    monkeypatch.setattr(simulator, "_programs", collections.OrderedDict())

    def traced(*args: object, **kwargs: object) -> None:
        raise AssertionError("the engine was traced although its program is stored")

    monkeypatch.setattr(engine, "simulate", traced)


@pytest.mark.parametrize("case", CASES)
def test_a_stored_program_is_loaded_not_traced_and_computes_the_same_bits(
    case: str, store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name, shuffle = CASES[case]
    with monkeypatch.context() as m:
        m.setattr(xla_options, "_program_store", None)
        traced_in_place = run(name, shuffle)
    monkeypatch.setattr(simulator, "_programs", collections.OrderedDict())
    first = run(name, shuffle)  # traces, stores, compiles what it stored
    files = sorted(store.glob("*.jaxexport"))
    assert files
    forget_programs(monkeypatch)
    loaded = run(name, shuffle)
    assert sorted(store.glob("*.jaxexport")) == files  # nothing new traced
    assert_same_bits(first, traced_in_place)
    assert_same_bits(loaded, traced_in_place)


def test_an_unreadable_stored_program_is_traced_again(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = run("adam", False)
    files = sorted(store.glob("*.jaxexport"))
    for f in files:
        f.write_bytes(b"not a program")
    monkeypatch.setattr(simulator, "_programs", collections.OrderedDict())
    assert_same_bits(run("adam", False), first)
    assert all(simulator._stored(f) is not None for f in files)  # stored anew


def test_a_program_is_stored_under_its_description_and_the_code_version() -> None:
    a, b = xla_options.digest("adam 2048"), xla_options.digest("adam 4096")
    assert a != b and a == xla_options.digest("adam 2048")
    xla_options._code_version.cache_clear()
    try:
        assert xla_options.digest("adam 2048") == a  # the same code: the same name
    finally:
        xla_options._code_version.cache_clear()


def test_the_command_line_cache_holds_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(xla_options, "_program_store", None)
    monkeypatch.setenv(xla_options.CACHE_VARIABLE, "off")
    assert xla_options.use_compilation_cache() is None
    assert xla_options.program_store() is None
    monkeypatch.setenv(xla_options.CACHE_VARIABLE, str(tmp_path / "cache"))
    monkeypatch.setattr(jax.config, "update", lambda *_: None)  # leave JAX's own cache be
    assert xla_options.use_compilation_cache() == tmp_path / "cache"
    assert xla_options.program_store() == tmp_path / "cache" / "traced"
    assert (tmp_path / "cache" / "traced").is_dir()


def test_a_store_that_cannot_be_written_costs_a_trace_not_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gone = tmp_path / "removed"  # as a cache folder deleted, or a full disk, mid-run
    monkeypatch.setattr(xla_options, "_program_store", gone)
    monkeypatch.setattr(simulator, "_programs", collections.OrderedDict())
    with monkeypatch.context() as m:
        m.setattr(xla_options, "_program_store", None)
        m.setattr(simulator, "_programs", collections.OrderedDict())
        traced_in_place = run("adam", False)
    assert_same_bits(run("adam", False), traced_in_place)
    assert not gone.exists()
