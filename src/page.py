"""The interactive, self-contained ``index.html``: heatmaps you can hover, in one offline file.

Every optimizer gets a canvas heatmap (lr across, N up), all sharing axes and one colour scale:
cividis for log10 of the final loss where the run stayed finite and did not diverge, vermillion
for overflow, purple for diverging, and the closed-form critical lr as a dashed line. Hovering a
cell shows its configuration and results; a selector picks the value of every further swept axis
(batch size, seed, epochs, and every swept optimizer hyperparameter). The data and the script are inlined (no network, no library), and
grids too large for a light page are downsampled for display -- with a note saying so; the
netCDF beside the page always holds everything.
"""

from __future__ import annotations

import base64
import html
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import matplotlib as mpl
import numpy as np
import xarray as xr

from src import outcome
from src.findings import SEED_N, SEED_STABLE_N
from src.problem import QUERY_X
from src.schema import extra_dims
from src.spec import SEED_LR

if TYPE_CHECKING:
    from src.validation import ValidationRecord

STATUS_COLOURS = {"diverging": "#CC79A7", "overflow": "#D55E00"}
"""Flat colours of the statuses where training breaks (:data:`src.outcome.BREAKING`), shared by
the page and the figures; stable cells are shaded by their loss. Okabe-Ito reddish purple and
vermillion: distinct from cividis and from each other."""

MAX_CELLS = 200_000
"""Displayed cells (optimizers x lr x N x slices) above which lr and N are thinned."""

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


def _round(a: np.ndarray, digits: int) -> list:
    return [None if not math.isfinite(v) else float(f"{v:.{digits}g}") for v in a.ravel()]


