"""Honest figures, measured in one run: ``python -m benchmarks.performance``.

Prints, and writes to ``docs/performance.md``:

* seconds end to end, as a user waits for them: the default main job with ``--validate 0``
  on a first run (an empty compilation cache) and a second one, a 1,048,576-config seed map
  on a second run, and the default Keras check (its picks and seconds), each with the
  phases its ``summary.json`` records;

* the machine's measured arithmetic ceiling for this kind of code: float32 multiply-adds over a
  large array in one jitted XLA loop (with the project's XLA flags, so no FMA), in flop/s;
* config-epochs/s of both kernels (moments and per-sample autodiff) on the seed workload
  (SGD, N <= 32, full batch, 500 epochs), and for one optimizer of every family;
* config-epochs/s per family on the mixed map (every optimizer, N = 1..256, batch sizes 8
  and 32, 500 epochs);
* the fraction of the ceiling each reaches, counting :data:`MIN_FLOPS` per config-epoch: the
  arithmetic of one full-batch SGD epoch done the cheapest exact way (the gradient and loss
  from per-batch sufficient statistics), so 1.0 means the ceiling of *any* implementation;
* the speedup over a per-config jitted JAX loop and over Keras ``model.fit``, same run.

The moments kernel's figures come from a child process configured as the main job configures
itself for that kernel (XLA's multi-output fusion, :mod:`src.xla_options`); each kernel's
speedup over its per-config loop is measured within one process.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.sweep import one_per_family
from benchmarks.workloads import (
    MIXED_BATCH_SIZES,
    MIXED_N,
    keras_available,
    keras_rate,
    loop_rate,
    mixed_rate,
    sweep_rate,
    sweep_rates,
)
from src import optimizers as opt
from src import xla_options

KERNELS = ("moments", "autodiff")
SEED_CONFIGS = {"moments": 1_048_576, "autodiff": 1_048_576}
SEED_EPOCHS = 500
FAMILY_CONFIGS = {"moments": 65_536, "autodiff": 131_072}
FAMILY_EPOCHS = 100
FAMILY_ROUNDS = 2
"""Every family is measured this many times, one round of all after the other, and keeps its
best: a family measured in a second or so otherwise takes whatever the shared machine's
neighbours do in that second."""
MIXED_LRS, MIXED_EPOCHS = 16, 500
LOOP_CONFIGS, LOOP_EPOCHS = 64, 500
KERAS_CONFIGS, KERAS_EPOCHS = 3, 20
MIN_FLOPS = 20
"""Flops of one full-batch SGD epoch of ``Dense(1)`` + MSE from sufficient statistics: the
offsets from the batch optimum (2), the loss (7), the gradient (6) and the update (4), rounded
up."""

DOCS = Path(__file__).resolve().parents[1] / "docs" / "performance.md"


def ceiling_flops(size: int = 1 << 22, steps: int = 64) -> float:
    """Best of three: flop/s of ``x <- x * a + b`` over ``size`` floats, ``steps`` times,
    split over every device as the engine's chunks are (on the CPU, one device per core)."""

    @jax.jit
    def chain(x: jax.Array) -> jax.Array:
        return jax.lax.fori_loop(0, steps, lambda _, v: v * 0.999 + 0.001, x)

    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("x",))
    split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("x"))
    x = jax.device_put(jnp.ones(size, jnp.float32), split)
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


def measure_kernel(kernel: str) -> dict[str, object]:
    """One kernel's figures, in this process: the seed workload (end to end and engine calls
    only), its per-config loop, one optimizer per family and (moments, the default kernel)
    the mixed map."""
    seed, engine_only = sweep_rates("sgd", SEED_CONFIGS[kernel], SEED_EPOCHS, kernel)
    out: dict[str, object] = {
        "seed": seed,
        "engine_only": engine_only,
        "loop": loop_rate("sgd", LOOP_CONFIGS, LOOP_EPOCHS, kernel),
        "families": family_rates(kernel),
    }
    if kernel == "moments":
        names = dict.fromkeys(opt.get(n).family.name for n in one_per_family())
        out["mixed"] = {f: mixed_rate(f, MIXED_LRS, MIXED_EPOCHS) for f in names}
    return out


def family_rates(kernel: str) -> dict[str, float]:
    """Config-epochs per second of one optimizer per family on the seed workload: the best
    of :data:`FAMILY_ROUNDS` rounds."""
    best: dict[str, float] = {}
    for _ in range(FAMILY_ROUNDS):
        for name in one_per_family():
            rate = sweep_rate(name, FAMILY_CONFIGS[kernel], FAMILY_EPOCHS, kernel)
            best[name] = max(best.get(name, 0.0), rate)
    return best


