"""A plain-words diagnosis of one configuration, with every suggested fix checked by simulation.

``python -m src.stability_map explain --optimizer sgd --lr 0.01 --n 20`` answers: what happens
(the simulated verdict), why (the Hessian's largest eigenvalue, the critical learning rate and
by how much the lr exceeds it), what theory predicts (growth factor per epoch, epoch of float32
overflow) against what the engine measured, from which N this lr breaks on the seed problem,
and what would fix it: half the critical lr, standardised x, Adam, gradient clipping -- each one
simulated, never merely asserted.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import NotRequired, TypedDict

import jax
import numpy as np

from src import boundary, outcome, theory
from src import optimizers as opt
from src.configs import FlatConfigs
from src.engine import initial_kernel
from src.errors import InputError
from src.problem import Problem, data_table, table_rows
from src.simulator import Simulator
from src.spec import default_lr_grid

CLIPNORM = "clipnorm"
CLIPNORM_FIX = 1.0
PREDICTED_EPOCHS = 2000
PREDICTED_STEPS = 100_000
"""Epochs (and batch steps, at most) evaluated exactly for the overflow prediction; later
epochs are extrapolated with the predicted growth factor (a million-sample epoch is 31,250
steps: three of its epochs are evaluated)."""
N_SCAN_LIMIT = 1024
"""Largest N tried when finding where a learning rate starts to break on the seed problem."""


@dataclasses.dataclass(frozen=True)
class Case:
    """One configuration: an optimizer on the problem's size-``n`` dataset (a user's table:
    its first ``n`` rows)."""

    optimizer: str = "sgd"
    lr: float = 0.01
    n: int = 20
    batch_size: int = 32
    epochs: int = 500
    seed: int = 0
    hyperparameters: Mapping[str, float] = dataclasses.field(default_factory=dict)
    problem: Problem = dataclasses.field(default_factory=Problem)
    tol: float = outcome.DEFAULT_TOL
    dtype: str = "float32"
    shuffle: bool = False
    """Whether every epoch reshuffles the samples (``fit``'s default; the command line's
    ``explain`` keeps a fixed order, so that the closed form covers minibatches too)."""
    diverge_factor: float = outcome.DEFAULT_DIVERGE_FACTOR

    def dataset(
        self, standardized: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | float]:
        """``(x, y, x_query)`` in float64 (:meth:`src.problem.Problem.dataset`), with the
        inputs standardised if the problem or ``standardized`` says so."""
        standardize = self.problem.standardize or standardized
        return dataclasses.replace(self.problem, standardize=standardize).dataset(self.n)

    @property
    def size(self) -> int:
        return self.n


class Simulated(TypedDict):
    """One simulated run: its status and :class:`~src.engine.Summary` (``None``: not finite)."""

    status: str
    initial_loss: float | None
    final_loss: float | None
    first_nonfinite_epoch: int
    first_converged_epoch: int
    growth_rate: float | None
    final_w: float | list[float | None] | None
    final_b: float | None
    prediction: float | None


class Configuration(TypedDict):
    """The configuration diagnosed, as it ran."""

    optimizer: str
    lr: float
    n: int
    batch_size: int
    epochs: int
    seed: int
    hyperparameters: dict[str, float]
    data: str
    initial_w: float | list[float]
    shuffle: bool
    query: str


class Prediction(TypedDict, total=False):
    """What the closed form says (``first_breaking_n`` on the problem family only)."""

    critical_lr: float
    lr_over_critical: float
    predicted_growth_rate: float
    predicted_overflow_epoch: float | None
    formula: str
    first_breaking_n: int | None


class Fix(TypedDict):
    """A suggested change, simulated (``history``: its per-epoch losses, when asked for)."""

    fix: str
    status: str
    final_loss: float | None
    prediction_at_25: float | None
    works: bool
    history: NotRequired[list[float | None]]


class BestFit(TypedDict):
    """The least-squares line of the data as the engine holds it, and its loss ``L*``: the
    floor no run goes below, against which ``converged`` is judged."""

    w: float | list[float]
    b: float
    optimal_loss: float


class Diagnosis(TypedDict, total=False):
    """The whole diagnosis (:func:`explain`): ``theory`` where a closed form covers the case,
    else ``measured_critical_lr``; ``fixes`` unless the run converged."""

    configuration: Configuration
    simulated: Simulated
    hessian_eigenvalues: list[float]
    best_fit: BestFit
    theory: Prediction
    measured_critical_lr: float | None
    fixes: list[Fix]


Known = Callable[["Case"], "tuple[Simulated, np.ndarray] | None"]
"""Where a run of the raw dataset may already be known: its result and per-epoch losses, or
``None`` (see :class:`Lab`)."""


class Lab:
    """Simulates variants of one case's dataset (raw or standardised), compiling each program
    once however many learning rates or optimizers are tried.

    ``known`` answers the trials whose run is known already (the focus panel: the map's loss
    curves, :func:`src.focus.map_trials`), which are then not simulated again: the same
    numbers, and a program fewer to compile where no other trial needs it."""

    def __init__(self, case: Case, known: Known | None = None) -> None:
        self.case = case
        self.known = known
        self._sims: dict[bool, Simulator] = {}

    def _simulator(self, standardized: bool) -> Simulator:
        if standardized not in self._sims:
            x, y, q = self.case.dataset(standardized)
            table = data_table([(x, y, q)], self.case.dtype)
            rows = table_rows([len(x)])
            self._sims[standardized] = Simulator(
                table, rows, self.case.dtype, self.case.tol, self.case.shuffle
            )
        return self._sims[standardized]

    def run(
        self, case: Case, lrs: np.ndarray, standardized: bool = False, history: bool = False
    ) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray | None]:
        """Statuses, summary columns and histories of ``case`` at each of ``lrs``."""
        sim = self._simulator(standardized)
        o = opt.get(case.optimizer)
        k = len(lrs)
        with jax.enable_x64(case.dtype == "float64"):
            flat = FlatConfigs.of(
                [case.optimizer] * k, o.family, {CLIPNORM: math.inf, **case.hyperparameters},
                learning_rate=np.asarray(lrs, np.float64), n=np.full(k, case.size),
                batch_size=np.full(k, case.batch_size), seed=np.full(k, case.seed),
                epochs=np.full(k, case.epochs),
            )  # fmt: skip
            # clipnorm stays an argument (inf: off, a select that passes the gradient on
            # unchanged), so that the clipping fix runs in the program of the case's other
            # trials instead of compiling one of its own.
            flat.kept = (CLIPNORM,)
            s, hist = sim.run(o.family, flat, history=history, pad_to=1 << (k - 1).bit_length())
        status = outcome.classify(
            s.initial_loss, s.final_loss, s.first_nonfinite_epoch,
            np.broadcast_to(sim.table.loss_scale[0], (k,)), case.tol, case.diverge_factor,
            float(sim.table.optimal_loss[0]),
        )  # fmt: skip
        return status, s._asdict(), hist

    def simulate(self, case: Case, standardized: bool = False) -> Simulated:
        """One run's verdict and figures (JSON-ready)."""
        return self.trial(case, standardized)[0]

    def trial(
        self, case: Case, standardized: bool = False, history: bool = False
    ) -> tuple[Simulated, np.ndarray | None]:
        """:meth:`simulate`, and with ``history`` the run's per-epoch losses too."""
        if not standardized and self.known is not None and (hit := self.known(case)):
            result, losses = hit
            return result, (np.asarray(losses, np.float64) if history else None)
        status, s, losses = self.run(case, np.array([case.lr]), standardized, history)
        return simulated(int(status[0]), {k: v[0] for k, v in s.items()}), (
            None if losses is None else np.asarray(losses[0, : case.epochs], np.float64)
        )

    def best_fit(self) -> BestFit:
        """The least-squares line of the raw dataset and its loss (see :class:`BestFit`)."""
        t = self._simulator(False).table
        return BestFit(
            w=_weights(t.w_opt[0]), b=float(t.b_opt[0]), optimal_loss=float(t.optimal_loss[0])
        )

    def breaks(self, lrs: np.ndarray) -> np.ndarray:
        return outcome.breaks(self.run(self.case, lrs)[0])


