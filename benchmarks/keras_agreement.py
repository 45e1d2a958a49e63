"""Agreement with real Keras, tracked commit by commit: a change that moves the engine away
from Keras's ``model.fit`` shows as a drop in verdict agreement or a jump in loss error.

One small map of every optimizer (lr 1e-4..1, N in {10, 20, 40}, batch sizes 8 and 32, 40
epochs) is checked with the main job's own validation (:func:`src.validation.validate`): the
stratified picks (seed, both sides of every optimizer's boundary, random), re-run in Keras
worker processes. Skipped (asv's NotImplementedError) where TensorFlow is missing.
"""

from __future__ import annotations

import math

from src import keras_reference, validation
from src import optimizers as opt
from src.runner import run
from src.spec import Sweep, log_grid

from . import slow

CHECKED = 2 * len(opt.OPTIMIZERS) + 2
"""The seed's two picks and one config on each side of every optimizer's boundary."""


@slow
class KerasAgreement:
    """Verdict agreement (fraction) and the largest relative loss difference with Keras, over
    the float32-determined picks, and how many picks were sensitive to rounding."""

    timeout = 1800

    def setup_cache(self) -> dict[str, float]:
        if not keras_reference.available():
            raise NotImplementedError("TensorFlow is not installed")
        sweep = Sweep(
            optimizer=tuple(opt.OPTIMIZERS), lr=log_grid(1e-4, 1.0, 17), n=(10, 20, 40),
            batch_size=(8, 32), epochs=(40,),
        )  # fmt: skip
        ds, _ = run(sweep)
        record = validation.validate(ds, CHECKED)
        err, share = record["max_rel_err"], record["verdict_agreement"]
        return {
            "agreement": math.nan if share is None else float(share),
            "max_rel_err": math.nan if err is None else float(err),
            "sensitive": float(record["sensitive"]),
        }

    def track_verdict_agreement(self, cache: dict[str, float]) -> float:
        return cache["agreement"]

    track_verdict_agreement.unit = "fraction"  # type: ignore[attr-defined]

    def track_max_rel_loss_error(self, cache: dict[str, float]) -> float:
        return cache["max_rel_err"]

    track_max_rel_loss_error.unit = "relative"  # type: ignore[attr-defined]

    def track_sensitive_configs(self, cache: dict[str, float]) -> float:
        return cache["sensitive"]

    track_sensitive_configs.unit = "configurations"  # type: ignore[attr-defined]
