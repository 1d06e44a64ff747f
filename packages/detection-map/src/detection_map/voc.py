"""PASCAL VOC mean Average Precision with the devkit's rules (``voc_eval.py``).

Per class: detections of all images in descending score order; each one looks only at
its single best-overlap ground truth in the same image (``+1`` pixel boxes); it is a
true positive when that overlap is strictly above the threshold and the ground truth is
not yet taken, a false positive otherwise, and neither when that ground truth is
``difficult`` (unless ``use_difficult``). Because a detection never falls back to its
second-best ground truth, the matching has no sequential dependency except "first
claimant wins", which a stable ``unique`` resolves for all detections at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .ap import average_precision


@dataclass
class VOCResult:
    """Per-class AP and their mean.

    Attributes:
        per_class: label -> AP for every label seen in ground truth or detections; NaN
            for a label with no countable ground truth (none, or only difficult ones).
        map: mean of the finite per-class APs (NaN when there is none).
        num_positives: label -> number of ground truths that count (npos).
        curves: label -> (recall, precision) float64 arrays in descending-score order.
    """

    per_class: dict[Any, float]
    map: float
    num_positives: dict[Any, int] = field(default_factory=dict)
    curves: dict[Any, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def summary(self) -> str:
        """One line per class and the mean, as text."""
        lines = [f"{'class':>12}  {'npos':>6}  AP"]
        for label, ap in self.per_class.items():
            lines.append(f"{label!s:>12}  {self.num_positives[label]:>6}  {ap:0.4f}")
        lines.append(f"{'mAP':>12}  {'':>6}  {self.map:0.4f}")
        return "\n".join(lines)


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _field(record: Any, key: str, where: str, i: int, optional: bool = False):
    if not isinstance(record, dict):
        raise TypeError(f"{where}[{i}] must be a dict, got {type(record).__name__}")
    if key not in record:
        if optional:
            return None
        raise ValueError(f"{where}[{i}] is missing the key {key!r} (has {sorted(record)})")
    return _to_numpy(record[key])


def _boxes(x: np.ndarray, where: str, i: int) -> np.ndarray:
    try:
        b = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{where}[{i}]['boxes'] must be numeric, got {x!r}") from err
    if b.size == 0:
        return b.reshape(0, 4)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"{where}[{i}]['boxes'] must have shape (N, 4), got {b.shape}")
    bad = ~np.isfinite(b).all(axis=1) | (b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{where}[{i}]['boxes'][{j}] must be finite xyxy with x2 >= x1 and y2 >= y1, "
            f"got {b[j].tolist()}"
        )
    return b


def _vector(x: np.ndarray, n: int, where: str, i: int, key: str) -> np.ndarray:
    v = np.asarray(x).reshape(-1) if np.ndim(x) <= 1 else None
    if v is None or len(v) != n:
        raise ValueError(f"{where}[{i}][{key!r}] must have shape ({n},), got {np.shape(x)}")
    return v


def _collect(records: Sequence[dict], where: str, with_scores: bool):
    if not isinstance(records, (list, tuple)):
        raise TypeError(f"{where} must be a list of per-image dicts, got {type(records).__name__}")
    ids, img, boxes, labels, extra = [], [], [], [], []
    for i, r in enumerate(records):
        image_id = _field(r, "image_id", where, i)
        image_id = image_id.item() if image_id.ndim == 0 else None
        if image_id is None:
            raise TypeError(f"{where}[{i}]['image_id'] must be a scalar, got {r['image_id']!r}")
        ids.append(image_id)
        b = _boxes(_field(r, "boxes", where, i), where, i)
        n = len(b)
        lab = _vector(_field(r, "labels", where, i), n, where, i, "labels")
        if with_scores:
            s = _vector(_field(r, "scores", where, i), n, where, i, "scores")
            s = s.astype(np.float64)
            if not np.isfinite(s).all():
                raise ValueError(f"{where}[{i}]['scores'] must be finite, got {s.tolist()}")
            extra.append(s)
        else:
            d = _field(r, "difficult", where, i, optional=True)
            extra.append(np.zeros(n, bool) if d is None else _vector(d, n, where, i, "difficult"))
        img.append([image_id] * n)
        boxes.append(b)
        labels.append(lab)
    return ids, img, boxes, labels, extra


def _voc_overlaps(det: np.ndarray, gts: np.ndarray) -> np.ndarray:
    """IoU with the devkit's inclusive-pixel (+1) convention; broadcasting (..., 4)."""
    iw = np.maximum(
        np.minimum(gts[..., 2], det[..., 2]) - np.maximum(gts[..., 0], det[..., 0]) + 1.0, 0.0
    )
    ih = np.maximum(
        np.minimum(gts[..., 3], det[..., 3]) - np.maximum(gts[..., 1], det[..., 1]) + 1.0, 0.0
    )
    inters = iw * ih
    uni = (
        (det[..., 2] - det[..., 0] + 1.0) * (det[..., 3] - det[..., 1] + 1.0)
        + (gts[..., 2] - gts[..., 0] + 1.0) * (gts[..., 3] - gts[..., 1] + 1.0)
        - inters
    )
    return inters / uni


