"""Triton forward kernel of flashattn-lite, and the helpers the backward shares.

One program per (block of BLOCK_M queries, batch x head). It streams BLOCK_N keys at a
time and keeps the online softmax state (running max ``m``, denominator ``l``,
unnormalised output ``acc``) in registers. Only key blocks that meet the band are
visited; of those, blocks fully inside the band skip the element-wise mask. Scores are
kept in base 2 (``exp2`` is the native instruction), so ``lse`` is converted back to
natural log at the end.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

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
