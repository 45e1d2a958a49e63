"""Fuzz both commands of the command line: every input ends in success or in one line.

Hypothesis builds command lines for the main job and for ``explain`` from valid and invalid
values of every flag (numbers, signs, zero, 1e400, nan, inf, empty strings, garbage, unicode,
repeated commas, bad ranges, unknown names and hyperparameters, files that are missing,
garbage or empty, output folders that are files, under files, too long or read-only) and
unknown or malformed flags. Each runs in this process through :func:`src.cli.main`, and must
either succeed (exit 0) or exit 2 with exactly one line, ``error: ...``, on stderr -- never a
traceback. Valid command lines are kept tiny (a few configurations, at most 5 epochs,
``--validate 0 --quiet``, a fresh ``--out``) so that the ones that run stay cheap.

The property does not stop at the first bad case: every case runs, and the test then fails
listing every command line that broke the contract, grouped by what happened, so that one run
shows everything left to fix. The examples are derandomized: every run tries the same cases.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shlex
import shutil
import stat
import sys
import time
import traceback
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, seed, settings
from hypothesis import strategies as st

from src import optimizers
from src.cli import main

CASES = 300
"""Command lines tried per run, half in each file (each checks that its half ran)."""

# ----------------------------------------------------------------------------- values

OPTIMIZER_NAMES = tuple(optimizers.OPTIMIZERS)
GARBAGE = (
    "", " ", ",", ",,", ",,,1", "1,,2", "abc", "nan", "NaN", "inf", "-inf", "1e400", "-1e400",
    "1e-400", "0", "-0", "-1", "0x10", "1_0", "1 2", "'1'", "[1]", "None", "true", ":", "::",
    "1:0", "5:1:0", "1:2:3:4", "=", "==", "-", "\t", "ñ", "\uff11", "٣", "∞", "\u22121", "🙂",
    "\uff53\uff47\uff44", "sgd\u200b", "\u00a01", "1e", ".", "..", "/", "%s", "{}", "\\", '"',
    "x" * 300,
)  # fmt: skip
"""Text that is wrong for (almost) every flag. Nothing here is expensive where it is valid:
"1_0" and a fullwidth "1" read as 10 and 1, "1e400" and "-1e400" as infinities."""
HUGE = ("1e30", "99999999999999999999", "1e308", "1.7976931348623157e308")
"""Finite but absurd: refused by the flags that must refuse them (N is caught by the memory
check). Only given to flags where they cannot start a long run."""

_valid_float = st.sampled_from(("0", "1", "-2.5", "0.5", "1e-300", "1e30", "1e300", "-1e300"))
_bad_float = st.sampled_from((*GARBAGE, "1,2", "1e400,1", "nan,1"))


def _either(valid: st.SearchStrategy[str], invalid: st.SearchStrategy[str], bad: int = 1):
    """``valid`` or ``invalid``, ``bad`` times in 8 the latter (valid is the simpler choice,
    which Hypothesis favours)."""
    return st.integers(0, 7).flatmap(lambda r: invalid if r >= 8 - bad else valid)


def _comma(values: st.SearchStrategy, most: int) -> st.SearchStrategy[str]:
    return st.lists(values, min_size=1, max_size=most, unique=True).map(
        lambda vs: ",".join(str(v) for v in vs)
    )


# The main job: every valid grid is at most 2 optimizers x 3 lr x 8 N x 2 batch x 2 seeds
# x 2 epochs (<= 5) x 3 swept values.
_optimizers = _either(
    _comma(st.sampled_from(OPTIMIZER_NAMES), 2),
    st.sampled_from((*GARBAGE, "sgd,sgd", "SGD", "nope", "sgd,nope", " , sgd", "sgd;adam")),
)
_lr_value = st.sampled_from(("1e-4", "0.001", "0.01", "0.1", "1", "10", "1e30"))
_lr = _either(
    st.one_of(
        _comma(_lr_value, 3),
        st.tuples(_lr_value, _lr_value, st.integers(1, 3)).map(lambda t: f"{t[0]}:{t[1]}:{t[2]}"),
    ),
    st.sampled_from(
        (*GARBAGE, "-0.01", "0.01,0.01", "1e-5:1:0", "1:2:1.5", "1:2:-3", "1:2:nan", "0:1:3",
         "-1:1:3", "nan:1:3", "1:inf:3", "1e-400:1:2", "1:2:10000001", "1:2:1e400", "0.01:",
         ":0.01:2", "1e-5:1:1e30", "1,2:3:4")
    ),
)  # fmt: skip
_n = _either(
    st.one_of(
        _comma(st.integers(1, 8), 3),
        st.tuples(st.integers(1, 8), st.integers(0, 3)).map(
            lambda t: f"{t[0]}:{min(8, t[0] + t[1])}"
        ),
    ),
    st.sampled_from(
        GARBAGE + HUGE + ("1.5", "2,2", "0:3", "8:1", "-3:2", "1:1e400", "1:nan", "1:2:3",
                          "1e30:1e30", "1:10000001")
    ),
)  # fmt: skip
_epochs = _either(
    _comma(st.integers(1, 5), 2),
    st.sampled_from((*GARBAGE, *HUGE, "2.5", "4194304", "3,3")),
)
_batch_size = _either(
    _comma(st.sampled_from((1, 2, 3, 8, 32)), 2),
    st.sampled_from(GARBAGE + HUGE + ("2.5", "2,2", "2147483648")),
)
_seeds = _either(
    _comma(st.sampled_from((0, 1, 3, 4294967295)), 2),
    st.sampled_from(GARBAGE + HUGE + ("4294967296", "-1,0", "1.5", "0,0")),
)
_positive_float = _either(
    st.sampled_from(("1e-4", "0.5", "1", "1e30", "1e-300")), _bad_float, bad=2
)
_problem_float = _either(_valid_float, _bad_float)
_dtype = _either(
    st.sampled_from(("float32", "float64")),
    st.sampled_from(("float16", "FLOAT32", "", "int", "float", "ñ", "float32,float64")),
)
_kernel = _either(
    st.sampled_from(("auto", "moments", "autodiff")),
    st.sampled_from(("", "AUTO", "fast", "moments,auto", " auto")),
)
_chunk_size = _either(
    st.sampled_from(("0", "1", "3", "1e30")),
    st.sampled_from(("-1", "nan", "1.5", "", "abc", "1e400", "1,2")),
)
_boundary_rtol = _either(
    st.sampled_from(("0.001", "0.1", "0.5")),
    st.sampled_from(("0", "1", "-0.1", "nan", "inf", "1e400", "", "abc", "0.1,0.2")),
)
_validate = _either(
    st.just("0"), st.sampled_from(("-1", "abc", "1.5", "nan", "inf", "1e400", "", "0,0"))
)

HYPERPARAMETERS = (
    "clipnorm", "momentum", "nesterov", "beta_1", "beta_2", "epsilon", "amsgrad", "rho", "centered",
    "initial_accumulator_value", "clipvalue", "global_clipnorm", "weight_decay",
    "use_ema", "learning_rate_power", "l1_regularization_strength",
)  # fmt: skip
"""Hyperparameter names to sweep or fix. Not muon's ns_steps: a huge value there is a run
that never ends (not an input error this test can time)."""
_bad_names = st.sampled_from(
    ("bogus", "", " ", "lr", "n", "status", "seed", "Momentum", "momentum ", "ñ", "=", "a=b")
)
_hp_value = st.sampled_from(("0", "0.5", "0.9", "1"))
_bad_hp_values = st.sampled_from(
    ("", "nan", "inf", "-inf", "1e400", "abc", "0.5,0.5", ",", "1:2", "ñ", "0.5;0.9")
)


@st.composite
def _sweep_axis(draw: st.DrawFn) -> str:
    name = draw(_either(st.sampled_from(HYPERPARAMETERS), _bad_names))
    values = draw(_either(_comma(_hp_value, 3), _bad_hp_values))
    return draw(st.sampled_from((f"{name}={values}", f"{name}={values}", name, f"={values}")))


@st.composite
def _key_values(draw: st.DrawFn) -> str:
    items = []
    for _ in range(draw(st.integers(0, 2))):
        name = draw(_either(st.sampled_from(HYPERPARAMETERS), _bad_names))
        value = draw(_either(_hp_value, _bad_hp_values))
        items.append(draw(st.sampled_from((f"{name}={value}", f"{name}={value}", name))))
    return draw(st.sampled_from((",", ", ", ",,"))).join(items)


_curve = _either(
    st.tuples(
        st.sampled_from(OPTIMIZER_NAMES), st.sampled_from(("0.01", "0.1", "1e-3")),
        st.integers(1, 8), st.sampled_from(("", ":2", ":8:1", ":1:0")),
    ).map(lambda t: f"{t[0]}:{t[1]}:{t[2]}{t[3]}"),
    st.sampled_from(
        (*GARBAGE, "sgd:0.01", "nope:0.01:3", "sgd:0:3", "sgd:0.01:0", "sgd:0.01:3:0",
         "sgd:0.01:3:1:-1", "sgd:nan:3", "sgd:1e400:3", "sgd:0.01:1e30", "sgd:0.01:3:1e30",
         "sgd:0.01:3:1:1e30", "sgd:0.01:3:1:2:3", "sgd:1:2:3:4:5", ":0.01:3", "sgd::3",
         "sgd:0.01,0.1:3", "sgd:1e-3:1:3:2", "sgd:0.01:2:2147483648")
    ),
)  # fmt: skip


# ----------------------------------------------------------------------------- paths


@dataclasses.dataclass(frozen=True)
class Out:
    """An ``--out`` made in the case's own folder when the case runs (see :func:`_out`)."""

    kind: str


