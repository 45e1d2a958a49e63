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
* **Multi-output fusion** (:func:`use_multi_output_fusion`, opt-in). By default XLA's CPU
  fusion gives every value an epoch carries (weights, optimizer state, loss, events) a loop
  of its own, each recomputing the step's shared arithmetic. With multi-output fusion, work
  shared by several values is computed once, in loops with several outputs: the moments
  kernel then runs ~1.3x faster (2-core CPU, seed workload). The autodiff kernel's group
  chunks need the recomputation instead (each slot's residual feeds the loss and both
  gradients; kept in one loop, it never goes through memory), and run ~6x slower with it, so
  it is chosen per job: the main job turns it on when its kernel is ``moments``.

Neither option reorders or contracts arithmetic: results are bit-identical with or without
multi-output fusion (``tests/test_xla_options.py``).

* **A persistent compilation cache** (:func:`use_compilation_cache`; the command line turns it
  on). Compiling the engine's programs is most of a first run (the default map: ~15 s of
  compile against ~1 s of compute on a 2-core CPU). JAX can keep every compiled program on
  disk, keyed by the program, the JAX and XLA versions and ``XLA_FLAGS``, and load it instead
  of compiling it again: a second run compiles nothing. A cached program is the very
  executable that was compiled, so results are the same bit for bit. The cache lives in
  ``$XDG_CACHE_HOME/stability_map/jax`` (default ``~/.cache/stability_map/jax``);
  ``STABILITY_MAP_CACHE`` names another folder, or turns it off with ``off``.
  Its ``traced/`` folder (:func:`program_store`) keeps the engine's programs as traced, before
  compilation (:mod:`jax.export`): JAX's cache is keyed by the lowered program, so finding
  an entry takes tracing the engine first, which would otherwise be most of a second run's
  remaining compile time.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
from pathlib import Path

MULTI_OUTPUT_FUSION = "--xla_backend_extra_options=xla_cpu_use_multi_output_fusion"


def cpu_flags(flags: str, machine: str | None = None) -> str:
    """``flags`` (an ``XLA_FLAGS`` value) with the instruction set capped at AVX on x86-64,
    unless ``flags`` sets ``xla_cpu_max_isa`` itself."""
    machine = (machine or platform.machine()).lower()
    if machine in ("x86_64", "amd64") and "xla_cpu_max_isa" not in flags:
        flags = f"{flags} --xla_cpu_max_isa=AVX"
    return flags.strip()


def configure() -> bool:
    """Cap the instruction set (:func:`cpu_flags`) in ``XLA_FLAGS`` for this process, if
    JAX's backend has not started yet; returns whether the cap is in force (or not needed)."""
    flags = os.environ.get("XLA_FLAGS", "")
    wanted = cpu_flags(flags)
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
    yet (whether it applies is returned). ``XLA_FLAGS`` that already name backend options are
    left as they are."""
    flags = os.environ.get("XLA_FLAGS", "")
    if MULTI_OUTPUT_FUSION in flags.split():
        return True
    if _backend_started() or "xla_backend_extra_options" in flags:
        return False
    os.environ["XLA_FLAGS"] = f"{flags} {MULTI_OUTPUT_FUSION}".strip()
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
