"""Compiled programs kept whole on disk (in JAX's compilation cache) are loaded by a later
run instead of traced, lowered and compiled again, and compute the same bits."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest
from test_padding import same_bits

from src import engine, simulator
from src import optimizers as opt
from src.configs import FlatConfigs
from src.problem import Problem


@pytest.fixture
def program_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A program store of this test's own, and no program kept in memory."""
    monkeypatch.setattr(simulator, "_programs", type(simulator._programs)())
    monkeypatch.setattr(simulator, "_program_store", lambda: tmp_path / "programs")
    return tmp_path / "programs"


def _run(shuffle: bool) -> tuple[simulator.Simulator, engine.Summary]:
    table, rows = Problem().table((9, 20), "float32")
    sim = simulator.Simulator(table, rows, "float32", 1e-4, shuffle, kernel="moments")
    lr = np.geomspace(1e-3, 0.3, 40)
    flat = FlatConfigs.of(
        ["adam"] * 40, opt.get("adam").family, learning_rate=lr, n=np.repeat([9, 20], 20),
        batch_size=np.full(40, 4), seed=np.zeros(40, np.int64), epochs=np.full(40, 12),
    )  # fmt: skip
    summary, _ = sim.run(opt.get("adam").family, flat)
    return sim, summary


@pytest.mark.parametrize("shuffle", [False, True], ids=["fixed", "shuffled"])
def test_a_stored_program_is_loaded_and_computes_the_same_bits(
    program_store: Path, shuffle: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, built = _run(shuffle)
    stored = sorted(program_store.glob("*.pkl"))
    assert stored  # what the first run compiled is on disk

    # A new process: nothing in memory, and nothing may be built.
    monkeypatch.setattr(simulator, "_programs", type(simulator._programs)())

    def no_build(*_: object) -> None:
        raise AssertionError("a stored program was built again")

    monkeypatch.setattr(simulator.Simulator, "_program", no_build)
    _, loaded = _run(shuffle)
    for field in engine.Summary._fields:
        assert same_bits(getattr(built, field), getattr(loaded, field)), field


def test_an_unreadable_stored_program_is_built_again(program_store: Path) -> None:
    _, built = _run(False)
    for file in program_store.glob("*.pkl"):
        file.write_bytes(b"not a program")
    simulator._programs.clear()
    _, rebuilt = _run(False)
    assert same_bits(built.final_loss, rebuilt.final_loss)
    assert all(f.read_bytes() != b"not a program" for f in program_store.glob("*.pkl"))


def test_a_program_is_stored_under_its_source_and_key(program_store: Path) -> None:
    key = ("some program", "moments", tuple(jax.local_devices()))
    first = simulator._program_file(key)
    assert first is not None and first.parent == program_store
    assert simulator._program_file(key) == first
    assert simulator._program_file((*key[:2], ())) != first


def test_programs_are_stored_in_the_compilation_cache_only(tmp_path: Path) -> None:
    before = jax.config.jax_compilation_cache_dir
    try:  # nothing compiles meanwhile: JAX's own cache never sees these folders
        jax.config.update("jax_compilation_cache_dir", str(tmp_path / "jax"))
        assert simulator._program_store() == tmp_path / "jax" / "programs"
        jax.config.update("jax_compilation_cache_dir", None)
        assert simulator._program_store() is None
        assert simulator._program_file(("a program",)) is None  # no cache, nothing stored
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