def evaluate_voc(
    ground_truths: Sequence[dict],
    detections: Sequence[dict],
    iou_threshold: float = 0.5,
    use_07_metric: bool = False,
    use_difficult: bool = False,
) -> VOCResult:
    """PASCAL VOC AP per class and mAP, as the devkit's ``voc_eval.py`` computes them.

    Args:
        ground_truths: one dict per image: ``image_id``, ``boxes`` (N, 4) xyxy pixels,
            ``labels`` (N,), optional ``difficult`` (N,) bool. numpy arrays, lists or
            torch tensors.
        detections: dicts with ``image_id`` (must appear in ``ground_truths``),
            ``boxes`` (M, 4) xyxy, ``scores`` (M,), ``labels`` (M,).
        iou_threshold: a detection needs overlap strictly greater than this.
        use_07_metric: 11-point AP (VOC2007) instead of the all-point area (VOC2010+).
        use_difficult: count difficult ground truths as ordinary ones.

    Ties in score keep input order (a stable sort; the devkit's quicksort leaves their
    order unspecified).
    """
    if not (isinstance(iou_threshold, (int, float)) and 0.0 <= float(iou_threshold) <= 1.0):
        raise ValueError(f"iou_threshold must be a float in [0, 1], got {iou_threshold!r}")
    gt_ids, g_img, g_box, g_lab, g_diff = _collect(ground_truths, "ground_truths", False)
    if not gt_ids:
        raise ValueError("ground_truths is empty: there is nothing to evaluate on")
    if len(set(gt_ids)) != len(gt_ids):
        raise ValueError("ground_truths: an image_id appears in more than one record")
    _, d_img, d_box, d_lab, d_score = _collect(detections, "detections", True)
    image_index = {image_id: i for i, image_id in enumerate(gt_ids)}
    for i, ids in enumerate(d_img):
        if ids and ids[0] not in image_index:
            raise ValueError(f"detections[{i}]['image_id'] = {ids[0]!r} is not in ground_truths")

    def flat(parts, n_cols=None):
        if n_cols:
            return np.concatenate(parts).reshape(-1, n_cols) if parts else np.zeros((0, n_cols))
        return np.concatenate(parts) if parts else np.zeros(0)

    gi = np.array([image_index[x] for ids in g_img for x in ids], dtype=np.int64)
    di = np.array([image_index[x] for ids in d_img for x in ids], dtype=np.int64)
    gb, gl, gd = flat(g_box, 4), flat(g_lab), flat(g_diff).astype(bool)
    db, dl, ds = flat(d_box, 4), flat(d_lab), flat(d_score)
    if use_difficult:
        gd = np.zeros_like(gd)
    labels = sorted(set(gl.tolist()) | set(dl.tolist()))
    result = VOCResult(per_class={}, map=float("nan"))
    for label in labels:
        rec, prec, npos = _class_curve(gi[gl == label], gb[gl == label], gd[gl == label],
                                       di[dl == label], db[dl == label], ds[dl == label],
                                       float(iou_threshold))  # fmt: skip
        key = label.item() if hasattr(label, "item") else label
        result.num_positives[key] = npos
        result.curves[key] = (rec, prec)
        method = "voc07" if use_07_metric else "voc10"
        result.per_class[key] = average_precision(rec, prec, method) if npos else float("nan")
    finite = [v for v in result.per_class.values() if np.isfinite(v)]
    result.map = float(np.mean(finite)) if finite else float("nan")
    return result


def _class_curve(g_img, g_box, g_diff, d_img, d_box, d_score, thr):
    """(recall, precision, npos) of one class; all arguments already filtered to it."""
    npos = int((~g_diff).sum())
    order = np.argsort(-d_score, kind="stable")
    d_img, d_box = d_img[order], d_box[order]  # (M,), (M, 4)
    M = len(d_img)
    # every (detection, ground truth of the same image) pair, gts in their input order
    g_order = np.argsort(g_img, kind="stable")
    g_sorted = g_img[g_order]
    lo = np.searchsorted(g_sorted, d_img, side="left")  # (M,)
    cnt = np.searchsorted(g_sorted, d_img, side="right") - lo
    pair_det = np.repeat(np.arange(M), cnt)  # (P,)
    pair_gt = g_order[
        np.repeat(lo, cnt) + np.arange(cnt.sum()) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    ]
    ov = _voc_overlaps(d_box[pair_det], g_box[pair_gt])  # (P,)
    # best overlap per detection, first gt among ties (np.argmax)
    ovmax = np.full(M, -np.inf)
    np.maximum.at(ovmax, pair_det, ov)
    is_best = ov == ovmax[pair_det]
    first_best = np.flatnonzero(is_best)  # ascending, grouped by detection
    if len(first_best):
        best_det = pair_det[first_best]
        first_best = first_best[np.r_[True, best_det[1:] != best_det[:-1]]]
    jmax = np.full(M, -1)
    jmax[pair_det[first_best]] = pair_gt[first_best]
    hit = ovmax > thr
    difficult = hit & np.r_[g_diff, False][jmax]  # jmax = -1 reads the False sentinel
    claim = hit & ~difficult
    tp = np.zeros(M)
    claimed = np.flatnonzero(claim)
    _, first = np.unique(jmax[claimed], return_index=True)  # earliest claimant wins
    tp[claimed[first]] = 1.0
    fp = np.where(~hit | (claim & (tp == 0)), 1.0, 0.0)
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    with np.errstate(divide="ignore", invalid="ignore"):
        rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return rec, prec, npos