def simulated(status: int, s: Mapping[str, object]) -> Simulated:
    """A run's :class:`Simulated` from its status code and :class:`~src.engine.Summary`
    values (one configuration's: arrays of one value, or ``(d,)`` for ``final_w``)."""
    return Simulated(
        status=outcome.STATUSES[status],
        initial_loss=_f(s["initial_loss"]),
        final_loss=_f(s["final_loss"]),
        first_nonfinite_epoch=int(s["first_nonfinite_epoch"]),
        first_converged_epoch=int(s["first_converged_epoch"]),
        growth_rate=_f(s["growth_rate"]),
        final_w=_weights(s["final_w"]),
        final_b=_f(s["final_b"]),
        prediction=_f(s["prediction"]),
    )


def dynamics_of(case: Case) -> theory.Dynamics | None:
    """The dynamics of ``case`` if a closed form covers it (:func:`src.theory.closed_form`)."""
    one_batch = case.batch_size >= case.size
    return theory.closed_form(case.optimizer, case.hyperparameters, one_batch=one_batch,
                              shuffle=case.shuffle)  # fmt: skip


def measured_critical_lr(lab: Lab) -> float:
    """The smallest breaking lr of the lab's case, by the map's grid and bisection."""
    grid = np.array(default_lr_grid())
    found = boundary.search(grid, lab.breaks(grid)[None, :], lambda _, lrs: lab.breaks(lrs))
    return float(found.critical_lr[0])


