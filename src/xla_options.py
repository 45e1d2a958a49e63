"""XLA's CPU compiler options for the engine.

They are process-wide: XLA reads ``XLA_FLAGS`` once, when JAX's backend starts, so they are
set before that and cannot differ between two programs of one process. Nothing sets them on
import: the entry points (the main job, the benchmarks and tools, the tests) call :func:`configure`,
and so should a Python user who wants the command line's rounding::

    from src import xla_options
    xla_options.configure()   # before the first JAX computation

* **No FMA.** XLA's CPU compiler contracts ``a * b + c`` into fused multiply-adds wherever its
  fusion decisions allow, and those decisions change with array shapes and loop trip counts:
  the same configuration would then round differently when padded into a larger chunk, and
  differently from Keras (TensorFlow's kernels round every product). Capping the instruction
  set at AVX, which has no FMA, rounds every product, so results are bit-identical however a
  config is padded (x86-64 only; measured cost ~13%).
* **One CPU device per core, every loop compiled whole.** XLA's CPU runtime runs a loop as a
  sequence of compiled kernels, dispatched one by one on every trip, and splits a large
  elementwise kernel over its threads. The engine's loops are many small steps (a minibatch
  step of a few thousand configurations is a few microseconds of arithmetic, about as much as
  its dispatch), so a program used one core of two and spent much of it dispatching. XLA
  compiles a loop into one function instead where its buffers are small
  (``xla_cpu_small_while_loop_byte_threshold``, 1 kB by default); :data:`SMALL_LOOPS` lifts
  that limit for every loop, and JAX's CPU backend gets one device per core the process may
  use (``xla_force_host_platform_device_count``), over which the simulator splits every chunk
  (:mod:`src.simulator`, chunks sized so that a device's share stays in its core's cache).
  On the 2-core machine: the seed workload (2^20 SGD configs, 500 epochs) went from 6.1e8
  to 1.2e9 config-epochs/s, the mixed map's SGD family from 1.1-1.6e7 to 3.3-3.9e7, the autodiff
  kernel's seed workload from 1.3e8 to 2.4e8 (``python -m benchmarks.performance``). Each
  configuration computes the same bits on any number of devices (``tests/test_devices.py``;
  one known exception, shuffled maps of several features, is described in docs/design.md),
  and with loops compiled whole or not (``tests/test_xla_options.py``). A user's own
  ``--xla_force_host_platform_device_count=K`` (or ``JAX_NUM_CPU_DEVICES``) is kept (``K = 1``:
  one core), and so are backend options given in ``XLA_FLAGS`` (this one then left out).
* **Multi-output fusion** (:func:`use_multi_output_fusion`, opt-in). By default XLA's CPU
  fusion gives every value an epoch carries (weights, optimizer state, loss, events) a loop
  of its own, each recomputing the step's shared arithmetic. With multi-output fusion, work
  shared by several values is computed once, in loops with several outputs: the moments
  kernel then runs ~1.3x faster (2-core CPU, seed workload). The autodiff kernel's group
  chunks need the recomputation instead (each slot's residual feeds the loss and both
  gradients; kept in one loop, it never goes through memory), and run ~6x slower with it, so
  it is chosen per job: the main job turns it on when its kernel is ``moments``.

None of these options reorders or contracts arithmetic: results are bit-identical with or
without multi-output fusion and compiled loops (``tests/test_xla_options.py``).

* **A persistent compilation cache** (:func:`use_compilation_cache`; the command line turns it
  on). Compiling the engine's programs is most of a first run (the default job: ~4 s of
  compile against ~0.5 s of compute on a 2-core CPU, docs/design.md, Compile time). JAX can
  keep every compiled program on disk, keyed by the program, its compile options, the JAX and
  XLA versions and ``XLA_FLAGS``, and load it instead
  of compiling it again: a second run compiles nothing. A cached program is the very
  executable that was compiled, so results are the same bit for bit. The cache lives in
  ``$XDG_CACHE_HOME/stability_map/jax`` (default ``~/.cache/stability_map/jax``);
  ``STABILITY_MAP_CACHE`` names another folder, or turns it off with ``off``.
  Its ``traced/`` folder (:func:`program_store`) keeps the engine's programs as traced, before
  compilation (:mod:`jax.export`): JAX's cache is keyed by the lowered program, so finding
  an entry takes tracing the engine first, which would otherwise be most of a second run's
  remaining compile time. The command line keeps the closed forms' scanned critical learning
  rates beside them, in ``closed_forms/`` (:func:`src.theory.keep_critical_lrs_in`).
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
from pathlib import Path

BACKEND_OPTIONS = "--xla_backend_extra_options="
MULTI_OUTPUT_FUSION = "xla_cpu_use_multi_output_fusion"
SMALL_LOOPS = f"xla_cpu_small_while_loop_byte_threshold={1 << 40}"
"""Every loop (those whose buffers take less than 1 TiB) is compiled into one function."""
DEVICE_COUNT = "xla_force_host_platform_device_count"


def backend_options(flags: str) -> list[str] | None:
    """The backend options ``flags`` (an ``XLA_FLAGS`` value) gives XLA; ``None`` if none."""
    for flag in flags.split():
        if flag.startswith(BACKEND_OPTIONS):
            return [o for o in flag.removeprefix(BACKEND_OPTIONS).split(",") if o]
    return None


def with_backend_options(flags: str, options: list[str]) -> str:
    """``flags`` with its backend options replaced by ``options``."""
    kept = [f for f in flags.split() if not f.startswith(BACKEND_OPTIONS)]
    return " ".join([*kept, BACKEND_OPTIONS + ",".join(options)])


def cpu_flags(flags: str, machine: str | None = None, cores: int = 1) -> str:
    """``flags`` (an ``XLA_FLAGS`` value) with the instruction set capped at AVX on x86-64,
    unless ``flags`` sets ``xla_cpu_max_isa`` itself; with one CPU device per core
    (``cores`` > 1), unless ``flags`` sets the device count itself; and with
    :data:`SMALL_LOOPS`, unless ``flags`` gives backend options of its own."""
    machine = (machine or platform.machine()).lower()
    if machine in ("x86_64", "amd64") and "xla_cpu_max_isa" not in flags:
        flags = f"{flags} --xla_cpu_max_isa=AVX"
    if cores > 1 and DEVICE_COUNT not in flags:
        flags = f"{flags} --{DEVICE_COUNT}={cores}"
    if backend_options(flags) is None:
        flags = with_backend_options(flags, [SMALL_LOOPS])
    return flags.strip()


def usable_cores(environ: dict[str, str] | None = None) -> int:
    """The cores this process may run on; 1 (no extra devices) where ``JAX_NUM_CPU_DEVICES``
    already sets JAX's CPU device count."""
    env = os.environ if environ is None else environ
    if env.get("JAX_NUM_CPU_DEVICES", "").strip():
        return 1
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def configure() -> bool:
    """Cap the instruction set and give JAX one CPU device per core (:func:`cpu_flags`) in
    ``XLA_FLAGS`` for this process, if JAX's backend has not started yet; returns whether
    they are in force (or not needed)."""
    flags = os.environ.get("XLA_FLAGS", "")
    wanted = cpu_flags(flags, cores=usable_cores())
    if wanted == flags.strip():
        return True
    if _backend_started():
        return False
    os.environ["XLA_FLAGS"] = wanted
    return True


