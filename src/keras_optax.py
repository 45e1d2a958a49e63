"""Keras 3 optimizers' update steps as optax gradient transformations.

One transformation per Keras optimizer class, each an optax ``(init, update)`` pair whose
hyperparameters are plain arguments (so a vector of them can be ``vmap``-ed through one
compiled program), written in Keras's own operation order so that float32 results match
``keras/src/optimizers/*.py`` (keras 3.15) to a few ulp. ``t`` counts steps from 1 and slots
start at zero unless said otherwise.

Keras mixes two kinds of constants, and the difference is visible in float32: a complement
written ``1 - self.beta_1`` is formed from the *Python* float (0.1 -> 0.1000000015), while one
written after ``beta_1 = ops.cast(self.beta_1, dtype)`` is formed in float32
(0.1000000238). Transformations that need the first kind take ``one_minus_<name>`` arguments,
which :class:`src.optimizers.Family` computes in float64; those that need the second derive it
from the float32 argument, as Keras does.

The same split decides what a *float64* run of Keras (``keras.config.set_floatx("float64")``)
computes with. On TensorFlow, ``ops.cast(python_float, "float64")`` is ``tf.cast``, which
makes the float a float32 tensor first: every hyperparameter a Keras step passes through
``ops.cast`` (SGD's momentum, the betas of Adam's bias corrections, ...) is rounded to float32
even in float64 (0.9 -> 0.8999999761581421), while one used directly in arithmetic with a
tensor (``1 - self.beta_1``, ``self.epsilon``, ``self.rho``) stays the exact double.
:func:`keras_cast` rounds exactly where Keras casts; arguments arrive unrounded (float64 in a
float64 run). In float32 runs the cast changes nothing.

:func:`keras_base` adds the base-optimizer options every Keras optimizer has (gradient
clipping, decoupled weight decay, an exponential moving average of the weights) around any of
them, in the order of ``BaseOptimizer.apply``; :func:`keras_shaped` runs an update on the
variables' Keras shapes (a ``Dense(1)`` kernel is ``(1, 1)``, which Adafactor factors and Muon
orthogonalises).

Where stock optax computes the same update it could be used instead; where it does not, the
table in docs/keras-fidelity.md gives the measured size of the difference on the seed
problem.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

Array = jax.Array
Scalar = Array | float


def _leafwise(
    fn: Callable[..., tuple[Array, ...]], grads: optax.Updates, *trees: optax.Updates
) -> tuple[optax.Updates, ...]:
    """Apply ``fn(g, *leaves) -> (step, *new_leaves)`` leaf by leaf; returns one tree each."""
    leaves, treedef = jax.tree.flatten(grads)
    others = [treedef.flatten_up_to(t) for t in trees]
    results = [fn(*args) for args in zip(leaves, *others, strict=True)]
    return tuple(treedef.unflatten(r) for r in zip(*results, strict=True))


def _zeros(params: optax.Params) -> optax.Params:
    return jax.tree.map(jnp.zeros_like, params)


def _count(state_count: Array, like: Array) -> tuple[Array, Array]:
    """The new step count ``t`` and ``t`` as a float of ``like``'s dtype."""
    count = state_count + 1
    return count, count.astype(like.dtype)


STEP_STATE = frozenset({"count", "u_product"})
"""Names of the state fields that depend on the step count alone (and on hyperparameters):
the step counters and Nadam's momentum product. Where every configuration steps together,
the engine keeps them one value for the whole chunk (:func:`src.engine.shares_steps`)."""


def _per_config(shared: optax.Updates, learning_rate: Scalar) -> optax.Updates:
    """Step terms (values formed from the step count alone: bias corrections, schedules) as
    one value per configuration, ``term + 0 lr``: the same numbers (``lr`` is finite).

    Where the engine shares the step counter between configurations (one batch per epoch,
    :func:`src.engine.shares_steps`), the powers ``beta^t`` and the like are computed once
    per step for all of them, which is where their cost goes. But XLA rewrites arithmetic
    between a value shared by every configuration and per-configuration values: it turns
    ``x / broadcast(d)`` into ``x * broadcast(1 / d)`` and regroups products of two shared
    or constant factors, and either rounds differently from the per-configuration
    arithmetic. Spread over the configurations before they meet per-configuration values,
    the terms go through exactly the operations they went through with per-configuration
    counters (where the addition changes nothing).

    Several terms are spread as one stacked row per configuration, then taken apart. Spread
    one by one, XLA's CPU compiler fused them into one loop with an output per term, which,
    with multi-output fusion and the engine's loops compiled whole (:mod:`src.xla_options`),
    slowed Nadam's one-batch step (five terms) about 3x (seed workload, 2-core CPU: 0.2 of
    SGD's rate against 0.5-0.65 stacked).
    """
    leaves, tree = jax.tree.flatten(shared)
    if len(leaves) < 2 or any(jnp.ndim(a) or a.dtype != leaves[0].dtype for a in leaves):
        return jax.tree.map(lambda term: term + learning_rate * 0, shared)
    rows = jnp.stack(leaves) + jnp.expand_dims(learning_rate * 0, -1)
    return jax.tree.unflatten(tree, [rows[..., k] for k in range(len(leaves))])


def _divisors(
    terms: tuple[Array, ...], learning_rate: Scalar
) -> tuple[Callable[[Array], Array], ...]:
    """``x -> x / d`` for each step term ``d`` (a bias correction and the like), rounded as a
    float32 division rounds, but with one division per step: in float32, ``x`` times the
    float64 reciprocal ``r`` of ``d``, rounded to float32. Where the step count is shared
    (:func:`_per_config`), ``r`` is one value for every configuration and element; elsewhere
    one per configuration. Other dtypes divide, the terms spread by :func:`_per_config`
    (together, as it wants them).

    Why the bits are a division's: ``r = RN64(1/d)`` and ``p = RN64(x r)`` are within
    ``2^-52`` (relative) of ``x / d``. A float32 rounding boundary (the midpoint of two
    neighbouring float32 values, or the overflow threshold) is ``M 2^k`` with an odd ``M <
    2^25``. For float32 ``x = X 2^a``, ``d = D 2^b`` (``X, D < 2^24``), ``x / d`` is never
    such a point (``D M`` would have to equal ``X`` times a power of two, but its odd part
    exceeds ``2^24``), and ``x - d M 2^k`` is a multiple of ``2^a`` or of ``2^(b+k)``, so
    ``x / d`` is at least ``2^-49`` (relative) from every boundary: ``p`` rounds to the same
    float32 as ``x / d``. Zeros, infinities and NaNs come out as a division's too, and on the
    CPU so do the flushed subnormals (``tests/test_optimizers.py``). XLA's own rewrite of
    ``x / broadcast(d)`` (into ``x * broadcast(1 / d)``, in float32) is not exact: it
    differs in about a quarter of the last bits, which reached the maps with several
    features.
    """
    if terms[0].dtype != jnp.float32:
        spread = _per_config(terms, learning_rate)
        return tuple(functools.partial(_over, divisor=d) for d in spread)
    with jax.enable_x64(True):
        reciprocals = [1.0 / d.astype(jnp.float64) for d in terms]
    return tuple(functools.partial(_times_reciprocal, reciprocal=r) for r in reciprocals)


