"""COCO bbox evaluation with pycocotools' exact semantics, vectorised with numpy.

The pipeline is pycocotools' own: match (per image, category, area range, threshold),
accumulate (per category, area range, maxDets: a precision/recall curve sampled at the
recall thresholds), summarise (the 12 standard numbers). See ``reference.py`` for the
same rules written as plain loops.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _coco_io, _coco_match, _masks

#: pycocotools' defaults, built the same way so that ``0.5 == iou_thresholds[0]`` etc.
DEFAULT_IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1)
DEFAULT_REC_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1)
DEFAULT_AREA_RANGES = {
    "all": (0.0**2, 1e5**2),
    "small": (0.0**2, 32.0**2),
    "medium": (32.0**2, 96.0**2),
    "large": (96.0**2, 1e5**2),
}


@dataclass
class COCOResult:
    """What ``COCOeval.evaluate(); accumulate(); summarize()`` leaves behind.

    Attributes:
        stats: (12,) float64, the numbers ``COCOeval.summarize`` prints, in its order.
        precision: (T, R, K, A, M) float64, -1 where pycocotools has -1 (no ground truth).
        recall: (T, K, A, M) float64, -1 likewise.
        scores: (T, R, K, A, M) float64, the score at each sampled recall point.
        iou_thresholds, rec_thresholds: (T,), (R,) float64.
        category_ids: (K,) int64, sorted. area_labels: A names. max_dets: M ints.
        per_class: category id -> {"AP", "AP50", "AP75", "AR100"} (all area, the last
            maxDets; -1 where undefined, like the stats).
    """

    stats: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    scores: np.ndarray
    iou_thresholds: np.ndarray
    rec_thresholds: np.ndarray
    category_ids: np.ndarray
    area_labels: tuple[str, ...]
    area_ranges: np.ndarray
    max_dets: tuple[int, ...]
    per_class: dict[int, dict[str, float]] = field(default_factory=dict)

    STAT_NAMES = (
        "AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
        "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large",
    )  # fmt: skip

    def summary(self) -> str:
        """The 12 lines pycocotools' ``summarize`` prints, as one string."""
        return "\n".join(line for line, _ in _summarize_all(self))

    def to_dataframe(self):
        """Per-category table (AP, AP50, AP75, AR100) as a ``pandas.DataFrame``."""
        try:
            import pandas as pd
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError("COCOResult.to_dataframe needs pandas: pip install pandas") from err
        rows = [{"category_id": k, **v} for k, v in self.per_class.items()]
        return pd.DataFrame(rows, columns=["category_id", "AP", "AP50", "AP75", "AR100"])

    def as_dict(self) -> dict[str, float]:
        """The 12 stats keyed by short names (``"AP"``, ``"AP50"``, ..., ``"AR_large"``)."""
        return {name: float(v) for name, v in zip(self.STAT_NAMES, self.stats, strict=True)}


def _mean_valid(s: np.ndarray) -> float:
    valid = s[s > -1]
    return -1.0 if len(valid) == 0 else float(np.mean(valid))


def _summarize_one(r: COCOResult, ap: bool, iou: float | None, area: str, max_det: int):
    aind = [i for i, lbl in enumerate(r.area_labels) if lbl == area]
    mind = [i for i, m in enumerate(r.max_dets) if m == max_det]
    s = r.precision if ap else r.recall
    if iou is not None:
        s = s[np.where(iou == r.iou_thresholds)[0]]  # exact float equality, as pycocotools
    s = s[..., aind, mind] if len(aind) and len(mind) else s[..., :0, 0]
    value = _mean_valid(s)
    title, kind = ("Average Precision", "(AP)") if ap else ("Average Recall", "(AR)")
    iou_str = (
        f"{r.iou_thresholds[0]:0.2f}:{r.iou_thresholds[-1]:0.2f}" if iou is None else f"{iou:0.2f}"
    )
    line = (
        f" {title:<18} {kind} @[ IoU={iou_str:<9} | area={area:>6s} | "
        f"maxDets={max_det:>3d} ] = {value:0.3f}"
    )
    return line, value


def _summarize_all(r: COCOResult):
    m = r.max_dets
    # the first line asks for maxDets=100 literally, whatever max_dets is (pycocotools)
    plan = [
        (True, None, "all", 100), (True, 0.5, "all", m[2]), (True, 0.75, "all", m[2]),
        (True, None, "small", m[2]), (True, None, "medium", m[2]), (True, None, "large", m[2]),
        (False, None, "all", m[0]), (False, None, "all", m[1]), (False, None, "all", m[2]),
        (False, None, "small", m[2]), (False, None, "medium", m[2]), (False, None, "large", m[2]),
    ]  # fmt: skip
    return [_summarize_one(r, *args) for args in plan]


