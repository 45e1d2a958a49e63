"""The regression problem: one ``Dense(1)`` unit fitted to a table of points.

The seed problem is Keras ``Sequential([Dense(1, input_shape=[1])])`` trained with MSE on
``xs = 1..N`` and ``ys = 0.5 * xs``. Here the dataset of size ``N`` is either the line

    x_i = x_start + x_step * i,   y_i = slope * x_i + intercept,   i = 0 .. N-1,

or the first ``N`` rows of a user's table (:class:`Table`: a CSV file, or a data set that
scikit-learn ships), whose ``d >= 1`` feature columns are the model's inputs (Keras
``Input((d,))``; the line is the case ``d = 1``). Either way the targets may carry Gaussian
noise, ``y_i += noise * eps_i`` with ``eps`` drawn from ``noise_seed`` (point ``i`` gets the
same ``eps_i`` whatever ``N``), and the inputs may be standardised per feature,
``x_ij <- (x_ij - mean_j) / std_j`` over the ``N`` rows (population standard deviation, as
``keras.layers.Normalization`` adapts; the targets keep the raw inputs), one of the fixes
users try. The query whose prediction a map records -- ``model.predict([25.0])`` on the line,
the mean input row of a table -- is standardised with the same statistics.

Datasets are built in float64 on the host and cast once, so every dtype sees the same
numbers rounded once. All datasets of a run live in one padded :class:`DataTable`, which the
engine indexes per configuration.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from src.errors import InputError

QUERY_X = 25.0
"""The input whose prediction the seed's user printed: ``model.predict([25.0])``."""

SKLEARN_PREFIX = "sklearn:"
SKLEARN_DATASETS = ("diabetes",)
"""Data sets scikit-learn ships inside its package (no download): ``--data sklearn:NAME``."""


@dataclasses.dataclass(frozen=True)
class Table:
    """A user's data set as read: ``features`` ``(rows, d)`` and ``target`` ``(rows,)`` in
    float64, the columns' names and where they came from."""

    features: np.ndarray
    target: np.ndarray
    feature_names: tuple[str, ...]
    target_name: str
    source: str

    @property
    def d(self) -> int:
        return self.features.shape[1]

    def __len__(self) -> int:
        return len(self.target)