def _over(x: Array, divisor: Array) -> Array:
    return x / divisor


def _times_reciprocal(x: Array, reciprocal: Array) -> Array:
    """``x`` times a float64 ``reciprocal``, rounded back to ``x``'s dtype (:func:`_divisors`)."""
    with jax.enable_x64(True):
        return (x.astype(jnp.float64) * reciprocal).astype(x.dtype)


def _first_leaf(tree: optax.Updates) -> Array:
    return jax.tree.leaves(tree)[0]


def _rms(x: Array) -> Array:
    return jnp.sqrt(jnp.mean(jnp.square(x)))


def keras_cast(value: Scalar, dtype: jnp.dtype) -> Array:
    """Keras's ``ops.cast(value, dtype)`` of a hyperparameter held as a Python float.

    On the TensorFlow backend that is ``tf.cast``, which converts the Python float to a
    *float32* tensor before casting it: in a float64 run the value is rounded to float32
    (``ops.cast(0.9, "float64")`` is 0.8999999761581421), in a float32 run nothing changes.
    Keras's ``initializers.Constant`` (Adagrad's and Ftrl's initial accumulator) casts the
    same way. Values Keras uses directly in arithmetic with a tensor keep full precision, and
    so must not pass through here.
    """
    return jnp.asarray(value, jnp.float32).astype(dtype)


# --- SGD ---------------------------------------------------------------------------------


class SGDState(NamedTuple):
    """The momentum slot ``m`` (left at zero when ``momentum == 0``)."""

    momentum: optax.Updates


def keras_sgd(
    learning_rate: Scalar, momentum: Scalar = 0.0, nesterov: Scalar = 0.0
) -> optax.GradientTransformation:
    """Keras ``SGD``: plain, heavy-ball or Nesterov (defaults: lr 0.01, momentum 0, nesterov
    False).

        momentum == 0:  var <- var - lr g
        otherwise:      m <- momentum m - lr g;  var <- var + m                (heavy ball)
                                                  var <- var + momentum m - lr g  (nesterov)

    Keras keeps the learning rate inside the trace; ``optax.sgd`` scales the trace
    ``g + mu m`` afterwards (equal in exact arithmetic, not to the last bit). Keras casts
    ``momentum`` (float32-rounded in float64 runs, :func:`keras_cast`).
    """

    def init(params: optax.Params) -> SGDState:
        return SGDState(_zeros(params))

    def update(
        grads: optax.Updates, state: SGDState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, SGDState]:
        del params
        uses_momentum = momentum != 0

        def leaf(g: Array, m: Array) -> tuple[Array, Array]:
            mu = keras_cast(momentum, g.dtype)
            m_new = m * mu - g * learning_rate
            heavy = jnp.where(nesterov != 0, m_new * mu - g * learning_rate, m_new)
            step = jnp.where(uses_momentum, heavy, -(g * learning_rate))
            return step, jnp.where(uses_momentum, m_new, m)

        steps, slots = _leafwise(leaf, grads, state.momentum)
        return steps, SGDState(slots)

    return optax.GradientTransformation(init, update)


# --- Adam, AdamW, Adamax, Nadam, Lamb -----------------------------------------------------


class AdamState(NamedTuple):
    """Step count, first and second moments, and AMSGrad's running maximum of ``v``."""

    count: Array
    m: optax.Updates
    v: optax.Updates
    v_max: optax.Updates


def keras_adam(
    learning_rate: Scalar,
    beta_1: Scalar = 0.9,
    beta_2: Scalar = 0.999,
    epsilon: Scalar = 1e-7,
    amsgrad: Scalar = 0.0,
    one_minus_beta_1: Scalar | None = None,
    one_minus_beta_2: Scalar | None = None,
) -> optax.GradientTransformation:
    """Keras ``Adam`` and ``AdamW`` (Kingma & Ba, 2015, with Section 2's "epsilon hat";
    AMSGrad: Reddi et al., 2018). Defaults: lr 0.001, beta_1 0.9, beta_2 0.999, epsilon 1e-7.

        m <- m + (g - m)(1 - beta_1);   v <- v + (g^2 - v)(1 - beta_2)
        amsgrad: v_max <- max(v_max, v) and v_max replaces v below
        alpha = lr sqrt(1 - beta_2^t) / (1 - beta_1^t)
        var <- var - alpha m / (sqrt(v) + epsilon)

    ``optax.adam`` adds epsilon to the bias-corrected ``sqrt(v)`` (and defaults to 1e-8);
    ``optax.amsgrad`` takes the maximum of the bias-corrected ``v``. AdamW is this step after
    the base optimizer's decoupled weight decay (:func:`keras_base`). Keras casts the betas
    of the powers ``beta^t`` (:func:`keras_cast`), not those of the complements.
    """
    c1 = 1 - beta_1 if one_minus_beta_1 is None else one_minus_beta_1
    c2 = 1 - beta_2 if one_minus_beta_2 is None else one_minus_beta_2

    def init(params: optax.Params) -> AdamState:
        zeros = _zeros(params)
        return AdamState(jnp.zeros([], jnp.int32), zeros, zeros, zeros)

    def update(
        grads: optax.Updates, state: AdamState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, AdamState]:
        del params
        count, t = _count(state.count, _first_leaf(grads))
        beta_1_power = keras_cast(beta_1, t.dtype) ** t
        beta_2_power = keras_cast(beta_2, t.dtype) ** t
        v_correction = _per_config(jnp.sqrt(1 - beta_2_power), learning_rate)
        (m_divisor,) = _divisors((1 - beta_1_power,), learning_rate)
        alpha = m_divisor(learning_rate * v_correction)

        def leaf(g: Array, m: Array, v: Array, v_max: Array) -> tuple[Array, ...]:
            m = m + (g - m) * c1
            v = v + (jnp.square(g) - v) * c2
            v_max = jnp.where(amsgrad != 0, jnp.maximum(v_max, v), v_max)
            denominator = jnp.sqrt(jnp.where(amsgrad != 0, v_max, v)) + epsilon
            return -((m * alpha) / denominator), m, v, v_max

        steps, m, v, v_max = _leafwise(leaf, grads, state.m, state.v, state.v_max)
        return steps, AdamState(count, m, v, v_max)

    return optax.GradientTransformation(init, update)


