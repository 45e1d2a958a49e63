"""The command line of the main job: ``python -m src.stability_map [options]``.

A thin layer: parse flags into a :class:`~src.spec.Sweep`, run it with a progress bar, write
the report with :func:`~src.report.publish` and print the findings. Bad input of any kind ends
with one line on stderr naming the problem and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import xarray as xr

from src import engine, findings, optimizers, outcome, validation, xla_options
from src.boundary import DEFAULT_RTOL
from src.errors import InputError
from src.problem import Problem, read_xy_csv
from src.runner import RunStats, check_memory, resumed_configs, run
from src.spec import DEFAULT_OPTIMIZERS, Curve, Sweep, log_grid

MAX_AXIS_POINTS = 10_000_000
PARTIAL = ".partial"
"""Where in ``--out`` a run keeps its finished chunks until the map is written (``--resume``)."""
"""Refuse larger axes before building them (the grid check then covers the product)."""

EXPLAIN_EXAMPLES = """\
examples:
  python -m src.stability_map explain --optimizer sgd --lr 0.01 --n 20
  python -m src.stability_map explain --optimizer momentum --lr 0.01 --n 30 --batch-size 8
  python -m src.stability_map explain --optimizer sgd --lr 0.05 --data my_points.csv --json
"""

EXAMPLES = """\
examples:
  python -m src.stability_map explain --optimizer sgd --lr 0.01 --n 20   # one config, why
  python -m src.stability_map --config reports/stability_map/sweep.toml --out again  # rerun
  python -m src.stability_map                         # the seed problem's default map
  python -m src.stability_map --optimizers sgd,adam --lr 1e-4:1:121 --n 1:32
  python -m src.stability_map --n 20 --batch-size 4,32 --seeds 0,1,2 --shuffle
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
        help=f"comma list of {', '.join(optimizers.OPTIMIZERS)} (default: all)",
    )
    p.add_argument(
        "--lr",
        default="1e-5:1:81",
        help="learning rates: comma list, or start:stop:count log-spaced (default 1e-5:1:81)",
    )
    p.add_argument(
        "--n",
        default="1:64",
        help="dataset sizes: comma list or start:stop inclusive (default 1:64)",
    )
    p.add_argument(
        "--batch-size", default="32", help="comma list of batch sizes (default 32, Keras's)"
    )
    p.add_argument("--epochs", default="500", help="comma list of epoch counts (default 500)")
    p.add_argument("--seeds", default="0", help="comma list of initialisation seeds (default 0)")
    p.add_argument(
        "--shuffle",
        action="store_true",
        help="reshuffle every epoch (Keras's fit default; off here)",
    )
    p.add_argument(
        "--tol",
        default=str(outcome.DEFAULT_TOL),
        help="converged when final loss <= tol * mean(y^2) (default 1e-4)",
    )
    p.add_argument(
        "--diverge-factor",
        default=str(outcome.DEFAULT_DIVERGE_FACTOR),
        help="diverging when final loss > factor * initial loss (default 1)",
    )
    p.add_argument("--dtype", default="float32", help="float32 (Keras's) or float64")
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
        "--chunk-size", default="0", help="configurations per engine call (default: automatic)"
    )
    p.add_argument(
        "--kernel",
        default="auto",
        help="how a batch's loss and gradient are computed: moments (per-batch sufficient "
        "statistics, O(1) per step), autodiff (per-sample autodiff, Keras's arithmetic) or auto "
        "(moments unless --shuffle; default)",
    )
    p.add_argument(
        "--boundary-rtol",
        default=str(DEFAULT_RTOL),
        help="relative precision of the measured critical lr per cell (default 0.001)",
    )
    p.add_argument(
        "--sweep",
        action="append",
        default=None,
        metavar="NAME=V1,V2,...",
        help="sweep an optimizer hyperparameter (or base option such as clipnorm) as one more "
        "axis of the map, e.g. momentum=0,0.5,0.9 (repeatable; optimizers without it are run "
        "once and repeated along the axis)",
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
        help="re-run K configurations of the map in real Keras (TensorFlow) and compare "
        f"(default {validation.DEFAULT_COUNT} when TensorFlow is installed; 0: off)",
    )
    p.add_argument(
        "--out",
        default="reports/stability_map",
        help="output directory (default reports/stability_map)",
    )
    p.add_argument(
        "--coordinator",
        default=None,
        metavar="HOST:PORT",
        help="run over several processes/hosts with jax.distributed: process 0's address "
        "(every process runs the same command with its own --process-id)",
    )
    p.add_argument("--num-processes", default="1", help="processes in all (with --coordinator)")
    p.add_argument("--process-id", default="0", help="this process, 0 .. K-1 (0 writes)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--force", action="store_true", help="overwrite a map already in --out")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run of the same sweep into --out from the chunks it "
        f"saved ({PARTIAL}/ there), simulating only the rest; the map is the same as an "
        "uninterrupted run's (without it, a saved unfinished run is discarded)",
    )
    p.add_argument(
        "--config",
        default=None,
        metavar="SWEEP.toml",
        help="read flags from a sweep file (every run writes one: <out>/sweep.toml); "
        "flags on the command line override it",
    )
    return p


