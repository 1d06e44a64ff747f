"""Shared test helpers: seeded inputs and float64 reference gradients."""

from __future__ import annotations

import flashattn_lite
import torch


def make_qkv(
    batch: int,
    seqlen_q: int,
    seqlen_k: int,
    nheads: int,
    nheads_k: int,
    head_dim: int,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v in flash layout (leaf tensors requiring grad) and an upstream gradient."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype).requires_grad_()

    q = rand(batch, seqlen_q, nheads, head_dim)
    k = rand(batch, seqlen_k, nheads_k, head_dim)
    v = rand(batch, seqlen_k, nheads_k, head_dim)
    grad = torch.randn(batch, seqlen_q, nheads, head_dim, generator=gen).to(
        device=device, dtype=dtype
    )
    return q, k, v, grad


def reference_with_grads(q, k, v, grad, dtype=torch.float64, **kwargs):
    """(out, lse, dq, dk, dv) of ``attention_reference`` computed in ``dtype``."""
    q2, k2, v2 = (t.detach().to(dtype).requires_grad_() for t in (q, k, v))
    out, lse = flashattn_lite.attention_reference(q2, k2, v2, return_lse=True, **kwargs)
    dq, dk, dv = torch.autograd.grad(out, (q2, k2, v2), grad.to(dtype))
    return out, lse, dq, dk, dv


def ours_with_grads(q, k, v, grad, **kwargs):
    """(out, lse, dq, dk, dv) of ``flash_attn_func``."""
    out, lse = flashattn_lite.flash_attn_func(q, k, v, return_lse=True, **kwargs)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), grad)
    return out, lse, dq, dk, dv


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max abs difference, treating equal infinities (lse of empty rows) as exact."""
    a, b = a.detach().double(), b.detach().double()
    both_inf = torch.isinf(a) & torch.isinf(b) & (torch.sign(a) == torch.sign(b))
    diff = torch.where(both_inf, torch.zeros_like(a), (a - b).abs())
    return float(diff.max()) if diff.numel() else 0.0
