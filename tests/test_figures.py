"""The static figures, read back as matplotlib objects (not pixels) from a small real map.

* ``critical_lr.png``: the seed's lr 0.01 as a horizontal line, the batch split of the
  reference slice as a vertical one, and a legend naming only the optimizers drawn;
* ``loss_curves.png``: a y axis clipped to the finite losses (not float32's 3.4e38), a marker
  where a curve became inf/nan, and the labelled ``extra`` histories dashed.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from PIL import Image

from src import report
from src.problem import Problem
from src.runner import run
from src.schema import reference_slice
from src.spec import SEED_LR, Curve, Sweep, log_grid

OPTIMIZERS = ("sgd", "momentum", "adam")
BATCH = 32
EPOCHS = 60
CURVES = (
    Curve("sgd", SEED_LR, 40, BATCH),  # overflows within the 60 epochs
    Curve("sgd", SEED_LR, 10, BATCH),  # converges
    Curve("adam", SEED_LR, 20, BATCH),  # slow, finite
)


@pytest.fixture(scope="module")
def small_map():
    lr = log_grid(1e-4, 1.0, 17)  # 4 per decade: holds 0.01 exactly
    assert SEED_LR in lr
    ds, _ = run(Sweep(optimizer=OPTIMIZERS, lr=lr, n=tuple(range(1, 41)), batch_size=(BATCH,),
                      epochs=(EPOCHS,), curves=CURVES))  # fmt: skip
    return ds


def _lines(fig) -> list[Line2D]:
    return list(fig.axes[0].get_lines())


@pytest.mark.slow  # small_map: a whole map
def test_critical_lr_figure_marks_the_seed_lr_and_the_batch_split(small_map) -> None:
    ref = reference_slice(small_map)
    fig = report.critical_lr_figure(ref)
    lines = _lines(fig)
    seed = [ln for ln in lines if list(ln.get_ydata()) == [SEED_LR, SEED_LR]]
    assert [ln.get_label() for ln in seed] == ["lr 0.01 (Keras SGD default)"]
    split = [ln for ln in lines if list(ln.get_xdata()) == [BATCH + 0.5, BATCH + 0.5]]
    assert [ln.get_label() for ln in split] == ["N > 32: 2 batches per epoch"]
    assert split[0].get_linestyle() == ":"
    assert report.batch_splits(ref) == [BATCH]
    assert report.batch_splits(ref.sel(n=slice(1, BATCH))) == []  # one batch at every N


@pytest.mark.slow  # small_map: a whole map
def test_critical_lr_legend_names_only_optimizers_with_points(small_map) -> None:
    ref = reference_slice(small_map)
    drawn = [o for o in OPTIMIZERS if np.isfinite(ref.critical_lr.sel(optimizer=o)).any()]
    assert "sgd" in drawn and "adam" not in drawn  # adam never breaks on the grid
    assert not np.isfinite(ref.theory_critical_lr.sel(optimizer="adam")).any()
    labels = [t.get_text() for t in report.critical_lr_figure(ref).axes[0].get_legend().get_texts()]
    assert [label for label in labels if label in OPTIMIZERS] == drawn
    assert not [label for label in labels if label.startswith("adam")]


@pytest.mark.slow  # small_map: a whole map
def test_curves_figure_clips_the_y_axis_and_marks_the_overflow(small_map) -> None:
    ds = small_map
    history = ds.loss_history.sel(curve=CURVES[0].label).values
    bad = np.flatnonzero(~np.isfinite(history))
    assert bad.size and np.isfinite(history[: bad[0]]).all()  # precondition: it overflows
    assert np.nanmax(np.where(np.isfinite(history), history, np.nan)) > 1e30
    fig = report.curves_figure(ds)
    ax = fig.axes[0]
    bottom, top = ax.get_ylim()
    assert ax.get_yscale() == "log"
    assert np.isfinite(top) and top < 1e20
    assert 0 < bottom < np.nanmin(ds.loss_history.values)
    finite_start = float(np.max(ds.loss_history.values[:, 0]))
    assert top == pytest.approx(report.LOSS_HEADROOM * finite_start)
    marks = [ln for ln in ax.get_lines() if ln.get_marker() == report.OVERFLOW_MARK]
    epoch = int(ds.epoch.values[bad[0]])
    assert [ln.get_label() for ln in marks] == [f"inf/nan from epoch {epoch}"]
    assert list(marks[0].get_xdata()) == [epoch] and list(marks[0].get_ydata()) == [1.0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels.index(f"inf/nan from epoch {epoch}") == labels.index(CURVES[0].label) + 1


@pytest.mark.slow  # small_map: a whole map
def test_extra_curves_are_dashed_labelled_and_clipped_alike(small_map) -> None:
    ds = small_map
    epochs = np.arange(1, EPOCHS + 1)
    calm = 50.0 * 0.8**epochs
    runaway = np.where(epochs < 30, 50.0 * 10.0**epochs, np.inf)  # finite up to 5e30
    runaway[epochs > 30] = np.nan
    extra = [("lr 0.0035 (half the critical lr)", calm), ("Adam lr 1", runaway)]
    plain = report.curves_figure(ds)
    fig = report.curves_figure(ds, extra)
    ax = fig.axes[0]
    dashed = {ln.get_label(): ln for ln in ax.get_lines() if ln.get_linestyle() == "--"}
    assert set(dashed) == {label for label, _ in extra}
    np.testing.assert_allclose(dashed["lr 0.0035 (half the critical lr)"].get_ydata(), calm)
    marks = [ln.get_label() for ln in ax.get_lines() if ln.get_marker() == report.OVERFLOW_MARK]
    assert "inf/nan from epoch 30" in marks and len(marks) == 2
    bottom, top = ax.get_ylim()
    smallest = min(float(calm.min()), float(np.nanmin(ds.loss_history.values)))
    assert smallest / 2 > report.LOSS_FLOOR * float(np.max(ds.loss_history.values[:, 0]))
    assert top == plain.axes[0].get_ylim()[1] < 1e20
    assert bottom == pytest.approx(smallest / 2)
    # The map's own curves come first, drawn as without extras.
    solid = [ln.get_label() for ln in plain.axes[0].get_lines()]
    assert solid == [ln.get_label() for ln in ax.get_lines()][: len(solid)]


def test_loss_axis_limits_rule() -> None:
    start, smallest = 100.0, 1e-3
    finite = np.array([start, 1.0, smallest])
    assert report.loss_axis_limits([finite]) == (smallest / 2, 2 * start)
    overflow = np.array([10.0, 1e10, 1e37, np.inf, np.nan], np.float32)
    bottom, top = report.loss_axis_limits([finite, overflow])
    assert top == report.LOSS_HEADROOM * start and bottom == smallest / 2
    tiny = np.array([start, 1e-30, 0.0])  # zero: not on a log axis; 1e-30: below the floor
    assert report.loss_axis_limits([tiny])[0] == report.LOSS_FLOOR * start
    assert report.loss_axis_limits([np.array([np.nan, np.inf])]) is None
    assert report.loss_axis_limits([]) is None


@pytest.mark.slow  # small_map: a whole map
def test_write_figures_passes_extra_to_the_curves(small_map, tmp_path, monkeypatch) -> None:
    seen = []
    drawn = report.curves_figure

    def spy(ds, extra=()):
        seen.append(list(extra))
        return drawn(ds, extra)

    monkeypatch.setattr(report, "curves_figure", spy)
    extra = [("standardise x", np.geomspace(10.0, 1e-6, EPOCHS))]
    pngs = report.write_figures(small_map.isel(optimizer=[0]), tmp_path, extra=extra)
    (tmp_path / "plain").mkdir()
    report.write_figures(small_map.isel(optimizer=[0]), tmp_path / "plain")
    assert [[label for label, _ in e] for e in seen] == [["standardise x"], []]
    assert (tmp_path / "loss_curves.png").read_bytes() == pngs["loss_curves.png"]


def test_log_tick_labels_are_plain_text_with_the_same_ticks(small_map, tmp_path) -> None:
    """Saved figures label log axes without mathtext (:class:`src.report.PlainTicks`): the
    ticks matplotlib would label, with the same numbers in superscript digits."""
    ref = reference_slice(small_map)
    plain = report.heatmap_figure(ref, "sgd")
    mathtext = report.heatmap_figure(ref, "sgd")
    report.save_figure(plain, tmp_path / "h.png")
    mathtext.canvas.draw()
    ax, reference = plain.axes[0], mathtext.axes[0]
    got = [t.get_text() for t in ax.get_xticklabels()]
    want = [t.get_text() for t in reference.get_xticklabels()]
    assert len(got) == len(want) >= 4
    assert all("$" in w for w in want if w) and not any("$" in g for g in got)
    assert [report.plain_label(w) for w in want] == got
    assert "10\u207b\u00b3" in got  # 1e-3
    assert report.plain_label("$\\mathdefault{2\\times10^{-3}}$") == "2\u00d710\u207b\u00b3"
    assert report.plain_label("N = 20") == "N = 20"
    colour_bar = [t.get_text() for a in plain.axes[1:] for t in a.get_yticklabels()]
    assert colour_bar and not any("$" in t for t in colour_bar)


def test_the_colour_bar_label_fits_in_the_figure(small_map, tmp_path) -> None:
    """The colour key's words are inside the saved picture, not cut off at its edges."""
    ref = reference_slice(small_map)
    for name, fig in (("one", report.heatmap_figure(ref, "sgd")),
                      ("all", report.overview_figure(ref, OPTIMIZERS))):  # fmt: skip
        report.save_figure(fig, tmp_path / f"{name}.png")
        canvas = FigureCanvasAgg(fig)  # as saved: laid out once, at the saved resolution
        canvas.draw()
        renderer = canvas.get_renderer()
        page = fig.bbox
        label = fig.axes[-1].yaxis.label
        assert "mean(y²)" in label.get_text()
        box = label.get_window_extent(renderer)
        assert page.y0 <= box.y0 and box.y1 <= page.y1 and box.x1 <= page.x1, (name, box, page)


