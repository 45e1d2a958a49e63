"""The command line of the main job: ``python -m src.stability_map [options]``.

A thin layer: parse flags into a :class:`~src.spec.Sweep`, run it with a progress bar, write
the report with :func:`~src.report.publish` and print the findings. Bad input of any kind ends
with one line on stderr naming the problem and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import xarray as xr

from src import engine, findings, optimizers, outcome, theory, validation, xla_options
from src.boundary import DEFAULT_RTOL
from src.errors import InputError
from src.focus import SEED_FOCUS, parse_focus
from src.problem import Problem
from src.runner import RunStats, check_memory, resumed_configs, run
from src.spec import DEFAULT_OPTIMIZERS, Curve, Sweep, log_grid

MAX_AXIS_POINTS = 10_000_000
"""Refuse larger axes before building them (the grid check then covers the product)."""
PARTIAL = ".partial"
"""Where in ``--out`` a run keeps its finished chunks until the map is written (``--resume``)."""
EXPLAIN_MAX_N = 10_000_000
"""The largest dataset ``explain`` builds (a few arrays of N float64s)."""
CHECK_FAILED = 3
"""Exit status of a main job whose map and report were written but whose Keras check failed."""

EXPLAIN_EXAMPLES = """\
examples:
  python -m src.stability_map explain --optimizer sgd --lr 0.01 --n 20
  python -m src.stability_map explain --optimizer momentum --lr 0.01 --n 30 --batch-size 8
  python -m src.stability_map explain --optimizer sgd --lr 0.05 --data my_points.csv --json
"""

STATUSES_HELP = (
    "statuses (each configuration gets the first that applies; shown at the default --tol\n"
    "and --diverge-factor):\n"
    + "".join(
        f"  {name:<11} {rule}\n"
        for name, rule in outcome.explained(outcome.DEFAULT_TOL, outcome.DEFAULT_DIVERGE_FACTOR)
    )
    + """
exit status: 0 done; 2 bad input, or an output that cannot be written (one line says which);
3 the map and report were written but the Keras check failed; 130 interrupted (--resume
continues). One run at a time may write into an --out folder.
"""
)

EXAMPLES = STATUSES_HELP + """
examples:
  python -m src.stability_map explain --optimizer sgd --lr 0.01 --n 20   # one config, why
  python -m src.stability_map --config reports/stability_map/sweep.toml --out again  # rerun
  python -m src.stability_map                         # the seed problem's default map
  python -m src.stability_map --optimizers sgd,adam --lr 1e-4:1:121 --n 1:32
  python -m src.stability_map --n 20 --batch-size 4,32 --seeds 0,1,2 --no-shuffle
  python -m src.stability_map --standardize --out reports/standardized
  python -m src.stability_map --optimizers sgd --sweep momentum=0,0.5,0.9,0.99 --n 1:32
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, no usage dump
        raise InputError(message)


def _floats(text: str, what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"{what} must be numbers separated by commas, got {text!r}") from None
    if not values:
        raise InputError(f"{what} is empty")
    return values


def _ints(text: str, what: str) -> list[int]:
    values = _floats(text, what)
    if any(not math.isfinite(v) or v != int(v) for v in values):
        raise InputError(f"{what} must be whole numbers, got {text!r}")
    return [int(v) for v in values]


def parse_lr(text: str) -> tuple[float, ...]:
    """``"0.01,0.1"`` (a list) or ``"start:stop:count"`` (log-spaced, both ends included)."""
    parts = text.split(":")
    if len(parts) == 1:
        values = _floats(text, "--lr")
        for v in values:
            if not (math.isfinite(v) and v > 0):
                raise InputError(f"--lr values must be > 0, got {v:g}")
        return tuple(values)
    if len(parts) != 3:
        raise InputError(f"--lr takes a comma list or start:stop:count, got {text!r}")
    start, stop = (_floats(p, "--lr start:stop")[0] for p in parts[:2])
    count = _ints(parts[2], "--lr count")[0]
    if not (math.isfinite(start) and math.isfinite(stop) and start > 0 and stop > 0):
        raise InputError(f"--lr start and stop must be > 0, got {text!r}")
    if not 1 <= count <= MAX_AXIS_POINTS:
        raise InputError(f"--lr count must be between 1 and {MAX_AXIS_POINTS:,}, got {count}")
    return log_grid(start, stop, count)


