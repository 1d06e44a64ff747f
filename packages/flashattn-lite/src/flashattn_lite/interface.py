"""The public entry points: flash-attn's ``flash_attn_func`` and an SDPA-shaped twin.

Both check their inputs, turn the masking arguments into one ``Band`` and hand the
tensors to a backend: the Triton kernels (CUDA, or the CPU under ``TRITON_INTERPRET=1``)
or the tiled PyTorch path. Neither backend materialises the score matrix.
"""

from __future__ import annotations

import math
import os

import torch

from .masking import Band, flash_band, sdpa_band
from .tiled import DEFAULT_BACKWARD_BLOCKS, DEFAULT_FORWARD_BLOCKS, tiled_attention
from .validation import check_flash_inputs, check_qkv, check_scale

BACKENDS = ("auto", "torch", "triton")
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def triton_interpreter_enabled() -> bool:
    """True when Triton runs kernels on the CPU through its interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _resolve_backend(backend: object, q: torch.Tensor, has_mask: bool = False) -> str:
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "triton" if q.is_cuda and not has_mask and q.dtype in TRITON_DTYPES else "torch"
    if backend == "triton":
        if has_mask:
            raise ValueError(
                "backend='triton' does not take attn_mask (only is_causal); use backend='torch' "
                "or 'auto' for boolean/additive masks"
            )
        if not q.is_cuda and not (q.device.type == "cpu" and triton_interpreter_enabled()):
            raise ValueError(
                f"backend='triton' needs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1), "
                f"got tensors on {q.device}"
            )
        if q.dtype not in TRITON_DTYPES:
            raise TypeError(
                f"backend='triton' supports float16, bfloat16 and float32, got q.dtype={q.dtype}"
            )
        if q.dtype == torch.bfloat16 and not q.is_cuda:
            # Triton's CPU interpreter multiplies the raw bits of bfloat16 tiles in tl.dot
            raise TypeError(
                "backend='triton' on the CPU interpreter supports float16 and float32 only "
                f"(its bfloat16 tl.dot is wrong), got q.dtype={q.dtype}; use backend='torch'"
            )
    return backend


def _attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    band: Band,
    attn_mask: torch.Tensor | None,
    backend: str,
    deterministic: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flash layout in, ``(out (B, Sq, H, D), lse (B, H, Sq) float32)`` out."""
    if backend == "triton":
        from .triton_attention import triton_attention  # imports triton only now

        return triton_attention(q, k, v, scale, band, deterministic)
    out, lse = tiled_attention(
        q, k, v, scale, band, attn_mask, DEFAULT_FORWARD_BLOCKS, DEFAULT_BACKWARD_BLOCKS
    )
    return out, lse.float()