class MomentState(NamedTuple):
    """Step count and two slots: Lamb's moments ``m``, ``v``; Muon's momentum (every variable)
    and Adam's second moment (non-matrices)."""

    count: Array
    m: optax.Updates
    v: optax.Updates


class AdamaxState(NamedTuple):
    """Step count, first moment ``m`` and the exponentially weighted infinity norm ``u``."""

    count: Array
    m: optax.Updates
    u: optax.Updates


def keras_adamax(
    learning_rate: Scalar,
    beta_1: Scalar = 0.9,
    beta_2: Scalar = 0.999,
    epsilon: Scalar = 1e-7,
    one_minus_beta_1: Scalar | None = None,
) -> optax.GradientTransformation:
    """Keras ``Adamax`` (Kingma & Ba, 2015, Section 7.1). Defaults: lr 0.001, beta_1 0.9,
    beta_2 0.999, epsilon 1e-7.

        m <- m + (g - m)(1 - beta_1);   u <- max(beta_2 u, |g|)
        var <- var - lr m / ((1 - beta_1^t)(u + epsilon))

    ``optax.adamax`` puts epsilon inside the maximum. Keras casts beta_1 for ``beta_1^t``
    only (:func:`keras_cast`).
    """
    c1 = 1 - beta_1 if one_minus_beta_1 is None else one_minus_beta_1

    def init(params: optax.Params) -> AdamaxState:
        zeros = _zeros(params)
        return AdamaxState(jnp.zeros([], jnp.int32), zeros, zeros)

    def update(
        grads: optax.Updates, state: AdamaxState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, AdamaxState]:
        del params
        count, t = _count(state.count, _first_leaf(grads))
        m_correction = _per_config(1 - keras_cast(beta_1, t.dtype) ** t, learning_rate)

        def leaf(g: Array, m: Array, u: Array) -> tuple[Array, ...]:
            m = m + (g - m) * c1
            u = jnp.maximum(beta_2 * u, jnp.abs(g))
            return -((learning_rate * m) / (m_correction * (u + epsilon))), m, u

        steps, m, u = _leafwise(leaf, grads, state.m, state.u)
        return steps, AdamaxState(count, m, u)

    return optax.GradientTransformation(init, update)


class NadamState(NamedTuple):
    """Step count, moments and ``u_product`` = prod_{i<=t} u_i (one scalar, starts at 1)."""

    count: Array
    u_product: Array
    m: optax.Updates
    v: optax.Updates


NADAM_DECAY = 0.96
"""Keras's momentum-schedule constant (Dozat, 2016): u_t = beta_1 (1 - 0.5 * 0.96^t)."""


def keras_nadam(
    learning_rate: Scalar, beta_1: Scalar = 0.9, beta_2: Scalar = 0.999, epsilon: Scalar = 1e-7
) -> optax.GradientTransformation:
    """Keras ``Nadam`` (Dozat, 2016) with its momentum schedule. Defaults: lr 0.001, beta_1
    0.9, beta_2 0.999, epsilon 1e-7.

        u_t = beta_1 (1 - 0.5 * 0.96^t);  P_t = P_{t-1} beta_1 (1 - 0.5 * 0.96^t),  P_0 = 1
        m <- m + (g - m)(1 - beta_1);     v <- v + (g^2 - v)(1 - beta_2)
        m_hat = u_{t+1} m / (1 - P_t u_{t+1}) + (1 - u_t) g / (1 - P_t)
        var <- var - lr m_hat / (sqrt(v / (1 - beta_2^t)) + epsilon)

    Unlike most Keras optimizers, Nadam casts beta_1, beta_2 and 0.96 (:func:`keras_cast`)
    before forming u_t, u_{t+1} and the complements; but it updates the product ``P_t`` with
    the uncast ``beta_1`` and ``0.96`` (in a float64 run, the exact doubles). ``optax.nadam``
    has no schedule, so its results differ O(1).
    """

    def init(params: optax.Params) -> NadamState:
        zeros = _zeros(params)
        dtype = _first_leaf(params).dtype
        return NadamState(jnp.zeros([], jnp.int32), jnp.ones([], dtype), zeros, zeros)

    def update(
        grads: optax.Updates, state: NadamState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, NadamState]:
        del params
        count, t = _count(state.count, _first_leaf(grads))
        # Keras updates the shared product first, with its own operation order and the
        # uncast beta_1 and 0.96; the step itself casts them.
        u_product = state.u_product * beta_1 * (1.0 - 0.5 * jnp.asarray(NADAM_DECAY, t.dtype) ** t)
        decay = keras_cast(NADAM_DECAY, t.dtype)
        b1 = keras_cast(beta_1, t.dtype)
        b2 = keras_cast(beta_2, t.dtype)
        u_next = b1 * (1.0 - 0.5 * decay ** (t + 1))
        # With a shared step count, u_product is a step term too (a STEP_STATE field).
        # 1 - u_t rather than u_t: one subtraction per step, not one per configuration.
        g_weight, u_next = _per_config((1 - b1 * (1.0 - 0.5 * decay**t), u_next), learning_rate)
        m_divisor, g_divisor, v_divisor = _divisors(
            (1 - u_product * u_next, 1 - u_product, 1 - b2**t), learning_rate
        )

        def leaf(g: Array, m: Array, v: Array) -> tuple[Array, ...]:
            m = m + (g - m) * (1 - b1)
            v = v + (jnp.square(g) - v) * (1 - b2)
            m_hat = m_divisor(u_next * m) + g_divisor(g_weight * g)
            v_hat = v_divisor(v)
            return -((m_hat * learning_rate) / (jnp.sqrt(v_hat) + epsilon)), m, v

        steps, m, v = _leafwise(leaf, grads, state.m, state.v)
        return steps, NadamState(count, u_product, m, v)

    return optax.GradientTransformation(init, update)


