#!/usr/bin/env bash
# GPU figures for docs/performance.md, on a fresh Linux machine with an NVIDIA GPU and this
# repository checked out (about 4 minutes, most of it the install):
#
#   bash benchmarks/device_check.sh
#
# 1. installs the project with JAX's CUDA 12 wheels (pip install -e ".[cuda]");
# 2. prints the GPU (nvidia-smi) and the devices JAX sees;
# 3. (a) the seed workload's throughput: SGD, N <= 32, full batch, float32, 2^20 configs x
#        500 epochs (benchmarks.workloads.seed_workload), best of 3 after a warm-up;
#    (b) the default main job twice (--validate 0: compiled programs cold, then cached in
#        $OUT/jax_cache), each timed with /usr/bin/time, and its summary.json's phases;
#    (c) CPU against GPU: a small map (sgd, adam; lr 1e-4..1, 9 points; N = 1..32; 100 epochs)
#        once with JAX_PLATFORMS=cpu and once on the GPU, and the fraction of configurations
#        whose verdict (the status array of stability_map.nc) is the same.
# Every figure goes to $OUT/device_check.txt (OUT defaults to /tmp/device_check); each
# command's full output to $OUT/<step>.log.
#
# Settings (environment):
#   OUT=DIR                    where everything is written (default /tmp/device_check)
#   DEVICE_CHECK_CPU=1         no install of the cuda extra, no nvidia-smi, everything on the
#                              CPU (JAX_PLATFORMS=cpu): tries the script on a machine with no GPU
#   DEVICE_CHECK_INSTALL=0     on the GPU, skip the install (".[cuda]" already installed); with
#                              no network, pip's own PIP_NO_INDEX=1 PIP_FIND_LINKS=WHEELHOUSE
#                              install from local wheels instead
#   DEVICE_CHECK_CONFIGS=K     seed workload configs (default 1048576 = 2^20)
#   DEVICE_CHECK_EPOCHS=E      seed workload epochs (default 500)
#   DEVICE_CHECK_MAIN_ARGS=..  flags for the main job instead of the default map (e.g. a
#                              smaller one: "--optimizers sgd,adam --n 1:32")
#   PYTHON=python              the interpreter (its pip installs the project)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-/tmp/device_check}
CPU_ONLY=${DEVICE_CHECK_CPU:-0}
SEED_CONFIGS=${DEVICE_CHECK_CONFIGS:-1048576}
SEED_EPOCHS=${DEVICE_CHECK_EPOCHS:-500}
MAIN_ARGS=${DEVICE_CHECK_MAIN_ARGS:-}
PYTHON=${PYTHON:-python}
if [[ $CPU_ONLY == 1 ]]; then
    DEVICE=cpu      # the "device" runs are CPU runs: the script's plumbing, not a GPU figure
else
    DEVICE=cuda     # fail loudly if JAX does not find the GPU, rather than measure the CPU
fi

mkdir -p "$OUT"
REPORT=$OUT/device_check.txt
: >"$REPORT"
rm -rf "$OUT/jax_cache"
export STABILITY_MAP_CACHE=$OUT/jax_cache  # the main job's first run compiles, the second loads
export MPLBACKEND=Agg

say() { printf '%s\n' "$*" | tee -a "$REPORT"; }

# run LABEL CMD...: CMD's output to $OUT/LABEL.log (its tail shown if it fails); sets SECONDS_TAKEN
run() {
    local label=$1
    shift
    local log=$OUT/$label.log
    local t0
    t0=$(date +%s.%N)
    if [[ -x /usr/bin/time ]]; then
        if ! /usr/bin/time -f %e -o "$OUT/$label.time" "$@" >"$log" 2>&1; then
            say "FAILED: $label ($*); last lines of $log:"
            tail -n 20 "$log" | tee -a "$REPORT"
            exit 1
        fi
        SECONDS_TAKEN=$(tail -n 1 "$OUT/$label.time")
    else
        if ! "$@" >"$log" 2>&1; then
            say "FAILED: $label ($*); last lines of $log:"
            tail -n 20 "$log" | tee -a "$REPORT"
            exit 1
        fi
        SECONDS_TAKEN=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
    fi
}

say "device check $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
say "mode: $([[ $CPU_ONLY == 1 ]] && echo 'CPU only (DEVICE_CHECK_CPU=1: no GPU figure)' || echo GPU)"

# 1. Install.
if [[ $CPU_ONLY == 1 ]]; then
    say "install: skipped (DEVICE_CHECK_CPU=1)"
elif [[ ${DEVICE_CHECK_INSTALL:-1} == 0 ]]; then
    say "install: skipped (DEVICE_CHECK_INSTALL=0)"
else
    run install "$PYTHON" -m pip install --quiet --disable-pip-version-check -e ".[cuda]"
    say "install: pip install -e \".[cuda]\" in ${SECONDS_TAKEN} s"
fi

# 2. The machine.
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total --format=csv 2>&1 | tee -a "$REPORT"
elif [[ $CPU_ONLY == 1 ]]; then
    say "nvidia-smi: not found"
else
    say "nvidia-smi: not found, and DEVICE_CHECK_CPU is not 1: is this a GPU machine?"
    exit 1
fi
say "CPU: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs)"
JAX_PLATFORMS=$DEVICE "$PYTHON" -c "import jax; print(jax.__version__, jax.devices())" 2>&1 \
    | tee -a "$REPORT"

