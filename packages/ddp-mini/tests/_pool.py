"""A persistent pool of gloo worker processes shared by the multi-process tests.

Starting a process that imports torch costs seconds on a busy 2-core machine, so the
suite starts WORLD processes once and sends them tasks: ``pool.run(fn, *args)`` calls
``fn(rank, *args)`` on every rank (fn must be a module-level function of a module the
workers can import, e.g. ``_scenarios``) and returns the list of results. Subgroups of
the first k ranks (and of ranks 1..3) are made once at start-up; ``group(k)`` returns
this rank's handle (None when it is not a member). Every ``run`` has a timeout, and a
failed or timed-out run throws the pool away so the next test gets fresh processes.
"""

from __future__ import annotations

import datetime
import multiprocessing as mp
import pickle
import queue
import traceback
from typing import Any

import torch.distributed as dist

WORLD = 4
COLLECTIVE_TIMEOUT_S = 30.0
_HOST = "127.0.0.1"
_GROUPS: dict[Any, Any] = {}


def group(key: Any) -> Any:
    """This worker's handle of subgroup ``key`` (int k: ranks 0..k-1; "tail3": 1, 2, 3)."""
    return _GROUPS[key]


def _worker(rank: int, port: int, tasks: Any, results: Any) -> None:
    timeout = datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S)
    store = dist.TCPStore(_HOST, port, WORLD, is_master=False, timeout=timeout)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=WORLD, timeout=timeout)
    layouts = {k: list(range(k)) for k in range(1, WORLD + 1)}
    layouts["tail3"] = [1, 2, 3]
    for key, ranks in layouts.items():
        handle = dist.new_group(ranks=ranks)  # collective: every rank makes every group
        _GROUPS[key] = handle if rank in ranks else None
    results.put((rank, True, pickle.dumps("ready")))
    while True:
        task = tasks.get()
        if task is None:
            break
        fn, args = task
        try:
            results.put((rank, True, pickle.dumps(fn(rank, *args))))
        except BaseException:
            results.put((rank, False, traceback.format_exc()))
    dist.destroy_process_group()


class DistPool:
    def __init__(self, startup_timeout: float = 120.0) -> None:
        self._startup_timeout = startup_timeout
        self._start()

    def _start(self) -> None:
        self._store = dist.TCPStore(_HOST, 0, None, is_master=True, wait_for_workers=False)
        ctx = mp.get_context("spawn")
        self._tasks = [ctx.Queue() for _ in range(WORLD)]
        self._results = ctx.Queue()
        self._procs = [
            ctx.Process(target=_worker, args=(r, self._store.port, self._tasks[r], self._results))
            for r in range(WORLD)
        ]
        for proc in self._procs:
            proc.start()
        self.broken = False
        self._gather(self._startup_timeout, "start-up")

    def _gather(self, timeout: float, what: str) -> list[Any]:
        out: dict[int, Any] = {}
        errors: dict[int, str] = {}
        while len(out) + len(errors) < WORLD:
            try:
                rank, ok, value = self._results.get(timeout=timeout)
            except queue.Empty:
                self.close()
                raise TimeoutError(
                    f"{what}: ranks {sorted(set(range(WORLD)) - set(out) - set(errors))} "
                    f"gave no answer within {timeout} s"
                ) from None
            if ok:
                out[rank] = pickle.loads(value)
            else:
                errors[rank] = value
        if errors:
            self.close()
            details = "\n".join(f"--- rank {r} ---\n{tb}" for r, tb in sorted(errors.items()))
            raise RuntimeError(f"{what} failed on ranks {sorted(errors)}:\n{details}")
        return [out[r] for r in range(WORLD)]

    def run(self, fn: Any, *args: Any, timeout: float = 90.0) -> list[Any]:
        """``[fn(0, *args), ..., fn(WORLD - 1, *args)]``, computed in the workers."""
        if self.broken:  # a previous task failed or hung: start fresh processes
            self._start()
        for q in self._tasks:
            q.put((fn, args))
        return self._gather(timeout, getattr(fn, "__name__", "task"))

    def close(self) -> None:
        self.broken = True
        for q in self._tasks:
            try:
                q.put(None)
            except (ValueError, OSError):
                pass
        for proc in self._procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join()