def keras_lamb(
    learning_rate: Scalar,
    beta_1: Scalar = 0.9,
    beta_2: Scalar = 0.999,
    epsilon: Scalar = 1e-7,
    one_minus_beta_1: Scalar | None = None,
    one_minus_beta_2: Scalar | None = None,
) -> optax.GradientTransformation:
    """Keras ``Lamb`` (You et al., 2020). Defaults: lr 0.001, beta_1 0.9, beta_2 0.999,
    epsilon 1e-7 (``optax.lamb``: 1e-6, and epsilon after the square root as here).

        m, v as in Adam;  upd = (m / (1 - beta_1^t)) / (sqrt(v / (1 - beta_2^t)) + epsilon)
        ratio = ||var|| / ||upd|| per variable (1 if either norm is 0)
        var <- var - ratio lr upd

    As in Adam, Keras casts the betas of the powers only (:func:`keras_cast`).
    """
    c1 = 1 - beta_1 if one_minus_beta_1 is None else one_minus_beta_1
    c2 = 1 - beta_2 if one_minus_beta_2 is None else one_minus_beta_2

    def init(params: optax.Params) -> MomentState:
        zeros = _zeros(params)
        return MomentState(jnp.zeros([], jnp.int32), zeros, zeros)

    def update(
        grads: optax.Updates, state: MomentState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, MomentState]:
        assert params is not None, "Lamb's trust ratio needs the parameters"
        count, t = _count(state.count, _first_leaf(grads))
        beta_1_power = keras_cast(beta_1, t.dtype) ** t
        beta_2_power = keras_cast(beta_2, t.dtype) ** t
        m_correction, v_correction = _per_config(
            (1.0 - beta_1_power, 1.0 - beta_2_power), learning_rate
        )

        def leaf(g: Array, m: Array, v: Array, var: Array) -> tuple[Array, ...]:
            m = m + (g - m) * c1
            v = v + (jnp.square(g) - v) * c2
            upd = (m / m_correction) / (jnp.sqrt(v / v_correction) + epsilon)
            w_norm = jnp.sqrt(jnp.sum(jnp.square(var)))
            g_norm = jnp.sqrt(jnp.sum(jnp.square(upd)))
            ratio = jnp.where(w_norm > 0, jnp.where(g_norm > 0, w_norm / g_norm, 1.0), 1.0)
            return -(ratio * learning_rate * upd), m, v

        steps, m, v = _leafwise(leaf, grads, state.m, state.v, params)
        return steps, MomentState(count, m, v)

    return optax.GradientTransformation(init, update)


# --- RMSprop, Adagrad, Adadelta -----------------------------------------------------------


class RMSpropState(NamedTuple):
    """Mean square ``v``, momentum ``mom`` and (centred) mean gradient ``g_avg``."""

    v: optax.Updates
    mom: optax.Updates
    g_avg: optax.Updates


def keras_rmsprop(
    learning_rate: Scalar,
    rho: Scalar = 0.9,
    momentum: Scalar = 0.0,
    epsilon: Scalar = 1e-7,
    centered: Scalar = 0.0,
    one_minus_rho: Scalar | None = None,
) -> optax.GradientTransformation:
    """Keras ``RMSprop`` (Hinton, 2012; centred: Graves, 2013). Defaults: lr 0.001, rho 0.9,
    momentum 0, epsilon 1e-7, centered False.

        v <- rho v + (1 - rho) g^2
        centered: g_avg <- rho g_avg + (1 - rho) g;  d = v - g_avg^2 + epsilon
        otherwise: d = v + epsilon
        inc = lr g / sqrt(d)
        momentum > 0: mom <- momentum mom + inc;  var <- var - mom
        otherwise:    var <- var - inc

    ``optax.rmsprop`` is the same in exact arithmetic but forms ``1 - rho`` in float32 and
    multiplies by ``rsqrt``: ~1e-5 relative on the loss within a few hundred steps.
    """
    c = 1 - rho if one_minus_rho is None else one_minus_rho

    def init(params: optax.Params) -> RMSpropState:
        zeros = _zeros(params)
        return RMSpropState(zeros, zeros, zeros)

    def update(
        grads: optax.Updates, state: RMSpropState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, RMSpropState]:
        del params
        uses_momentum = momentum > 0

        def leaf(g: Array, v: Array, mom: Array, g_avg: Array) -> tuple[Array, ...]:
            v = rho * v + c * jnp.square(g)
            g_avg = jnp.where(centered != 0, rho * g_avg + c * g, g_avg)
            denominator = jnp.where(centered != 0, v - jnp.square(g_avg) + epsilon, v + epsilon)
            inc = (learning_rate * g) / jnp.sqrt(denominator)
            mom_new = momentum * mom + inc
            step = -jnp.where(uses_momentum, mom_new, inc)
            return step, v, jnp.where(uses_momentum, mom_new, mom), g_avg

        steps, v, mom, g_avg = _leafwise(leaf, grads, state.v, state.mom, state.g_avg)
        return steps, RMSpropState(v, mom, g_avg)

    return optax.GradientTransformation(init, update)


def keras_adagrad(
    learning_rate: Scalar, initial_accumulator_value: Scalar = 0.1, epsilon: Scalar = 1e-7
) -> optax.GradientTransformation:
    """Keras ``Adagrad`` (Duchi et al., 2011), which ``optax.adagrad`` computes exactly.

        acc <- acc + g^2   (acc starts at initial_accumulator_value)
        var <- var - lr g / sqrt(acc + epsilon)

    Defaults (Keras's and optax's): lr 0.001, initial_accumulator_value 0.1, epsilon 1e-7.
    Keras's ``Constant`` initializer casts the initial value (:func:`keras_cast`).
    """
    initial = keras_cast(initial_accumulator_value, jnp.result_type(initial_accumulator_value))
    return optax.adagrad(learning_rate, initial_accumulator_value=initial, eps=epsilon)


