"""The interactive, self-contained ``index.html``: the verdict first, what to do, then the map.

The page opens on one configuration, the *focus* (the seed's ``model.fit(xs, ys, epochs=500)``
by default; :mod:`src.focus`): its verdict, why, the simulated fixes, and its final loss against
the learning rate at its N for every optimizer of the map. Then every optimizer gets a heatmap
(lr across, N up), all sharing axes and one colour key in which the *status* is the colour:
blues for converged, yellow to orange for slow, hatched pink for diverging and near-black for
overflow (:data:`PALETTE`; the four stay apart under deuteranopia and protanopia). Inside the
stable statuses the final loss, relative to ``mean(y^2)``, is a secondary shade, clipped at
``tol / 1e4`` below and at the zero predictor's loss above, so float32 noise is never drawn.
The closed-form critical lr is a dashed line. The maps size themselves to the window and its
pixel ratio, zoom (buttons, Ctrl+wheel, double-click) and pan (drag); hovering a cell shows its
configuration and results, a click pins it and draws its loss curve (stored per displayed cell
at log-spaced epochs); a selector picks the value of every further swept axis. The data and the
script are inlined (no network, no library). Grids too large for a light page are thinned for
display -- never dropping the focus's row and column -- with a note saying so; the netCDF
beside the page always holds everything.
"""

from __future__ import annotations

import base64
import html
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from src import outcome
from src.findings import SEED_STABLE_N
from src.focus import SEED_FOCUS
from src.schema import extra_dims, optimal_loss, problem_of

if TYPE_CHECKING:
    from src.focus import Panel
    from src.schema import SampledLosses
    from src.validation import ValidationRecord

PALETTE = {
    "converged": ("#2c64c0", "#08306b"),
    "slow": ("#fbe89a", "#d98a00"),
    "diverging": ("#f5afe7", "#a0458e"),
    "overflow": ("#3a1c0e", "#3a1c0e"),
}
"""Colours of each status: the ends of its shade (converged: at the tolerance, then 1e4 times
lower; slow: just above the tolerance, then at the zero predictor's loss) or, for diverging,
the fill and its hatch (a pattern on top of the colour code, not part of it). Chosen so that
the shades and fills of every pair of statuses stay at least :data:`CVD_MIN_DISTANCE` apart
in CAM02-UCS for normal vision and under a full deuteranopia and protanopia simulation
(Machado et al. 2009, as the colorspacious package implements it), apart in lightness as well
as hue."""

CVD_MIN_DISTANCE = 25.0
"""The least CAM02-UCS distance between colours of different statuses, for normal vision and
under each simulated colour-vision deficiency (tested in ``tests/test_page.py``)."""

STATUS_COLOURS = {name: PALETTE[name][0] for name in ("diverging", "overflow")}
"""Flat colours of the statuses where training breaks, shared with the static figures."""

CONVERGED_SPAN = 4.0
"""Decades below the tolerance over which a converged cell's shade varies (then clipped)."""


def _rgb(colour: str) -> np.ndarray:
    return np.array([int(colour[k : k + 2], 16) for k in (1, 3, 5)]) / 255


def cell_colours(status: np.ndarray, relative_loss: np.ndarray, tol: float) -> np.ndarray:
    """RGB (0..1, shape ``status.shape + (3,)``) of cells as the page draws them: each
    status's colour (:data:`PALETTE`), shaded within converged and slow by ``relative_loss``
    (final loss / ``mean(y^2)``): converged from the tolerance down :data:`CONVERGED_SPAN`
    decades, slow from the tolerance up to 1 (the zero predictor's loss), clipped there."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.log10(np.maximum(np.asarray(relative_loss, np.float64), 1e-300)) - math.log10(tol)
    r = np.nan_to_num(r, nan=0.0)
    t = np.where(status == outcome.CONVERGED, -r / CONVERGED_SPAN, r / -math.log10(tol))
    t = np.clip(np.where((status == outcome.CONVERGED) | (status == outcome.SLOW), t, 0), 0, 1)
    out = np.zeros((*np.shape(status), 3))
    for code, name in enumerate(outcome.STATUSES):
        a, b = (_rgb(c) for c in PALETTE[name])
        here = status == code
        out[here] = a + t[here][:, None] * (b - a)
    return out


MAX_CELLS = 200_000
"""Displayed cells (optimizers x lr x N x slices) above which lr and N are thinned."""

MAX_CURVES = 40_000
"""Displayed cells with a stored loss curve, at most; beyond it every k-th row and column
has one, and a click shows the nearest stored curve (saying so)."""

CURVE_POINTS = 16
"""Log-spaced epochs at which a cell's stored loss curve is sampled."""

LOSS_DIGITS = 4
"""Significant figures of every loss and lr on the page (and as many are shown)."""

SLICE_DIMS = ("batch_size", "seed", "epochs")
"""The base axes with a selector; every swept hyperparameter of the map gets one too."""


def slice_dims(ds: xr.Dataset) -> tuple[str, ...]:
    """Every axis the page selects one value of: :data:`SLICE_DIMS`, then the map's swept
    hyperparameters (its dimensions after ``epochs``)."""
    return SLICE_DIMS + extra_dims(ds)


def _stride(ds: xr.Dataset) -> int:
    slices = math.prod(ds.sizes[d] for d in slice_dims(ds))
    cells = ds.sizes["optimizer"] * ds.sizes["lr"] * ds.sizes["n"] * slices
    return max(1, math.ceil(math.sqrt(cells / MAX_CELLS)))


def shown(size: int, stride: int, keep: Sequence[int]) -> list[int]:
    """The positions displayed along an axis of ``size``: every ``stride``-th, and ``keep``."""
    return sorted(set(range(0, size, stride)) | {int(k) for k in keep if 0 <= k < size})


def _round(a: np.ndarray, digits: int = LOSS_DIGITS) -> list:
    return [None if not math.isfinite(v) else float(f"{v:.{digits}g}") for v in a.ravel()]


def curve_epochs(epochs: int, points: int = CURVE_POINTS) -> np.ndarray:
    """The log-spaced epochs (from 1, ending at ``epochs``) a stored curve is sampled at."""
    return np.unique(np.round(np.geomspace(1, epochs, points)).astype(int))


def pack_curves(histories: Sequence[np.ndarray], epochs: np.ndarray) -> str:
    """Loss curves sampled at ``epochs``, as base64: per curve the range of its finite log10
    losses (two little-endian int16 in 1/1000 decades) and one byte per epoch within it
    (255: not finite). A 16-point curve costs 20 bytes; the shape is kept to 1/254 of its
    range, enough for a plot (the exact losses are in the netCDF). Every curve is packed at
    once, in arrays (a map's page holds tens of thousands of them)."""
    if not len(histories):
        return ""
    return pack_sampled(np.stack([np.asarray(h, np.float64)[epochs - 1] for h in histories]))


