"""Tiled attention in plain PyTorch: the online softmax forward and a recomputing backward.

The score matrix is never held whole. For one block of queries we stream blocks of
keys, keeping per query row a running maximum ``m``, a running denominator ``l`` and an
unnormalised output ``acc``. When a new key block raises the maximum, what was summed
so far is rescaled by ``exp(m_old - m_new)``; at the end ``out = acc / l`` and
``lse = m + log(l)``. The backward pass saves only ``q, k, v, out, lse`` (O(N) memory)
and recomputes each probability tile as ``exp(s - lse)``.

Layout inside this module: queries ``(B, Hk, G, S, D)`` where ``G = H // Hk`` query heads
share one key/value head, keys and values ``(B, Hk, S, D)``. One tile of scores is
``(B, Hk, G * block_q, block_k)``, so grouped-query attention costs no copy of k or v.

Parallelism mirrors the GPU grid: the forward hands query blocks, the backward key
blocks, to worker threads that each run single-threaded torch ops. Tiles are small
(128 x 512 by default: 256 KiB of float32 scores per head), so peak memory stays a
small constant plus O(N) however long the sequence.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch

from .masking import Band

DEFAULT_BLOCK_Q = 128
DEFAULT_BLOCK_K = 512


def _accum_dtype(dtype: torch.dtype) -> torch.dtype:
    # low precision is accumulated in float32 like the GPU kernels; float64 stays float64
    return torch.float64 if dtype == torch.float64 else torch.float32


def _mask_tile(
    scores: torch.Tensor,
    band: Band,
    attn_mask: torch.Tensor | None,
    rows: tuple[int, int],
    keys: tuple[int, int],
    group: int,
) -> None:
    """Apply the band and the optional SDPA mask to one ``(B, Hk, G*bq, bk)`` tile in place."""
    (i0, i1), (j0, j1) = rows, keys
    tile = scores.view(scores.shape[0], scores.shape[1], group, i1 - i0, j1 - j0)  # (B,Hk,G,bq,bk)
    if band.needs_mask(i0, i1, j0, j1):
        tile.masked_fill_(~band.allowed(i0, i1, j0, j1, device=scores.device), float("-inf"))
    if attn_mask is not None:
        mask_tile = attn_mask[:, :, :, i0:i1, j0:j1]  # broadcastable to (B, Hk, G, bq, bk)
        if mask_tile.dtype == torch.bool:
            tile.masked_fill_(~mask_tile, float("-inf"))
        else:
            tile.add_(mask_tile.to(tile.dtype))


def _rows(x: torch.Tensor, i0: int, i1: int, dtype: torch.dtype) -> torch.Tensor:
    """Query rows ``[i0, i1)`` of ``(B, Hk, G, S, D)`` as a ``(B, Hk, G*bq, D)`` tile."""
    b, hk, g, _, d = x.shape
    return x[:, :, :, i0:i1].to(dtype).reshape(b, hk, g * (i1 - i0), d)


def _single_threaded_worker() -> None:
    # intra-op threads are per OS thread: each worker runs its tiles on one core
    torch.set_num_threads(1)


def _run_parallel(task, items: list, device: torch.device) -> None:
    """Run ``task(item)`` for every item, on as many threads as torch's intra-op pool.

    Like the GPU kernels' grid, the tiles of different query blocks (forward) or key
    blocks (backward) are independent. Running them on single-threaded workers keeps
    every matmul and exp on one core, instead of paying a fork-join of the whole pool
    for each of the many small tile operations (which stalls badly on a busy machine).
    """

    # grad and inference modes are per thread: give the workers the caller's (in-place
    # writes into inference tensors are only allowed under inference mode)
    inference = torch.is_inference_mode_enabled()

    def run(item):
        # not inference_mode(False): that guard switches grad mode back on
        with torch.inference_mode() if inference else torch.no_grad():
            task(item)

    # on an accelerator the ops are asynchronous already: threads would only contend
    workers = min(torch.get_num_threads(), len(items)) if device.type == "cpu" else 1
    if workers <= 1:
        for item in items:
            run(item)
        return
    with ThreadPoolExecutor(workers, initializer=_single_threaded_worker) as pool:
        list(pool.map(run, items))  # list() re-raises a worker's exception here


def tiled_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    band: Band,
    attn_mask: torch.Tensor | None = None,
    block_q: int = DEFAULT_BLOCK_Q,
    block_k: int = DEFAULT_BLOCK_K,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Online-softmax forward. q ``(B, Hk, G, Sq, D)``, k/v ``(B, Hk, Sk, D)``.

    ``attn_mask`` is None or broadcastable to ``(B, Hk, G, Sq, Sk)``. Returns
    ``out (B, Hk, G, Sq, D)`` in q's dtype and ``lse (B, Hk, G, Sq)`` in the accumulation
    dtype (float32, or float64 for float64 inputs).
    """
    b, hk, g, seqlen_q, d = q.shape
    seqlen_k = k.shape[2]
    acc_dtype = _accum_dtype(q.dtype)
    out = torch.zeros_like(q)  # rows that see no key stay 0
    lse = torch.full((b, hk, g, seqlen_q), float("-inf"), dtype=acc_dtype, device=q.device)

    def query_block(i0: int) -> None:  # writes rows [i0, i1) of out and lse, nothing else
        i1 = min(i0 + block_q, seqlen_q)
        lo, hi = (0, seqlen_k) if attn_mask is not None else band.key_range(i0, i1, seqlen_k)
        if hi <= lo:
            return  # the band skips this whole block of queries
        q_tile = _rows(q, i0, i1, acc_dtype) * scale  # (B, Hk, G*bq, D)
        rows = q_tile.shape[2]
        m = torch.full((b, hk, rows), float("-inf"), dtype=acc_dtype, device=q.device)
        l = torch.zeros((b, hk, rows), dtype=acc_dtype, device=q.device)
        acc = torch.zeros((b, hk, rows, d), dtype=acc_dtype, device=q.device)
        for j0 in range(lo, hi, block_k):
            j1 = min(j0 + block_k, hi)
            k_tile = k[:, :, j0:j1].to(acc_dtype)  # (B, Hk, bk, D)
            v_tile = v[:, :, j0:j1].to(acc_dtype)  # (B, Hk, bk, D)
            s = q_tile @ k_tile.transpose(-1, -2)  # (B, Hk, G*bq, bk)
            _mask_tile(s, band, attn_mask, (i0, i1), (j0, j1), g)
            m_new = torch.maximum(m, s.amax(dim=-1))  # (B, Hk, G*bq)
            # a row with every key masked so far has m = -inf: shift by 0 to avoid inf - inf
            m_shift = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)
            p = s.sub_(m_shift[..., None]).exp_()  # (B, Hk, G*bq, bk), in place: s is dead
            alpha = torch.exp(m - m_shift)  # rescales what was summed under the old max
            l = l * alpha + p.sum(dim=-1)
            acc = torch.baddbmm(
                (acc * alpha[..., None]).flatten(0, 1), p.flatten(0, 1), v_tile.flatten(0, 1)
            ).view(b, hk, rows, d)
            m = m_new
        seen = l > 0
        out_tile = acc / torch.where(seen, l, torch.ones_like(l))[..., None]  # (B, Hk, G*bq, D)
        out[:, :, :, i0:i1] = out_tile.view(b, hk, g, i1 - i0, d).to(q.dtype)
        m_shift = torch.where(torch.isinf(m), torch.zeros_like(m), m)
        lse_tile = torch.where(seen, m_shift + torch.log(l), torch.full_like(l, float("-inf")))
        lse[:, :, :, i0:i1] = lse_tile.view(b, hk, g, i1 - i0)

    _run_parallel(query_block, list(range(0, seqlen_q, block_q)), q.device)
    return out, lse


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
    block_q: int = DEFAULT_BLOCK_Q,
    block_k: int = DEFAULT_BLOCK_K,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Recomputing backward. Shapes as in ``tiled_forward``; returns dq, dk, dv in input dtypes.

    With ``P = exp(S - lse)`` and ``delta = rowsum(dO * O)`` (which equals ``rowsum(P * dP)``):
    ``dV = P^T dO``, ``dP = dO V^T``, ``dS = P * (dP - delta)``, ``dQ = scale * dS K``,
    ``dK = scale * dS^T Q``. Each key block owns its rows of dK and dV; dQ, which every
    key block adds to, is accumulated per worker and summed at the end (a fixed
    assignment of key blocks to workers, so the result is deterministic).
    """
    b, hk, g, seqlen_q, d = q.shape
    seqlen_k = k.shape[2]
    acc_dtype = _accum_dtype(q.dtype)
    # rows that saw nothing have lse = -inf; shifting by +inf makes their P exactly 0
    lse_shift = torch.where(torch.isinf(lse), torch.full_like(lse, float("inf")), lse)
    delta = torch.empty_like(lse_shift)  # (B, Hk, G, Sq)
    for i0 in range(0, seqlen_q, block_q):  # tile by tile: no (N, D) temporary
        i1 = min(i0 + block_q, seqlen_q)
        do_rows, out_rows = grad_out[:, :, :, i0:i1], out[:, :, :, i0:i1]
        delta[:, :, :, i0:i1] = (do_rows.to(acc_dtype) * out_rows.to(acc_dtype)).sum(-1)
    dk = torch.zeros(k.shape, dtype=acc_dtype, device=k.device)  # (B, Hk, Sk, D)
    dv = torch.zeros(v.shape, dtype=acc_dtype, device=v.device)  # (B, Hk, Sk, D)
    key_starts = list(range(0, seqlen_k, block_k))
    workers = max(1, min(torch.get_num_threads(), len(key_starts)))
    if q.device.type != "cpu":
        workers = 1
    dq_parts = [torch.zeros(q.shape, dtype=acc_dtype, device=q.device) for _ in range(workers)]

    def key_blocks(worker: int) -> None:  # key blocks worker, worker + W, ...: balanced
        dq = dq_parts[worker]  # (B, Hk, G, Sq, D), this worker's own
        for j0 in key_starts[worker::workers]:
            j1 = min(j0 + block_k, seqlen_k)
            lo, hi = (0, seqlen_q) if attn_mask is not None else band.query_range(j0, j1, seqlen_q)
            k_tile = k[:, :, j0:j1].to(acc_dtype)  # (B, Hk, bk, D)
            v_tile = v[:, :, j0:j1].to(acc_dtype)  # (B, Hk, bk, D)
            for i0 in range(lo, hi, block_q):
                i1 = min(i0 + block_q, hi)
                q_tile = _rows(q, i0, i1, acc_dtype) * scale  # (B, Hk, G*bq, D)
                do_tile = _rows(grad_out, i0, i1, acc_dtype)  # (B, Hk, G*bq, D)
                rows = q_tile.shape[2]
                lse_tile = lse_shift[:, :, :, i0:i1].reshape(b, hk, rows, 1)  # (B, Hk, G*bq, 1)
                delta_tile = delta[:, :, :, i0:i1].reshape(b, hk, rows, 1)  # (B, Hk, G*bq, 1)
                s = q_tile @ k_tile.transpose(-1, -2)  # (B, Hk, G*bq, bk)
                _mask_tile(s, band, attn_mask, (i0, i1), (j0, j1), g)
                p = s.sub_(lse_tile).exp_()  # (B, Hk, G*bq, bk): the forward's probabilities
                dv[:, :, j0:j1] += p.transpose(-1, -2) @ do_tile  # (B, Hk, bk, D), sums over G
                dp = do_tile @ v_tile.transpose(-1, -2)  # (B, Hk, G*bq, bk)
                ds = dp.sub_(delta_tile).mul_(p)  # (B, Hk, G*bq, bk)
                dq[:, :, :, i0:i1] += (ds @ k_tile).view(b, hk, g, i1 - i0, d)
                dk[:, :, j0:j1] += ds.transpose(-1, -2) @ q_tile  # q_tile carries the scale

    _run_parallel(key_blocks, list(range(workers)), q.device)
    dq = dq_parts[0]
    for part in dq_parts[1:]:
        dq += part
    dq *= scale
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


class TiledAttention(torch.autograd.Function):
    """Differentiable tiled attention on flash-layout tensors ``(B, S, H, D)``.

    Saves ``q, k, v, out, lse`` for backward, never the probabilities: memory O(N).
    """

    @staticmethod
    def forward(ctx, q, k, v, scale, band, attn_mask, block_q, block_k):  # type: ignore[override]
        b, seqlen_q, nheads, d = q.shape
        nheads_k = k.shape[2]
        group = nheads // nheads_k
        qg = q.transpose(1, 2).reshape(b, nheads_k, group, seqlen_q, d)  # a view: H splits
        # strided views, no copy: each matrix of a tile still has a unit-stride head dim
        kh, vh = k.transpose(1, 2), v.transpose(1, 2)  # (B, Hk, Sk, D)
        mask = _group_mask(attn_mask, nheads_k, group)
        out, lse = tiled_forward(qg, kh, vh, scale, band, mask, block_q, block_k)
        ctx.save_for_backward(q, k, v, out, lse, attn_mask)
        ctx.scale, ctx.band, ctx.blocks = scale, band, (block_q, block_k)
        out_flash = out.reshape(b, nheads, seqlen_q, d).transpose(1, 2)  # (B, Sq, H, D)
        lse_heads = lse.reshape(b, nheads, seqlen_q)  # (B, H, Sq)
        ctx.mark_non_differentiable(lse_heads)
        return out_flash, lse_heads

    @staticmethod
    def backward(ctx, grad_out, grad_lse):  # type: ignore[override]
        q, k, v, out, lse, attn_mask = ctx.saved_tensors
        kh, vh = k.transpose(1, 2), v.transpose(1, 2)  # (B, Hk, Sk, D) views
        b, seqlen_q, nheads, d = q.shape
        nheads_k = k.shape[2]
        group = nheads // nheads_k
        qg = q.transpose(1, 2).reshape(b, nheads_k, group, seqlen_q, d)
        dog = grad_out.transpose(1, 2).reshape(b, nheads_k, group, seqlen_q, d)
        mask = _group_mask(attn_mask, nheads_k, group)
        dq, dk, dv = tiled_backward(
            dog,
            qg,
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