@pytest.mark.slow  # small_map: a whole map, and its report twice
def test_a_report_drafted_elsewhere_is_the_report_made_in_place(small_map, tmp_path) -> None:
    """The main job drafts its report in a thread while the Keras check runs; what it writes
    is what publish writes on its own (the page apart from its timings)."""
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir()
    there.mkdir()
    report.publish(small_map, None, Problem(), here, 0.0)
    with ThreadPoolExecutor(1) as pool:
        drafted = pool.submit(report.draft, small_map, None, there)
        steps: list[int] = []
        report.publish(small_map, None, Problem(), there, 0.0, drafted=drafted,
                       progress=steps.append)  # fmt: skip
    assert sum(steps) == len(report.REPORT_STEPS)
    files = sorted(p.name for p in here.iterdir())
    assert files == sorted(p.name for p in there.iterdir()) and "heatmaps.png" in files
    for name in files:
        if name.endswith((".png", ".nc")):
            assert (here / name).read_bytes() == (there / name).read_bytes(), name
    assert (here / "index.html").read_text() == (there / "index.html").read_text()



@pytest.mark.slow  # small_map: a whole map
def test_map_figures_drawn_in_two_shares_are_those_drawn_in_one(small_map, tmp_path) -> None:
    """The report draws its figures in two processes (:func:`report.draft`); each share lays
    its per-optimizer maps out for the first optimizer, so the split changes no byte."""
    whole = report.map_figures(small_map, tmp_path)
    optimizers = list(OPTIMIZERS)
    for parts in ([["heatmaps.png", "critical_lr.png"], [f"heatmap_{o}.png" for o in optimizers]],
                  report.map_figure_parts(optimizers, 2)):  # fmt: skip
        shares = [report.map_figures(small_map, tmp_path, files) for files in parts]
        assert {k: v for share in shares for k, v in share.items()} == whole
    last = [f"heatmap_{optimizers[-1]}.png"]
    assert report.map_figures(small_map, tmp_path, last) == {last[0]: whole[last[0]]}
    # A redrawn map keeps the title where the layout put the first one's.
    tops = set()
    for o in optimizers:
        ink = _pixels(tmp_path / f"heatmap_{o}.png")[:80, :, :3].min(axis=(1, 2)) < 128
        tops.add(int(np.argmax(ink)))
    assert len(tops) == 1, tops


