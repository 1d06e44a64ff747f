"""The same update through ``torch.compile``: one generated single-pass loop per tensor.

The eager paths read and write each array several times (a lerp, a mul, an addcmul, a
sqrt, ...). Written out-of-place and compiled, the whole step becomes one loop per
tensor that reads ``param, grad, m, v`` once and writes ``param, m, v`` once (7 arrays),
which is what makes a memory-bound optimizer fast. Inductor emits vectorised C++ with
OpenMP on the CPU and Triton on CUDA.

What decides the speed on a small CPU is not the loop but the Python around it: each
call of a compiled function costs ~30-60 us (guards, wrappers), and a per-step scalar
table built from eager ops cost another ~250 us. So:

- one compiled call updates a *chunk* of ``CHUNK`` tensors (horizontal fusion: one C++
  function, one OpenMP region, one loop per tensor); chunks hold tensors of one rank,
  sizes are symbolic without duck shaping, so ONE compiled graph per dtype, rank and
  flag set serves every chunk of every model; the last chunk is padded with dummies.
  Tensors with a dimension of size 0 or 1 (which dynamo would specialise) take the
  reference path;
- on the CPU the step counters and hyperparameters go *into* the graph (0-d step
  tensors incremented in place, a float64 ``(5,)`` tensor of ``lr, beta1, beta2, eps,
  weight_decay``), so a new step or a new lr neither recompiles nor costs eager ops;
- OpenMP parallel regions are always generated (``cpp.dynamic_threads``): otherwise
  Inductor decides serial vs parallel from the sizes seen at the first compilation, and
  a graph first compiled for small tensors would run large ones on one core.

Guards are never skipped: every call is checked by dynamo as usual.
"""

from __future__ import annotations

import functools

import torch
import torch.fx.experimental._config as fx_config
from torch import Tensor

from .multi_tensor import increment_and_scalar_table, reference_update_group, select_tensors

# Tensors per compiled call. One call per tensor cost ~3 ms per 100-tensor step on a
# 2-core CPU; one graph for a whole group of 100 tensors took over 3 minutes to compile.
# A chunk of 16 compiles in ~20-40 s there and leaves ~7 calls per 100 tensors.
CHUNK = 16
# Each (device, dtype, flags) combination is one cache entry of the chunk function.
_RECOMPILE_LIMIT = 64
# Dummy tensors pad the last chunk; size 2 in every dim because 0 and 1 are specialised.
_PAD_SIZE = 2


def _adam_math_one(
    p: Tensor,  # theta_{t-1}, any shape, updated in place
    g: Tensor,  # gradient, read only
    m: Tensor,  # m_{t-1}, updated in place
    v: Tensor,  # v_{t-1}, updated in place
    v_max: Tensor | None,  # AMSGrad state or None
    scalars: tuple[Tensor, ...],  # 8 float64 0-d, as multi_tensor.SCALAR_COLUMNS
    has_weight_decay: bool,
    decoupled: bool,
    maximize: bool,
) -> None:
    # Each rounded to p's dtype, like torch's Python-float scalars.
    s = [c.to(device=p.device, dtype=p.dtype) for c in scalars]
    if maximize:
        g = -g
    p_new = p
    if has_weight_decay:
        if decoupled:
            p_new = p * s[0]  # theta * (1 - lr * lambda)
        else:
            g = g + s[1] * p  # g + lambda * theta
    m_new = torch.lerp(m, g, s[2])  # m_t
    v_new = v * s[3] + s[4] * (g * g)  # v_t
    if v_max is not None:
        v_for_denom = torch.maximum(v_max, v_new)  # AMSGrad: the denominator never shrinks
        v_max.copy_(v_for_denom)
    else:
        v_for_denom = v_new
    denom = v_for_denom.sqrt() / s[6] + s[7]  # sqrt(v_hat) + eps
    p.copy_(p_new + s[5] * (m_new / denom))  # theta - step_size * m_hat / denom
    m.copy_(m_new)
    v.copy_(v_new)


def _scalar_rows(steps: list[Tensor], hyper: Tensor) -> Tensor:
    """Increment the 0-d step counters in place; return the ``(len(steps), 8)`` table.

    ``hyper`` is float64 ``(lr, beta1, beta2, eps, weight_decay)``. The same float64
    arithmetic as :func:`multi_tensor.increment_and_scalar_table`, inside the graph,
    written over the whole chunk at once. The stacked table is a real buffer, computed
    once per call; left as separate expressions, Inductor inlines ``pow`` into the
    element loops.
    """
    lr, beta1, beta2, eps, weight_decay = hyper.unbind(0)
    t = torch.stack(steps) + 1  # (n,) t <- t + 1, in the steps' own dtype
    for i, step in enumerate(steps):
        step.copy_(t[i])  # the state tensors themselves advance
    t = t.to(torch.float64)  # (n,)
    ones = torch.ones_like(t)  # (n,)
    columns = [
        ones * (1 - lr * weight_decay), ones * weight_decay, ones * (1 - beta1),
        ones * beta2, ones * (1 - beta2), -lr / (1 - beta1**t), (1 - beta2**t).sqrt(),
        ones * eps,
    ]  # fmt: skip
    return torch.stack(columns, dim=1)  # (n, 8)


