"""The regression problem: one ``Dense(1)`` unit fitted to points on a line.

The seed problem is Keras ``Sequential([Dense(1, input_shape=[1])])`` trained with MSE on
``xs = 1..N`` and ``ys = 0.5 * xs``. Here the dataset of size ``N`` is

    x_i = x_start + x_step * i,   y_i = slope * x_i + intercept,   i = 0 .. N-1,

optionally with the inputs standardised, ``x_i <- (x_i - mean(x)) / std(x)`` (population
standard deviation; the targets keep the raw ``x``), which is one of the fixes users try.
Queries such as the prediction at ``x = 25`` are standardised with the same statistics.

Datasets are built in float64 on the host and cast once, so every dtype sees the same
numbers rounded once. All datasets of a run live in one padded :class:`DataTable`, which the
engine indexes per configuration.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from src.errors import InputError

QUERY_X = 25.0
"""The input whose prediction the seed's user printed: ``model.predict([25.0])``."""


@dataclasses.dataclass(frozen=True)
class Problem:
    """A family of datasets indexed by their size ``N`` (defaults: the seed problem)."""

    slope: float = 0.5
    intercept: float = 0.0
    x_start: float = 1.0
    x_step: float = 1.0
    standardize: bool = False

    def __post_init__(self) -> None:
        for name in ("slope", "intercept", "x_start", "x_step"):
            if not np.isfinite(getattr(self, name)):
                raise InputError(f"{name} must be a finite number, got {getattr(self, name)}")
        if self.x_step == 0:
            raise InputError("x_step must be non-zero (all inputs would be equal)")

    def raw_inputs(self, n: int) -> np.ndarray:
        """The unstandardised inputs ``x_start + x_step * i`` (float64)."""
        if n < 1:
            raise InputError(f"dataset size N must be >= 1, got {n}")
        return self.x_start + self.x_step * np.arange(n, dtype=np.float64)

    def dataset(self, n: int) -> tuple[np.ndarray, np.ndarray, float]:
        """``(x, y, x_query)`` for size ``n`` in float64; ``x_query`` is 25 as the model sees it."""
        x = self.raw_inputs(n)
        y = self.slope * x + self.intercept
        x_model, x_query = standardize(x, QUERY_X) if self.standardize else (x, QUERY_X)
        return x_model, y, x_query

    def table(self, sizes: Iterable[int], dtype: str) -> tuple[DataTable, np.ndarray]:
        """The datasets of ``sizes`` (each once) in one :class:`DataTable` of ``dtype``, and
        the rows: ``rows[n]`` is the table row of size ``n``."""
        distinct = sorted({int(n) for n in sizes})
        return data_table([self.dataset(n) for n in distinct], dtype), table_rows(distinct)

    def describe(self) -> str:
        """The dataset formula in words, e.g. ``x = 1, 2, ..., N; y = 0.5 x``."""
        x = f"x = {_num(self.x_start)} + {_num(self.x_step)} i (i = 0..N-1)"
        if self.x_start == 1.0 and self.x_step == 1.0:
            x = "x = 1, 2, ..., N"
        y = f"y = {_num(self.slope)} x" + (f" + {_num(self.intercept)}" if self.intercept else "")
        return f"{x}; {y}" + (
            "; x standardised to zero mean, unit variance" if self.standardize else ""
        )


def standardize(x: np.ndarray, query: float) -> tuple[np.ndarray, float]:
    """Centre and scale ``x`` by its mean and population std; a constant ``x`` is only centred."""
    mean = float(np.mean(x))
    std = float(np.std(x))
    scale = std if std > 0 else 1.0
    return (x - mean) / scale, (query - mean) / scale


class DataTable(NamedTuple):
    """Every dataset of a run, one padded row each (engine dtype).

    ``x`` and ``y`` have shape ``(rows, n_max)``; row ``r`` holds its ``n[r]`` points first and
    zeros after. These have shape ``(rows,)``:

    * ``loss_scale``: ``mean(y^2)``, the loss of the zero predictor (1 where all targets are
      0); it makes the convergence tolerance scale-free;
    * ``optimal_loss``: ``L*``, the mean squared residual of the least-squares line, the least
      loss any run can reach (0 on noise-free data);
    * ``x_query`` (25 as the model sees it) and ``n``;
    * ``w_opt`` and ``b_opt``: each dataset's least-squares line.

    ``residual`` (like ``x``) is every point's residual ``w_opt x + b_opt - y`` from that
    line. The line and residuals are computed in float64 from the ``dtype`` values (slope 0
    where all x are equal); the moments kernel works in deviations from them.
    """

    x: np.ndarray
    y: np.ndarray
    loss_scale: np.ndarray
    x_query: np.ndarray
    n: np.ndarray
    w_opt: np.ndarray
    b_opt: np.ndarray
    residual: np.ndarray
    optimal_loss: np.ndarray


