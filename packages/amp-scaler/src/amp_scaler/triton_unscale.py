"""A multi-tensor Triton kernel for unscale + inf/NaN check (one launch per dtype).

Gradients live in many separate tensors (~100 for a small transformer, thousands for a
big one). One launch per tensor is launch-bound on a GPU, so, like torch's
``multi_tensor_apply``, one launch covers them all: a table maps every program
(block of ``BLOCK`` elements) to its tensor's address and its offset in that tensor.

Reading order: the kernel, the launch-table builder (cached per set of tensors), the
wrapper with the same signature as the other paths.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 4096

_TL_DTYPES = {
    torch.float16: tl.float16,
    torch.bfloat16: tl.bfloat16,
    torch.float32: tl.float32,
    torch.float64: tl.float64,
}


@triton.jit
def _unscale_and_check_kernel(
    addresses_ptr,  # (T,) int64: data_ptr() of each tensor
    numels_ptr,  # (T,) int64: numel of each tensor
    block_tensor_ptr,  # (P,) int32: which tensor program p works on
    block_index_ptr,  # (P,) int32: which block of that tensor
    inv_scale_ptr,  # () float32
    found_inf_ptr,  # () float32, set to 1.0 on any inf/NaN
    DTYPE: tl.constexpr,
    OPMATH: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    tensor = tl.load(block_tensor_ptr + pid)
    block = tl.load(block_index_ptr + pid).to(tl.int64)
    base = tl.load(addresses_ptr + tensor).to(tl.pointer_type(DTYPE))
    numel = tl.load(numels_ptr + tensor)
    offsets = block * BLOCK + tl.arange(0, BLOCK)  # (BLOCK,)
    mask = offsets < numel
    x = tl.load(base + offsets, mask=mask, other=0.0).to(OPMATH)  # (BLOCK,)
    # inf and NaN are exactly the values whose difference with themselves is not 0
    # (inf - inf = NaN, NaN - NaN = NaN); checked before scaling, as torch does.
    bad = (x - x) != 0.0
    n_bad = tl.sum(bad.to(tl.int32), axis=0)
    inv_scale = tl.load(inv_scale_ptr).to(OPMATH)
    # The downcast rounds to nearest-even on the GPU, like torch. (The CPU interpreter
    # truncates float32 -> bfloat16, so there it can differ by one ulp.)
    tl.store(base + offsets, (x * inv_scale).to(DTYPE), mask=mask)
    if n_bad > 0:
        tl.store(found_inf_ptr, 1.0)  # every writer writes the same value: no atomics


_TABLE_CACHE: dict[tuple, tuple[torch.Tensor, ...]] = {}
_TABLE_CACHE_MAX = 16


def _launch_table(tensors: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Addresses, numels and the program -> (tensor, block) map, cached by addresses.

    Training loops unscale the same gradient buffers every iteration, so the table is
    built (on the host, then copied once) only when the set of tensors changes.
    """
    key = tuple((t.data_ptr(), t.numel()) for t in tensors) + (str(tensors[0].device),)
    table = _TABLE_CACHE.get(key)
    if table is None:
        numels = [t.numel() for t in tensors]
        blocks = [triton.cdiv(n, BLOCK) for n in numels]
        counts = torch.tensor(blocks, dtype=torch.int64)
        block_tensor = torch.repeat_interleave(torch.arange(len(tensors)), counts)  # (P,)
        starts = torch.cumsum(counts, 0) - counts  # (T,) first program of each tensor
        block_index = torch.arange(int(counts.sum())) - starts[block_tensor]  # (P,)
        device = tensors[0].device
        table = (
            torch.tensor([t.data_ptr() for t in tensors], dtype=torch.int64).to(device),
            torch.tensor(numels, dtype=torch.int64).to(device),
            block_tensor.to(torch.int32).to(device),
            block_index.to(torch.int32).to(device),
        )
        if len(_TABLE_CACHE) >= _TABLE_CACHE_MAX:
            _TABLE_CACHE.pop(next(iter(_TABLE_CACHE)))
        _TABLE_CACHE[key] = table
    return table


def triton_unscale_and_check_(
    tensors: list[torch.Tensor], inv_scale: torch.Tensor, found_inf: torch.Tensor
) -> torch.Tensor:
    """Same contract as ``unscale_and_check_`` for tensors of ONE dtype on one device.

    Non-contiguous tensors (rare for gradients) go through the foreach path instead.
    """
    from .unscale import _foreach_unscale_and_check_

    contiguous = [t for t in tensors if t.is_contiguous() and t.numel() > 0]
    strided = [t for t in tensors if not t.is_contiguous() and t.numel() > 0]
    if strided:
        _foreach_unscale_and_check_(strided, inv_scale, found_inf)
    if not contiguous:
        return found_inf
    dtype = contiguous[0].dtype
    addresses, numels, block_tensor, block_index = _launch_table(contiguous)
    grid = (block_tensor.numel(),)
    _unscale_and_check_kernel[grid](
        addresses,
        numels,
        block_tensor,
        block_index,
        inv_scale,
        found_inf,
        DTYPE=_TL_DTYPES[dtype],
        OPMATH=tl.float64 if dtype == torch.float64 else tl.float32,
        BLOCK=BLOCK,
    )
    return found_inf
