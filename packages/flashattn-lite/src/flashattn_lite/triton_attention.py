"""FlashAttention-2 in Triton: forward kernel, backward kernels, autograd.Function, wrapper.

Read top to bottom like the Triton fused-attention tutorial. Tensors stay in flash
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

import os

import torch
import triton
import triton.language as tl

from .masking import Band

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _configs(shapes: list[tuple[int, int, int, int]]) -> list[triton.Config]:
    if _INTERPRET:  # the interpreter runs numpy: one small config, no tuning
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=4, num_stages=1)]
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
        for bm, bn, w, s in shapes
    ]


def _prune_by_head_dim(configs, named_args, **kwargs):
    # large tiles with large head dims overflow shared memory; drop them before timing
    head_dim = kwargs.get("HEAD_DIM_PAD", named_args.get("HEAD_DIM_PAD", 64))
    kept = [
        c
        for c in configs
        if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] * head_dim <= 128 * 128 * 128
    ]
    return kept or configs[:1]


FWD_CONFIGS = _configs(
    [
        (128, 64, 4, 3),
        (128, 64, 8, 3),
        (128, 128, 8, 3),
        (64, 64, 4, 3),
        (128, 32, 4, 4),
        (64, 32, 4, 2),
    ]
)
BWD_CONFIGS = _configs(
    [(64, 64, 4, 2), (64, 128, 8, 2), (128, 64, 8, 2), (32, 64, 4, 2), (64, 32, 4, 1)]
)


# ----------------------------------------------------------------------------- forward


@triton.jit
def _band_mask(
    offs_m,
    offs_n,
    seqlen_k,
    diagonal,
    win_left,
    win_right,
    HAS_LEFT: tl.constexpr,
    HAS_RIGHT: tl.constexpr,
):
    """(BLOCK_M, BLOCK_N) True where key ``n`` exists and lies in query ``m``'s band."""
    ok = offs_n[None, :] < seqlen_k
    rel = offs_n[None, :] - offs_m[:, None] - diagonal
    if HAS_LEFT:
        ok = ok & (rel >= -win_left)
    if HAS_RIGHT:
        ok = ok & (rel <= win_right)
    return ok


