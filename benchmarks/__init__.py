"""asv benchmarks of stability-map: speed (JAX vs Keras vs a per-config JAX loop) and the
stability results, commit by commit."""

from src import xla_options

xla_options.configure()  # the main job's rounding, set before JAX starts its backend
