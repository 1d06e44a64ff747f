"""Gradient buckets: which parameters share one flat all-reduce, and the flat buffer.

Gradients become ready roughly in reverse registration order (the last layer's first),
so parameters are packed in that order: the first bucket fills up early in backward and
its all-reduce overlaps the rest of backward. One all-reduce per bucket instead of per
parameter amortises the per-message latency; a cap keeps the first one from waiting for
the whole model. Parameters of different dtype or device never share a buffer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Bucket:
    """One flat buffer holding the gradients of ``indices`` (positions in the param list).

    ``offsets[k]`` is where parameter ``indices[k]`` starts inside ``buffer``. The
    per-iteration fields (``pending``, ``handle``, ``wire``) are reset before backward.
    """

    indices: list[int]
    offsets: list[int]
    numels: list[int]
    buffer: torch.Tensor  # (sum(numels),) dtype and device of its parameters
    pending: int = 0  # parameters whose gradient is not ready yet this iteration
    handle: Any = None  # dist.Work or Future of the running all-reduce
    wire: torch.Tensor | None = None  # the tensor actually all-reduced (compressed copy)
    launched: bool = False
    views: list[torch.Tensor] = field(default_factory=list)  # (numel_k,) slices of buffer

    def __post_init__(self) -> None:
        spans = zip(self.offsets, self.numels, strict=True)
        self.views = [self.buffer[o : o + n] for o, n in spans]

    def view(self, k: int) -> torch.Tensor:
        """The slice of the buffer that belongs to the k-th parameter of this bucket."""
        return self.views[k]


def assign_buckets(params: list[torch.Tensor], cap_bytes: float) -> list[list[int]]:
    """Group parameter indices into buckets of about ``cap_bytes`` each.

    Walks ``params`` from last to first; a bucket is closed as soon as it holds
    ``cap_bytes`` or more (so a parameter larger than the cap gets a bucket of its own,
    and a tiny cap gives one bucket per parameter). Buckets are returned in the order
    they are expected to become ready (bucket 0 holds the last parameters).
    """
    open_buckets: dict[tuple[torch.dtype, torch.device], tuple[list[int], int]] = {}
    closed: list[list[int]] = []
    for index in reversed(range(len(params))):
        p = params[index]
        key = (p.dtype, p.device)
        members, size = open_buckets.get(key, ([], 0))
        members.append(index)
        size += p.numel() * p.element_size()
        if size >= cap_bytes:
            closed.append(members)
            open_buckets.pop(key, None)
        else:
            open_buckets[key] = (members, size)
    closed.extend(members for members, _ in open_buckets.values())
    # order by the first (= latest registered) member so readiness order is kept
    closed.sort(key=lambda members: -members[0])
    return closed


def build_buckets(params: list[torch.Tensor], cap_bytes: float) -> list[Bucket]:
    """Allocate one flat buffer per bucket of :func:`assign_buckets`."""
    buckets = []
    for indices in assign_buckets(params, cap_bytes):
        numels = [params[i].numel() for i in indices]
        offsets = [sum(numels[:k]) for k in range(len(numels))]
        first = params[indices[0]]
        buffer = torch.zeros(sum(numels), dtype=first.dtype, device=first.device)
        buckets.append(Bucket(indices=indices, offsets=offsets, numels=numels, buffer=buffer))
    return buckets


def broadcast_tensors(tensors: list[torch.Tensor], src: int, group: Any) -> None:
    """Overwrite ``tensors`` on every rank with global rank ``src``'s values.

    Tensors are packed into one flat message per (dtype, device) so a model with
    hundreds of small tensors costs a handful of broadcasts, not hundreds.
    """
    import torch.distributed as dist

    by_kind: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for t in tensors:
        by_kind.setdefault((t.dtype, t.device), []).append(t)
    with torch.no_grad():
        for group_tensors in by_kind.values():
            flat = torch.cat([t.detach().reshape(-1) for t in group_tensors])
            dist.broadcast(flat, src=src, group=group)
            offset = 0
            for t in group_tensors:
                n = t.numel()
                t.copy_(flat[offset : offset + n].view(t.shape))
                offset += n
