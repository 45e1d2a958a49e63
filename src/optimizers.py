"""The Keras 3 optimizers of the map: names, defaults, and how the engine builds them.

Every Keras optimizer class is here under its ``model.compile`` name (plus ``momentum`` and
``nesterov``, two common ``SGD`` settings), with Keras 3's defaults (keras/src/optimizers,
checked against keras 3.15 by the tests) and its update step as an optax transformation from
:mod:`src.keras_optax`. Keras's base-optimizer options (``clipnorm``, ``global_clipnorm``,
``clipvalue``, ``weight_decay``, ``use_ema``, ``ema_momentum``) are accepted by every one.

Optimizers that share update equations share a *family* (``sgd``, ``momentum`` and ``nesterov``
are one family differing in two hyperparameters; ``adamw`` is ``adam`` with weight decay), and
the engine compiles one program per family, not per name. Every hyperparameter is an array
argument, so any of them can be swept within one program.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping

import jax
import numpy as np
import optax

from src import keras_optax as kx
from src.errors import InputError

Array = jax.Array

BASE_OPTIONS: dict[str, float] = {
    "clipnorm": math.inf,
    "global_clipnorm": math.inf,
    "clipvalue": math.inf,
    "weight_decay": 0.0,
    "use_ema": 0.0,
    "ema_momentum": 0.99,
}
"""Keras base-optimizer options every optimizer accepts, with their "off" value (Keras's None,
or False; ``ema_momentum`` is Keras's default)."""

_BASE_ARGUMENTS = (*BASE_OPTIONS, "inverse_global_clipnorm", "adam_weight_decay")
"""Builder arguments consumed by :func:`~src.keras_optax.keras_base`, not by the step."""

BOOLEAN = frozenset({"nesterov", "amsgrad", "centered", "relative_step", "use_ema"})
"""Hyperparameters Keras takes as booleans (0 or 1 here)."""
INTEGER = frozenset({"ns_steps", "warmup_steps"})
"""Hyperparameters Keras takes as integers."""


@dataclasses.dataclass(frozen=True)
class Family:
    """Optimizers sharing one update rule: the engine compiles one program per family.

    ``build(learning_rate, **arguments)`` returns the update step; every argument may be a
    traced array. :meth:`arguments` turns hyperparameter values (float64, on the host) into
    those arguments. Keras writes ``1 - beta_1`` with ``beta_1`` a Python float, so it rounds
    the *double* complement to float32 (0.1 -> 0.1000000015), whereas ``1 - float32(0.9)``
    is 0.1000000238; the 2e-7 difference in every moment update shifts Adam's loss by ~3e-5
    relative within a few hundred steps. So each name in ``complements`` also gets
    ``one_minus_<name>``, formed in float64 before the cast, as Keras does.

    The hyperparameters themselves are passed unrounded (float64 in a float64 run). Where
    Keras's step casts one (``ops.cast(self.beta_1, dtype)``, which on TensorFlow goes through
    float32 and so rounds it even in a float64 run), the transformation rounds it at that
    place (:func:`src.keras_optax.keras_cast`), since some Keras steps use one hyperparameter
    both cast and uncast (Nadam's beta_1).
    """

    name: str
    hyperparameters: tuple[str, ...]
    build: Callable[..., optax.GradientTransformation]
    complements: tuple[str, ...] = ()

    def takes(self, name: str) -> bool:
        """Whether ``name`` is one of the family's hyperparameters or a Keras base option."""
        return name in self.hyperparameters or name in BASE_OPTIONS

    def arguments(self, values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Builder arguments from float64 hyperparameter values (Keras's rounding kept).

        Base options (:data:`BASE_OPTIONS`) present in ``values`` are passed through.
        """
        args = {h: np.asarray(values[h], np.float64) for h in self.hyperparameters}
        args.update({f"one_minus_{h}": 1.0 - args[h] for h in self.complements})
        args.update({k: np.asarray(values[k], np.float64) for k in BASE_OPTIONS if k in values})
        if "global_clipnorm" in args:
            with np.errstate(divide="ignore"):
                args["inverse_global_clipnorm"] = 1.0 / args["global_clipnorm"]
        return args

    def transformation(
        self,
        learning_rate: Array,
        arguments: Mapping[str, Array],
        shapes: optax.Params | None = None,
    ) -> optax.GradientTransformation:
        """The optimizer as Keras applies it: base options (if any argument sets one) around
        the step, run on the variables' Keras ``shapes`` (if given)."""
        args = dict(arguments)
        base = {k: args.pop(k) for k in _BASE_ARGUMENTS if k in args}
        tx = self.build(learning_rate, **args)
        if base:
            tx = kx.keras_base(tx, learning_rate, **base)
        return tx if shapes is None else kx.keras_shaped(tx, shapes)

    @staticmethod
    def final_weights(
        arguments: Mapping[str, Array], params: optax.Params, state: optax.OptState
    ) -> optax.Params:
        """The weights ``fit`` leaves in the model (the moving average with ``use_ema``)."""
        if "use_ema" not in arguments:
            return params
        return kx.final_weights(params, state, arguments["use_ema"])


SGD = Family("sgd", ("momentum", "nesterov"), kx.keras_sgd)
ADAM = Family(
    "adam", ("beta_1", "beta_2", "epsilon", "amsgrad"), kx.keras_adam, ("beta_1", "beta_2")
)
RMSPROP = Family("rmsprop", ("rho", "momentum", "epsilon", "centered"), kx.keras_rmsprop, ("rho",))
ADAGRAD = Family("adagrad", ("initial_accumulator_value", "epsilon"), kx.keras_adagrad)
ADADELTA = Family("adadelta", ("rho", "epsilon"), kx.keras_adadelta, ("rho",))
ADAMAX = Family("adamax", ("beta_1", "beta_2", "epsilon"), kx.keras_adamax, ("beta_1",))
NADAM = Family("nadam", ("beta_1", "beta_2", "epsilon"), kx.keras_nadam)
FTRL = Family(
    "ftrl",
    (
        "learning_rate_power",
        "initial_accumulator_value",
        "l1_regularization_strength",
        "l2_regularization_strength",
        "l2_shrinkage_regularization_strength",
        "beta",
    ),
    kx.keras_ftrl,
)
LION = Family("lion", ("beta_1", "beta_2"), kx.keras_lion)
LAMB = Family("lamb", ("beta_1", "beta_2", "epsilon"), kx.keras_lamb, ("beta_1", "beta_2"))
ADAFACTOR = Family(
    "adafactor",
    ("beta_2_decay", "epsilon_1", "epsilon_2", "clip_threshold", "relative_step"),
    kx.keras_adafactor,
)
MUON = Family(
    "muon",
    (
        "adam_beta_1", "adam_beta_2", "adam_weight_decay", "epsilon", "muon_a", "muon_b",
        "muon_c", "adam_lr_ratio", "momentum", "ns_steps", "nesterov", "rms_rate",
    ),
    kx.keras_muon,
    ("adam_beta_1", "adam_beta_2", "momentum"),
)  # fmt: skip


SCHEDULE_FREE = Family(
    "schedule_free_adamw",
    ("beta_1", "beta_2", "epsilon", "warmup_steps"),
    kx.keras_schedule_free_adamw,
)


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """A named optimizer of the map: its family, Keras defaults and Keras class.

    ``defaults`` holds every hyperparameter of the family and any base option the Keras
    class sets by default (AdamW's and Muon's ``weight_decay``); ``keras`` is how to build
    it in Keras: ``(class name, constructor keyword arguments)``.
    """

    name: str
    family: Family
    defaults: Mapping[str, float]
    learning_rate: float
    keras: tuple[str, Mapping[str, float | bool]]

    def settings(self, overrides: Mapping[str, float] | None = None) -> dict[str, float]:
        """Every hyperparameter and base option this optimizer runs with: its Keras defaults,
        the base options "off", then those of ``overrides`` it takes (others are ignored)."""
        chosen = {k: float(v) for k, v in (overrides or {}).items() if self.family.takes(k)}
        return {**BASE_OPTIONS, **self.defaults, **chosen}

    def keras_kwargs(self, hyperparameters: Mapping[str, float]) -> dict[str, object]:
        """Keras constructor arguments for these hyperparameters (booleans and integers as
        Keras takes them; base options at their "off" value left out)."""
        kwargs: dict[str, object] = dict(self.keras[1])
        for k, v in hyperparameters.items():
            if k in BASE_OPTIONS and k not in self.defaults and v == BASE_OPTIONS[k]:
                continue
            kwargs[k] = bool(v) if k in BOOLEAN else int(v) if k in INTEGER else float(v)
        return kwargs


_ADAM = {"beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7}


def _optimizer(
    name: str, family: Family, cls: str, lr: float = 0.001, **defaults: float
) -> Optimizer:
    return Optimizer(name, family, defaults, lr, (cls, {}))


OPTIMIZERS: dict[str, Optimizer] = {
    o.name: o
    for o in (
        _optimizer("sgd", SGD, "SGD", 0.01, momentum=0.0, nesterov=0.0),
        Optimizer(
            "momentum", SGD, {"momentum": 0.9, "nesterov": 0.0}, 0.01, ("SGD", {"momentum": 0.9})
        ),
        Optimizer(
            "nesterov",
            SGD,
            {"momentum": 0.9, "nesterov": 1.0},
            0.01,
            ("SGD", {"momentum": 0.9, "nesterov": True}),
        ),
        _optimizer("adam", ADAM, "Adam", **_ADAM, amsgrad=0.0),
        _optimizer("adamw", ADAM, "AdamW", **_ADAM, amsgrad=0.0, weight_decay=0.004),
        _optimizer("rmsprop", RMSPROP, "RMSprop", rho=0.9, momentum=0.0, epsilon=1e-7,
                   centered=0.0),
        _optimizer("adagrad", ADAGRAD, "Adagrad", initial_accumulator_value=0.1, epsilon=1e-7),
        _optimizer("adadelta", ADADELTA, "Adadelta", rho=0.95, epsilon=1e-7),
        _optimizer("adamax", ADAMAX, "Adamax", **_ADAM),
        _optimizer("nadam", NADAM, "Nadam", **_ADAM),
        _optimizer(
            "ftrl", FTRL, "Ftrl", learning_rate_power=-0.5, initial_accumulator_value=0.1,
            l1_regularization_strength=0.0, l2_regularization_strength=0.0,
            l2_shrinkage_regularization_strength=0.0, beta=0.0,
        ),
        _optimizer("lion", LION, "Lion", beta_1=0.9, beta_2=0.99),
        _optimizer("lamb", LAMB, "Lamb", **_ADAM),
        _optimizer(
            "adafactor", ADAFACTOR, "Adafactor", beta_2_decay=-0.8, epsilon_1=1e-30,
            epsilon_2=1e-3, clip_threshold=1.0, relative_step=1.0,
        ),
        _optimizer(
            "muon", MUON, "Muon", adam_beta_1=0.9, adam_beta_2=0.999, adam_weight_decay=0.004,
            epsilon=1e-7, muon_a=3.4445, muon_b=-4.7750, muon_c=2.0315, adam_lr_ratio=1.0,
            momentum=0.95, ns_steps=5.0, nesterov=1.0, rms_rate=0.2, weight_decay=0.004,
        ),
        _optimizer(
            "schedule_free_adamw", SCHEDULE_FREE, "ScheduleFreeAdamW", 0.0025, beta_1=0.9,
            beta_2=0.999, epsilon=1e-8, warmup_steps=0.0,
        ),
    )
}  # fmt: skip
"""Every optimizer of the map by name; ``learning_rate`` is the Keras default."""

KERAS_CLASSES = tuple(dict.fromkeys(o.keras[0] for o in OPTIMIZERS.values()))
"""The Keras optimizer classes covered: every one in ``keras.optimizers`` but the wrappers
``LossScaleOptimizer`` and ``MultiOptimizer``."""


def get(name: str) -> Optimizer:
    """The optimizer called ``name``, or an :class:`InputError` listing the valid names."""
    try:
        return OPTIMIZERS[name]
    except KeyError:
        raise InputError(
            f"unknown optimizer {name!r}; valid optimizers: {', '.join(OPTIMIZERS)}"
        ) from None
