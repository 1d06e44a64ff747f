"""A readable DistributedDataParallel: broadcast at start, bucketed overlapped all-reduce.

Life of one training iteration (``loss = ddp(x); loss.backward()``):

1. forward: buffers are broadcast from rank 0 (as torch does), the per-iteration state
   is reset, the wrapped module runs. With ``find_unused_parameters`` the autograd graph
   of the output is walked and the parameters it does not reach are noted. Every output
   tensor that requires grad gets a hook: backward through the output is how a rank
   learns that its backward has begun, even if no parameter receives a gradient.
2. backward: the first hook to fire (an output's or a parameter's) queues the
   end-of-backward callback and marks the noted unused parameters ready (torch marks
   them at its first hook too: a forward without backward launches nothing). Every
   parameter has a post-accumulate-grad hook. When the last gradient of bucket k is
   accumulated, bucket k (and any later bucket already complete) is copied into its
   flat buffer, pre-divided by the world size, and its all-reduce is started
   asynchronously, strictly in bucket order so every rank issues the same sequence.
3. end of backward: the callback marks whatever is still missing (a parameter the graph
   reached but the loss did not use), launches the remaining buckets, waits for every
   bucket and copies the averaged gradients back into ``param.grad``, so ``backward()``
   returns with synchronised gradients and the optimizer step needs nothing special.
   So every rank that runs backward joins every bucket's all-reduce, whatever subset of
   the parameters its loss used (none at all included).
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields, is_dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ddp_mini._checks import require_group
from ddp_mini.buckets import Bucket, broadcast_tensors, build_buckets
from ddp_mini.ring import ring_allreduce

ALLREDUCE_IMPLS = ("native", "ring")
COMPRESS_DTYPES = {None: None, "fp16": torch.float16, "bf16": torch.bfloat16}


def _check_args(
    module: Any,
    bucket_cap_mb: Any,
    allreduce: Any,
    compress: Any,
    flags: dict[str, Any],
) -> None:
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    if isinstance(bucket_cap_mb, bool) or not isinstance(bucket_cap_mb, int | float):
        raise TypeError(f"bucket_cap_mb must be a number, got {type(bucket_cap_mb).__name__}")
    if math.isnan(bucket_cap_mb) or bucket_cap_mb <= 0:
        raise ValueError(f"bucket_cap_mb must be > 0 (megabytes), got {bucket_cap_mb!r}")
    if allreduce not in ALLREDUCE_IMPLS:
        raise ValueError(f"allreduce must be one of {ALLREDUCE_IMPLS}, got {allreduce!r}")
    if compress not in COMPRESS_DTYPES:
        raise ValueError(f"compress must be one of {tuple(COMPRESS_DTYPES)}, got {compress!r}")
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be a bool, got {type(value).__name__}")


def _single_device(module: nn.Module) -> torch.device:
    """The one device holding every parameter and buffer (CPU for an empty module)."""
    placed: dict[torch.device, str] = {}
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        placed.setdefault(t.device, name)
    if len(placed) > 1:
        where = ", ".join(f"{name!r} on {device}" for device, name in placed.items())
        raise ValueError(f"module must have all parameters and buffers on one device, got {where}")
    return next(iter(placed), torch.device("cpu"))


def _tensors_in(obj: Any) -> Iterator[torch.Tensor]:
    """Every tensor inside a forward output (tensors, sequences, mappings, dataclasses)."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, Mapping):  # also transformers' ModelOutput
        for value in obj.values():
            yield from _tensors_in(value)
    elif isinstance(obj, list | tuple):
        for value in obj:
            yield from _tensors_in(value)
    elif is_dataclass(obj) and not isinstance(obj, type):
        for f in fields(obj):
            yield from _tensors_in(getattr(obj, f.name))


def _reachable_leaves(outputs: Any) -> set[int]:
    """ids of the leaf tensors the autograd graph of ``outputs`` accumulates into."""
    seen: set[Any] = set()
    stack = [t.grad_fn for t in _tensors_in(outputs) if t.grad_fn is not None]
    leaves: set[int] = set()
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)  # AccumulateGrad nodes only
        if variable is not None:
            leaves.add(id(variable))
        stack.extend(child for child, _ in node.next_functions if child is not None)
    return leaves


