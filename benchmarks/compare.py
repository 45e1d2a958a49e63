"""The vectorized sweep against a per-config jitted JAX loop and against Keras ``model.fit``.

Ratios are measured within one benchmark process (``setup_cache``), so they hold on a noisy
shared machine even when absolute times drift. Keras benchmarks are skipped (not failed) where
TensorFlow is not installed.
"""

from __future__ import annotations

import math

from .workloads import (
    PerConfigLoop,
    keras_available,
    keras_rate,
    keras_runs,
    loop_rate,
    seed_workload,
    sweep_rate,
)

SWEEP_CONFIGS, SWEEP_EPOCHS = 100_000, 500  # the seed workload of the issue: ~1e5 configs
LOOP_CONFIGS, LOOP_EPOCHS = 64, 500
KERAS_CONFIGS, KERAS_EPOCHS = 3, 20


class Ratios:
    """Config-epochs per second of each implementation and the speedups, one process."""

    timeout = 900
    unit = "x"

    def setup_cache(self) -> dict[str, float]:
        sweep = sweep_rate("sgd", SWEEP_CONFIGS, SWEEP_EPOCHS)  # auto: the moments kernel
        loop = loop_rate("sgd", LOOP_CONFIGS, LOOP_EPOCHS)
        autodiff = sweep_rate("sgd", SWEEP_CONFIGS, SWEEP_EPOCHS, "autodiff")
        autodiff_loop = loop_rate("sgd", LOOP_CONFIGS, LOOP_EPOCHS, "autodiff")
        keras = keras_rate("sgd", KERAS_CONFIGS, KERAS_EPOCHS) if keras_available() else math.nan
        return {"sweep": sweep, "loop": loop, "keras": keras, "autodiff": autodiff,
                "autodiff_loop": autodiff_loop}  # fmt: skip

    def track_speedup_over_per_config_loop(self, rates: dict[str, float]) -> float:
        return rates["sweep"] / rates["loop"]

    def track_autodiff_speedup_over_its_per_config_loop(self, rates: dict[str, float]) -> float:
        return rates["autodiff"] / rates["autodiff_loop"]

    def track_autodiff_config_epochs_per_second(self, rates: dict[str, float]) -> float:
        return rates["autodiff"]

    track_autodiff_config_epochs_per_second.unit = "config-epochs/s"  # type: ignore[attr-defined]

    def track_speedup_over_keras(self, rates: dict[str, float]) -> float:
        if math.isnan(rates["keras"]):
            raise NotImplementedError("TensorFlow is not installed")
        return rates["sweep"] / rates["keras"]

    def track_sweep_config_epochs_per_second(self, rates: dict[str, float]) -> float:
        return rates["sweep"]

    track_sweep_config_epochs_per_second.unit = "config-epochs/s"  # type: ignore[attr-defined]

    def track_per_config_loop_config_epochs_per_second(self, rates: dict[str, float]) -> float:
        return rates["loop"]

    track_per_config_loop_config_epochs_per_second.unit = "config-epochs/s"  # type: ignore[attr-defined]

    def track_keras_config_epochs_per_second(self, rates: dict[str, float]) -> float:
        if math.isnan(rates["keras"]):
            raise NotImplementedError("TensorFlow is not installed")
        return rates["keras"]

    track_keras_config_epochs_per_second.unit = "config-epochs/s"  # type: ignore[attr-defined]


class TimeAlternatives:
    """The same SGD configurations run one at a time: jitted per-config JAX and Keras."""

    number = 1
    repeat = (1, 3, 30.0)
    timeout = 600

    def setup(self) -> None:
        self.loop = PerConfigLoop("sgd", LOOP_CONFIGS, LOOP_EPOCHS)
        self.loop.warm_up()
        self.sim, self.family, self.flat = seed_workload("sgd", LOOP_CONFIGS, LOOP_EPOCHS)
        self.sim.run(self.family, self.flat)

    def time_per_config_jax_loop(self) -> None:
        self.loop.run()

    def time_vectorized_same_configs(self) -> None:
        self.sim.run(self.family, self.flat)


class TimeKeras:
    """Keras ``model.fit`` on a few configurations for a few epochs (TensorFlow backend)."""

    number = 1
    repeat = (1, 3, 60.0)
    timeout = 600

    def setup(self) -> None:
        if not keras_available():
            raise NotImplementedError("TensorFlow is not installed")
        from src import keras_reference

        self.fit = keras_reference.fit
        self.runs = keras_runs("sgd", KERAS_CONFIGS, KERAS_EPOCHS)
        self.fit(*self.runs[0][:-1], 1)

    def time_keras_fit(self) -> None:
        for args in self.runs:
            self.fit(*args)
