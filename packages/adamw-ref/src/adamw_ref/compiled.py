"""The same update through ``torch.compile``: one generated kernel per tensor, no temporaries.

The eager paths read and write each array several times (a lerp, a mul, an addcmul, a
sqrt, ...). Written out-of-place and compiled, the whole step becomes one loop per
tensor that reads ``param, grad, m, v`` once and writes ``param, m, v`` once (7 arrays),
which is what makes a memory-bound optimizer fast. Inductor emits vectorised C++ with
OpenMP on the CPU and Triton on CUDA.

Hyperparameters travel in a float64 tensor (see ``increment_and_scalar_table``) so that
a new step count or a new learning rate does not trigger a recompilation; the graph is
specialised only on the number, shapes and dtypes of the tensors and on the flags.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from .multi_tensor import increment_and_scalar_table


def _adam_math(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    scalars: Tensor,  # (n, 8) float64, columns as in multi_tensor.SCALAR_COLUMNS
    has_weight_decay: bool,
    decoupled: bool,
    amsgrad: bool,
    maximize: bool,
) -> None:
    for i in range(len(params)):
        p, m, v = params[i], exp_avgs[i], exp_avg_sqs[i]
        s = scalars[i].to(device=p.device, dtype=p.dtype)  # (8,) rounded like torch's scalars
        g = -grads[i] if maximize else grads[i]
        p_new = p
        if has_weight_decay:
            if decoupled:
                p_new = p * s[0]  # theta * (1 - lr * lambda)
            else:
                g = g + s[1] * p  # g + lambda * theta
        m_new = torch.lerp(m, g, s[2])  # m_t
        v_new = v * s[3] + s[4] * (g * g)  # v_t
        if amsgrad:
            v_max = torch.maximum(max_exp_avg_sqs[i], v_new)
            max_exp_avg_sqs[i].copy_(v_max)
            v_new_for_denom = v_max
        else:
            v_new_for_denom = v_new
        denom = v_new_for_denom.sqrt() / s[6] + s[7]  # sqrt(v_hat) + eps
        p_new = p_new + s[5] * (m_new / denom)  # theta - step_size * m / denom
        p.copy_(p_new)
        m.copy_(m_new)
        v.copy_(v_new)


@functools.cache
def _compiled_math():
    # Built on first use: importing the package must not touch the compiler.
    return torch.compile(_adam_math, fullgraph=True, dynamic=False)


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
    """:func:`adam_update` for a whole group as one ``torch.compile``-d function.

    The first call for a given set of shapes compiles (seconds to a minute on a small
    CPU); later calls reuse the kernels. Equal to the reference to float rounding (the
    compiler may fuse multiply-adds), exactly the same equations and order.
    """
    if not params:
        return
    scalars = increment_and_scalar_table(
        steps, lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay
    )
    scalars = scalars.to(params[0].device)
    _compiled_math()(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        max_exp_avg_sqs,
        scalars,
        weight_decay != 0,
        decoupled,
        amsgrad,
        maximize,
    )