def parse_n(text: str) -> tuple[int, ...]:
    """``"10,20"`` (a list) or ``"start:stop"`` (inclusive)."""
    parts = text.split(":")
    if len(parts) == 1:
        values = _ints(text, "--n")
    elif len(parts) == 2:
        start, stop = (_ints(p, "--n start:stop")[0] for p in parts)
        if stop < start:
            raise InputError(f"--n start:stop needs start <= stop, got {text!r}")
        if stop - start + 1 > MAX_AXIS_POINTS:
            raise InputError(f"--n has more than {MAX_AXIS_POINTS:,} values: {text!r}")
        values = list(range(start, stop + 1))
    else:
        raise InputError(f"--n takes a comma list or start:stop, got {text!r}")
    for v in values:
        if v < 1:
            raise InputError(f"--n: dataset size N must be >= 1, got {v}")
    return tuple(values)


def _positive_ints(text: str, flag: str) -> tuple[int, ...]:
    values = _ints(text, flag)
    for v in values:
        if v < 1:
            raise InputError(f"{flag} must be >= 1, got {v}")
    return tuple(values)


def _one_int(text: str, flag: str, lo: int, hi: int) -> int:
    """One whole number in ``[lo, hi]``."""
    values = _ints(text, flag)
    if len(values) != 1:
        raise InputError(f"{flag} takes one whole number, got {text!r}")
    if not lo <= values[0] <= hi:
        raise InputError(f"{flag} must be between {lo:,} and {hi:,}, got {values[0]}")
    return values[0]