def page_data(ds: xr.Dataset, limits: tuple[float, float]) -> dict[str, object]:
    """Everything the page's script draws, as JSON-ready lists (see the module docstring)."""
    k = _stride(ds)
    view = ds.isel(lr=slice(None, None, k), n=slice(None, None, k))
    cmap = mpl.colormaps["cividis"]
    slices = {}
    dims = slice_dims(ds)
    for idx in itertools.product(*(range(ds.sizes[d]) for d in dims)):
        cell = view.isel(dict(zip(dims, idx, strict=True))).transpose(
            "optimizer", "n", "lr", ..., missing_dims="ignore"
        )
        with np.errstate(divide="ignore", invalid="ignore"):
            log_loss = np.log10(cell.final_loss.values.astype(np.float64))
        slices[",".join(map(str, idx))] = {
            "status": "".join(map(str, cell.status.values.ravel())),
            "log_loss": _round(log_loss, 3),
            "nonfinite": [int(v) for v in cell.first_nonfinite_epoch.values.ravel()],
            "prediction": _round(cell.prediction.values.astype(np.float64), 5),
            "critical": _round(cell.critical_lr.values.astype(np.float64), 5),
            "theory": _round(cell.theory_critical_lr.values.astype(np.float64), 5),
        }
    return {
        "optimizers": [str(o) for o in view.optimizer.values],
        "lr": [float(v) for v in view.lr.values],
        "n": [int(v) for v in view.n.values],
        "slice_dims": list(dims),
        "axes": {d: [v.item() for v in ds[d].values] for d in dims},
        "statuses": list(outcome.STATUSES),
        "status_colours": [STATUS_COLOURS.get(name) for name in outcome.STATUSES],
        "limits": list(limits),
        "cmap": [mpl.colors.to_hex(cmap(t)) for t in np.linspace(0, 1, 32)],
        "query_x": QUERY_X,
        "marks": [[SEED_LR, n] for n in (SEED_N, SEED_STABLE_N) if n in view.n.values]
        if np.any(np.isclose(view.lr.values, SEED_LR))
        else [],
        "stride": k,
        "full_shape": {d: int(ds.sizes[d]) for d in ("lr", "n")},
        "slices": slices,
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


def index_html(
    ds: xr.Dataset,
    summary: Mapping[str, object],
    lines: Sequence[str],
    table: Sequence[str],
    critical: Sequence[str],
    pngs: Mapping[str, bytes],
    limits: tuple[float, float],
    validation: str = "",
) -> str:
    """The page; ``pngs`` holds the static figures inlined beside the interactive maps and
    ``validation`` the HTML of :func:`validation_section` (none when empty)."""
    esc = html.escape
    data = page_data(ds, limits)
    note = (
        f"<p class='note'>This grid ({data['full_shape']['lr']} learning rates x "
        f"{data['full_shape']['n']} dataset sizes) is shown with every {data['stride']}th lr "
        "and N to keep the page light; <code>stability_map.nc</code> holds every cell.</p>"
        if data["stride"] > 1
        else ""
    )
    meta = {k: v for k, v in summary.items() if k != "findings"}
    rules = outcome.explained(float(ds.attrs["tol"]), float(ds.attrs["diverge_factor"]))
    swatches = "; ".join(
        f'<span class="sw" style="background:{c}"></span> {name}'
        for name, c in reversed(STATUS_COLOURS.items())
    )
    status_rows = "".join(f"<tr><td>{esc(a)}</td><td>{esc(b)}</td></tr>" for a, b in rules)
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Stability map</title>
<style>{CSS}</style></head><body>
<h1>Where is training stable?</h1>
<p>Keras <code>Sequential([Dense(1)])</code> trained with MSE by <code>model.fit</code> on
{esc(str(ds.attrs["problem"]))}. With <code>optimizer="sgd"</code> (lr 0.01) the loss grows every
epoch for N = 20 and converges for N = 10: the learning rate is above the stability limit of
gradient descent on this quadratic loss, a limit that shrinks as N grows. This map shows that limit
for {ds.sizes["optimizer"]} optimizers, {ds.sizes["lr"]} learning rates and {ds.sizes["n"]} dataset
sizes, simulated with a vectorized JAX replica of Keras's training loop
({esc(str(ds.attrs["dtype"]))}). Batch order: {esc(order_sentence(ds.attrs))}</p>
<h2>Findings</h2>
<pre>{esc(chr(10).join(lines))}</pre>
<h2>The map</h2>
<p>Hover a cell for its configuration and results. Colour: log10 of the final loss (runs that
stayed finite and did not diverge); {swatches}; dashed: closed-form critical lr; white dots: the seed, lr 0.01 at N = 20 (large) and
N = 10.
Static PNGs of every map are saved beside this page.</p>
<div id="controls"></div>{note}
<div id="maps"></div>
<div id="colorbar"></div>
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
        return html.escape(f"{value:.4g}") if math.isfinite(value) else "not finite"
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
body { font-family: system-ui, sans-serif; max-width: 1150px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
pre { background: #f4f4f4; padding: .8em; overflow-x: auto; font-size: 13px; white-space: pre-wrap; }
pre.table { white-space: pre; }
img { max-width: 100%; }
table { border-collapse: collapse; } td, th { border: 1px solid #ccc; padding: .2em .6em; }
#maps { display: flex; flex-wrap: wrap; gap: 8px; }
.map { margin: 0; } .map figcaption { text-align: center; font-weight: 600; }
.map canvas { cursor: crosshair; }
#controls label { margin-right: 1.2em; } .note { color: #8a4b00; }
.wide { overflow-x: auto; font-size: 13px; }
.sw { display: inline-block; width: 1em; height: .8em; vertical-align: middle; }
#tip { position: fixed; display: none; pointer-events: none; background: #fff; border: 1px solid #888;
       padding: .4em .6em; font-size: 12px; box-shadow: 0 2px 6px #0003; white-space: pre; z-index: 9; }
"""

SCRIPT = r"""
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const W = 330, H = 260, L = 46, B = 34, T = 8, R = 8;   // canvas size and margins
const choice = Object.fromEntries(  // the reference slice: the largest epochs, else the first
  D.slice_dims.map(d => [d, d === "epochs" ? D.axes.epochs.length - 1 : 0]));
const nLr = D.lr.length, nN = D.n.length;

function colour(logLoss) {
  if (logLoss === null) return D.cmap[0];
  const [lo, hi] = D.limits;
  const t = Math.min(1, Math.max(0, (logLoss - lo) / (hi - lo || 1)));
  return D.cmap[Math.round(t * (D.cmap.length - 1))];
}
function slice() {
  return D.slices[D.slice_dims.map(d => choice[d]).join(",")];
}
function cellX(i) { return L + (W - L - R) * i / nLr; }
function cellY(j) { return H - B - (H - B - T) * (j + 1) / nN; }
function lrX(lr) {  // position of a learning rate on the (log-uniform) grid axis
  const a = Math.log(D.lr[0]), b = Math.log(D.lr[nLr - 1]);
  const f = nLr > 1 ? (Math.log(lr) - a) / (b - a) * (nLr - 1) : 0;
  return cellX(f + 0.5);
}
function draw(canvas, o) {
  const s = slice(), g = canvas.getContext("2d");
  g.clearRect(0, 0, W, H);
  const cw = (W - L - R) / nLr + 0.5, ch = (H - B - T) / nN + 0.5;
  for (let j = 0; j < nN; j++) for (let i = 0; i < nLr; i++) {
    const k = (o * nN + j) * nLr + i, st = +s.status[k];
    g.fillStyle = D.status_colours[st] || colour(s.log_loss[k]);
    g.fillRect(cellX(i), cellY(j), cw, ch);
  }
  g.setLineDash([5, 3]); g.lineWidth = 1.5; g.beginPath();
  let drawing = false;
  for (let j = 0; j < nN; j++) {
    const t = s.theory[o * nN + j];
    if (t === null || t < D.lr[0] || t > D.lr[nLr - 1]) { drawing = false; continue; }
    const x = lrX(t), y0 = cellY(j), y1 = y0 + (H - B - T) / nN;
    if (drawing) g.lineTo(x, y1); else g.moveTo(x, y1);
    g.lineTo(x, y0); drawing = true;
  }
  g.strokeStyle = "#fff"; g.lineWidth = 3; g.stroke(); g.strokeStyle = "#000"; g.lineWidth = 1.3; g.stroke();
  g.setLineDash([]);
  for (const [lr, n] of D.marks) {  // the seed: lr 0.01 at N = 20 (larger) and N = 10
    const j = D.n.indexOf(n), y = cellY(j) + (H - B - T) / nN / 2;
    g.beginPath(); g.arc(lrX(lr), y, n === D.marks[0][1] ? 5 : 3.5, 0, 2 * Math.PI);
    g.fillStyle = "#fff"; g.fill(); g.strokeStyle = "#000"; g.lineWidth = 1; g.stroke();
  }
  g.fillStyle = "#222"; g.font = "11px sans-serif"; g.textAlign = "center";
  for (let e = Math.ceil(Math.log10(D.lr[0])); e <= Math.floor(Math.log10(D.lr[nLr - 1])); e++) {
    const x = lrX(Math.pow(10, e));
    g.fillRect(x, H - B, 1, 4); g.fillText("1e" + e, x, H - B + 15);
  }
  g.fillText("learning rate", (L + W - R) / 2, H - 4);
  g.textAlign = "right";
  const step = Math.max(1, Math.ceil(nN / 8));
  for (let j = 0; j < nN; j += step) g.fillText(D.n[j], L - 4, cellY(j) + (H - B - T) / nN / 2 + 4);
  g.save(); g.translate(11, (H - B) / 2); g.rotate(-Math.PI / 2); g.textAlign = "center";
  g.fillText("dataset size N", 0, 0); g.restore();
}
function describe(o, i, j) {
  const s = slice(), k = (o * nN + j) * nLr + i, c = o * nN + j;
  const fmt = v => v === null ? "not finite" : (+v).toPrecision(4);
  const loss = s.log_loss[k] === null ? "not finite" : Math.pow(10, s.log_loss[k]).toPrecision(4);
  return [
    D.optimizers[o] + "  lr = " + D.lr[i].toPrecision(4) + "  N = " + D.n[j],
    "batch size " + D.axes.batch_size[choice.batch_size] + ", seed " + D.axes.seed[choice.seed] +
      ", " + D.axes.epochs[choice.epochs] + " epochs" +
      D.slice_dims.slice(3).map(d => ", " + d + " " + D.axes[d][choice[d]]).join(""),
    "status: " + D.statuses[+s.status[k]],
    "final loss: " + loss,
    "first non-finite epoch: " + (s.nonfinite[k] < 0 ? "none" : s.nonfinite[k]),
    "prediction at x = " + D.query_x + ": " + fmt(s.prediction[k]),
    "critical lr: " + fmt(s.critical[c]) + (s.theory[c] === null ? "" : " (theory " + fmt(s.theory[c]) + ")"),
  ].join("\n");
}
const canvases = D.optimizers.map((name, o) => {
  const fig = document.createElement("figure"); fig.className = "map";
  const cap = document.createElement("figcaption"); cap.textContent = name;
  const c = document.createElement("canvas"); c.width = W; c.height = H; c.dataset.optimizer = name;
  fig.append(cap, c); document.getElementById("maps").append(fig);
  const tip = document.getElementById("tip");
  c.addEventListener("mousemove", ev => {
    const r = c.getBoundingClientRect(), x = ev.clientX - r.left, y = ev.clientY - r.top;
    const i = Math.floor((x - L) / (W - L - R) * nLr), j = Math.floor((H - B - y) / (H - B - T) * nN);
    if (i < 0 || i >= nLr || j < 0 || j >= nN) { tip.style.display = "none"; return; }
    tip.textContent = describe(o, i, j);
    tip.style.left = (ev.clientX + 14) + "px"; tip.style.top = (ev.clientY + 14) + "px";
    tip.style.display = "block";
  });
  c.addEventListener("mouseleave", () => { tip.style.display = "none"; });
  return c;
});
function redraw() { canvases.forEach((c, o) => draw(c, o)); }
for (const [axis, values] of Object.entries(D.axes)) {
  if (values.length < 2) continue;
  const label = document.createElement("label"), sel = document.createElement("select");
  sel.id = "select-" + axis;
  values.forEach((v, i) => sel.add(new Option(v, i, false, i === choice[axis])));
  sel.addEventListener("change", () => { choice[axis] = +sel.value; redraw(); });
  const name = D.slice_dims.indexOf(axis) < 3 ? axis.replace("_", " ") : axis;
  label.append(name + ": ", sel); document.getElementById("controls").append(label);
}
(function colorbar() {
  const c = document.createElement("canvas"); c.width = 420; c.height = 34;
  const g = c.getContext("2d");
  D.cmap.forEach((col, i) => { g.fillStyle = col; g.fillRect(10 + i * 400 / D.cmap.length, 2, 400 / D.cmap.length + 1, 12); });
  g.fillStyle = "#222"; g.font = "11px sans-serif";
  g.fillText("log10 final loss " + D.limits[0].toFixed(1), 10, 28);
  g.textAlign = "right"; g.fillText(D.limits[1].toFixed(1), 410, 28);
  document.getElementById("colorbar").append(c);
})();
redraw();
"""
