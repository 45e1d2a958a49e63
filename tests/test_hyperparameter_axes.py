"""Optimizer hyperparameters as axes of the map (``--sweep NAME=V1,V2,...``) and fixed
overrides (``--optimizer-args K=V,...``): one dimension per swept hyperparameter, the same
numbers as separate runs, the closed-form boundary per value, and one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from src import theory
from src.cli import main, parse_main_args, sweep_from_args
from src.runner import run, theory_critical_lr
from src.schema import DIMS
from src.spec import Sweep, log_grid
from src.stability_map import load

LR = log_grid(1e-3, 1.0, 13)
NS = (5, 10, 20)
EPOCHS = 200
MOMENTA = (0.0, 0.5, 0.9)
PER_CONFIG = ("status", "initial_loss", "final_loss", "first_nonfinite_epoch",
              "first_converged_epoch", "growth_rate", "final_w", "final_b",
              "prediction")  # fmt: skip
PER_CELL = ("critical_lr", "non_monotone", "theory_critical_lr")


def theory_x(n: int) -> np.ndarray:
    return np.arange(1, n + 1, dtype=np.float64)  # the default problem's x = 1..N


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``--sweep momentum=0,0.5,0.9`` over sgd and adam, written by the CLI."""
    out = tmp_path_factory.mktemp("swept")
    argv = ["--optimizers", "sgd,adam", "--lr", "1e-3:1:13", "--n", "5,10,20",
            "--epochs", str(EPOCHS), "--sweep", "momentum=0,0.5,0.9", "--validate", "0", "--quiet",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    return out


@pytest.mark.slow  # swept: a whole main job
def test_a_swept_hyperparameter_is_a_dimension_that_survives_netcdf(swept: Path) -> None:
    ds = load(swept)  # netCDF round trip
    assert ds.status.dims == (*DIMS, "momentum")
    assert ds.status.shape == (2, 13, 3, 1, 1, 1, 3)
    assert list(ds.momentum.values) == list(MOMENTA) and ds.momentum.dtype == np.float64
    for name in (*PER_CONFIG, *PER_CELL):
        assert "momentum" in ds[name].dims, name
    assert json.loads(ds.attrs["hyperparameters_apply_to"]) == {"momentum": ["sgd"]}
    assert json.loads(ds.attrs["optimizer_args"]) == {}
    summary = json.loads((swept / "summary.json").read_text())
    assert summary["grid"]["momentum"] == 3 and summary["n_configs"] == 2 * 13 * 3 * 3
    assert summary["findings"]["reference_slice"]["momentum"] == 0.0
    assert 'sweep = ["momentum=0.0,0.5,0.9"]' in (swept / "sweep.toml").read_text()
    curves = [str(c) for c in ds.curve.values]
    assert any("momentum=0 (first swept value)" in c for c in curves if c.startswith("sgd"))


@pytest.mark.slow  # swept: a whole main job
def test_a_swept_value_equals_the_optimizer_that_has_it_by_default(swept: Path) -> None:
    """sgd at momentum 0.9 is Keras's SGD(momentum=0.9), the map's ``momentum``; at 0, sgd."""
    ds = load(swept)
    alone, _ = run(Sweep(optimizer=("sgd", "momentum"), lr=LR, n=NS, epochs=(EPOCHS,)))
    for value, name in ((0.9, "momentum"), (0.0, "sgd")):
        mine = ds.sel(optimizer="sgd", momentum=value)
        theirs = alone.sel(optimizer=name)
        for var in (*PER_CONFIG, *PER_CELL):
            np.testing.assert_array_equal(mine[var].values, theirs[var].values, err_msg=var)


@pytest.mark.slow  # swept: a whole main job
def test_the_measured_boundary_follows_the_closed_form_per_momentum(swept: Path) -> None:
    ds = load(swept)
    for mu in MOMENTA:
        for n in NS:  # batch 32 >= N: full batch, lr_crit = 2 (1 + mu) / lambda_max
            lam = theory.hessian_eigenvalues(theory_x(n))[-1]
            cell = ds.sel(optimizer="sgd", momentum=mu, n=n).squeeze()
            closed = 2 * (1 + mu) / lam
            assert float(cell.theory_critical_lr) == pytest.approx(closed, rel=1e-9)
            assert float(cell.critical_lr) == pytest.approx(closed, rel=5e-3), (mu, n)


@pytest.mark.slow  # swept: a whole main job
def test_an_optimizer_without_the_hyperparameter_is_broadcast(swept: Path) -> None:
    ds = load(swept)
    adam = ds.sel(optimizer="adam")
    for var in (*PER_CONFIG, *PER_CELL):
        first = adam[var].isel(momentum=0).values
        for k in range(1, len(MOMENTA)):
            np.testing.assert_array_equal(adam[var].isel(momentum=k).values, first, err_msg=var)
    assert np.isnan(adam.theory_critical_lr.values).all()


@pytest.mark.slow  # the browser
def test_the_page_selects_a_hyperparameter(swept: Path) -> None:
    html = (swept / "index.html").read_text()
    data = json.loads(
        html.split('<script type="application/json" id="data">')[1].split("</script>")[0]
    )
    assert data["slice_dims"] == ["batch_size", "seed", "epochs", "momentum"]
    assert data["axes"]["momentum"] == list(MOMENTA) and len(data["slices"]) == 3
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if chromium is None:
        pytest.skip("no Chromium on PATH")
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto((swept / "index.html").as_uri())
        page.locator("#maps canvas").nth(0).scroll_into_view_if_needed()  # below the focus
        box = page.locator("#maps canvas").nth(0).bounding_box()
        at = (box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.5)
        page.mouse.move(*at)
        assert "momentum 0" in page.locator("#tip").inner_text()
        before = page.locator("#maps canvas").nth(0).screenshot()
        page.select_option("#select-momentum", "2")
        page.mouse.move(at[0] + 1, at[1])
        assert "momentum 0.9" in page.locator("#tip").inner_text()
        assert page.locator("#maps canvas").nth(0).screenshot() != before  # redrawn
        browser.close()
    assert not errors, errors


@pytest.mark.slow  # two maps
def test_fixed_optimizer_args_change_the_results() -> None:
    base = ["--optimizers", "sgd", "--lr", "0.01,0.03", "--n", "20", "--epochs", "100"]
    plain, _ = run(sweep_from_args(parse_main_args(base)))
    sweep = sweep_from_args(parse_main_args([*base, "--optimizer-args", "clipnorm=1"]))
    assert sweep.optimizer_args == (("clipnorm", 1.0),)
    clipped, _ = run(sweep)
    assert json.loads(clipped.attrs["optimizer_args"]) == {"clipnorm": 1.0}
    assert json.loads(plain.attrs["optimizer_args"]) == {}
    assert (plain.status == 3).all()  # overflow without clipping
    assert not (clipped.status == 3).any()  # clipped steps stay finite
    assert np.isnan(clipped.theory_critical_lr).all()  # no closed form with clipping
    assert "clipnorm=1" in str(clipped.curve.values[0])


@pytest.mark.slow  # a whole map
def test_progress_counts_broadcast_configs() -> None:
    seen: list[int] = []
    sweep = Sweep(optimizer=("sgd", "adam"), lr=(0.01,), n=(10,), epochs=(20,),
                  hyperparameters={"momentum": (0.0, 0.9)}, curves=())  # fmt: skip
    _, stats = run(sweep, progress=seen.append)
    assert sum(seen) == sweep.n_configs == 4
    assert stats.config_epochs == 3 * 20  # adam ran once, not once per momentum


def test_closed_form_uses_the_swept_and_fixed_values() -> None:
    lam = theory.hessian_eigenvalues(theory_x(20))[-1]
    sweep = Sweep(optimizer=("sgd",), lr=(0.01,), n=(20,),
                  hyperparameters={"momentum": (0.5,), "nesterov": (0.0, 1.0)})  # fmt: skip
    t = theory_critical_lr(sweep).squeeze()
    np.testing.assert_allclose(t, [2 * 1.5 / lam, 2 * 1.5 / 2 / lam], rtol=1e-12)
    fixed = Sweep(optimizer=("momentum",), lr=(0.01,), n=(20,), optimizer_args={"momentum": 0.5})
    assert theory_critical_lr(fixed).item() == pytest.approx(2 * 1.5 / lam, rel=1e-12)


def test_command_line_sweeps_replace_the_files(tmp_path: Path) -> None:
    cfg = tmp_path / "s.toml"
    cfg.write_text('sweep = ["momentum=0,0.5"]\noptimizer_args = "clipnorm=2"\n')
    args = parse_main_args(["--config", str(cfg)])
    assert args.sweep == ["momentum=0,0.5"] and args.optimizer_args == "clipnorm=2"
    args = parse_main_args(["--config", str(cfg), "--sweep", "momentum=0.9"])
    assert args.sweep == ["momentum=0.9"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--sweep", "foo=1,2"],
            "unknown hyperparameter 'foo' (swept) for optimizers sgd; "
            "valid names: momentum, nesterov, ",
        ),
        (["--sweep", "foo=1,2"], "clipnorm"),
        (["--sweep", "beta_1=0.5,0.9"], "unknown hyperparameter 'beta_1'"),
        (["--sweep", "momentum=0,0"], "--sweep momentum has repeated values"),
        (["--sweep", "momentum="], "--sweep momentum is empty"),
        (["--sweep", "momentum=0,x"], "--sweep momentum must be numbers"),
        (["--sweep", "momentum=0,nan"], "--sweep momentum: values must be numbers"),
        (["--sweep", "momentum=inf"], "hyperparameter momentum must be a finite number"),
        (["--sweep", "0,1"], "--sweep takes NAME=V1,V2"),
        (["--sweep", "lr=0.1,0.2"], "clashes with a dimension"),
        (
            ["--sweep", "momentum=0", "--sweep", "momentum=0.5"],
            "'momentum' is swept more than once",
        ),
        (["--sweep", "momentum=0,1", "--optimizer-args", "momentum=0.5"], "both swept and fixed"),
        (["--optimizer-args", "epsilon=1"], "unknown hyperparameter 'epsilon' (fixed)"),
        (["--optimizer-args", "clipnorm"], "--optimizer-args: 'clipnorm' is not NAME=VALUE"),
        (["--optimizer-args", "clipnorm=1,clipnorm=2"], "clipnorm is given twice"),
    ],
)
def test_bad_hyperparameters_exit_2_with_one_line(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--optimizers", "sgd", "--lr", "0.01", "--n", "5", "--epochs", "5", "--quiet"]
    assert main([*base, *argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()


def test_the_api_takes_a_mapping_and_keeps_the_given_order() -> None:
    sweep = Sweep(optimizer=("adam",), lr=(0.01,), n=(5,),
                  hyperparameters={"beta_2": (0.99, 0.9), "beta_1": [0.5]})  # fmt: skip
    assert sweep.dims == (*DIMS, "beta_2", "beta_1")
    assert sweep.hyperparameters == (("beta_2", (0.99, 0.9)), ("beta_1", (0.5,)))
    assert sweep.shape == (1, 1, 1, 1, 1, 1, 2, 1)
