"""The readable definition: softmax attention with the full score matrix materialised.

This is what the tests compare every fast path against (usually after casting the
inputs to float64). It uses O(seqlen_q * seqlen_k) memory on purpose: nothing is tiled,
nothing is fused, so each line can be checked by eye.
"""

from __future__ import annotations

import math

import torch

from .validation import check_flash_inputs


def flash_mask_reference(
    seqlen_q: int, seqlen_k: int, causal: bool, window_size: tuple[int, int], device=None
) -> torch.Tensor:
    """``(seqlen_q, seqlen_k)`` bool, True where query ``i`` may attend key ``j``.

    Written straight from flash-attn's documentation (and independent of the ``Band``
    the fast paths use): both masks are aligned to the bottom-right corner, so query ``i``
    sits at key position ``i + seqlen_k - seqlen_q``.
    """
    i = torch.arange(seqlen_q, device=device)[:, None]  # (Sq, 1)
    j = torch.arange(seqlen_k, device=device)[None, :]  # (1, Sk)
    pos = i + seqlen_k - seqlen_q  # the key position aligned with query i
    allowed = torch.ones(seqlen_q, seqlen_k, dtype=torch.bool, device=device)
    left, right = window_size
    if causal:
        allowed &= j <= pos
    if left >= 0:
        allowed &= j >= pos - left
    if right >= 0:
        allowed &= j <= pos + right
    return allowed


def masked_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor, softmax_scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Materialised attention in flash layout under a bool mask broadcastable to ``(B, H, Sq, Sk)``.

    q ``(B, Sq, H, D)``, k/v ``(B, Sk, Hk, D)``. Returns ``out (B, Sq, H, D)`` and
    ``lse (B, H, Sq)`` in q's dtype. Rows that see no key give ``out = 0``, ``lse = -inf``.
    """
    group = q.shape[2] // k.shape[2]
    qh = q.transpose(1, 2)  # (B, H, Sq, D)
    kh = k.transpose(1, 2).repeat_interleave(group, dim=1)  # (B, H, Sk, D)
    vh = v.transpose(1, 2).repeat_interleave(group, dim=1)  # (B, H, Sk, D)
    scores = (qh @ kh.transpose(-1, -2)) * softmax_scale  # (B, H, Sq, Sk)
    scores = scores.masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # (B, H, Sq); -inf where a row sees nothing
    # exp(-inf - (-inf)) would be nan: give empty rows a finite shift, their p is 0 anyway
    shift = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
    probs = torch.exp(scores - shift[..., None])  # (B, H, Sq, Sk)
    out = probs @ vh  # (B, H, Sq, D)
    return out.transpose(1, 2), lse


def attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    softmax_scale: float | None = None,
    window_size: tuple[int, int] = (-1, -1),
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Plain softmax attention with flash-attn's interface, computed in the inputs' dtype.

    Args:
        q: ``(batch, seqlen_q, nheads, headdim)``.
        k, v: ``(batch, seqlen_k, nheads_k, headdim)``, ``nheads % nheads_k == 0``.
        causal: bottom-right aligned causal mask (flash-attn >= 2.1).
        softmax_scale: defaults to ``1 / sqrt(headdim)``.
        window_size: ``(left, right)`` sliding window, ``-1`` = unbounded.
        return_lse: also return the natural-log log-sum-exp ``(batch, nheads, seqlen_q)``.

    Returns:
        ``out`` shaped like q (and ``lse`` in float32 when asked), matching
        ``flash_attn.flash_attn_func`` and, without masks,
        ``torch.nn.functional.scaled_dot_product_attention``. Memory is
        O(seqlen_q * seqlen_k): use it for tests, not for long sequences.
    """
    check_flash_inputs(q, k, v, causal=causal, window_size=window_size)
    scale = 1.0 / math.sqrt(q.shape[-1]) if softmax_scale is None else float(softmax_scale)
    allowed = flash_mask_reference(q.shape[1], k.shape[1], causal, tuple(window_size), q.device)
    out, lse = masked_attention_reference(q, k, v, allowed, scale)
    return (out, lse.float()) if return_lse else out
