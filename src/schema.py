"""The map's names: the one module that writes and reads them.

A stability map is an :class:`xarray.Dataset`. Its per-config variables have the dimensions
:data:`DIMS` and then one per swept hyperparameter; its per-cell variables (everything a cell
of the grid has in common across learning rates) have all of those but ``lr``; per dataset
size ``n`` it holds the data's scale and closed-form limits, and per ``curve`` the loss
histories kept in full. The attributes record what the map was run with, the problem (its
fields serialised one by one, ``problem_<field>``), and the versions.

Everything that builds a map (:func:`to_dataset`) or reads one back (:func:`problem_of`,
:func:`reference_slice`, :func:`hyperparameters_at`, ...) goes through here, so a new
dimension, variable or problem field is named in one place.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
import optax
import xarray as xr

from src import engine, outcome
from src import optimizers as opt
from src.problem import QUERY_X, Problem

if TYPE_CHECKING:
    from src.boundary import Boundary
    from src.spec import Curve, Sweep

DIMS = ("optimizer", "lr", "n", "batch_size", "seed", "epochs")
"""The base dimensions of every per-config variable, in storage order; a sweep's data
dimensions and swept hyperparameters follow them (:attr:`src.spec.Sweep.dims`)."""

DATA_DIMS = ("noise", "noise_seed")
"""The dataset's own dimensions, present where a sweep gives noise levels (``--noise``):
the standard deviation of the targets' Gaussian noise, and the seed it is drawn from."""

SUMMARY_VARIABLES: dict[str, tuple[str, str]] = {
    "initial_loss": ("loss of the first epoch (History[0])", "1"),
    "final_loss": ("loss of the last epoch (History[-1])", "1"),
    "first_nonfinite_epoch": ("first epoch with a non-finite loss or weight (-1: none)", "epoch"),
    "first_converged_epoch": (
        "first epoch with loss - L* <= tol * mean(y^2) (-1: none)", "epoch"
    ),
    "growth_rate": (
        f"per-epoch loss ratio (geometric mean) between the last two {engine.GROWTH_WINDOW}"
        "-epoch window ends with a finite loss",
        "1",
    ),
    "final_w": ("kernel after training", "1"),
    "final_b": ("bias after training", "1"),
    "prediction": (f"model output at x = {QUERY_X:g} after training", "1"),
}
"""Per-config variables from the engine's :class:`~src.engine.Summary`: (long name, units)."""

PER_N_VARIABLES: dict[str, str] = {
    "loss_scale": "mean(y^2) (1 if all y are 0): converged if loss - L* <= tol * this",
    "optimal_loss": "L*, the least-squares loss of the dataset: the best fit any run can reach "
    "(0 without noise)",
    "hessian_max_eigenvalue": "largest eigenvalue of the full-batch loss Hessian",
    "gd_critical_lr": "full-batch gradient descent critical learning rate 2 / lambda_max",
}
"""Variables of each dataset size: their long names."""

RESERVED_NAMES = frozenset(
    {*DIMS, *DATA_DIMS, "learning_rate", "curve", "epoch", "cell", *PER_N_VARIABLES, "loss_history",
     "excess_loss",
     "status", "critical_lr", "theory_critical_lr", "fixed_order_critical_lr", "non_monotone"}
)  # fmt: skip
"""Names a swept hyperparameter may not take (they label other parts of the dataset)."""

PROBLEM_PREFIX = "problem_"