def data_table(datasets: Sequence[tuple[np.ndarray, np.ndarray, float]], dtype: str) -> DataTable:
    """Pack ``(x, y, x_query)`` float64 datasets into a padded :class:`DataTable` of ``dtype``."""
    n = np.array([len(x) for x, _, _ in datasets], dtype=np.int32)
    n_max = int(n.max())
    xs = np.zeros((len(datasets), n_max), np.float64)
    ys = np.zeros_like(xs)
    for row, (x, y, _) in enumerate(datasets):
        xs[row, : len(x)] = x
        ys[row, : len(y)] = y
    y_sq_mean = np.array([np.mean(np.square(y)) for _, y, _ in datasets])
    loss_scale = np.where(y_sq_mean > 0, y_sq_mean, 1.0)
    x_query = np.array([q for _, _, q in datasets])
    x_model, y_model = xs.astype(dtype), ys.astype(dtype)
    lines = [least_squares(x_model[r, :k], y_model[r, :k]) for r, k in enumerate(n)]
    w_opt, b_opt = (np.array(v) for v in zip(*lines, strict=True))
    residual = np.where(
        np.arange(n_max) < n[:, None],
        w_opt[:, None] * x_model + b_opt[:, None] - y_model.astype(np.float64),
        0.0,
    )
    return DataTable(
        x=x_model,
        y=y_model,
        loss_scale=loss_scale.astype(dtype),
        x_query=x_query.astype(dtype),
        n=n,
        w_opt=w_opt.astype(dtype),
        b_opt=b_opt.astype(dtype),
        residual=residual.astype(dtype),
        optimal_loss=(np.sum(residual * residual, axis=1) / n).astype(dtype),
    )


def table_rows(sizes: Sequence[int]) -> np.ndarray:
    """The row lookup of a table holding datasets of ``sizes`` (distinct, in table order):
    ``rows[n]`` is the row of size ``n``."""
    rows = np.zeros(max(sizes) + 1, np.int64)
    rows[list(sizes)] = np.arange(len(sizes))
    return rows


def least_squares(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """The line ``(w, b)`` minimising ``mean((w x + b - y)^2)``, in float64 (slope 0 if all x
    are equal)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    xc = x - x.mean()
    var = float(np.mean(xc * xc))
    w = float(np.mean(xc * (y - y.mean())) / var) if var > 0 else 0.0
    return w, float(y.mean() - w * x.mean())


def _num(v: float) -> str:
    return f"{v:g}"


def read_xy_csv(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A user's dataset: a CSV file whose header names columns ``x`` and ``y`` (float64)."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")  # a BOM, as spreadsheets write
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(
            f"--data {path}: cannot read it ({getattr(e, 'strerror', None) or e})"
        ) from None
    reader = csv.reader(io.StringIO(text))
    header: list[str] | None = None
    xs: list[float] = []
    ys: list[float] = []
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        if header is None:
            header = [cell.strip().lower() for cell in row]
            if "x" not in header or "y" not in header:
                raise InputError(
                    f"--data {path}: the first line must name the columns x and y, "
                    f"got {','.join(row)!r}"
                )
            continue
        line = reader.line_num
        if len(row) != len(header):
            raise InputError(
                f"--data {path} line {line}: expected {len(header)} columns, got {len(row)}"
            )
        for value, out, name in (
            (row[header.index("x")], xs, "x"),
            (row[header.index("y")], ys, "y"),
        ):
            try:
                v = float(value)
            except ValueError:
                raise InputError(
                    f"--data {path} line {line}: {name} = {value.strip()!r} is not a number"
                ) from None
            if not math.isfinite(v):
                raise InputError(
                    f"--data {path} line {line}: {name} = {value.strip()} is not finite"
                )
            out.append(v)
    if header is None:
        raise InputError(f"--data {path}: the file is empty")
    if not xs:
        raise InputError(f"--data {path}: no data rows after the header")
    return np.array(xs), np.array(ys)