# 3a. The seed workload's throughput (benchmarks.performance has no quick mode: it measures every
# family, the per-config loop and Keras too).
say ""
say "(a) seed workload"
JAX_PLATFORMS=$DEVICE "$PYTHON" - "$SEED_CONFIGS" "$SEED_EPOCHS" <<'EOF' 2>&1 | tee -a "$REPORT"
import math
import sys
import time

from src import xla_options

xla_options.configure()  # the main job's flags, before JAX's backend starts
xla_options.use_multi_output_fusion()  # as the main job runs the moments kernel
import jax

from benchmarks.workloads import seed_workload

configs, epochs = int(sys.argv[1]), int(sys.argv[2])
sim, family, flat = seed_workload("sgd", configs, epochs)
t0 = time.perf_counter()
jax.block_until_ready(sim.run(family, flat))  # compile and warm up
first = time.perf_counter() - t0
best, best_compute = math.inf, math.inf
for _ in range(3):
    sim.compute_seconds = 0.0
    t0 = time.perf_counter()
    jax.block_until_ready(sim.run(family, flat))
    best = min(best, time.perf_counter() - t0)
    best_compute = min(best_compute, sim.compute_seconds)
work = configs * epochs
print(f"sgd, {configs:,} configs x {epochs} epochs (N <= 32, full batch, float32, kernel "
      f"{sim.kernel}) on {', '.join(str(d) for d in jax.devices())}:")
print(f"  first call (compile + run) {first:.2f} s; best of 3: {best:.3f} s end to end = "
      f"{work / best:.3g} config-epochs/s, engine calls only {work / best_compute:.3g}")
EOF

# 3b. The default main job, twice.
say ""
say "(b) main job: python -m src.stability_map ${MAIN_ARGS:-(default map)} --validate 0"
for i in 1 2; do
    # shellcheck disable=SC2086  # MAIN_ARGS is a list of flags
    run "main_job_$i" env JAX_PLATFORMS=$DEVICE "$PYTHON" -m src.stability_map $MAIN_ARGS \
        --validate 0 --quiet --force --out "$OUT/main_job"
    say "run $i: ${SECONDS_TAKEN} s (/usr/bin/time, process)"
    grep -m1 '^Stability map of' "$OUT/main_job_$i.log" | tee -a "$REPORT"
    "$PYTHON" - "$OUT/main_job/summary.json" <<'EOF' 2>&1 | tee -a "$REPORT"
import json
import sys

s = json.load(open(sys.argv[1]))
keys = ("wall_seconds", "compile_seconds", "compute_seconds", "simulate_seconds",
        "curves_seconds", "boundary_seconds", "report_seconds")
print("  summary.json: " + ", ".join(f"{k} {s.get(k)}" for k in keys))
print(f"  {s['n_configs']:,} configs, {s['config_epochs_per_second']:.3g} config-epochs/s, "
      f"devices {s['devices']}")
EOF
done

# 3c. The same small map on the CPU and on the device: do the verdicts agree?
say ""
say "(c) verdicts, CPU against $DEVICE: sgd,adam; lr 1e-4:1:9; N = 1:32; 100 epochs"
SMALL=(--optimizers sgd,adam --lr 1e-4:1:9 --n 1:32 --epochs 100 --validate 0 --quiet --force)
run verdict_cpu env JAX_PLATFORMS=cpu "$PYTHON" -m src.stability_map "${SMALL[@]}" \
    --out "$OUT/verdict_cpu"
say "cpu run: ${SECONDS_TAKEN} s"
run verdict_device env JAX_PLATFORMS=$DEVICE "$PYTHON" -m src.stability_map "${SMALL[@]}" \
    --out "$OUT/verdict_device"
say "$DEVICE run: ${SECONDS_TAKEN} s"
"$PYTHON" - "$OUT/verdict_cpu/stability_map.nc" "$OUT/verdict_device/stability_map.nc" \
    <<'EOF' 2>&1 | tee -a "$REPORT"
import sys

import numpy as np
import xarray as xr

cpu, dev = (xr.open_dataset(p) for p in sys.argv[1:3])
a, b = cpu.status.values, dev.status.values
assert a.shape == b.shape, (a.shape, b.shape)
names = cpu.status.attrs["flag_meanings"].split()
same = a == b
print(f"verdict agreement: {same.mean():.6f} ({int(same.sum()):,} of {a.size:,} configurations)")
for i in np.argwhere(~same)[:10]:
    where = {d: cpu[d].values[k].item() for d, k in zip(cpu.status.dims, i, strict=True)}
    cell = ", ".join(f"{d} {where[d]}" for d in ("optimizer", "lr", "n"))
    print(f"  differs: {cell}: cpu {names[a[tuple(i)]]}, device {names[b[tuple(i)]]}")
with np.errstate(all="ignore"):
    fa, fb = cpu.final_loss.values, dev.final_loss.values
    both = np.isfinite(fa) & np.isfinite(fb) & (fa > 0)
    if both.any():
        rel = np.abs(fb[both] / fa[both] - 1)
        print(f"final loss where both are finite: median |device/cpu - 1| = "
              f"{np.median(rel):.2e}, max {rel.max():.2e}")
EOF
say ""
say "written: $REPORT"
