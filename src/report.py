"""Pictures and the page: heatmaps, loss curves and a self-contained ``index.html``.

Heatmaps show the map's reference slice (see :func:`src.schema.reference_slice`): learning
rate on a log x axis, dataset size N up, colour = log10 of the final loss (cividis, readable
with colour-blindness) where training stayed finite and did not diverge, and two flat colours
for ``diverging`` and ``overflow``. The seed's configurations (lr 0.01 at N = 20 and N = 10) are
marked. ``index.html`` inlines every picture, so it opens from disk with no network.
"""

from __future__ import annotations

import functools
import io
import math
import os
import platform
import re
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import xarray as xr
from matplotlib import patheffects
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.cm import ScalarMappable
from matplotlib.colors import ListedColormap, LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import Formatter, LogFormatter, NullLocator

from src import findings, forked, outcome, page, store
from src.focus import SEED_FOCUS, Focus, Panel
from src.focus import panel as focus_panel
from src.problem import Problem
from src.runner import RunStats
from src.schema import DIMS, optimal_loss, reference_slice
from src.spec import SEED_LR

if TYPE_CHECKING:
    from matplotlib.backend_bases import RendererBase

    from src.findings import Findings
    from src.validation import ValidationRecord

MAP_FILE = "stability_map.nc"
"""The map itself, in ``--out``."""

THEORY_LINE = {
    "color": "black",
    "ls": "--",
    "lw": 1.2,
    "path_effects": [patheffects.withStroke(linewidth=2.6, foreground="white")],
}
"""The closed-form critical lr drawn over heatmaps: dashed black on white, visible on any cell."""

FIXED_ORDER_LINE = {**THEORY_LINE, "ls": ":"}
"""The fixed-order closed form where the map shuffles minibatches (it describes
``fit(shuffle=False)``, not the map's run): dotted."""

SEED_MARKS = ((findings.SEED_N, "*"), (findings.SEED_STABLE_N, "o"))

DPI = 130
"""Resolution of every PNG (dots per inch); figures are made and laid out at it."""

MAX_DRAWN = 1000
"""Cells a heatmap draws along lr and along N, at most (about its width in pixels): a longer
axis is drawn at every k-th value (the title says so); the netCDF holds every cell."""


def drawn_strides(ref: xr.Dataset) -> dict[str, int]:
    """Per heatmap axis (``lr``, ``n``): draw every k-th value (see :data:`MAX_DRAWN`)."""
    return {d: max(1, math.ceil(ref.sizes[d] / MAX_DRAWN)) for d in ("lr", "n")}


def _edges(values: np.ndarray, log: bool) -> np.ndarray:
    """Cell edges around sorted centres (geometric midpoints on a log axis)."""
    v = np.log(values) if log else np.asarray(values, np.float64)
    if len(v) == 1:
        mid = np.array([v[0] - 0.5, v[0] + 0.5])
    else:
        inner = (v[1:] + v[:-1]) / 2
        mid = np.concatenate([[2 * v[0] - inner[0]], inner, [2 * v[-1] - inner[-1]]])
    return np.exp(mid) if log else mid


def loss_colour_key() -> tuple[ListedColormap, LogNorm]:
    """The colour key of the stable statuses' shades: final loss / ``mean(y^2)`` on a log
    axis, blue (converged) below the tolerance, yellow to orange (slow) above it."""
    tol = outcome.DEFAULT_TOL
    rel = np.geomspace(tol / 10**page.CONVERGED_SPAN, 1, 256)
    status = np.where(rel <= tol, outcome.CONVERGED, outcome.SLOW)
    colours = page.cell_colours(status, rel, tol)
    return ListedColormap(colours), LogNorm(vmin=rel[0], vmax=rel[-1])


def draw_heatmap(ax: Axes, ref: xr.Dataset, optimizer: str) -> None:
    """One optimizer's lr x N map on ``ax``, coloured as the page: the status, shaded by the
    final loss within converged and slow (:func:`src.page.cell_colours`), diverging hatched."""
    _draw_cells(ax, ref, optimizer)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("dataset size N")
    ax.set_title(optimizer)