def _per_class(r: COCOResult) -> dict[int, dict[str, float]]:
    a = r.area_labels.index("all") if "all" in r.area_labels else None
    out = {}
    for k, cat in enumerate(r.category_ids.tolist()):
        if a is None:
            out[cat] = {"AP": -1.0, "AP50": -1.0, "AP75": -1.0, "AR100": -1.0}
            continue
        p = r.precision[:, :, k, a, -1]  # (T, R)
        t50 = np.where(r.iou_thresholds == 0.5)[0]
        t75 = np.where(r.iou_thresholds == 0.75)[0]
        out[cat] = {
            "AP": _mean_valid(p),
            "AP50": _mean_valid(p[t50]),
            "AP75": _mean_valid(p[t75]),
            "AR100": _mean_valid(r.recall[:, k, a, -1]),
        }
    return out


def _check_params(iou_thresholds, rec_thresholds, max_dets, area_ranges):
    def floats(x, name, default):
        if x is None:
            return default.copy()
        arr = np.asarray(x, dtype=np.float64)
        if arr.ndim != 1 or len(arr) == 0 or not np.isfinite(arr).all():
            raise ValueError(f"{name} must be a non-empty 1-D sequence of finite floats, got {x!r}")
        if (arr < 0).any() or (arr > 1).any():
            raise ValueError(f"{name} must lie in [0, 1], got {arr.tolist()}")
        return arr

    iou = floats(iou_thresholds, "iou_thresholds", DEFAULT_IOU_THRESHOLDS)
    rec = floats(rec_thresholds, "rec_thresholds", DEFAULT_REC_THRESHOLDS)
    if (np.diff(rec) < 0).any():
        raise ValueError(f"rec_thresholds must be non-decreasing, got {rec.tolist()}")
    md = tuple(max_dets)
    if (
        len(md) != 3
        or any(isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1 for m in md)
        or not md[0] < md[1] < md[2]
    ):
        raise ValueError(f"max_dets must be 3 increasing positive integers, got {max_dets!r}")
    md = tuple(int(m) for m in md)
    if area_ranges is None:
        area_ranges = DEFAULT_AREA_RANGES
    if not isinstance(area_ranges, Mapping) or not area_ranges:
        raise TypeError(
            f"area_ranges must be a non-empty mapping label -> (lo, hi), got {area_ranges!r}"
        )
    labels = tuple(str(k) for k in area_ranges)
    try:
        ranges = np.asarray([tuple(v) for v in area_ranges.values()], dtype=np.float64)
    except (TypeError, ValueError):
        ranges = np.zeros((0, 0))
    if ranges.shape != (len(labels), 2) or np.isnan(ranges).any():
        raise ValueError(f"area_ranges values must be (lo, hi) pairs, got {area_ranges!r}")
    return iou, rec, md, labels, ranges


def evaluate_coco(
    gt: Any,
    dt: Any,
    iou_type: str = "bbox",
    *,
    iou_thresholds: Sequence[float] | None = None,
    rec_thresholds: Sequence[float] | None = None,
    max_dets: Sequence[int] = (1, 10, 100),
    area_ranges: Mapping[str, tuple[float, float]] | None = None,
) -> COCOResult:
    """COCO detection metrics, equal to ``pycocotools.cocoeval.COCOeval`` (bbox, segm).

    Args:
        gt: a COCO dataset dict (``images``, ``annotations`` with ``id``, ``image_id``,
            ``category_id``, ``bbox`` [x, y, w, h], ``area``, optional ``iscrowd``;
            ``categories``) or a path to its JSON file.
        dt: a COCO results list (dicts with ``image_id``, ``category_id``, ``bbox``,
            ``score``) or a path to its JSON file.
        iou_type: ``"bbox"`` (box IoU) or ``"segm"`` (mask IoU: annotations need
            ``segmentation`` as polygons or RLE, images ``height`` and ``width``;
            results need ``segmentation`` RLE). ``"keypoints"`` raises ``ValueError``.
        iou_thresholds: T thresholds in [0, 1] (default 0.50:0.05:0.95).
        rec_thresholds: R non-decreasing recall points (default 0:0.01:1, 101 points).
        max_dets: three increasing detection limits per image and category.
        area_ranges: ordered mapping label -> (lo, hi) on the annotation's ``area``
            (default all/small/medium/large). ``stats`` looks up the labels "all",
            "small", "medium" and "large", and is -1 where a label is missing.

    Returns:
        :class:`COCOResult`; ``stats``, ``precision`` and ``recall`` agree with
        pycocotools to 1e-12 (bitwise on the tested sets).
    """
    if iou_type not in ("bbox", "segm"):
        if iou_type == "keypoints":
            raise ValueError(
                "iou_type='keypoints' is not implemented by detection_map (bbox and segm "
                "only); use pycocotools for keypoints"
            )
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    iou_thr, rec_thr, max_dets, labels, ranges = _check_params(
        iou_thresholds, rec_thresholds, max_dets, area_ranges
    )
    gt_cols = _coco_io.load_ground_truth(gt, iou_type)
    dt_cols = _coco_io.load_detections(dt, gt_cols, iou_type)
    iou_fn = _masks.segm_iou_fn(gt_cols, dt_cols) if iou_type == "segm" else None
    return evaluate_columns(gt_cols, dt_cols, iou_thr, rec_thr, max_dets, labels, ranges, iou_fn)