def flash_attn_func(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    softmax_scale: float | None = None,
    window_size: tuple[int, int] = (-1, -1),
    return_lse: bool = False,
    backend: str = "auto",
    deterministic: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Exact softmax attention, tiled, with ``flash_attn.flash_attn_func``'s interface.

    Args:
        q: ``(batch, seqlen_q, nheads, headdim)``; float16/bfloat16/float32 on CUDA,
            float32/float64/bfloat16 (and float16) on the CPU. Head dim a multiple of 8,
            at most 256. Any strides (the Triton path copies if the last dim is strided).
        k, v: ``(batch, seqlen_k, nheads_k, headdim)`` with ``nheads % nheads_k == 0``
            (multi-query and grouped-query attention: query head ``h`` reads key/value
            head ``h // (nheads // nheads_k)``).
        causal: query ``i`` sees keys ``j <= i + seqlen_k - seqlen_q`` (the mask is aligned
            to the bottom-right corner, as flash-attn >= 2.1).
        softmax_scale: multiplies ``q @ k^T``; default ``1 / sqrt(headdim)``.
        window_size: ``(left, right)``: query ``i`` sees keys ``j`` with
            ``i + seqlen_k - seqlen_q - left <= j <= i + seqlen_k - seqlen_q + right``;
            ``-1`` leaves that side unbounded. With ``causal=True`` right is 0.
        return_lse: also return the natural-log log-sum-exp of each row of scores.
        backend: ``"triton"`` (CUDA, or the CPU with ``TRITON_INTERPRET=1``), ``"torch"``
            (tiled online softmax in PyTorch, recomputing backward, O(N) memory) or
            ``"auto"`` (triton on CUDA, torch elsewhere).
        deterministic: Triton backward only: accumulate dQ in a separate pass instead of
            with atomic adds, so that gradients are bitwise reproducible. The torch path
            is always deterministic.

    Returns:
        ``out`` with q's shape and dtype; with ``return_lse=True`` also ``lse``
        ``(batch, nheads, seqlen_q)`` float32 (not differentiable). A query row that sees
        no key gives ``out = 0`` and ``lse = -inf``. Differentiable in q, k and v.

    Matches ``attention_reference`` in float64, and
    ``torch.nn.functional.scaled_dot_product_attention`` wherever the masks coincide.
    """
    check_flash_inputs(q, k, v, causal=causal, window_size=window_size, softmax_scale=softmax_scale)
    if not isinstance(return_lse, bool):
        raise TypeError(f"return_lse must be a bool, got {type(return_lse).__name__}")
    if not isinstance(deterministic, bool):
        raise TypeError(f"deterministic must be a bool, got {type(deterministic).__name__}")
    resolved = _resolve_backend(backend, q)
    scale = 1.0 / math.sqrt(q.shape[-1]) if softmax_scale is None else float(softmax_scale)
    band = flash_band(q.shape[1], k.shape[1], causal, tuple(window_size))
    out, lse = _attention(q, k, v, scale, band, None, resolved, deterministic)
    return (out, lse) if return_lse else out


def _normalise_mask(
    attn_mask: object, batch: int, nheads: int, seqlen_q: int, seqlen_k: int
) -> torch.Tensor:
    if not isinstance(attn_mask, torch.Tensor):
        raise TypeError(f"attn_mask must be a torch.Tensor or None, got {type(attn_mask).__name__}")
    if not (attn_mask.dtype == torch.bool or attn_mask.is_floating_point()):
        raise TypeError(f"attn_mask must be bool or floating point, got {attn_mask.dtype}")
    if attn_mask.requires_grad:
        raise ValueError(
            "attn_mask must not require grad (gradients flow to query, key, value only)"
        )
    if attn_mask.dim() > 4:
        raise ValueError(f"attn_mask must have at most 4 dims, got shape {tuple(attn_mask.shape)}")
    mask = attn_mask.reshape((1,) * (4 - attn_mask.dim()) + tuple(attn_mask.shape))
    target = (batch, nheads, seqlen_q, seqlen_k)
    if any(m not in (1, t) for m, t in zip(mask.shape, target, strict=True)):
        raise ValueError(
            f"attn_mask must broadcast to (batch, heads, L, S) = {target}, "
            f"got shape {tuple(attn_mask.shape)}"
        )
    # keep broadcast batch/head dims at 1 (cheap), expand the sequence dims (slicing needs them)
    return mask.expand(mask.shape[0], mask.shape[1], seqlen_q, seqlen_k)


def scaled_dot_product_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """``torch.nn.functional.scaled_dot_product_attention`` on the same engine.

    Args:
        query: ``(batch, heads, L, headdim)``.
        key, value: ``(batch, heads_k, S, headdim)``; ``heads_k != heads`` needs
            ``enable_gqa=True`` (as in torch). Value must share the head dim.
        attn_mask: None, or a bool (True = attend) / additive float mask broadcastable to
            ``(batch, heads, L, S)``. A mask makes ``backend="auto"`` use the tiled torch
            path (the mask is sliced per tile; its gradient is not computed).
        is_causal: lower-triangular mask aligned to the top-left corner, as torch's SDPA
            (unlike ``flash_attn_func``'s bottom-right ``causal``). Not with attn_mask.
        scale: default ``1 / sqrt(headdim)``.
        backend: as in ``flash_attn_func``.

    Returns:
        ``(batch, heads, L, headdim)`` in query's dtype. Rows that see no key are 0
        (torch's math backend gives nan there). No dropout.
    """
    check_qkv(query, key, value, ("query", "key", "value"), "bhsd")
    if not isinstance(is_causal, bool):
        raise TypeError(f"is_causal must be a bool, got {type(is_causal).__name__}")
    check_scale(scale, "scale")
    nheads, nheads_k = query.shape[1], key.shape[1]
    if nheads != nheads_k and not enable_gqa:
        raise ValueError(
            "query and key must have the same number of heads unless enable_gqa=True, "
            f"got {nheads} and {nheads_k}"
        )
    mask = None
    if attn_mask is not None:
        if is_causal:
            raise ValueError("attn_mask must be None when is_causal=True (as in torch's SDPA)")
        mask = _normalise_mask(attn_mask, query.shape[0], nheads, query.shape[2], key.shape[2])
    resolved = _resolve_backend(backend, query, has_mask=mask is not None)
    sm_scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else float(scale)
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))  # (B, S, H, D) views
    out, _ = _attention(q, k, v, sm_scale, sdpa_band(is_causal), mask, resolved, False)
    return out.transpose(1, 2)
