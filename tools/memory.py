"""Peak memory of the main job against grid size: ``python -m tools.memory``.

Issue 6's acceptance: 4 million configurations complete with a peak resident memory no more
than twice that of a 250k-configuration run. Both are the whole main job as a user runs it
(``python -m src.stability_map``: simulation, boundary search, netCDF, figures and page), SGD
only, N = 1..32, full batch, a few epochs, no Keras check; the grids differ in their number of
learning rates. Each run is a child process of its own, and its peak resident set size is read
from ``os.wait4`` (that child's own ``ru_maxrss``). Prints both, their ratio and the wall
seconds; exits with status 1 if the ratio exceeds :data:`LIMIT`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
N_MAX = 32
RUNS = {"250k": 7_813, "4M": 125_000}
"""Learning rates per run: 7,813 x 32 = 250,016 and 125,000 x 32 = 4,000,000 configurations."""
LIMIT = 2.0


def command(lr_count: int, epochs: int, out: str) -> list[str]:
    return [
        sys.executable, "-m", "src.stability_map", "--optimizers", "sgd",
        "--lr", f"1e-5:1:{lr_count}", "--n", f"1:{N_MAX}", "--epochs", str(epochs),
        "--validate", "0", "--quiet", "--force", "--out", out,
    ]  # fmt: skip


def peak_rss(argv: list[str]) -> tuple[int, float]:
    """Run ``argv`` as a child process; its peak resident set size (bytes) and wall seconds."""
    t0 = time.perf_counter()
    child = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - t0
    err = child.stderr.read().decode() if child.stderr else ""
    child.returncode = os.waitstatus_to_exitcode(status)  # already reaped: keep Popen quiet
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({child.returncode}):\n{err}")
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return usage.ru_maxrss * scale, seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5, help="epochs per config (default 5)")
    args = parser.parse_args()
    peaks = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, lr_count in RUNS.items():
            argv = command(lr_count, args.epochs, str(Path(tmp) / name))
            peaks[name], seconds = peak_rss(argv)
            print(
                f"{name:>5}: {lr_count * N_MAX:>9,} configs, peak RSS "
                f"{peaks[name] / 2**20:7.1f} MiB, {seconds:5.1f} s wall  "
                f"({' '.join(argv[1:-1])} DIR)"
            )
    ratio = peaks["4M"] / peaks["250k"]
    verdict = "ok" if ratio <= LIMIT else "FAIL"
    print(f"ratio 4M / 250k: {ratio:.2f} (limit {LIMIT:g}): {verdict}")
    return 0 if ratio <= LIMIT else 1


if __name__ == "__main__":
    sys.exit(main())
