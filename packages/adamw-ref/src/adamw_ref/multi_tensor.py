"""Group-level updates: every impl takes the same lists and hyperparameters.

An *impl* is a function ``update_group(params, grads, exp_avgs, exp_avg_sqs,
max_exp_avg_sqs, steps, *, lr, beta1, beta2, eps, weight_decay, decoupled, amsgrad,
maximize)`` that advances every tensor of one parameter group by one step, in place.
``max_exp_avg_sqs`` is empty unless ``amsgrad``; ``steps`` are the 0-d CPU step counters
of ``state["step"]`` (incremented here). All impls compute :func:`adam_update`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .functional import adam_update


def reference_update_group(
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
    """One :func:`adam_update` per tensor: the definition, tensor by tensor."""
    for i, param in enumerate(params):
        adam_update(
            param,
            grads[i],
            exp_avgs[i],
            exp_avg_sqs[i],
            steps[i],
            lr=lr,
            beta1=beta1,
            beta2=beta2,
            eps=eps,
            weight_decay=weight_decay,
            decoupled=decoupled,
            amsgrad=amsgrad,
            max_exp_avg_sq=max_exp_avg_sqs[i] if amsgrad else None,
            maximize=maximize,
        )


def select_tensors(
    index: list[int],
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
) -> tuple[list[Tensor], ...]:
    """The six lists of an impl's arguments, restricted to the tensors at ``index``
    (``max_exp_avg_sqs`` stays empty when it is, i.e. without amsgrad)."""
    lists = (params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps)
    return tuple([t[i] for i in index] if t else [] for t in lists)


def _foreach_scale_(tensors: list[Tensor], factor: float) -> None:
    """``t.mul_(factor)`` for every tensor, rounded exactly as the per-tensor op.

    On the CPU ``_foreach_mul_(float16 tensors, python float)`` rounds differently from
    ``mul_`` (1 ulp here and there); passing the factor as a 0-d float64 tensor takes
    the same kernel as ``mul_``. Elsewhere the plain scalar overload is the fast one.
    """
    if all(t.device.type == "cpu" for t in tensors):
        torch._foreach_mul_(tensors, torch.tensor(factor, dtype=torch.float64))
    else:
        torch._foreach_mul_(tensors, factor)


def foreach_update_group(
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
    """The same equations as ``torch._foreach_*`` ops: one call per equation per group.

    Each foreach op applies the per-tensor op of :func:`adam_update` to every tensor of
    the list (on CUDA in a few multi-tensor kernels), so results equal the reference
    bit for bit. Complex tensors must already be given as their real views.
    """
    if not params:
        return
    if maximize:
        grads = torch._foreach_neg(grads)  # new tensors: the user's .grad stays untouched

    torch._foreach_add_(steps, 1)

    if weight_decay != 0:
        if decoupled:
            _foreach_scale_(params, 1 - lr * weight_decay)  # AdamW: shrink the weights
        else:
            grads = torch._foreach_add(grads, params, alpha=weight_decay)  # L2 into g

    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)  # m_t
    _foreach_scale_(exp_avg_sqs, beta2)  # v_t, first half
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)  # v_t, second half

    # Steps differ between tensors when some grads were None on earlier steps.
    ts = [step.item() for step in steps]
    neg_step_sizes = [-(lr / (1 - beta1**t)) for t in ts]
    bias_correction2_sqrts = [(1 - beta2**t) ** 0.5 for t in ts]

    if amsgrad:
        torch._foreach_maximum_(max_exp_avg_sqs, exp_avg_sqs)
        denoms = torch._foreach_sqrt(max_exp_avg_sqs)
    else:
        denoms = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denoms, bias_correction2_sqrts)
    torch._foreach_add_(denoms, eps)
    torch._foreach_addcdiv_(params, exp_avgs, denoms, neg_step_sizes)


# Columns of the per-tensor scalar table the compiled and Triton paths read.
SCALAR_COLUMNS = (
    "decay_factor",  # 1 - lr * weight_decay (AdamW)
    "weight_decay",  # lambda (Adam + L2)
    "one_minus_beta1",  # lerp weight for m
    "beta2",
    "one_minus_beta2",
    "neg_step_size",  # -lr / (1 - beta1^t)
    "bias_correction2_sqrt",  # sqrt(1 - beta2^t)
    "eps",
)


def increment_and_scalar_table(
    steps: list[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
) -> Tensor:
    """Increment the step counters and return the per-tensor scalars, float64 ``(n, 8)``.

    Computed once per group in float64 on the CPU (the per-tensor paths compute the same
    numbers as Python floats, i.e. also in float64), vectorised so that 100 tensors cost
    a handful of tiny ops rather than 100 ``.item()`` calls.
    """
    torch._foreach_add_(steps, 1)
    if all(s.device.type == "cpu" for s in steps):
        t = torch.stack(steps).to(torch.float64)  # (n,)
    else:  # e.g. a state_dict saved by torch's fused/capturable path (step on the device)
        t = torch.tensor([s.item() for s in steps], dtype=torch.float64)
    n = t.shape[0]
    table = torch.empty(n, len(SCALAR_COLUMNS), dtype=torch.float64)
    table[:, 0] = 1 - lr * weight_decay
    table[:, 1] = weight_decay
    table[:, 2] = 1 - beta1
    table[:, 3] = beta2
    table[:, 4] = 1 - beta2
    table[:, 5] = -lr / (1 - torch.pow(beta1, t))
    table[:, 6] = (1 - torch.pow(beta2, t)).sqrt()
    table[:, 7] = eps
    return table