def _draw_cells(ax: Axes, ref: xr.Dataset, optimizer: str) -> None:
    """What :func:`draw_heatmap` draws from the data (cells, theory lines, seed marks), apart
    from the axes' scales and labels, so that one laid-out figure can be redrawn per
    optimizer (:func:`_redraw_heatmap`)."""
    cell = ref[["status", "final_loss", "loss_scale"]].sel(optimizer=optimizer)
    cell["optimal_loss"] = optimal_loss(ref)
    cell = cell.transpose("n", "lr").isel(
        {d: slice(None, None, k) for d, k in drawn_strides(ref).items()}
    )
    x, y = _edges(cell.lr.values, log=True), _edges(cell.n.values, log=False)
    status = cell.status.values
    scale = cell.loss_scale.values[:, None]
    optimal = cell.optimal_loss.values[:, None]
    relative = (cell.final_loss.values.astype(np.float64) - optimal) / scale
    rgb = page.cell_colours(status, relative, float(ref.attrs["tol"]))
    ax.pcolormesh(x, y, rgb, shading="flat")
    diverging = status == outcome.DIVERGING
    if diverging.any():
        fill, stripes = page.PALETTE["diverging"]
        cells = ax.pcolor(
            x, y, np.ma.masked_where(~diverging, np.ones(status.shape)),
            cmap=ListedColormap([fill]), hatch="////", edgecolor=stripes, linewidth=0,
        )  # fmt: skip
        cells.set_hatch_linewidth(0.6) if hasattr(cells, "set_hatch_linewidth") else None
    closed = ref.theory_critical_lr.sel(optimizer=optimizer).values
    if np.isfinite(closed).any():
        ax.step(closed, ref.n.values, where="mid", **THEORY_LINE)
    fixed = _fixed_order_only(ref.sel(optimizer=optimizer))
    if np.isfinite(fixed).any():
        ax.step(fixed, ref.n.values, where="mid", **FIXED_ORDER_LINE)
    if np.any(np.isclose(ref.lr.values, SEED_LR)):
        for n, marker in SEED_MARKS:
            if n in ref.n.values:
                ax.plot(SEED_LR, n, marker, ms=9 if marker == "*" else 6, mfc="white", mec="black")


def _colour_bar(fig: Figure, ax: Axes | np.ndarray, **kwargs: object) -> None:
    cmap, norm = loss_colour_key()
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, **kwargs)
    # Two short lines: on one, the words ran past both ends of the bar and were cut off.
    bar.set_label("final loss / mean(y²)\nconverged (blue) below the tolerance, slow above",
                  fontsize=8)  # fmt: skip


def _fixed_order_only(cell: xr.Dataset) -> np.ndarray:
    """The fixed-order closed form where the map's own run has none (shuffled minibatches)."""
    closed = cell.theory_critical_lr.values
    fixed = cell.get("fixed_order_critical_lr", cell.theory_critical_lr).values
    return np.where(np.isfinite(closed), np.nan, fixed)


def _legend_handles(shuffled_theory: bool = False) -> list[Patch | Line2D]:
    fill, stripes = page.PALETTE["diverging"]
    handles: list[Patch | Line2D] = [
        Patch(facecolor=fill, edgecolor=stripes, hatch="////", label="diverging"),
        Patch(color=page.PALETTE["overflow"][0], label="overflow"),
    ]
    handles.append(Line2D([], [], label="theory boundary", **THEORY_LINE))
    if shuffled_theory:
        handles.append(Line2D([], [], label="theory, fixed order", **FIXED_ORDER_LINE))
    return handles


def _ordinal(k: int) -> str:
    """``2`` -> ``"2nd"``, ``11`` -> ``"11th"``, ``125`` -> ``"125th"``."""
    suffix = "th" if k % 100 in (11, 12, 13) else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f"{k}{suffix}"


def order_words(attrs: Mapping[str, object]) -> str:
    """Which batch order a map shows, in words (maps saved without the attribute: fixed)."""
    if int(attrs.get("shuffle", 0)):  # type: ignore[call-overload]
        return "reshuffled every epoch (fit's default)"
    return "fixed order (fit(shuffle=False))"


def _slice_note(ref: xr.Dataset) -> str:
    swept = [c for c in map(str, ref.coords) if ref[c].ndim == 0 and c not in DIMS]
    thinned = {"lr" if d == "lr" else "N": k for d, k in drawn_strides(ref).items() if k > 1}
    return (
        f"batch size {int(ref.batch_size)}, {order_words(ref.attrs)}, seed {int(ref.seed)}, "
        f"{int(ref.epochs)} epochs"
        + "".join(f", {c} {float(ref[c]):g}" for c in swept)
        + "".join(f"; every {_ordinal(k)} {d} drawn" for d, k in thinned.items())
        + "; "
        f"white star: lr {SEED_LR:g}, N = {findings.SEED_N}; "
        f"white dot: N = {findings.SEED_STABLE_N}"
    )


