"""The bandwidth-optimal ring all-reduce over point-to-point ``isend``/``irecv``.

The flat tensor is cut into N chunks (N = world size, chunk lengths may differ by one,
and are zero when the tensor has fewer elements than ranks). Ranks form a ring
``r -> r + 1``. Two phases of N - 1 steps each:

* reduce-scatter: at step s rank r sends chunk ``r - s`` to its right neighbour and adds
  the chunk ``r - s - 1`` it receives from its left neighbour into its own copy. After
  N - 1 steps rank r holds the complete sum of chunk ``r + 1``.
* all-gather: at step s rank r forwards chunk ``r + 1 - s`` (complete) and overwrites its
  chunk ``r - s`` with the complete one it receives.

Each rank sends (and receives) 2 (N - 1) / N of the tensor, which is the lower bound for
an all-reduce; the time does not grow with N at fixed tensor size (Patarasuk & Yuan 2009).
"""

from __future__ import annotations

import threading
from typing import Any

import torch
import torch.distributed as dist

from ddp_mini._checks import require_group

RING_OPS = ("sum", "avg")
# Message size of the pipelined ring. Measured with 2 gloo ranks on the 2-core CPU
# (ring / gloo, alternated): 2 MB gave 0.70-1.11x at 4 MB tensors (8 runs, mean 0.92x)
# and 1.16-1.31x at 64 MB; 1 MB gave 0.61-0.81x (mean 0.73x) and 1.10-1.35x; 256-512 KB
# were slower still. Fewer messages mean fewer of gloo's per-message handshakes, and
# 2 MB still pipelines.
SEGMENT_BYTES = 2 << 20
_SCRATCH = threading.local()
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _exchange(
    send: torch.Tensor, dst: int, recv: torch.Tensor, src: int, group: dist.ProcessGroup
) -> None:
    """Send ``send`` to group rank ``dst`` while receiving ``recv`` from group rank ``src``.

    Posted together through ``batch_isend_irecv`` so that NCCL, whose send and recv to
    one peer share a stream, groups them instead of deadlocking. Both sides know every
    chunk length, so an empty chunk is skipped on both ends.
    """
    ops = []
    if recv.numel() > 0:
        ops.append(dist.P2POp(dist.irecv, recv, dist.get_global_rank(group, src), group))
    if send.numel() > 0:
        ops.append(dist.P2POp(dist.isend, send, dist.get_global_rank(group, dst), group))
    if ops:
        for work in dist.batch_isend_irecv(ops):
            work.wait()


def ring_allreduce(
    tensor: torch.Tensor, op: str = "sum", group: dist.ProcessGroup | None = None
) -> torch.Tensor:
    """All-reduce ``tensor`` in place with a ring of ``isend``/``irecv``; returns it.

    Args:
        tensor: any shape and number of elements (0, 1, fewer than the ranks, primes),
            dtype float16, bfloat16, float32 or float64, on a device the backend can
            send from (CPU for gloo, CUDA for NCCL). Non-contiguous tensors are reduced
            through a contiguous copy and written back.
        op: ``"sum"`` or ``"avg"`` (the sum divided by the group size, in the tensor's
            dtype).
        group: the process group (default: the world). Every rank of the group must call.

    CPU tensors (gloo) take the pipelined schedule (2 MB messages, both phases
    overlapped); CUDA tensors (NCCL) one grouped send/recv per step.

    Matches ``dist.all_reduce(tensor, op=ReduceOp.SUM)`` (``AVG`` for ``"avg"``) up to the
    order of the floating-point additions: chunk ``c`` is summed in ring order starting
    at rank ``c``, so for two ranks the result is bitwise identical.
    """
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"tensor must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"tensor must have a float dtype (float16, bfloat16, float32, float64), "
            f"got {tensor.dtype}"
        )
    if op not in RING_OPS:
        raise ValueError(f"op must be one of {RING_OPS}, got {op!r}")
    group = require_group(group, "group")
    world = dist.get_world_size(group)
    if world > 1:
        contiguous = tensor.is_contiguous()
        flat = tensor.view(-1) if contiguous else tensor.reshape(-1).clone()
        # "avg": each rank divides only the chunk it completes, before passing it on, so
        # 1/N of the tensor is divided instead of all of it (the same values: sum / N)
        divisor = world if op == "avg" else None
        if flat.device.type == "cpu":
            _ring_sum_pipelined(flat, group, divisor)
        else:  # NCCL: one grouped send/recv per step (see _exchange)
            _ring_sum_stepwise(flat, group, divisor)
        if not contiguous:
            tensor.copy_(flat.view(tensor.shape))
    return tensor