def parse_main_args(argv: Sequence[str]) -> argparse.Namespace:
    """The main job's flags: ``--config`` file values first, the command line over them."""
    from src import sweep_file

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config is not None:
        flags = {
            a.dest: isinstance(a, argparse._StoreTrueAction)
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
    return Sweep(
        optimizer=names,
        lr=parse_lr(args.lr),
        n=parse_n(args.n),
        batch_size=_positive_ints(args.batch_size, "--batch-size"),
        epochs=_positive_ints(args.epochs, "--epochs"),
        seed=tuple(_ints(args.seeds, "--seeds")),
        shuffle=args.shuffle,
        tol=_one_float(args.tol, "--tol"),
        diverge_factor=_one_float(args.diverge_factor, "--diverge-factor"),
        dtype=args.dtype,
        problem=_problem(args),
        curves=None if args.curve is None else tuple(parse_curve(c) for c in args.curve),
        chunk_size=_ints(args.chunk_size, "--chunk-size")[0],
        kernel=args.kernel,
        boundary_rtol=_one_float(args.boundary_rtol, "--boundary-rtol"),
        hyperparameters=tuple(parse_sweep_axis(t) for t in args.sweep or ()),
        optimizer_args=tuple(_key_values(args.optimizer_args, "--optimizer-args").items()),
    )


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
    p.add_argument("--optimizer", default="sgd", help=f"one of {', '.join(optimizers.OPTIMIZERS)}")
    p.add_argument("--lr", default="0.01", help="learning rate (default 0.01)")
    p.add_argument("--n", default=None, help="dataset size of the problem (default 20)")
    p.add_argument("--data", default=None, metavar="FILE.csv", help="your data: CSV, columns x,y")
    p.add_argument("--batch-size", default="32")
    p.add_argument("--epochs", default="500")
    p.add_argument("--seed", default="0")
    p.add_argument(
        "--optimizer-args",
        default="",
        metavar="K=V,...",
        help="hyperparameters, e.g. momentum=0.5, beta_1=0.8 or clipnorm=1",
    )
    p.add_argument("--dtype", default="float32")
    _problem_flags(p)
    p.add_argument("--json", action="store_true", help="print the diagnosis as JSON")
    return p


def _problem_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--slope", default="0.5", help="targets y = slope * x + intercept (default 0.5)")
    p.add_argument("--intercept", default="0", help="(default 0)")
    p.add_argument("--x-start", default="1", help="inputs x = x_start + x_step * i (default 1)")
    p.add_argument("--x-step", default="1", help="(default 1)")
    p.add_argument(
        "--standardize", action="store_true", help="standardise x to zero mean, unit variance"
    )


def _problem(args: argparse.Namespace) -> Problem:
    """The :class:`~src.problem.Problem` of the flags named after its fields (a flag each)."""
    values = {}
    for f in dataclasses.fields(Problem):
        given = getattr(args, f.name)
        flag = "--" + f.name.replace("_", "-")
        values[f.name] = given if f.type in (bool, "bool") else _one_float(given, flag)
    return Problem(**values)


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


def _guarded(job: Callable[[], None]) -> int:
    """Run ``job``: bad input -> one line and status 2, ^C -> 130, a closed stdout -> quiet."""
    try:
        job()
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "interrupted: no output file was left half-written (--resume continues a map "
            "from the chunks it finished)",
            file=sys.stderr,
        )
        return 130
    except BrokenPipeError:  # e.g. piped into `head`: what was asked for is done
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def explain_job(argv: Sequence[str]) -> None:
    """``explain``: one configuration diagnosed, in words or JSON."""
    from src import explain, store

    args = build_explain_parser().parse_args(argv)
    name = args.optimizer.strip()
    optimizers.get(name)
    if args.data is not None and args.n is not None:
        raise InputError("give --n (the problem's dataset) or --data (yours), not both")
    if args.dtype not in ("float32", "float64"):
        raise InputError(f"--dtype must be float32 or float64, got {args.dtype!r}")
    lrs, ns = parse_lr(args.lr), parse_n(args.n or "20")
    if len(lrs) != 1 or len(ns) != 1:
        raise InputError("explain takes one --lr and one --n (the main job sweeps several)")
    case = explain.Case(
        optimizer=name,
        lr=lrs[0],
        n=ns[0],
        batch_size=_positive_ints(args.batch_size, "--batch-size")[0],
        epochs=_positive_ints(args.epochs, "--epochs")[0],
        seed=_ints(args.seed, "--seed")[0],
        hyperparameters=parse_optimizer_args(args.optimizer_args, name),
        problem=_problem(args),
        data=None if args.data is None else read_xy_csv(args.data),
        dtype=args.dtype,
    )
    report = explain.explain(case)
    if args.json:
        print(json.dumps(store.finite(report), indent=2))
    else:
        print("\n".join(explain.describe(report)))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the main job (or ``explain``); returns the exit status (0, 2 bad input, 130 ^C)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    xla_options.configure()  # before JAX's backend starts: the map's rounding (no FMA)
    if argv[:1] == ["explain"]:
        return _guarded(lambda: explain_job(argv[1:]))
    return _guarded(lambda: map_job(argv))