class AdadeltaState(NamedTuple):
    """Running means of squared gradients ``Eg`` and of squared steps ``Ex``."""

    e_g: optax.Updates
    e_x: optax.Updates


def keras_adadelta(
    learning_rate: Scalar,
    rho: Scalar = 0.95,
    epsilon: Scalar = 1e-7,
    one_minus_rho: Scalar | None = None,
) -> optax.GradientTransformation:
    """Keras ``Adadelta`` (Zeiler, 2012). Defaults: lr 0.001, rho 0.95, epsilon 1e-7.

        Eg <- rho Eg + (1 - rho) g^2
        d = -sqrt(Ex + epsilon) g / sqrt(Eg + epsilon)
        Ex <- rho Ex + (1 - rho) d^2
        var <- var + lr d

    ``optax.adadelta(lr, rho=0.95, eps=1e-7)`` is the same update up to float32 rounding.
    """
    c = 1 - rho if one_minus_rho is None else one_minus_rho

    def init(params: optax.Params) -> AdadeltaState:
        zeros = _zeros(params)
        return AdadeltaState(zeros, zeros)

    def update(
        grads: optax.Updates, state: AdadeltaState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, AdadeltaState]:
        del params

        def leaf(g: Array, e_g: Array, e_x: Array) -> tuple[Array, ...]:
            e_g = rho * e_g + c * jnp.square(g)
            d = -((jnp.sqrt(e_x + epsilon) * g) / jnp.sqrt(e_g + epsilon))
            e_x = rho * e_x + c * jnp.square(d)
            return learning_rate * d, e_g, e_x

        steps, e_g, e_x = _leafwise(leaf, grads, state.e_g, state.e_x)
        return steps, AdadeltaState(e_g, e_x)

    return optax.GradientTransformation(init, update)


# --- Ftrl, Lion, Adafactor, Muon, ScheduleFreeAdamW ------------------------------------


class FtrlState(NamedTuple):
    """The accumulator ``n`` (starts at initial_accumulator_value), the linear term ``z``
    and ``n^p`` (``p = -learning_rate_power``), kept so that a step computes one power, not
    two: the last step's ``n'^p`` is this step's ``n^p``, bit for bit."""

    accumulator: optax.Updates
    linear: optax.Updates
    power: optax.Updates


def keras_ftrl(
    learning_rate: Scalar,
    learning_rate_power: Scalar = -0.5,
    initial_accumulator_value: Scalar = 0.1,
    l1_regularization_strength: Scalar = 0.0,
    l2_regularization_strength: Scalar = 0.0,
    l2_shrinkage_regularization_strength: Scalar = 0.0,
    beta: Scalar = 0.0,
) -> optax.GradientTransformation:
    """Keras ``Ftrl`` (McMahan et al., 2013, FTRL-Proximal). Defaults: lr 0.001,
    learning_rate_power -0.5, initial_accumulator_value 0.1, every regularizer and beta 0.

        p = -learning_rate_power;  l2 = l2_regularization_strength + beta / (2 lr)
        n' = n + g^2
        z <- z + (g + 2 l2_shrinkage var) - (n'^p - n^p) / lr * var
        var <- (clip(z, -l1, l1) - z) / (n'^p / lr + 2 l2);   n <- n'

    Keras assigns the new weight outright; as an optax update it is ``new - var``, which
    carries the new weight to within half an ulp of the *old* one (the first step from
    w = 0.3 lands near 3e-6 with an absolute error of ~1e-8). optax has no FTRL. The
    accumulator starts at the cast ``initial_accumulator_value`` (Keras's ``Constant``
    initializer, :func:`keras_cast`); every other hyperparameter is used uncast.
    """
    l1 = l1_regularization_strength
    # Formed once, not every step: the same operations on the same values.
    l2 = l2_regularization_strength + beta / (2.0 * learning_rate)

    # Keras's default power, n^0.5, as the correctly rounded square root: XLA's CPU pow is
    # exp(0.5 log n), ~2x slower, and 1 ulp off for 0.064% of float32 accumulators; Keras's
    # own (TensorFlow's pow, fit not compiling with XLA) is 1 ulp off for 26.6%, so neither
    # form is Keras's bits (tools/sqrt_power.py, docs/keras-fidelity.md). Only a power known
    # when tracing can be told apart; one that differs per configuration stays a pow.
    square_root = isinstance(learning_rate_power, float | np.floating) and float(
        learning_rate_power
    ) == -0.5

    def power(acc: Array) -> Array:
        return jnp.sqrt(acc) if square_root else jnp.power(acc, -learning_rate_power)

    def init(params: optax.Params) -> FtrlState:
        acc = jax.tree.map(
            lambda p: jnp.full_like(p, keras_cast(initial_accumulator_value, p.dtype)), params
        )
        # The barrier: a constant accumulator's power would be folded at compile time, by
        # the host's libm, which rounds differently from the compiled kernel of the steps.
        return FtrlState(
            acc, _zeros(params), jax.tree.map(power, jax.lax.optimization_barrier(acc))
        )

    def update(
        grads: optax.Updates, state: FtrlState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, FtrlState]:
        assert params is not None, "Ftrl's update needs the parameters"

        def leaf(g: Array, acc: Array, z: Array, acc_power: Array, var: Array) -> tuple[Array, ...]:
            shrunk = g + (2 * l2_shrinkage_regularization_strength) * var
            new_acc = acc + jnp.square(g)
            power_new = power(new_acc)
            z = z + (shrunk - ((power_new - acc_power) / learning_rate) * var)
            quadratic = power_new / learning_rate + 2 * l2
            new_var = (jnp.clip(z, -l1, l1) - z) / quadratic
            return new_var - var, new_acc, z, power_new

        steps, acc, z, powers = _leafwise(
            leaf, grads, state.accumulator, state.linear, state.power, params
        )
        return steps, FtrlState(acc, z, powers)

    return optax.GradientTransformation(init, update)


class LionState(NamedTuple):
    """The momentum slot ``m``."""

    m: optax.Updates


