"""The COCO rules written as plain loops: the readable definition of ``evaluate_coco``.

This is slow (Python loops over images, categories, thresholds and detections) and
exists to be read and to be tested against; ``coco.py`` computes the same numbers with
whole-array operations. Both take the parsed columns of ``_coco_io``.
"""

from __future__ import annotations

import numpy as np


def _iou(d: np.ndarray, g: np.ndarray, crowd: bool) -> float:
    """xywh IoU; against a crowd region the union is the detection's own area."""
    w = min(d[0] + d[2], g[0] + g[2]) - max(d[0], g[0])
    h = min(d[1] + d[3], g[1] + g[3]) - max(d[1], g[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = d[2] * d[3] if crowd else d[2] * d[3] + g[2] * g[3] - inter
    return inter / union


def match_pair(dt_boxes, dt_area, gt_boxes, gt_ignore, gt_crowd, gt_ids, thresholds, lo, hi):
    """Greedy matching of one (image, category, area range): dts already score-sorted.

    Returns ``(matched, dt_ignore)``, both (T, D) bool. The ground truths are visited
    regular-first (a stable sort on the ignore flag); a detection takes the regular gt
    with the highest IoU >= threshold (the later one on ties) and only falls back to an
    ignored gt when no regular one qualifies. Crowd gts can be taken many times.
    """
    gorder = np.argsort(gt_ignore, kind="stable")
    T, D = len(thresholds), len(dt_boxes)
    matched = np.zeros((T, D), bool)
    dt_ignore = np.zeros((T, D), bool)
    for t, thr in enumerate(thresholds):
        taken = np.zeros(len(gorder), bool)
        for d in range(D):
            best, m = min(thr, 1 - 1e-10), -1
            for g in gorder:
                if taken[g] and not gt_crowd[g]:
                    continue
                if m > -1 and not gt_ignore[m] and gt_ignore[g]:
                    break  # a regular match beats any ignored one
                iou = _iou(dt_boxes[d], gt_boxes[g], bool(gt_crowd[g]))
                if iou < best:
                    continue
                best, m = iou, g
            if m == -1:
                continue
            taken[m] = True
            matched[t, d] = gt_ids[m] != 0  # pycocotools tests the gt *id* for truthiness
            dt_ignore[t, d] = gt_ignore[m]
        out_of_range = (dt_area < lo) | (dt_area > hi)
        dt_ignore[t] |= ~matched[t] & out_of_range
    return matched, dt_ignore


def evaluate_reference(gt, dt, iou_thr, rec_thr, max_dets, ranges):
    """(precision (T,R,K,A,M), recall (T,K,A,M)) by the book; see ``coco.accumulate``."""
    T, R, K = len(iou_thr), len(rec_thr), len(gt.category_ids)
    A, M, n_img = len(ranges), len(max_dets), len(gt.image_ids)
    precision = -np.ones((T, R, K, A, M))
    recall = -np.ones((T, K, A, M))
    for k in range(K):
        for a, (lo, hi) in enumerate(ranges):
            per_image = []  # (scores, matched, dt_ignore) of each image, top max_dets[-1]
            n_regular = 0
            for i in range(n_img):
                g = np.flatnonzero((gt.image_index == i) & (gt.category_index == k))
                d = np.flatnonzero((dt.image_index == i) & (dt.category_index == k))
                d = d[np.argsort(-dt.scores[d], kind="stable")][: max_dets[-1]]
                ignore = gt.iscrowd[g] | (gt.area[g] < lo) | (gt.area[g] > hi)
                n_regular += int((~ignore).sum())
                mt, ig = match_pair(dt.boxes[d], dt.area[d], gt.boxes[g], ignore,
                                    gt.iscrowd[g], gt.ann_ids[g], iou_thr, lo, hi)  # fmt: skip
                per_image.append((dt.scores[d], mt, ig))
            if n_regular == 0:
                continue
            for m, max_det in enumerate(max_dets):
                s = np.concatenate([p[0][:max_det] for p in per_image])
                mt = np.concatenate([p[1][:, :max_det] for p in per_image], axis=1)
                ig = np.concatenate([p[2][:, :max_det] for p in per_image], axis=1)
                order = np.argsort(-s, kind="stable")
                mt, ig = mt[:, order], ig[:, order]
                for t in range(T):
                    tp = np.cumsum(mt[t] & ~ig[t]).astype(float)
                    fp = np.cumsum(~mt[t] & ~ig[t]).astype(float)
                    rc = tp / n_regular
                    pr = list(tp / (fp + tp + np.spacing(1)))
                    recall[t, k, a, m] = rc[-1] if len(tp) else 0.0
                    for j in range(len(pr) - 1, 0, -1):  # monotone from the right
                        pr[j - 1] = max(pr[j - 1], pr[j])
                    idx = np.searchsorted(rc, rec_thr, side="left")
                    precision[t, :, k, a, m] = [pr[j] if j < len(pr) else 0.0 for j in idx]
    return precision, recall
