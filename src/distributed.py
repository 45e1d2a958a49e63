"""Running one map over several processes or hosts with ``jax.distributed``.

Every process runs the same command with its own ``--process-id``; they meet at the
coordinator (process 0's ``HOST:PORT``), after which ``jax.devices()`` lists the devices of all
of them and the :class:`~src.simulator.Simulator` splits every chunk over that global mesh.
Each process passes the same host data, computes its shard, and receives every result
(``process_allgather``), so all of them follow the same control flow (boundary bisection
included); process 0 alone writes the report and runs the Keras check. On CPU the processes
talk through Gloo.
"""

from __future__ import annotations

import jax

from src.errors import InputError


def parse_address(text: str) -> str:
    """``HOST:PORT`` of the coordinator, checked."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"--coordinator takes HOST:PORT, got {text!r}")
    return text


def initialize(coordinator: str, num_processes: int, process_id: int) -> None:
    """Join the group of ``num_processes`` processes as ``process_id`` (before any JAX work)."""
    if num_processes < 1:
        raise InputError(f"--num-processes must be >= 1, got {num_processes}")
    if not 0 <= process_id < num_processes:
        raise InputError(f"--process-id must be in [0, {num_processes}), got {process_id}")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(parse_address(coordinator), num_processes, process_id)


def is_writer() -> bool:
    """Whether this process writes outputs (process 0, or the only one)."""
    return jax.process_index() == 0
