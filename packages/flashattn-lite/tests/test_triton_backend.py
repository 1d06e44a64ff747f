"""The Triton kernels: on CUDA when present, else on the CPU through TRITON_INTERPRET=1.

The interpreter is slow, so the default suite keeps shapes tiny; the broader sweep of
the issue's shapes is marked slow.
"""

from __future__ import annotations

import flashattn_lite
import pytest
import torch
import torch.nn.functional as F
from fa_testing import make_qkv, max_err, ours_with_grads, reference_with_grads

pytest.importorskip("triton")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
NAMES = ["out", "lse", "dq", "dk", "dv"]

# (batch, seqlen_q, seqlen_k, nheads, nheads_k, head_dim, causal, window_size)
SMALL = [
    (2, 17, 37, 4, 2, 16, False, (-1, -1)),  # GQA, seqlen_q < seqlen_k, ragged last blocks
    (1, 37, 17, 4, 1, 32, True, (-1, -1)),  # MQA, seqlen_q > seqlen_k: rows with no key
    (1, 37, 37, 2, 2, 40, False, (5, 3)),  # sliding window, head dim padded to 64
    (1, 1, 1, 2, 1, 16, True, (-1, -1)),
]
BROAD = [
    (1, 129, 129, 8, 2, 64, True, (-1, -1)),
    (2, 129, 37, 2, 1, 128, False, (-1, -1)),
    (1, 37, 129, 8, 2, 64, False, (17, 3)),
    (1, 129, 129, 2, 2, 16, True, (31, -1)),
    (1, 17, 129, 2, 1, 40, True, (-1, -1)),
]


def _ids(shapes):
    return [
        f"q{s[1]}-k{s[2]}-h{s[3]}:{s[4]}-d{s[5]}-c{int(s[6])}-w{s[7][0]},{s[7][1]}" for s in shapes
    ]


def _check_fp32(shape, deterministic):
    b, sq, sk, h, hk, d, causal, window = shape
    q, k, v, grad = make_qkv(b, sq, sk, h, hk, d, dtype=torch.float32, device=DEVICE, seed=sq + sk)
    kw = dict(causal=causal, window_size=window)
    ours = ours_with_grads(q, k, v, grad, backend="triton", deterministic=deterministic, **kw)
    ref = reference_with_grads(q, k, v, grad, **kw)
    assert ours[1].dtype == torch.float32 and ours[1].shape == (b, h, sq)
    for name, a, r in zip(NAMES, ours, ref, strict=True):
        assert max_err(a, r) <= 2e-5 * (1 + r.detach()[torch.isfinite(r)].abs().max()), name


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic-dq", "deterministic"])
@pytest.mark.parametrize("shape", SMALL, ids=_ids(SMALL))
def test_triton_float32_matches_reference(shape, deterministic):
    _check_fp32(shape, deterministic)


@pytest.mark.slow
@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic-dq", "deterministic"])
@pytest.mark.parametrize("shape", BROAD, ids=_ids(BROAD))
def test_triton_float32_broad_sweep(shape, deterministic):
    _check_fp32(shape, deterministic)


def test_triton_matches_torch_backend_and_sdpa():
    q, k, v, grad = make_qkv(1, 29, 29, 2, 2, 32, dtype=torch.float32, device=DEVICE, seed=8)
    ours = ours_with_grads(q, k, v, grad, causal=True, backend="triton")
    tiled = ours_with_grads(q, k, v, grad, causal=True, backend="torch")
    for name, a, t in zip(NAMES, ours, tiled, strict=True):
        assert max_err(a, t) < 2e-5, name
    peer = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)), is_causal=True)
    torch.testing.assert_close(ours[0], peer.transpose(1, 2), atol=2e-5, rtol=1e-4)


def test_triton_rows_that_see_no_key():
    q, k, v, grad = make_qkv(1, 21, 3, 2, 1, 16, dtype=torch.float32, device=DEVICE, seed=6)
    out, lse, dq, dk, dv = ours_with_grads(q, k, v, grad, causal=True, backend="triton")
    assert torch.all(out[:, :18] == 0) and torch.all(lse[:, :, :18] == float("-inf"))
    assert torch.all(dq[:, :18] == 0) and torch.isfinite(dk).all() and torch.isfinite(dv).all()


def test_triton_sdpa_layout_top_left_causal():
    # SDPA's is_causal is top-left aligned: with L < S it differs from flash-attn's causal
    gen = torch.Generator().manual_seed(12)
    q, k, v = (torch.randn(1, 2, n, 16, generator=gen).to(DEVICE) for n in (11, 19, 19))
    ours = flashattn_lite.scaled_dot_product_attention(q, k, v, is_causal=True, backend="triton")
    peer = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(ours, peer, atol=2e-5, rtol=1e-4)


def test_triton_deterministic_backward_is_reproducible():
    q, k, v, grad = make_qkv(1, 33, 33, 2, 1, 16, dtype=torch.float32, device=DEVICE, seed=10)
    first = ours_with_grads(q, k, v, grad, causal=True, backend="triton", deterministic=True)
    second = ours_with_grads(q, k, v, grad, causal=True, backend="triton", deterministic=True)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


def test_triton_non_contiguous_inputs():
    q, k, v, grad = make_qkv(1, 19, 23, 2, 2, 16, dtype=torch.float32, device=DEVICE, seed=13)
    k_wide = torch.cat([k.detach(), k.detach()], dim=-1)[..., ::2].requires_grad_()  # stride 2
    q_t = q.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()
    ours = ours_with_grads(q_t, k_wide, v, grad, backend="triton")
    ref = reference_with_grads(q, k_wide, v, grad)
    for name, a, r in zip(NAMES, ours, ref, strict=True):
        assert max_err(a, r) < 2e-5 * (1 + r.detach()[torch.isfinite(r)].abs().max()), name


def _low_precision_rule(shape, dtype):
    b, sq, sk, h, hk, d, causal, window = shape
    q, k, v, grad = make_qkv(b, sq, sk, h, hk, d, dtype=dtype, device=DEVICE, seed=21)
    kw = dict(causal=causal, window_size=window)
    ours = ours_with_grads(q, k, v, grad, backend="triton", **kw)
    exact = reference_with_grads(q, k, v, grad, dtype=torch.float32, **kw)
    same_dtype = reference_with_grads(q, k, v, grad, dtype=dtype, **kw)
    assert ours[0].dtype == dtype
    for name, a, e, s in zip(NAMES, ours, exact, same_dtype, strict=True):
        assert max_err(a, e) <= 2 * max_err(s, e) + 1e-3, name


def test_triton_float16_flash_attn_rule():
    """error(ours) <= 2 * error(PyTorch attention in fp16) + atol, both vs the fp32 reference."""
    _low_precision_rule((1, 37, 29, 2, 1, 32, True, (-1, -1)), torch.float16)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("shape", SMALL + BROAD, ids=_ids(SMALL + BROAD))
def test_gpu_low_precision_flash_attn_rule(shape, dtype):
    _low_precision_rule(shape, dtype)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_long_sequence_bf16():
    _low_precision_rule((2, 1031, 2053, 8, 2, 128, True, (-1, -1)), torch.bfloat16)