def parse_curve(text: str) -> Curve:
    """``OPTIMIZER:LR:N[:BATCH_SIZE[:SEED]]``."""
    parts = text.split(":")
    if not 3 <= len(parts) <= 5:
        raise InputError(f"--curve takes OPTIMIZER:LR:N[:BATCH_SIZE[:SEED]], got {text!r}")
    optimizers.get(parts[0])
    lr = parse_lr(parts[1])[0]
    rest = [_ints(p, "--curve")[0] for p in parts[2:]]
    return Curve(parts[0], lr, *rest)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m src.stability_map",
        description=(
            "Map where Keras Dense(1) + MSE training is stable: learning rate x optimizer x "
            "dataset size x batch size x seed, simulated at once in JAX."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--optimizers",
        default=",".join(DEFAULT_OPTIMIZERS),
        help=f"comma list of {', '.join(optimizers.OPTIMIZERS)} "
        f"(default {','.join(DEFAULT_OPTIMIZERS)})",
    )
    p.add_argument(
        "--lr",
        default="1e-5:1:81",
        help="learning rates > 0: comma list, or start:stop:count log-spaced, rounded to 6 "
        "significant digits (at most ~1.15 million points per 5 decades; default 1e-5:1:81)",
    )
    p.add_argument(
        "--n",
        default=None,
        help="dataset sizes N >= 1: comma list or start:stop inclusive; with --data, the "
        "first N rows of the file (default 1:64, up to the file's rows)",
    )
    p.add_argument(
        "--batch-size",
        default="32",
        help="comma list of batch sizes, 1 to 2,147,483,647 (default 32, Keras's)",
    )
    p.add_argument(
        "--epochs",
        default="500",
        help=f"comma list of epoch counts, 1 to {engine.MAX_EPOCHS:,} (default 500)",
    )
    p.add_argument(
        "--seeds", default="0", help="comma list of initialisation seeds, 0 to 2**32-1 (default 0)"
    )
    p.add_argument(
        "--shuffle",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="reshuffle the samples every epoch, as Keras's fit does by default (default: on; "
        "--no-shuffle feeds them in their order every epoch, fit(shuffle=False))",
    )
    p.add_argument(
        "--tol",
        default=str(outcome.DEFAULT_TOL),
        help="tolerance > 0: converged when final loss <= tol * mean(y^2) (default 1e-4)",
    )
    p.add_argument(
        "--diverge-factor",
        default=str(outcome.DEFAULT_DIVERGE_FACTOR),
        help="factor > 0: diverging when final loss > factor * initial loss (default 1)",
    )
    p.add_argument(
        "--dtype", default="float32", help="float32 (Keras's; default) or float64"
    )
    _problem_flags(p)
    p.add_argument(
        "--curve",
        action="append",
        default=None,
        metavar="OPT:LR:N[:BS[:SEED]]",
        help="keep the full loss history of this configuration (repeatable; "
        "default: the seed's SGD and Adam runs)",
    )
    p.add_argument(
        "--chunk-size",
        default="0",
        help="configurations per engine call, >= 0 (default 0: automatic)",
    )
    p.add_argument(
        "--kernel",
        default="auto",
        help="how a batch's loss and gradient are computed: moments (per-batch sufficient "
        "statistics, O(1) per step), autodiff (per-sample autodiff, Keras's arithmetic) or auto "
        "(moments; default)",
    )
    p.add_argument(
        "--boundary-rtol",
        default=str(DEFAULT_RTOL),
        help="relative precision of the measured critical lr per cell, in (0, 1) "
        "(default 0.001)",
    )
    p.add_argument(
        "--sweep",
        action="append",
        default=None,
        metavar="NAME=V1,V2,...",
        help="sweep an optimizer hyperparameter (or base option such as clipnorm) as one more "
        "axis of the map, e.g. momentum=0,0.5,0.9 (repeatable; optimizers without it are run "
        "once and repeated along the axis; default: none)",
    )
    p.add_argument(
        "--optimizer-args",
        default="",
        metavar="K=V,...",
        help="fixed hyperparameters for every optimizer that has them, e.g. beta_1=0.8 or "
        "clipnorm=1 (default: Keras's)",
    )
    p.add_argument(
        "--validate",
        default=None,
        metavar="K",
        help="re-run K >= 0 configurations of the map in real Keras (TensorFlow) and compare "
        f"(default {validation.DEFAULT_COUNT}: the seed's two and both sides of each optimizer's "
        "boundary; 0: off). Costs ~10 s to start the Keras workers plus ~1 s and ~3 ms per epoch "
        "for each configuration, two at a time on two cores",
    )
    p.add_argument(
        "--out",
        default="reports/stability_map",
        help="output directory (default reports/stability_map)",
    )
    p.add_argument(
        "--focus",
        default=None,
        metavar="OPT:LR:N[:BATCH]",
        help="the configuration the report opens on: its verdict, why, the simulated fixes "
        "and its loss against lr, shown at the map's nearest cell (default "
        "sgd:0.01:20:32, the seed's model.fit(xs, ys, epochs=500))",
    )
    p.add_argument(
        "--coordinator",
        default=None,
        metavar="HOST:PORT",
        help="run over several processes/hosts with jax.distributed: process 0's address "
        "(every process runs the same command with its own --process-id; default: one process)",
    )
    p.add_argument(
        "--num-processes",
        default="1",
        help="processes in all, >= 1 (with --coordinator; default 1)",
    )
    p.add_argument("--process-id", default="0", help="this process, 0 .. K-1 (default 0; 0 writes)")
    _switch(p, "--quiet", "no progress bar (default: shown)")
    _switch(p, "--force", "overwrite a finished map already in --out (default: refuse)")
    _switch(
        p,
        "--resume",
        "continue an interrupted run of the same sweep into --out from the chunks it saved "
        f"({PARTIAL}/ there), simulating only the rest; the map is the same as an "
        "uninterrupted run's (default: a saved unfinished run is discarded)",
    )
    p.add_argument(
        "--config",
        default=None,
        metavar="SWEEP.toml",
        help="read flags from a sweep file (every run writes one: <out>/sweep.toml); "
        "flags on the command line override it (default: none)",
    )
    return p


def parse_main_args(argv: Sequence[str]) -> argparse.Namespace:
    """The main job's flags: ``--config`` file values first, the command line over them."""
    from src import sweep_file

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config is not None:
        flags = {
            a.dest: isinstance(a, (argparse._StoreTrueAction, argparse.BooleanOptionalAction))
            for a in parser._actions
            if a.dest not in ("help", "config")
        }
        parser.set_defaults(**sweep_file.read(args.config, flags))
        given = args
        args = parser.parse_args(argv)
        for a in parser._actions:  # a repeatable flag on the command line replaces the file's
            if isinstance(a, argparse._AppendAction) and getattr(given, a.dest) is not None:
                setattr(args, a.dest, getattr(given, a.dest))
    return args