def keras_lion(
    learning_rate: Scalar, beta_1: Scalar = 0.9, beta_2: Scalar = 0.99
) -> optax.GradientTransformation:
    """Keras ``Lion`` (Chen et al., 2023). Defaults: lr 0.001, beta_1 0.9, beta_2 0.99.

        var <- var - lr sign(beta_1 m + (1 - beta_1) g)
        m <- beta_2 m + (1 - beta_2) g

    Keras casts both betas first (:func:`keras_cast`), complements included.
    ``optax.lion(lr, weight_decay=0)`` is the same update.
    """

    def init(params: optax.Params) -> LionState:
        return LionState(_zeros(params))

    def update(
        grads: optax.Updates, state: LionState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, LionState]:
        del params

        def leaf(g: Array, m: Array) -> tuple[Array, ...]:
            b1, b2 = keras_cast(beta_1, g.dtype), keras_cast(beta_2, g.dtype)
            step = -(learning_rate * jnp.sign(m * b1 + g * (1.0 - b1)))
            return step, m * b2 + g * (1.0 - b2)

        steps, m = _leafwise(leaf, grads, state.m)
        return steps, LionState(m)

    return optax.GradientTransformation(init, update)


class AdafactorState(NamedTuple):
    """Step count, row and column factors ``r``, ``c`` (>= 2-D variables) and ``v``."""

    count: Array
    r: optax.Updates
    c: optax.Updates
    v: optax.Updates


def keras_adafactor(
    learning_rate: Scalar,
    beta_2_decay: Scalar = -0.8,
    epsilon_1: Scalar = 1e-30,
    epsilon_2: Scalar = 1e-3,
    clip_threshold: Scalar = 1.0,
    relative_step: Scalar = 1.0,
) -> optax.GradientTransformation:
    """Keras ``Adafactor`` (Shazeer & Stern, 2018). Defaults: lr 0.001, beta_2_decay -0.8,
    epsilon_1 1e-30, epsilon_2 1e-3, clip_threshold 1, relative_step True.

        rho_t = min(lr, 1 / sqrt(t));  alpha_t = max(epsilon_2, rms(var)) rho_t
        beta_t = 1 - t^beta_2_decay;   s = g^2 + epsilon_1
        >= 2-D: r <- beta_t r + (1 - beta_t) mean_{last axis}(s)
                c <- beta_t c + (1 - beta_t) mean_{second-last axis}(s)
                v = (r / mean(r)) c   (outer product over the last two axes)
        else:   v <- beta_t v + (1 - beta_t) s
        u = g / sqrt(v);  var <- var - alpha_t u / max(1, rms(u) / clip_threshold)

    With a constant learning rate ``relative_step`` changes nothing (rho_t already caps the
    rate). Keras casts epsilon_2 (:func:`keras_cast`), no other hyperparameter. Works on
    the Keras shapes of the variables (see :func:`keras_shaped`).
    """
    del relative_step

    def init(params: optax.Params) -> AdafactorState:
        def factors(p: Array) -> tuple[Array, Array]:
            if p.ndim < 2:  # unfactored: placeholders, as in Keras
                return jnp.zeros((), p.dtype), jnp.zeros((), p.dtype)
            return jnp.zeros(p.shape[:-1], p.dtype), jnp.zeros(p.shape[:-2] + p.shape[-1:], p.dtype)

        r = jax.tree.map(lambda p: factors(p)[0], params)
        c = jax.tree.map(lambda p: factors(p)[1], params)
        return AdafactorState(jnp.zeros([], jnp.int32), r, c, _zeros(params))

    def update(
        grads: optax.Updates, state: AdafactorState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, AdafactorState]:
        assert params is not None, "Adafactor's step size needs the parameters"
        count, t = _count(state.count, _first_leaf(grads))
        rho_t = jnp.minimum(learning_rate, 1 / jnp.sqrt(t))
        beta_t = _per_config(1 - jnp.power(t, beta_2_decay), learning_rate)

        def leaf(g: Array, r: Array, c: Array, v: Array, var: Array) -> tuple[Array, ...]:
            alpha = jnp.maximum(keras_cast(epsilon_2, var.dtype), _rms(var)) * rho_t
            s = jnp.square(g) + epsilon_1
            if g.ndim >= 2:
                r = beta_t * r + (1 - beta_t) * jnp.mean(s, axis=-1)
                c = beta_t * c + (1 - beta_t) * jnp.mean(s, axis=-2)
                v = jnp.expand_dims(r / jnp.mean(r, axis=-1, keepdims=True), -1) * (
                    jnp.expand_dims(c, -2)
                )
            else:
                v = beta_t * v + (1 - beta_t) * s
            u = g / jnp.sqrt(v)
            u = u / jnp.maximum(1.0, _rms(u) / clip_threshold)
            return -(alpha * u), r, c, v

        steps, r, c, v = _leafwise(leaf, grads, state.r, state.c, state.v, params)
        return steps, AdafactorState(count, r, c, v)

    return optax.GradientTransformation(init, update)


def newton_schulz(x: Array, steps: Scalar, a: Scalar, b: Scalar, c: Scalar) -> Array:
    """Keras Muon's quintic Newton-Schulz orthogonalisation of a matrix (Jordan et al., 2024).

        X <- G / (||G||_F + 1e-7);  repeat steps times:  A = X X^T;  X <- a X + (b A + c A A) X

    on the wide orientation (transposed when there are more rows than columns).
    """
    tall = x.shape[-2] > x.shape[-1]
    if tall:
        x = jnp.swapaxes(x, -1, -2)
    x = x / (jnp.sqrt(jnp.sum(jnp.square(x), axis=(-2, -1), keepdims=True)) + 1e-7)

    def iterate(_: Array, x: Array) -> Array:
        gram = x @ jnp.swapaxes(x, -1, -2)
        return a * x + (b * gram + (c * gram) @ gram) @ x

    if isinstance(steps, jax.core.Tracer):  # one count per configuration: a loop
        x = jax.lax.fori_loop(0, jnp.asarray(steps, jnp.int32), iterate, x)
    else:  # compiled in: unrolled, so that XLA fuses the iterations with the rest of the step
        for _ in range(int(steps)):
            x = iterate(jnp.zeros((), jnp.int32), x)
    return jnp.swapaxes(x, -1, -2) if tall else x


