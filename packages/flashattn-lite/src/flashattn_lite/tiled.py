"""Tiled attention in plain PyTorch: the online softmax forward and a recomputing backward.

The score matrix is never held whole. For one block of queries we stream blocks of
keys, keeping per query row a running maximum ``m``, a running denominator ``l`` and an
unnormalised output ``acc``. When a new key block raises the maximum, what was summed
so far is rescaled by ``exp(m_old - m_new)``; at the end ``out = acc / l`` and
``lse = m + log(l)``. The backward pass saves only ``q, k, v, out, lse`` (O(N) memory)
and recomputes each probability tile as ``exp(s - lse)``.

Layout inside this module: queries ``(B, Hk, G, S, D)`` where ``G = H // Hk`` query heads
share one key/value head, keys and values ``(B, Hk, S, D)``. One tile of scores is
``(heads, G * block_q, block_k)`` for one batch element and a group of kv heads (as many
as fit ``TILE_ELEMENTS`` per intra-op thread), so grouped-query attention costs no copy
of k or v, and k and v tiles are strided views of the inputs.

Exponentials are base 2 (scores carry a factor log2(e), folded into q), as in the GPU
kernels: on the CPU torch's ``exp2`` is several times faster than its ``exp``.

The tiles run one after another on the calling thread, and each tile's operations run
on torch's intra-op threads (the tile budget grows with their number, so that every
operation is large enough to split well). Scratch tiles (scores, the scaled query rows)
are reused, so the loop never allocates a tile and peak memory stays a few tiles plus
O(N) however long the sequence.

When every query fits one block and its keys one tile of the same size (decoding with a
KV cache: a few new queries against the cache), the loop's single pass is run directly
(``_one_tile_forward``), without the running state or scratch buffers.
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

from .masking import Band

# Tile sizes (query rows, keys) per direction, chosen by measurement on a 2-core AVX-512
# CPU at head dim 64. A tile holds the scores of one batch element and as many kv heads
# as fit TILE_ELEMENTS (1 MiB of float32) per intra-op thread: with 2 threads and 8
# heads, all 8 heads x 256 x 256. Every tile costs ~20 torch calls of Python and
# dispatch on top of its two or four GEMMs, so fewer, larger tiles run faster. An
# earlier design ran 1 MiB tiles on a pool of single-threaded Python worker threads:
# those took turns holding the GIL between calls, and lost several milliseconds per call
# to the OpenMP threads that torch leaves spinning after any parallel op (that spin
# lasts until the next parallel region, which the tiles now are).
DEFAULT_FORWARD_BLOCKS = (256, 256)
DEFAULT_BACKWARD_BLOCKS = (256, 256)
TILE_ELEMENTS = 1 << 18

# Every exponential is taken base 2, as in the FlashAttention kernels: scores are scaled by
# log2(e) once (folded into q), so exp(x) = exp2(log2(e) * x). On the CPU torch's exp2 is
# several times faster than its exp, and the exponential is the costliest step after the
# two matmuls of a tile.
LOG2E = math.log2(math.e)
LN2 = math.log(2.0)


def _accum_dtype(dtype: torch.dtype) -> torch.dtype:
    # low precision is accumulated in float32 like the GPU kernels; float64 stays float64
    return torch.float64 if dtype == torch.float64 else torch.float32


class _Scratch:
    """Reusable buffers: ``get(name, shape)`` is a contiguous view of one, grown on
    demand and freed with this object at the end of the call."""

    def __init__(self, dtype: torch.dtype, device: torch.device) -> None:
        self.dtype, self.device = dtype, device
        self.buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        numel = math.prod(shape)
        buf = self.buffers.get(name)
        if buf is None or buf.numel() < numel:
            buf = torch.empty(numel, dtype=self.dtype, device=self.device)
            self.buffers[name] = buf
        return buf[:numel].view(shape)


def _scaled_into(src: torch.Tensor, factor: float, buf: torch.Tensor) -> torch.Tensor:
    """``buf <- src * factor`` in ``buf``'s dtype; returns ``buf``.

    Eager: one ``out=`` multiply. Under torch.compile an elementwise ``out=`` op is
    traced as a new tensor with ``src``'s strides, and the views taken of ``buf``
    afterwards fail; a copy then an in-place multiply keeps ``buf``'s layout.
    """
    if torch.compiler.is_compiling():
        return buf.copy_(src).mul_(factor)
    return torch.mul(src, factor, out=buf)


def _mask_tile(
    scores: torch.Tensor,
    band: Band,
    attn_mask: torch.Tensor | None,
    rows: tuple[int, int],
    keys: tuple[int, int],
    group: int,
) -> None:
    """Apply the band and the optional SDPA mask to one ``(B, Hk, G*bq, bk)`` tile in place.

    The tile holds scores in base-2 units (``log2(e) * scale * q @ k^T``), so an additive
    float mask, given in natural-log units like SDPA's, is scaled by ``log2(e)`` too.
    The band's boolean tile comes from ``Band.blocked`` (shared by every tile, head and
    call with the same pattern) and covers only the keys from ``Band.first_masked_key``.
    """
    (i0, i1), (j0, j1) = rows, keys
    tile = scores.view(scores.shape[0], scores.shape[1], group, i1 - i0, j1 - j0)  # (B,Hk,G,bq,bk)
    if band.needs_mask(i0, i1, j0, j1):
        c0 = band.first_masked_key(i0, j0)
        blocked = band.blocked(i0, i1, c0, j1, device=scores.device)  # (bq, j1 - c0)
        tile[..., c0 - j0 :].masked_fill_(blocked, float("-inf"))
    if attn_mask is not None:
        mask_tile = attn_mask[:, :, :, i0:i1, j0:j1]  # broadcastable to (B, Hk, G, bq, bk)
        if mask_tile.dtype == torch.bool:
            tile.masked_fill_(~mask_tile, float("-inf"))
        else:
            tile.add_(mask_tile.to(tile.dtype), alpha=LOG2E)


def _tile_budget(device: torch.device) -> int:
    """Scores one tile may hold: ``TILE_ELEMENTS`` per intra-op thread on the CPU."""
    if device.type != "cpu" or torch.compiler.is_compiling():
        return TILE_ELEMENTS  # dynamo cannot trace get_num_threads: fixed tiles in a graph
    return TILE_ELEMENTS * torch.get_num_threads()


def tiled_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    band: Band,
    attn_mask: torch.Tensor | None = None,
    block_q: int = DEFAULT_FORWARD_BLOCKS[0],
    block_k: int = DEFAULT_FORWARD_BLOCKS[1],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Online-softmax forward. q ``(B, Hk, G, Sq, D)``, k/v ``(B, Hk, Sk, D)``.

    ``attn_mask`` is None or broadcastable to ``(B, Hk, G, Sq, Sk)``. Returns
    ``out (B, Hk, G, Sq, D)`` in q's dtype and ``lse (B, Hk, G, Sq)`` in the accumulation
    dtype (float32, or float64 for float64 inputs).
    """
    # plain views from here on: slicing an input that requires grad costs autograd
    # bookkeeping on every tile's view, even under no_grad
    q, k, v = q.detach(), k.detach(), v.detach()
    b, hk, g, seqlen_q, d = q.shape
    seqlen_k = k.shape[2]
    acc_dtype = _accum_dtype(q.dtype)
    if seqlen_q <= block_q:
        lo, hi = (0, seqlen_k) if attn_mask is not None else band.key_range(0, seqlen_q, seqlen_k)
        if 0 < hi - lo and g * seqlen_q * (hi - lo) <= block_q * block_k:
            return _one_tile_forward(q, k, v, scale, band, attn_mask, (lo, hi), acc_dtype)
    out = torch.empty_like(q)  # every row is written by the tile of its query block
    lse = torch.empty((b, hk, g, seqlen_q), dtype=acc_dtype, device=q.device)
    scratch = _Scratch(acc_dtype, q.device)
    may_mask = attn_mask is not None or not band.is_full
    floor = torch.finfo(acc_dtype).min

    def query_block(bi: int, h0: int, h1: int, i0: int) -> None:
        """Rows ``[i0, i1)`` of kv heads ``[h0, h1)`` of batch element ``bi``: writes those
        rows of out and lse, nothing else."""
        i1 = min(i0 + block_q, seqlen_q)
        nh = h1 - h0
        lo, hi = (0, seqlen_k) if attn_mask is not None else band.key_range(i0, i1, seqlen_k)
        out_rows, lse_rows = out[bi, h0:h1, :, i0:i1], lse[bi, h0:h1, :, i0:i1]
        if hi <= lo:  # the band skips this whole block of queries: no key, out 0
            out_rows.zero_()
            lse_rows.fill_(-math.inf)
            return
        mask = _tile_of_mask(attn_mask, bi, h0, h1)
        rows = g * (i1 - i0)
        q_tile = scratch.get("q", (nh, g, i1 - i0, d))  # (nh, G, bq, D), scaled copy
        _scaled_into(q[bi, h0:h1, :, i0:i1], scale * LOG2E, q_tile)
        q_tile = q_tile.view(nh, rows, d)
        k_group, v_group = k[bi, h0:h1], v[bi, h0:h1]  # (nh, Sk, D) views
        acc = torch.empty((nh, rows, d), dtype=acc_dtype, device=q.device)
        # running max and sum, (nh, G*bq, 1) so they broadcast over a tile's keys as they
        # are; set by the first key tile
        m = l = None
        for j0 in range(lo, hi, block_k):
            j1 = min(j0 + block_k, hi)
            # k and v tiles are strided views of the inputs (rows H*D apart in the flash
            # layout): the matmuls read them as they are, which measured faster than copying
            # each key tile once per query block into a contiguous buffer
            k_tile, v_tile = k_group[:, j0:j1], v_group[:, j0:j1]  # (nh, bk, D)
            if k_tile.dtype != acc_dtype:  # low precision: products in the accumulation dtype
                k_tile = scratch.get("k", k_tile.shape).copy_(k_tile)
                v_tile = scratch.get("v", v_tile.shape).copy_(v_tile)
            s = scratch.get("s", (nh, rows, j1 - j0))  # (nh, G*bq, bk)
            torch.matmul(q_tile, k_tile.transpose(-1, -2), out=s)  # base-2 scores
            if may_mask:
                _mask_tile(s[None], band, mask, (i0, i1), (j0, j1), g)
            tile_max = s.amax(dim=-1, keepdim=True)  # (nh, G*bq, 1)
            if m is None:  # the first tile sets the running state: nothing to rescale
                m = tile_max
                # a row with every key masked so far has m = -inf: shift it by a finite
                # number instead, so that exp2(-inf - shift) = 0 and never inf - inf
                m_shift = m.clamp_min(floor) if may_mask else m
                p = s.sub_(m_shift).exp2_()  # (nh, G*bq, bk), in place: s is dead
                l = p.sum(dim=-1, keepdim=True)
                torch.matmul(p, v_tile, out=acc)
                continue
            m_new = torch.maximum(m, tile_max)
            m_shift = m_new.clamp_min(floor) if may_mask else m_new
            p = s.sub_(m_shift).exp2_()
            alpha = m.sub_(m_shift).exp2_()  # rescales what was summed under the old max
            l.mul_(alpha).add_(p.sum(dim=-1, keepdim=True))
            # acc = alpha * acc + p @ v, the product accumulated by the GEMM itself (beta=1)
            acc.mul_(alpha).baddbmm_(p, v_tile)
            m = m_new
        # rows that saw no key have l = 0 and acc = 0: out 0, and lse = -inf + -inf = -inf
        acc.div_(l.clamp_min(torch.finfo(acc_dtype).tiny))  # (nh, G*bq, D)
        out_rows.copy_(acc.view(nh, g, i1 - i0, d))  # casts to q's dtype
        # back to natural log: lse = ln(2) * (m + log2(l))
        lse_rows.copy_(m.add_(l.log2_()).mul_(LN2).view(nh, g, i1 - i0))

    for bi, h0, h1 in _head_groups(q, block_q, block_k, seqlen_k):
        for i0 in range(0, seqlen_q, block_q):
            query_block(bi, h0, h1, i0)
    return out, lse


