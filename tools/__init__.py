"""Command-line tools around stability-map, run from the repository root:

* ``python -m tools.memory`` -- peak memory of the main job against grid size;
* ``python -m tools.optax_aliases`` -- Keras's update equations against optax's aliases;
* ``python -m tools.offline_site`` -- the ``asv publish`` site made to work offline.

The asv benchmarks live in ``benchmarks/``, beside :mod:`benchmarks.performance`, which
measures with their workloads.
Each tool that runs JAX calls :func:`src.xla_options.configure` in its ``main`` before JAX
starts its backend, for the main job's rounding.
"""