def keras_muon(
    learning_rate: Scalar,
    adam_beta_1: Scalar = 0.9,
    adam_beta_2: Scalar = 0.999,
    epsilon: Scalar = 1e-7,
    muon_a: Scalar = 3.4445,
    muon_b: Scalar = -4.7750,
    muon_c: Scalar = 2.0315,
    adam_lr_ratio: Scalar = 1.0,
    momentum: Scalar = 0.95,
    ns_steps: Scalar = 5,
    nesterov: Scalar = 1.0,
    rms_rate: Scalar = 0.2,
    one_minus_adam_beta_1: Scalar | None = None,
    one_minus_adam_beta_2: Scalar | None = None,
    one_minus_momentum: Scalar | None = None,
) -> optax.GradientTransformation:
    """Keras ``Muon`` (Jordan et al., 2024; the scaling of Liu et al., 2025, "Moonlight").
    Defaults: lr 0.001, momentum 0.95, nesterov True, ns_steps 5, (a, b, c) = (3.4445,
    -4.7750, 2.0315), rms_rate 0.2, adam_lr_ratio 1, Adam betas 0.9/0.999, epsilon 1e-7;
    weight_decay and adam_weight_decay 0.004 are applied by :func:`keras_base`.

    2-D variables (the kernel):
        m <- m + g + m (momentum - 1);  G = g + momentum m (nesterov) or m
        var <- var - lr NS(G) sqrt(max(rows, cols)) rms_rate
    every other variable (the bias): the Keras Adam step with lr * adam_lr_ratio.

    Keras casts the Adam betas of the powers only (:func:`keras_cast`), and both weight
    decays (:func:`keras_base`). ``optax.contrib.muon`` keeps a different momentum form and
    Adam branch. Works on the Keras shapes of the variables (see :func:`keras_shaped`).
    """
    c1 = 1 - adam_beta_1 if one_minus_adam_beta_1 is None else one_minus_adam_beta_1
    c2 = 1 - adam_beta_2 if one_minus_adam_beta_2 is None else one_minus_adam_beta_2
    mu_minus_one = momentum - 1 if one_minus_momentum is None else -one_minus_momentum

    def init(params: optax.Params) -> MomentState:
        zeros = _zeros(params)
        return MomentState(jnp.zeros([], jnp.int32), zeros, zeros)

    def update(
        grads: optax.Updates, state: MomentState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, MomentState]:
        del params
        count, t = _count(state.count, _first_leaf(grads))

        def leaf(g: Array, m: Array, v: Array) -> tuple[Array, ...]:
            if g.ndim == 2:
                m = m + (g + m * mu_minus_one)
                direction = jnp.where(nesterov != 0, g + momentum * m, m)
                scale = jnp.sqrt(jnp.asarray(max(g.shape), g.dtype))
                step = learning_rate * newton_schulz(direction, ns_steps, muon_a, muon_b, muon_c)
                return -(step * scale * rms_rate), m, v
            lr = learning_rate * adam_lr_ratio
            beta_1_power = keras_cast(adam_beta_1, t.dtype) ** t
            beta_2_power = keras_cast(adam_beta_2, t.dtype) ** t
            v_correction = _per_config(jnp.sqrt(1 - beta_2_power), learning_rate)
            (m_divisor,) = _divisors((1 - beta_1_power,), learning_rate)
            alpha = m_divisor(lr * v_correction)
            m = m + (g - m) * c1
            v = v + (jnp.square(g) - v) * c2
            return -((m * alpha) / (jnp.sqrt(v) + epsilon)), m, v

        steps, m, v = _leafwise(leaf, grads, state.m, state.v)
        return steps, MomentState(count, m, v)

    return optax.GradientTransformation(init, update)


class ScheduleFreeState(NamedTuple):
    """Step count, the base sequence ``z`` and Adam's ``v``."""

    count: Array
    z: optax.Updates
    v: optax.Updates


def keras_schedule_free_adamw(
    learning_rate: Scalar,
    beta_1: Scalar = 0.9,
    beta_2: Scalar = 0.999,
    epsilon: Scalar = 1e-8,
    warmup_steps: Scalar = 0,
) -> optax.GradientTransformation:
    """Keras ``ScheduleFreeAdamW`` (Defazio et al., 2024, "The Road Less Scheduled").
    Defaults: lr 0.0025, beta_1 0.9, beta_2 0.999, epsilon 1e-8, warmup_steps 0.

        lr_t = lr min(t / warmup_steps, 1)  (warmup_steps > 0)
        v <- v + (g^2 - v)(1 - beta_2)
        z' = z - lr_t g / (sqrt(v / (1 - beta_2^t)) + epsilon)
        x = (y - (1 - beta_1) z') / beta_1                 (y: the model's weights)
        x' = (1 - 1/t) x + (1/t) z';   y <- (1 - beta_1) z' + beta_1 x'

    The paper recovers ``x`` from the *old* ``z``; Keras 3.15 reads ``momentum.value`` after
    assigning to it, which on the TensorFlow backend is the variable itself, so it uses the
    new ``z'``. This is Keras's behaviour, so it is reproduced. The model holds the
    interpolated point ``y``, which Keras assigns (as an optax update, ``y' - y``).
    Keras casts beta_1, beta_2 and epsilon (:func:`keras_cast`) and forms the complements
    from the cast values.

    ``z`` starts at zero: ``build`` copies the weights into it, but under ``model.fit`` (keras
    3.15.1, TensorFlow backend) that copy does not survive the trainer's symbolic build, and
    the first step starts from z = 0 (measured; an explicit ``optimizer.build`` keeps it).
    """

    def init(params: optax.Params) -> ScheduleFreeState:
        zeros = _zeros(params)
        return ScheduleFreeState(jnp.zeros([], jnp.int32), zeros, zeros)

    def update(
        grads: optax.Updates, state: ScheduleFreeState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, ScheduleFreeState]:
        assert params is not None, "the schedule-free step needs the parameters"
        count, t = _count(state.count, _first_leaf(grads))
        b1, b2 = keras_cast(beta_1, t.dtype), keras_cast(beta_2, t.dtype)
        eps = keras_cast(epsilon, t.dtype)
        warm, weight = _per_config(
            (jnp.minimum(t / jnp.asarray(warmup_steps, t.dtype), 1.0), 1.0 / t), learning_rate
        )
        (v_divisor,) = _divisors((1 - b2**t,), learning_rate)
        lr = jnp.where(warmup_steps > 0, learning_rate * warm, learning_rate)

        def leaf(g: Array, z: Array, v: Array, y: Array) -> tuple[Array, ...]:
            v = v + (jnp.square(g) - v) * (1 - b2)
            denominator = jnp.sqrt(v_divisor(v)) + eps
            z_new = z - (lr * g) / denominator
            x = (y - (1 - b1) * z_new) / b1  # sic: see the docstring
            x = (1 - weight) * x + weight * z_new
            return (1 - b1) * z_new + b1 * x - y, z_new, v

        steps, z, v = _leafwise(leaf, grads, state.z, state.v, params)
        return steps, ScheduleFreeState(count, z, v)

    return optax.GradientTransformation(init, update)


