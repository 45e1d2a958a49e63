"""XLA's CPU options (:mod:`src.xla_options`): the instruction-set cap, and multi-output
fusion, which the main job turns on for the moments kernel and which must not change a bit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import xarray as xr

from src import xla_options

ROOT = Path(__file__).resolve().parents[1]
# Fixed batches (the moments kernel), several families, ragged batches, two epoch counts.
MOMENTS_MAP = ["--optimizers", "sgd,adam,rmsprop,lion", "--lr", "1e-3:1:9", "--n", "1:12",
               "--batch-size", "4,32", "--epochs", "30,41", "--seeds", "0,1", "--validate", "0",
               "--quiet"]  # fmt: skip


def test_cpu_flags_cap_the_instruction_set_on_x86_only() -> None:
    own = "--xla_backend_extra_options=mine"  # the user's backend options: ours left out
    assert xla_options.cpu_flags(own, "x86_64") == f"{own} --xla_cpu_max_isa=AVX"
    assert xla_options.cpu_flags(f"--a {own}", "AMD64") == f"--a {own} --xla_cpu_max_isa=AVX"
    capped = f"--xla_cpu_max_isa=SSE4_2 {own}"
    assert xla_options.cpu_flags(capped, "x86_64") == capped
    assert xla_options.cpu_flags(f"--a {own}", "aarch64") == f"--a {own}"


def test_cpu_flags_give_a_device_per_core_unless_the_user_set_a_count() -> None:
    own = "--xla_backend_extra_options=mine"
    count = "--xla_force_host_platform_device_count"
    assert xla_options.cpu_flags(own, "aarch64", cores=4) == f"{own} {count}=4"
    assert xla_options.cpu_flags(own, "aarch64", cores=1) == own
    assert xla_options.cpu_flags(f"{count}=1 {own}", "aarch64", cores=4) == f"{count}=1 {own}"
    assert xla_options.usable_cores({"JAX_NUM_CPU_DEVICES": "3"}) == 1
    assert xla_options.usable_cores({}) >= 1


def test_small_loops_join_the_backend_options_only_where_the_user_gave_none() -> None:
    flags = xla_options.cpu_flags("--a", "aarch64")
    assert flags == f"--a --xla_backend_extra_options={xla_options.SMALL_LOOPS}"
    assert xla_options.backend_options(flags) == [xla_options.SMALL_LOOPS]
    assert xla_options.backend_options("--a") is None
    both = xla_options.with_backend_options(flags, ["x", "y"])
    assert both == "--a --xla_backend_extra_options=x,y"
    assert xla_options.backend_options(both) == ["x", "y"]


def test_multi_output_fusion_is_refused_once_the_backend_runs() -> None:
    import jax.numpy as jnp

    jnp.zeros(1).block_until_ready()  # this process's backend has started
    flags = os.environ.get("XLA_FLAGS", "")
    assert xla_options.use_multi_output_fusion() is (xla_options.MULTI_OUTPUT_FUSION in flags)
    assert os.environ.get("XLA_FLAGS", "") == flags


def _main_job(out: Path, xla_flags: str) -> dict:
    env = {**os.environ, "XLA_FLAGS": xla_flags}
    done = subprocess.run(
        [sys.executable, "-m", "src.stability_map", *MOMENTS_MAP, "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads((out / "summary.json").read_text())


@pytest.mark.slow  # two main jobs in subprocesses, one on 4 devices
def test_multi_output_fusion_and_small_loops_change_no_bit(tmp_path: Path) -> None:
    """The main job with multi-output fusion and small loops compiled whole on 4 devices, and
    without either (backend options given, so the job leaves them alone) on 1: the same map."""
    fused, plain = tmp_path / "fused", tmp_path / "plain"
    on = _main_job(fused, "--xla_force_host_platform_device_count=4")
    off = _main_job(plain, "--xla_force_host_platform_device_count=1 "
                           "--xla_backend_extra_options=xla_cpu_unused_option")  # fmt: skip
    assert xla_options.backend_options(on["xla_flags"]) == [
        xla_options.SMALL_LOOPS, xla_options.MULTI_OUTPUT_FUSION
    ]  # fmt: skip
    assert xla_options.backend_options(off["xla_flags"]) == ["xla_cpu_unused_option"]
    assert len(on["devices"]) == 4 and len(off["devices"]) == 1
    with (
        xr.open_dataset(fused / "stability_map.nc") as a,
        xr.open_dataset(plain / "stability_map.nc") as b,
    ):
        xr.testing.assert_identical(a.load(), b.load())


def test_compilation_cache_folder_follows_the_environment(tmp_path: Path) -> None:
    folder = xla_options.compilation_cache_dir
    assert folder({"STABILITY_MAP_CACHE": "off"}) is None
    assert folder({"STABILITY_MAP_CACHE": str(tmp_path)}) == tmp_path
    assert folder({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "stability_map" / "jax"
    assert folder({}) == Path.home() / ".cache" / "stability_map" / "jax"


@pytest.mark.slow  # two main jobs in subprocesses
def test_a_second_run_loads_its_programs_and_computes_the_same_map(tmp_path: Path) -> None:
    """With the compilation cache, a second run of the same job compiles (almost) nothing
    and writes the same map bit for bit."""
    env = {**os.environ, "STABILITY_MAP_CACHE": str(tmp_path / "cache")}
    summaries = []
    for run in ("first", "second"):
        proc = subprocess.run(
            [sys.executable, "-m", "src.stability_map", *MOMENTS_MAP, "--out", str(tmp_path / run)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        summaries.append(json.loads((tmp_path / run / "summary.json").read_text()))
    assert any((tmp_path / "cache").iterdir())
    first, second = (s["compile_seconds"] for s in summaries)
    assert second < first / 2, (first, second)
    with (
        xr.open_dataset(tmp_path / "first" / "stability_map.nc") as a,
        xr.open_dataset(tmp_path / "second" / "stability_map.nc") as b,
    ):
        xr.testing.assert_identical(a.load(), b.load())


@pytest.mark.slow  # every family compiled twice
@pytest.mark.parametrize("kernel", ["moments", "autodiff"])
def test_llvm_optimisations_off_change_no_bit(kernel: str) -> None:
    """Small programs are compiled with LLVM's optimisations off (``simulator._compile``):
    a map of every optimizer, fixed and shuffled batches, computed by programs compiled
    with them and without, is the same bit for bit."""
    import collections

    from src import optimizers as opt
    from src import outcome, runner, simulator
    from src.spec import Sweep

    maps = []
    for limit in (0, 1 << 30):  # every program optimised; none
        for shuffle in (False, True):
            sweep = Sweep(
                optimizer=tuple(opt.OPTIMIZERS), lr=(1e-3, 0.03, 0.3), n=(7, 20),
                batch_size=(4, 32), epochs=(25,), shuffle=shuffle, kernel=kernel,
            )  # fmt: skip
            with pytest.MonkeyPatch.context() as m:
                m.setattr(simulator, "SMALL_PROGRAM_STEPS", limit)
                m.setattr(simulator, "_programs", collections.OrderedDict())  # none shared
                maps.append(runner.run(sweep)[0])
    for optimised, unoptimised in zip(maps[:2], maps[2:], strict=True):
        assert int((optimised.status == outcome.STATUSES.index("overflow")).sum()) > 0
        xr.testing.assert_identical(optimised, unoptimised)
