"""Triton backward kernels of flashattn-lite.

``delta = rowsum(dO * O)`` first; then one program per (key block, batch x key head)
recomputes ``P = exp(S - lse)`` tile by tile and accumulates dK and dV for every query
head of its group (no atomics for dK/dV). dQ is either atomically added from that same
pass (fast) or, with ``deterministic=True``, computed by a separate pass over key blocks
per query block.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .triton_forward import BWD_CONFIGS, _band_mask, _key_block_range, _prune_by_head_dim

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