@dataclasses.dataclass(frozen=True)
class Config:
    """A ``--config`` file (see :data:`CONFIGS`)."""

    kind: str


@dataclasses.dataclass(frozen=True)
class Data:
    """An ``explain --data`` file (see :data:`DATA`)."""

    kind: str


OUT_KINDS = (
    "fresh", "fresh", "fresh", "fresh", "fresh", "fresh", "fresh", "fresh", "fresh", "fresh",
    "existing_dir", "file", "under_file", "long", "under_long", "read_only", "in_read_only",
    "proc", "devnull", "empty", "dot", "relative", "unicode", "has_map", "dir_symlink_loop",
)  # fmt: skip

CONFIGS: dict[str, str | bytes | None] = {
    "missing": None,
    "dir": None,
    "empty": "",
    "garbage": b"\x00\xff\xfe garbage [[[ = =\n",
    "not_utf8": b'n = "\xff\xfe"\n',
    "not_toml": "this is not toml\n",
    "bad_key": "bogus = 1\n",
    "bad_switch": "shuffle = 3\n",
    "switch_as_value": "n = true\n",
    "table": "[lr]\nx = 1\n",
    "date": "n = 1979-05-27\n",
    "nested_list": "n = [[1, 2]]\n",
    "bad_curve": "curve = 5\n",
    "nan": "tol = nan\n",
    "huge_int": "n = 99999999999999999999\n",
    "bad_value": 'n = "0"\n',
    "valid": 'optimizers = ["sgd"]\nlr = [0.01]\nn = [2, 3]\nepochs = [2]\nshuffle = false\n',
    "valid_meta": 'seeds = [1]\nsweep = ["momentum=0,0.5"]\n\n[meta]\nwhatever = "x"\n',
    "bom": "\ufeffn = [2]\n",
}

