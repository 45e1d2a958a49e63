"""stability-map: where does gradient training of ``Dense(1)`` on a line stay stable?

Modules, one concept each:

* :mod:`src.problem` -- the dataset family (xs = 1..N, ys = 0.5 xs by default).
* :mod:`src.optimizers` -- Keras 3 optimizers as optax gradient transformations.
* :mod:`src.engine` -- the vectorized JAX simulation of ``model.fit``.
* :mod:`src.simulator` -- flat configuration lists through cached compiled engine programs,
  split over all devices.
* :mod:`src.distributed` -- one map over several processes or hosts (``jax.distributed``).
* :mod:`src.outcome` -- classifying a run: converged, slow, diverging, overflow.
* :mod:`src.theory` -- closed forms for SGD, heavy-ball and Nesterov on the quadratic loss.
* :mod:`src.boundary` -- measured critical learning rates by vectorized bisection.
* :mod:`src.sweep` -- a sweep specification and running it into an ``xarray.Dataset``.
* :mod:`src.explain` -- the plain-words diagnosis of one configuration.
* :mod:`src.keras_reference` -- the same configuration in real Keras ``model.fit``.
* :mod:`src.validation` -- a map's configurations re-run in Keras and compared (``--validate``).
* :mod:`src.findings` -- the headline answers read off a finished map.
* :mod:`src.report` -- heatmaps, loss curves and the self-contained ``index.html``.
* :mod:`src.store` -- atomic output files.
* :mod:`src.cli` -- the command line (``python -m src.stability_map``).
* :mod:`src.xla_options` -- XLA's CPU compiler options (no FMA; multi-output fusion).
"""

import os as _os

from src.xla_options import cpu_flags as _cpu_flags

_os.environ["XLA_FLAGS"] = _cpu_flags(_os.environ.get("XLA_FLAGS", ""))
