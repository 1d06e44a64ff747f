"""FlashAttention-2 in Triton: the launchers, the autograd.Function and the wrapper.

Read like the Triton fused-attention tutorial: the forward kernel in
``triton_forward.py``, the backward kernels in ``triton_backward.py``, then this file.
Tensors stay in flash
layout ``(B, S, H, D)``; the kernels take strides, so any layout whose last dim is
contiguous works without a copy.

Forward: one program per (block of BLOCK_M queries, batch x head). It streams BLOCK_N
keys at a time and keeps the online softmax state (running max ``m``, denominator ``l``,
unnormalised output ``acc``) in registers. Only key blocks that meet the band are
visited; of those, blocks fully inside the band skip the element-wise mask. Scores are
kept in base 2 (``exp2`` is the native instruction), so ``lse`` is converted back to
natural log at the end.

Backward: ``delta = rowsum(dO * O)`` first; then one program per (key block, batch x
key head) recomputes ``P = exp(S - lse)`` tile by tile and accumulates dK and dV for every
query head of its group (no atomics for dK/dV). dQ is either atomically added from that
same pass (fast) or, with ``deterministic=True``, computed by a separate pass over key
blocks per query block.

This module imports triton at import time; the package imports it only when
``backend="triton"`` is requested.
"""

from __future__ import annotations

import torch
import triton
from torch.autograd.function import once_differentiable

from .masking import Band
from .triton_backward import _attn_bwd_dkdv, _attn_bwd_dq, _bwd_delta
from .triton_forward import _attn_fwd

# ----------------------------------------------------------------------------- autograd


def _strides(t: torch.Tensor) -> tuple[int, int, int]:
    """(batch, seq, head) strides of a flash-layout tensor; its head dim must be unit-stride."""
    return t.stride(0), t.stride(1), t.stride(2)


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _band_args(band: Band) -> tuple[int, int, int, bool, bool]:
    left = 0 if band.left is None else band.left
    right = 0 if band.right is None else band.right
    return band.diagonal, left, right, band.left is not None, band.right is not None


def _precision(dtype: torch.dtype) -> str:
    # fp32 inputs get true fp32 products (no tf32) so they match an fp32 reference
    return "ieee" if dtype == torch.float32 else "tf32"


def _forward(q, k, v, scale, band):
    batch, seqlen_q, nheads, head_dim = q.shape
    seqlen_k, nheads_k = k.shape[1], k.shape[2]
    out = torch.empty_like(q, memory_format=torch.contiguous_format)  # (B, Sq, H, D)
    lse = torch.empty((batch, nheads, seqlen_q), dtype=torch.float32, device=q.device)
    diagonal, left, right, has_left, has_right = _band_args(band)

    def grid(meta):
        return (triton.cdiv(seqlen_q, meta["BLOCK_M"]), batch * nheads)

    _attn_fwd[grid](
        q,
        k,
        v,
        out,
        lse,
        scale,
        *_strides(q),
        *_strides(k),
        *_strides(v),
        *_strides(out),
        nheads,
        nheads // nheads_k,
        seqlen_q,
        seqlen_k,
        diagonal,
        left,
        right,
        HEAD_DIM=head_dim,
        HEAD_DIM_PAD=triton.next_power_of_2(max(head_dim, 16)),
        HAS_LEFT=has_left,
        HAS_RIGHT=has_right,
        PRECISION=_precision(q.dtype),
    )
    return out, lse


def _backward(do, q, k, v, out, lse, scale, band, deterministic):
    batch, seqlen_q, nheads, head_dim = q.shape
    seqlen_k, nheads_k = k.shape[1], k.shape[2]
    group = nheads // nheads_k
    head_dim_pad = triton.next_power_of_2(max(head_dim, 16))
    diagonal, left, right, has_left, has_right = _band_args(band)
    precision = _precision(q.dtype)
    delta = torch.empty_like(lse)  # (B, H, Sq) float32
    delta_block = 64
    _bwd_delta[(triton.cdiv(seqlen_q, delta_block), batch * nheads)](
        out,
        do,
        delta,
        *_strides(out),
        *_strides(do),
        nheads,
        seqlen_q,
        HEAD_DIM=head_dim,
        HEAD_DIM_PAD=head_dim_pad,
        BLOCK_M=delta_block,
    )
    dk = torch.empty_like(k, memory_format=torch.contiguous_format)
    dv = torch.empty_like(v, memory_format=torch.contiguous_format)
    atomic = not deterministic
    # atomics accumulate into an fp32 buffer; the separate pass writes the final dtype
    dq = (
        torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        if atomic
        else torch.empty_like(q, memory_format=torch.contiguous_format)
    )

    def grid_kv(meta):
        return (triton.cdiv(seqlen_k, meta["BLOCK_N"]), batch * nheads_k)

    _attn_bwd_dkdv[grid_kv](
        q,
        k,
        v,
        do,
        dq,
        dk,
        dv,
        lse,
        delta,
        scale,
        *_strides(q),
        *_strides(k),
        *_strides(v),
        *_strides(do),
        *_strides(dq),
        *_strides(dk),
        *_strides(dv),
        nheads,
        nheads_k,
        group,
        seqlen_q,
        seqlen_k,
        diagonal,
        left,
        right,
        HEAD_DIM=head_dim,
        HEAD_DIM_PAD=head_dim_pad,
        HAS_LEFT=has_left,
        HAS_RIGHT=has_right,
        ATOMIC_DQ=atomic,
        PRECISION=precision,
    )
    if atomic:
        return dq.to(q.dtype), dk, dv

    def grid_q(meta):
        return (triton.cdiv(seqlen_q, meta["BLOCK_M"]), batch * nheads)

    _attn_bwd_dq[grid_q](
        q,
        k,
        v,
        do,
        dq,
        lse,
        delta,
        scale,
        *_strides(q),
        *_strides(k),
        *_strides(v),
        *_strides(do),
        *_strides(dq),
        nheads,
        group,
        seqlen_q,
        seqlen_k,
        diagonal,
        left,
        right,
        HEAD_DIM=head_dim,
        HEAD_DIM_PAD=head_dim_pad,
        HAS_LEFT=has_left,
        HAS_RIGHT=has_right,
        PRECISION=precision,
    )
    return dq, dk, dv


class TritonAttention(torch.autograd.Function):
    """Flash-layout attention whose forward and backward are the kernels above."""

    @staticmethod
    def forward(ctx, q, k, v, scale, band, deterministic):  # type: ignore[override]
        q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
        out, lse = _forward(q, k, v, scale, band)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.scale, ctx.band, ctx.deterministic = scale, band, deterministic
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    @once_differentiable  # no double backward: a clear error, not dropped terms
    def backward(ctx, grad_out, grad_lse):  # type: ignore[override]
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = _backward(
            _last_dim_contiguous(grad_out),
            q,
            k,
            v,
            out,
            lse,
            ctx.scale,
            ctx.band,
            ctx.deterministic,
        )
        return dq, dk, dv, None, None, None


# ----------------------------------------------------------------------------- wrapper


def triton_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    band: Band,
    deterministic: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validated flash-layout tensors in, ``(out (B, Sq, H, D), lse (B, H, Sq) float32)`` out."""
    return TritonAttention.apply(q, k, v, scale, band, deterministic)