def measure_in_child(kernel: str) -> dict[str, object]:
    """:func:`measure_kernel` in a fresh process configured as the main job configures itself
    for that kernel (moments: XLA's multi-output fusion, see :mod:`src.xla_options`)."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.performance", "--kernel", kernel],
        capture_output=True, text=True, check=True, cwd=DOCS.parents[1],
    )  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


SEED_MAP_ARGS = ("--optimizers", "sgd", "--n", "1:32", "--lr", "1e-5:1:32768", "--no-shuffle")
"""The seed map of 32 x 32,768 = 1,048,576 configurations (SGD, full batch, 500 epochs)."""
PHASES = ("simulate", "curves", "boundary", "report", "compile", "compute")


def main_job(args: Sequence[str], cache: Path) -> dict[str, float]:
    """Wall seconds of ``python -m src.stability_map ARGS`` in a fresh process (compiled
    programs kept in ``cache``), and the phases its ``summary.json`` records."""
    with tempfile.TemporaryDirectory() as out:
        env = {**os.environ, xla_options.CACHE_VARIABLE: str(cache)}
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "src.stability_map", "--quiet", "--out", out, *args],
            check=True, capture_output=True, cwd=DOCS.parents[1], env=env,
        )  # fmt: skip
        wall = time.perf_counter() - t0
        summary = json.loads((Path(out) / "summary.json").read_text())
        checked = Path(out) / "validation.json"
        check = json.loads(checked.read_text()) if checked.exists() else None
    figures = {"wall": wall, **{p: float(summary.get(f"{p}_seconds", math.nan)) for p in PHASES}}
    if check is not None and check.get("checked"):  # --validate 0 records 0 picks: "off"
        figures["keras_picks"] = float(check["checked"])
        figures["keras_seconds"] = float(check["seconds"])
    return figures


def end_to_end() -> dict[str, dict[str, float]]:
    """The waits of :func:`main_job`: the default job with ``--validate 0`` on an empty
    cache then on a warm one, the seed map (warmed first), and the default Keras check."""
    with tempfile.TemporaryDirectory() as cache_dir:
        cache = Path(cache_dir)
        out = {"default, first run": main_job(["--validate", "0"], cache)}
        out["default, second run"] = main_job(["--validate", "0"], cache)
        main_job([*SEED_MAP_ARGS, "--validate", "0"], cache)
        out["seed map (2^20 configs), second run"] = main_job(
            [*SEED_MAP_ARGS, "--validate", "0"], cache
        )
        if keras_available():
            out["default with its Keras check"] = main_job([], cache)
    return out


def measure() -> dict[str, object]:
    """Every figure of the report, in one run: the moments kernel in a child process."""
    waits = end_to_end()
    flops = ceiling_flops()
    parts = {"moments": measure_in_child("moments"), "autodiff": measure_kernel("autodiff")}
    keras = keras_rate("sgd", KERAS_CONFIGS, KERAS_EPOCHS) if keras_available() else math.nan
    return {
        "flops": flops, "ceiling": flops / MIN_FLOPS, "keras": keras,
        "seed": {k: p["seed"] for k, p in parts.items()},
        "engine_only": {k: p["engine_only"] for k, p in parts.items()},
        "loops": {k: p["loop"] for k, p in parts.items()},
        "families": {k: p["families"] for k, p in parts.items()},
        "mixed": parts["moments"]["mixed"], "end_to_end": waits,
    }  # fmt: skip


def end_to_end_lines(waits: dict[str, dict[str, float]]) -> list[str]:
    """The end-to-end table (seconds; "-" where a phase was not recorded)."""
    lines = [
        "## End to end: what a user waits for",
        "",
        "Each row one `python -m src.stability_map` process, timed from start to exit; the "
        "phases are those its `summary.json` records (compile and compute are the engine's "
        "share of simulate, curves and boundary). The cache is the persistent compilation "
        "cache, empty before the first run.",
        "",
        "| run | wall s | simulate | curves | boundary | report | compile | compute | "
        "Keras check |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(v: float) -> str:
        return "-" if math.isnan(v) else f"{v:.1f}"

    for name, f in waits.items():
        keras = (
            f"{f['keras_picks']:.0f} picks, {f['keras_seconds']:.1f} s"
            if "keras_picks" in f
            else "off"
        )
        lines.append(
            f"| {name} | {f['wall']:.1f} | "
            + " | ".join(cell(f[p]) for p in PHASES)
            + f" | {keras} |"
        )
    return [*lines, ""]


def report(m: dict[str, object]) -> str:
    """The Markdown page."""
    seed: dict[str, float] = m["seed"]  # type: ignore[assignment]
    engine_only: dict[str, float] = m["engine_only"]  # type: ignore[assignment]
    loops: dict[str, float] = m["loops"]  # type: ignore[assignment]
    families: dict[str, dict[str, float]] = m["families"]  # type: ignore[assignment]
    mixed: dict[str, float] = m["mixed"]  # type: ignore[assignment]
    ceiling: float = m["ceiling"]  # type: ignore[assignment]
    keras: float = m["keras"]  # type: ignore[assignment]
    lines = [
        "# Performance notes",
        "",
        f"Measured {datetime.date.today()} by `python -m benchmarks.performance` on "
        f"{cpu_name()} ({os.cpu_count()} cores), devices "
        f"{', '.join(str(d) for d in jax.devices())}, JAX {jax.__version__}, Python "
        f"{platform.python_version()}. One run: each kernel's figures and its loop come from "
        "one process (the moments kernel's from a child process with XLA's multi-output "
        "fusion, as the main job runs it); the seed-workload figures are the best of three "
        "passes after a warm-up (each family's: the best of two rounds of all families). The "
        "machine is shared, so single figures vary by up to ~2x between runs.",
        "",
        f"Arithmetic ceiling (float32 multiply-adds in one XLA loop, no FMA): "
        f"{m['flops']:.3g} flop/s, i.e. {ceiling:.3g} config-epochs/s at {MIN_FLOPS} "
        "flops per full-batch SGD epoch (the cheapest exact form).",
        "",
        *end_to_end_lines(m["end_to_end"]),  # type: ignore[arg-type]
        f"## Seed workload: SGD, N <= 32, full batch, float32, {SEED_EPOCHS} epochs",
        "",
        "| kernel | configs | config-epochs/s (end to end) | engine calls only | of the "
        "ceiling | per-config jitted loop (same kernel) | speedup over it | speedup over "
        "Keras `model.fit` |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for k in KERNELS:
        vs_keras = "-" if math.isnan(keras) else f"{seed[k] / keras:.3g}x"
        lines.append(
            f"| {k} | {SEED_CONFIGS[k]:,} | {seed[k]:.3g} | {engine_only[k]:.3g} | "
            f"{seed[k] / ceiling:.0%} | "
            f"{loops[k]:.3g} | {seed[k] / loops[k]:.0f}x | {vs_keras} |"
        )
    lines += [
        "",
        f"Per-config loop: {LOOP_CONFIGS} configs x {LOOP_EPOCHS} epochs, one jitted call each. "
        + (
            "Keras: TensorFlow not installed."
            if math.isnan(keras)
            else f"Keras: {KERAS_CONFIGS} configs x {KERAS_EPOCHS} epochs, {keras:.3g} "
            "config-epochs/s."
        ),
        "",
        f"## Every family on the seed workload ({FAMILY_EPOCHS} epochs)",
        "",
        "| optimizer (family) | moments: config-epochs/s | of SGD's | of the ceiling | "
        "autodiff: config-epochs/s | of SGD's |",
        "|---|---|---|---|---|---|",
    ]
    for name in families["moments"]:
        mo, ad = families["moments"][name], families["autodiff"][name]
        lines.append(
            f"| {name} | {mo:.3g} | {mo / families['moments']['sgd']:.2f} | "
            f"{mo / ceiling:.0%} | {ad:.3g} | {ad / families['autodiff']['sgd']:.2f} |"
        )
    sizes = " and ".join(str(b) for b in MIXED_BATCH_SIZES)
    lines += [
        "",
        f"## Mixed map: every optimizer, N = 1..{MIXED_N}, batch sizes {sizes}, "
        f"{MIXED_EPOCHS} epochs",
        "",
        f"{MIXED_LRS} learning rates per optimizer; the default kernel (`auto`: moments), a "
        "fixed batch order. A family runs all its optimizers in one program; rows come in the "
        "main job's walk order (batch size, N, optimizer, lr), in calls of 1,024 per device "
        "(`simulator.MINIBATCH_CONFIGS`): consecutive "
        "chunks, or, for families with step counters, segments of configurations with equal "
        "batch counts (docs/design.md, Segments).",
        "",
        "| family | config-epochs/s | of SGD's |",
        "|---|---|---|",
    ]
    for family, rate in mixed.items():
        lines.append(f"| {family} | {rate:.3g} | {rate / mixed['sgd']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    xla_options.configure()  # the main job's rounding, before JAX starts its backend
    if sys.argv[1:2] == ["--kernel"]:  # one kernel's part of the run (see measure_in_child)
        kernel = sys.argv[2]
        if kernel == "moments":
            xla_options.use_multi_output_fusion()
        print(json.dumps(measure_kernel(kernel)))
        return
    text = report(measure())
    print(text)
    if "--no-write" not in sys.argv:
        from src.store import write_text

        write_text(DOCS, text + kept_sections())


KEPT = ("## GPU",)
"""Sections of docs/performance.md that other runs write (the GPU figures of
benchmarks/device_check.sh): a CPU run keeps them as they are."""


def kept_sections() -> str:
    """The :data:`KEPT` sections of the current docs/performance.md, each to the next heading."""
    if not DOCS.exists():
        return ""
    old = DOCS.read_text()
    out = []
    for heading in KEPT:
        start = old.find("\n" + heading + "\n")
        if start >= 0:
            end = old.find("\n## ", start + 1)
            out.append(old[start : end if end >= 0 else len(old)].rstrip() + "\n")
    return "".join(out)


if __name__ == "__main__":
    main()
