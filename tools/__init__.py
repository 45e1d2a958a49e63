"""Command-line tools around stability-map, run from the repository root:

* ``python -m tools.performance`` -- throughput figures, written to ``docs/performance.md``;
* ``python -m tools.memory`` -- peak memory of the main job against grid size;
* ``python -m tools.optax_aliases`` -- Keras's update equations against optax's aliases;
* ``python -m tools.offline_site`` -- the ``asv publish`` site made to work offline.

The asv benchmarks live in ``benchmarks/``; :mod:`tools.performance` reuses their workloads.
Each tool that runs JAX calls :func:`src.xla_options.configure` in its ``main`` before JAX
starts its backend, for the main job's rounding.
"""
