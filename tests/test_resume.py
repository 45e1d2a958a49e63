"""Maps of any size: configs made chunk by chunk, finished chunks saved as they go, ``--resume``,
and outputs whose memory does not grow with the map (netCDF chunks, heatmaps)."""

from __future__ import annotations

import dataclasses
import hashlib
import math
from pathlib import Path

import jax
import netCDF4
import numpy as np
import pytest
import xarray as xr

from src import report, resume, store
from src.cli import PARTIAL, main
from src.configs import COLUMNS, FlatConfigs, GridConfigs
from src.problem import Problem
from src.resume import Intervals, WorkStore
from src.runner import resumed_configs, run
from src.schema import DIMS
from src.spec import Sweep, families

# Two families, a swept hyperparameter only one of them has (adam is repeated along it), and
# chunks of 4 configs: SGD's block is 20 rows (5 chunks), Adam's 10 (3 chunks).
# A fixed order: chunks then fall on the chunk size's multiples, which the tests name.
ARGS = ["--optimizers", "sgd,adam", "--lr", "1e-3:0.3:5", "--n", "5,20", "--epochs", "30",
        "--sweep", "momentum=0,0.5", "--chunk-size", "4", "--validate", "0", "--quiet",
        "--no-shuffle"]  # fmt: skip
SWEEP = Sweep(
    optimizer=("sgd", "adam"), lr=(1e-3, 0.01, 0.3), n=(5, 20), epochs=(30,), seed=(0, 1),
    hyperparameters={"momentum": (0.0, 0.5)}, chunk_size=4, curves=(),
)  # fmt: skip


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _interrupt_after(monkeypatch: pytest.MonkeyPatch, files: int) -> None:
    """Save every chunk at once, and stop the run (^C) once ``files`` are saved."""
    monkeypatch.setattr(resume, "FLUSH_SECONDS", 0.0)
    flush = WorkStore.flush
    written = 0

    def flush_then_stop(self: WorkStore) -> None:
        nonlocal written
        pending = bool(self._pending)
        flush(self)
        written += pending
        if pending and written == files:
            raise KeyboardInterrupt

    monkeypatch.setattr(WorkStore, "flush", flush_then_stop)


@pytest.mark.slow  # the main job three times
def test_interrupted_run_resumed_gives_the_same_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert main([*ARGS, "--out", str(whole)]) == 0
    assert not (whole / PARTIAL).exists()  # removed once the map is written

    with monkeypatch.context() as m:
        _interrupt_after(m, files=3)
        assert main([*ARGS, "--out", str(cut)]) == 130
    assert "--resume" in capsys.readouterr().err
    saved = sorted(p.name for p in (cut / PARTIAL).glob("*.npz"))
    assert saved == ["0-0-4.npz", "0-4-8.npz", "0-8-12.npz"]
    assert not (cut / "stability_map.nc").exists()

    chunks = []
    original = GridConfigs.take
    monkeypatch.setattr(
        GridConfigs, "take",
        lambda self, at, *a: chunks.append(int(at[0])) or original(self, at, *a),
    )  # fmt: skip
    assert main([*ARGS, "--out", str(cut), "--resume"]) == 0
    assert chunks == [12, 16, 0, 4, 8], chunks  # SGD's last two chunks, then all of Adam's
    assert not (cut / PARTIAL).exists()

    a, b = (xr.load_dataset(d / "stability_map.nc") for d in (whole, cut))
    xr.testing.assert_identical(a, b)
    assert _sha256(whole / "stability_map.nc") == _sha256(cut / "stability_map.nc")
    assert (whole / "sweep.toml").read_text() == (cut / "sweep.toml").read_text()