def heatmap_figure(ref: xr.Dataset, optimizer: str) -> Figure:
    fig = Figure(figsize=(7, 4.8), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    draw_heatmap(ax, ref, optimizer)
    _colour_bar(fig, ax)
    _heatmap_legend(ax, ref, optimizer)
    fig.suptitle(_heatmap_title(optimizer), fontsize=12, gid=_TITLE)
    ax.set_title(_slice_note(ref), fontsize=7)
    return fig


_TITLE = "heatmap-title"


def _heatmap_title(optimizer: str) -> str:
    return f"Stability map: {optimizer}"


def _heatmap_legend(ax: Axes, ref: xr.Dataset, optimizer: str) -> None:
    dotted = bool(np.isfinite(_fixed_order_only(ref.sel(optimizer=optimizer))).any())
    ax.legend(handles=_legend_handles(dotted), loc="lower left", fontsize=8, framealpha=0.9)


def _redraw_heatmap(fig: Figure, ref: xr.Dataset, optimizer: str) -> None:
    """Turn a laid-out :func:`heatmap_figure` into another optimizer's: its cells, lines,
    legend and title replace the previous ones. The axes, ticks and colour bar stay (every
    optimizer shares them), and so does the layout: each further map is drawn once, not
    laid out again (most of a figure's cost)."""
    ax = fig.axes[0]
    for artist in [*ax.collections, *ax.lines]:
        artist.remove()
    # The data limits start afresh, as in a new figure: this optimizer's lines alone count.
    ax.ignore_existing_data_limits = True
    _draw_cells(ax, ref, optimizer)
    _heatmap_legend(ax, ref, optimizer)  # replaces the previous legend
    # The title's text only: suptitle() would also put it back where it was before the
    # layout moved it.
    (title,) = (t for t in fig.texts if t.get_gid() == _TITLE)
    title.set_text(_heatmap_title(optimizer))


def overview_figure(ref: xr.Dataset, optimizers: Sequence[str]) -> Figure:
    cols = min(3, len(optimizers))
    rows = math.ceil(len(optimizers) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.4 * rows), dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True, sharey=True)
    for ax, name in zip(axes.flat, optimizers, strict=False):
        draw_heatmap(ax, ref, name)
    for ax in axes.flat[len(optimizers) :]:
        ax.set_visible(False)
    _colour_bar(fig, axes, shrink=0.8)
    dotted = any(
        np.isfinite(_fixed_order_only(ref.sel(optimizer=name))).any() for name in optimizers
    )
    fig.legend(handles=_legend_handles(dotted), loc="outside lower center", ncols=2, fontsize=9)
    fig.suptitle(f"Where training is stable ({_slice_note(ref)})", fontsize=10)
    return fig


LOSS_HEADROOM = 1e6
"""The loss curves' y axis ends at most this factor above the largest first-epoch loss: a loss
a million times its start has plainly run away, and a curve on its way to float32's 3.4e38
would otherwise squash every finite curve into the bottom of the axes."""

LOSS_FLOOR = 1e-12
"""The loss curves' y axis starts at most this factor below the largest first-epoch loss: a
float32 loss relative to its start is rounding noise down there (residuals at float32's 1e-7
precision square to about 1e-14)."""

OVERFLOW_MARK = "^"
"""Where a loss curve became inf/nan: this marker on the top edge, at its first non-finite epoch."""


def loss_axis_limits(histories: Sequence[np.ndarray]) -> tuple[float, float] | None:
    """The y range of :func:`curves_figure` (log axis), from the finite positive losses of
    ``histories``; ``None`` when there are none (matplotlib's own limits then).

    * top: twice the largest finite loss, but at most :data:`LOSS_HEADROOM` times the largest
      first finite loss of a curve (its start), so an overflowing curve leaves the axes while
      it runs away instead of stretching them to float32's maximum;
    * bottom: half the smallest finite loss, but no lower than :data:`LOSS_FLOOR` times that
      largest start.

    The top is never below twice the largest start and the bottom never above half the
    smallest loss, so every curve's start and its lowest loss above the floor are in view."""
    finite = [h[np.isfinite(h) & (h > 0)] for h in map(_float64, histories)]
    starts = [float(h[0]) for h in finite if h.size]
    if not starts:
        return None
    start = max(starts)
    largest = max(float(h.max()) for h in finite if h.size)
    smallest = min(float(h.min()) for h in finite if h.size)
    top = min(2 * largest, LOSS_HEADROOM * start)
    bottom = max(smallest / 2, LOSS_FLOOR * start)
    return bottom, top


def _float64(history: np.ndarray) -> np.ndarray:
    """A loss history as a flat float64 array (float32 maps and float64 fixes alike)."""
    return np.asarray(history, np.float64).ravel()


def _draw_loss_curve(
    ax: Axes, epochs: np.ndarray, losses: np.ndarray, label: str, **style: object
) -> None:
    """One History curve on ``ax`` (gaps where it is not finite); if it became inf/nan, an
    :data:`OVERFLOW_MARK` on the top edge at its first non-finite epoch, in the legend as
    "inf/nan from epoch K" right after the curve."""
    (line,) = ax.plot(epochs, np.where(np.isfinite(losses), losses, np.nan), label=label, **style)
    bad = np.flatnonzero(~np.isfinite(losses))
    if bad.size:
        first = int(epochs[bad[0]])
        # y in axes coordinates: the top edge whatever the limits, and the mark does not
        # stretch them (clip_on=False: a marker centred on the edge is not cut in half)
        ax.plot(
            first, 1.0, OVERFLOW_MARK, color=line.get_color(), ms=8, mec="black", mew=0.6,
            clip_on=False, transform=ax.get_xaxis_transform(),
            label=f"inf/nan from epoch {first}",
        )  # fmt: skip