@dataclasses.dataclass(frozen=True)
class SampledLosses:
    """The map's own History losses at a few epochs, kept as its chunks finish so that the
    page's stored loss curves need no re-run (:func:`src.page.stored_curves`). Not part of
    the dataset: the netCDF holds summaries, and every config's curve would double it.

    ``epochs`` (sorted, from 1) are the epochs sampled; ``losses`` ``(configs, k)`` in the
    map's dtype, one row per configuration in the flat (C) order of the map's per-config
    variables; ``recorded`` says which rows the run computed (a chunk read back by
    ``--resume`` has none)."""

    epochs: np.ndarray
    losses: np.ndarray
    recorded: np.ndarray

    def at(self, flat: np.ndarray, epochs: np.ndarray) -> np.ndarray | None:
        """Losses of the configurations at flat positions ``flat`` at ``epochs`` (each one of
        :attr:`epochs`), float64 as the History a re-run returns; ``None`` unless every one
        of them was recorded."""
        flat = np.asarray(flat, np.int64)
        columns = np.minimum(np.searchsorted(self.epochs, epochs), len(self.epochs) - 1)
        if not self.recorded[flat].all() or not np.array_equal(self.epochs[columns], epochs):
            return None
        return self.losses[np.ix_(flat, columns)].astype(np.float64)


def result_dtype(name: str, dtype: str) -> str:
    """Storage dtype of a :data:`SUMMARY_VARIABLES` entry in a map of ``dtype``."""
    return "int32" if name.endswith("_epoch") else dtype


def excess_loss(
    final_loss: np.ndarray,
    optimal_loss: np.ndarray,
    dims: Sequence[str],
    data_dims: Sequence[str] = (),
) -> np.ndarray:
    """``final_loss - L*`` (the map's dtype), ``L*`` given along ``(n, *data_dims)`` (axes
    ``dims`` names, in that order); computed in float64 and rounded once."""
    optimal = np.asarray(optimal_loss, np.float64)
    shape = [1] * len(dims)
    for axis, d in enumerate(("n", *data_dims)):
        shape[list(dims).index(d)] = optimal.shape[axis]
    with np.errstate(invalid="ignore", over="ignore"):
        return (np.asarray(final_loss, np.float64) - optimal.reshape(shape)).astype(
            final_loss.dtype
        )


def optimal_loss(ds: xr.Dataset) -> xr.DataArray:
    """``L*`` along ``n`` (a map saved before it was recorded: 0, the rule it was made with)."""
    return ds.optimal_loss if "optimal_loss" in ds else xr.zeros_like(ds.loss_scale)


def problem_attrs(problem: Problem) -> dict[str, float | int]:
    """The problem's fields as attributes, ``problem_<field>`` (booleans as 0/1)."""
    return {
        PROBLEM_PREFIX + f.name: (
            int(v) if isinstance(v := getattr(problem, f.name), bool) else v
        )
        for f in dataclasses.fields(problem)
    }


def problem_of(ds: xr.Dataset) -> Problem:
    """The :class:`~src.problem.Problem` a saved map was computed on (from its attributes)."""
    kind = {bool: bool, "bool": bool, int: int, "int": int, str: str, "str": str}
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Problem):
        if PROBLEM_PREFIX + f.name not in ds.attrs:
            continue  # a map written before the field existed: its default
        values[f.name] = kind.get(f.type, float)(ds.attrs[PROBLEM_PREFIX + f.name])
    return Problem(**values)


def extra_dims(ds: xr.Dataset) -> tuple[str, ...]:
    """The map's per-config dimensions beyond :data:`DIMS`: its data dimensions
    (:data:`DATA_DIMS`, if any), then its swept hyperparameters."""
    return tuple(str(d) for d in ds.status.dims if d not in DIMS)


def swept_dims(ds: xr.Dataset) -> tuple[str, ...]:
    """The map's swept-hyperparameter dimensions."""
    return tuple(d for d in extra_dims(ds) if d not in DATA_DIMS)


def variant_at(ds: xr.Dataset, index: Mapping[str, int]) -> Problem:
    """The problem of a map's configuration at ``index`` (its noise, where swept)."""
    problem = problem_of(ds)
    if "noise" not in ds.status.dims:
        return problem
    return problem.with_noise(
        float(ds.noise.values[index.get("noise", 0)]),
        int(ds.noise_seed.values[index.get("noise_seed", 0)]),
    )


def reference_slice(ds: xr.Dataset) -> xr.Dataset:
    """The map at the first batch size and seed, the largest epoch count and the first value
    of every swept hyperparameter: what the findings, tables and figures read."""
    first = {d: 0 for d in ("batch_size", "seed", *extra_dims(ds))}
    return ds.isel(first).sel(epochs=ds.epochs.max())