def _log_figure(short_range: bool = False, grid: bool = False) -> Figure:
    """A constrained figure with log axes (one of them spanning less than a decade where
    asked: its minor ticks are labelled), a colour bar and, where asked, minor grid lines."""
    fig = Figure(figsize=(6, 3), dpi=report.DPI, layout="constrained")
    axes = fig.subplots(1, 2)
    axes[0].loglog([1e-4, 1.0], [1.0, 1e3])
    axes[1].semilogx([2.0, 7.0] if short_range else [1e-3, 10.0], [0.0, 100.0])
    for ax in axes:
        ax.set_ylabel("a label")
        if grid:
            ax.grid(True, which="both", alpha=0.3)
    fig.colorbar(report.ScalarMappable(*reversed(report.loss_colour_key())), ax=axes)
    return fig


def _laid_out(short_range: bool, marked: bool) -> list[list[float]]:
    """Axes positions after :func:`report._fix_layout` with the unlabelled minor ticks drawn
    by :class:`report.MinorTickMarks`, or after the plain layout engine."""
    fig = _log_figure(short_range)
    if marked:
        for axis in report._unlabelled_minor_axes(fig):
            report.MinorTickMarks.replace(axis)
        report._fix_layout(fig)
    else:
        fig.get_layout_engine().execute(fig)
    return [list(ax.get_position().bounds) for ax in fig.axes]