DATA: dict[str, str | bytes | None] = {
    "missing": None,
    "dir": None,
    "empty": "",
    "blank_lines": "\n\n  \n",
    "header_only": "x,y\n",
    "garbage": b"\x00\xff\xfe\x00garbage",
    "not_utf8": b"x,y\n\xff,1\n",
    "no_header": "1,2\n3,4\n",
    "bad_value": "x,y\n1,abc\n",
    "nan": "x,y\n1,nan\n2,3\n",
    "inf": "x,y\n1,inf\n2,3\n",
    "huge": "x,y\n1e300,1\n-1e300,2\n",
    "overflow": "x,y\n1e400,1\n",
    "ragged": "x,y\n1,2,3\n",
    "short_row": "x,y\n1\n",
    "one_row": "x,y\n1,2\n",
    "same_x": "x,y\n1,2\n1,3\n1,4\n",
    "valid": "x,y\n1,0.5\n2,1\n3,1.5\n4,2\n",
    "upper_extra": "Y,X,z\n1,2,3\n4,5,6\n",
    "quoted": '"x","y"\n"1","2"\n"2","4"\n',
    "semicolon": "x;y\n1;2\n",
    "bom": "\ufeffx,y\n1,2\n2,3\n",
    "unicode_digits": "x,y\n\uff11,٣\n2,3\n",
    "duplicate_header": "x,x,y\n1,2,3\n",
}

