"""``spawn``: start a local process group for examples and tests (torchrun for real jobs).

The parent process hosts the rendezvous ``TCPStore`` on a port the OS picks (port 0), so
two concurrent jobs on one machine never collide on a fixed port. Every child gets the
environment torchrun would give it (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, ...),
joins the process group, runs ``fn(rank, *args)`` and reports its return value or its
traceback back to the parent.
"""

from __future__ import annotations

import datetime
import multiprocessing as mp
import os
import pickle
import queue
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch.distributed as dist

_HOST = "127.0.0.1"


class SpawnError(RuntimeError):
    """One or more spawned ranks failed; ``failures`` maps rank -> traceback or reason."""

    def __init__(self, failures: dict[int, str]) -> None:
        self.failures = dict(sorted(failures.items()))
        lines = [f"{len(self.failures)} rank(s) failed:"]
        for rank, reason in self.failures.items():
            lines.append(f"--- rank {rank} ---\n{reason.rstrip()}")
        super().__init__("\n".join(lines))


def _child(
    fn: Callable[..., Any],
    rank: int,
    world_size: int,
    backend: str,
    port: int,
    timeout_s: float,
    args: tuple,
    results: Any,
) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR=_HOST,
        MASTER_PORT=str(port),
    )
    try:
        timeout = datetime.timedelta(seconds=timeout_s)
        store = dist.TCPStore(_HOST, port, world_size, is_master=False, timeout=timeout)
        dist.init_process_group(
            backend, store=store, rank=rank, world_size=world_size, timeout=timeout
        )
        try:
            value = fn(rank, *args)
            dist.barrier()  # tear down together: a peer vanishing mid-teardown aborts gloo
        finally:
            dist.destroy_process_group()
        # plain pickle: torch's multiprocessing pickler would share tensor storage
        # through file descriptors that die with this process
        results.put((rank, True, pickle.dumps(value)))
    except BaseException:  # report everything, including SystemExit from fn
        results.put((rank, False, traceback.format_exc()))
        results.close()
        results.join_thread()  # flush the report before the process exits
        raise SystemExit(1) from None


def spawn(
    fn: Callable[..., Any],
    world_size: int,
    backend: str = "gloo",
    *args: Any,
    timeout: float = 300.0,
    join_timeout: float | None = None,
) -> list[Any]:
    """Run ``fn(rank, *args)`` in ``world_size`` fresh processes joined in a process group.

    Args:
        fn: a picklable (module-level) function; it runs after
            ``init_process_group(backend)`` and its return value (picklable) is returned.
        world_size: number of processes (>= 1), ranks ``0 .. world_size - 1`` on 127.0.0.1.
        backend: ``"gloo"`` (CPU) or ``"nccl"`` (one GPU per rank; ``fn`` picks the device,
            e.g. ``torch.cuda.set_device(rank)``).
        *args: passed to ``fn`` after the rank.
        timeout: seconds a collective may wait before failing (the process group timeout);
            after the first rank fails the others get this long to fail or finish.
        join_timeout: wall-clock limit for the whole job in seconds (None: no limit);
            when it expires every child is killed and ``SpawnError`` is raised.

    Returns:
        ``[fn(0, *args), fn(1, *args), ...]``.

    Raises:
        SpawnError: when any rank raises, exits without reporting (killed, ``os._exit``)
            or the job exceeds ``join_timeout``; ``.failures`` maps rank -> reason.

    For real jobs use ``torchrun`` (it sets the same environment variables); ``spawn`` is
    the local convenience, like ``torch.multiprocessing.spawn`` with the group set up.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be an int >= 1, got {world_size!r}")
    if not isinstance(backend, str) or not backend:
        raise ValueError(f"backend must be a backend name such as 'gloo', got {backend!r}")
    if timeout <= 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
    if join_timeout is not None and join_timeout <= 0:
        raise ValueError(f"join_timeout must be > 0 seconds or None, got {join_timeout!r}")

    # The parent owns the store on an OS-chosen port: no fixed port, no port race.
    store = dist.TCPStore(_HOST, 0, None, is_master=True, wait_for_workers=False)
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=_child,
            args=(fn, rank, world_size, backend, store.port, timeout, args, results),
            daemon=False,
        )
        for rank in range(world_size)
    ]
    for proc in procs:
        proc.start()
    try:
        return _collect(procs, results, world_size, timeout, join_timeout)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
            proc.join()
        results.close()
        del store


def _collect(
    procs: list[Any], results: Any, world_size: int, timeout: float, join_timeout: float | None
) -> list[Any]:
    """Gather every rank's report; on the first failure give the rest ``timeout`` seconds."""
    values: dict[int, Any] = {}
    failures: dict[int, str] = {}
    deadline = None if join_timeout is None else time.monotonic() + join_timeout
    grace_deadline = None
    while len(values) + len(failures) < world_size:
        try:
            rank, ok, payload = results.get(timeout=0.05)
            (values if ok else failures)[rank] = pickle.loads(payload) if ok else payload
        except queue.Empty:
            pass
        now = time.monotonic()
        for rank, proc in enumerate(procs):
            reported = rank in values or rank in failures
            if not reported and not proc.is_alive() and proc.exitcode is not None:
                try:  # a report may still be in the pipe behind the exit
                    while True:
                        r, ok, payload = results.get(timeout=0.2)
                        (values if ok else failures)[r] = pickle.loads(payload) if ok else payload
                except queue.Empty:
                    pass
                if rank not in values and rank not in failures:
                    failures[rank] = f"process exited with code {proc.exitcode} without reporting"
        if failures and grace_deadline is None:
            grace_deadline = now + timeout
        expired = [d for d in (deadline, grace_deadline) if d is not None and now > d]
        if expired:
            for rank in range(world_size):
                if rank not in values and rank not in failures:
                    failures[rank] = "killed: still running when the job timed out"
            break
    if failures:
        raise SpawnError(failures)
    return [values[rank] for rank in range(world_size)]