def chosen_at(ds: xr.Dataset, optimizer: str, index: Mapping[str, int]) -> dict[str, float]:
    """The hyperparameters the map set for ``optimizer`` at a position along its dims
    (``index``; missing swept dims count as their first value): fixed overrides
    (``optimizer_args``, a JSON dict, optionally with per-optimizer sub-dicts), then the
    swept values, keeping the names the optimizer takes."""
    family = opt.get(optimizer).family
    values: dict[str, float] = {}
    for key, value in json.loads(ds.attrs.get("optimizer_args") or "{}").items():
        if isinstance(value, Mapping):
            if key == optimizer:
                values.update({k: float(v) for k, v in value.items()})
        else:
            values[key] = float(value)
    for dim in swept_dims(ds):
        values[dim] = float(ds[dim].values[index.get(dim, 0)])
    return {k: v for k, v in values.items() if family.takes(k)}


def settings_at(ds: xr.Dataset, optimizer: str, index: Mapping[str, int]) -> dict[str, float]:
    """Every hyperparameter and base option ``optimizer`` ran with at ``index``."""
    return opt.get(optimizer).settings(chosen_at(ds, optimizer, index))


def hyperparameters_at(ds: xr.Dataset, optimizer: str, index: Mapping[str, int]) -> dict:
    """The hyperparameters to name for a re-run at ``index`` (:func:`chosen_at`), less base
    options at their "off" value that the optimizer does not set itself (``clipnorm = inf``;
    AdamW's ``weight_decay`` stays), as :meth:`~src.optimizers.Optimizer.keras_kwargs` drops
    them."""
    off, defaults = opt.BASE_OPTIONS, opt.get(optimizer).defaults
    return {
        k: v
        for k, v in chosen_at(ds, optimizer, index).items()
        if not (k in off and k not in defaults and v == off[k])
    }


def curve_positions(ds: xr.Dataset) -> list[tuple[int, dict[str, object]]]:
    """Each kept curve's ``(index, coordinates)``: its optimizer, lr, n, batch size, seed."""
    fields = ("optimizer", "lr", "n", "batch_size", "seed")
    if "curve" not in ds.dims:
        return []
    return [
        (i, {f: ds[f"curve_{f}"].values[i] for f in fields}) for i in range(ds.sizes["curve"])
    ]