Token = str | Out | Config | Data


def _out(kind: str, case: Path) -> str:
    """The ``--out`` of ``kind``, made in ``case`` (the case's folder and working directory)."""
    if kind in ("fresh", "under_file", "under_long"):
        base = {"fresh": case, "under_file": case / "file", "under_long": case / ("o" * 300)}
        if kind == "under_file":
            base[kind].write_text("x")
        return str(base[kind] / "out")
    if kind == "existing_dir":
        (case / "out").mkdir()
        return str(case / "out")
    if kind == "file":
        (case / "file").write_text("x")
        return str(case / "file")
    if kind == "long":
        return str(case / ("o" * 300))
    if kind in ("read_only", "in_read_only"):
        ro = case / "ro"
        ro.mkdir()
        ro.chmod(0o555)  # root writes there anyway: then the case simply succeeds
        return str(ro if kind == "read_only" else ro / "out")
    if kind == "proc":  # a folder no one can make
        return "/proc/stability-map-fuzz/out" if sys.platform == "linux" else "/dev/null/out"
    if kind == "devnull":
        return os.devnull
    if kind == "empty":
        return ""  # the working directory: the case's folder
    if kind == "dot":
        return "."
    if kind == "relative":
        return "a b/c"
    if kind == "unicode":
        return str(case / "ñ 🙂 \uff4f\uff55\uff54")
    if kind == "has_map":
        (case / "out").mkdir()
        (case / "out" / "stability_map.nc").write_bytes(b"not netcdf")
        (case / "out" / "summary.json").write_text("{")
        return str(case / "out")
    if kind == "dir_symlink_loop":
        (case / "loop").symlink_to(case / "loop")
        return str(case / "loop" / "out")
    raise AssertionError(kind)


def _file(kind: str, content: str | bytes | None, case: Path, suffix: str) -> str:
    path = case / f"{kind}{suffix}"
    if kind == "dir":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    return str(path)


def _resolve(token: Token, case: Path) -> str:
    if isinstance(token, Out):
        return _out(token.kind, case)
    if isinstance(token, Config):
        return _file(token.kind, CONFIGS[token.kind], case, ".toml")
    if isinstance(token, Data):
        return _file(token.kind, DATA[token.kind], case, ".csv")
    return token


# ----------------------------------------------------------------------------- command lines

JUNK = (
    "--bogus", "--bogus=1", "-x", "-", "--", "foo", "--n=", "--opt", "--x", "--shuffle=1",
    "--quiet=yes", "explain", "---n", "--N", "-1e400", "--ñ", "--lr", "--json=no", "--seed",
)  # fmt: skip
"""Flags argparse must refuse (unknown, ambiguous, a switch given a value, a value missing
when last). No prefix of --help, which prints many lines and exits 0."""