def _one_float(text: str, flag: str) -> float:
    values = _floats(text, flag)
    if len(values) != 1 or not math.isfinite(values[0]):
        raise InputError(f"{flag} must be one finite number, got {text!r}")
    return values[0]


def sweep_from_args(args: argparse.Namespace) -> Sweep:
    names = tuple(v.strip() for v in args.optimizers.split(",") if v.strip())
    if not names:
        raise InputError("--optimizers is empty")
    for name in names:
        optimizers.get(name)
    if args.dtype not in ("float32", "float64"):
        raise InputError(f"--dtype must be float32 or float64, got {args.dtype!r}")
    noise, noise_seed = _noise_axes(args)
    problem = _problem(argparse.Namespace(**{**vars(args), "noise": "0", "noise_seed": "0"}))
    return Sweep(
        optimizer=names,
        lr=parse_lr(args.lr),
        n=parse_n(args.n or _default_n(problem)),
        batch_size=_positive_ints(args.batch_size, "--batch-size"),
        epochs=_positive_ints(args.epochs, "--epochs"),
        seed=tuple(_ints(args.seeds, "--seeds")),
        shuffle=args.shuffle,
        tol=_one_float(args.tol, "--tol"),
        diverge_factor=_one_float(args.diverge_factor, "--diverge-factor"),
        dtype=args.dtype,
        problem=problem,
        curves=None if args.curve is None else tuple(parse_curve(c) for c in args.curve),
        chunk_size=_ints(args.chunk_size, "--chunk-size")[0],
        kernel=args.kernel,
        boundary_rtol=_one_float(args.boundary_rtol, "--boundary-rtol"),
        hyperparameters=tuple(parse_sweep_axis(t) for t in args.sweep or ()),
        optimizer_args=tuple(_key_values(args.optimizer_args, "--optimizer-args").items()),
        noise=noise,
        noise_seed=noise_seed,
    )


def _noise_axes(args: argparse.Namespace) -> tuple[tuple[float, ...], tuple[int, ...]]:
    """The main job's ``--noise`` and ``--noise-seed`` lists: the map's data dimensions
    (none without noise, so a map without it keeps its shape)."""
    noise = tuple(_floats(args.noise, "--noise"))
    seeds = tuple(_ints(args.noise_seed, "--noise-seed"))
    if noise == (0.0,):
        if seeds != (0,):
            raise InputError("--noise-seed without --noise: give the noise levels too")
        return (), ()
    return noise, seeds


def _default_n(problem: Problem) -> str:
    """The main job's dataset sizes: 1 to 64, or to a shorter table's rows."""
    rows = problem.max_n
    return f"1:{64 if rows is None else min(64, rows)}"


def parse_sweep_axis(text: str) -> tuple[str, tuple[float, ...]]:
    """``"momentum=0,0.5,0.9"`` -> ``("momentum", (0.0, 0.5, 0.9))`` (names checked by Sweep)."""
    name, sep, values = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise InputError(f"--sweep takes NAME=V1,V2,..., got {text!r}")
    parsed = _floats(values, f"--sweep {name}")
    if any(math.isnan(v) for v in parsed):
        raise InputError(f"--sweep {name}: values must be numbers, got {values!r}")
    if len(set(parsed)) != len(parsed):
        raise InputError(f"--sweep {name} has repeated values: {values!r}")
    return name, tuple(parsed)


def _key_values(text: str, flag: str) -> dict[str, float]:
    """``"K=V,K2=V2"`` -> a dict of numbers (``inf`` allowed: clipnorm's "off")."""
    out: dict[str, float] = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InputError(f"{flag}: {item!r} is not NAME=VALUE")
        if key in out:
            raise InputError(f"{flag}: {key} is given twice")
        values = _floats(value, f"{flag} {key}")
        if len(values) != 1 or math.isnan(values[0]):
            raise InputError(f"{flag} {key} must be one number, got {value!r}")
        out[key] = values[0]
    return out