def evaluate_columns(gt, dt, iou_thr, rec_thr, max_dets, labels, ranges, iou_fn=None) -> COCOResult:
    """:func:`evaluate_coco` on already parsed columns (see ``_coco_io``)."""
    matches = _coco_match.match(gt, dt, iou_thr, ranges, max_dets[-1], iou_fn)
    precision, recall, scores = accumulate(gt, dt, matches, iou_thr, rec_thr, ranges, max_dets)
    result = COCOResult(
        stats=np.zeros(12),
        precision=precision,
        recall=recall,
        scores=scores,
        iou_thresholds=iou_thr,
        rec_thresholds=rec_thr,
        category_ids=gt.category_ids,
        area_labels=labels,
        area_ranges=ranges,
        max_dets=max_dets,
    )
    result.stats = np.array([v for _, v in _summarize_all(result)], dtype=np.float64)
    result.per_class = _per_class(result)
    return result


def accumulate(gt, dt, matches, iou_thr, rec_thr, ranges, max_dets):
    """Precision (T, R, K, A, M), recall (T, K, A, M) and scores from the matches."""
    T, R, K, A, M = len(iou_thr), len(rec_thr), len(gt.category_ids), len(ranges), len(max_dets)
    precision = -np.ones((T, R, K, A, M))
    recall = -np.ones((T, K, A, M))
    scores = -np.ones((T, R, K, A, M))

    # all images of a category merged by descending score; ties: image order, then rank
    di = matches.dt_index  # (D,)
    d_cat, d_img = dt.category_index[di], dt.image_index[di]
    d_score, d_rank = dt.scores[di], matches.dt_rank
    order = np.lexsort((d_rank, d_img, -d_score, d_cat))
    bounds = np.searchsorted(d_cat[order], np.arange(K + 1))
    di, d_score, d_rank = di[order], d_score[order], d_rank[order]  # categories contiguous

    # What each (area, threshold, detection) is, through one lookup on the matched gt:
    # 1 true positive, 2 ignored (matched an ignored gt), 0 unmatched. Column N is a
    # sentinel that the -1 of an unmatched detection reads. pycocotools stores the
    # matched gt *id* and tests it for truthiness, so a match with a gt whose id is 0
    # counts as no match (0, or 2 if that gt is ignored). Reproduced on purpose.
    N = len(gt.ann_ids)
    lut = np.zeros((A, N + 1), dtype=np.uint8)
    lut[:, :N] = np.where(matches.gt_ignore, 2, (gt.ann_ids != 0).astype(np.uint8))
    kind = lut[np.arange(A)[:, None, None], matches.matched_gt]  # (A, T, D), match order
    kind = np.take(kind, order, axis=2)  # merged score order
    d_area = dt.area[di]
    d_out = (d_area[None, :] < ranges[:, :1]) | (d_area[None, :] > ranges[:, 1:])  # (A, D)
    tps = kind == 1
    # unmatched detections outside the area range are ignored, the others are FPs
    fps = (kind == 0) & ~d_out[:, None, :]

    # regular (non-ignored) ground truths per category and area range
    npig = np.stack(
        [np.bincount(gt.category_index[~ig], minlength=K) for ig in matches.gt_ignore], axis=1
    )  # (K, A)
    for k in range(K):
        areas = np.flatnonzero(npig[k] > 0)  # area ranges with something to find
        if len(areas) == 0:
            continue
        j = _first_count_reaching(rec_thr, npig[k, areas])  # (a, R)
        cat = slice(bounds[k], bounds[k + 1])
        rank_k = d_rank[cat]
        previous = None  # (m, number of detections) of the last curve computed
        for m in range(M - 1, -1, -1):  # largest maxDets first; smaller ones often equal
            keep = rank_k < max_dets[m]
            n = int(keep.sum())
            if previous is not None and previous[1] == n:  # same detections, same curve
                pm = previous[0]
                precision[:, :, k, :, m] = precision[:, :, k, :, pm]
                recall[:, k, :, m] = recall[:, k, :, pm]
                scores[:, :, k, :, m] = scores[:, :, k, :, pm]
                continue
            previous = (m, n)
            every = n == len(rank_k)
            tp_k, fp_k = tps[:, :, cat], fps[:, :, cat]  # views
            if len(areas) < A:
                tp_k, fp_k = tp_k[areas], fp_k[areas]
            if not every:
                tp_k, fp_k = tp_k[:, :, keep], fp_k[:, :, keep]
            s_k = d_score[cat][keep]
            q, ss, rc = _curves(tp_k, fp_k, s_k, npig[k, areas], j)
            precision[:, :, k, areas, m] = q.transpose(1, 2, 0)
            scores[:, :, k, areas, m] = ss.transpose(1, 2, 0)
            recall[:, k, areas, m] = rc.T
    return precision, recall, scores


