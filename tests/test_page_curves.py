"""The page's stored loss curves come from the map's own run (its History losses sampled as
each chunk finishes, or kept at those epochs by the engine itself for a large map) and are
exactly what re-running the displayed cells gives; keeping them changes nothing in the map; a
run that kept none (resumed, too large) re-runs its cells. The loss curves that are cells of
the map are its own histories too, identical to a re-run."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from src import page, runner, store
from src.spec import Curve, Sweep

pytestmark = pytest.mark.slow  # four compiled map runs

# A swept hyperparameter only one family has (adam is repeated along it), two seeds and two
# epoch counts (their sampled epochs differ), in chunks of 8: several chunks per family.
SMALL = dict(
    optimizer=("sgd", "adam"), lr=(1e-3, 0.03, 0.3, 1.0), n=(3, 12, 20), batch_size=(4, 32),
    seed=(0, 1), epochs=(40, 60), hyperparameters={"momentum": (0.0, 0.5)}, chunk_size=8,
    # Two cells of the map (adam's repeated along momentum), and one that is not (lr, N).
    curves=(Curve("sgd", 0.03, 12, 4, seed=1), Curve("adam", 0.3, 20), Curve("sgd", 0.05, 7, 4)),
)  # fmt: skip


@pytest.fixture(scope="module", params=[True, False], ids=["shuffled", "fixed-order"])
def both(request: pytest.FixtureRequest) -> tuple[xr.Dataset, runner.RunStats, xr.Dataset]:
    """The small map run as the main job runs it (keeping its sampled losses, its cells'
    curves taken from its own run) and run the old way (none kept, every chunk without its
    history, every curve run apart); run as a large map (losses kept at the sampled epochs
    only), it has the old map and the same sampled losses."""
    sweep = Sweep(**SMALL, shuffle=request.param)
    taken: list[set[int]] = []
    with pytest.MonkeyPatch.context() as m:
        init = runner.CurveCapture.__init__

        def spy(self: runner.CurveCapture, *args: object) -> None:
            init(self, *args)
            taken.append(self.done)

        m.setattr(runner.CurveCapture, "__init__", spy)
        ds, stats = runner.run(sweep)
    assert taken == [{0, 1}]  # the cells' curves, not the third
    with pytest.MonkeyPatch.context() as m:
        m.setattr(runner, "SAMPLED_LOSS_BYTES", 0)
        old, old_stats = runner.run(sweep)
    assert old_stats.sampled is None
    # As a large map runs: only the sampled epochs' losses kept in the engine, curves apart.
    with pytest.MonkeyPatch.context() as m:
        m.setattr(runner, "WHOLE_HISTORY_EPOCHS", 0)
        few, few_stats = runner.run(sweep)
    assert few_stats.sampled is not None and few_stats.sampled.recorded.all()
    xr.testing.assert_identical(few, old)
    np.testing.assert_array_equal(few_stats.sampled.losses, stats.sampled.losses)
    return ds, stats, old


def test_the_page_curves_are_the_rerun_curves_bit_for_bit(
    both: tuple[xr.Dataset, runner.RunStats, xr.Dataset],
) -> None:
    ds, stats, _ = both
    assert stats.sampled is not None and stats.sampled.recorded.all()
    kept = page.page_data(ds, sampled=stats.sampled)["curves"]
    rerun = page.page_data(ds)["curves"]  # no sampled losses: the engine re-runs the cells
    assert kept and kept == rerun
    assert {tuple(c["epochs"]) for c in kept.values()} == {
        tuple(page.curve_epochs(e)) for e in SMALL["epochs"]
    }


def test_keeping_the_losses_changes_nothing_in_the_map(
    both: tuple[xr.Dataset, runner.RunStats, xr.Dataset], tmp_path
) -> None:
    ds, _, old = both
    xr.testing.assert_identical(ds, old)
    store.write_netcdf(tmp_path / "new.nc", ds)
    store.write_netcdf(tmp_path / "old.nc", old)
    with xr.open_dataset(tmp_path / "new.nc") as a, xr.open_dataset(tmp_path / "old.nc") as b:
        xr.testing.assert_identical(a, b)


def test_a_cell_the_run_did_not_compute_falls_back_to_the_rerun(
    both: tuple[xr.Dataset, runner.RunStats, xr.Dataset],
) -> None:
    ds, stats, _ = both
    assert stats.sampled is not None
    recorded = stats.sampled.recorded.copy()
    recorded[0] = False  # as a chunk read back by --resume
    partial = type(stats.sampled)(stats.sampled.epochs, stats.sampled.losses, recorded)
    assert page.page_data(ds, sampled=partial)["curves"] == page.page_data(ds)["curves"]
    lr, n = range(ds.sizes["lr"]), range(ds.sizes["n"])
    assert page._sampled_curves(ds, [], [], stats.sampled) is None
    assert page.stored_curves(ds, lr, n, 1, partial) == page.stored_curves(ds, lr, n, 1)


def test_the_sampled_losses_are_the_histories_at_the_curve_epochs() -> None:
    sweep = Sweep(**{**SMALL, "epochs": (40,)}, shuffle=False)
    assert list(runner.sampled_epochs(sweep)) == list(page.curve_epochs(40))
    k = len(page.curve_epochs(40))
    assert runner.sampled_loss_bytes(sweep) == sweep.n_configs * (4 * k + 1)
    big = Sweep(**{**SMALL, "lr": tuple(np.geomspace(1e-5, 1, 2000))}, shuffle=False)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(runner, "SAMPLED_LOSS_BYTES", big.n_configs * (4 * k + 1) - 1)
        assert runner.sampled_loss_bytes(big) == 0  # too large: none kept