@pytest.mark.parametrize("short_range", [False, True])
def test_the_layout_without_unlabelled_minor_ticks_is_the_same(short_range: bool) -> None:
    """Minor ticks are left out of the layout only where they carry no label; the positions
    are those of the full layout."""
    assert _laid_out(short_range, True) == _laid_out(short_range, False)
    fig = Figure()
    ax = fig.subplots()
    ax.semilogx([2.0, 7.0], [0.0, 1.0])
    assert ax.xaxis not in report._unlabelled_minor_axes(fig)  # 3, 4, 5 ... are labelled
    ax.set_xlim(1e-4, 1.0)
    assert ax.xaxis in report._unlabelled_minor_axes(fig)
    report.MinorTickMarks.replace(ax.xaxis)
    assert ax.xaxis not in report._unlabelled_minor_axes(fig)  # marked once, not twice


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image, np.int16)


@pytest.mark.parametrize("grid", [False, True])
def test_minor_tick_marks_draw_the_pixels_of_matplotlibs_own_ticks(grid: bool, tmp_path) -> None:
    """Figures saved with the unlabelled minor ticks as :class:`report.MinorTickMarks`
    (tick marks on both sides of the colour bar's log axis, minor ticks on log x and y
    axes) are pixel for pixel matplotlib's own, except that crossing grid lines (partly
    transparent) blend in another order: at most 1 in 255 there."""
    ours, theirs = _log_figure(grid=grid), _log_figure(grid=grid)
    report.save_figure(ours, tmp_path / "ours.png")
    for ax in theirs.axes:
        report._plain_tick_labels(ax)  # as save_figure: the same labels
    theirs.savefig(tmp_path / "theirs.png", dpi=report.DPI)
    marks = [a for ax in ours.axes for a in ax.artists if isinstance(a, report.MinorTickMarks)]
    assert sum(len(m.positions()) for m in marks) > 50  # a log axis's and the colour bar's
    a, b = _pixels(tmp_path / "ours.png"), _pixels(tmp_path / "theirs.png")
    assert a.shape == b.shape
    differ = np.abs(a - b).max(axis=-1)
    assert differ.max() <= (1 if grid else 0)
    if grid:
        assert (differ > 0).mean() < 0.01  # the crossings alone