def build_explain_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m src.stability_map explain",
        description=(
            "Diagnose one configuration in plain words: verdict, Hessian, critical lr, predicted "
            "and simulated growth and overflow, and fixes checked by simulation."
        ),
        epilog=EXPLAIN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--optimizer",
        default="sgd",
        help=f"one of {', '.join(optimizers.OPTIMIZERS)} (default sgd)",
    )
    p.add_argument("--lr", default="0.01", help="learning rate > 0 (default 0.01)")
    p.add_argument(
        "--n", default=None,
        help="dataset size N, 1 to 10,000,000, of the problem (default 20; with --data: all "
        "its rows)",
    )
    p.add_argument("--batch-size", default="32", help="batch size >= 1 (default 32, Keras's)")
    p.add_argument(
        "--epochs", default="500", help=f"epochs, 1 to {engine.MAX_EPOCHS:,} (default 500)"
    )
    p.add_argument("--seed", default="0", help="initialisation seed, 0 to 2**32-1 (default 0)")
    p.add_argument(
        "--optimizer-args",
        default="",
        metavar="K=V,...",
        help="hyperparameters, e.g. momentum=0.5, beta_1=0.8 or clipnorm=1 (default: Keras's)",
    )
    p.add_argument(
        "--dtype", default="float32", help="float32 (Keras's; default) or float64"
    )
    _problem_flags(p)
    _switch(p, "--json", "print the diagnosis as JSON (default: words)")
    return p


def _switch(p: argparse.ArgumentParser, flag: str, text: str) -> None:
    """A flag that is off unless given."""
    p.add_argument(flag, action="store_true", help=text)


def _problem_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data", default="", metavar="FILE.csv",
        help="your data instead of the line: a CSV file with a header line (every numeric "
        "column but the target is a feature, see --target and --features; --n takes its first "
        "N rows), or sklearn:diabetes (needs scikit-learn; default: the line below)",
    )  # fmt: skip
    p.add_argument("--slope", default="0.5", help="targets y = slope * x + intercept (default 0.5)")
    p.add_argument("--intercept", default="0", help="(finite; default 0)")
    p.add_argument("--x-start", default="1", help="inputs x = x_start + x_step * i (default 1)")
    p.add_argument("--x-step", default="1", help="(finite, non-zero; default 1)")
    _switch(
        p, "--standardize",
        "standardise each input feature to zero mean, unit variance over the N rows, as "
        "keras.layers.Normalization adapted to them (default: raw inputs)",
    )  # fmt: skip
    p.add_argument(
        "--noise", default="0",
        help="standard deviation >= 0 of Gaussian noise added to the targets; the main job "
        "takes a comma list, an axis of the map (default 0: none)",
    )  # fmt: skip
    p.add_argument(
        "--noise-seed", default="0",
        help="seed of the noise, 0 to 2**32-1 (the main job: a comma list, an axis of the map); "
        "point i gets the same draw whatever N (default 0)",
    )  # fmt: skip
    p.add_argument(
        "--target", default="",
        help="with --data: the column to predict (default y; target for sklearn:diabetes)",
    )  # fmt: skip
    p.add_argument(
        "--features", default="",
        help="with --data: comma list of input columns (default: every other numeric column)",
    )  # fmt: skip


def _problem(args: argparse.Namespace) -> Problem:
    """The :class:`~src.problem.Problem` of the flags named after its fields (a flag each)."""
    values: dict[str, object] = {}
    for f in dataclasses.fields(Problem):
        given = getattr(args, f.name)
        flag = "--" + f.name.replace("_", "-")
        if f.type in (bool, "bool"):
            values[f.name] = given
        elif f.type in (str, "str"):
            values[f.name] = (given or "").strip()
        elif f.type in (int, "int"):
            values[f.name] = _one_int(given, flag, 0, 2**32 - 1)
        else:
            values[f.name] = _one_float(given, flag)
    problem = Problem(**values)
    problem.user_table  # noqa: B018 -- read now: a bad file is a one-line error up front
    return problem