@st.composite
def _flags(draw: st.DrawFn, options: dict[str, st.SearchStrategy], most: int) -> list[Token]:
    """Up to ``most`` of ``options`` (a flag -> its values), each at most once."""
    names = draw(st.lists(st.sampled_from(sorted(options)), max_size=most, unique=True))
    out: list[Token] = []
    for name in names:
        value = draw(options[name])
        out += [name] if value is True else [name, value]
    return out


_switch = st.just(True)

PROBLEM_FLAGS = {
    "--slope": _problem_float,
    "--intercept": _problem_float,
    "--x-start": _problem_float,
    "--x-step": _problem_float,
    "--standardize": _switch,
}
"""The problem's flags, shared by both commands."""

MAIN_OPTIONAL = {
    "--batch-size": _batch_size,
    "--seeds": _seeds,
    "--shuffle": _switch,
    "--tol": _positive_float,
    "--diverge-factor": _positive_float,
    "--dtype": _dtype,
    **PROBLEM_FLAGS,
    "--chunk-size": _chunk_size,
    "--kernel": _kernel,
    "--boundary-rtol": _boundary_rtol,
    "--optimizer-args": _key_values(),
    "--force": _switch,
    "--resume": _switch,
    "--num-processes": st.sampled_from(("1", "0", "-1", "abc", "1e400", "")),
    "--process-id": st.sampled_from(("0", "1", "-1", "abc", "")),
}
"""Flags a main-job case may add. --coordinator is added with --resume only (a valid
address alone would wait for the other processes)."""


@st.composite
def main_case(draw: st.DrawFn) -> list[Token]:
    """A main-job command line: the grid flags always (bounded or invalid), some others."""
    argv: list[Token] = [
        "--optimizers", draw(_optimizers), "--lr", draw(_lr), "--n", draw(_n),
        "--epochs", draw(_epochs), "--validate", draw(_validate), "--quiet",
        "--out", Out(draw(st.sampled_from(OUT_KINDS))),
    ]  # fmt: skip
    argv += draw(_flags(MAIN_OPTIONAL, 6))
    for _ in range(draw(st.sampled_from((0, 0, 0, 1, 2)))):
        argv += ["--sweep", draw(_sweep_axis())]
    for _ in range(draw(st.sampled_from((0, 0, 0, 1, 2)))):
        argv += ["--curve", draw(_curve)]
    if draw(st.integers(0, 7)) == 7:
        argv += ["--config", Config(draw(st.sampled_from(sorted(CONFIGS))))]
    if draw(st.integers(0, 15)) == 15:
        argv += ["--resume", "--coordinator", draw(st.sampled_from(("localhost:1", "x:")))]
    return _pairs_shuffled(draw, argv)


EXPLAIN_OPTIONS = {
    "--optimizer": _either(
        st.sampled_from(OPTIMIZER_NAMES),
        st.sampled_from((*GARBAGE, "sgd,adam", "SGD", "nope", " sgd ")),
    ),
    "--lr": _either(
        st.sampled_from(("0.01", "0.1", "1", "1e-4", "1e30", "1e-3:1e-3:1", "1:2:1")),
        st.sampled_from((*GARBAGE, "0.01,0.1", "1e-5:1:3", "-0.01", "1:2:0", "1e-5:1:10000001")),
    ),
    "--n": _either(
        st.sampled_from((*tuple(str(k) for k in range(1, 9)), "3:3", "\uff18")),
        st.sampled_from((*GARBAGE, "1:3", "2,3", "1e30", "1.5", "''")),
    ),
    "--batch-size": _either(
        st.sampled_from(("1", "2", "3", "32", "2147483647")),
        st.sampled_from(GARBAGE + HUGE + ("2.5", "2147483648", "2,3")),
    ),
    "--seed": _either(
        st.sampled_from(("0", "1", "4294967295")),
        st.sampled_from(GARBAGE + HUGE + ("4294967296", "1.5", "0,1")),
    ),
    "--optimizer-args": _key_values(),
    "--dtype": _dtype,
    **PROBLEM_FLAGS,
    "--json": _switch,
    "--data": _either(
        st.sampled_from(("valid", "upper_extra", "quoted", "huge", "one_row", "same_x")),
        st.sampled_from(sorted(DATA)),
        bad=4,
    ).map(Data),
}


