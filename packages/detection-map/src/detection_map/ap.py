"""Area under a precision/recall curve, three ways: VOC07, VOC10+ and COCO's 101 points."""

from __future__ import annotations

from typing import Any

import numpy as np

METHODS = ("voc07", "voc10", "coco101")

# np.arange, not linspace: the devkit's 11 points are these exact floats (0.30000000000000004)
_VOC07_POINTS = np.arange(0.0, 1.1, 0.1)
_COCO101_POINTS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1)


def _as_curve(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a 1-D array of floats, got {type(x).__name__}") from err
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite, got {arr[~np.isfinite(arr)][:3].tolist()}...")
    return arr


def monotone_envelope(precision: np.ndarray) -> np.ndarray:
    """Precision made non-increasing from the right: ``p[i] = max(p[i:])``."""
    return np.maximum.accumulate(precision[::-1])[::-1]


def average_precision(recall: Any, precision: Any, method: str) -> float:
    """Average precision of one PR curve.

    Args:
        recall: (n,) float64, recall after each detection in descending-score order.
        precision: (n,) float64, precision at the same points.
        method: ``"voc07"``: mean over recall points 0, 0.1, ..., 1 of the best precision
            at recall >= that point (``voc_ap(use_07_metric=True)``); ``"voc10"``: exact
            area under the monotone envelope, the curve padded with (0, 0) and (1, 0)
            (``voc_ap(use_07_metric=False)``); ``"coco101"``: mean of the monotone
            envelope sampled at recall 0, 0.01, ..., 1 with a left ``searchsorted``, zero
            past the last point (one cell of pycocotools' ``accumulate``).

    Returns:
        A Python float; 0.0 for an empty curve.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    rec = _as_curve(recall, "recall")
    prec = _as_curve(precision, "precision")
    if rec.shape != prec.shape:
        raise ValueError(
            f"recall and precision must have the same length, got {len(rec)} and {len(prec)}"
        )
    if method == "voc07":
        reach = rec[None, :] >= _VOC07_POINTS[:, None]  # (11, n)
        best = np.where(reach, prec[None, :], -np.inf).max(axis=1, initial=-np.inf)  # (11,)
        best = np.where(reach.any(axis=1), best, 0.0)
        ap = 0.0
        for p in best.tolist():  # sequential sum, as the devkit adds p / 11 eleven times
            ap = ap + p / 11.0
        return float(ap)
    if method == "voc10":
        mrec = np.concatenate(([0.0], rec, [1.0]))
        mpre = monotone_envelope(np.concatenate(([0.0], prec, [0.0])))
        steps = np.flatnonzero(mrec[1:] != mrec[:-1])  # where recall changes
        return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))
    if len(rec) == 0:
        return 0.0
    env = monotone_envelope(prec)
    idx = np.searchsorted(rec, _COCO101_POINTS, side="left")
    q = np.where(idx < len(rec), env[np.minimum(idx, len(rec) - 1)], 0.0)
    return float(np.mean(q))
