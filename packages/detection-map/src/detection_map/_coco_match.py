"""Vectorised COCO matching: every (image, category) pair and every threshold at once.

pycocotools matches greedily, one detection at a time in score order, inside each
(image, category, area range, IoU threshold). The greedy loop is only sequential along
the detections of one pair; pairs, thresholds and area ranges are independent. So we
loop over the *rank* of a detection inside its pair (at most ``max_dets[-1]`` steps) and
handle, at each step, the rank-r detection of every pair under every (area, threshold)
as one numpy operation on a ``(A, T, pairs, G)`` block. Pairs are bucketed by their
number of ground truths (rounded up to a power of two) so padding stays below 2x.

Two shortcuts keep the blocks small without changing any result:
  * a detection whose best IoU is below the smallest threshold can never match, and
    removing it does not change what the detections after it see;
  * pairs without ground truth or without detections have nothing to match.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def coco_box_iou(dt: np.ndarray, gt: np.ndarray, gt_crowd: np.ndarray) -> np.ndarray:
    """IoU of xywh boxes, broadcasting ``dt[..., 4]`` against ``gt[..., 4]``.

    Same arithmetic as pycocotools' ``bbIou``: for a crowd ground truth the union is the
    detection's own area, so a detection inside a crowd region scores 1.
    """
    dx, dy, dw, dh = (dt[..., i] for i in range(4))
    gx, gy, gw, gh = (gt[..., i] for i in range(4))
    w = np.minimum(dx + dw, gx + gw) - np.maximum(dx, gx)
    h = np.minimum(dy + dh, gy + gh) - np.maximum(dy, gy)
    inter = w * h
    d_area = dw * dh
    union = np.where(gt_crowd, d_area, d_area + gw * gh - inter)
    overlap = (w > 0) & (h > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(overlap, inter / np.where(overlap, union, 1.0), 0.0)


def gt_ignore_flags(area: np.ndarray, iscrowd: np.ndarray, area_ranges: np.ndarray):
    """(A, N) bool: crowd, or the annotation's ``area`` outside ``[lo, hi]``.

    pycocotools overwrites any ``ignore`` field of the input with ``iscrowd``; we never
    read ``ignore`` at all, which is the same thing.
    """
    lo, hi = area_ranges[:, 0:1], area_ranges[:, 1:2]  # (A, 1)
    return iscrowd[None, :] | (area[None, :] < lo) | (area[None, :] > hi)


@dataclass
class Matches:
    """Result of :func:`match`; D kept detections in (image, category, -score) order."""

    dt_index: np.ndarray  # (D,) index into the input detections
    dt_rank: np.ndarray  # (D,) rank of the detection inside its (image, category) pair
    matched_gt: np.ndarray  # (A, T, D) int32 ground-truth index, -1 when unmatched
    gt_ignore: np.ndarray  # (A, N) bool


def _ragged_arange(counts: np.ndarray) -> np.ndarray:
    """concatenate([arange(c) for c in counts]) without the Python loop."""
    total = int(counts.sum())
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    return np.arange(total, dtype=np.int64) - starts


def bbox_iou_fn(gt, dt):
    """The default ``iou_fn``: box IoUs of detections (n,) against gts (n, G)."""
    return lambda dt_idx, gt_pos, real: coco_box_iou(
        dt.boxes[dt_idx, None, :], gt.boxes[gt_pos], gt.iscrowd[gt_pos]
    )


def match(
    gt, dt, iou_thresholds: np.ndarray, area_ranges: np.ndarray, max_det: int, iou_fn=None
) -> Matches:
    """Greedy COCO matching of ``dt`` against ``gt`` (parsed columns, see _coco_io).

    ``iou_fn(dt_idx (n,), gt_pos (n, G), real (n, G)) -> (n, G)`` gives the overlaps
    (default: boxes; ``_masks.segm_iou_fn`` for masks).
    """
    iou_fn = iou_fn or bbox_iou_fn(gt, dt)
    K = len(gt.category_ids)
    A, T = len(area_ranges), len(iou_thresholds)
    gt_ignore = gt_ignore_flags(gt.area, gt.iscrowd, area_ranges)  # (A, N)

    # detections: stable sort by pair, then by descending score (ties keep input order)
    dt_key = dt.image_index * K + dt.category_index  # (M,)
    order = np.lexsort((-dt.scores, dt_key))  # lexsort is stable
    key_sorted = dt_key[order]
    new_pair = np.r_[True, key_sorted[1:] != key_sorted[:-1]] if len(order) else np.zeros(0, bool)
    pair_start = np.flatnonzero(new_pair)
    rank = np.arange(len(order)) - np.repeat(pair_start, np.diff(np.r_[pair_start, len(order)]))
    keep = rank < max_det
    dt_index, dt_rank, dt_key = order[keep], rank[keep], key_sorted[keep]  # (D,)
    D = len(dt_index)
    matched_gt = np.full((A, T, D), -1, dtype=np.int32)  # int32: half the traffic

    # ground truths of each detection's pair: a contiguous run of the stably sorted gts
    gt_key = gt.image_index * K + gt.category_index  # (N,)
    gt_order = np.argsort(gt_key, kind="stable")
    gt_key_sorted = gt_key[gt_order]
    g_lo = np.searchsorted(gt_key_sorted, dt_key, side="left")  # (D,)
    g_count = np.searchsorted(gt_key_sorted, dt_key, side="right") - g_lo  # (D,)

    thresholds = np.minimum(iou_thresholds, 1 - 1e-10)  # (T,) as pycocotools clamps
    t_min = thresholds.min()
    has_gt = g_count > 0
    bucket = np.zeros(D, dtype=np.int64)
    bucket[has_gt] = np.ceil(np.log2(g_count[has_gt])).astype(np.int64)
    for b in np.unique(bucket[has_gt]):
        G = 1 << int(b)
        sel = np.flatnonzero(has_gt & (bucket == b))  # dets of this bucket, (n,)
        col = np.arange(G)  # (G,)
        real = col[None, :] < g_count[sel, None]  # (n, G)
        gt_pos = gt_order[np.minimum(g_lo[sel, None] + col, len(gt_order) - 1)]  # (n, G)
        ious = iou_fn(dt_index[sel], gt_pos, real)  # (n, G)
        ious = np.where(real, ious, -1.0)  # padding never reaches a threshold >= 0
        live = ious.max(axis=1) >= t_min  # the others can never match anything
        sel, ious, gt_pos, real = sel[live], ious[live], gt_pos[live], real[live]
        if len(sel) == 0:
            continue
        _match_bucket(sel, dt_key[sel], ious, gt_pos, real, gt, gt_ignore, thresholds, matched_gt)
    return Matches(dt_index=dt_index, dt_rank=dt_rank, matched_gt=matched_gt, gt_ignore=gt_ignore)


def _match_bucket(sel, keys, ious, gt_pos, real, gt, gt_ignore, thresholds, matched_gt) -> None:
    """Run the greedy loop for one bucket, writing ``matched_gt[:, :, sel]`` in place."""
    A, T = gt_ignore.shape[0], len(thresholds)
    n, G = ious.shape
    # pairs in this bucket, ordered by how many live detections they have (descending),
    # so that the pairs still active at step r are always a prefix
    first = np.r_[True, keys[1:] != keys[:-1]]
    pair_of_det = np.cumsum(first) - 1  # (n,)
    n_pairs = int(pair_of_det[-1]) + 1
    dets_per_pair = np.bincount(pair_of_det, minlength=n_pairs)  # (P,)
    by_rank = np.argsort(-dets_per_pair, kind="stable")  # pair id at each pair rank
    pair_rank = np.empty(n_pairs, dtype=np.int64)
    pair_rank[by_rank] = np.arange(n_pairs)
    live_rank = _ragged_arange(dets_per_pair)  # rank among the live dets of the pair
    step_order = np.lexsort((pair_rank[pair_of_det], live_rank))  # by rank, then pair
    steps = np.bincount(live_rank)  # number of pairs active at each step
    # columns reversed once: pycocotools keeps the *last* gt among equal IoUs, which is
    # then the first maximum, what argmax returns
    ious = np.ascontiguousarray(ious[step_order][:, ::-1])  # (n, G)
    sel = sel[step_order]
    pair_gt = np.ascontiguousarray(gt_pos[first][by_rank][:, ::-1])  # (P, G) gt per column
    pair_real = real[first][by_rank][:, ::-1]  # (P, G)

    crowd = gt.iscrowd[pair_gt] & pair_real  # (P, G)
    ignored = gt_ignore[:, pair_gt]  # (A, P, G)
    taken = np.zeros((A, T, n_pairs, G), dtype=bool)
    thr = thresholds[None, :, None, None]  # (1, T, 1, 1)
    row = 0
    for k in steps:
        iou = ious[row : row + k][None, None]  # (1, 1, k, G)
        ok = (iou >= thr) & (~taken[:, :, :k] | crowd[:k])  # (A, T, k, G)
        ign = ignored[:, None, :k]  # (A, 1, k, G)
        # the best regular gt if any qualifies, else the best ignored one
        ok_reg = ok & ~ign
        ok_ign = ok & ign
        m_reg = np.where(ok_reg, iou, -np.inf).argmax(axis=-1)  # (A, T, k)
        m_ign = np.where(ok_ign, iou, -np.inf).argmax(axis=-1)
        m = np.where(ok_reg.any(-1), m_reg, np.where(ok_ign.any(-1), m_ign, -1))  # (A, T, k)
        a_i, t_i, p_i = np.nonzero(m >= 0)
        taken[a_i, t_i, p_i, m[a_i, t_i, p_i]] = True
        out = np.where(m >= 0, pair_gt[np.arange(k), np.maximum(m, 0)], -1)  # (A, T, k)
        matched_gt[:, :, sel[row : row + k]] = out
        row += k
