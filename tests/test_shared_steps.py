"""Shared step terms: where every configuration steps together (one batch per epoch,
:func:`src.engine.shares_steps`), the step counters, and what depends on them alone, are one
value for the whole chunk, so that bias corrections and schedules (``beta^t``, Nadam's
``0.96^t``, Adafactor's ``t^decay``, ...) are computed once per step, not once per config.

That must change no bit: the same configurations run with per-config counters (the chunk
padded to a second, empty batch row) give identical summaries and histories, over hundreds of
steps, with ragged epochs, both kernels, float64, and hyperparameters that differ per config.
XLA rewrites arithmetic between shared and per-config values (a division by a shared value
becomes a multiplication by its reciprocal): without :func:`src.keras_optax._per_config`
these comparisons fail (Adam's weights differ after a few steps)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from marks import quick_few

from src import engine
from src import keras_optax as kx
from src import optimizers as opt
from src.configs import FlatConfigs
from src.problem import Problem
from src.simulator import Simulator

STEP_TERMS = ("adam", "adamw", "adamax", "nadam", "lamb", "adafactor", "muon",
              "schedule_free_adamw", "ftrl")  # fmt: skip
"""Optimizers with step-dependent terms (FTRL: its carried power), and what they share."""

N = (1, 2, 7, 20, 20, 32, 9, 13)
LR = tuple(10.0**e for e in np.linspace(-4, -0.5, len(N)))
EPOCHS = (300, 120, 300, 300, 37, 300, 1, 250)
"""Ragged: configs past their epochs must not disturb the shared counter's meaning."""


def run(
    name: str,
    n_batches: int,
    *,
    kernel: str = "moments",
    dtype: str = "float32",
    overrides: dict[str, list[float]] | None = None,
) -> tuple[engine.Summary, np.ndarray]:
    """The configs of :data:`N`, :data:`LR`, :data:`EPOCHS`, full batch (32), in one chunk
    whose shapes hold ``n_batches`` batch rows (1: shared steps; 2: per-config counters, in
    a plain mixed chunk, not in segments)."""
    family = opt.get(name).family
    count = len(N)
    shapes = engine.Shapes(n_max=max(N), n_batches=n_batches, batch_width=32,
                           epochs=max(EPOCHS))  # fmt: skip
    with jax.enable_x64(dtype == "float64"):
        table, rows = Problem().table(tuple(sorted(set(N))), dtype)
        sim = Simulator(table, rows, dtype, 1e-4, kernel=kernel, groups=False, segments=False)
        flat = FlatConfigs.of(
            [name] * count, family,
            {k: np.asarray(v, np.float64) for k, v in (overrides or {}).items()},
            learning_rate=np.asarray(LR), n=np.asarray(N), batch_size=np.full(count, 32),
            seed=np.arange(count), epochs=np.asarray(EPOCHS),
        )  # fmt: skip
        summary, history = sim.run(family, flat, shapes, history=True)
    assert summary is not None and history is not None
    return summary, history


def assert_same_bits(a: engine.Summary, b: engine.Summary, ha: np.ndarray, hb: np.ndarray) -> None:
    for field in engine.Summary._fields:
        x, y = np.asarray(getattr(a, field)), np.asarray(getattr(b, field))
        assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=True), field
    assert np.array_equal(ha, hb, equal_nan=True), "history"


def test_one_batch_per_epoch_is_what_shares_steps() -> None:
    assert engine.shares_steps(engine.Shapes(n_max=20, n_batches=1, batch_width=32, epochs=5))
    assert not engine.shares_steps(engine.Shapes(n_max=20, n_batches=2, batch_width=32, epochs=5))