def _ring_sum_stepwise(
    flat: torch.Tensor, group: dist.ProcessGroup, divisor: int | None = None
) -> None:
    """The readable ring: sum a contiguous 1-D tensor over ``group`` in place.

    ``divisor``: divide each completed chunk by it (``op="avg"``) before the all-gather.

    One whole-chunk exchange per step; :func:`_ring_sum_pipelined` is the same schedule
    cut into segments (what ``ring_allreduce`` runs on CPU tensors). This one serves
    device tensors, where the backend (NCCL) needs each step's send and recv grouped.
    """
    world, rank, right, left = _ring_neighbours(group)
    chunks = torch.tensor_split(flat, world)  # N views, lengths differ by at most one
    scratch = _scratch(chunks[0], 1)[0]  # chunk 0 is the longest

    # reduce-scatter: after N-1 steps chunk (rank + 1) % N holds the full sum here
    for step in range(world - 1):
        send = chunks[(rank - step) % world]
        mine = chunks[(rank - step - 1) % world]
        incoming = scratch[: mine.numel()]
        _exchange(send, right, incoming, left, group)
        mine.add_(incoming)
        if divisor is not None and step == world - 2:  # this chunk's sum is complete
            mine.div_(divisor)

    # all-gather: pass the finished chunks around the ring, overwriting stale ones
    for step in range(world - 1):
        send = chunks[(rank + 1 - step) % world]
        recv = chunks[(rank - step) % world]
        _exchange(send, right, recv, left, group)


def _ring_sum_pipelined(
    flat: torch.Tensor, group: dist.ProcessGroup, divisor: int | None = None
) -> None:
    """The same 2(N-1) ring steps, cut into segments of ``SEGMENT_BYTES`` and overlapped.

    Both phases are one loop over steps t = 0 .. 2N-3: at step t this rank receives
    chunk ``c_t = (rank - t - 1) % N`` (reduce-scatter: into scratch, then added; all-
    gather: straight into place) and forwards it at step t + 1, segment by segment as
    each segment lands. So the transfer of segment j+1 overlaps the addition of segment
    j, and the next step starts before the current one is finished. One message per
    chunk is slow on TCP transports; ~2 MB messages keep the link streaming.

    Receives are posted before the sends they answer, two steps ahead: gloo's TCP
    transport moves a message only once the receiver has posted the matching receive
    (until then the sender waits for the handshake), so with every rank's receives
    already posted the first sends go straight out. That alone is most of the cost of a
    small (1 MB) all-reduce, whose two steps are one message each.

    Overwriting a chunk whose earlier send may still be in flight is safe: the data
    that lands in it was computed downstream of that very send.
    """
    world, rank, right, left = _ring_neighbours(group)
    seg = max(1, SEGMENT_BYTES // flat.element_size())  # elements per message
    chunks = torch.tensor_split(flat, world)
    steps = 2 * (world - 1)
    scratch = _scratch(chunks[0], min(2, world - 1))  # double buffer for the partial sums

    def segments(t: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n = t.numel()  # a chunk that fits one message is sent whole (no split views)
        return (t,) if 0 < n <= seg else torch.split(t, seg) if n else ()

    def post_receives(t: int) -> list[tuple[Any, torch.Tensor]]:
        target = chunks[(rank - t - 1) % world]
        landing = scratch[t % 2][: target.numel()] if t < world - 1 else target
        return [(group.recv([s], left, t), s) for s in segments(landing)]

    # ProcessGroup.send/recv directly: dist.isend/irecv add ~70 us of checks per message
    receives = post_receives(0)  # steps t and t + 1 are always posted while t runs
    upcoming = post_receives(1) if steps > 1 else []
    sends = [group.send([s], right, 0) for s in segments(chunks[rank])]
    for t in range(steps):
        target = chunks[(rank - t - 1) % world]
        complete = t == world - 2  # the last reduce-scatter step finishes this chunk
        for (work, landing), part in zip(receives, segments(target), strict=True):
            work.wait()
            if t < world - 1:
                part.add_(landing)  # reduce-scatter: accumulate the partial sum
                if complete and divisor is not None:
                    part.div_(divisor)
            if t + 1 < steps:  # forward it right away: it is what step t+1 sends
                sends.append(group.send([part], right, t + 1))
        # step t's scratch buffer is consumed: step t + 2 may land in it
        receives, upcoming = upcoming, post_receives(t + 2) if t + 2 < steps else []
    for work in sends:
        work.wait()


def _scratch(like: torch.Tensor, count: int) -> list[torch.Tensor]:
    """``count`` receive buffers shaped like ``like``, reused across calls of this thread.

    A fresh multi-MB buffer per call costs page faults on every call (the allocator hands
    large blocks back to the OS); keeping the last one per thread avoids that.
    """
    key = (like.numel(), like.dtype, like.device, count)
    cached = getattr(_SCRATCH, "entry", None)
    if cached is None or cached[0] != key:
        cached = (key, [torch.empty_like(like) for _ in range(count)])
        _SCRATCH.entry = cached
    return cached[1]


def _ring_neighbours(group: dist.ProcessGroup) -> tuple[int, int, int, int]:
    """(world size, rank, right neighbour, left neighbour), all as ranks *in the group*."""
    world = dist.get_world_size(group)
    rank = dist.get_rank(group)
    return world, rank, (rank + 1) % world, (rank - 1) % world