def to_dataset(
    sweep: Sweep,
    results: Mapping[str, np.ndarray],
    status: np.ndarray,
    critical: Boundary,
    theory_critical_lr: np.ndarray,
    fixed_order_critical_lr: np.ndarray,
    per_n: Mapping[str, np.ndarray],
    curves: Sequence[Curve],
    histories: np.ndarray,
) -> xr.Dataset:
    """The labelled map: per-config ``results`` (:data:`SUMMARY_VARIABLES`) and ``status``;
    per-cell measured (``critical``) and closed-form critical lrs; :data:`PER_N_VARIABLES`
    along ``sweep.n``; the kept curves' ``histories``; the sweep's settings as attributes."""
    dims = sweep.dims
    data_vars: dict[str, tuple] = {"status": (dims, status, outcome.cf_attributes())}
    for name, (text, units) in SUMMARY_VARIABLES.items():
        text = text.replace(f"x = {QUERY_X:g}", sweep.problem.query_words())
        value = results[name]
        # Several features: one kernel weight each, along "feature".
        value_dims = dims if value.ndim == len(dims) else (*dims, "feature")
        data_vars[name] = (value_dims, value, {"long_name": text, "units": units})
    cell_dims = tuple(d for d in dims if d != "lr")
    data_vars["critical_lr"] = (
        cell_dims, critical.critical_lr,
        {"long_name": "smallest lr at which training overflows or diverges (measured by "
         f"bisection to {sweep.boundary_rtol:g} relative; nan: none found)"},
    )  # fmt: skip
    data_vars["non_monotone"] = (
        cell_dims, critical.non_monotone.astype(np.int8),
        {"long_name": "1 if some lr above critical_lr (a grid lr, or one the boundary search "
         "ran between grid points) is stable again"},
    )  # fmt: skip
    data_vars["theory_critical_lr"] = (
        cell_dims, theory_critical_lr,
        {"long_name": "closed-form critical lr of (Keras) SGD, momentum and Nesterov: "
         "2 c(mu) / lambda_max for one batch, rho(epoch map) = 1 for fixed-order minibatches "
         "(nan: no closed form: adaptive optimizers, momentum outside [0, 1), a base option "
         "such as clipnorm set; minibatches of a shuffled map)"},
    )  # fmt: skip
    data_vars["fixed_order_critical_lr"] = (
        cell_dims, fixed_order_critical_lr,
        {"long_name": "the same closed form for the batches in a fixed order "
         "(fit(shuffle=False)); equals theory_critical_lr unless the map shuffles "
         "minibatches, where it is what the same run without shuffling would do"},
    )  # fmt: skip
    for name, text in PER_N_VARIABLES.items():
        # The targets' scale and L* differ between noise draws; the Hessian does not.
        by = ("n", *sweep.data_dims) if np.ndim(per_n[name]) > 1 else ("n",)
        data_vars[name] = (by, per_n[name], {"long_name": text})
    data_vars["excess_loss"] = (
        dims, excess_loss(results["final_loss"], per_n["optimal_loss"], dims, sweep.data_dims),
        {"long_name": "final_loss - optimal_loss: how far the run is from the best fit",
         "units": "1"},
    )  # fmt: skip
    data_vars["loss_history"] = (
        ("curve", "epoch"),
        histories,
        {"long_name": "History losses of selected configurations"},
    )
    coords: dict[str, object] = {d: list(getattr(sweep, d)) for d in DIMS}
    applies = {
        h: list(sweep.applies_to(h))
        for h in (*dict(sweep.hyperparameters), *dict(sweep.optimizer_args))
    }
    for h, values in sweep.hyperparameters:
        coords[h] = (h, np.array(values, np.float64), {
            "long_name": f"swept optimizer hyperparameter {h} (applies to "
            f"{', '.join(applies[h]) or 'no optimizer'}; the other optimizers ran once, "
            "their results repeated along this axis)",
        })  # fmt: skip
    table = sweep.problem.user_table
    if table is not None and table.d > 1:
        coords["feature"] = ("feature", list(table.feature_names),
                             {"long_name": f"input column of {table.source}"})  # fmt: skip
    if sweep.noise:
        coords["noise"] = ("noise", np.array(sweep.noise, np.float64), {
            "long_name": "standard deviation of the Gaussian noise added to the targets"})
        coords["noise_seed"] = ("noise_seed", np.array(sweep.noise_seed, np.int64), {
            "long_name": "seed of the targets' noise (point i draws the same whatever N)"})
    coords["epoch"] = np.arange(1, histories.shape[1] + 1)
    coords["curve"] = [sweep.curve_label(c) for c in curves]
    for field in ("optimizer", "lr", "n", "batch_size", "seed"):
        coords[f"curve_{field}"] = ("curve", [getattr(c, field) for c in curves])
    attrs = {
        "title": "Stability map of Keras Dense(1) + MSE trained by model.fit",
        "problem": sweep.problem.describe(),
        **problem_attrs(sweep.problem),
        "dtype": sweep.dtype,
        "shuffle": int(sweep.shuffle),
        "kernel": engine.resolve_kernel(sweep.kernel),
        "tol": sweep.tol,
        "diverge_factor": sweep.diverge_factor,
        "optimizer_args": json.dumps(dict(sweep.optimizer_args)),
        "hyperparameters_apply_to": json.dumps(applies),
        "status_rules": outcome.RULES,
        "jax_version": jax.__version__,
        "optax_version": optax.__version__,
        "numpy_version": np.__version__,
        "xarray_version": xr.__version__,
    }
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)