@dataclasses.dataclass(frozen=True)
class Problem:
    """A family of datasets indexed by their size ``N`` (defaults: the seed problem).

    ``data`` names a table (a CSV path, or ``sklearn:diabetes``; empty: the line given by
    ``slope``, ``intercept``, ``x_start`` and ``x_step``). ``target`` is its column to
    predict (empty: ``y``) and ``features`` its input columns, comma-separated (empty: every
    other numeric column). ``noise`` is the standard deviation of the Gaussian noise added to
    the targets, drawn from ``noise_seed``.
    """

    slope: float = 0.5
    intercept: float = 0.0
    x_start: float = 1.0
    x_step: float = 1.0
    standardize: bool = False
    noise: float = 0.0
    noise_seed: int = 0
    data: str = ""
    target: str = ""
    features: str = ""

    def __post_init__(self) -> None:
        for name in ("slope", "intercept", "x_start", "x_step"):
            if not np.isfinite(getattr(self, name)):
                raise InputError(f"{name} must be a finite number, got {getattr(self, name)}")
        if self.x_step == 0:
            raise InputError("x_step must be non-zero (all inputs would be equal)")
        if not (math.isfinite(self.noise) and self.noise >= 0):
            raise InputError(f"noise must be a finite number >= 0, got {self.noise}")
        if not 0 <= self.noise_seed < 2**32:
            raise InputError(f"noise seed must be in [0, 2**32), got {self.noise_seed}")
        if not self.data and (self.target or self.features):
            raise InputError("--target and --features name columns of --data: give --data too")

    @property
    def user_table(self) -> Table | None:
        """The user's table (None for the line)."""
        if not self.data:
            return None
        return load_table(self.data, self.target, self.features)

    @property
    def d(self) -> int:
        """The number of input features (1 for the line)."""
        table = self.user_table
        return 1 if table is None else table.d

    @property
    def max_n(self) -> int | None:
        """The largest dataset size (the table's rows; None for the line: any)."""
        table = self.user_table
        return None if table is None else len(table)

    def raw_inputs(self, n: int) -> np.ndarray:
        """The unstandardised inputs (float64): ``x_start + x_step * i``, or the table's
        first ``n`` feature rows (``(n,)`` for one feature, else ``(n, d)``)."""
        if n < 1:
            raise InputError(f"dataset size N must be >= 1, got {n}")
        table = self.user_table
        if table is None:
            return self.x_start + self.x_step * np.arange(n, dtype=np.float64)
        self._check_size(n, table)
        x = table.features[:n]
        return x[:, 0] if table.d == 1 else x

    def targets(self, n: int) -> np.ndarray:
        """The targets of size ``n`` (float64), noise included."""
        table = self.user_table
        if table is None:
            y = self.slope * self.raw_inputs(n) + self.intercept
        else:
            self._check_size(n, table)
            y = table.target[:n].copy()
        if self.noise:
            y = y + self.noise * noise_draws(self.noise_seed, n)
        return y

    def _check_size(self, n: int, table: Table) -> None:
        if n > len(table):
            raise InputError(f"dataset size N = {n:,} is more than the {len(table):,} rows of "
                             f"{table.source}")  # fmt: skip

    def raw_query(self) -> np.ndarray:
        """The unstandardised query input: 25 on the line, the table's mean input row."""
        table = self.user_table
        if table is None:
            return np.array(QUERY_X)
        q = table.features.mean(axis=0)
        return q[0] if table.d == 1 else q

    def dataset(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | float]:
        """``(x, y, x_query)`` for size ``n`` in float64, as the model sees them: ``x`` is
        ``(n,)`` for one feature, else ``(n, d)``; ``x_query`` a float or ``(d,)``."""
        x, y = self.raw_inputs(n), self.targets(n)
        query = self.raw_query()
        x_model, x_query = standardize(x, query) if self.standardize else (x, query)
        return x_model, y, (float(x_query) if np.ndim(x_query) == 0 else x_query)

    def table(self, sizes: Iterable[int], dtype: str) -> tuple[DataTable, np.ndarray]:
        """The datasets of ``sizes`` (each once) in one :class:`DataTable` of ``dtype``, and
        the rows: ``rows[n]`` is the table row of size ``n``."""
        table, rows = variants_table([self], sizes, dtype)
        return table, rows[0]

    def with_noise(self, noise: float, noise_seed: int) -> Problem:
        """The same data with the targets' noise ``noise`` drawn from ``noise_seed``."""
        return dataclasses.replace(self, noise=float(noise), noise_seed=int(noise_seed))

    def query_words(self) -> str:
        """Where the recorded prediction is taken, in words."""
        return f"x = {QUERY_X:g}" if not self.data else "the mean input row"

    def describe(self) -> str:
        """The dataset in words, e.g. ``x = 1, 2, ..., N; y = 0.5 x``."""
        table = self.user_table
        if table is None:
            x = f"x = {_num(self.x_start)} + {_num(self.x_step)} i (i = 0..N-1)"
            if self.x_start == 1.0 and self.x_step == 1.0:
                x = "x = 1, 2, ..., N"
            y = f"y = {_num(self.slope)} x" + (
                f" + {_num(self.intercept)}" if self.intercept else ""
            )
            text = f"{x}; {y}"
        else:
            names = ", ".join(table.feature_names)
            inputs = names if table.d == 1 else f"d = {table.d} features ({names})"
            text = (f"{table.source}: the first N of {len(table):,} rows; predict "
                    f"{table.target_name} from {inputs}")  # fmt: skip
        if self.noise:
            text += f"; plus Gaussian noise of std {_num(self.noise)} (seed {self.noise_seed})"
        if self.standardize:
            text += "; inputs standardised to zero mean, unit variance"
        return text