@st.composite
def explain_case(draw: st.DrawFn) -> list[Token]:
    """An ``explain`` command line: --epochs always (<= 5 or invalid), some other flags."""
    argv: list[Token] = ["--epochs", draw(_epochs)]
    argv += draw(_flags(EXPLAIN_OPTIONS, 6))
    return ["explain", *_pairs_shuffled(draw, argv)]


def _pairs_shuffled(draw: st.DrawFn, argv: list[Token]) -> list[Token]:
    """``argv`` with its flags (each with its value) in a drawn order."""
    pairs: list[list[Token]] = []
    for token in argv:
        if isinstance(token, str) and token.startswith("--") and token not in ("--",):
            pairs.append([token])
        else:
            pairs[-1].append(token)
    order = draw(st.permutations(range(len(pairs))))
    return [t for k in order for t in pairs[k]]


@st.composite
def command_line(draw: st.DrawFn) -> list[Token]:
    """A main-job or ``explain`` command line, sometimes with an argparse error added."""
    argv = draw(st.one_of(main_case(), explain_case()))
    if draw(st.integers(0, 9)) == 9:
        junk = draw(st.sampled_from(JUNK))
        first = 1 if argv[0] == "explain" else 0
        argv.insert(draw(st.integers(first, len(argv))), junk)
    return argv


TINY = ["--optimizers", "sgd", "--lr", "0.01", "--n", "2", "--epochs", "2"]
"""A grid that is cheap to run, should a refused command line be run after all."""
MAIN = [*TINY, "--validate", "0", "--quiet"]

REGRESSIONS: list[list[Token]] = [
    ["explain", "--dtype", "float64", "--epochs", "2"],
    ["explain", "--n", "", "--epochs", "2"],
    ["explain", "--n", "1e30", "--epochs", "2"],
    ["explain", "--batch-size", "1e30", "--epochs", "2"],
    ["explain", "--seed", "1e30", "--epochs", "2"],
    ["explain", "--seed", "-1", "--epochs", "2"],
    ["explain", "--epochs", "1e30"],
    [*MAIN, "--out", Out("fresh"), "--curve", "sgd:0.01:1", "--curve", "sgd:0.01:1"],
    ["explain", "--epochs", "2", "--x-start", "1e300"],
    ["explain", "--epochs", "2", "--data", Data("huge")],
    [*MAIN, "--out", Out("fresh"), "--batch-size", "1e30"],
    [*MAIN, "--out", Out("fresh"), "--batch-size", "2147483648"],
    [*MAIN, "--out", Out("fresh"), "--curve", "sgd:0.01:2:2147483648"],
    [*MAIN, "--out", Out("long")],
    [*MAIN, "--out", Out("under_long")],
    [*MAIN, "--out", Out("file")],
    [*MAIN, "--out", Out("proc")],
    [*MAIN, "--out", Out("fresh"), "--config", Config("garbage")],
]
"""Command lines that broke the contract once, tried on every run besides the drawn ones."""

# ----------------------------------------------------------------------------- running