def parse_optimizer_args(text: str, name: str) -> dict[str, float]:
    """``"momentum=0.5,nesterov=1"`` -> a dict, checked against the optimizer's hyperparameters."""
    allowed = (*optimizers.get(name).family.hyperparameters, *optimizers.BASE_OPTIONS)
    out: dict[str, float] = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in allowed:
            raise InputError(
                f"--optimizer-args: {item!r} is not NAME=VALUE with NAME one of "
                + ", ".join(allowed)
            )
        out[key] = _one_float(value, f"--optimizer-args {key}")
    return out


def _guarded(job: Callable[[], int | None]) -> int:
    """Run ``job``: bad input or an output that cannot be written -> one line and status 2,
    ^C -> 130, a closed stdout -> quiet; otherwise the job's own status (0 by default)."""
    try:
        return job() or 0
    except InputError as e:
        _one_line(f"error: {e}")
        return 2
    except OSError as e:  # the disk is full, a name is too long, a folder is read-only ...
        from src import store

        where = f": {e.filename}" if e.filename else ""
        _one_line(
            f"error: cannot write the outputs{where}: {store.describe(e)}; nothing was left "
            "half-written, and --resume continues from the chunks already saved"
        )
        return 2
    except KeyboardInterrupt:
        _one_line(
            "interrupted: no output file was left half-written (--resume continues a map "
            "from the chunks it finished)"
        )
        return 130
    except BrokenPipeError:  # e.g. piped into `head`: what was asked for is done
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _one_line(text: str) -> None:
    print(" ".join(text.split("\n")), file=sys.stderr)


def explain_job(argv: Sequence[str]) -> None:
    """``explain``: one configuration diagnosed, in words or JSON."""
    from src import explain, store

    args = build_explain_parser().parse_args(argv)
    name = args.optimizer.strip()
    optimizers.get(name)
    problem = _problem(args)
    if args.dtype not in ("float32", "float64"):
        raise InputError(f"--dtype must be float32 or float64, got {args.dtype!r}")
    rows = problem.max_n
    default_n = "20" if rows is None else str(rows)
    lrs, ns = parse_lr(args.lr), parse_n(default_n if args.n is None else args.n)
    if len(lrs) != 1 or len(ns) != 1:
        raise InputError("explain takes one --lr and one --n (the main job sweeps several)")
    if ns[0] > EXPLAIN_MAX_N:
        raise InputError(f"explain --n must be at most {EXPLAIN_MAX_N:,}, got {ns[0]:,}")
    case = explain.Case(
        optimizer=name,
        lr=lrs[0],
        n=ns[0],
        batch_size=_one_int(args.batch_size, "--batch-size", 1, 2**31 - 1),
        epochs=_one_int(args.epochs, "--epochs", 1, engine.MAX_EPOCHS),
        seed=_one_int(args.seed, "--seed", 0, 2**32 - 1),
        hyperparameters=parse_optimizer_args(args.optimizer_args, name),
        problem=problem,
        dtype=args.dtype,
    )
    report = explain.explain(case)
    if args.json:
        print(json.dumps(store.finite(report), indent=2))
    else:
        print("\n".join(explain.describe(report)))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the main job (or ``explain``); returns the exit status: 0 done, 2 bad input or an
    output that cannot be written, 3 (:data:`CHECK_FAILED`) the Keras check failed after the
    map and report were written, 130 interrupted."""
    argv = sys.argv[1:] if argv is None else list(argv)
    xla_options.configure()  # before JAX's backend starts: the map's rounding (no FMA)
    cache = xla_options.use_compilation_cache()  # a second run loads its programs instead
    # ... and reads the closed forms' scanned critical lrs back instead of scanning again
    theory.keep_critical_lrs_in(None if cache is None else cache / "closed_forms")
    job = (lambda: explain_job(argv[1:])) if argv[:1] == ["explain"] else (lambda: map_job(argv))
    # Overflow is what the map studies: NumPy's warnings about it would only be noise.
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        # ... and so would matplotlib's about degenerate axes of such maps.
        warnings.filterwarnings("ignore", category=UserWarning, module=r"matplotlib|src\.report")
        return _guarded(job)


def map_job(argv: Sequence[str]) -> int:
    """The main job: run the sweep, write the report, print the findings. Returns 0, or
    :data:`CHECK_FAILED` when the map and report were written but the Keras check failed."""
    started = time.perf_counter()
    args = parse_main_args(argv)
    sweep = sweep_from_args(args)
    check_memory(sweep)
    checks = _validation_count(args.validate)
    args.focus = SEED_FOCUS if args.focus is None else parse_focus(args.focus)
    if engine.resolve_kernel(sweep.kernel) == "moments":
        xla_options.use_multi_output_fusion()  # before JAX's backend starts (see its docs)
    if args.resume and args.coordinator is not None:
        raise InputError("--resume runs in one process; it does not combine with --coordinator")
    if args.coordinator is not None:
        from src import distributed

        distributed.initialize(
            args.coordinator,
            _ints(args.num_processes, "--num-processes")[0],
            _ints(args.process_id, "--process-id")[0],
        )
        if not distributed.is_writer():  # computes its shard of every chunk; writes nothing
            run(sweep)
            return 0
    from src import store  # heavy imports once the input is good

    out = store.prepare_output_dir(Path(args.out))
    with store.locked(out):
        return _map_into(out, args, sweep, checks, started)


def _map_into(
    out: Path, args: argparse.Namespace, sweep: Sweep, checks: int, started: float
) -> int:
    """The main job's work in ``out``, its lock held."""
    # The report's modules (matplotlib's, mostly: ~0.25 s, 2-core CPU) import on the side
    # while the engine computes the map, which leaves the interpreter free most of the time;
    # so does SciPy's linear algebra, which JAX loads with the first stored program (~0.2 s).
    with ThreadPoolExecutor(1, thread_name_prefix="imports") as importing:
        importing.submit(importlib.import_module, "scipy.linalg")
        report_module = importing.submit(importlib.import_module, "src.report")
        return _map_and_report(out, args, sweep, checks, started, report_module)