class _SyncState:
    """Per-iteration bookkeeping, kept off the Module (``nn.Module.__setattr__`` is slow)."""

    def __init__(self, n_params: int) -> None:
        self.backward_grad_sync = True  # False inside no_sync()
        self.forward_buffer_sync = True  # torch: decided by the previous forward
        self.armed = False  # this iteration's backward must synchronise
        self.ready = [False] * n_params  # gradient final (or marked unused) this iteration
        self.used = [False] * n_params  # got a gradient since the last synchronisation
        self.next_bucket = 0  # buckets launch strictly in order
        self.backward_started = False  # the end-of-backward callback is queued
        self.unused_at_forward: list[int] = []  # not reached by the output's graph


class DistributedDataParallel(nn.Module):
    """Data-parallel wrapper: every rank runs the whole model on its own slice of the batch.

    Args:
        module: the model; all parameters and buffers on one device.
        process_group: the ranks that replicate the model (default: the world).
        bucket_cap_mb: gradients are all-reduced in flat buckets of about this many MB
            (reverse registration order; tiny -> one bucket per parameter).
        broadcast_buffers: broadcast buffers (e.g. BatchNorm statistics) from rank 0 at
            the start of forward, exactly when torch's DDP does.
        allreduce: ``"native"`` (``dist.all_reduce``, asynchronous) or ``"ring"``
            (:func:`ddp_mini.ring_allreduce`, run on a communication thread).
        find_unused_parameters: allow parameters that get no gradient in an iteration
            (they contribute zeros; parameters no rank used keep ``.grad`` untouched).
            With ``False`` such a parameter raises a ``RuntimeError`` naming it at the
            end of backward instead of hanging.
        gradient_average: divide the summed gradients by the world size (torch DDP) or
            keep the sum.
        compress: ``None``, ``"fp16"`` or ``"bf16"``: all-reduce a half-precision copy
            (the same arithmetic as torch's ``fp16_compress_hook``/``bf16_compress_hook``).
        overlap: start each bucket's all-reduce during backward (default) or only after
            backward finished (for measuring what overlap buys).

    Gradients after ``backward()`` equal those of one process on the concatenated batch
    (mean loss) up to floating-point summation order; see the package README.
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        process_group: dist.ProcessGroup | None = None,
        bucket_cap_mb: float = 25.0,
        broadcast_buffers: bool = True,
        allreduce: str = "native",
        find_unused_parameters: bool = False,
        gradient_average: bool = True,
        compress: str | None = None,
        overlap: bool = True,
    ) -> None:
        super().__init__()
        flags = dict(
            broadcast_buffers=broadcast_buffers,
            find_unused_parameters=find_unused_parameters,
            gradient_average=gradient_average,
            overlap=overlap,
        )
        _check_args(module, bucket_cap_mb, allreduce, compress, flags)
        self.device = _single_device(module)
        self.process_group = require_group(process_group, "process_group")
        self.module = module
        self.bucket_cap_mb = float(bucket_cap_mb)
        self.broadcast_buffers = broadcast_buffers
        self.allreduce = allreduce
        self.find_unused_parameters = find_unused_parameters
        self.gradient_average = gradient_average
        self.compress = compress
        self.overlap = overlap
        self.world_size = dist.get_world_size(self.process_group)
        self._src = dist.get_global_rank(self.process_group, 0)

        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        self._names = [n for n, _ in named]
        self._params = [p for _, p in named]
        self._verify_same_model_everywhere()
        # ranks may start from different initialisations: rank 0's weights win
        broadcast_tensors(
            [p.data for p in module.parameters()] + list(module.buffers()),
            self._src,
            self.process_group,
        )

        self._buckets: list[Bucket] = build_buckets(self._params, bucket_cap_mb * 2**20)
        self._where: list[tuple[int, int]] = [(0, 0)] * len(self._params)
        for b, bucket in enumerate(self._buckets):
            for k, index in enumerate(bucket.indices):
                self._where[index] = (b, k)
        self._ring_thread: ThreadPoolExecutor | None = None

        self._sync = _SyncState(len(self._params))
        for index, p in enumerate(self._params):
            p.register_post_accumulate_grad_hook(self._make_hook(index))

    # ------------------------------------------------------------------ setup helpers
    def _verify_same_model_everywhere(self) -> None:
        """All ranks must wrap the same parameter layout, else buckets would mismatch."""
        if self.world_size == 1:
            return
        count, numel = len(self._params), sum(p.numel() for p in self._params)
        stats = torch.tensor([count, numel, -count, -numel], device=self.device)
        dist.all_reduce(stats, op=dist.ReduceOp.MAX, group=self.process_group)
        if stats[0] != -stats[2] or stats[1] != -stats[3]:
            raise ValueError(
                "module must have the same trainable parameters on every rank, got "
                f"{count} tensors / {numel} elements here and between "
                f"{-int(stats[2])}..{int(stats[0])} tensors / "
                f"{-int(stats[3])}..{int(stats[1])} elements across ranks"
            )

    def _make_hook(self, index: int):  # noqa: ANN202 - autograd hook
        # a weak reference: a discarded wrapper must not stay alive through its hooks
        owner = weakref.ref(self)

        def hook(param: torch.Tensor) -> None:
            ddp = owner()
            if ddp is not None:
                ddp._on_grad_ready(index)

        return hook

    def _hook_outputs(self, output: Any) -> None:
        """Hook every output tensor that requires grad: its gradient means "backward began".

        Without it a rank whose loss reaches no parameter (it used only a parameter-free
        output, or an output whose branch it skipped) never sees a hook, never joins the
        all-reduces the other ranks started, and they wait until the timeout. torch's
        DDP routes its outputs through ``_DDPSink`` for the same reason.
        """
        owner = weakref.ref(self)

        def hook(grad: torch.Tensor) -> None:
            ddp = owner()
            if ddp is not None and ddp._sync.armed:
                ddp._begin_backward()

        for t in _tensors_in(output):
            if t.requires_grad:
                t.register_hook(hook)

    # ------------------------------------------------------------------ forward
    def forward(self, *inputs: Any, **kwargs: Any) -> Any:
        if self.broadcast_buffers and self._sync.forward_buffer_sync and self.world_size > 1:
            buffers = list(self.module.buffers())
            if buffers:
                broadcast_tensors(buffers, self._src, self.process_group)
        self._sync.armed = torch.is_grad_enabled() and self._sync.backward_grad_sync
        if self._sync.armed:
            self._reset_iteration()
        output = self.module(*inputs, **kwargs)
        # like torch: the next forward syncs buffers only after a synchronising forward
        self._sync.forward_buffer_sync = self._sync.armed
        if self._sync.armed:
            if self.find_unused_parameters:
                reached = _reachable_leaves(output)
                self._sync.unused_at_forward = [
                    index for index, p in enumerate(self._params) if id(p) not in reached
                ]
            self._hook_outputs(output)
        return output

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        """Inside: backward only accumulates local gradients; the next backward of a
        forward outside the context all-reduces the accumulated sum."""
        previous = self._sync.backward_grad_sync
        self._sync.backward_grad_sync = False
        try:
            yield
        finally:
            self._sync.backward_grad_sync = previous

    # ------------------------------------------------------------------ backward
    def _reset_iteration(self) -> None:
        # an iteration that raised may have left all-reduces running into the buffers
        for bucket in self._buckets:
            if bucket.handle is not None:
                self._wait(bucket)
        self._sync.ready = [False] * len(self._params)
        self._sync.next_bucket = 0
        self._sync.backward_started = False
        self._sync.unused_at_forward = []
        for bucket in self._buckets:
            bucket.pending = len(bucket.indices)
            bucket.handle = bucket.wire = None
            bucket.launched = False

    def _on_grad_ready(self, index: int) -> None:
        """Post-accumulate-grad hook: ``param.grad`` of parameter ``index`` is final."""
        if not self._sync.armed:  # no_sync / no forward through the wrapper: local only
            self._sync.used[index] = True
            return
        if self._sync.ready[index]:
            raise RuntimeError(
                f"parameter {self._names[index]!r} received a gradient after its bucket "
                "was already reduced in this iteration (used twice across backward "
                "calls, or reached by a path find_unused_parameters could not see)"
            )
        self._begin_backward()
        self._mark_ready(index, used=True)

    def _begin_backward(self) -> None:
        """First hook of this iteration's backward: queue the end, mark the unused ready.

        Marking the unused parameters here rather than in forward means a forward that is
        never followed by backward (evaluation with grad enabled) starts no all-reduce
        that the other ranks would not match.
        """
        if self._sync.backward_started:
            return
        self._sync.backward_started = True
        torch.autograd.Variable._execution_engine.queue_callback(self._finish_backward)
        for index in self._sync.unused_at_forward:
            self._mark_ready(index, used=False)

    def _mark_ready(self, index: int, *, used: bool) -> None:
        self._sync.ready[index] = True
        self._sync.used[index] = self._sync.used[index] or used
        b, _ = self._where[index]
        self._buckets[b].pending -= 1
        if self.overlap and self._buckets[b].pending == 0:
            self._launch_ready_buckets()

    def _launch_ready_buckets(self) -> None:
        """Start complete buckets in index order: every rank issues the same sequence."""
        sync, buckets = self._sync, self._buckets
        while sync.next_bucket < len(buckets) and buckets[sync.next_bucket].pending == 0:
            self._launch(buckets[sync.next_bucket])
            sync.next_bucket += 1

    def _launch(self, bucket: Bucket) -> None:
        scale = 1.0 / self.world_size if self.gradient_average else 1.0
        low = COMPRESS_DTYPES[self.compress]
        with torch.no_grad():
            for k, index in enumerate(bucket.indices):
                grad, view = self._params[index].grad, bucket.view(k)
                if grad is None:
                    view.zero_()
                elif low is None and scale != 1.0:
                    torch.mul(grad.reshape(-1), scale, out=view)  # pre-divide, like torch
                else:
                    view.copy_(grad.reshape(-1))
            wire = bucket.buffer
            if low is not None:  # torch's compress hooks: cast, then divide, then reduce
                wire = bucket.buffer.to(low)
                if scale != 1.0:
                    wire.div_(self.world_size)
        bucket.wire = wire
        bucket.launched = True
        if self.allreduce == "native":
            # straight to the ProcessGroup: dist.all_reduce's Python checks cost ~20 us
            bucket.handle = self.process_group.allreduce([wire])
        else:
            if self._ring_thread is None:
                self._ring_thread = ThreadPoolExecutor(1, thread_name_prefix="ddp_mini_ring")
            bucket.handle = self._ring_thread.submit(
                ring_allreduce, wire, "sum", self.process_group
            )

    def _finish_backward(self) -> None:
        """Runs once at the end of backward: wait, then write gradients back."""
        self._sync.armed = False
        missing = [self._names[i] for i, ready in enumerate(self._sync.ready) if not ready]
        if missing and not self.find_unused_parameters:
            raise RuntimeError(
                f"{len(missing)} parameter(s) got no gradient in this iteration: "
                f"{missing[:10]}{' ...' if len(missing) > 10 else ''}. Pass "
                "find_unused_parameters=True to DistributedDataParallel, or make every "
                "parameter take part in the loss"
            )
        for index, ready in enumerate(self._sync.ready):
            if not ready:  # reached by the graph walk but the loss did not use it
                self._mark_ready(index, used=False)
        self._launch_ready_buckets()  # overlap=False launches everything here
        for bucket in self._buckets:
            self._wait(bucket)
        used_anywhere = self._used_anywhere()
        with torch.no_grad():
            for bucket in self._buckets:
                if bucket.wire is not bucket.buffer:
                    bucket.buffer.copy_(bucket.wire)  # decompress
                for k, index in enumerate(bucket.indices):
                    if not used_anywhere[index]:
                        continue  # like torch: nobody used it, leave .grad alone
                    p, view = self._params[index], bucket.view(k).view(self._params[index].shape)
                    if p.grad is None:
                        p.grad = view.clone()
                    else:
                        p.grad.copy_(view)
                bucket.wire = None
        self._sync.used = [False] * len(self._params)

    @staticmethod
    def _wait(bucket: Bucket) -> None:
        if isinstance(bucket.handle, dist.Work):
            bucket.handle.wait()
        else:  # a Future of the ring thread; re-raises the thread's exception
            bucket.handle.result()
        bucket.handle = None

    def _used_anywhere(self) -> list[bool]:
        if not self.find_unused_parameters:
            return [True] * len(self._params)
        used = torch.tensor(self._sync.used, dtype=torch.int32, device=self.device)
        if self.world_size > 1:
            dist.all_reduce(used, op=dist.ReduceOp.MAX, group=self.process_group)
        return used.bool().tolist()