def _adam_math_chunk(
    params: list[Tensor],  # CHUNK tensors of one rank, every dim >= 2
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],  # empty unless amsgrad
    steps: list[Tensor],  # CHUNK 0-d CPU step counters (incremented here) or empty
    scalars: Tensor,  # (5,) float64 hyperparameters if steps, else the (CHUNK, 8) table
    has_weight_decay: bool,
    decoupled: bool,
    amsgrad: bool,
    maximize: bool,
) -> None:
    table = _scalar_rows(steps, scalars) if steps else scalars  # (CHUNK, 8)
    rows = [row.unbind(0) for row in table]
    for i in range(len(params)):
        v_max = max_exp_avg_sqs[i] if amsgrad else None
        _adam_math_one(
            params[i], grads[i], exp_avgs[i], exp_avg_sqs[i], v_max, rows[i],
            has_weight_decay, decoupled, maximize,
        )  # fmt: skip


@functools.cache
def _compiled_chunk():
    # Built on first use: importing the package must not touch the compiler.
    return torch.compile(_adam_math_chunk, dynamic=True)


@functools.cache
def _padding(device: torch.device, dtype: torch.dtype, step_dtype: torch.dtype, ndim: int):
    """``CHUNK`` distinct dummy slots (5 arrays each, and a step): never aliased, so
    dynamo sees the same kind of inputs in a padded chunk as in a full one."""
    arrays = [
        [torch.zeros((_PAD_SIZE,) * ndim, device=device, dtype=dtype) for _ in range(CHUNK)]
        for _ in range(5)
    ]
    steps = [torch.zeros((), dtype=step_dtype) for _ in range(CHUNK)]
    return arrays, steps


def _fits_chunk(param: Tensor, step: Tensor) -> bool:
    # Sizes 0 and 1 would specialise a slot (a new graph per position); a step on the
    # device (a state_dict from torch's capturable path) cannot join a CPU graph.
    return (
        param.dim() > 0
        and min(param.shape) >= _PAD_SIZE
        and step.device.type == "cpu"
        and step.dim() == 0
    )


def compiled_update_group(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled: bool,
    amsgrad: bool,
    maximize: bool,
) -> None:
    """:func:`adam_update` for a whole group: compiled single-pass loops, ``CHUNK`` a call.

    The first call per dtype and flag combination compiles (20-40 s on a small CPU);
    later calls, for any shapes, lr or step, reuse it. Equal to the reference to float
    rounding (the compiler may fuse multiply-adds): the same equations in the same order.
    Tensors with a dimension of size < 2 take the reference path. Complex tensors must
    already be given as their real views, all tensors contiguous.
    """
    hyper = {"lr": lr, "beta1": beta1, "beta2": beta2, "eps": eps, "weight_decay": weight_decay}
    flags = dict(decoupled=decoupled, amsgrad=amsgrad, maximize=maximize)
    # Buckets of tensors that can share a chunk: same device, dtype and step dtype.
    buckets: dict[tuple, list[int]] = {}
    small: list[int] = []
    for i, p in enumerate(params):
        if not _fits_chunk(p, steps[i]):
            small.append(i)
            continue
        buckets.setdefault((p.device, p.dtype, steps[i].dtype, p.dim()), []).append(i)
    if small:
        selected = select_tensors(
            small, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps
        )
        reference_update_group(*selected, **hyper, **flags)
    if not buckets:
        return
    chunk = _compiled_chunk()
    with (
        torch._dynamo.config.patch(recompile_limit=_RECOMPILE_LIMIT),
        torch._inductor.config.patch({"cpp.dynamic_threads": True}),
        fx_config.patch(use_duck_shape=False),  # one symbol per size: no equality guards
    ):
        for (device, dtype, step_dtype, ndim), index in buckets.items():
            on_cpu = device.type == "cpu"
            if on_cpu:  # steps and hyperparameters are incremented / used in the graph
                scalars = torch.tensor([lr, beta1, beta2, eps, weight_decay], dtype=torch.float64)
            else:  # the table is computed on the host and copied over once
                table = increment_and_scalar_table([steps[i] for i in index], **hyper)
                table = table.to(device)
            pad_arrays, pad_steps = _padding(device, dtype, step_dtype, ndim)
            # detach(): same storage, but no requires_grad leaf for dynamo to guard and for
            # AOT autograd to wrap. No other views: dynamo guards a view's base, so a
            # flattened 2-D slot next to a plain 1-D one would compile a new graph.
            flat = [
                [params[i].detach(), grads[i], exp_avgs[i], exp_avg_sqs[i]]
                + ([max_exp_avg_sqs[i]] if amsgrad else [])
                for i in index
            ]
            for a in range(0, len(index), CHUNK):
                rows = flat[a : a + CHUNK]
                pad = CHUNK - len(rows)
                columns = [
                    [row[k] for row in rows] + pad_arrays[k][:pad] for k in range(len(rows[0]))
                ]
                if on_cpu:
                    chunk_steps = [steps[i] for i in index[a : a + CHUNK]] + pad_steps[:pad]
                    chunk_scalars = scalars
                else:
                    chunk_steps = []
                    chunk_scalars = table[a : a + CHUNK]
                    if pad:
                        chunk_scalars = torch.cat([chunk_scalars, chunk_scalars[:1].expand(pad, 8)])
                    chunk_scalars = chunk_scalars.clone()  # never a view: one kind of input
                chunk(
                    columns[0], columns[1], columns[2], columns[3],
                    columns[4] if amsgrad else [], chunk_steps, chunk_scalars,
                    weight_decay != 0, decoupled, amsgrad, maximize,
                )  # fmt: skip
