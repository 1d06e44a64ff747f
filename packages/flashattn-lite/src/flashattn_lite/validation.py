"""Input checks shared by every entry point: fail early, name the argument."""

from __future__ import annotations

import math
import numbers

import torch

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
MAX_HEAD_DIM = 256


def _check_tensor(name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    return t


def check_qkv(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, names: tuple[str, str, str], layout: str
) -> None:
    """Shapes in ``layout`` (``"bshd"`` for flash-attn, ``"bhsd"`` for SDPA)."""
    nq, nk, nv = names
    dims = (
        "batch, seqlen, nheads, headdim" if layout == "bshd" else "batch, nheads, seqlen, headdim"
    )
    for name, t in zip(names, (q, k, v), strict=True):
        _check_tensor(name, t)
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D ({dims}), got shape {tuple(t.shape)}")
        if t.numel() == 0:
            raise ValueError(f"{name} must have no empty dimension, got shape {tuple(t.shape)}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(
            f"{nq}, {nk} and {nv} must share a dtype, got {q.dtype}, {k.dtype} and {v.dtype}"
        )
    if k.device != q.device or v.device != q.device:
        raise ValueError(
            f"{nq}, {nk} and {nv} must be on one device, got {q.device}, {k.device} and {v.device}"
        )
    if k.shape != v.shape:
        raise ValueError(
            f"{nk} and {nv} must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}"
        )
    head_dim_ax = 2 if layout == "bshd" else 1
    if k.shape[0] != q.shape[0]:
        raise ValueError(
            f"{nq} and {nk} must have the same batch size, got {q.shape[0]} and {k.shape[0]}"
        )
    if k.shape[3] != q.shape[3]:
        raise ValueError(
            f"{nq} and {nk} must have the same head dim, got {q.shape[3]} and {k.shape[3]}"
        )
    head_dim = q.shape[3]
    if head_dim % 8 != 0 or head_dim > MAX_HEAD_DIM:
        raise ValueError(
            f"{nq} head dim must be a multiple of 8 and at most {MAX_HEAD_DIM}, got {head_dim}"
        )
    nheads, nheads_k = q.shape[head_dim_ax], k.shape[head_dim_ax]
    if nheads % nheads_k != 0:
        raise ValueError(
            f"the number of heads of {nq} ({nheads}) must be divisible by that of {nk} ({nheads_k})"
        )


def check_scale(softmax_scale: object, name: str = "softmax_scale") -> None:
    if softmax_scale is None:
        return
    if isinstance(softmax_scale, bool) or not isinstance(softmax_scale, numbers.Real):
        raise TypeError(f"{name} must be a real number or None, got {type(softmax_scale).__name__}")
    if not math.isfinite(float(softmax_scale)):
        raise ValueError(f"{name} must be finite, got {softmax_scale}")


def check_window(window_size: object, causal: bool) -> tuple[int, int]:
    if (
        not isinstance(window_size, (tuple, list))
        or len(window_size) != 2
        or not all(isinstance(w, int) and not isinstance(w, bool) for w in window_size)
    ):
        raise TypeError(f"window_size must be a pair of ints (left, right), got {window_size!r}")
    left, right = window_size
    if left < -1 or right < -1:
        raise ValueError(
            f"window_size entries must be >= -1 (-1 = unbounded), got {tuple(window_size)}"
        )
    if causal and right not in (-1, 0):
        raise ValueError(
            f"window_size right must be -1 or 0 when causal=True (causal sets it to 0), got {right}"
        )
    return int(left), int(right)


def check_flash_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool,
    window_size: object,
    softmax_scale: object = None,
) -> None:
    """All checks of ``flash_attn_func`` (flash layout ``(batch, seqlen, nheads, headdim)``)."""
    check_qkv(q, k, v, ("q", "k", "v"), "bshd")
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    check_window(window_size, causal)
    check_scale(softmax_scale)
