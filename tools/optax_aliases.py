"""Keras's update equations against the obvious optax alias, on the seed problem.

``python -m tools.optax_aliases`` trains the seed configuration (N = 20, full batch,
seed 0, 500 epochs, float32) twice through the same engine: with the Keras-exact
transformation of :mod:`src.keras_optax` (which the tests pin to real Keras) and with the optax
alias a JAX user would reach for, given Keras's hyperparameter values wherever the alias takes
them. It prints the README's table, at Keras's default learning rate and ten times it: the
largest relative difference of the History loss where it is above 1e-2, the final losses, and
whether the outcome (status) differs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np
import optax

from src import engine, outcome, xla_options
from src import optimizers as opt
from src.problem import Problem, data_table

N, EPOCHS = 20, 500

ALIASES: dict[str, tuple[str, Callable[[float], optax.GradientTransformation]]] = {
    "sgd": ("optax.sgd(lr)", optax.sgd),
    "momentum": ("optax.sgd(lr, 0.9)", lambda lr: optax.sgd(lr, 0.9)),
    "nesterov": ("optax.sgd(lr, 0.9, nesterov=True)", lambda lr: optax.sgd(lr, 0.9, True)),
    "adam": ("optax.adam(lr, eps=1e-7)", lambda lr: optax.adam(lr, eps=1e-7)),
    "adamw": (
        "optax.adamw(lr, eps=1e-7, weight_decay=0.004)",
        lambda lr: optax.adamw(lr, eps=1e-7, weight_decay=0.004),
    ),
    "rmsprop": ("optax.rmsprop(lr, eps=1e-7)", lambda lr: optax.rmsprop(lr, eps=1e-7)),
    "adagrad": ("optax.adagrad(lr)", optax.adagrad),
    "adadelta": (
        "optax.adadelta(lr, rho=0.95, eps=1e-7)",
        lambda lr: optax.adadelta(lr, rho=0.95, eps=1e-7),
    ),
    "adamax": ("optax.adamax(lr, eps=1e-7)", lambda lr: optax.adamax(lr, eps=1e-7)),
    "nadam": ("optax.nadam(lr, eps=1e-7)", lambda lr: optax.nadam(lr, eps=1e-7)),
    "lion": (
        "optax.lion(lr, b2=0.99, weight_decay=0)",
        lambda lr: optax.lion(lr, 0.9, 0.99, weight_decay=0.0),
    ),
    "lamb": ("optax.lamb(lr, eps=1e-7)", lambda lr: optax.lamb(lr, eps=1e-7)),
    "adafactor": ("optax.adafactor(lr)", optax.adafactor),
    "muon": (
        "optax.contrib.muon(lr, eps=1e-7, weight_decay=0.004, adam_weight_decay=0.004)",
        lambda lr: optax.contrib.muon(lr, eps=1e-7, weight_decay=0.004, adam_weight_decay=0.004),
    ),
    "schedule_free_adamw": (
        "optax.contrib.schedule_free_adamw(lr)",
        lambda lr: optax.contrib.schedule_free_adamw(lr),
    ),
}
"""The alias of each optimizer (Ftrl has none in optax)."""


def _history(family: opt.Family, lr: float, arguments: dict[str, float]) -> np.ndarray:
    table = data_table([Problem().dataset(N)], "float32")
    configs = engine.Configs(
        learning_rate=jnp.full(1, lr, jnp.float32),
        hyperparameters={k: jnp.full(1, v, jnp.float32) for k, v in arguments.items()},
        data_row=jnp.zeros(1, jnp.int32),
        n=jnp.full(1, N, jnp.int32),
        batch_size=jnp.full(1, 32, jnp.int32),
        epochs=jnp.full(1, EPOCHS, jnp.int32),
        seed=jnp.zeros(1, jnp.uint32),
    )
    shapes = engine.Shapes.covering([N], [32], [EPOCHS])
    _, history = engine.simulate(
        configs, table, jnp.float32(1e-4), family=family, shapes=shapes, history=True
    )
    return np.asarray(history[0], np.float64)


def compare(name: str, lr: float) -> dict[str, object]:
    """One row: Keras-exact engine vs the alias through the same engine."""
    o = opt.get(name)
    keras = _history(o.family, lr, o.family.arguments(o.defaults))
    label, make = ALIASES[name]
    alias_family = opt.Family(f"optax:{label}", (), functools.partial(_alias, make))
    alias = _history(alias_family, lr, {})
    both = np.isfinite(keras) & np.isfinite(alias) & (keras > 1e-2)
    rel = np.abs(alias[both] / keras[both] - 1)
    scale = float(np.mean(Problem().dataset(N)[1] ** 2))

    def status(h: np.ndarray) -> str:
        bad = np.flatnonzero(~np.isfinite(h))
        code = outcome.classify(
            h[0], h[-1], bad[0] + 1 if len(bad) else -1, scale, outcome.DEFAULT_TOL,
            outcome.DEFAULT_DIVERGE_FACTOR,
        )  # fmt: skip
        return outcome.STATUSES[int(code)]

    return {
        "optimizer": name,
        "alias": label,
        "lr": lr,
        "max_rel_diff": float(rel.max()) if rel.size else float("nan"),
        "final_keras": float(keras[-1]),
        "final_alias": float(alias[-1]),
        "status_keras": status(keras),
        "status_alias": status(alias),
    }


def _alias(
    make: Callable[[float], optax.GradientTransformation], learning_rate: float
) -> optax.GradientTransformation:
    return make(learning_rate)


def main() -> None:
    xla_options.configure()  # the main job's rounding, before JAX starts its backend
    print(f"N = {N}, full batch, seed 0, {EPOCHS} epochs, float32; Keras-exact vs alias")
    print("| optimizer | optax alias | lr | max rel. loss diff | final loss (Keras / alias) "
          "| status (Keras / alias) |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for name in ALIASES:
        for lr in (opt.get(name).learning_rate, 10 * opt.get(name).learning_rate):
            row(compare(name, lr))


def row(r: dict[str, object]) -> None:
    """Print one table row."""
    print(
        f"| {r['optimizer']} | `{r['alias']}` | {r['lr']:g} | {r['max_rel_diff']:.2g} | "
        f"{r['final_keras']:.4g} / {r['final_alias']:.4g} | "
        f"{r['status_keras']} / {r['status_alias']} |"
    )


if __name__ == "__main__":
    main()