def _backend_started() -> bool:
    from jax._src import xla_bridge  # whether a backend has started: no public API says so

    return xla_bridge.backends_are_initialized()


def use_multi_output_fusion() -> bool:
    """Turn on XLA's multi-output fusion for this process, if JAX's backend has not started
    yet (whether it applies is returned). ``XLA_FLAGS`` that already name backend options
    other than :func:`configure`'s are left as they are."""
    flags = os.environ.get("XLA_FLAGS", "")
    options = backend_options(flags) or []
    if MULTI_OUTPUT_FUSION in options:
        return True
    if _backend_started() or options not in ([], [SMALL_LOOPS]):
        return False
    os.environ["XLA_FLAGS"] = with_backend_options(flags, [*options, MULTI_OUTPUT_FUSION])
    return True


CACHE_VARIABLE = "STABILITY_MAP_CACHE"
"""The environment variable naming the compilation cache's folder (``off``: no cache)."""


def compilation_cache_dir(environ: dict[str, str] | None = None) -> Path | None:
    """Where compiled programs are kept (``None``: nowhere), from :data:`CACHE_VARIABLE`,
    else ``$XDG_CACHE_HOME/stability_map/jax``, else ``~/.cache/stability_map/jax``."""
    env = os.environ if environ is None else environ
    chosen = env.get(CACHE_VARIABLE, "").strip()
    if chosen.lower() in ("off", "0", "no", "false", "none"):
        return None
    if chosen:
        return Path(chosen).expanduser()
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "stability_map" / "jax"


def use_compilation_cache() -> Path | None:
    """Keep every compiled program in :func:`compilation_cache_dir` and load it from there
    on later runs; returns the folder (``None``: turned off)."""
    import jax

    folder = compilation_cache_dir()
    if folder is None:
        return None
    global _program_store
    _program_store = folder / "traced"
    _program_store.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    # Every program, however quick to compile: a run compiles dozens of small ones.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder


_program_store: Path | None = None


def program_store() -> Path | None:
    """Where traced programs are kept (serialised by :mod:`jax.export`), beside the compiled
    ones: ``traced/`` in the cache folder once :func:`use_compilation_cache` turned it on,
    else ``None``. Tracing the engine (Python running every optimizer's step under ``vmap``
    and ``shard_map``) is most of what a second run still spends on its programs."""
    return _program_store


def digest(ident: str) -> str:
    """A file name for the program ``ident`` describes, in this version of the code: the
    package's source and the JAX version are part of it, so an edit traces anew."""
    return hashlib.sha256(f"{_code_version()}\n{ident}".encode()).hexdigest()[:40]


@functools.cache
def _code_version() -> str:
    import jax
    import jaxlib

    h = hashlib.sha256(f"{jax.__version__} {jaxlib.__version__}".encode())
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()
