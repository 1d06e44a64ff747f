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

import torch
import torch.distributed as dist

from ddp_mini._checks import require_group

RING_OPS = ("sum", "avg")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _exchange(
    send: torch.Tensor, dst: int, recv: torch.Tensor, src: int, group: dist.ProcessGroup
) -> None:
    """Send ``send`` to global rank ``dst`` while receiving ``recv`` from ``src``.

    Both sides know every chunk length, so an empty chunk is skipped on both ends
    (nothing is sent and nothing is expected).
    """
    works = []
    if recv.numel() > 0:
        works.append(dist.irecv(recv, src=src, group=group))
    if send.numel() > 0:
        works.append(dist.isend(send, dst=dst, group=group))
    for work in works:
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
        _ring_sum_flat(flat, group)
        if not contiguous:
            tensor.copy_(flat.view(tensor.shape))
    if op == "avg":
        tensor.div_(world)
    return tensor


def _ring_sum_flat(flat: torch.Tensor, group: dist.ProcessGroup) -> None:
    """Sum a contiguous 1-D tensor over ``group`` in place (the two ring phases)."""
    world = dist.get_world_size(group)
    rank = dist.get_rank(group)
    right = dist.get_global_rank(group, (rank + 1) % world)
    left = dist.get_global_rank(group, (rank - 1) % world)
    chunks = torch.tensor_split(flat, world)  # N views, lengths differ by at most one
    scratch = torch.empty_like(chunks[0])  # chunk 0 is the longest

    # reduce-scatter: after N-1 steps chunk (rank + 1) % N holds the full sum here
    for step in range(world - 1):
        send = chunks[(rank - step) % world]
        mine = chunks[(rank - step - 1) % world]
        incoming = scratch[: mine.numel()]
        _exchange(send, right, incoming, left, group)
        mine.add_(incoming)

    # all-gather: pass the finished chunks around the ring, overwriting stale ones
    for step in range(world - 1):
        send = chunks[(rank + 1 - step) % world]
        recv = chunks[(rank - step) % world]
        _exchange(send, right, recv, left, group)