@pytest.mark.slow  # whole main jobs
def test_resume_of_another_sweep_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        _interrupt_after(m, files=1)
        assert main([*ARGS, "--out", str(out)]) == 130
    capsys.readouterr()
    other = [*ARGS, "--epochs", "31", "--out", str(out)]
    assert main([*other, "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot resume: ") and "another sweep" in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert (out / PARTIAL / "0-0-4.npz").exists()  # still there for the right sweep
    assert main(other) == 0  # without --resume the unfinished run is discarded
    assert not (out / PARTIAL).exists()


def test_resume_needs_an_unfinished_run_to_overwrite_a_map(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    small = ["--optimizers", "sgd", "--lr", "0.01", "--n", "5", "--epochs", "5",
             "--validate", "0", "--quiet", "--out", str(out)]  # fmt: skip
    assert main([*small, "--resume"]) == 0  # nothing to resume: a plain run
    capsys.readouterr()
    assert main([*small, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "no unfinished run to resume; pass --force" in err and err.count("\n") == 1


@pytest.mark.slow  # whole maps
def test_chunkwise_map_equals_the_in_memory_one(tmp_path: Path) -> None:
    plain, plain_stats = run(SWEEP)
    saved, _ = run(SWEEP, work=WorkStore.open(tmp_path / "w", SWEEP))
    xr.testing.assert_identical(plain, saved)
    work = WorkStore.open(tmp_path / "w", SWEEP, resume=True)
    assert resumed_configs(SWEEP, work) == SWEEP.n_configs
    seen: list[int] = []
    again, stats = run(SWEEP, progress=seen.append, work=work)  # every chunk read back
    xr.testing.assert_identical(plain, again)
    assert stats.config_epochs == 0 and seen == []
    assert plain_stats.config_epochs == (24 + 12) * 30  # adam once, not once per momentum


@pytest.mark.slow  # whole main jobs
def test_partly_resumed_progress_adds_up(tmp_path: Path) -> None:
    """Files that cover parts of chunks (another chunking): those chunks are simulated again,
    and the progress still adds up to the whole map (fixed order: its chunks are the chunk
    size's multiples; shuffled, groups of one seed cut them elsewhere)."""
    sweep = dataclasses.replace(SWEEP, shuffle=False)
    run(sweep, work=WorkStore.open(tmp_path, sweep))
    assert sorted(p.name for p in tmp_path.glob("*.npz")) == ["0-0-24.npz", "1-0-12.npz"]
    with np.load(tmp_path / "0-0-24.npz") as f:
        sgd = dict(f)
    for p in tmp_path.glob("*.npz"):
        p.unlink()
    for a, b in ((0, 3), (9, 24)):  # SGD's rows 3..9 and all of Adam's are lost
        with open(tmp_path / f"0-{a}-{b}.npz", "wb") as f:
            np.savez(f, **{k: v[a:b] for k, v in sgd.items()})
    work = WorkStore.open(tmp_path, sweep, resume=True)
    resumed = resumed_configs(sweep, work)
    assert resumed == 3 + 15  # SGD has the momentum axis: one row, one config
    seen: list[int] = []
    ds, stats = run(sweep, progress=seen.append, work=work)
    assert resumed + sum(seen) == sweep.n_configs
    assert stats.config_epochs == (12 + 12) * 30  # SGD's chunks 0..12 again, and Adam's
    xr.testing.assert_identical(ds, run(sweep)[0])


def test_grid_chunks_equal_flat_configs() -> None:
    """GridConfigs computes, chunk by chunk, exactly the rows of the whole family's meshgrid
    walked in its order, and its runs are the rows of one n and batch size."""
    sweep = Sweep(
        optimizer=("adam", "sgd", "adamw", "momentum"), lr=(1e-3, 0.02), n=(3, 7, 9),
        batch_size=(2, 32), seed=(0, 5), epochs=(4, 9),
        hyperparameters={"momentum": (0.0, 0.5), "clipnorm": (1.0, math.inf), "beta_2": (0.9,)},
        optimizer_args={"beta_1": 0.8}, problem=Problem(slope=2.0),
    )  # fmt: skip
    rows = np.zeros(10, np.int64)
    rows[[3, 7, 9]] = [0, 1, 2]
    for names in families(sweep.optimizer).values():
        grid = GridConfigs.of(sweep, names)
        family = grid.family
        own = sweep.swept_for(family)
        walk = (*GridConfigs.WALK, *range(len(GridConfigs.WALK), len(grid.shape)))
        which, *cols = (
            g.transpose(walk).ravel()  # rows walk n and batch size outermost
            for g in np.meshgrid(
                np.arange(len(names)), *(sweep.axis(d) for d in (*DIMS[1:], *own)), indexing="ij"
            )
        )
        flat = FlatConfigs.of(
            [names[i] for i in which], family,
            {**sweep.overrides_for(family), **dict(zip(own, cols[5:], strict=True))},
            **dict(zip(COLUMNS, cols[:5], strict=True)),
        )  # fmt: skip
        assert len(grid) == len(flat) and grid.argument_names == flat.argument_names
        assert grid.constant_arguments() == flat.constant_arguments()
        np.testing.assert_array_equal(grid.runs(), FlatConfigs.runs(flat))
        for start, size in ((0, 7), (5, 64), (len(flat) - 3, 8)):
            got, want = (c.chunk(start, size, rows, "float32") for c in (grid, flat))
            assert jax.tree.structure(got) == jax.tree.structure(want)
            for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
                assert a.dtype == b.dtype
                np.testing.assert_array_equal(a, b)


def test_intervals() -> None:
    iv = Intervals()
    for a, b in ((10, 20), (30, 40), (20, 25), (0, 2), (35, 50), (5, 5)):
        iv.add(a, b)
    assert list(iv) == [(0, 2), (10, 25), (30, 50)]
    assert iv.covers(10, 25) and iv.covers(31, 33) and not iv.covers(24, 31)
    assert iv.overlap(0, 100) == 2 + 15 + 20 and iv.overlap(2, 10) == 0
    iv.add(1, 31)
    assert list(iv) == [(0, 50)]


def test_big_variables_are_written_in_bounded_chunks(tmp_path: Path) -> None:
    shape = (1, 3000, 100, 1)
    values = np.arange(math.prod(shape), dtype=np.float32).reshape(shape)
    ds = xr.Dataset({"big": (("a", "b", "c", "d"), values), "small": ("c", np.ones(100))})
    store.write_netcdf(tmp_path / "m.nc", ds)
    with netCDF4.Dataset(tmp_path / "m.nc") as f:
        chunks = f["big"].chunking()
        assert math.prod(chunks) <= store.CHUNK_ELEMENTS and chunks[2:] == [100, 1]
    xr.testing.assert_identical(xr.load_dataset(tmp_path / "m.nc"), ds)


def test_heatmaps_of_long_axes_are_thinned() -> None:
    lr = np.geomspace(1e-5, 1, 2500)
    ref = xr.Dataset(
        {"status": (("optimizer", "lr", "n"), np.zeros((1, 2500, 3), np.int8)),
         "final_loss": (("optimizer", "lr", "n"), np.ones((1, 2500, 3), np.float32)),
         "theory_critical_lr": (("optimizer", "n"), np.full((1, 3), np.nan)),
         "loss_scale": (("n",), np.ones(3))},
        coords={"optimizer": ["sgd"], "lr": lr, "n": [1, 2, 3], "batch_size": 32, "seed": 0,
                "epochs": 5},
        attrs={"tol": 1e-4},
    )  # fmt: skip
    assert report.drawn_strides(ref) == {"lr": 3, "n": 1}
    fig = report.heatmap_figure(ref, "sgd")
    ax = fig.axes[0]
    assert "every 3rd lr drawn" in ax.get_title()
    assert ax.collections[0].get_array().shape[:2] == (3, 834)  # N x every 3rd of 2,500 lr


def test_netcdf_holds_one_nan_whatever_sign_it_was_computed_with(tmp_path: Path) -> None:
    """Two equal maps give equal bytes: a NaN's sign bit (which operand an instruction passed
    on) is not a result, and two programs can differ there."""
    values = np.array([1.0, np.nan, -np.nan, np.inf], np.float32)
    assert values.view(np.uint32)[1] != values.view(np.uint32)[2]
    paths = []
    for i, v in enumerate((values, np.where(np.isnan(values), -values, values))):
        ds = xr.Dataset({"loss": ("x", v)}, attrs={"n": 1})
        paths.append(tmp_path / f"{i}.nc")
        store.write_netcdf(paths[-1], ds)
        assert np.isnan(ds.loss.values).sum() == 2  # the caller's dataset is left alone
    assert _sha256(paths[0]) == _sha256(paths[1])
    written = xr.load_dataset(paths[0]).loss.values
    canonical = np.float32([np.nan, np.nan]).view(np.uint32)
    assert np.array_equal(written.view(np.uint32)[1:3], canonical)
    assert written[0] == 1.0 and written[3] == np.inf