def variants_table(
    problems: Sequence[Problem], sizes: Iterable[int], dtype: str
) -> tuple[DataTable, np.ndarray]:
    """The datasets of every problem (its variants: e.g. noise levels and seeds) at every
    one of ``sizes`` in one :class:`DataTable`, and the rows: ``rows[v, n]`` is the row of
    ``problems[v]`` at size ``n``."""
    distinct = sorted({int(n) for n in sizes})
    datasets = [p.dataset(n) for p in problems for n in distinct]
    per_size = table_rows(distinct)
    rows = per_size[None, :] + len(distinct) * np.arange(len(problems))[:, None]
    return data_table(datasets, dtype), rows


def noise_draws(seed: int, n: int) -> np.ndarray:
    """``n`` standard normal draws of ``seed`` (float64); the first ``k`` are the same for
    every ``n >= k``, so a point's noise does not depend on the dataset's size."""
    return np.random.default_rng(seed).standard_normal(n)


def standardize(x: np.ndarray, query: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Centre and scale each feature of ``x`` (``(n,)`` or ``(n, d)``) by its mean and
    population std over the rows; a constant feature is only centred."""
    mean = np.mean(x, axis=0)
    std = np.std(x, axis=0)
    scale = np.where(std > 0, std, 1.0)
    return (x - mean) / scale, (np.asarray(query) - mean) / scale


class DataTable(NamedTuple):
    """Every dataset of a run, one padded row each (engine dtype).

    ``x`` has shape ``(rows, n_max, d)`` and ``y`` ``(rows, n_max)``; row ``r`` holds its
    ``n[r]`` points first and zeros after. These have shape ``(rows,)``:

    * ``loss_scale``: ``mean(y^2)``, the loss of the zero predictor (1 where all targets are
      0); it makes the convergence tolerance scale-free;
    * ``optimal_loss``: ``L*``, the mean squared residual of the least-squares fit, the least
      loss any run can reach (0 on noise-free data);
    * ``n`` and ``b_opt``;

    and ``x_query`` (the query input as the model sees it) and ``w_opt`` have shape
    ``(rows, d)``: ``(w_opt, b_opt)`` is each dataset's least-squares fit. ``residual`` (like
    ``y``) is every point's residual ``x . w_opt + b_opt - y`` from that fit. The fit and
    residuals are computed in float64 from the ``dtype`` values (see :func:`least_squares`);
    the moments kernel works in deviations from them.
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

    @property
    def d(self) -> int:
        return self.x.shape[-1]


def design(x: np.ndarray) -> np.ndarray:
    """Inputs as a ``(n, d)`` float64 matrix (a 1-D ``x`` is one feature)."""
    x = np.asarray(x, np.float64)
    return x.reshape(len(x), -1)