def _map_and_report(
    out: Path,
    args: argparse.Namespace,
    sweep: Sweep,
    checks: int,
    started: float,
    report_module: Future,
) -> int:
    """:func:`_map_into`'s work, with ``report_module`` (:mod:`src.report`) on its way."""
    from src import resume, store, sweep_file

    store.remove_temporaries(out)
    store.remove_temporaries(out / PARTIAL)
    unfinished = (out / PARTIAL / resume.FINGERPRINT).exists()
    if store.is_complete(out) and not args.force and not (args.resume and unfinished):
        raise InputError(
            f"--out {out} already holds a stability map"
            + (" and no unfinished run to resume" if args.resume else "")
            + "; pass --force to overwrite it or choose another --out"
        )
    if args.resume and not unfinished and not args.quiet:
        print(f"nothing to resume in {out}: starting from the beginning", file=sys.stderr)
    store.incomplete(out)
    work = resume.WorkStore.open(out / PARTIAL, sweep, resume=args.resume)
    ds, stats = _run_with_progress(sweep, quiet=args.quiet, work=work)
    report = report_module.result()
    store.write_netcdf(out / report.MAP_FILE, ds)  # the map first: the Keras check is a guest
    from tqdm import tqdm

    # The check's process mostly waits for its Keras workers: the report's figures, focus
    # panel and page data are made meanwhile, in a thread.
    with ThreadPoolExecutor(1, thread_name_prefix="report") as drafting:
        drafted = drafting.submit(report.draft, ds, stats, out, args.focus) if checks else None
        checked = _validate_with_progress(ds, checks, quiet=args.quiet)
        with tqdm(
            total=len(report.REPORT_STEPS), unit="step", file=sys.stderr,
            desc="writing the report", dynamic_ncols=True, disable=args.quiet,
        ) as bar:  # fmt: skip
            # The report's seconds count from here, as wall_seconds counts from `started`;
            # publish closes both (see report.summary_record).
            stats = dataclasses.replace(stats, report_started=time.perf_counter())
            summary, lines = report.publish(
                ds, stats, sweep.problem, out, started, validation=checked, map_written=True,
                focus=args.focus, progress=bar.update, drafted=drafted,
            )  # fmt: skip
    store.write_text(out / "sweep.toml", sweep_file.resolved(sweep, report.versions()))
    store.complete(out)
    work.discard()  # every file is written: the saved chunks have served
    _print_summary(ds, stats, sweep, summary, lines, out)
    print(validation.headline(checked))
    return CHECK_FAILED if checked["status"] == validation.FAILED else 0