# --- What every Keras optimizer shares ----------------------------------------------------


def keras_shaped(
    inner: optax.GradientTransformation, shapes: optax.Params
) -> optax.GradientTransformation:
    """Run ``inner`` on the variables reshaped to ``shapes`` (a tree of objects with a
    ``.shape``, e.g. ``jax.ShapeDtypeStruct``); updates come back in the callers' shapes.

    Elementwise updates do not care, but Adafactor factors and Muon orthogonalises variables
    of two or more dimensions, as the ``(1, 1)`` kernel of ``Dense(1)`` is in Keras.
    """

    def to_keras(tree: optax.Params) -> optax.Params:
        return jax.tree.map(lambda x, s: jnp.reshape(x, s.shape), tree, shapes)

    def init(params: optax.Params) -> optax.OptState:
        return inner.init(to_keras(params))

    def update(
        grads: optax.Updates, state: optax.OptState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, optax.OptState]:
        steps, state = inner.update(
            to_keras(grads), state, None if params is None else to_keras(params)
        )
        return jax.tree.map(lambda s, g: jnp.reshape(s, g.shape), steps, grads), state

    return optax.GradientTransformation(init, update)


class BaseState(NamedTuple):
    """The wrapped optimizer's state, the step count and the weights' moving average."""

    inner: optax.OptState
    count: Array
    average: optax.Params


def keras_base(
    inner: optax.GradientTransformation,
    learning_rate: Scalar,
    *,
    clipnorm: Scalar = math.inf,
    global_clipnorm: Scalar = math.inf,
    inverse_global_clipnorm: Scalar | None = None,
    clipvalue: Scalar = math.inf,
    weight_decay: Scalar = 0.0,
    adam_weight_decay: Scalar | None = None,
    use_ema: Scalar = 0.0,
    ema_momentum: Scalar = 0.99,
) -> optax.GradientTransformation:
    """Keras's base-optimizer options around ``inner``, in ``BaseOptimizer.apply``'s order.

    1. Clip the gradients (Keras allows one of the three; inf means off):
       clipnorm, per variable:  g <- g c / max(||g||, c)
       global_clipnorm:         g <- g c min(1 / ||(all g)||, 1 / c)   (nan if the norm is not
                                finite, as Keras's ``+ (n - n)`` makes it)
       clipvalue:               g <- clip(g, -c, c)
    2. Decoupled weight decay ``var <- var - var wd lr`` (0 means off). Muon decays 2-D
       variables by ``weight_decay`` and the others by ``adam_weight_decay``. Keras casts
       the decay (:func:`keras_cast`); the clip thresholds and ema_momentum it uses uncast.
    3. ``inner``'s step, computed from the decayed weights.
    4. ``use_ema``: ``avg <- mu avg + (1 - mu) var`` after the step, mu = 0 on the first step
       (so the average starts at the weights) and ema_momentum after; ``fit`` then leaves
       the average in the model (:func:`final_weights`).

    Steps are returned as optax updates; with weight decay on, an update is
    ``(decayed + step) - var``, which may differ from Keras's two assignments in the last bit.
    """
    inverse = 1 / global_clipnorm if inverse_global_clipnorm is None else inverse_global_clipnorm

    def init(params: optax.Params) -> BaseState:
        return BaseState(inner.init(params), jnp.zeros([], jnp.int32), _zeros(params))

    def clip(grads: optax.Updates) -> optax.Updates:
        by_norm = jnp.isfinite(clipnorm)
        by_global = jnp.isfinite(global_clipnorm) & ~by_norm
        by_value = jnp.isfinite(clipvalue) & ~by_norm & ~by_global
        total = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads)))
        scale = global_clipnorm * jnp.minimum(1.0 / total, inverse) + (total - total)

        def leaf(g: Array) -> Array:
            norm = jnp.sqrt(jnp.sum(jnp.square(g)))
            g = jnp.where(by_norm, g * clipnorm / jnp.maximum(norm, clipnorm), g)
            g = jnp.where(by_global, g * scale, g)
            return jnp.where(by_value, jnp.clip(g, -clipvalue, clipvalue), g)

        return jax.tree.map(leaf, grads)

    def decay_of(var: Array) -> Scalar:
        return weight_decay if adam_weight_decay is None or var.ndim == 2 else adam_weight_decay

    def update(
        grads: optax.Updates, state: BaseState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, BaseState]:
        assert params is not None, "weight decay and EMA need the parameters"
        decayed = jax.tree.map(
            lambda v: jnp.where(
                decay_of(v) != 0, v - v * keras_cast(decay_of(v), v.dtype) * learning_rate, v
            ),
            params,
        )
        steps, inner_state = inner.update(clip(grads), state.inner, decayed)
        new = optax.apply_updates(decayed, steps)
        updates = jax.tree.map(
            lambda v, n, s: jnp.where(decay_of(v) != 0, n - v, s), params, new, steps
        )

        def average(a: Array, v: Array) -> Array:
            mu = jnp.where(state.count > 0, ema_momentum, 0.0).astype(v.dtype)
            return jnp.where(use_ema != 0, mu * a + (1 - mu) * v, a)

        averages = jax.tree.map(average, state.average, new)
        return updates, BaseState(inner_state, state.count + 1, averages)

    return optax.GradientTransformation(init, update)


def final_weights(params: optax.Params, state: optax.OptState, use_ema: Scalar) -> optax.Params:
    """What ``fit`` leaves in the model: the weights, or their moving average with
    ``use_ema`` (``finalize_variable_values``). ``state`` is a :class:`BaseState`, possibly
    inside :func:`keras_shaped` (which keeps its inner state as it is)."""
    if not isinstance(state, BaseState):
        return params
    return jax.tree.map(
        lambda p, a: jnp.where(use_ema != 0, jnp.reshape(a, p.shape), p), params, state.average
    )
