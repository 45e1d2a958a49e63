"""Keras 3 optimizers as optax gradient transformations with array hyperparameters.

Every optimizer here is an optax ``(init, update)`` pair whose hyperparameters are plain
arguments, so a whole vector of learning rates, momenta, ... can be ``vmap``-ed through one
compiled program. Defaults are Keras 3's (``keras/src/optimizers/*.py``, checked against
keras 3.15); ``t`` counts steps from 1 and every slot starts at zero unless said otherwise.

Stock optax is used where it computes Keras's update to float32 precision
(``optax.adagrad``). SGD with momentum, Adam and RMSprop have transformations of their own:
optax puts the learning rate outside the momentum trace, adds Adam's epsilon after the bias
correction, and forms RMSprop's ``1 - rho`` from the float32 ``rho``, none of which Keras does
(../shared/reference/keras-semantics.md; the sizes are measured in the README).

Optimizers that share update equations share a *family* (``sgd``, ``momentum`` and ``nesterov``
are one family differing in two hyperparameters), and the engine compiles one program per
family, not per name.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from src.errors import InputError

Array = jax.Array


def _leafwise(
    fn: Callable[..., tuple[Array, ...]], grads: optax.Updates, *slots: optax.Updates
) -> tuple[optax.Updates, ...]:
    """Apply ``fn(g, *slot_leaves) -> (step, *new_slot_leaves)`` leaf by leaf; one tree each."""
    out = jax.tree.map(fn, grads, *slots)
    return tuple(jax.tree.map(lambda _, t, i=i: t[i], grads, out) for i in range(1 + len(slots)))


def keras_clip_by_norm(clipnorm: Array | float) -> optax.GradientTransformation:
    """Keras's ``clipnorm`` base option: each variable's gradient is rescaled to norm <= c.

        g <- g c / max(||g||, c),   ||g|| = sqrt(sum g^2)

    (``keras.src.optimizers.base_optimizer.clip_by_norm``, written the same way so that an
    overflowing ``g^2`` behaves as in Keras). ``clipnorm = inf`` means off (Keras's None).
    """

    def update(
        grads: optax.Updates, state: optax.EmptyState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, optax.EmptyState]:
        del params

        def leaf(g: Array) -> Array:
            norm = jnp.sqrt(jnp.sum(jnp.square(g)))
            return jnp.where(jnp.isfinite(clipnorm), g * clipnorm / jnp.maximum(norm, clipnorm), g)

        return jax.tree.map(leaf, grads), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


class KerasSGDState(NamedTuple):
    """The momentum slot ``m`` (unused, and left at zero, when ``momentum == 0``)."""

    momentum: optax.Updates


def keras_sgd(
    learning_rate: Array | float,
    momentum: Array | float = 0.0,
    nesterov: Array | float = 0.0,
) -> optax.GradientTransformation:
    """Keras ``SGD``: plain, heavy-ball or Nesterov, in Keras's form.

    With ``momentum == 0``:  ``var <- var - lr g``.
    Otherwise:               ``m <- momentum m - lr g``, then
                             ``var <- var + m``                       (heavy ball), or
                             ``var <- var + momentum m - lr g``        (``nesterov != 0``).

    Keras keeps the learning rate inside the trace (optax.sgd scales the trace ``g + mu m``
    afterwards); the two agree in exact arithmetic but not to the last bit. Defaults
    (Keras): learning_rate 0.01, momentum 0, nesterov False.
    """

    def init(params: optax.Params) -> KerasSGDState:
        return KerasSGDState(jax.tree.map(jnp.zeros_like, params))

    def update(
        grads: optax.Updates, state: KerasSGDState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, KerasSGDState]:
        del params
        uses_momentum = momentum != 0

        def leaf(g: Array, m: Array) -> tuple[Array, Array]:
            m_new = m * momentum - g * learning_rate
            heavy = jnp.where(nesterov != 0, m_new * momentum - g * learning_rate, m_new)
            step = jnp.where(uses_momentum, heavy, -(g * learning_rate))
            return step, jnp.where(uses_momentum, m_new, m)

        steps, slots = _leafwise(leaf, grads, state.momentum)
        return steps, KerasSGDState(slots)

    return optax.GradientTransformation(init, update)


class KerasAdamState(NamedTuple):
    """Step count and the first and second moment slots."""

    count: Array
    m: optax.Updates
    v: optax.Updates


def keras_adam(
    learning_rate: Array | float,
    beta_1: Array | float = 0.9,
    beta_2: Array | float = 0.999,
    epsilon: Array | float = 1e-7,
    one_minus_beta_1: Array | float | None = None,
    one_minus_beta_2: Array | float | None = None,
) -> optax.GradientTransformation:
    """Keras ``Adam`` (Kingma & Ba, 2015, with the "epsilon hat" of their Section 2).

        m <- m + (g - m)(1 - beta_1)
        v <- v + (g^2 - v)(1 - beta_2)
        alpha = lr sqrt(1 - beta_2^t) / (1 - beta_1^t)
        var <- var - alpha m / (sqrt(v) + epsilon)

    Epsilon is added to the *uncorrected* ``sqrt(v)``; optax.adam adds it to the corrected one
    (and defaults to 1e-8), which changes the early steps. Defaults (Keras): learning_rate
    0.001, beta_1 0.9, beta_2 0.999, epsilon 1e-7. ``one_minus_beta_*`` default to
    ``1 - beta_*``; see :class:`Family` for why Keras's own rounding of them is passed in.
    """
    c1 = 1 - beta_1 if one_minus_beta_1 is None else one_minus_beta_1
    c2 = 1 - beta_2 if one_minus_beta_2 is None else one_minus_beta_2

    def init(params: optax.Params) -> KerasAdamState:
        zeros = jax.tree.map(jnp.zeros_like, params)
        return KerasAdamState(count=jnp.zeros([], jnp.int32), m=zeros, v=zeros)

    def update(
        grads: optax.Updates, state: KerasAdamState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, KerasAdamState]:
        del params
        count = state.count + 1

        def leaf(g: Array, m: Array, v: Array) -> tuple[Array, Array, Array]:
            t = count.astype(g.dtype)
            alpha = learning_rate * jnp.sqrt(1 - beta_2**t) / (1 - beta_1**t)
            m = m + (g - m) * c1
            v = v + (jnp.square(g) - v) * c2
            return -((m * alpha) / (jnp.sqrt(v) + epsilon)), m, v

        steps, m, v = _leafwise(leaf, grads, state.m, state.v)
        return steps, KerasAdamState(count=count, m=m, v=v)

    return optax.GradientTransformation(init, update)


class KerasRMSpropState(NamedTuple):
    """The mean-square slot ``v`` and the momentum slot ``mom``."""

    v: optax.Updates
    mom: optax.Updates


def keras_rmsprop(
    learning_rate: Array | float,
    rho: Array | float = 0.9,
    momentum: Array | float = 0.0,
    epsilon: Array | float = 1e-7,
    one_minus_rho: Array | float | None = None,
) -> optax.GradientTransformation:
    """Keras ``RMSprop`` (Hinton, 2012; uncentred).

        v <- rho v + (1 - rho) g^2
        inc = lr g / sqrt(v + epsilon)                  (epsilon inside the root)
        mom <- momentum mom + inc;  var <- var - mom    (momentum 0: var <- var - inc)

    ``optax.rmsprop(lr, decay=rho, eps=epsilon, momentum=...)`` computes the same update in
    exact arithmetic, but in float32 it forms ``1 - rho`` from the rounded ``rho`` (0.1000000238
    instead of Keras's 0.1000000015) and multiplies by ``rsqrt``; over a few hundred steps that
    moves the loss by ~1e-5 relative, so the Keras form is written out here. Defaults (Keras):
    learning_rate 0.001, rho 0.9, momentum 0, epsilon 1e-7.
    """
    c = 1 - rho if one_minus_rho is None else one_minus_rho

    def init(params: optax.Params) -> KerasRMSpropState:
        zeros = jax.tree.map(jnp.zeros_like, params)
        return KerasRMSpropState(v=zeros, mom=zeros)

    def update(
        grads: optax.Updates, state: KerasRMSpropState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, KerasRMSpropState]:
        del params
        uses_momentum = momentum > 0

        def leaf(g: Array, v: Array, mom: Array) -> tuple[Array, Array, Array]:
            v = rho * v + c * jnp.square(g)
            inc = (learning_rate * g) / jnp.sqrt(v + epsilon)
            mom_new = momentum * mom + inc
            return (
                -jnp.where(uses_momentum, mom_new, inc),
                v,
                jnp.where(uses_momentum, mom_new, mom),
            )

        steps, v, mom = _leafwise(leaf, grads, state.v, state.mom)
        return steps, KerasRMSpropState(v=v, mom=mom)

    return optax.GradientTransformation(init, update)


def keras_adagrad(
    learning_rate: Array | float,
    initial_accumulator_value: Array | float = 0.1,
    epsilon: Array | float = 1e-7,
) -> optax.GradientTransformation:
    """Keras ``Adagrad`` (Duchi et al., 2011) via ``optax.adagrad``.

        acc <- acc + g^2    (acc starts at initial_accumulator_value)
        var <- var - lr g / sqrt(acc + epsilon)

    Defaults (Keras, and optax's too): learning_rate 0.001, initial_accumulator_value 0.1,
    epsilon 1e-7.
    """
    return optax.adagrad(
        learning_rate, initial_accumulator_value=initial_accumulator_value, eps=epsilon
    )


@dataclasses.dataclass(frozen=True)
class Family:
    """Optimizers sharing one update rule: the engine compiles one program per family.

    ``build(learning_rate, **arguments)`` returns the transformation; every argument may be
    a traced array. :meth:`arguments` turns hyperparameter values (float64, on the host) into
    those arguments. Keras writes ``1 - beta_1`` with ``beta_1`` a Python float, so it rounds
    the *double* complement to float32 (0.1 -> 0.1000000015), whereas ``1 - float32(0.9)``
    is 0.1000000238; the 2e-7 difference in every moment update shifts Adam's loss by ~3e-5
    relative within a few hundred steps. So each name in ``complements`` also gets
    ``one_minus_<name>``, formed in float64 before the cast, as Keras does.
    """

    name: str
    hyperparameters: tuple[str, ...]
    build: Callable[..., optax.GradientTransformation]
    complements: tuple[str, ...] = ()

    def arguments(self, values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Builder arguments from float64 hyperparameter values (Keras's rounding kept).

        Base options (:data:`BASE_OPTIONS`) present in ``values`` are passed through.
        """
        args = {h: np.asarray(values[h], np.float64) for h in self.hyperparameters}
        args.update({f"one_minus_{h}": 1.0 - args[h] for h in self.complements})
        args.update({k: np.asarray(values[k], np.float64) for k in BASE_OPTIONS if k in values})
        return args

    def transformation(
        self, learning_rate: Array, arguments: Mapping[str, Array]
    ) -> optax.GradientTransformation:
        """The optimizer with Keras's base options applied first (clipping precedes the step)."""
        args = dict(arguments)
        clipnorm = args.pop("clipnorm", None)
        tx = self.build(learning_rate, **args)
        return tx if clipnorm is None else optax.chain(keras_clip_by_norm(clipnorm), tx)


BASE_OPTIONS: dict[str, float] = {"clipnorm": math.inf}
"""Keras base-optimizer options every family accepts, with their "off" value."""

SGD = Family("sgd", ("momentum", "nesterov"), keras_sgd)
ADAM = Family("adam", ("beta_1", "beta_2", "epsilon"), keras_adam, ("beta_1", "beta_2"))
RMSPROP = Family("rmsprop", ("rho", "momentum", "epsilon"), keras_rmsprop, ("rho",))
ADAGRAD = Family("adagrad", ("initial_accumulator_value", "epsilon"), keras_adagrad)


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """A named optimizer of the map: its family and Keras defaults.

    ``keras`` is how to build it in Keras: ``(class name, constructor keyword arguments)``.
    """

    name: str
    family: Family
    defaults: Mapping[str, float]
    learning_rate: float
    keras: tuple[str, Mapping[str, float | bool]]


OPTIMIZERS: dict[str, Optimizer] = {
    o.name: o
    for o in (
        Optimizer("sgd", SGD, {"momentum": 0.0, "nesterov": 0.0}, 0.01, ("SGD", {})),
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
        Optimizer(
            "adam", ADAM, {"beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7}, 0.001, ("Adam", {})
        ),
        Optimizer(
            "rmsprop",
            RMSPROP,
            {"rho": 0.9, "momentum": 0.0, "epsilon": 1e-7},
            0.001,
            ("RMSprop", {}),
        ),
        Optimizer(
            "adagrad",
            ADAGRAD,
            {"initial_accumulator_value": 0.1, "epsilon": 1e-7},
            0.001,
            ("Adagrad", {}),
        ),
    )
}
"""Every optimizer of the map by name; ``learning_rate`` is the Keras default."""


def get(name: str) -> Optimizer:
    """The optimizer called ``name``, or an :class:`InputError` listing the valid names."""
    try:
        return OPTIMIZERS[name]
    except KeyError:
        raise InputError(
            f"unknown optimizer {name!r}; valid optimizers: {', '.join(OPTIMIZERS)}"
        ) from None