def first_breaking_n(case: Case, dyn: theory.Dynamics) -> int | None:
    """On the problem family, the smallest N at which ``case.lr`` is unstable (theory):
    ``rho(M) > 1`` for the epoch map of the size-N dataset (None up to N_SCAN_LIMIT)."""
    lr = np.array([case.lr])
    for n in range(1, N_SCAN_LIMIT + 1):
        x = case.problem.dataset(n)[0]
        if theory.spectral_radius(x, case.batch_size, lr, dyn)[0] > 1 + theory.NEUTRAL:
            return n
    return None


def explain(case: Case, histories: bool = False, known: Known | None = None) -> Diagnosis:
    """The whole diagnosis, JSON-ready (see :func:`describe` for the words); with
    ``histories`` every fix also carries its per-epoch losses. ``known``: runs known already
    (see :class:`Lab`)."""
    x, y, _ = case.dataset()
    with np.errstate(over="ignore"):
        squares = float(np.mean(x * x)), float(np.mean(y * y))
    if not all(map(math.isfinite, squares)):
        raise InputError(
            "explain: the data are too large for a diagnosis: mean(x^2) or mean(y^2) overflows "
            "float64 (so does every loss); rescale x and y"
        )
    lab = Lab(case, known)
    # Drawn in float32 whatever the dtype, as the engine starts.
    w0 = np.asarray(initial_kernel(case.seed, d=case.problem.d), np.float64)
    sim = lab.trial(case, history=histories)[0]  # with histories, one program for all
    report = Diagnosis(
        configuration=Configuration(
            optimizer=case.optimizer,
            lr=case.lr,
            n=case.size,
            batch_size=case.batch_size,
            epochs=case.epochs,
            seed=case.seed,
            hyperparameters={**opt.get(case.optimizer).defaults, **case.hyperparameters},
            data=case.problem.describe(),
            initial_w=_weights(w0),
            shuffle=case.shuffle,
            query=case.problem.query_words(),
        ),
        simulated=sim,
        hessian_eigenvalues=[float(e) for e in theory.hessian_eigenvalues(x)],
        best_fit=lab.best_fit(),
    )
    dyn = dynamics_of(case)
    if dyn is not None:
        crit = theory.critical_lr(x, case.batch_size, dyn)
        growth = theory.loss_growth(x, case.batch_size, case.lr, dyn)
        steps = -(-len(x) // case.batch_size)
        horizon = min(case.epochs, PREDICTED_EPOCHS, max(1, PREDICTED_STEPS // steps))
        predicted = theory.predicted_history(x, y, w0, 0.0, case.lr, case.batch_size, horizon, dyn)
        report["theory"] = Prediction(
            critical_lr=crit,
            lr_over_critical=case.lr / crit,
            predicted_growth_rate=growth,
            predicted_overflow_epoch=theory.predicted_overflow_epoch(predicted, len(x), growth),
            formula=_formula(dyn, case.batch_size >= len(x)),
        )
        if not case.problem.data:
            report["theory"]["first_breaking_n"] = first_breaking_n(case, dyn)
        safe = crit / 2
    else:
        crit = measured_critical_lr(lab)
        report["measured_critical_lr"] = _f(crit)
        safe = crit / 2 if math.isfinite(crit) else None
    if sim["status"] != "converged":
        report["fixes"] = _fixes(lab, safe, histories)
    return report


def _fixes(lab: Lab, safe_lr: float | None, histories: bool = False) -> list[Fix]:
    case = lab.case
    tries = [] if safe_lr is None else [
        (f"lr {safe_lr:.4g} (half the critical lr)", dataclasses.replace(case, lr=safe_lr), False)
    ]  # fmt: skip
    tries += [
        ("standardise x (zero mean, unit variance)", case, True),
        ("Adam at its Keras default lr 0.001", _as_adam(case, 0.001), False),
        (f"Adam at lr {case.lr:g}", _as_adam(case, case.lr), False),
        (
            f"gradient clipping (clipnorm={CLIPNORM_FIX:g})",
            dataclasses.replace(
                case, hyperparameters={**case.hyperparameters, CLIPNORM: CLIPNORM_FIX}
            ),
            False,
        ),
    ]
    out = []
    for label, c, standardized in tries:
        r, losses = lab.trial(c, standardized, histories)
        fix = Fix(
            fix=label,
            status=r["status"],
            final_loss=r["final_loss"],
            prediction_at_25=r["prediction"],
            works=r["status"] == "converged",
        )
        if losses is not None:
            fix["history"] = [_f(v) for v in losses]
        out.append(fix)
    return out


def _as_adam(case: Case, lr: float) -> Case:
    return dataclasses.replace(case, optimizer="adam", lr=lr, hyperparameters={})


def _formula(dyn: theory.Dynamics, full_batch: bool) -> str:
    if not full_batch:
        return "the smallest lr at which the epoch map M = A_B...A_1 has spectral radius > 1"
    mu = dyn.momentum
    if mu == 0:
        return "2 / lambda_max"
    return (
        f"2 (1 + {mu:g}) / ((1 + 2*{mu:g}) lambda_max)"
        if dyn.nesterov
        else f"2 (1 + {mu:g}) / lambda_max"
    )


def describe(report: Diagnosis) -> list[str]:
    """The diagnosis in plain words."""
    cfg = report["configuration"]
    sim = report["simulated"]
    lines = [
        f"Configuration: {cfg['optimizer']} at lr {cfg['lr']:g}, N = {cfg['n']} ({cfg['data']}), "
        f"batch size {cfg['batch_size']}"
        + (
            " (full batch), "
            if cfg["batch_size"] >= cfg["n"]
            else " reshuffled every epoch (fit's default), "
            if cfg.get("shuffle")
            else " in a fixed order (fit(shuffle=False); explain does not shuffle), "
        )
        + f"{cfg['epochs']} epochs, seed {cfg['seed']} "
        + f"(initial w = {_vector(cfg['initial_w'], '.4f')}, b = 0).",
        "Verdict: " + verdict(sim, cfg.get("query", "x = 25")),
    ]
    fit = report.get("best_fit")
    if fit is not None and fit["optimal_loss"] > 0:
        lines.append(
            f"Best fit (least squares): w = {_vector(fit['w'], '.6g')}, b = {fit['b']:.6g}, "
            f"loss L* = "
            f"{fit['optimal_loss']:.6g}: no run gets lower (the noise); converged means within "
            f"tol x mean(y^2) of it."
        )
    eig = report["hessian_eigenvalues"]
    th = report.get("theory")
    if th is not None:
        lines.append(
            f"Why: the loss is a quadratic whose Hessian has {_eigenvalues(eig)}; this "
            f"optimizer is stable only for lr < {th['critical_lr']:.6g} "
            f"({th['formula']}). lr {cfg['lr']:g} is {th['lr_over_critical']:.3f} times that"
            + (" (too large)." if th["lr_over_critical"] > 1 else " (inside the stable range).")
        )
        over = th["predicted_overflow_epoch"]
        lines.append(
            f"Theory: the loss changes by {factor_words(th['predicted_growth_rate'])} per epoch "
            + _simulated_growth(sim)
            + (
                f"; float32 overflow at epoch {over:g} (simulated: "
                f"{sim['first_nonfinite_epoch'] if sim['first_nonfinite_epoch'] > 0 else 'none'})."
                if over is not None
                else "; no overflow."
            )
        )
        if th.get("first_breaking_n") is not None:
            k = th["first_breaking_n"]
            lines.append(
                f"On this problem lr {cfg['lr']:g} is stable up to N = {k - 1} "
                f"and breaks from N = {k}"
                f" (batch size {cfg['batch_size']})."
            )
    else:
        crit = report.get("measured_critical_lr")
        lines.append(
            f"Why: the loss Hessian has {_eigenvalues(eig)}; "
            "this optimizer has no closed-form limit, and the measured critical lr is "
            + (f"{crit:.6g}." if crit is not None else "above 1 (it never broke on the grid).")
        )
    fixes = report.get("fixes")
    floor = fit["optimal_loss"] if fit is not None else 0.0
    if fixes:
        lines.append(f"What would fix it (each simulated for {cfg['epochs']} epochs):")
        for f in fixes:
            lines.append(
                f"  {'works' if f['works'] else 'no'}: {f['fix']}: {f['status']}, final loss "
                f"{_num(f['final_loss'])}{_above(f['final_loss'], floor)}, prediction at "
                f"{cfg.get('query', 'x = 25')}: {_num(f['prediction_at_25'])}"
            )
    else:
        lines.append("Nothing to fix: the run converged.")
    return lines


def verdict(sim: Simulated, query: str = "x = 25") -> str:
    """The simulated outcome in words (``query``: where the prediction is taken)."""
    s = sim["status"]
    if s == "overflow":
        return (f"overflow: the loss became inf/nan at epoch {sim['first_nonfinite_epoch']} and "
                "training ended with nan weights.")  # fmt: skip
    if s == "diverging":
        return (f"diverging: the final loss {_num(sim['final_loss'])} is above the initial "
                f"{_num(sim['initial_loss'])}.")  # fmt: skip
    if s == "converged":
        return (f"converged at epoch {sim['first_converged_epoch']} "
                f"(final loss {_num(sim['final_loss'])}, "
                f"prediction at {query}: {_num(sim['prediction'])}).")  # fmt: skip
    return f"slow: finite, but not converged (final loss {_num(sim['final_loss'])})."


def factor_words(growth: float) -> str:
    """A per-epoch loss factor in words (beyond float64's range: said so, not "xinf")."""
    if not math.isfinite(growth):
        return "a factor beyond 1e308"
    return f"x{growth:.4f}" if growth < 1e4 else f"x{growth:.4g}"


def _simulated_growth(sim: Simulated) -> str:
    """The measured growth factor in words: never printed as "xnan"."""
    g = sim["growth_rate"]
    if g is not None:
        return f"(simulated: x{g:.4g})"
    if sim["first_nonfinite_epoch"] > 0:
        return "(simulated: too fast to measure before the overflow)"
    return "(simulated: not measured, the loss reached 0)"


def _weights(w: np.ndarray) -> float | list[float | None] | None:
    """Kernel weights, JSON-ready: one number for one feature, else a list."""
    w = np.ravel(w)
    return _f(w[0]) if len(w) == 1 else [_f(v) for v in w]


def _vector(w: float | list[float | None] | None, spec: str) -> str:
    """One weight or several in words, each formatted by ``spec``."""
    if isinstance(w, list):
        return "(" + ", ".join("nan" if v is None else format(v, spec) for v in w) + ")"
    return "nan" if w is None else format(w, spec)


def _eigenvalues(eig: list[float]) -> str:
    """The Hessian's eigenvalues in words (all of them for two, the range beyond)."""
    if len(eig) == 2:
        return f"eigenvalues {eig[0]:.4g} and {eig[1]:.4g}"
    return f"{len(eig)} eigenvalues from {eig[0]:.4g} to {eig[-1]:.4g}"


def _above(loss: float | None, floor: float) -> str:
    """How far a finite loss is above the best fit's, where the data have one (noise)."""
    if loss is None or floor <= 0:
        return ""
    return f" ({(loss - floor) / floor:.2%} above the best fit)"


def _num(v: object) -> str:
    return "nan" if v is None else f"{v:.4g}"


def _f(v: float) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None
