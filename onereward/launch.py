"""Start a stage's training function in several local processes, as ``torchrun`` would.

A stage with ``processes: N`` calls :func:`data_parallel`. Started by a launcher already
(``accelerate launch``, ``torchrun``: ``WORLD_SIZE`` is set) or with N = 1 it just runs the
function; otherwise it starts N processes on this machine through torch's elastic launcher
(rendezvous on 127.0.0.1), each of which finds its rank the usual way. The children inherit the
environment, so CPU numerics pinned from params (``onereward.numerics``) hold in every one.
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import Any, Callable


def launched() -> bool:
    """Whether a launcher started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def data_parallel(fn: Callable[..., Any], processes: int, *args) -> Any:
    """Run ``fn(*args)`` in ``processes`` local processes (or in this one; see the module docstring).

    ``fn`` must be importable by name (a module-level function). Returns rank 0's result.
    """
    if processes < 1:
        raise ValueError(f"processes must be at least 1, got {processes}")
    if processes == 1 or launched():
        return run_then_settle(fn, *args)
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=processes, run_id=uuid.uuid4().hex,
        rdzv_backend="c10d", rdzv_endpoint=f"127.0.0.1:{_free_port()}", max_restarts=0,
        monitor_interval=0.5, start_method="spawn",
    )
    return elastic_launch(config, run_then_settle)(fn, *args)[0]


# Handles of the settling barriers, kept until the process ends (see settle_collectives).
_SETTLING_BARRIERS: list = []


def settle_collectives() -> None:
    """Wait for every process, leaving the process group safe to destroy; call it before teardown.

    Gloo's worker threads free finished collectives themselves; freeing one that still holds
    tensors Python created needs the GIL. The process group's destructor joins those threads
    while holding the GIL, so a teardown soon after a collective can deadlock (a rank stuck in
    ``~ProcessGroupGloo``, its worker in ``decref_pyobject``; pytorch/pytorch#190489). A barrier
    queued here waits for the workers with the GIL released, and its handle, held until the
    process ends, makes this thread, not a worker, free what the barrier refers to.
    A no-op without a process group of several processes.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        work = dist.barrier(async_op=True)
        work.wait()
        _SETTLING_BARRIERS.append(work)


def run_then_settle(fn: Callable[..., Any], *args) -> Any:
    """``fn(*args)``, then :func:`settle_collectives` before the process's group goes away."""
    result = fn(*args)
    settle_collectives()
    return result


def mean_over_processes(value, acc) -> float:
    """A scalar tensor averaged over the processes of ``acc`` (an ``accelerate.Accelerator``), as a
    float: what a data-parallel run logs as its loss."""
    return float(acc.reduce(value.detach(), reduction="mean")) if acc.num_processes > 1 else value.item()
