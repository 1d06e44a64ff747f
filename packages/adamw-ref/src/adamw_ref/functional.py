"""The readable definition of Adam, Adam + L2 and AdamW: one tensor, one step.

Everything else in the package (foreach, compiled, Triton) is tested against
:func:`adam_update`. The equations follow Kingma & Ba, "Adam: A Method for Stochastic
Optimization" (Algorithm 1), with the decoupled weight decay of Loshchilov & Hutter,
"Decoupled Weight Decay Regularization" (Algorithm 2, line 12), and AMSGrad from Reddi
et al., "On the Convergence of Adam and Beyond". The *order* of the floating-point
operations is the one ``torch.optim.Adam(foreach=False)`` uses, so on the CPU this
function reproduces torch bit for bit in every dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor


def adam_update(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: Tensor,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled: bool,
    amsgrad: bool,
    max_exp_avg_sq: Tensor | None,
    maximize: bool,
) -> Tensor:
    """Apply one Adam / AdamW step to ``param`` in place and return it.

    Args:
        param: the parameter ``theta_{t-1}``, any shape, float16/bfloat16/float32/float64
            or complex (complex tensors are updated as their real view, like torch).
        grad: ``d loss / d param``, same shape, dtype and device as ``param``; not modified.
        exp_avg: first-moment state ``m_{t-1}``, same shape as ``param``; updated in place.
        exp_avg_sq: second-moment state ``v_{t-1}``, same shape; updated in place.
        step: 0-d tensor holding the number of steps already taken (``t - 1``); it is
            incremented in place, exactly like ``state["step"]`` in ``torch.optim.Adam``.
        lr: learning rate ``alpha`` (>= 0).
        beta1, beta2: moment decay rates in ``[0, 1)``.
        eps: the ``epsilon`` added to ``sqrt(v_hat)`` (>= 0).
        weight_decay: ``lambda`` (>= 0).
        decoupled: ``True`` for AdamW (shrink the weights directly, ``theta *= 1 - lr*lambda``),
            ``False`` for Adam with L2 regularisation (``g += lambda * theta``).
        amsgrad: normalise by the running maximum of ``v_t`` instead of ``v_t``.
        max_exp_avg_sq: the AMSGrad state ``v_max``, required when ``amsgrad`` is True.
        maximize: ascend instead of descend (the gradient is negated).

    Matches ``torch.optim.Adam(foreach=False)`` (``decoupled=False``) and
    ``torch.optim.AdamW(foreach=False)`` (``decoupled=True``) step for step.
    """
    if amsgrad and max_exp_avg_sq is None:
        raise ValueError("max_exp_avg_sq must be a tensor when amsgrad=True, got None")
    if grad.is_sparse:
        raise SparseGradientError(
            "grad must be a dense tensor, got a sparse one (Adam does not support sparse "
            "gradients; torch.optim.SparseAdam does)"
        )

    # Ascending f is descending -f.
    g = -grad if maximize else grad  # g_t <- grad f_t(theta_{t-1})

    step += 1  # t <- t + 1
    t = step.item()

    if weight_decay != 0:
        if decoupled:
            # AdamW (Loshchilov & Hutter, Alg. 2 line 12): theta <- theta - alpha*lambda*theta,
            # applied to the weights, so the decay never enters m or v.
            param.mul_(1 - lr * weight_decay)
        else:
            # Adam + L2: the penalty lambda/2 |theta|^2 adds lambda*theta to the gradient,
            # and from here on it is rescaled by 1/sqrt(v) like any other gradient.
            g = g.add(param, alpha=weight_decay)  # g_t <- g_t + lambda * theta_{t-1}

    if param.is_complex():
        # A complex number is a pair of reals: each part gets its own moments.
        g, param_r = torch.view_as_real(g), torch.view_as_real(param)
        exp_avg, exp_avg_sq = torch.view_as_real(exp_avg), torch.view_as_real(exp_avg_sq)
        if amsgrad:
            max_exp_avg_sq = torch.view_as_real(max_exp_avg_sq)
    else:
        param_r = param

    # m_t <- beta1 * m_{t-1} + (1 - beta1) * g_t      (a lerp from m towards g)
    exp_avg.lerp_(g, 1 - beta1)
    # v_t <- beta2 * v_{t-1} + (1 - beta2) * g_t^2
    exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)

    # Bias corrections: m and v start at 0, so early averages are too small by (1 - beta^t).
    bias_correction1 = 1 - beta1**t  # m_hat = m_t / bias_correction1
    bias_correction2 = 1 - beta2**t  # v_hat = v_t / bias_correction2
    step_size = lr / bias_correction1  # alpha / (1 - beta1^t), folded into one scalar

    if amsgrad:
        # v_max_t <- max(v_max_{t-1}, v_t): the denominator never shrinks.
        torch.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
        second_moment = max_exp_avg_sq
    else:
        second_moment = exp_avg_sq

    # denom = sqrt(v_hat) + eps = sqrt(v_t) / sqrt(1 - beta2^t) + eps
    denom = (second_moment.sqrt() / bias_correction2**0.5).add_(eps)
    # theta_t <- theta_{t-1} - alpha * m_hat / (sqrt(v_hat) + eps)
    param_r.addcdiv_(exp_avg, denom, value=-step_size)
    return param


class SparseGradientError(TypeError, RuntimeError):
    """Raised for sparse gradients; a ``RuntimeError`` like torch's, and a ``TypeError``."""
