"""Honest throughput figures, measured in one run: ``python -m benchmarks.performance``.

Prints, and writes to ``docs/performance.md``:

* the machine's measured arithmetic ceiling for this kind of code: float32 multiply-adds over a
  large array in one jitted XLA loop (with the project's XLA flags, so no FMA), in flop/s;
* config-epochs/s of the engine (the per-sample autodiff kernel) on the seed workload (N <= 32,
  full batch, Keras's batch size) for one optimizer of every family;
* the fraction of the ceiling each reaches, counting :data:`MIN_FLOPS` per config-epoch: the
  arithmetic of one full-batch SGD epoch done the cheapest exact way (the gradient and loss
  from per-batch sufficient statistics), so 1.0 means the ceiling of *any* implementation;
* the speedup over a per-config jitted JAX loop and over Keras ``model.fit``, same run.
"""

from __future__ import annotations

import datetime
import math
import os
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

import src  # noqa: F401  (XLA's CPU flags, before JAX starts)

from .sweep import one_per_family
from .workloads import keras_available, keras_rate, loop_rate, sweep_rate

CONFIGS, EPOCHS = 100_000, 100
LOOP_CONFIGS, LOOP_EPOCHS = 64, 500
KERAS_CONFIGS, KERAS_EPOCHS = 3, 20
MIN_FLOPS = 20
"""Flops of one full-batch SGD epoch of ``Dense(1)`` + MSE from sufficient statistics: the
offsets from the batch optimum (2), the loss (7), the gradient (6) and the update (4), rounded
up."""

DOCS = Path(__file__).resolve().parents[1] / "docs" / "performance.md"


def ceiling_flops(size: int = 1 << 22, steps: int = 64) -> float:
    """Best of three: flop/s of ``x <- x * a + b`` over ``size`` floats, ``steps`` times."""

    @jax.jit
    def chain(x: jax.Array) -> jax.Array:
        return jax.lax.fori_loop(0, steps, lambda _, v: v * 0.999 + 0.001, x)

    x = jnp.ones(size, jnp.float32)
    jax.block_until_ready(chain(x))
    best = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        jax.block_until_ready(chain(x))
        best = min(best, time.perf_counter() - t0)
    return 2 * size * steps / best


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure() -> dict[str, object]:
    """Every figure of the report, in one process."""
    flops = ceiling_flops()
    ceiling = flops / MIN_FLOPS
    families = {name: sweep_rate(name, CONFIGS, EPOCHS) for name in one_per_family()}
    loop = loop_rate("sgd", LOOP_CONFIGS, LOOP_EPOCHS)
    keras = keras_rate("sgd", KERAS_CONFIGS, KERAS_EPOCHS) if keras_available() else math.nan
    return {
        "flops": flops, "ceiling": ceiling, "families": families, "loop": loop, "keras": keras,
    }  # fmt: skip


def report(m: dict[str, object]) -> str:
    """The Markdown page."""
    families: dict[str, float] = m["families"]  # type: ignore[assignment]
    sgd = families["sgd"]
    lines = [
        "# Performance notes",
        "",
        f"Measured {datetime.date.today()} by `python -m benchmarks.performance` on "
        f"{cpu_name()} ({os.cpu_count()} cores), devices "
        f"{', '.join(str(d) for d in jax.devices())}, JAX {jax.__version__}, Python "
        f"{platform.python_version()}. One run: the ratios are from the same process.",
        "",
        f"Arithmetic ceiling (float32 multiply-adds in one XLA loop, no FMA): "
        f"{m['flops']:.3g} flop/s, i.e. {m['ceiling']:.3g} config-epochs/s at {MIN_FLOPS} "
        "flops per full-batch SGD epoch (the cheapest exact form).",
        "",
        f"Seed workload: {CONFIGS:,} configs (N <= 32, full batch, float32) x {EPOCHS} epochs, "
        "per-sample autodiff kernel:",
        "",
        "| optimizer (family) | config-epochs/s | of SGD's | of the ceiling |",
        "|---|---|---|---|",
    ]
    for name, rate in families.items():
        lines.append(
            f"| {name} | {rate:.3g} | {rate / sgd:.2f} | {rate / m['ceiling']:.1%} |"  # type: ignore[operator]
        )
    keras = m["keras"]
    lines += [
        "",
        "| implementation (SGD) | config-epochs/s | the engine's speedup over it |",
        "|---|---|---|",
        f"| the engine (above) | {sgd:.3g} | 1 |",
        f"| per-config jitted JAX loop ({LOOP_CONFIGS} configs x {LOOP_EPOCHS} epochs) | "
        f"{m['loop']:.3g} | {sgd / m['loop']:.1f}x |",  # type: ignore[operator]
        f"| Keras `model.fit` ({KERAS_CONFIGS} configs x {KERAS_EPOCHS} epochs) | "
        + ("not installed | - |" if math.isnan(keras) else f"{keras:.3g} | {sgd / keras:.3g}x |"),  # type: ignore[arg-type,operator]
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    text = report(measure())
    print(text)
    if "--no-write" not in sys.argv:
        from src.store import write_text

        write_text(DOCS, text)


if __name__ == "__main__":
    main()