def data_table(
    datasets: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray | float]], dtype: str
) -> DataTable:
    """Pack ``(x, y, x_query)`` float64 datasets (``x`` of shape ``(n,)`` or ``(n, d)``, the
    same ``d`` for all) into a padded :class:`DataTable` of ``dtype``."""
    inputs = [design(x) for x, _, _ in datasets]
    d = {a.shape[1] for a in inputs}
    if len(d) != 1:
        raise ValueError(f"the datasets of one table must share their features, got d = {d}")
    n = np.array([len(x) for x in inputs], dtype=np.int32)
    n_max = int(n.max())
    xs = np.zeros((len(datasets), n_max, d.pop()), np.float64)
    ys = np.zeros(xs.shape[:2], np.float64)
    for row, (x, (_, y, _)) in enumerate(zip(inputs, datasets, strict=True)):
        xs[row, : len(x)] = x
        ys[row, : len(y)] = y
    y_sq_mean = np.array([np.mean(np.square(y)) for _, y, _ in datasets])
    loss_scale = np.where(y_sq_mean > 0, y_sq_mean, 1.0)
    x_query = np.stack([np.reshape(np.asarray(q, np.float64), -1) for _, _, q in datasets])
    x_model, y_model = xs.astype(dtype), ys.astype(dtype)
    fits = [least_squares(x_model[r, :k], y_model[r, :k]) for r, k in enumerate(n)]
    w_opt = np.stack([w for w, _ in fits])
    b_opt = np.array([b for _, b in fits])
    residual = np.where(
        np.arange(n_max) < n[:, None],
        predict(x_model, w_opt[:, None, :], b_opt[:, None]) - y_model.astype(np.float64),
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


def predict(x: np.ndarray, w: np.ndarray, b: np.ndarray | float) -> np.ndarray:
    """``x . w + b`` in float64 over the last axis (one feature: exactly ``w x + b``)."""
    return np.sum(np.asarray(x, np.float64) * w, axis=-1) + b


def table_rows(sizes: Sequence[int]) -> np.ndarray:
    """The row lookup of a table holding datasets of ``sizes`` (distinct, in table order):
    ``rows[n]`` is the row of size ``n``."""
    rows = np.zeros(max(sizes) + 1, np.int64)
    rows[list(sizes)] = np.arange(len(sizes))
    return rows


def least_squares(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """The fit ``(w, b)`` minimising ``mean((x . w + b - y)^2)``, in float64; ``w`` has shape
    ``(d,)``.

    One feature: ``w = cov(x, y) / var(x)`` (0 if all x are equal). Several: the
    minimum-norm least-squares solution on the centred inputs (``numpy.linalg.lstsq``), so
    that collinear or constant features still give a fit (the loss's minimum is unique even
    where the weights are not).
    """
    x, y = design(x), np.asarray(y, np.float64)
    xc = x - x.mean(axis=0)
    if x.shape[1] == 1:
        var = float(np.mean(xc[:, 0] * xc[:, 0]))
        w = np.array([np.mean(xc[:, 0] * (y - y.mean())) / var if var > 0 else 0.0])
    else:
        w = np.linalg.lstsq(xc, y - y.mean(), rcond=None)[0]
    return w, float(y.mean() - x.mean(axis=0) @ w)


def _num(v: float) -> str:
    return f"{v:g}"


def load_table(data: str, target: str = "", features: str = "") -> Table:
    """The table ``data`` names (a CSV path, or ``sklearn:NAME``), its ``target`` column
    (empty: ``y``) predicted from ``features`` (comma-separated; empty: every other numeric
    column). Read once per file version (cached on its path, size and modification time)."""
    if data.startswith(SKLEARN_PREFIX):
        return _sklearn_table(data[len(SKLEARN_PREFIX) :], target, features)
    try:
        stat = os.stat(data)
    except OSError as e:
        raise InputError(f"--data {data}: cannot read it ({e.strerror or e})") from None
    return _csv_table(data, stat.st_size, stat.st_mtime_ns, target, features)


@functools.lru_cache(maxsize=8)
def _csv_table(path: str, size: int, mtime: int, target: str, features: str) -> Table:
    del size, mtime  # the cache key: a file changed on disk is read again
    header, columns = read_csv(path)
    return _select(path, header, columns, target, features)


def _sklearn_table(name: str, target: str, features: str) -> Table:
    if name not in SKLEARN_DATASETS:
        raise InputError(f"--data {SKLEARN_PREFIX}{name}: unknown; scikit-learn data sets "
                         f"offered: {', '.join(SKLEARN_DATASETS)}")  # fmt: skip
    try:
        from sklearn import datasets
    except ImportError:
        raise InputError(
            f"--data {SKLEARN_PREFIX}{name} needs scikit-learn (pip install scikit-learn)"
        ) from None
    bunch = datasets.load_diabetes(scaled=False)
    header = [*bunch.feature_names, "target"]
    columns = [*np.asarray(bunch.data, np.float64).T, np.asarray(bunch.target, np.float64)]
    return _select(f"{SKLEARN_PREFIX}{name}", header, columns, target or "target", features)


def _select(
    source: str,
    header: Sequence[str],
    columns: Sequence[np.ndarray | None],
    target: str,
    features: str,
) -> Table:
    """The target and feature columns of a read table (``None``: a non-numeric column)."""
    target = target.strip() or "y"
    named = dict(zip(header, columns, strict=True))
    if target not in named:
        raise InputError(
            f"--data {source}: no column {target!r} to predict (give --target COLUMN; the "
            f"columns are {', '.join(header)})"
        )
    if named[target] is None:
        raise InputError(f"--data {source}: the target column {target!r} is not numeric")
    wanted = [f.strip() for f in features.split(",") if f.strip()]
    for f in wanted:
        if f not in named:
            raise InputError(f"--data {source}: no feature column {f!r} (the columns are "
                             f"{', '.join(header)})")  # fmt: skip
        if named[f] is None:
            raise InputError(f"--data {source}: the feature column {f!r} is not numeric")
        if f == target:
            raise InputError(f"--data {source}: {f!r} is the target; it cannot be a feature too")
    if len(set(wanted)) != len(wanted):
        raise InputError(f"--data {source}: --features names a column twice")
    names = wanted or [h for h in header if h != target and named[h] is not None]
    if not names:
        raise InputError(f"--data {source}: no numeric feature column besides {target!r}")
    return Table(
        features=np.stack([named[f] for f in names], axis=1),
        target=np.asarray(named[target]),
        feature_names=tuple(names),
        target_name=target,
        source=source,
    )


def read_csv(path: str | Path) -> tuple[list[str], list[np.ndarray | None]]:
    """A CSV file with a header line: its column names, and each column as float64 (``None``
    for a column whose first value is not a number: text, not data). A number that fails
    later, a non-finite value, or a row of the wrong width is an error naming its line."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")  # a BOM, as spreadsheets write
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(
            f"--data {path}: cannot read it ({getattr(e, 'strerror', None) or e})"
        ) from None
    reader = csv.reader(io.StringIO(text))
    header: list[str] | None = None
    rows: list[list[str]] = []
    lines: list[int] = []
    for row in reader:
        if not "".join(row).strip():  # a blank line
            continue
        if header is None:
            header = [cell.strip() for cell in row]
            if len(set(header)) != len(header):
                raise InputError(f"--data {path}: the header names a column twice")
            continue
        if len(row) != len(header):
            raise InputError(f"--data {path} line {reader.line_num}: expected {len(header)} "
                             f"columns, got {len(row)}")  # fmt: skip
        rows.append(row)
        lines.append(reader.line_num)
    if header is None:
        raise InputError(f"--data {path}: the file is empty")
    if not rows:
        raise InputError(f"--data {path}: no data rows after the header")
    cells = list(zip(*rows, strict=True))
    return header, [_column(path, name, c, lines) for name, c in zip(header, cells, strict=True)]


def _column(
    path: str | Path, name: str, cells: Sequence[str], lines: Sequence[int]
) -> np.ndarray | None:
    if not _is_number(cells[0]):
        return None
    try:
        values = np.array(cells, dtype=np.float64)
    except ValueError:
        bad = next(i for i, c in enumerate(cells) if not _is_number(c))
        raise InputError(
            f"--data {path} line {lines[bad]}: {name} = {cells[bad].strip()!r} is not a number"
        ) from None
    if not np.all(np.isfinite(values)):
        bad = int(np.flatnonzero(~np.isfinite(values))[0])
        raise InputError(
            f"--data {path} line {lines[bad]}: {name} = {cells[bad].strip()} is not finite"
        )
    return values


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def read_xy_csv(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A CSV file whose header names columns ``x`` and ``y``: those columns (float64)."""
    table = _select(str(path), *read_csv(path), "y", "x")
    return table.features[:, 0], table.target