def map_job(argv: Sequence[str]) -> None:
    """The main job: run the sweep, write the report, print the findings."""
    started = time.perf_counter()
    args = parse_main_args(argv)
    sweep = sweep_from_args(args)
    check_memory(sweep)
    checks = _validation_count(args.validate)
    if engine.resolve_kernel(sweep.kernel, sweep.shuffle) == "moments":
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
            return
    from src import report, resume, store, sweep_file  # heavy imports once the input is good

    out = store.prepare_output_dir(Path(args.out))
    unfinished = (out / PARTIAL / resume.FINGERPRINT).exists()
    if (out / "stability_map.nc").exists() and not args.force and not (args.resume and unfinished):
        raise InputError(
            f"--out {out} already holds a stability map"
            + (" and no unfinished run to resume" if args.resume else "")
            + "; pass --force to overwrite it or choose another --out"
        )
    if args.resume and not unfinished and not args.quiet:
        print(f"nothing to resume in {out}: starting from the beginning", file=sys.stderr)
    work = resume.WorkStore.open(out / PARTIAL, sweep, resume=args.resume)
    ds, stats = _run_with_progress(sweep, quiet=args.quiet, work=work)
    checked = _validate_with_progress(ds, checks, quiet=args.quiet)
    if not args.quiet:
        print("writing the report ...", file=sys.stderr)
    summary, lines = report.publish(ds, stats, sweep.problem, out, started, validation=checked)
    store.write_text(out / "sweep.toml", sweep_file.resolved(sweep, report.versions()))
    work.discard()  # every file is written: the saved chunks have served
    _print_summary(ds, stats, sweep, summary, lines, out)
    print(validation.headline(checked))


def _validation_count(text: str | None) -> int:
    return validation.DEFAULT_COUNT if text is None else validation.parse_count(text)


def _validate_with_progress(
    ds: xr.Dataset, count: int, quiet: bool
) -> validation.ValidationRecord:
    """The Keras check of the map (:func:`src.validation.validate`), with a progress bar."""
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
    print(
        f"Stability map of {sweep.problem.describe()}: {dims} = {stats.n_configs:,} configurations "
        f"in {summary['wall_seconds']:.1f} s ({stats.compute_seconds:.2f} s compute, "
        f"{stats.config_epochs_per_second:.3g} config-epochs/s on {', '.join(stats.devices)})."
    )
    print("\n".join(lines))
    shown = findings.shown_ns([int(n) for n in ds.n.values])
    print("Largest stable lr on the grid (neither overflow nor diverging; all N in summary.json):")
    found = summary["findings"]
    print("\n".join(findings.stable_lr_table(found, list(sweep.optimizer), shown)))
    critical = findings.critical_lr_table(found, list(sweep.optimizer), shown)
    if critical:
        print("Critical lr (smallest that overflows or diverges), measured vs closed form:")
        print("\n".join(critical))
    print(f"Report: {out / 'index.html'}")


def _run_with_progress(sweep: Sweep, quiet: bool, work: object = None):  # noqa: ANN202
    """Run ``sweep`` (saving its chunks in ``work``, a :class:`src.resume.WorkStore`) under
    a progress bar: configs/s and the time left; chunks resumed from ``work`` count as done."""
    if quiet:
        return run(sweep, work=work)
    from tqdm import tqdm

    with tqdm(
        total=sweep.n_configs,
        initial=0 if work is None else resumed_configs(sweep, work),
        unit="config",
        unit_scale=True,
        file=sys.stderr,
        desc="simulating",
        dynamic_ncols=True,
    ) as bar:
        return run(sweep, progress=bar.update, stage=bar.set_description, work=work)
