"""A fused multi-tensor Triton kernel: one launch per (device, dtype) bucket of a group.

Layout of one launch::

    tensor i of the bucket  ->  cdiv(numel_i, BLOCK) programs
    program b               ->  (tensor index, first element) from two small int tables
    tensor addresses        ->  int64 tables of data_ptr()s, cast to pointers in-kernel
    per-tensor scalars      ->  the float64 (n, 8) table of multi_tensor.SCALAR_COLUMNS

Each program reads ``param, grad, m, v`` (and ``v_max``) once and writes them once, so
the step is one pass over memory however many tensors the group has. The maths is
:func:`adamw_ref.functional.adam_update` in the same order, computed in float32 for
16- and 32-bit parameters and in float64 for float64 ones. Triton is imported here only,
and this module only when ``impl="triton"`` is asked for. On CPU tensors it runs under
the Triton interpreter (``TRITON_INTERPRET=1``), which is what the tests use.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from .multi_tensor import increment_and_scalar_table

BLOCK = 1024

_TL_DTYPES = {
    torch.float16: tl.float16,
    torch.bfloat16: tl.bfloat16,
    torch.float32: tl.float32,
    torch.float64: tl.float64,
}


@triton.jit
def _adam_multi_tensor_kernel(
    param_ptrs,  # (n,) int64 addresses
    grad_ptrs,
    exp_avg_ptrs,
    exp_avg_sq_ptrs,
    max_exp_avg_sq_ptrs,  # unused unless AMSGRAD
    numels,  # (n,) int64
    block_tensor,  # (num_programs,) int32: which tensor this program updates
    block_start,  # (num_programs,) int64: its first element
    scalars,  # (n, 8) float64
    DTYPE: tl.constexpr,
    COMPUTE: tl.constexpr,
    HAS_WEIGHT_DECAY: tl.constexpr,
    DECOUPLED: tl.constexpr,
    AMSGRAD: tl.constexpr,
    MAXIMIZE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    t = tl.load(block_tensor + pid)
    offsets = tl.load(block_start + pid) + tl.arange(0, BLOCK)  # (BLOCK,)
    mask = offsets < tl.load(numels + t)

    p_ptr = tl.load(param_ptrs + t).to(tl.pointer_type(DTYPE))
    g_ptr = tl.load(grad_ptrs + t).to(tl.pointer_type(DTYPE))
    m_ptr = tl.load(exp_avg_ptrs + t).to(tl.pointer_type(DTYPE))
    v_ptr = tl.load(exp_avg_sq_ptrs + t).to(tl.pointer_type(DTYPE))

    row = scalars + t * 8
    decay_factor = tl.load(row + 0).to(COMPUTE)
    weight_decay = tl.load(row + 1).to(COMPUTE)
    one_minus_beta1 = tl.load(row + 2).to(COMPUTE)
    beta2 = tl.load(row + 3).to(COMPUTE)
    one_minus_beta2 = tl.load(row + 4).to(COMPUTE)
    neg_step_size = tl.load(row + 5).to(COMPUTE)
    bias_correction2_sqrt = tl.load(row + 6).to(COMPUTE)
    eps = tl.load(row + 7).to(COMPUTE)

    p = tl.load(p_ptr + offsets, mask=mask).to(COMPUTE)  # theta_{t-1}
    g = tl.load(g_ptr + offsets, mask=mask).to(COMPUTE)
    m = tl.load(m_ptr + offsets, mask=mask).to(COMPUTE)
    v = tl.load(v_ptr + offsets, mask=mask).to(COMPUTE)

    if MAXIMIZE:
        g = -g
    if HAS_WEIGHT_DECAY:
        if DECOUPLED:
            p = p * decay_factor  # AdamW
        else:
            g = g + weight_decay * p  # Adam + L2
    m = m + one_minus_beta1 * (g - m)  # m_t (lerp with weight 1 - beta1 < 0.5, as torch)
    v = v * beta2 + one_minus_beta2 * g * g  # v_t
    if AMSGRAD:
        vmax_ptr = tl.load(max_exp_avg_sq_ptrs + t).to(tl.pointer_type(DTYPE))
        v_max = tl.maximum(tl.load(vmax_ptr + offsets, mask=mask).to(COMPUTE), v)
        tl.store(vmax_ptr + offsets, v_max.to(DTYPE), mask=mask)
        denom = tl.sqrt(v_max) / bias_correction2_sqrt + eps
    else:
        denom = tl.sqrt(v) / bias_correction2_sqrt + eps
    p = p + neg_step_size * (m / denom)  # theta_t

    tl.store(p_ptr + offsets, p.to(DTYPE), mask=mask)
    tl.store(m_ptr + offsets, m.to(DTYPE), mask=mask)
    tl.store(v_ptr + offsets, v.to(DTYPE), mask=mask)


class _BlockTables:
    """(tensor index, first element) per program, cached per tuple of numels and device."""

    def __init__(self) -> None:
        self._cache: dict[tuple, tuple[Tensor, Tensor, Tensor]] = {}

    def get(self, numels: tuple[int, ...], device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        key = (numels, str(device))
        if key not in self._cache:
            blocks = [triton.cdiv(n, BLOCK) for n in numels]
            tensor_index = torch.repeat_interleave(
                torch.arange(len(numels), dtype=torch.int32), torch.tensor(blocks)
            )
            first = torch.cat([torch.arange(b, dtype=torch.int64) * BLOCK for b in blocks])
            self._cache[key] = (
                torch.tensor(numels, dtype=torch.int64, device=device),
                tensor_index.to(device),
                first.to(device),
            )
            if len(self._cache) > 64:  # shapes churn only if the user rebuilds groups
                self._cache.pop(next(iter(self._cache)))
        return self._cache[key]


_BLOCK_TABLES = _BlockTables()


def _check_runnable(tensor: Tensor) -> None:
    if tensor.device.type == "cuda":
        return
    if tensor.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
        return
    raise ValueError(
        f"impl='triton' needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors), "
        f"got a parameter on {tensor.device}"
    )


def triton_update_group(
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
    """:func:`adam_update` for a whole group, one kernel launch per (device, dtype).

    Tensors must be contiguous (the optimizer sends non-contiguous ones to the reference).
    """
    if not params:
        return
    scalars_cpu = increment_and_scalar_table(
        steps, lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay
    )
    buckets: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, p in enumerate(params):
        _check_runnable(p)
        if p.dtype not in _TL_DTYPES:
            raise TypeError(f"impl='triton' supports {list(_TL_DTYPES)}, got {p.dtype}")
        buckets.setdefault((p.device, p.dtype), []).append(i)

    for (device, dtype), idx in buckets.items():
        sizes = tuple(params[i].numel() for i in idx)
        numels, tensor_index, first = _BLOCK_TABLES.get(sizes, device)
        lists = [params, grads, exp_avgs, exp_avg_sqs] + ([max_exp_avg_sqs] if amsgrad else [])
        # (4 or 5, n) addresses; rebuilt every step because zero_grad(set_to_none=True)
        # gives new .grad tensors each step.
        addresses = torch.tensor(
            [[lst[i].data_ptr() for i in idx] for lst in lists], dtype=torch.int64
        ).to(device, non_blocking=True)
        scalars = scalars_cpu[idx].to(device, non_blocking=True)
        max_row = addresses[4] if amsgrad else addresses[0]
        _adam_multi_tensor_kernel[(tensor_index.shape[0],)](
            addresses[0],
            addresses[1],
            addresses[2],
            addresses[3],
            max_row,
            numels,
            tensor_index,
            first,
            scalars,
            DTYPE=_TL_DTYPES[dtype],
            COMPUTE=tl.float64 if dtype == torch.float64 else tl.float32,
            HAS_WEIGHT_DECAY=weight_decay != 0,
            DECOUPLED=decoupled,
            AMSGRAD=amsgrad,
            MAXIMIZE=maximize,
            BLOCK=BLOCK,
        )
