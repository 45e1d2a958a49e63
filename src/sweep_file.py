"""Sweep files: every flag of the main job in TOML, read with ``--config`` and written by each run.

A sweep file holds the command line's flags by their long names with ``_`` for ``-``
(``batch_size = [8, 32]``, ``lr = "1e-5:1:81"`` or a list, ``shuffle = true``,
``sweep = ["momentum=0.0,0.9"]``, ``optimizer_args = "clipnorm=1.0"``, ...). Keys
that are not flags are an error naming the key; values are checked exactly as the flags are.
Flags given on the command line override the file.

Every run writes ``sweep.toml`` beside its outputs with the fully *resolved* sweep: every
learning rate written out in full precision (``repr`` round-trips a float64), the seeds, the
curves, and a ``[meta]`` table with the versions that produced it (informational, ignored when
read). ``--config <out>/sweep.toml --out other`` reproduces the dataset bit for bit.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from collections.abc import Mapping
from pathlib import Path

from src.errors import InputError
from src.spec import Sweep

META = "meta"
RUN_ONLY = ("out", "quiet", "force", "resume", "config")
"""Flags about where and how to run, not about what: never written into a sweep file."""
LISTS_OF_TEXT = {"curve": '"OPT:LR:N[:BS[:SEED]]"', "sweep": '"NAME=V1,V2,..."'}
"""Repeatable flags: a list of strings in the file, one per use of the flag."""


def read(path: str | Path, flags: Mapping[str, bool]) -> dict[str, str | bool | list[str]]:
    """Flag values (as the command line would give them) from the TOML file at ``path``.

    ``flags`` maps every flag name to whether it is a switch (true/false in the file).
    """
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"--config {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"--config {path}: cannot read it ({e})") from None
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"--config {path}: not valid TOML ({e})") from None
    data.pop(META, None)
    out: dict[str, str | bool | list[str]] = {}
    for key, value in data.items():
        if key not in flags:
            raise InputError(
                f"--config {path}: unknown key {key!r} (valid keys: {', '.join(sorted(flags))})"
            )
        if flags[key] != isinstance(value, bool):
            kind = "true or false" if flags[key] else "a number, a name or a list of them"
            raise InputError(f"--config {path}: {key} must be {kind}, got {value!r}")
        out[key] = _as_flag(key, value, path)
    return out


def _as_flag(key: str, value: object, path: str | Path) -> str | bool | list[str]:
    if isinstance(value, bool):
        return value
    if key in LISTS_OF_TEXT:
        if isinstance(value, str):
            value = [value]
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise InputError(f"--config {path}: {key} must be a list of {LISTS_OF_TEXT[key]}")
        return value
    if isinstance(value, list):
        if not all(isinstance(v, (int, float, str)) and not isinstance(v, bool) for v in value):
            raise InputError(f"--config {path}: {key} must be a list of numbers or names")
        return ",".join(_text(v) for v in value)
    if isinstance(value, (int, float, str)):
        return _text(value)
    raise InputError(f"--config {path}: {key} has an unsupported value {value!r}")


def _text(v: object) -> str:
    return repr(v) if isinstance(v, float) else str(v)


def resolved(sweep: Sweep, meta: Mapping[str, str]) -> str:
    """The TOML text of ``sweep``, every value explicit (see the module docstring)."""
    p = sweep.problem
    values: dict[str, object] = {
        "optimizers": list(sweep.optimizer),
        "lr": list(sweep.lr),
        "n": list(sweep.n),
        "batch_size": list(sweep.batch_size),
        "epochs": list(sweep.epochs),
        "seeds": list(sweep.seed),
        "shuffle": sweep.shuffle,
        "tol": sweep.tol,
        "diverge_factor": sweep.diverge_factor,
        "dtype": sweep.dtype,
        **{f.name: getattr(p, f.name) for f in dataclasses.fields(p)},  # each a flag
        # the noise axes, where the map has them (the problem's own noise is then 0)
        **({"noise": list(sweep.noise), "noise_seed": list(sweep.noise_seed)}
           if sweep.noise else {}),
        "curve": [
            f"{c.optimizer}:{c.lr!r}:{c.n}:{c.batch_size}:{c.seed}" for c in sweep.resolved_curves
        ],
        "chunk_size": sweep.chunk_size,
        "kernel": sweep.kernel,
        "boundary_rtol": sweep.boundary_rtol,
        "sweep": [f"{h}=" + ",".join(_toml(v) for v in vs) for h, vs in sweep.hyperparameters],
        "optimizer_args": ",".join(f"{h}={_toml(v)}" for h, v in sweep.optimizer_args),
    }
    lines = ["# The resolved sweep of this run: `--config` this file to reproduce it exactly."]
    lines += [f"{k} = {_toml(v)}" for k, v in values.items()]
    lines += ["", f"[{META}]"] + [f"{k} = {_toml(v)}" for k, v in meta.items()]
    return "\n".join(lines) + "\n"


def _toml(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return (
            repr(v)
            if math.isfinite(v)
            else ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))
        )
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)  # a TOML basic string has JSON's escapes
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")