@dataclasses.dataclass
class Outcome:
    argv: list[str]
    status: int | None
    out: str
    err: str
    seconds: float
    raised: str | None = None  # the traceback of an exception that escaped main()
    error: str = ""  # that exception, in a line
    warned: list[str] = dataclasses.field(default_factory=list)

    def problem(self) -> str | None:
        """What breaks the contract, in a few words (None: success, or exit 2 and one line)."""
        if self.raised is not None:
            return f"raised {self.error[:200]} ({_where(self.raised)}): a traceback, exit 1"
        if "Traceback" in self.out or "Traceback" in self.err:
            return f"exit {self.status} with a traceback printed"
        if self.status == 0:
            return None
        if self.status != 2:
            return f"exit {self.status} (expected 0, or 2 for bad input)"
        lines = self.err.splitlines()
        extra = [line for w in self.warned for line in w.splitlines()]
        if len(lines) + len(extra) != 1 or not self.err.endswith("\n"):
            how = f"{len(lines)} stderr lines"
            if extra:
                how += f" + a warning a real run prints ({len(extra)} lines: {extra[0][:120]})"
            return f"exit 2 with {how}"
        if not self.err.startswith("error: "):
            return "exit 2 but the line does not start with 'error: '"
        return None


def _where(tb: str) -> str:
    """The innermost frame of the project in a traceback, ``src/x.py:123``."""
    frames = [line.strip() for line in tb.splitlines() if line.strip().startswith('File "')]
    ours = [f for f in frames if "/src/" in f] or frames or ["?"]
    text = ours[-1]
    try:
        path = text.split('"')[1]
        line = text.split("line ")[1].split(",")[0]
        return f"{'src/' + path.split('/src/')[-1] if '/src/' in path else path}:{line}"
    except IndexError:
        return text


def run_case(argv: list[str], case: Path, capfd: pytest.CaptureFixture[str]) -> Outcome:
    """``main(argv)`` with ``case`` as the working directory; output, status, warnings."""
    capfd.readouterr()
    raised, error = None, ""
    started = time.perf_counter()
    with contextlib.chdir(case), warnings.catch_warnings(record=True) as caught:
        # The warnings a plain `python -m src.stability_map` would print on stderr.
        warnings.resetwarnings()
        warnings.simplefilter("default")
        for quiet in (DeprecationWarning, PendingDeprecationWarning, ImportWarning,
                      ResourceWarning):  # fmt: skip
            warnings.filterwarnings("ignore", category=quiet)
        try:
            status: int | None = main(argv)
        except SystemExit as e:  # argparse's way out: the status it carries
            status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException as e:
            status, raised = None, traceback.format_exc()
            error = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
    seconds = time.perf_counter() - started
    out, err = capfd.readouterr()
    warned = [str(warnings.formatwarning(w.message, w.category, w.filename, w.lineno, ""))
              for w in caught]  # fmt: skip
    return Outcome(argv, status, out, err, seconds, raised, error, warned)


def _cleanup(case: Path) -> None:
    for path in (case / "ro",):
        if path.is_dir() and not path.is_symlink():
            path.chmod(stat.S_IRWXU)
    shutil.rmtree(case, ignore_errors=True)


def _report(failures: list[Outcome], tmp: Path) -> str:
    """Every failing command line, grouped by what happened (shortest first)."""
    groups: dict[str, list[Outcome]] = {}
    for f in failures:
        groups.setdefault(f.problem() or "?", []).append(f)
    lines = [f"{len(failures)} command lines broke the contract, in {len(groups)} ways:"]
    for problem, cases in sorted(groups.items(), key=lambda g: -len(g[1])):
        lines.append(f"\n* {problem} -- {len(cases)} case(s), e.g.:")
        for c in sorted(cases, key=lambda c: len(shlex.join(c.argv)))[:3]:
            shown = shlex.join(c.argv).replace(str(tmp), "$TMP")
            lines.append(f"    {shown}")
            err = c.err.strip().splitlines()
            if err and c.raised is None:
                lines.append(f"      stderr ({len(err)} lines): {err[0][:200]!r} ...")
    return "\n".join(lines)