def pack_sampled(v: np.ndarray) -> str:
    """:func:`pack_curves` of curves already sampled: ``v`` is ``(curves, epochs)``."""
    if not len(v):
        return ""
    v = np.asarray(v, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.where(np.isfinite(v) & (v > 0), np.log10(np.abs(v)), np.nan)
    ok = np.isfinite(logs)
    seen = ok.any(axis=1)
    lowest = np.where(ok, logs, np.inf).min(axis=1, initial=np.inf)
    highest = np.where(ok, logs, -np.inf).max(axis=1, initial=-np.inf)
    # a curve with no finite loss gets the range 0..0 (and only 255s)
    lo = np.where(seen, np.floor(np.where(seen, lowest, 0) * 1000), 0)
    hi = np.where(seen, np.ceil(np.where(seen, highest, 0) * 1000), 0)
    lo, hi = (np.clip(x, -32768, 32767).astype(np.int64) for x in (lo, hi))
    span = np.maximum(hi - lo, 1)[:, None]
    q = np.where(ok, np.round((np.nan_to_num(logs) * 1000 - lo[:, None]) / span * 254), 255)
    ends = np.stack([lo, hi], axis=1).astype("<i2").view(np.uint8)
    packed = np.concatenate([ends, q.astype(np.uint8)], axis=1)
    return base64.b64encode(packed.tobytes()).decode()


def page_data(
    ds: xr.Dataset,
    focus: Panel | None = None,
    curves: bool = True,
    sampled: SampledLosses | None = None,
) -> dict[str, object]:
    """Everything the page's script draws, as JSON-ready lists (see the module docstring).
    ``sampled``: the map's own losses at the curve epochs, if its run kept them (see
    :func:`stored_curves`)."""
    k = _stride(ds)
    names = [str(o) for o in ds.optimizer.values]
    at = focus["index"] if focus is not None else None
    keep_n = [int(np.argmin(np.abs(ds.n.values - SEED_STABLE_N)))] if at is not None else []
    lr_idx = shown(ds.sizes["lr"], k, [] if at is None else [at["lr"]])
    n_idx = shown(ds.sizes["n"], k, ([] if at is None else [at["n"]]) + keep_n)
    view = ds.isel(lr=lr_idx, n=n_idx)
    dims = slice_dims(ds)
    slice_keys = list(itertools.product(*(range(ds.sizes[d]) for d in dims)))
    c = max(
        1,
        math.ceil(math.sqrt(len(names) * len(lr_idx) * len(n_idx) * len(slice_keys) / MAX_CURVES)),
    )
    slices = {}
    for idx in slice_keys:
        cell = view.isel(dict(zip(dims, idx, strict=True))).transpose(
            "optimizer", "n", "lr", ..., missing_dims="ignore"
        )
        slices[",".join(map(str, idx))] = {
            "status": "".join(map(str, cell.status.values.ravel())),
            "loss": _round(cell.final_loss.values.astype(np.float64)),
            "nonfinite": [int(v) for v in cell.first_nonfinite_epoch.values.ravel()],
            "prediction": _round(cell.prediction.values.astype(np.float64)),
            "critical": _round(cell.critical_lr.values.astype(np.float64)),
            "theory": _round(cell.theory_critical_lr.values.astype(np.float64)),
        }
        if cell.loss_scale.ndim == 1 and view.loss_scale.ndim > 1:  # per noise draw
            slices[",".join(map(str, idx))].update(
                scale=[float(v) for v in cell.loss_scale.values],
                optimal=[float(v) for v in optimal_loss(cell).values],
            )
    marks = []
    if at is not None:
        j_focus = n_idx.index(at["n"])
        marks.append([lr_idx.index(at["lr"]), j_focus, 1])
        if focus["requested"] == SEED_FOCUS.text and keep_n and keep_n[0] != at["n"]:
            marks.append([lr_idx.index(at["lr"]), n_idx.index(keep_n[0]), 0])
    data: dict[str, object] = {
        "optimizers": names,
        "lr": [float(v) for v in view.lr.values],
        "n": [int(v) for v in view.n.values],
        "slice_dims": list(dims),
        "axes": {d: [v.item() for v in ds[d].values] for d in dims},
        "statuses": list(outcome.STATUSES),
        "palette": [list(PALETTE[name]) for name in outcome.STATUSES],
        "tol": float(ds.attrs["tol"]),
        "span": CONVERGED_SPAN,
        "scale": [float(v) for v in _first_draw(view.loss_scale).values],
        "optimal": [float(v) for v in _first_draw(optimal_loss(view)).values],
        "query": problem_of(ds).query_words(),
        "marks": marks,
        "stride": k,
        "full_shape": {d: int(ds.sizes[d]) for d in ("lr", "n")},
        "slices": slices,
        "curve_step": c,
        "curves": {},
    }
    if at is not None:
        data["focus"] = {
            "o": at["optimizer"], "i": lr_idx.index(at["lr"]), "j": n_idx.index(at["n"]),
            "slice": ",".join(str(at[d]) for d in dims),
        }  # fmt: skip
        data["lr_slice"] = lr_slice(ds, focus)
    if curves:
        data["curves"] = stored_curves(ds, lr_idx, n_idx, c, sampled)
    return data


def _first_draw(per_n: xr.DataArray) -> xr.DataArray:
    """A per-N variable of the first noise draw (a map without noise: the variable)."""
    return per_n.isel({d: 0 for d in per_n.dims if d != "n"})


def stored_curves(
    ds: xr.Dataset,
    lr_idx: Sequence[int],
    n_idx: Sequence[int],
    step: int,
    sampled: SampledLosses | None = None,
) -> dict[str, dict[str, object]]:
    """Per slice: the displayed cells' loss curves (every ``step``-th displayed row and
    column), sampled at :func:`curve_epochs` and packed by :func:`pack_curves`, in
    (optimizer, N, lr) order.

    The curves are the map's own run's, from ``sampled``, where it holds every one of them;
    otherwise (a run resumed from saved chunks, a map too large to keep them, a map read back
    from its netCDF) the engine re-runs those configurations exactly as the map ran them
    (same kernel, order, seed): the same History, bit for bit, only slower (a few more
    compiled programs)."""
    dims = slice_dims(ds)
    indices, where = [], []
    for idx in itertools.product(*(range(ds.sizes[d]) for d in dims)):
        at = dict(zip(dims, idx, strict=True))
        for o in range(ds.sizes["optimizer"]):
            for j in n_idx[::step]:
                for i in lr_idx[::step]:
                    indices.append({"optimizer": o, "lr": i, "n": j, **at})
                    where.append(",".join(map(str, idx)))
    kept = _sampled_curves(ds, indices, where, sampled)
    if kept is not None:
        return kept
    from src.validation import engine_histories, picks_at

    picks = picks_at(ds, indices, "curve")
    if not picks:
        return {}
    histories = engine_histories(ds, picks).histories
    out: dict[str, dict[str, object]] = {}
    for key in dict.fromkeys(where):
        members = [h for h, w in zip(histories, where, strict=True) if w == key]
        epochs = curve_epochs(len(members[0]))
        out[key] = {"epochs": [int(e) for e in epochs], "data": pack_curves(members, epochs)}
    return out


def _sampled_curves(
    ds: xr.Dataset,
    indices: Sequence[Mapping[str, int]],
    where: Sequence[str],
    sampled: SampledLosses | None,
) -> dict[str, dict[str, object]] | None:
    """:func:`stored_curves` from the map's own sampled losses (``indices``: the cells'
    positions, ``where``: each one's slice key); ``None`` unless they hold every cell."""
    if sampled is None or not indices or len(sampled.recorded) != ds.status.size:
        return None
    dims = ds.status.dims
    flat = np.ravel_multi_index(
        tuple(np.array([at[d] for at in indices]) for d in dims), ds.status.shape
    )
    keys = np.array(where)
    epoch_axis = ds.epochs.values  # read once: an xarray lookup per cell costs ~0.1 ms
    epochs_of = {w: int(epoch_axis[at["epochs"]]) for at, w in zip(indices, where, strict=True)}
    out: dict[str, dict[str, object]] = {}
    for key in dict.fromkeys(where):
        epochs = curve_epochs(epochs_of[key])  # a slice has one epoch count: its History's
        values = sampled.at(flat[keys == key], epochs)
        if values is None:  # a cell the run did not compute (resumed): re-run them all
            return None
        out[key] = {"epochs": [int(e) for e in epochs], "data": pack_sampled(values)}
    return out


def lr_slice(ds: xr.Dataset, focus: Panel) -> dict[str, object]:
    """The final loss against every lr of the grid at the focus's N and slice, per optimizer,
    with each one's measured and closed-form critical lr and the convergence threshold."""
    at = {d: i for d, i in focus["index"].items() if d not in ("optimizer", "lr")}
    cut = ds.isel(at)
    return {
        "n": int(cut.n.item()),
        "lr": _round(ds.lr.values.astype(np.float64), 6),
        "threshold": float(ds.attrs["tol"]) * float(cut.loss_scale.item())
        + float(optimal_loss(cut).item()),
        "focus_lr": focus["lr"],
        "lines": [
            {
                "name": str(name),
                "loss": _round(cut.final_loss.sel(optimizer=name).values.astype(np.float64)),
                "status": "".join(map(str, cut.status.sel(optimizer=name).values.ravel())),
                "critical": _round(cut.critical_lr.sel(optimizer=name).values)[0],
                "theory": _round(cut.theory_critical_lr.sel(optimizer=name).values)[0],
            }
            for name in ds.optimizer.values
        ],
    }


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def order_sentence(attrs: Mapping[str, object]) -> str:
    """Which batch order the map shows, as a sentence for the page."""
    if int(attrs.get("shuffle", 0)):  # type: ignore[call-overload]
        return (
            "the samples are reshuffled every epoch, as model.fit(xs, ys, epochs=500) does by "
            "default; where minibatches are shuffled the closed form of a fixed order is drawn "
            "dotted, for comparison only."
        )
    return "the samples go in their order every epoch, as model.fit(..., shuffle=False)."


def focus_section(p: Panel | None) -> str:
    """The panel at the top of the page: the focus's verdict, why, the simulated fixes."""
    if p is None:
        return ""
    esc = html.escape
    extra = "".join(f", {k} {v:g}" for k, v in {**p["hyperparameters"], **p["extra"]}.items())
    config = (
        f"{p['optimizer']} at lr {p['lr']:.{LOSS_DIGITS}g}, N = {p['n']}, batch size "
        f"{p['batch_size']}, {p['epochs']} epochs, seed {p['seed']}{extra}"
    )
    stand_in = "" if p["exact"] else (
        f"<p class='note'>The grid lacks <code>{esc(p['requested'])}</code> exactly; shown "
        "at the nearest cell of the map.</p>"
    )  # fmt: skip
    rows = "".join(
        f"<tr class='{'works' if f['works'] else 'fails'}'><td>{esc(f['fix'])}</td>"
        f"<td><span class='sw s-{esc(f['status'])}'></span> {esc(f['status'])}</td>"
        f"<td>{_loss_words(f['final_loss'])}</td>"
        f"<td>{'works' if f['works'] else 'no'}</td></tr>"
        for f in p["fixes"]
    )
    fixes = (
        "<p>Nothing to fix: this run converges.</p>"
        if not p["fixes"]
        else f"<h3>What to change</h3><p>Each change simulated for {p['epochs']} epochs from "
        "the same start:</p><div class='wide'><table id='fixes'><tr><th>change</th>"
        f"<th>outcome</th><th>final loss</th><th>converges?</th></tr>{rows}</table></div>"
    )
    return f"""<section id="focus">
<h2>Your configuration: {esc(config)}</h2>{stand_in}
<p class="verdict"><span class="sw s-{esc(p["status"])}"></span> <b>{esc(p["verdict"])}</b></p>
<p><b>Why:</b> {esc(p["why"])}</p>
{fixes}
<h3>Final loss against the learning rate at N = {p["n"]}</h3>
<div class="plot"><canvas id="lr-slice" aria-label="final loss against learning rate"></canvas></div>
<p class="legend" id="lr-slice-legend"></p>
<details><summary>The whole diagnosis</summary><pre>{esc(chr(10).join(p["diagnosis"]))}</pre></details>
</section>"""


def _loss_words(v: float | None) -> str:
    return "inf/nan" if v is None else html.escape(f"{v:.{LOSS_DIGITS}g}")


def index_html(
    ds: xr.Dataset,
    summary: Mapping[str, object],
    lines: Sequence[str],
    table: Sequence[str],
    critical: Sequence[str],
    pngs: Mapping[str, bytes],
    validation: str = "",
    focus: Panel | None = None,
    curves: bool = True,
    data: Mapping[str, object] | None = None,
) -> str:
    """The page; ``pngs`` holds the static figures inlined beside the interactive maps,
    ``validation`` the HTML of :func:`validation_section` (none when empty) and ``focus`` the
    panel of :func:`src.focus.panel`; ``curves`` stores the displayed cells' loss curves.
    ``data``: :func:`page_data` of these arguments if the caller computed it already."""
    esc = html.escape
    data = page_data(ds, focus, curves) if data is None else data
    note = (
        f"<p class='note'>This grid ({data['full_shape']['lr']} learning rates x "
        f"{data['full_shape']['n']} dataset sizes) is shown with every {data['stride']}th lr "
        "and N (and the focus's own) to keep the page light; <code>stability_map.nc</code> "
        "holds every cell.</p>"
        if data["stride"] > 1
        else ""
    )
    meta = {k: v for k, v in summary.items() if k != "findings"}
    rules = outcome.explained(float(ds.attrs["tol"]), float(ds.attrs["diverge_factor"]))
    status_rows = "".join(f"<tr><td>{esc(a)}</td><td>{esc(b)}</td></tr>" for a, b in rules)
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    swatches = "".join(
        f".s-{name} {{ background: {PALETTE[name][0]}; }}" for name in outcome.STATUSES
    )
    seed_words = (
        "White dots: the focus (large) and, for the seed, N = 10 at the same lr."
        if data["marks"]
        else ""
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Stability map</title>
<style>{CSS}{swatches}</style></head><body>
<h1>Where is training stable?</h1>
<p>Keras <code>Sequential([Dense(1)])</code> trained with MSE by <code>model.fit</code> on
{esc(str(ds.attrs["problem"]))}. With <code>optimizer="sgd"</code> (lr 0.01) the loss grows every
epoch for N = 20 and converges for N = 10: the learning rate is above the stability limit of
gradient descent on this quadratic loss, a limit that shrinks as N grows. This map shows that limit
for {ds.sizes["optimizer"]} optimizers, {ds.sizes["lr"]} learning rates and {ds.sizes["n"]} dataset
sizes, simulated with a vectorized JAX replica of Keras's training loop
({esc(str(ds.attrs["dtype"]))}). Batch order: {esc(order_sentence(ds.attrs))}</p>
{focus_section(focus)}
<h2>Findings</h2>
<pre>{esc(chr(10).join(lines))}</pre>
<h2>The map</h2>
<p>Colour is the verdict; within converged and slow, the shade is the final loss (see the key).
Dashed: closed-form critical lr. {seed_words} Hover a cell for its numbers; click it for its
loss curve; zoom with the buttons, Ctrl+wheel or a double-click, drag to pan.
Static PNGs of every map are saved beside this page.</p>
<div id="controls"></div>{note}
<div id="zoom"><button type="button" id="zoom-in" aria-label="zoom in">+</button>
<button type="button" id="zoom-out" aria-label="zoom out">&minus;</button>
<button type="button" id="zoom-reset">whole map</button> <span id="view-range"></span></div>
<div id="maps"></div>
<div id="key"></div>
<div id="pinned" hidden><h3 id="curve-title"></h3>
<div class="plot"><canvas id="curve" aria-label="loss curve of the pinned cell"></canvas></div></div>
<div id="tip" role="tooltip"></div>
<h2>Loss curves</h2>
{_img(pngs["loss_curves.png"], "loss curves")}
<h2>Critical learning rate: measured and closed form</h2>
{_img(pngs["critical_lr.png"], "critical learning rate against N")}
<p>Measured: the smallest lr at which the run overflows or diverges, bisected from the grid to
{ds.critical_lr.attrs.get("long_name", "").split("bisection to ")[-1].split(" ")[0]} relative.
Closed form (SGD, momentum, Nesterov): 2 c(mu) / lambda_max for a full batch, the first lr at
which the epoch map's spectral radius exceeds 1 for minibatches in a fixed order.</p>
<pre class="table">{esc(chr(10).join(critical) or "no optimizer with a closed form in this map")}</pre>
<h2>Largest stable learning rate on the grid</h2>
<pre class="table">{esc(chr(10).join(table))}</pre>
{validation}
<h2>How each run is classified</h2>
<table>{status_rows}</table>
<h2>Run</h2>
<pre>{esc(json.dumps(meta, indent=2))}</pre>
<p>Data: <code>stability_map.nc</code> (xarray / netCDF, dims {esc(", ".join(ds.status.dims))}),
<code>summary.json</code>, <code>sweep.toml</code> (rerun it with <code>--config</code>).</p>
<script type="application/json" id="data">{payload}</script>
<script>{SCRIPT}</script>
</body></html>
"""


VALIDATION_COLUMNS = (
    ("optimizer", "optimizer"), ("lr", "lr"), ("n", "N"), ("batch_size", "batch"),
    ("seed", "seed"), ("epochs", "epochs"), ("hyperparameters", "hyperparameters"),
    ("stratum", "why"), ("status_jax", "JAX status"), ("status_keras", "Keras status"),
    ("agree", "agree"), ("max_rel_err", "max rel. loss diff."),
    ("float32_sensitivity", "float32 sensitivity"), ("sensitive", "sensitive"),
    ("first_nonfinite_epoch_jax", "first inf/nan epoch JAX"),
    ("first_nonfinite_epoch_keras", "Keras"), ("prediction_jax", "prediction JAX"),
    ("prediction_keras", "Keras"),
)  # fmt: skip
"""Columns of the validation table: record key and heading."""


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "<b>NO</b>"
    if isinstance(value, float):
        return html.escape(f"{value:.4g}") if math.isfinite(value) else "inf/nan"
    if isinstance(value, Mapping):
        return html.escape(", ".join(f"{k}={v:g}" for k, v in value.items()) or "Keras defaults")
    return html.escape(str(value))


def _flag(key: str, c: Mapping[str, object]) -> str:
    """A table cell; ``sensitive`` reads as a plain yes/no, not as a failure."""
    if key == "sensitive":
        return "yes" if c.get(key) else "no"
    return _cell(c.get(key))


def validation_section(record: ValidationRecord, png: bytes | None) -> str:
    """The page's "Checked against real Keras" section from a :mod:`src.validation` record."""
    from src.validation import (
        DONE,
        FLOAT32_AGREEMENT,
        MIN_LOSS,
        SENSITIVITY_ULPS,
        headline,
        sensitive_above,
    )

    esc = html.escape
    intro = (
        "<p>Configurations of this map trained again by real Keras <code>model.fit</code> "
        "(TensorFlow backend) from the same initial weights, and compared epoch by epoch with "
        "the JAX engine. Why each was picked: <i>seed</i>, the sweep's loss curves; "
        "<i>boundary</i>, the grid lr just below and just above a measured critical lr; "
        "<i>random</i>, anywhere on the map. The Keras status follows the map's rules; the "
        f"loss difference is the largest |JAX/Keras - 1| where both losses exceed {MIN_LOSS:g}."
        " <i>float32 sensitivity</i>: how far the engine's own loss moves when the learning "
        f"rate moves by up to {max(SENSITIVITY_ULPS)} ulp. Above "
        f"{sensitive_above(record.get('map_dtype', 'float32')):g} the run is "
        "<i>sensitive</i>: rounding decides its path (chaotic limit cycles, long exponential "
        "growth), two faithful float32 implementations part ways, and it is counted apart from "
        "the agreement totals. Measured on a random sample of 48 determined configurations "
        "(every optimizer, partial batches, other data and hyperparameters), float32 maps "
        f"agree with Keras to {FLOAT32_AGREEMENT:.1e} relative on the loss, and float64 maps "
        "to 1e-10 (measured 1e-14). Full figures: <code>validation.json</code>.</p>"
    )
    if record["status"] != DONE:
        return (
            f"<h2 id='validation'>Checked against real Keras</h2>\n<p class='note'>"
            f"{esc(headline(record))}</p>"
        )
    head = "".join(f"<th>{esc(title)}</th>" for _, title in VALIDATION_COLUMNS)
    rows = "".join(
        "<tr>"
        + "".join(
            f"<td>{'none' if key.startswith('first_') and c.get(key) == -1 else _flag(key, c)}</td>"
            for key, _ in VALIDATION_COLUMNS
        )
        + "</tr>"
        for c in record["configs"]
    )
    share = record["verdict_agreement"]
    agreement = "" if share is None else f" ({100 * share:.0f}%)"
    picture = "" if png is None else _img(png, "Keras and JAX loss curves")
    return f"""<h2 id="validation">Checked against real Keras</h2>
{intro}
<p><b>Verdicts agree for {record["agreed"]} of {record["determined"]} float32-determined configurations{agreement}.</b> {esc(headline(record))}</p>
<div class="wide"><table id="validation-table"><tr>{head}</tr>{rows}</table></div>
{picture}"""


CSS = """
body { font-family: system-ui, sans-serif; max-width: 1150px; margin: 1.5em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
pre { background: #f4f4f4; padding: .8em; overflow-x: auto; font-size: 13px; white-space: pre-wrap; }
pre.table { white-space: pre; }
img { max-width: 100%; height: auto; }
table { border-collapse: collapse; } td, th { border: 1px solid #ccc; padding: .2em .6em; }
#focus { border: 2px solid #444; border-radius: 6px; padding: 0 1em 1em; margin: 1em 0; }
#focus .verdict { font-size: 1.1em; }
#fixes tr.works td:last-child { font-weight: 600; }
#maps { display: grid; grid-template-columns: repeat(auto-fill, minmax(290px, 1fr)); gap: 8px; }
.map { margin: 0; min-width: 0; } .map figcaption { text-align: center; font-weight: 600; }
.map canvas, .plot canvas { display: block; width: 100%; touch-action: none; }
.map canvas { cursor: crosshair; }
.plot { max-width: 720px; }
#controls label { margin-right: 1.2em; display: inline-block; } .note { color: #8a4b00; }
#zoom { margin: .4em 0; } #zoom button { min-width: 2.2em; }
#key canvas { display: block; max-width: 100%; }
.wide { overflow-x: auto; font-size: 13px; max-width: 100%; }
.sw { display: inline-block; width: 1em; height: .8em; vertical-align: middle; border: 1px solid #0006; }
.s-diverging { background-image: repeating-linear-gradient(45deg, transparent 0 3px, #a0458e 3px 4px); }
#tip { position: fixed; display: none; pointer-events: none; background: #fff; border: 1px solid #888;
       padding: .4em .6em; font-size: 12px; box-shadow: 0 2px 6px #0003; white-space: pre; z-index: 9;
       max-width: calc(100vw - 16px); overflow: hidden; }
"""

SCRIPT = r"""
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const M = { l: 46, r: 8, t: 8, b: 34 };  // plot margins (CSS pixels)
const choice = Object.fromEntries(  // the reference slice, or the focus's
  D.slice_dims.map(d => [d, d === "epochs" ? D.axes.epochs.length - 1 : 0]));
if (D.focus) D.focus.slice.split(",").forEach((v, k) => { choice[D.slice_dims[k]] = +v; });
const nLr = D.lr.length, nN = D.n.length;
const full = { x0: 0, x1: nLr, y0: 0, y1: nN };
let view = { ...full }, pinned = null;
const LOGLR = D.lr.map(Math.log);
const fmt = (v, p = 4) => (+v).toPrecision(p).replace(/\.?0+(e|$)/, "$1");

function hex(c) { return [1, 3, 5].map(k => parseInt(c.slice(k, k + 2), 16)); }
function mix(a, b, t) {
  const x = hex(a), y = hex(b);
  return "rgb(" + x.map((v, k) => Math.round(v + (y[k] - v) * t)).join(",") + ")";
}
function shade(st, r) {  // status st, r = decades of loss / mean(y^2) above the tolerance
  const [a, b] = D.palette[st];
  if (st > 1) return a;
  // converged: from the tolerance down span decades; slow: up to the zero predictor's loss
  const t = st === 0 ? -r / D.span : r / -Math.log10(D.tol);
  return mix(a, b, Math.min(1, Math.max(0, t)));
}
function fill(st, loss, j) {  // shaded by the excess over the best fit, L*
  if (loss === null) return D.palette[st][0];
  return shade(st, Math.log10(Math.max(loss - optimalAt(j), 1e-300) / scaleAt(j)) - Math.log10(D.tol));
}
// mean(y^2) and L* at N (the slice's own where the map sweeps the targets' noise)
function scaleAt(j) { return (slice().scale || D.scale)[j]; }
function optimalAt(j) { return (slice().optimal || D.optimal)[j]; }
function threshold(j) { return D.tol * scaleAt(j) + optimalAt(j); }
function slice() { return D.slices[D.slice_dims.map(d => choice[d]).join(",")]; }
function sliceKey() { return D.slice_dims.map(d => choice[d]).join(","); }
function geom(c) {  // maps nearly square, plots wide
  const w = c.clientWidth, h = Math.round(w * (c.closest(".plot") ? 0.55 : 0.8));
  return { w, h, pw: w - M.l - M.r, ph: h - M.t - M.b };
}
function px(g, i) { return M.l + (i - view.x0) / (view.x1 - view.x0) * g.pw; }
function py(g, j) { return M.t + g.ph - (j - view.y0) / (view.y1 - view.y0) * g.ph; }
function lrIndex(lr) {  // fractional column of a learning rate (cell centres at k + 0.5)
  const v = Math.log(lr);
  if (nLr === 1) return 0.5;
  let k = 0;
  while (k < nLr - 2 && LOGLR[k + 1] < v) k++;
  return k + 0.5 + (v - LOGLR[k]) / (LOGLR[k + 1] - LOGLR[k]);
}
function size(c) {
  const g = geom(c), dpr = window.devicePixelRatio || 1;
  c.style.height = g.h + "px";
  if (c.width !== Math.round(g.w * dpr) || c.height !== Math.round(g.h * dpr)) {
    c.width = Math.round(g.w * dpr); c.height = Math.round(g.h * dpr);
  }
  const x = c.getContext("2d"); x.setTransform(dpr, 0, 0, dpr, 0, 0);
  return [g, x];
}
function hatch(x, x0, y0, w, h, colour) {
  x.save(); x.beginPath(); x.rect(x0, y0, w, h); x.clip();
  x.strokeStyle = colour; x.lineWidth = 1; x.beginPath();
  for (let d = -h; d < w; d += 5) { x.moveTo(x0 + d, y0 + h); x.lineTo(x0 + d + h, y0); }
  x.stroke(); x.restore();
}
function draw(c, o) {
  const s = slice(), [g, x] = size(c);
  x.clearRect(0, 0, g.w, g.h);
  x.save(); x.beginPath(); x.rect(M.l, M.t, g.pw, g.ph); x.clip();
  const i0 = Math.max(0, Math.floor(view.x0)), i1 = Math.min(nLr, Math.ceil(view.x1));
  const j0 = Math.max(0, Math.floor(view.y0)), j1 = Math.min(nN, Math.ceil(view.y1));
  const cw = g.pw / (view.x1 - view.x0), ch = g.ph / (view.y1 - view.y0);
  for (let j = j0; j < j1; j++) for (let i = i0; i < i1; i++) {
    const k = (o * nN + j) * nLr + i, st = +s.status[k];
    x.fillStyle = fill(st, s.loss[k], j);
    const X = Math.floor(px(g, i)), Y = Math.floor(py(g, j + 1));  // whole pixels: no seams
    x.fillRect(X, Y, Math.ceil(px(g, i + 1)) - X, Math.ceil(py(g, j)) - Y);
    if (st === 2 && cw > 5 && ch > 5) hatch(x, X, Y, cw, ch, D.palette[2][1]);
  }
  x.setLineDash([5, 3]); x.beginPath();
  let on = false;
  for (let j = j0; j < j1; j++) {
    const t = s.theory[o * nN + j];
    if (t === null || t < D.lr[0] || t > D.lr[nLr - 1]) { on = false; continue; }
    const X = px(g, lrIndex(t));
    if (on) x.lineTo(X, py(g, j)); else x.moveTo(X, py(g, j));
    x.lineTo(X, py(g, j + 1)); on = true;
  }
  x.strokeStyle = "#fff"; x.lineWidth = 3; x.stroke(); x.strokeStyle = "#000"; x.lineWidth = 1.3; x.stroke();
  x.setLineDash([]);
  for (const [i, j, big] of D.marks) {
    x.beginPath(); x.arc(px(g, i + 0.5), py(g, j + 0.5), big ? 5 : 3.5, 0, 2 * Math.PI);
    x.fillStyle = "#fff"; x.fill(); x.strokeStyle = "#000"; x.lineWidth = 1; x.stroke();
  }
  if (pinned && pinned.o === o) {
    x.strokeStyle = "#e00"; x.lineWidth = 2;
    x.strokeRect(px(g, pinned.i), py(g, pinned.j + 1), cw, ch);
  }
  x.restore();
  x.fillStyle = "#222"; x.font = "11px sans-serif"; x.textAlign = "center";
  const lo = Math.exp(LOGLR[i0]), hi = Math.exp(LOGLR[i1 - 1]);
  let decades = [];
  for (let e = Math.ceil(Math.log10(lo)); e <= Math.floor(Math.log10(hi)); e++) decades.push(Math.pow(10, e));
  if (decades.length < 2) decades = [lo, hi];
  for (const v of decades) {
    const X = px(g, lrIndex(v));
    if (X < M.l - 1 || X > M.l + g.pw + 1) continue;
    x.fillRect(X, M.t + g.ph, 1, 4); x.fillText(fmt(v, 2), X, M.t + g.ph + 15);
  }
  x.fillText("learning rate", M.l + g.pw / 2, g.h - 4);
  x.textAlign = "right";
  const step = Math.max(1, Math.ceil((j1 - j0) / 8));
  for (let j = j0; j < j1; j += step) x.fillText(D.n[j], M.l - 4, py(g, j + 0.5) + 4);
  x.save(); x.translate(11, M.t + g.ph / 2); x.rotate(-Math.PI / 2); x.textAlign = "center";
  x.fillText("dataset size N", 0, 0); x.restore();
}
function lossWords(v) { return v === null ? "inf/nan" : fmt(v); }
function describe(o, i, j) {
  const s = slice(), k = (o * nN + j) * nLr + i, c = o * nN + j;
  const crit = s.critical[c], th = s.theory[c];
  return [
    D.optimizers[o] + "  lr = " + fmt(D.lr[i]) + "  N = " + D.n[j],
    "batch size " + D.axes.batch_size[choice.batch_size] + ", seed " + D.axes.seed[choice.seed] +
      ", " + D.axes.epochs[choice.epochs] + " epochs" +
      D.slice_dims.slice(3).map(d => ", " + d + " " + D.axes[d][choice[d]]).join(""),
    "status: " + D.statuses[+s.status[k]],
    "final loss: " + lossWords(s.loss[k]) + "  (converged below " + fmt(threshold(j)) + ")" +
      (optimalAt(j) > 0 ? "\nbest fit L*: " + fmt(optimalAt(j)) : ""),
    "first inf/nan epoch: " + (s.nonfinite[k] < 0 ? "none" : s.nonfinite[k]),
    "prediction at " + D.query + ": " + lossWords(s.prediction[k]),
    "critical lr: " + (crit === null ? "none: nothing breaks on this grid" : fmt(crit)) +
      (th === null ? "" : " (closed form " + fmt(th) + ")"),
    "click: loss curve",
  ].join("\n");
}
function place(tip, cx, cy) {  // beside the pointer, flipped so that it stays in the window
  const r = tip.getBoundingClientRect(), pad = 8;
  let left = cx + 14, top = cy + 14;
  if (left + r.width > innerWidth - pad) left = cx - 14 - r.width;
  if (top + r.height > innerHeight - pad) top = cy - 14 - r.height;
  tip.style.left = Math.max(pad, Math.min(left, innerWidth - pad - r.width)) + "px";
  tip.style.top = Math.max(pad, Math.min(top, innerHeight - pad - r.height)) + "px";
}
function cellAt(c, ev) {
  const g = geom(c), r = c.getBoundingClientRect(), X = ev.clientX - r.left, Y = ev.clientY - r.top;
  if (X < M.l || X > M.l + g.pw || Y < M.t || Y > M.t + g.ph) return null;
  const i = Math.floor(view.x0 + (X - M.l) / g.pw * (view.x1 - view.x0));
  const j = Math.floor(view.y0 + (M.t + g.ph - Y) / g.ph * (view.y1 - view.y0));
  return i >= 0 && i < nLr && j >= 0 && j < nN ? { i, j, fx: (X - M.l) / g.pw, fy: (M.t + g.ph - Y) / g.ph } : null;
}
function setView(v) {
  const minW = Math.min(nLr, 3), minH = Math.min(nN, 3);
  let w = Math.min(full.x1, Math.max(minW, v.x1 - v.x0)), h = Math.min(full.y1, Math.max(minH, v.y1 - v.y0));
  let x0 = Math.min(Math.max(0, v.x0), full.x1 - w), y0 = Math.min(Math.max(0, v.y0), full.y1 - h);
  view = { x0, x1: x0 + w, y0, y1: y0 + h };
  const a = Math.max(0, Math.floor(view.x0)), b = Math.min(nLr, Math.ceil(view.x1)) - 1;
  const p = Math.max(0, Math.floor(view.y0)), q = Math.min(nN, Math.ceil(view.y1)) - 1;
  document.getElementById("view-range").textContent =
    "showing lr " + fmt(D.lr[a]) + " to " + fmt(D.lr[b]) + " (" + (b - a + 1) + " of " + nLr +
    "), N " + D.n[p] + " to " + D.n[q] + " (" + (q - p + 1) + " of " + nN + ")";
  redraw();
}
function zoom(f, fx = 0.5, fy = 0.5) {
  const w = (view.x1 - view.x0) * f, h = (view.y1 - view.y0) * f;
  const cx = view.x0 + fx * (view.x1 - view.x0), cy = view.y0 + fy * (view.y1 - view.y0);
  setView({ x0: cx - fx * w, x1: cx - fx * w + w, y0: cy - fy * h, y1: cy - fy * h + h });
}
function curveOf(o, i, j) {  // the stored curve of a cell, or of the nearest cell with one
  const st = D.curve_step, C = D.curves[sliceKey()];
  if (!C) return null;
  const cols = Math.ceil(nLr / st), rows = Math.ceil(nN / st);
  const a = Math.min(cols - 1, Math.round(i / st)), b = Math.min(rows - 1, Math.round(j / st));
  const bytes = atob(C.data), m = C.epochs.length, at = ((o * rows + b) * cols + a) * (4 + m);
  const i16 = k => { const v = bytes.charCodeAt(at + k) | bytes.charCodeAt(at + k + 1) << 8; return v > 32767 ? v - 65536 : v; };
  const lo = i16(0), hi = i16(2), logs = [];
  for (let k = 0; k < m; k++) {
    const q = bytes.charCodeAt(at + 4 + k);
    logs.push(q === 255 ? null : (lo + q / 254 * Math.max(hi - lo, 1)) / 1000);
  }
  return { epochs: C.epochs, logs, i: a * st, j: b * st };
}
function drawCurve() {
  const box = document.getElementById("pinned");
  if (!pinned) { box.hidden = true; return; }
  box.hidden = false;
  const { o, i, j } = pinned, s = slice(), k = (o * nN + j) * nLr + i, cur = curveOf(o, i, j);
  const c = document.getElementById("curve"), [g, x] = size(c);
  let title = D.optimizers[o] + ", lr " + fmt(D.lr[i]) + ", N " + D.n[j] + ": " + D.statuses[+s.status[k]];
  if (cur && (cur.i !== i || cur.j !== j)) title += " (curve of the nearest stored cell, lr " + fmt(D.lr[cur.i]) + ", N " + D.n[cur.j] + ")";
  document.getElementById("curve-title").textContent = title;
  x.clearRect(0, 0, g.w, g.h);
  if (!cur) { x.fillText("no stored curve", M.l + 10, M.t + 20); return; }
  const thr = Math.log10(threshold(j));
  const fin = cur.logs.filter(v => v !== null).concat([thr]);
  const ylo = Math.min(...fin) - 0.3, yhi = Math.max(...fin) + 0.3, E = cur.epochs[cur.epochs.length - 1];
  const X = e => M.l + Math.log(e) / Math.log(Math.max(E, 2)) * g.pw;
  const Y = v => M.t + g.ph - (v - ylo) / (yhi - ylo) * g.ph;
  x.strokeStyle = "#888"; x.setLineDash([4, 3]); x.beginPath(); x.moveTo(M.l, Y(thr)); x.lineTo(M.l + g.pw, Y(thr)); x.stroke();
  x.setLineDash([]); x.strokeStyle = "#0b3d91"; x.lineWidth = 2; x.beginPath();
  let on = false;
  cur.epochs.forEach((e, k) => { const v = cur.logs[k]; if (v === null) { on = false; return; }
    if (on) x.lineTo(X(e), Y(v)); else x.moveTo(X(e), Y(v)); on = true; });
  x.stroke();
  x.fillStyle = "#222"; x.font = "11px sans-serif"; x.textAlign = "left";
  x.fillText("converged below " + fmt(Math.pow(10, thr), 3), M.l + 4, Y(thr) - 4);
  const bad = s.nonfinite[k];
  if (bad > 0) {
    const bx = X(bad);
    x.strokeStyle = "#c00"; x.lineWidth = 2; x.beginPath();
    x.moveTo(bx - 5, M.t + 3); x.lineTo(bx + 5, M.t + 13); x.moveTo(bx + 5, M.t + 3); x.lineTo(bx - 5, M.t + 13); x.stroke();
    x.fillStyle = "#c00"; x.textAlign = bx > M.l + g.pw / 2 ? "right" : "left";
    x.fillText("inf/nan from epoch " + bad, bx + (x.textAlign === "right" ? -8 : 8), M.t + 12);
  }
  x.fillStyle = "#222"; x.textAlign = "center";
  for (let e = 1; e <= E; e *= 10) { x.fillRect(X(e), M.t + g.ph, 1, 4); x.fillText(e, X(e), M.t + g.ph + 15); }
  x.fillText("epoch", M.l + g.pw / 2, g.h - 4);
  x.textAlign = "right";
  for (let v = Math.ceil(ylo); v <= Math.floor(yhi); v += Math.max(1, Math.ceil((yhi - ylo) / 6))) {
    x.fillText("1e" + v, M.l - 4, Y(v) + 4);
  }
  x.save(); x.translate(11, M.t + g.ph / 2); x.rotate(-Math.PI / 2); x.textAlign = "center";
  x.fillText("loss", 0, 0); x.restore();
}
const tip = document.getElementById("tip");
const canvases = D.optimizers.map((name, o) => {
  const fig = document.createElement("figure"); fig.className = "map";
  const cap = document.createElement("figcaption"); cap.textContent = name;
  const c = document.createElement("canvas"); c.dataset.optimizer = name;
  fig.append(cap, c); document.getElementById("maps").append(fig);
  let drag = null;
  c.addEventListener("pointerdown", ev => { drag = { x: ev.clientX, y: ev.clientY, v: { ...view }, moved: false }; c.setPointerCapture(ev.pointerId); });
  c.addEventListener("pointermove", ev => {
    if (drag && (Math.abs(ev.clientX - drag.x) > 4 || Math.abs(ev.clientY - drag.y) > 4)) {
      const g = geom(c), dx = (ev.clientX - drag.x) / g.pw * (drag.v.x1 - drag.v.x0), dy = (ev.clientY - drag.y) / g.ph * (drag.v.y1 - drag.v.y0);
      drag.moved = true; tip.style.display = "none";
      setView({ x0: drag.v.x0 - dx, x1: drag.v.x1 - dx, y0: drag.v.y0 + dy, y1: drag.v.y1 + dy });
      return;
    }
    const at = cellAt(c, ev);
    if (!at) { tip.style.display = "none"; return; }
    tip.textContent = describe(o, at.i, at.j); tip.style.display = "block";
    place(tip, ev.clientX, ev.clientY);
  });
  c.addEventListener("pointerup", ev => {
    const wasDrag = drag && drag.moved; drag = null;
    if (wasDrag) return;
    const at = cellAt(c, ev);
    if (at) { pinned = { o, i: at.i, j: at.j }; redraw(); }
  });
  c.addEventListener("mouseleave", () => { tip.style.display = "none"; });
  c.addEventListener("dblclick", ev => { const at = cellAt(c, ev); if (at) zoom(0.5, at.fx, at.fy); });
  c.addEventListener("wheel", ev => {
    if (!ev.ctrlKey) return;
    ev.preventDefault(); const at = cellAt(c, ev);
    zoom(ev.deltaY > 0 ? 1.25 : 0.8, at ? at.fx : 0.5, at ? at.fy : 0.5);
  }, { passive: false });
  return c;
});
function drawSlice() {  // final loss against lr at the focus's N, one line per optimizer
  const S = D.lr_slice, c = document.getElementById("lr-slice");
  if (!S || !c) return;
  const [g, x] = size(c), COL = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#999933"];
  const DASH = [[], [6, 3], [2, 2], [8, 3, 2, 3], [1, 3], [10, 4]];
  const all = S.lines.flatMap(l => l.loss.filter(v => v !== null && v > 0)).concat([S.threshold]);
  const ylo = Math.log10(Math.max(Math.min(...all), S.threshold * 1e-4)) - 0.3;
  const yhi = Math.min(Math.log10(Math.max(...all)), 30) + 0.8;
  const a = Math.log(S.lr[0]), b = Math.log(S.lr[S.lr.length - 1]);
  const X = lr => M.l + (Math.log(lr) - a) / (b - a || 1) * g.pw;
  const Y = v => M.t + g.ph - (Math.min(Math.max(v, ylo), yhi) - ylo) / (yhi - ylo) * g.ph;
  x.clearRect(0, 0, g.w, g.h);
  x.strokeStyle = "#888"; x.setLineDash([4, 3]); x.lineWidth = 1;
  x.beginPath(); x.moveTo(M.l, Y(Math.log10(S.threshold))); x.lineTo(M.l + g.pw, Y(Math.log10(S.threshold))); x.stroke();
  x.setLineDash([]); x.fillStyle = "#555"; x.font = "11px sans-serif";
  x.fillText("converged below", M.l + 4, Y(Math.log10(S.threshold)) + 13);
  const legend = [];
  S.lines.forEach((l, o) => {
    const col = COL[o % COL.length];
    x.strokeStyle = col; x.lineWidth = 1.8; x.setLineDash(DASH[o % DASH.length]); x.beginPath();
    let on = false;
    l.loss.forEach((v, k) => {
      const st = +l.status[k];
      if (v === null || st === 3) { on = false; return; }
      const X0 = X(S.lr[k]), Y0 = Y(Math.log10(Math.max(v, 1e-300)));
      if (on) x.lineTo(X0, Y0); else x.moveTo(X0, Y0); on = true;
    });
    x.stroke(); x.setLineDash([]);
    l.loss.forEach((v, k) => { if (+l.status[k] === 3) {
      const X0 = X(S.lr[k]), Y0 = M.t + 6; x.beginPath(); x.moveTo(X0 - 3, Y0 - 3); x.lineTo(X0 + 3, Y0 + 3);
      x.moveTo(X0 + 3, Y0 - 3); x.lineTo(X0 - 3, Y0 + 3); x.stroke(); } });
    const crit = l.theory !== null ? l.theory : l.critical;
    if (crit !== null && crit >= S.lr[0] && crit <= S.lr[S.lr.length - 1]) {
      x.setLineDash([2, 3]); x.beginPath(); x.moveTo(X(crit), M.t); x.lineTo(X(crit), M.t + g.ph); x.stroke(); x.setLineDash([]);
    }
    legend.push("<span style='color:" + col + "'>&#9644;</span> " + l.name +
      (crit === null ? " (no break on the grid)" : " (critical lr " + fmt(crit) + ")"));
  });
  x.strokeStyle = "#000"; x.lineWidth = 2; x.beginPath(); x.moveTo(X(S.focus_lr), M.t); x.lineTo(X(S.focus_lr), M.t + g.ph); x.stroke();
  x.fillStyle = "#000"; x.fillText("your lr " + fmt(S.focus_lr), Math.min(X(S.focus_lr) + 4, M.l + g.pw - 80), M.t + 24);
  x.fillStyle = "#222"; x.textAlign = "center";
  for (let e = Math.ceil(a / Math.LN10); e <= Math.floor(b / Math.LN10); e++) {
    x.fillRect(X(Math.pow(10, e)), M.t + g.ph, 1, 4); x.fillText("1e" + e, X(Math.pow(10, e)), M.t + g.ph + 15);
  }
  x.fillText("learning rate (x: overflow)", M.l + g.pw / 2, g.h - 4);
  x.textAlign = "right";
  for (let v = Math.ceil(ylo); v <= Math.floor(yhi); v += Math.max(1, Math.ceil((yhi - ylo) / 6))) x.fillText("1e" + v, M.l - 4, Y(v) + 4);
  x.save(); x.translate(11, M.t + g.ph / 2); x.rotate(-Math.PI / 2); x.textAlign = "center";
  x.fillText("final loss", 0, 0); x.restore();
  document.getElementById("lr-slice-legend").innerHTML = legend.join(" &nbsp; ") +
    " &nbsp; <b>|</b> your lr; dotted: critical lr";
}
function drawKey() {  // the colour key: the loss shades of converged and slow, then the rest
  const c = document.querySelector("#key canvas") || document.getElementById("key").appendChild(document.createElement("canvas"));
  const w = Math.min(560, document.getElementById("key").clientWidth || 560), h = 58, dpr = window.devicePixelRatio || 1;
  c.width = w * dpr; c.height = h * dpr; c.style.width = w + "px"; c.style.height = h + "px";
  const x = c.getContext("2d"); x.setTransform(dpr, 0, 0, dpr, 0, 0);
  const lo = Math.log10(D.tol) - D.span, mid = Math.log10(D.tol), bar = w - 136, X = v => 18 + (v - lo) / (0 - lo) * bar;
  for (let k = 0; k < 64; k++) {
    const v = lo + (0 - lo) * (k + 0.5) / 64;
    x.fillStyle = shade(v < mid ? 0 : 1, v - mid);
    x.fillRect(X(lo + (0 - lo) * k / 64), 4, bar / 64 + 1, 14);
  }
  x.fillStyle = "#222"; x.font = "11px sans-serif"; x.textAlign = "center";
  for (let v = Math.ceil(lo); v <= 0; v++) { x.fillRect(X(v), 18, 1, 4); x.fillText("1e" + v, X(v), 33); }
  x.fillText("final loss / mean(y\u00b2): converged (blue) | slow (yellow), tol = " + fmt(D.tol), 18 + bar / 2, 50);
  x.textAlign = "left";
  x.fillStyle = D.palette[2][0]; x.fillRect(w - 104, 4, 14, 14); hatch(x, w - 104, 4, 14, 14, D.palette[2][1]);
  x.fillStyle = "#222"; x.fillText("diverging", w - 86, 15);
  x.fillStyle = D.palette[3][0]; x.fillRect(w - 104, 24, 14, 14);
  x.fillStyle = "#222"; x.fillText("overflow", w - 86, 35);
}
function redraw() { canvases.forEach((c, o) => draw(c, o)); drawCurve(); }
for (const [axis, values] of Object.entries(D.axes)) {
  if (values.length < 2) continue;
  const label = document.createElement("label"), sel = document.createElement("select");
  sel.id = "select-" + axis;
  values.forEach((v, i) => sel.add(new Option(v, i, false, i === choice[axis])));
  sel.addEventListener("change", () => { choice[axis] = +sel.value; redraw(); });
  const name = D.slice_dims.indexOf(axis) < 3 ? axis.replace("_", " ") : axis;
  label.append(name + ": ", sel); document.getElementById("controls").append(label);
}
document.getElementById("zoom-in").addEventListener("click", () => zoom(0.5));
document.getElementById("zoom-out").addEventListener("click", () => zoom(2));
document.getElementById("zoom-reset").addEventListener("click", () => setView({ ...full }));
let resized = null;
window.addEventListener("resize", () => { clearTimeout(resized); resized = setTimeout(() => { redraw(); drawSlice(); drawKey(); }, 60); });
drawKey(); drawSlice(); setView({ ...full });
"""