def _first_count_reaching(thr: np.ndarray, npig: np.ndarray) -> np.ndarray:
    """(a, R) smallest integer j >= 0 with float64(j / npig) >= thr.

    Recall is ``tp / npig`` with integer ``tp``, so "recall >= thr" is "tp >= j": the
    left ``searchsorted`` of pycocotools becomes a search over integers, exactly.
    """
    npig = npig.astype(np.float64)[:, None]  # (a, 1)
    j = np.ceil(thr[None, :] * npig)  # (a, R), off by at most one from the answer
    for _ in range(2):
        j = np.where((j > 0) & ((j - 1) / npig >= thr), j - 1, j)
        j = np.where(j / npig < thr, j + 1, j)
    return j


def _curves(tp_bool, fp_bool, scores_sorted, npig, j):
    """Sampled precision (a, T, R), scores (a, T, R) and final recall (a, T) of one curve.

    ``tp_bool``/``fp_bool`` (a, T, n) are the detections of one category in merged score
    order; ``j`` (a, R) from :func:`_first_count_reaching`.
    """
    a_n, T, n = tp_bool.shape
    R = j.shape[1]
    if n == 0:
        return np.zeros((a_n, T, R)), np.zeros((a_n, T, R)), np.zeros((a_n, T))
    # counts in int32 (far faster than numpy's default int64 cumsum of bools), exact
    tp_count = np.cumsum(tp_bool, axis=2, dtype=np.int32)  # (a, T, n)
    fp_count = np.cumsum(fp_bool, axis=2, dtype=np.int32)
    tp = tp_count.astype(np.float64)
    # pycocotools' tp / (fp + tp + eps); the integer sum converts to the same float
    pr = tp / ((fp_count + tp_count) + np.spacing(1))
    recall = tp[:, :, -1] / npig[:, None].astype(np.float64)  # (a, T)

    # left searchsorted of every recall threshold in every (a, t) row, in one call: the
    # counts are exact integers in float64, so offsetting each row keeps them ordered
    rows = (np.arange(a_n * T, dtype=np.float64) * (n + 1)).reshape(a_n, T, 1)
    keys = (tp + rows).reshape(-1)  # non-decreasing over all rows
    idx = np.searchsorted(keys, (rows + j[:, None, :]).reshape(-1), side="left")
    base = (np.arange(a_n * T) * n).reshape(a_n, T, 1)
    idx = idx.reshape(a_n, T, R) - base  # index inside the row; n means "past the end"
    ok = idx < n
    idx = np.minimum(idx, n)  # (a, T, R), non-decreasing along R

    # precision made monotone, only where it is sampled: the max over pr[idx_r:] is the
    # running max (from the right) of the maxima of the segments [idx_r, idx_r+1)
    flat = np.concatenate([pr.reshape(-1), [-np.inf]])  # sentinel for the last row's end
    starts = np.concatenate([idx + base, base + n], axis=2).reshape(-1)  # (a*T*(R+1),)
    seg = np.maximum.reduceat(flat, starts).reshape(a_n, T, R + 1)[:, :, :R]
    seg = np.where(ok, seg, -np.inf)  # empty segments past the end read a neighbour
    envelope = np.maximum.accumulate(seg[:, :, ::-1], axis=2)[:, :, ::-1]
    q = np.where(ok, envelope, 0.0)
    ss = np.where(ok, scores_sorted[np.minimum(idx, n - 1)], 0.0)
    return q, ss, recall