def _validation_count(text: str | None) -> int:
    return validation.DEFAULT_COUNT if text is None else validation.parse_count(text)


def _validate_with_progress(
    ds: xr.Dataset, count: int, quiet: bool
) -> validation.ValidationRecord:
    """The Keras check of the map (:func:`src.validation.validate`), with a progress bar. The
    check is a guest in the run: whatever goes wrong in it becomes a ``failed`` record."""
    try:
        return _checked(ds, count, quiet)
    except Exception as e:  # the map is written whatever the check does
        reason = f"the check stopped with {type(e).__name__}: {e}"
        return validation.failed(ds, count, " ".join(reason.split()))


def _checked(ds: xr.Dataset, count: int, quiet: bool) -> validation.ValidationRecord:
    started = time.perf_counter()
    if quiet or validation.not_run(ds, count) is not None:
        return validation.validate(ds, count, started=started)
    from tqdm import tqdm

    total = min(count, ds.status.size)
    with tqdm(
        total=total, unit="config", file=sys.stderr, desc="checking in Keras", dynamic_ncols=True
    ) as bar:
        return validation.validate(ds, count, progress=bar.update, started=started)


def _print_summary(
    ds: xr.Dataset, stats: RunStats, sweep: Sweep, summary: dict, lines: list[str], out: Path
) -> None:
    dims = " x ".join(f"{ds.sizes[d]} {d}" for d in ds.status.dims if ds.sizes[d] > 1)
    count = f"{stats.n_configs:,} configuration" + ("s" if stats.n_configs != 1 else "")
    print(
        f"Stability map of {sweep.problem.describe()}: {dims + ' = ' if dims else ''}{count} "
        f"in {summary['wall_seconds']:.1f} s ({stats.compute_seconds:.2f} s compute, "
        f"{stats.config_epochs_per_second:.3g} config-epochs/s on {', '.join(stats.devices)}; "
        f"{stats.simulate_seconds:.1f} s simulating, {stats.boundary_seconds:.1f} s boundary, "
        f"{summary['report_seconds']:.1f} s report)."
    )
    print("\n".join(lines))
    shown = findings.shown_ns([int(n) for n in ds.n.values])
    print("Largest stable lr on the grid (neither overflow nor diverging; all N in summary.json):")
    found = summary["findings"]
    top = float(ds.lr.max())
    print("\n".join(findings.stable_lr_table(found, list(sweep.optimizer), shown, top)))
    critical = findings.critical_lr_table(found, list(sweep.optimizer), shown)
    if critical:
        print("Critical lr (smallest that overflows or diverges), measured vs closed form:")
        print("\n".join(critical))
    print(f"Report: {out / 'index.html'}")


def _run_with_progress(sweep: Sweep, quiet: bool, work: object = None):  # noqa: ANN202
    """Run ``sweep`` (saving its chunks in ``work``, a :class:`src.resume.WorkStore`) under
    progress bars on stderr: the map's (configs/s and the time left; chunks resumed from
    ``work`` count as done), then one per later phase (:data:`src.runner.Phase`: loss
    curves, refining and bisecting the critical lr), each with its own count and ETA and
    closed when the phase is done."""
    if quiet:
        return run(sweep, work=work)
    from tqdm import tqdm

    shown: list[tqdm] = []  # the bar of the phase under way

    def start(desc: str, total: int, unit: str, initial: int = 0) -> Callable[[int], None]:
        for bar in shown:
            bar.close()
        bar = tqdm(
            total=total, initial=initial, unit=unit, unit_scale=unit == "config", file=sys.stderr,
            desc=desc, dynamic_ncols=True,
        )  # fmt: skip
        shown[:] = [bar]

        def tick(k: int) -> None:
            bar.update(k)
            if bar.n >= total:
                bar.close()

        return tick

    try:
        resumed = 0 if work is None else resumed_configs(sweep, work)
        simulating = start("simulating", sweep.n_configs, "config", resumed)
        return run(sweep, progress=simulating, phase=start, work=work)
    finally:
        for bar in shown:
            bar.close()