def fuzz(
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    cases: int,
    shard: int,
    regressions: list[list[Token]],
) -> None:
    """``cases`` Hypothesis-made command lines (and ``regressions``), each of which must
    succeed or exit 2 with one line, no traceback. ``shard`` seeds the draw: the property's
    halves (this file's and ``test_fuzz_cli_more.py``'s) try different command lines, and
    each run the same ones; two files, so that the two halves run on two workers."""
    done: list[Outcome] = []
    started = time.perf_counter()

    @seed(shard)
    @settings(
        max_examples=cases,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
        ],
    )
    @given(tokens=command_line())
    def one(tokens: list[Token]) -> None:
        case = tmp_path / f"case{len(done)}"
        case.mkdir()
        try:
            argv = [_resolve(t, case) for t in tokens]
            done.append(run_case(argv, case, capfd))
        finally:
            _cleanup(case)

    for tokens in regressions:
        one = example(tokens=tokens)(one)
    one()
    failures = [o for o in done if o.problem() is not None]
    seconds = time.perf_counter() - started
    statuses: dict[str, int] = {}
    for o in done:
        key = "raised" if o.raised else f"exit {o.status}"
        statuses[key] = statuses.get(key, 0) + 1
    slowest = max(done, key=lambda o: o.seconds)
    with capfd.disabled():
        print(
            f"\nfuzz cases: {len(done)} in {seconds:.0f} s "
            f"({', '.join(f'{k}: {v}' for k, v in sorted(statuses.items()))}); slowest "
            f"{slowest.seconds:.1f} s: {shlex.join(slowest.argv).replace(str(tmp_path), '$TMP')}"
        )
    assert len(done) >= cases, f"only {len(done)} fuzz cases ran"
    assert not failures, _report(failures, tmp_path)


@pytest.mark.slow  # hundreds of command lines, a few dozen of which run a tiny map
def test_fuzz_command_line(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """The first half of the fuzz cases, and every regression."""
    fuzz(tmp_path, capfd, CASES // 2, 0, REGRESSIONS)


# ----------------------------------------------------------------------------- focused cases


def _refused(argv: list[str], case: Path, capfd: pytest.CaptureFixture[str]) -> Outcome:
    """Run ``argv`` and check the contract of bad input: exit 2, one line, no traceback."""
    got = run_case(argv, case, capfd)
    assert got.raised is None, got.raised
    assert "Traceback" not in got.out + got.err, got.err[-3000:]
    assert got.status == 2, (got.status, got.err[-3000:])
    assert len(got.err.splitlines()) == 1 and got.err.endswith("\n"), got.err[-3000:]
    assert got.err.startswith("error: "), got.err
    return got


@pytest.mark.parametrize("under", ["", "sub"])
def test_out_with_a_300_character_name(
    under: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / ("o" * 300) / under
    _refused([*MAIN, "--out", str(out)], tmp_path, capfd)


def test_out_that_is_a_file(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("x")
    _refused([*MAIN, "--out", str(tmp_path / "file")], tmp_path, capfd)
    assert (tmp_path / "file").read_text() == "x"


def test_ten_million_learning_rates_are_refused_quickly_and_briefly(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """1e-5:1:10000000 rounds to repeated values and makes too large a grid anyway (every
    other flag at its default): refused in well under a second on any machine (5 s here, for
    a loaded one; building the axis first takes ~10 s), in a line that does not list it."""
    argv = ["--lr", "1e-5:1:10000000", "--validate", "0", "--quiet", "--out", str(tmp_path / "o")]
    got = _refused(argv, tmp_path, capfd)
    assert len(got.err) < 300, f"{len(got.err):,} characters: {got.err[:300]}..."
    assert "1.00001e-05" not in got.err
    assert got.seconds < 5, f"took {got.seconds:.1f} s to refuse"


def test_explain_with_an_empty_n(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """An empty --n is an error, not the default N = 20."""
    _refused(["explain", "--n", "", "--epochs", "2"], tmp_path, capfd)