@pytest.mark.parametrize("name", STEP_TERMS)
def test_every_step_state_field_is_found(name: str) -> None:
    """The engine keeps exactly these leaves shared: every step counter (and Nadam's
    product), and no leaf that differs between configs (moments, weights' averages)."""
    o = opt.get(name)
    args = o.family.arguments(o.defaults)  # base options only where Keras sets one
    tx = o.family.transformation(jnp.float32(0.01), args, engine.keras_shapes(1))
    state = tx.init(engine.Params(jnp.zeros(1), jnp.zeros(())))
    found = {
        jax.tree_util.keystr(path): leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(state)
        if engine.is_step_state(path)
    }
    names = {path.rsplit(".", 1)[-1] for path in found}
    expected = {"count"} if name != "ftrl" else set()
    expected |= {"u_product"} if name == "nadam" else set()
    if "weight_decay" in o.defaults:  # keras_base's own counter (weight decay, EMA)
        expected.add("count")
    assert names == expected, found
    assert all(np.ndim(leaf) == 0 for leaf in found.values())


@pytest.mark.parametrize("name", quick_few(STEP_TERMS, ("adam", "nadam")))
def test_shared_steps_give_the_per_config_bits(name: str) -> None:
    shared, shared_history = run(name, 1)
    alone, alone_history = run(name, 2)
    assert np.isfinite(shared.final_loss).any()
    assert_same_bits(shared, alone, shared_history, alone_history)


@pytest.mark.slow  # a dozen more programs
@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("adam", {"kernel": "autodiff"}),
        ("nadam", {"kernel": "autodiff"}),
        ("adam", {"dtype": "float64"}),
        ("nadam", {"dtype": "float64"}),
        ("adafactor", {"dtype": "float64"}),
        ("schedule_free_adamw", {"dtype": "float64"}),
        ("adam", {"overrides": {"beta_1": [0.8, 0.9, 0.95, 0.9] * 2, "amsgrad": [0, 1] * 4}}),
        ("nadam", {"overrides": {"beta_1": [0.8, 0.9, 0.95, 0.9] * 2}}),
        ("adafactor", {"overrides": {"beta_2_decay": [-0.8, -0.5] * 4}}),
        ("schedule_free_adamw", {"overrides": {"warmup_steps": [0, 10, 3, 50] * 2}}),
        ("schedule_free_adamw", {"overrides": {"warmup_steps": [7] * 8}}),
        ("muon", {"overrides": {"ns_steps": [3, 5] * 4, "adam_lr_ratio": [0.5] * 8}}),
        ("ftrl", {"overrides": {"learning_rate_power": [-0.5, -0.3] * 4}}),
    ],
)
def test_shared_steps_give_the_per_config_bits_everywhere(name: str, options: dict) -> None:
    shared, shared_history = run(name, 1, **options)
    alone, alone_history = run(name, 2, **options)
    assert_same_bits(shared, alone, shared_history, alone_history)


def test_ftrl_carries_the_power_of_its_accumulator() -> None:
    """The carried ``n^p`` is, bit for bit, the power of the accumulator it goes with."""
    tx = kx.keras_ftrl(jnp.float32(0.05), np.float32(-0.3), np.float32(0.1))
    params = jnp.asarray([0.3, -0.2], jnp.float32)

    @jax.jit
    def steps(params: jax.Array) -> kx.FtrlState:
        state = tx.init(params)
        for k in range(20):
            updates, state = tx.update(jnp.sin(params * (k + 1)) * 3, state, params)
            params = params + updates
        return state

    state = steps(params)
    recomputed = jax.jit(lambda a: jnp.power(a, np.float32(0.3)))(state.accumulator)
    assert np.array_equal(np.asarray(state.power), np.asarray(recomputed))


def test_newton_schulz_unrolled_is_the_loop() -> None:
    """Compiled-in step counts are unrolled; a per-config count keeps the loop: same bits."""
    x = jnp.asarray(np.random.default_rng(0).normal(size=(64, 1, 1)), jnp.float32)
    args = (np.float32(3.4445), np.float32(-4.7750), np.float32(2.0315))
    unrolled = jax.jit(jax.vmap(lambda g: kx.newton_schulz(g, np.float32(5), *args)))(x)
    looped = jax.jit(jax.vmap(lambda g, s: kx.newton_schulz(g, s, *args)))(
        x, jnp.full(64, 5.0, jnp.float32)
    )
    assert np.array_equal(np.asarray(unrolled), np.asarray(looped))
