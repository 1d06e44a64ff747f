"""One test per rejected input class: the exception type and the argument it names."""

from __future__ import annotations

import flashattn_lite
import pytest
import torch
from flashattn_lite import flash_attn_func, scaled_dot_product_attention


def _qkv(b=1, sq=5, sk=7, h=4, hk=2, d=16, dtype=torch.float32):
    return (
        torch.randn(b, sq, h, d, dtype=dtype),
        torch.randn(b, sk, hk, d, dtype=dtype),
        torch.randn(b, sk, hk, d, dtype=dtype),
    )


def test_rejects_non_tensor():
    q, k, v = _qkv()
    with pytest.raises(TypeError, match="k must be a torch.Tensor"):
        flash_attn_func(q, k.tolist(), v)


def test_rejects_integer_dtype():
    q, k, v = _qkv()
    with pytest.raises(TypeError, match="q must be float16"):
        flash_attn_func(q.long(), k, v)


def test_rejects_wrong_rank():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="q must be 4-D"):
        flash_attn_func(q[0], k, v)


def test_rejects_mismatched_batch():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="q and k must have the same batch size, got 2 and 1"):
        flash_attn_func(torch.cat([q, q]), k, v)


def test_rejects_mismatched_head_dim():
    q, _, _ = _qkv()
    _, k, v = _qkv(d=32)
    with pytest.raises(ValueError, match="q and k must have the same head dim, got 16 and 32"):
        flash_attn_func(q, k, v)


def test_rejects_k_v_shape_mismatch():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="k and v must have the same shape"):
        flash_attn_func(q, k, v[:, :3])


def test_rejects_mismatched_dtype():
    q, k, v = _qkv()
    with pytest.raises(TypeError, match="q, k and v must share a dtype"):
        flash_attn_func(q, k.double(), v)


def test_rejects_mismatched_device():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="q, k and v must be on one device"):
        flash_attn_func(q, k.to("meta"), v)


def test_rejects_heads_not_divisible():
    q, k, v = _qkv(h=4, hk=3)
    with pytest.raises(ValueError, match=r"heads of q \(4\) must be divisible by that of k \(3\)"):
        flash_attn_func(q, k, v)


@pytest.mark.parametrize("head_dim", [12, 264])
def test_rejects_bad_head_dim(head_dim):
    q, k, v = _qkv(d=head_dim)
    with pytest.raises(
        ValueError, match=f"q head dim must be a multiple of 8 and at most 256, got {head_dim}"
    ):
        flash_attn_func(q, k, v)


def test_rejects_empty_dimension():
    q, k, v = _qkv(sk=0)
    with pytest.raises(ValueError, match="k must have no empty dimension"):
        flash_attn_func(q, k, v)


@pytest.mark.parametrize("window", [(3,), (1.5, 2), "full"])
def test_rejects_malformed_window(window):
    q, k, v = _qkv()
    with pytest.raises(TypeError, match="window_size must be a pair of ints"):
        flash_attn_func(q, k, v, window_size=window)


def test_rejects_window_below_minus_one():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="window_size entries must be >= -1"):
        flash_attn_func(q, k, v, window_size=(-2, 3))


def test_rejects_causal_with_right_window():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="window_size right must be -1 or 0 when causal=True"):
        flash_attn_func(q, k, v, causal=True, window_size=(4, 2))


def test_rejects_non_bool_flags():
    q, k, v = _qkv()
    with pytest.raises(TypeError, match="causal must be a bool"):
        flash_attn_func(q, k, v, causal=1)
    with pytest.raises(TypeError, match="return_lse must be a bool"):
        flash_attn_func(q, k, v, return_lse="yes")


@pytest.mark.parametrize("scale,exc", [("0.1", TypeError), (float("nan"), ValueError)])
def test_rejects_bad_softmax_scale(scale, exc):
    q, k, v = _qkv()
    with pytest.raises(exc, match="softmax_scale must be"):
        flash_attn_func(q, k, v, softmax_scale=scale)


def test_rejects_unknown_backend():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="backend must be one of"):
        flash_attn_func(q, k, v, backend="cuda")


def test_rejects_triton_without_cuda_or_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="backend='triton' needs CUDA tensors"):
        flash_attn_func(q, k, v, backend="triton")


def test_rejects_triton_float64():
    q, k, v = _qkv(dtype=torch.float64)
    with pytest.raises(TypeError, match="backend='triton' supports float16, bfloat16 and float32"):
        flash_attn_func(q, k, v, backend="triton")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU interpreter's limitation")
def test_rejects_triton_bfloat16_on_the_interpreter():
    q, k, v = _qkv(dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="q.dtype=torch.bfloat16"):
        flash_attn_func(q, k, v, backend="triton")


def test_sdpa_rejects_gqa_without_enable_gqa():
    q, k, v = (t.transpose(1, 2) for t in _qkv(h=4, hk=2))
    with pytest.raises(ValueError, match="query and key must have the same number of heads"):
        scaled_dot_product_attention(q, k, v)


def test_sdpa_rejects_mask_with_is_causal():
    q, k, v = (t.transpose(1, 2) for t in _qkv(h=2, hk=2))
    with pytest.raises(ValueError, match="attn_mask must be None when is_causal=True"):
        scaled_dot_product_attention(
            q, k, v, attn_mask=torch.ones(5, 7, dtype=torch.bool), is_causal=True
        )


def test_sdpa_rejects_unbroadcastable_mask():
    q, k, v = (t.transpose(1, 2) for t in _qkv(h=2, hk=2))
    with pytest.raises(ValueError, match="attn_mask must broadcast to"):
        scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(5, 6, dtype=torch.bool))


def test_sdpa_rejects_integer_mask():
    q, k, v = (t.transpose(1, 2) for t in _qkv(h=2, hk=2))
    with pytest.raises(TypeError, match="attn_mask must be bool or floating point"):
        scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(5, 7, dtype=torch.int64))


def test_sdpa_rejects_mask_on_triton():
    q, k, v = (t.transpose(1, 2) for t in _qkv(h=2, hk=2))
    with pytest.raises(ValueError, match="backend='triton' does not take attn_mask"):
        scaled_dot_product_attention(
            q, k, v, attn_mask=torch.ones(5, 7, dtype=torch.bool), backend="triton"
        )


def test_reference_validates_too():
    q, k, v = _qkv(h=4, hk=3)
    with pytest.raises(ValueError, match="must be divisible"):
        flashattn_lite.attention_reference(q, k, v)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_double_backward_is_a_clear_error(backend):
    """The backward is not itself differentiable: differentiating it again must raise, not
    silently drop the attention's second-order terms (e.g. in a gradient penalty)."""
    if backend == "triton":
        pytest.importorskip("triton")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    q, k, v = (t.to(device).requires_grad_() for t in _qkv(sq=16, sk=16))
    out = flash_attn_func(q, k, v, backend=backend)
    (dq,) = torch.autograd.grad(out.square().sum(), q, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        dq.sum().backward()
