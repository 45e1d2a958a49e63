"""The main job: ``python -m src.stability_map`` maps where training is stable.

With no arguments it runs the seed problem's default map (six Keras optimizers x 81 learning
rates from 1e-5 to 1 x N = 1..64, 500 epochs) and writes ``reports/stability_map/``. From Python:

    from src.stability_map import Sweep, run
    ds, stats = run(Sweep(optimizer=("sgd", "adam"), n=(10, 20)))
"""

from src.cli import main
from src.sweep import Curve, RunStats, Sweep, run

__all__ = ["Curve", "RunStats", "Sweep", "main", "run"]

if __name__ == "__main__":
    raise SystemExit(main())