def _head_groups(
    q: torch.Tensor, block_q: int, block_k: int, seqlen_k: int
) -> list[tuple[int, int, int]]:
    """``(batch element, first kv head, end kv head)`` of every tile's head group, for q
    ``(B, Hk, G, Sq, D)`` and tiles of ``block_q`` queries by ``block_k`` keys."""
    b, hk, g, seqlen_q, _ = q.shape
    per_tile = _heads_per_tile(
        hk, g * min(block_q, seqlen_q), min(block_k, seqlen_k), _tile_budget(q.device)
    )
    return [(bi, h0, min(h0 + per_tile, hk)) for bi in range(b) for h0 in range(0, hk, per_tile)]


def _heads_per_tile(nheads_k: int, rows: int, cols: int, budget: int) -> int:
    """How many kv heads one tile holds: as many as keep its ``(heads, rows, cols)``
    scores within ``budget`` elements (at least one, at most all)."""
    return max(1, min(nheads_k, budget // max(1, rows * cols)))


def _tile_of_mask(mask: torch.Tensor | None, bi: int, h0: int, h1: int) -> torch.Tensor | None:
    """The ``(1, heads, G|1, Sq, Sk)`` part of a ``(B|1, Hk|1, G|1, Sq, Sk)`` mask that one
    tile (batch element ``bi``, kv heads ``[h0, h1)``) needs (size-1 dims kept)."""
    if mask is None:
        return None
    batch = slice(bi, bi + 1) if mask.shape[0] > 1 else slice(None)
    heads = slice(h0, h1) if mask.shape[1] > 1 else slice(None)
    return mask[batch, heads]


def _one_tile_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    band: Band,
    attn_mask: torch.Tensor | None,
    keys: tuple[int, int],
    acc_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward when all queries and their keys ``[lo, hi)`` make one tile.

    The loop of :func:`tiled_forward` with a single key block: the row maximum is final
    at once, so there is no running state to rescale and no scratch buffer. This is the
    shape of decoding with a KV cache (a few new queries against the cache), where the
    loop's fixed cost of some forty small ops per call exceeded the arithmetic. Per kv
    head the tile is no larger than ``block_q * block_k``.
    """
    b, hk, g, seqlen_q, d = q.shape
    lo, hi = keys
    rows = g * seqlen_q
    k_tile = k[:, :, lo:hi].to(acc_dtype)  # (B, Hk, n, D); no copy when already acc_dtype
    v_tile = v[:, :, lo:hi].to(acc_dtype)
    q_tile = torch.empty((b, hk, g, seqlen_q, d), dtype=acc_dtype, device=q.device)
    _scaled_into(q, scale * LOG2E, q_tile)  # base-2 scores, as in the loop
    q_tile = q_tile.view(b, hk, rows, d)
    # out= products, like the loop's: autocast leaves them in acc_dtype
    s = torch.empty((b, hk, rows, hi - lo), dtype=acc_dtype, device=q.device)  # (B, Hk, G*Sq, n)
    torch.matmul(q_tile, k_tile.transpose(-1, -2), out=s)
    if attn_mask is not None or band.needs_mask(0, seqlen_q, lo, hi):
        _mask_tile(s, band, attn_mask, (0, seqlen_q), (lo, hi), g)
    # a band alone that leaves every row a key (a causal block of new queries after a
    # KV cache: speculative verification, chunked prefill) needs no empty-row guards
    guarded = attn_mask is not None or not band.every_row_sees_a_key(0, seqlen_q, lo, hi)
    m = s.amax(dim=-1, keepdim=True)  # (B, Hk, G*Sq, 1)
    if guarded:
        # a row with no allowed key has m = -inf: shift it by a finite number so its
        # probabilities come out 0, never nan
        m = m.clamp_min(torch.finfo(acc_dtype).min)
    p = s.sub_(m).exp2_()
    l = p.sum(dim=-1, keepdim=True)  # (B, Hk, G*Sq, 1)
    acc = torch.empty((b, hk, rows, d), dtype=acc_dtype, device=q.device)
    torch.matmul(p, v_tile, out=acc)  # (B, Hk, G*Sq, D)
    if not guarded:
        # every row sees a key and its largest term is exp2(0) = 1, so l >= 1: no guard
        # for empty rows on the path a decoding step takes once per layer and token
        acc.div_(l)
        lse = l.log2_().add_(m).mul_(LN2)  # natural log
    else:
        seen = l > 0
        acc.div_(torch.where(seen, l, torch.ones_like(l)))
        lse = torch.where(seen, (m + torch.log2(l)) * LN2, -math.inf)  # natural log
    out = acc.view(b, hk, g, seqlen_q, d).to(q.dtype)  # (B, Hk, G, Sq, D)
    return out, lse.view(b, hk, g, seqlen_q)


def tiled_backward(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    scale: float,
    band: Band,
    attn_mask: torch.Tensor | None = None,
    block_q: int = DEFAULT_BACKWARD_BLOCKS[0],
    block_k: int = DEFAULT_BACKWARD_BLOCKS[1],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Recomputing backward. Shapes as in ``tiled_forward``; returns dq, dk, dv in input dtypes.

    With ``P = exp(S - lse)`` and ``delta = rowsum(dO * O)`` (which equals ``rowsum(P * dP)``):
    ``dV = P^T dO``, ``dP = dO V^T``, ``dS = P * (dP - delta)``, ``dQ = scale * dS K``,
    ``dK = scale * dS^T Q``.

    Head groups (one batch element's kv heads that fit one tile) are done one after
    another, each with all its key blocks, so every row of dQ, dK and dV is written by
    one group: deterministic, with no reduction of private copies.
    """
    # plain views, as in the forward (the saved inputs require grad)
    grad_out, q, k, v = grad_out.detach(), q.detach(), k.detach(), v.detach()
    g, seqlen_q, d = q.shape[2:]
    seqlen_k = k.shape[2]
    acc_dtype = _accum_dtype(q.dtype)
    # base 2 as in the forward; rows that saw nothing have lse = -inf, and shifting them
    # by +inf makes their P exactly 0
    lse2 = torch.where(torch.isinf(lse), math.inf, lse * LOG2E)  # (B, Hk, G, Sq)
    delta = (grad_out.to(acc_dtype) * out.to(acc_dtype)).sum(-1)  # (B, Hk, G, Sq)
    dq = torch.empty(q.shape, dtype=acc_dtype, device=q.device)  # (B, Hk, G, Sq, D)
    dk = torch.empty(k.shape, dtype=acc_dtype, device=k.device)  # (B, Hk, Sk, D)
    dv = torch.empty(v.shape, dtype=acc_dtype, device=v.device)  # (B, Hk, Sk, D)
    scratch = _Scratch(acc_dtype, q.device)
    may_mask = attn_mask is not None or not band.is_full

    def one_group(group: tuple[int, int, int]) -> None:
        """dQ, dK and dV of kv heads ``[h0, h1)`` of batch element ``bi``."""
        bi, h0, h1 = group
        nh = h1 - h0
        mask = _tile_of_mask(attn_mask, bi, h0, h1)
        # the group's views, sliced per tile below: (nh, G, Sq, D), (nh, Sk, D), (nh, G, Sq)
        q_g, do_g, dq_g = q[bi, h0:h1], grad_out[bi, h0:h1], dq[bi, h0:h1].zero_()
        k_g, v_g, dk_g, dv_g = k[bi, h0:h1], v[bi, h0:h1], dk[bi, h0:h1], dv[bi, h0:h1]
        lse_g, delta_g = lse2[bi, h0:h1], delta[bi, h0:h1]
        for j0 in range(0, seqlen_k, block_k):
            j1 = min(j0 + block_k, seqlen_k)
            lo, hi = (0, seqlen_q) if mask is not None else band.query_range(j0, j1, seqlen_q)
            # strided views of the inputs, read by the matmuls as they are (as in the forward)
            k_tile, v_tile = k_g[:, j0:j1], v_g[:, j0:j1]  # (nh, bk, D)
            if k_tile.dtype != acc_dtype:  # low precision: products in the accumulation dtype
                k_tile = scratch.get("k", k_tile.shape).copy_(k_tile)
                v_tile = scratch.get("v", v_tile.shape).copy_(v_tile)
            # this key block's rows of dK and dV, (nh, bk, D) views updated in place
            dk_blk = dk_g[:, j0:j1].zero_()
            dv_blk = dv_g[:, j0:j1].zero_()
            for i0 in range(lo, hi, block_q):
                i1 = min(i0 + block_q, hi)
                rows = g * (i1 - i0)
                # q carries scale * log2(e): s below is in base-2 units like the forward's
                q_tile = scratch.get("q", (nh, g, i1 - i0, d))
                _scaled_into(q_g[:, :, i0:i1], scale * LOG2E, q_tile)
                q_tile = q_tile.view(nh, rows, d)
                do_tile = scratch.get("do", (nh, g, i1 - i0, d))
                do_tile = do_tile.copy_(do_g[:, :, i0:i1]).view(nh, rows, d)
                lse_tile = lse_g[:, :, i0:i1].reshape(nh, rows, 1)
                delta_tile = delta_g[:, :, i0:i1].reshape(nh, rows, 1)
                s = scratch.get("s", (nh, rows, j1 - j0))  # (nh, G*bq, bk)
                torch.matmul(q_tile, k_tile.transpose(-1, -2), out=s)
                if may_mask:
                    _mask_tile(s[None], band, mask, (i0, i1), (j0, j1), g)
                p = s.sub_(lse_tile).exp2_()  # (nh, G*bq, bk): the forward's probabilities
                dv_blk.baddbmm_(p.transpose(1, 2), do_tile)
                dp = scratch.get("dp", (nh, rows, j1 - j0))  # (nh, G*bq, bk)
                torch.matmul(do_tile, v_tile.transpose(-1, -2), out=dp)
                ds = dp.sub_(delta_tile).mul_(p)  # (nh, G*bq, bk)
                dq_rows = dq_g[:, :, i0:i1]  # (nh, G, bq, D)
                if g == 1:  # one query row per kv head row: a (nh, bq, D) view, updated by the GEMM
                    dq_rows.view(nh, rows, d).baddbmm_(ds, k_tile)
                else:  # G query heads' rows are Sq rows apart: not one matrix, so add a product
                    dq_rows += (ds @ k_tile).view(nh, g, i1 - i0, d)
                # q_tile carries scale * log2(e): the log2(e) is taken out of dK below
                dk_blk.baddbmm_(ds.transpose(1, 2), q_tile)
            dk_blk.mul_(LN2)  # this block is complete
        dq_g.mul_(scale)

    # a tile holds one batch element and a group of kv heads, as in the forward
    for group in _head_groups(q, block_q, block_k, seqlen_k):
        one_group(group)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def _grouped(q: torch.Tensor, nheads_k: int) -> torch.Tensor:
    """Flash-layout ``(B, S, H, D)`` queries as ``(B, Hk, G, S, D)``: a view, H splits."""
    b, seqlen, nheads, d = q.shape
    return q.transpose(1, 2).reshape(b, nheads_k, nheads // nheads_k, seqlen, d)


def _forward_flash_layout(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    band: Band,
    attn_mask: torch.Tensor | None,
    forward_blocks: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The forward on flash-layout tensors: ``(out (B, Sq, H, D), lse (B, H, Sq))`` and
    the grouped ``out``/``lse`` that the backward reads."""
    b, seqlen_q, nheads, d = q.shape
    nheads_k = k.shape[2]
    # strided views, no copy: each matrix of a tile still has a unit-stride head dim
    kh, vh = k.transpose(1, 2), v.transpose(1, 2)  # (B, Hk, Sk, D)
    mask = _group_mask(attn_mask, nheads_k, nheads // nheads_k)
    out, lse = tiled_forward(_grouped(q, nheads_k), kh, vh, scale, band, mask, *forward_blocks)
    out_flash = out.reshape(b, nheads, seqlen_q, d).transpose(1, 2)  # (B, Sq, H, D)
    return out_flash, lse.reshape(b, nheads, seqlen_q), out, lse


def tiled_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    band: Band,
    attn_mask: torch.Tensor | None,
    forward_blocks: tuple[int, int] = DEFAULT_FORWARD_BLOCKS,
    backward_blocks: tuple[int, int] = DEFAULT_BACKWARD_BLOCKS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tiled attention on flash-layout tensors ``(B, S, H, D)``: ``(out, lse (B, H, Sq))``.

    Differentiable through :class:`TiledAttention` when autograd records and an input
    requires grad; otherwise (inference, decoding) the forward runs without the
    ``autograd.Function`` machinery, which costs more than the arithmetic of one
    decoding step.
    """
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return TiledAttention.apply(
            q, k, v, scale, band, attn_mask, forward_blocks, backward_blocks
        )
    out, lse, _, _ = _forward_flash_layout(q, k, v, scale, band, attn_mask, forward_blocks)
    return out, lse


class TiledAttention(torch.autograd.Function):
    """Differentiable tiled attention on flash-layout tensors ``(B, S, H, D)``.

    Saves ``q, k, v, out, lse`` for backward, never the probabilities: memory O(N).
    """

    @staticmethod
    def forward(ctx, q, k, v, scale, band, attn_mask, forward_blocks, backward_blocks):  # type: ignore[override]
        out_flash, lse_heads, out, lse = _forward_flash_layout(
            q, k, v, scale, band, attn_mask, forward_blocks
        )
        ctx.save_for_backward(q, k, v, out, lse, attn_mask)
        ctx.scale, ctx.band, ctx.blocks = scale, band, backward_blocks
        ctx.mark_non_differentiable(lse_heads)
        return out_flash, lse_heads

    @staticmethod
    @once_differentiable  # no double backward: a clear error, not dropped terms
    def backward(ctx, grad_out, grad_lse):  # type: ignore[override]
        q, k, v, out, lse, attn_mask = ctx.saved_tensors
        kh, vh = k.transpose(1, 2), v.transpose(1, 2)  # (B, Hk, Sk, D) views
        b, seqlen_q, nheads, d = q.shape
        nheads_k = k.shape[2]
        mask = _group_mask(attn_mask, nheads_k, nheads // nheads_k)
        dq, dk, dv = tiled_backward(
            _grouped(grad_out, nheads_k),
            _grouped(q, nheads_k),
            kh,
            vh,
            out,
            lse,
            ctx.scale,
            ctx.band,
            mask,
            *ctx.blocks,
        )
        dq = dq.reshape(b, nheads, seqlen_q, d).transpose(1, 2)  # (B, Sq, H, D)
        return dq, dk.transpose(1, 2), dv.transpose(1, 2), None, None, None, None, None


def _group_mask(attn_mask: torch.Tensor | None, nheads_k: int, group: int) -> torch.Tensor | None:
    """A ``(B|1, H|1, Sq, Sk)`` SDPA mask viewed as ``(B|1, Hk|1, G|1, Sq, Sk)``."""
    if attn_mask is None:
        return None
    if attn_mask.shape[1] == 1:
        return attn_mask.unsqueeze(2)  # (B|1, 1, 1, Sq, Sk)
    b, _, sq, sk = attn_mask.shape
    return attn_mask.reshape(b, nheads_k, group, sq, sk)