@triton.jit
def _key_block_range(
    m_start,
    seqlen_q,
    seqlen_k,
    diagonal,
    win_left,
    win_right,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_LEFT: tl.constexpr,
    HAS_RIGHT: tl.constexpr,
):
    """Key blocks met by queries [m_start, m_start + BLOCK_M): ``[lo, hi)``, of which
    ``[inner_lo, inner_hi)`` lie fully inside the band for every query (no mask needed)."""
    m_last = tl.minimum(m_start + BLOCK_M, seqlen_q) - 1
    lo = 0
    inner_lo = 0
    hi_key = seqlen_k
    inner_hi_key = seqlen_k
    if HAS_LEFT:
        lo = tl.maximum(m_start + diagonal - win_left, 0)
        inner_lo = tl.maximum(m_last + diagonal - win_left, 0)
    if HAS_RIGHT:
        hi_key = tl.minimum(m_last + diagonal + win_right + 1, seqlen_k)
        inner_hi_key = tl.minimum(m_start + diagonal + win_right + 1, seqlen_k)
    blk_lo = lo // BLOCK_N
    blk_hi = tl.maximum(tl.cdiv(tl.maximum(hi_key, 0), BLOCK_N), blk_lo)
    inner_lo_blk = tl.minimum(tl.maximum(tl.cdiv(inner_lo, BLOCK_N), blk_lo), blk_hi)
    inner_hi_blk = tl.minimum(
        tl.maximum(tl.maximum(inner_hi_key, 0) // BLOCK_N, inner_lo_blk), blk_hi
    )
    return blk_lo, inner_lo_blk, inner_hi_blk, blk_hi


@triton.jit
def _fwd_blocks(
    acc,
    m_i,
    l_i,
    q,
    k_base,
    v_base,
    stride_kn,
    stride_vn,
    offs_m,
    offs_d,
    d_ok,
    blk_start,
    blk_end,
    seqlen_k,
    diagonal,
    win_left,
    win_right,
    qk_scale,
    BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr,
    HAS_LEFT: tl.constexpr,
    HAS_RIGHT: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Online softmax over key blocks [blk_start, blk_end), in base 2."""
    for blk in range(blk_start, blk_end):
        offs_n = blk * BLOCK_N + tl.arange(0, BLOCK_N)
        kv_ok = (offs_n[:, None] < seqlen_k) & d_ok[None, :]
        k = tl.load(k_base + offs_n[:, None] * stride_kn + offs_d[None, :], mask=kv_ok, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # (BM, BN)
        if MASKED:
            ok = _band_mask(
                offs_m, offs_n, seqlen_k, diagonal, win_left, win_right, HAS_LEFT, HAS_RIGHT
            )
            s = tl.where(ok, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing seen yet
        else:
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_shift = m_new
        p = tl.math.exp2(s - m_shift[:, None])  # (BM, BN)
        alpha = tl.math.exp2(m_i - m_shift)  # rescales the old sums to the new max
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :], mask=kv_ok, other=0.0)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=PRECISION)  # (BM, D)
        m_i = m_new
    return acc, m_i, l_i


@triton.autotune(
    configs=FWD_CONFIGS,
    key=["HEAD_DIM_PAD", "HAS_LEFT", "HAS_RIGHT", "seqlen_q", "seqlen_k"],
    prune_configs_by={"early_config_prune": _prune_by_head_dim},
)
@triton.jit
def _attn_fwd(
    Q,
    K,
    V,
    Out,
    Lse,
    sm_scale,
    stride_qb,
    stride_qm,
    stride_qh,
    stride_kb,
    stride_kn,
    stride_kh,
    stride_vb,
    stride_vn,
    stride_vh,
    stride_ob,
    stride_om,
    stride_oh,
    nheads,
    group,
    seqlen_q,
    seqlen_k,
    diagonal,
    win_left,
    win_right,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PAD: tl.constexpr,
    HAS_LEFT: tl.constexpr,
    HAS_RIGHT: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    start_m = tl.program_id(0)
    off_bh = tl.program_id(1)
    off_b = off_bh // nheads
    off_h = off_bh % nheads
    off_hk = off_h // group  # grouped-query attention: read the shared key/value head
    m_start = start_m * BLOCK_M
    offs_m = m_start + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    d_ok = offs_d < HEAD_DIM
    q_base = Q + off_b.to(tl.int64) * stride_qb + off_h * stride_qh
    k_base = K + off_b.to(tl.int64) * stride_kb + off_hk * stride_kh
    v_base = V + off_b.to(tl.int64) * stride_vb + off_hk * stride_vh
    q_ok = (offs_m[:, None] < seqlen_q) & d_ok[None, :]
    q = tl.load(q_base + offs_m[:, None] * stride_qm + offs_d[None, :], mask=q_ok, other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM_PAD], dtype=tl.float32)
    qk_scale = sm_scale * 1.4426950408889634  # log2(e): work in base 2
    blk_lo, inner_lo, inner_hi, blk_hi = _key_block_range(
        m_start,
        seqlen_q,
        seqlen_k,
        diagonal,
        win_left,
        win_right,
        BLOCK_M,
        BLOCK_N,
        HAS_LEFT,
        HAS_RIGHT,
    )
    # blocks on the band's left edge, the interior (no mask), the right edge / ragged end
    acc, m_i, l_i = _fwd_blocks(
        acc,
        m_i,
        l_i,
        q,
        k_base,
        v_base,
        stride_kn,
        stride_vn,
        offs_m,
        offs_d,
        d_ok,
        blk_lo,
        inner_lo,
        seqlen_k,
        diagonal,
        win_left,
        win_right,
        qk_scale,
        BLOCK_N,
        True,
        HAS_LEFT,
        HAS_RIGHT,
        PRECISION,
    )
    acc, m_i, l_i = _fwd_blocks(
        acc,
        m_i,
        l_i,
        q,
        k_base,
        v_base,
        stride_kn,
        stride_vn,
        offs_m,
        offs_d,
        d_ok,
        inner_lo,
        inner_hi,
        seqlen_k,
        diagonal,
        win_left,
        win_right,
        qk_scale,
        BLOCK_N,
        False,
        HAS_LEFT,
        HAS_RIGHT,
        PRECISION,
    )
    acc, m_i, l_i = _fwd_blocks(
        acc,
        m_i,
        l_i,
        q,
        k_base,
        v_base,
        stride_kn,
        stride_vn,
        offs_m,
        offs_d,
        d_ok,
        inner_hi,
        blk_hi,
        seqlen_k,
        diagonal,
        win_left,
        win_right,
        qk_scale,
        BLOCK_N,
        True,
        HAS_LEFT,
        HAS_RIGHT,
        PRECISION,
    )

    seen = l_i > 0.0  # False for rows whose band holds no key: out 0, lse -inf
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    lse = tl.where(
        seen, (m_i + tl.math.log2(tl.where(seen, l_i, 1.0))) * 0.6931471805599453, float("-inf")
    )
    o_base = Out + off_b.to(tl.int64) * stride_ob + off_h * stride_oh
    tl.store(
        o_base + offs_m[:, None] * stride_om + offs_d[None, :],
        out.to(Out.dtype.element_ty),
        mask=q_ok,
    )
    tl.store(Lse + off_bh.to(tl.int64) * seqlen_q + offs_m, lse, mask=offs_m < seqlen_q)


# ----------------------------------------------------------------------------- backward


@triton.jit
def _bwd_delta(
    Out,
    DOut,
    Delta,
    stride_ob,
    stride_om,
    stride_oh,
    stride_db,
    stride_dm,
    stride_dh,
    nheads,
    seqlen_q,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """delta[b, h, m] = sum_d dO * O: the row term of the softmax backward."""
    off_bh = tl.program_id(1)
    off_b = off_bh // nheads
    off_h = off_bh % nheads
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    ok = (offs_m[:, None] < seqlen_q) & (offs_d[None, :] < HEAD_DIM)
    o = tl.load(
        Out
        + off_b.to(tl.int64) * stride_ob
        + off_h * stride_oh
        + offs_m[:, None] * stride_om
        + offs_d[None, :],
        mask=ok,
        other=0.0,
    ).to(tl.float32)
    do = tl.load(
        DOut
        + off_b.to(tl.int64) * stride_db
        + off_h * stride_dh
        + offs_m[:, None] * stride_dm
        + offs_d[None, :],
        mask=ok,
        other=0.0,
    ).to(tl.float32)
    tl.store(
        Delta + off_bh.to(tl.int64) * seqlen_q + offs_m, tl.sum(o * do, 1), mask=offs_m < seqlen_q
    )


@triton.jit
def _load_lse_base2(Lse, row_base, offs_m, seqlen_q):
    # rows that saw nothing (lse = -inf) and padding rows get +inf, making their P exactly 0
    lse = tl.load(Lse + row_base + offs_m, mask=offs_m < seqlen_q, other=float("inf"))
    return tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)


@triton.autotune(
    configs=BWD_CONFIGS,
    key=["HEAD_DIM_PAD", "HAS_LEFT", "HAS_RIGHT", "ATOMIC_DQ", "seqlen_q", "seqlen_k"],
    prune_configs_by={"early_config_prune": _prune_by_head_dim},
    reset_to_zero=["DQ"],
)
@triton.jit
def _attn_bwd_dkdv(
    Q,
    K,
    V,
    DO,
    DQ,
    DK,
    DV,
    Lse,
    Delta,
    sm_scale,
    stride_qb,
    stride_qm,
    stride_qh,
    stride_kb,
    stride_kn,
    stride_kh,
    stride_vb,
    stride_vn,
    stride_vh,
    stride_dob,
    stride_dom,
    stride_doh,
    stride_dqb,
    stride_dqm,
    stride_dqh,
    stride_dkb,
    stride_dkn,
    stride_dkh,
    stride_dvb,
    stride_dvn,
    stride_dvh,
    nheads,
    nheads_k,
    group,
    seqlen_q,
    seqlen_k,
    diagonal,
    win_left,
    win_right,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PAD: tl.constexpr,
    HAS_LEFT: tl.constexpr,
    HAS_RIGHT: tl.constexpr,
    ATOMIC_DQ: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """dK, dV of one key block (summed over the group's query heads); dQ by atomics if asked."""
    off_bhk = tl.program_id(1)
    off_b = off_bhk // nheads_k
    off_hk = off_bhk % nheads_k
    n_start = tl.program_id(0) * BLOCK_N
    offs_n = n_start + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    d_ok = offs_d < HEAD_DIM
    kv_ok = (offs_n[:, None] < seqlen_k) & d_ok[None, :]
    k = tl.load(
        K
        + off_b.to(tl.int64) * stride_kb
        + off_hk * stride_kh
        + offs_n[:, None] * stride_kn
        + offs_d[None, :],
        mask=kv_ok,
        other=0.0,
    )  # (BN, D)
    v = tl.load(
        V
        + off_b.to(tl.int64) * stride_vb
        + off_hk * stride_vh
        + offs_n[:, None] * stride_vn
        + offs_d[None, :],
        mask=kv_ok,
        other=0.0,
    )  # (BN, D)
    dk = tl.zeros([BLOCK_N, HEAD_DIM_PAD], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM_PAD], dtype=tl.float32)
    qk_scale = sm_scale * 1.4426950408889634

    # queries whose band meets keys [n_start, n_last]: i in [j - diag - right, j - diag + left]
    n_last = tl.minimum(n_start + BLOCK_N, seqlen_k) - 1
    q_lo = 0
    q_hi = seqlen_q
    if HAS_RIGHT:
        q_lo = tl.maximum(n_start - diagonal - win_right, 0)
    if HAS_LEFT:
        q_hi = tl.minimum(n_last - diagonal + win_left + 1, seqlen_q)
    blk_lo = tl.minimum(q_lo, seqlen_q) // BLOCK_M
    blk_hi = tl.maximum(tl.cdiv(tl.maximum(q_hi, 0), BLOCK_M), blk_lo)

    for g in range(0, group):
        off_h = off_hk * group + g
        q_base = Q + off_b.to(tl.int64) * stride_qb + off_h * stride_qh
        do_base = DO + off_b.to(tl.int64) * stride_dob + off_h * stride_doh
        row_base = (off_b * nheads + off_h).to(tl.int64) * seqlen_q
        for blk in range(blk_lo, blk_hi):
            offs_m = blk * BLOCK_M + tl.arange(0, BLOCK_M)
            q_ok = (offs_m[:, None] < seqlen_q) & d_ok[None, :]
            q = tl.load(
                q_base + offs_m[:, None] * stride_qm + offs_d[None, :], mask=q_ok, other=0.0
            )  # (BM, D)
            do = tl.load(
                do_base + offs_m[:, None] * stride_dom + offs_d[None, :], mask=q_ok, other=0.0
            )
            lse2 = _load_lse_base2(Lse, row_base, offs_m, seqlen_q)  # (BM,)
            delta = tl.load(Delta + row_base + offs_m, mask=offs_m < seqlen_q, other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # (BM, BN)
            ok = _band_mask(
                offs_m, offs_n, seqlen_k, diagonal, win_left, win_right, HAS_LEFT, HAS_RIGHT
            )
            p = tl.where(ok, tl.math.exp2(s - lse2[:, None]), 0.0)  # (BM, BN) recomputed P
            dv = tl.dot(tl.trans(p.to(do.dtype)), do, dv, input_precision=PRECISION)  # (BN, D)
            dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)  # (BM, BN)
            ds = p * (dp - delta[:, None])  # (BM, BN)
            dk = tl.dot(tl.trans(ds.to(q.dtype)), q, dk, input_precision=PRECISION)  # (BN, D)
            if ATOMIC_DQ:
                dq = tl.dot(ds.to(k.dtype), k, input_precision=PRECISION) * sm_scale  # (BM, D)
                dq_ptrs = (
                    DQ
                    + off_b.to(tl.int64) * stride_dqb
                    + off_h * stride_dqh
                    + offs_m[:, None] * stride_dqm
                    + offs_d[None, :]
                )
                tl.atomic_add(dq_ptrs, dq, mask=q_ok)

    dk = dk * sm_scale
    tl.store(
        DK
        + off_b.to(tl.int64) * stride_dkb
        + off_hk * stride_dkh
        + offs_n[:, None] * stride_dkn
        + offs_d[None, :],
        dk.to(DK.dtype.element_ty),
        mask=kv_ok,
    )
    tl.store(
        DV
        + off_b.to(tl.int64) * stride_dvb
        + off_hk * stride_dvh
        + offs_n[:, None] * stride_dvn
        + offs_d[None, :],
        dv.to(DV.dtype.element_ty),
        mask=kv_ok,
    )


@triton.autotune(
    configs=BWD_CONFIGS,
    key=["HEAD_DIM_PAD", "HAS_LEFT", "HAS_RIGHT", "seqlen_q", "seqlen_k"],
    prune_configs_by={"early_config_prune": _prune_by_head_dim},
)
@triton.jit
def _attn_bwd_dq(
    Q,
    K,
    V,
    DO,
    DQ,
    Lse,
    Delta,
    sm_scale,
    stride_qb,
    stride_qm,
    stride_qh,
    stride_kb,
    stride_kn,
    stride_kh,
    stride_vb,
    stride_vn,
    stride_vh,
    stride_dob,
    stride_dom,
    stride_doh,
    stride_dqb,
    stride_dqm,
    stride_dqh,
    nheads,
    group,
    seqlen_q,
    seqlen_k,
    diagonal,
    win_left,
    win_right,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PAD: tl.constexpr,
    HAS_LEFT: tl.constexpr,
    HAS_RIGHT: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """dQ of one query block, looping over its key blocks: deterministic, no atomics."""
    off_bh = tl.program_id(1)
    off_b = off_bh // nheads
    off_h = off_bh % nheads
    off_hk = off_h // group
    m_start = tl.program_id(0) * BLOCK_M
    offs_m = m_start + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    d_ok = offs_d < HEAD_DIM
    q_ok = (offs_m[:, None] < seqlen_q) & d_ok[None, :]
    q = tl.load(
        Q
        + off_b.to(tl.int64) * stride_qb
        + off_h * stride_qh
        + offs_m[:, None] * stride_qm
        + offs_d[None, :],
        mask=q_ok,
        other=0.0,
    )
    do = tl.load(
        DO
        + off_b.to(tl.int64) * stride_dob
        + off_h * stride_doh
        + offs_m[:, None] * stride_dom
        + offs_d[None, :],
        mask=q_ok,
        other=0.0,
    )
    row_base = off_bh.to(tl.int64) * seqlen_q
    lse2 = _load_lse_base2(Lse, row_base, offs_m, seqlen_q)
    delta = tl.load(Delta + row_base + offs_m, mask=offs_m < seqlen_q, other=0.0)
    k_base = K + off_b.to(tl.int64) * stride_kb + off_hk * stride_kh
    v_base = V + off_b.to(tl.int64) * stride_vb + off_hk * stride_vh
    dq = tl.zeros([BLOCK_M, HEAD_DIM_PAD], dtype=tl.float32)
    qk_scale = sm_scale * 1.4426950408889634
    blk_lo, inner_lo, inner_hi, blk_hi = _key_block_range(
        m_start,
        seqlen_q,
        seqlen_k,
        diagonal,
        win_left,
        win_right,
        BLOCK_M,
        BLOCK_N,
        HAS_LEFT,
        HAS_RIGHT,
    )
    for blk in range(blk_lo, blk_hi):
        offs_n = blk * BLOCK_N + tl.arange(0, BLOCK_N)
        kv_ok = (offs_n[:, None] < seqlen_k) & d_ok[None, :]
        k = tl.load(k_base + offs_n[:, None] * stride_kn + offs_d[None, :], mask=kv_ok, other=0.0)
        v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :], mask=kv_ok, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        ok = _band_mask(
            offs_m, offs_n, seqlen_k, diagonal, win_left, win_right, HAS_LEFT, HAS_RIGHT
        )
        p = tl.where(ok, tl.math.exp2(s - lse2[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=PRECISION)
    dq = dq * sm_scale
    tl.store(
        DQ
        + off_b.to(tl.int64) * stride_dqb
        + off_h * stride_dqh
        + offs_m[:, None] * stride_dqm
        + offs_d[None, :],
        dq.to(DQ.dtype.element_ty),
        mask=q_ok,
    )


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
