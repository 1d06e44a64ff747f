"""The same update through ``torch.compile``: one generated single-pass loop per tensor.

The eager paths read and write each array several times (a lerp, a mul, an addcmul, a
sqrt, ...). Written out-of-place and compiled, the whole step becomes one loop per
tensor that reads ``param, grad, m, v`` once and writes ``param, m, v`` once (7 arrays),
which is what makes a memory-bound optimizer fast. Inductor emits vectorised C++ with
OpenMP on the CPU and Triton on CUDA.

Hyperparameters travel in a float64 tensor (see ``increment_and_scalar_table``) so that
a new step count or a new learning rate does not trigger a recompilation; shapes are
dynamic, so the function is compiled once per dtype and flag combination.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from .multi_tensor import increment_and_scalar_table


def _adam_math_one(
    p: Tensor,  # theta_{t-1}, updated in place
    g: Tensor,  # gradient, read only
    m: Tensor,  # m_{t-1}, updated in place
    v: Tensor,  # v_{t-1}, updated in place
    v_max: Tensor | None,  # AMSGrad state or None
    s: Tensor,  # (8,) float64, columns as in multi_tensor.SCALAR_COLUMNS
    has_weight_decay: bool,
    decoupled: bool,
    maximize: bool,
) -> None:
    s = s.to(device=p.device, dtype=p.dtype)  # (8,) rounded to p's dtype like torch's scalars
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


def _adam_math_chunk(
    params: list[Tensor],  # CHUNK tensors, any shapes
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],  # empty unless amsgrad
    scalars: Tensor,  # (CHUNK, 8) float64
    has_weight_decay: bool,
    decoupled: bool,
    amsgrad: bool,
    maximize: bool,
) -> None:
    for i in range(len(params)):
        v_max = max_exp_avg_sqs[i] if amsgrad else None
        _adam_math_one(
            params[i], grads[i], exp_avgs[i], exp_avg_sqs[i], v_max, scalars[i],
            has_weight_decay, decoupled, maximize,
        )  # fmt: skip


# Tensors per compiled call. Each call of a compiled function costs ~30 us of Python
# (guards, wrappers) however small the work, so one call per tensor made a 100-tensor
# step ~3 ms slower than torch's fused kernel. One graph for a whole group is the other
# extreme: 100 tensors took over 3 minutes to compile on a 2-core CPU. Chunks of 8
# compile in ~10 s and cut the overhead 8x; the remainder of a group goes one by one.
CHUNK = 8
# A generous limit: each (dtype, flags, chunk/one) combination is one cache entry.
_RECOMPILE_LIMIT = 64


@functools.cache
def _compiled_chunk():
    # Built on first use: importing the package must not touch the compiler. Shapes are
    # dynamic, so this one graph serves every chunk of every group of a given dtype.
    return torch.compile(_adam_math_chunk, dynamic=True)


@functools.cache
def _compiled_one():
    return torch.compile(_adam_math_one, dynamic=True)


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
    """:func:`adam_update` for a whole group: compiled single-pass loops, 8 tensors a call.

    The first call per dtype and flag combination compiles (10-30 s on a small CPU, per
    graph: one for chunks of 8, one for single tensors); later calls, for any shapes,
    reuse them. Equal to the reference to float
    rounding (the compiler may fuse multiply-adds): the same equations in the same order.
    """
    if not params:
        return
    scalars = increment_and_scalar_table(
        steps, lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay
    )
    scalars = scalars.to(params[0].device)
    flags = (weight_decay != 0, decoupled)
    # detach(): same storage, but no requires_grad leaf for dynamo to guard and for AOT
    # autograd to wrap (that alone was ~0.2 ms per tensor per step).
    params = [p.detach() for p in params]
    n_chunked = len(params) - len(params) % CHUNK
    with torch._dynamo.config.patch(recompile_limit=_RECOMPILE_LIMIT):
        chunk = _compiled_chunk()
        for a in range(0, n_chunked, CHUNK):
            b = a + CHUNK
            v_maxes = max_exp_avg_sqs[a:b] if amsgrad else []
            chunk(
                params[a:b], grads[a:b], exp_avgs[a:b], exp_avg_sqs[a:b], v_maxes,
                scalars[a:b], *flags, amsgrad, maximize,
            )  # fmt: skip
        one = _compiled_one()
        for i in range(n_chunked, len(params)):
            v_max = max_exp_avg_sqs[i] if amsgrad else None
            one(
                params[i], grads[i], exp_avgs[i], exp_avg_sqs[i], v_max, scalars[i],
                *flags, maximize,
            )  # fmt: skip