def curves_figure(ds: xr.Dataset, extra: Sequence[tuple[str, np.ndarray]] = ()) -> Figure:
    """The map's loss curves (``loss_history``, solid) and the labelled per-epoch loss
    histories ``extra`` (dashed; e.g. the simulated fixes of one configuration) against the
    epoch, log y.

    The y axis is clipped to the losses that matter (:func:`loss_axis_limits`: from half the
    smallest finite loss, floored at 1e-12 of the largest first-epoch loss, up to twice the
    largest finite loss, capped at 1e6 times that first-epoch loss): a curve that overflows
    runs off the top, and a triangle on the top edge marks its first non-finite epoch
    ("inf/nan from epoch K" in the legend)."""
    fig = Figure(figsize=(7, 4.2), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    ax.set_yscale("log")
    histories = [ds.loss_history.isel(curve=i).values for i in range(ds.sizes["curve"])]
    extras = [(str(label), _float64(h)) for label, h in extra]
    for label, losses in zip(ds.curve.values, histories, strict=True):
        _draw_loss_curve(ax, ds.epoch.values, _float64(losses), str(label))
    for label, losses in extras:
        _draw_loss_curve(ax, np.arange(1, len(losses) + 1), losses, label, ls="--")
    limits = loss_axis_limits([*histories, *(h for _, h in extras)])
    if limits is not None:
        ax.set_ylim(*limits)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (History)")
    ax.set_title(
        "Loss curves" + (" (dashed: extra histories)" if extras else "") + "; y axis clipped "
        "to the finite losses\ntriangle on the top edge: the loss became inf/nan there",
        fontsize=9,
    )
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    return fig


def save_figure(fig: Figure, path: Path) -> bytes:
    """Write ``fig`` as PNG atomically; returns the PNG bytes (for inlining).

    The figure is laid out once (:func:`_fix_layout`) and drawn once: savefig would otherwise
    draw it twice, once to lay it out and once to render. Minor ticks without labels are
    drawn by :class:`MinorTickMarks`."""
    _lay_out(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    data = buf.getvalue()
    with store.atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return data


_SUPERSCRIPTS = str.maketrans(
    "-0123456789", "\u207b\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078\u2079"
)
_MATHTEXT = re.compile(r"\$\\mathdefault\{(.*)\}\$")
_POWER = re.compile(r"\^\{([-0-9]+)\}")


def plain_label(label: str) -> str:
    """A log axis's tick label as plain text: ``$\\mathdefault{2\\times10^{-3}}$`` becomes 2,
    a multiplication sign, 10 and a superscript -3. matplotlib would parse each mathtext label
    (~15 ms apiece on the 2-core machine, a third of drawing the maps); Unicode's superscript
    digits look the same."""
    whole = _MATHTEXT.fullmatch(label)
    if whole is None:
        return label
    text = whole.group(1).replace("\\times", "\u00d7")
    return _POWER.sub(lambda m: m.group(1).translate(_SUPERSCRIPTS), text)


class PlainTicks(Formatter):
    """Another formatter's labels through :func:`plain_label`: the same ticks, the same
    labels, without mathtext."""

    def __init__(self, inner: Formatter) -> None:
        self.inner = inner

    def set_axis(self, axis: object) -> None:
        super().set_axis(axis)
        self.inner.set_axis(axis)

    def set_locs(self, locs: Sequence[float]) -> None:
        self.inner.set_locs(locs)

    def __call__(self, x: float, pos: int | None = None) -> str:
        return plain_label(self.inner(x, pos))

    def format_ticks(self, values: Sequence[float]) -> list[str]:
        return [plain_label(label) for label in self.inner.format_ticks(values)]


def _plain_tick_labels(ax: Axes) -> None:
    for axis in (ax.xaxis, ax.yaxis):
        for get, put in ((axis.get_major_formatter, axis.set_major_formatter),
                         (axis.get_minor_formatter, axis.set_minor_formatter)):  # fmt: skip
            inner = get()
            if isinstance(inner, LogFormatter):
                put(PlainTicks(inner))


def _lay_out(fig: Figure) -> None:
    """Give ``fig`` its final tick labels and minor tick marks, and fix its layout (a
    figure laid out already keeps its layout)."""
    for ax in fig.axes:
        _plain_tick_labels(ax)
    for axis in _unlabelled_minor_axes(fig):
        MinorTickMarks.replace(axis)
    _fix_layout(fig)


def _fix_layout(fig: Figure) -> None:
    """Run ``fig``'s layout engine (constrained layout) now, at the resolution it is saved at,
    and keep the positions it found: a later save draws without laying out again."""
    engine = fig.get_layout_engine()
    if engine is not None:
        engine.execute(fig)
        fig.set_layout_engine(None)


def _unlabelled_minor_axes(fig: Figure) -> list[Axis]:
    """The axes of ``fig`` that draw minor ticks which, at the current limits, have no label
    (and are not yet drawn by :class:`MinorTickMarks`)."""
    quiet = []
    for ax in fig.axes:
        marked = {a.axis for a in ax.artists if isinstance(a, MinorTickMarks)}
        for axis in (ax.xaxis, ax.yaxis):
            if axis in marked or isinstance(axis.get_minor_locator(), NullLocator):
                continue
            formatter = axis.get_minor_formatter()
            formatter.set_locs(locs := axis.get_minorticklocs())
            if not any(formatter.format_ticks(locs)):
                quiet.append(axis)
    return quiet


class MinorTickMarks(Artist):
    """An axis's unlabelled minor ticks, each part (grid line, tick marks) drawn as one line
    through every tick's position instead of one :class:`~matplotlib.axis.Tick` per position.

    The pixels are those of matplotlib's own ticks (``tests/test_figures.py``): the parts are
    copies of the axis's first minor tick, drawn where the axis would draw its minor ticks
    (its minor locator, less the major positions, within the view limits). What is saved is
    making, styling and drawing every minor tick of every log axis one by one (~1 ms a tick,
    a quarter of the report's figures). Labels take room in a layout and tick marks do not,
    so a layout is the same with or without the axis's own minor ticks; they are switched off
    (:meth:`replace`), the axis keeping its minor locator and formatter."""

    def __init__(self, axis: Axis) -> None:
        super().__init__()
        self.axis = axis
        tick = axis.get_minor_ticks(1)[0]
        self.parts = [
            _line_like(part)
            for part in (tick.gridline, tick.tick1line, tick.tick2line)  # a Tick's order
            if part.get_visible()
        ]
        self.set_zorder(axis.get_zorder())
        self.set_in_layout(False)

    @classmethod
    def replace(cls, axis: Axis) -> MinorTickMarks:
        """Draw ``axis``'s minor ticks by a :class:`MinorTickMarks` from now on."""
        marks = cls(axis)
        axis.set_tick_params(which="minor", gridOn=False, tick1On=False, tick2On=False,
                             label1On=False, label2On=False)  # fmt: skip
        axis.axes.add_artist(marks)
        return marks

    def positions(self) -> np.ndarray:
        """Where the axis would draw minor ticks: as matplotlib's ``Axis._update_ticks``,
        the locator's positions (less the major ones) within the view limits."""
        locs = np.asarray(self.axis.get_minorticklocs(), np.float64)
        transform = self.axis.get_transform()
        lo, hi = sorted(transform.transform(sorted(self.axis.get_view_interval())))
        at = transform.transform(locs)
        slack = (hi - lo) * 1e-10
        return locs[(at >= lo - slack) & (at <= hi + slack)]

    def draw(self, renderer: RendererBase) -> None:
        if not (self.get_visible() and self.axis.get_visible()):
            return
        locs = self.positions()
        if len(locs) == 0:
            return
        along_x = self.axis.axis_name == "x"
        for part in self.parts:
            # A part's coordinate across the axis (0 or 1 in axes units) is fixed; NaN breaks
            # a grid line's path between positions.
            across = np.asarray(part.get_ydata() if along_x else part.get_xdata(), np.float64)
            k = len(across)
            moving = np.repeat(locs, k)
            fixed = np.tile(across, len(locs))
            if k > 1:
                moving = np.insert(moving, np.arange(k, len(moving) + 1, k), np.nan)
                fixed = np.insert(fixed, np.arange(k, len(fixed) + 1, k), np.nan)
            line = _line_like(part)
            line.set_data((moving, fixed) if along_x else (fixed, moving))
            line.set_figure(self.figure)
            line.draw(renderer)
        self.stale = False


def _line_like(line: Line2D) -> Line2D:
    """A new line with ``line``'s style, transform and clipping (not its data)."""
    copy = Line2D(line.get_xdata(), line.get_ydata())
    copy.update_from(line)
    return copy


def write_figures(
    ds: xr.Dataset, out: Path, extra: Sequence[tuple[str, np.ndarray]] = ()
) -> dict[str, bytes]:
    """Every PNG of the report, written to ``out``; returns name -> PNG bytes. ``extra``:
    labelled loss histories drawn dashed in ``loss_curves.png`` (see :func:`curves_figure`).
    The per-optimizer maps are one figure, laid out once and redrawn for each optimizer."""
    return {**map_figures(ds, out), **curves_png(ds, out, extra)}


def map_figures(
    ds: xr.Dataset, out: Path, files: Collection[str] | None = None
) -> dict[str, bytes]:
    """The PNGs of :func:`write_figures` drawn from the map alone (all but the loss curves),
    or only ``files`` of them (a share of :func:`map_figure_parts`: several processes can
    draw them together, the same bytes)."""
    ref = reference_slice(ds)
    optimizers = [str(o) for o in ds.optimizer.values]
    mine = map_figure_parts(optimizers, 1)[0] if files is None else files
    pngs = {}
    if "heatmaps.png" in mine:
        pngs["heatmaps.png"] = save_figure(overview_figure(ref, optimizers), out / "heatmaps.png")
    single = None
    for name in optimizers:
        file = f"heatmap_{name}.png"
        if file not in mine:
            continue
        if single is None:  # laid out for the first optimizer, whichever share this is
            single = heatmap_figure(ref, optimizers[0])
            _lay_out(single)
        if name != optimizers[0]:
            _redraw_heatmap(single, ref, name)
        pngs[file] = save_figure(single, out / file)
    if "critical_lr.png" in mine:
        pngs["critical_lr.png"] = save_figure(critical_lr_figure(ref), out / "critical_lr.png")
    return pngs


def map_figure_parts(optimizers: Sequence[str], parts: int) -> list[list[str]]:
    """The files of :func:`map_figures` in ``parts`` shares of about equal drawing time.

    Measured on the default map (2-core CPU): the overview ~0.55 s, the first per-optimizer
    map ~0.2 s and each further one ~0.12 s (the figure is redrawn, not rebuilt), the
    critical-lr figure ~0.15 s. Two shares: the first holds the overview, the critical-lr
    figure and the first third of the per-optimizer maps; the second the rest of them, and
    its process also draws the loss curves and runs the focus panel (:func:`draft`)."""
    singles = [f"heatmap_{name}.png" for name in optimizers]
    if parts == 1:
        return [["heatmaps.png", *singles, "critical_lr.png"]]
    if parts != 2:
        raise ValueError(f"map figures come in 1 or 2 parts, not {parts}")
    cut = len(singles) // 3
    return [["heatmaps.png", *singles[:cut], "critical_lr.png"], singles[cut:]]


def curves_png(
    ds: xr.Dataset, out: Path, extra: Sequence[tuple[str, np.ndarray]] = ()
) -> dict[str, bytes]:
    """``loss_curves.png`` of :func:`write_figures`."""
    return {"loss_curves.png": save_figure(curves_figure(ds, extra), out / "loss_curves.png")}


REFERENCE_LINE = {"color": "black", "lw": 1, "alpha": 0.7}
"""The critical-lr figure's reference lines (the seed's lr, the batch splits): black, thin."""


def batch_splits(ref: xr.Dataset) -> list[int]:
    """The batch sizes B of ``ref`` whose split falls inside its N axis (min N <= B < max N):
    from N = B + 1 an epoch has 2 batches instead of one, and the critical lr jumps there."""
    ns = ref.n.values
    sizes = np.atleast_1d(ref["batch_size"].values) if "batch_size" in ref.coords else []
    return sorted({int(b) for b in sizes if ns.min() <= b < ns.max()})


def critical_lr_figure(ref: xr.Dataset) -> Figure:
    """Critical lr against N, log-log: measured (dots) and closed form (lines) per optimizer.

    Also drawn: a horizontal dash-dot line at the seed's lr (:data:`SEED_LR`, Keras SGD's
    default; where an optimizer's dots fall below it, lr 0.01 breaks), and a vertical dotted
    line at N = B + 0.5 for each batch size B of :func:`batch_splits` (beyond it an epoch has
    2 batches). The legend names only optimizers with dots or lines drawn: one that never
    broke on the lr grid and has no closed form (Adam, usually) has no entry."""
    fig = Figure(figsize=(7, 4.6), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    ax.set_xscale("log")  # set here: an optimizer with nothing to draw never calls loglog
    ax.set_yscale("log")
    for i, name in enumerate(ref.optimizer.values):
        cell = ref.sel(optimizer=name)
        colour = f"C{i}"  # by position in the map, so a colour means one optimizer everywhere
        measured = cell.critical_lr.values
        if np.isfinite(measured).any():
            ax.loglog(ref.n.values, measured, "o", ms=3.5, color=colour, label=f"{name}")
        closed = cell.theory_critical_lr.values
        if np.isfinite(closed).any():
            ax.loglog(ref.n.values, closed, "-", lw=1, color=colour, label=f"{name} (theory)")
        fixed = _fixed_order_only(cell)
        if np.isfinite(fixed).any():
            ax.loglog(
                ref.n.values, fixed, ":", lw=1, color=colour, label=f"{name} (theory, fixed order)"
            )
    ax.axhline(SEED_LR, ls="-.", label=f"lr {SEED_LR:g} (Keras SGD default)", **REFERENCE_LINE)
    for b in batch_splits(ref):
        # between N = B and B + 1: the last N with one full batch per epoch, the first with two
        ax.axvline(b + 0.5, ls=":", label=f"N > {b}: 2 batches per epoch", **REFERENCE_LINE)
    ax.set_xlabel("dataset size N")
    ax.set_ylabel("critical learning rate")
    ax.set_title(
        "Smallest lr that overflows or diverges: measured (dots) and closed form (lines)",
        fontsize=10,
    )
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, ncols=2)
    return fig


def summary_record(
    ds: xr.Dataset, stats: RunStats | None, found: Findings, wall_seconds: float
) -> dict[str, object]:
    """The content of ``summary.json``: versions, devices, XLA flags, sizes, timings and findings
    (no run figures when the report is rendered from a saved dataset, ``stats=None``).

    Where the time went, each phase's wall time: ``simulate_seconds`` (the map's chunks),
    ``curves_seconds`` (the loss curves), ``boundary_seconds`` (the measured-critical-lr
    search); :func:`publish` adds ``report_seconds`` (from ``stats.report_started``; ``None``
    when the caller did not set it) and brings ``wall_seconds`` up to date, page included,
    just before it writes ``summary.json``. Every phase lies inside ``wall_seconds`` (the
    Keras check, between the map and the report, is in none of them; where the main job
    drafts the report during the check, ``report_seconds`` is what is left after it)."""
    run = {} if stats is None else {
        "devices": list(stats.devices),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),  # how the programs were compiled
        "compiled_programs": stats.programs,
        "wall_seconds": round(wall_seconds, 3),
        "compute_seconds": round(stats.compute_seconds, 3),
        "compile_seconds": round(stats.compile_seconds, 3),
        "simulate_seconds": round(stats.simulate_seconds, 3),
        "curves_seconds": round(stats.curves_seconds, 3),
        "boundary_seconds": round(stats.boundary_seconds, 3),
        "config_epochs_per_second": stats.config_epochs_per_second,
    }  # fmt: skip
    return {
        "versions": versions(),
        **run,
        "grid": {d: int(ds.sizes[d]) for d in ds.status.dims},
        "n_configs": int(ds.status.size),
        "problem": ds.attrs["problem"],
        "dtype": ds.attrs["dtype"],
        "shuffle": bool(ds.attrs["shuffle"]),
        "tol": ds.attrs["tol"],
        "diverge_factor": ds.attrs["diverge_factor"],
        "findings": found,
    }


def versions() -> dict[str, str]:
    import jax
    import jaxlib
    import matplotlib as mpl
    import optax

    return {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "optax": optax.__version__,
        "numpy": np.__version__,
        "xarray": xr.__version__,
        "matplotlib": mpl.__version__,
    }


def validation_figure(record: ValidationRecord) -> Figure:
    """Keras (solid) and JAX (dashed) loss curves of the Keras check's plotted configurations,
    log y (gaps: the loss became inf/nan)."""
    curves = record["curves"]
    cols = min(2, max(1, len(curves)))
    rows = max(1, math.ceil(len(curves) / cols))
    fig = Figure(figsize=(5.2 * cols, 3.3 * rows), dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, curve in zip(axes.flat, curves, strict=False):
        for key, style in (("keras", {"lw": 2.4, "alpha": 0.55, "color": "C0"}),
                           ("jax", {"lw": 1.1, "ls": "--", "color": "C3"})):  # fmt: skip
            h = np.array([np.nan if v is None else v for v in curve[key]], np.float64)
            with np.errstate(invalid="ignore"):
                h = np.where(np.isfinite(h) & (h > 0), h, np.nan)
            label = "Keras model.fit" if key == "keras" else "JAX engine"
            ax.semilogy(np.arange(1, len(h) + 1), h, label=label, **style)
        ax.set_title(f"{curve['label']} ({curve['stratum']})", fontsize=8)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss (History)")
        ax.legend(fontsize=7)
    for ax in axes.flat[len(curves) :]:
        ax.set_visible(False)
    fig.suptitle("Real Keras against the JAX engine (gaps: loss became inf/nan)", fontsize=10)
    return fig


REPORT_STEPS = ("focus panel", "figures", "page", "summary")
"""The steps of :func:`publish`, for its progress count (the page's step takes the displayed
cells' loss curves from the run, or re-runs those cells where it kept none)."""


class Draft(NamedTuple):
    """What a report needs of the map alone (:func:`draft`): the figures' PNGs (by file
    name, already written), the focus panel and the page's data."""

    pngs: dict[str, bytes]
    panel: Panel | None
    data: dict[str, object]


def draft(
    ds: xr.Dataset,
    stats: RunStats | None,
    out: Path,
    focus: Focus | None = SEED_FOCUS,
    progress: Callable[[int], None] | None = None,
) -> Draft:
    """Every figure of the report but the Keras check's, the focus panel (``focus``: the
    configuration the page opens on, none if ``None``; its fixes' loss curves join
    ``loss_curves.png``) and the page's data; ``progress(1)`` as each of the first two
    :data:`REPORT_STEPS` ends.

    The page's stored loss curves are the run's own (``stats.sampled``) where it kept them;
    otherwise (a resumed run, a map rendered from its netCDF, ``stats=None``) the page
    re-runs its cells. A forked child (:mod:`src.forked`) draws the first share of
    :func:`map_figure_parts`; a worker thread draws the second and the loss curves while
    this one runs the focus panel and computes the page's data: a simulation is XLA, which
    releases the GIL, so matplotlib's drawing (pure Python, one thread a process) and the
    simulations overlap instead of adding up. The main job drafts its report while its Keras
    check runs (:func:`publish`'s ``drafted``), the check's own time mostly spent waiting for
    its worker processes."""
    tick = progress or (lambda _: None)
    # A forked child draws a share of the map's figures on another core. Here, one worker
    # draws the rest (matplotlib is not thread-safe, so every figure of this process is
    # drawn by it alone) while this thread runs the focus panel's simulations.
    there, here = map_figure_parts([str(o) for o in ds.optimizer.values], 2)
    apart = forked.Forked(functools.partial(map_figures, ds, out, there))
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="figures") as drawing:
            maps = drawing.submit(map_figures, ds, out, here)
            panel, fix_curves = (None, []) if focus is None else focus_panel(ds, focus)
            tick(1)
            curves = drawing.submit(curves_png, ds, out, fix_curves)
            data = page.page_data(ds, panel, sampled=None if stats is None else stats.sampled)
            pngs = {**maps.result(), **curves.result()}
        pngs = {**apart.result(), **pngs}
        tick(1)
    finally:
        apart.close()
    return Draft(pngs, panel, data)


def publish(
    ds: xr.Dataset,
    stats: RunStats | None,
    problem: Problem,
    out: Path,
    started: float,
    validation: ValidationRecord | None = None,
    map_written: bool = False,
    focus: Focus | None = SEED_FOCUS,
    progress: Callable[[int], None] | None = None,
    drafted: Future[Draft] | None = None,
) -> tuple[dict[str, object], list[str]]:
    """Write every output of a run into ``out``; returns the summary and its text lines.

    ``validation`` (a :func:`src.validation.validate` record) adds ``validation.json``, the
    overlaid Keras/JAX curves (``validation_curves.png``) and a section of the page.
    ``map_written``: :data:`MAP_FILE` is already there (the main job writes it first).
    ``focus``: the configuration the page opens on (see :func:`draft`). ``drafted``: the
    :func:`draft` of this map for ``focus``, under way elsewhere (else it is made here).
    ``progress(1)`` is called as each of :data:`REPORT_STEPS` ends."""
    tick = progress or (lambda _: None)
    if not map_written:
        store.write_netcdf(out / MAP_FILE, ds)
    found = findings.headline(ds, problem)
    optimizers = [str(o) for o in ds.optimizer.values]
    lines = findings.describe(found, optimizers)
    ns = [int(n) for n in ds.n.values]
    table = findings.stable_lr_table(found, optimizers, ns, grid_top=float(ds.lr.max()))
    if drafted is None:
        pngs, panel, data = draft(ds, stats, out, focus, tick)
    else:
        pngs, panel, data = drafted.result()
        tick(2)
    # The drawing above is done: matplotlib draws in one thread at a time.
    png = None if validation is None else _validation_png(validation, out)
    summary = summary_record(ds, stats, found, time.perf_counter() - started)
    if panel is not None:
        summary["focus"] = {k: v for k, v in panel.items() if k != "diagnosis"}
    critical = findings.critical_lr_table(found, optimizers, findings.shown_ns(ns))
    checked = ""
    if validation is not None:
        store.write_json(out / "validation.json", validation)
        checked = page.validation_section(validation, png)
    store.write_text(
        out / "index.html",
        page.index_html(ds, summary, lines, table, critical, pngs, checked, panel, data=data),
    )
    tick(1)
    if stats is not None:  # the page included: the report and the run end here
        now = time.perf_counter()
        summary["wall_seconds"] = round(now - started, 3)
        summary["report_seconds"] = (
            None if stats.report_started is None else round(now - stats.report_started, 3)
        )
    store.write_json(out / "summary.json", summary)
    tick(1)
    return summary, lines


def _validation_png(validation: ValidationRecord, out: Path) -> bytes | None:
    """``validation_curves.png`` (:func:`validation_figure`) if the check has curves."""
    if not validation["curves"]:
        return None
    return save_figure(validation_figure(validation), out / "validation_curves.png")
