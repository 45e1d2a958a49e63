"""stability-map: where does gradient training of ``Dense(1)`` on a line stay stable?

Modules, one concept each:

* :mod:`src.problem` -- the dataset family (xs = 1..N, ys = 0.5 xs by default).
* :mod:`src.optimizers` -- Keras 3 optimizers as optax gradient transformations
  (:mod:`src.keras_optax` holds their update rules).
* :mod:`src.engine` -- the vectorized JAX simulation of ``model.fit``.
* :mod:`src.configs` -- configurations as rows: flat lists and a sweep's grid.
* :mod:`src.simulator` -- configurations through cached compiled engine programs, split over
  all devices.
* :mod:`src.distributed` -- one map over several processes or hosts (``jax.distributed``).
* :mod:`src.outcome` -- classifying a run (converged, slow, diverging, overflow); what is
  stable and what breaks.
* :mod:`src.theory` -- closed forms for SGD, heavy-ball and Nesterov on the quadratic loss, and
  which configurations have one.
* :mod:`src.boundary` -- measured critical learning rates by vectorized bisection.
* :mod:`src.spec` -- a sweep: what to run, checked.
* :mod:`src.runner` -- running a sweep into a map (memory check, curves, boundary search).
* :mod:`src.schema` -- the map's names: dimensions, variables, attributes.
* :mod:`src.explain` -- the plain-words diagnosis of one configuration.
* :mod:`src.keras_reference` -- the same configuration in real Keras ``model.fit``, and the
  worker processes that run it.
* :mod:`src.validation` -- a map's configurations re-run in Keras and compared (``--validate``).
* :mod:`src.findings` -- the headline answers read off a finished map.
* :mod:`src.report` -- every figure, and the report written to disk; :mod:`src.page` its
  ``index.html``; :mod:`src.forked` the child process that draws a share of the figures.
* :mod:`src.store`, :mod:`src.resume`, :mod:`src.sweep_file` -- atomic outputs, resumable
  runs, the sweep file.
* :mod:`src.cli` -- the command line (``python -m src.stability_map``).
* :mod:`src.xla_options` -- XLA's CPU compiler options: :func:`src.xla_options.configure`
  before JAX starts gives the bit-exact rounding the command line uses.

Importing the package changes nothing in the process: the entry points (the main job, the
benchmarks, the tests) call :func:`src.xla_options.configure` themselves.
"""
