"""flashattn_lite.scaled_dot_product_attention against torch's, in SDPA's (B, H, S, D) layout."""

from __future__ import annotations

import flashattn_lite
import pytest
import torch
import torch.nn.functional as F


def _inputs(b, h, hk, sq, sk, d, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, sq, d, generator=gen, dtype=dtype).requires_grad_()
    k = torch.randn(b, hk, sk, d, generator=gen, dtype=dtype).requires_grad_()
    v = torch.randn(b, hk, sk, d, generator=gen, dtype=dtype).requires_grad_()
    grad = torch.randn(b, h, sq, d, generator=gen, dtype=dtype)
    return q, k, v, grad


def _both(q, k, v, grad, **kw):
    ours = flashattn_lite.scaled_dot_product_attention(q, k, v, backend="torch", **kw)
    ours_grads = torch.autograd.grad(ours, (q, k, v), grad)
    peer = F.scaled_dot_product_attention(q, k, v, **kw)
    peer_grads = torch.autograd.grad(peer, (q, k, v), grad)
    return (ours, *ours_grads), (peer, *peer_grads)


@pytest.mark.parametrize(
    "sq,sk,is_causal",
    [(17, 17, False), (37, 37, True), (11, 29, True), (29, 11, True), (1, 37, True)],
)
def test_matches_torch_sdpa_is_causal_top_left(sq, sk, is_causal):
    q, k, v, grad = _inputs(2, 4, 4, sq, sk, 16, seed=sq * sk)
    ours, peer = _both(q, k, v, grad, is_causal=is_causal)
    for a, p in zip(ours, peer, strict=True):
        torch.testing.assert_close(a, p, atol=3e-5, rtol=1e-4)


def test_matches_torch_sdpa_gqa_and_scale():
    q, k, v, grad = _inputs(1, 8, 2, 23, 31, 32, seed=1)
    ours, peer = _both(q, k, v, grad, enable_gqa=True, scale=0.3)
    for a, p in zip(ours, peer, strict=True):
        torch.testing.assert_close(a, p, atol=3e-5, rtol=1e-4)


@pytest.mark.parametrize("mask_shape", [(2, 4, 19, 23), (2, 1, 19, 23), (19, 23), (1, 1, 1, 23)])
def test_matches_torch_sdpa_boolean_mask(mask_shape):
    q, k, v, grad = _inputs(2, 4, 2, 19, 23, 16, seed=2)
    gen = torch.Generator().manual_seed(3)
    mask = torch.rand(mask_shape, generator=gen) > 0.3
    mask[..., 0] = True  # every row keeps a key: torch gives nan for rows that see none
    ours, peer = _both(q, k, v, grad, attn_mask=mask, enable_gqa=True)
    for a, p in zip(ours, peer, strict=True):
        torch.testing.assert_close(a, p, atol=3e-5, rtol=1e-4)


def test_matches_torch_sdpa_additive_mask():
    q, k, v, grad = _inputs(1, 2, 2, 37, 17, 24, dtype=torch.float64, seed=4)
    bias = torch.randn(
        1, 2, 37, 17, dtype=torch.float64, generator=torch.Generator().manual_seed(5)
    )
    ours, peer = _both(q, k, v, grad, attn_mask=bias)
    for a, p in zip(ours, peer, strict=True):
        torch.testing.assert_close(a, p, atol=1e-10, rtol=1e-10)


def test_fully_masked_rows_give_zero():
    q, k, v, grad = _inputs(1, 2, 2, 5, 7, 16, seed=6)
    mask = torch.ones(5, 7, dtype=torch.bool)
    mask[2] = False
    out = flashattn_lite.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.all(out[:, :, 2] == 0) and torch.isfinite(out).all()
    peer = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    keep = torch.arange(5) != 2
    torch.testing.assert_close(out[:, :, keep], peer[:, :, keep], atol=3e-5, rtol=1e-4)
