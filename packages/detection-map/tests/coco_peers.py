"""Run pycocotools / faster-coco-eval on in-memory COCO data (deep copies: both mutate)."""

from __future__ import annotations

import contextlib
import copy
import io

import numpy as np


def _run(COCO, COCOeval, gt, dt, params):
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        if dt:
            coco_dt = coco_gt.loadRes(copy.deepcopy(dt))
        else:  # loadRes cannot take an empty list; an empty results set is well defined
            coco_dt = COCO()
            coco_dt.dataset = {
                "images": copy.deepcopy(gt["images"]),
                "categories": copy.deepcopy(gt["categories"]),
                "annotations": [],
            }
            coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        for key, value in params.items():
            setattr(ev.params, key, value)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def pycocotools_eval(gt, dt, **params):
    """COCOeval after evaluate/accumulate/summarize, with ``params`` set on it."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    return _run(COCO, COCOeval, gt, dt, params)


def faster_coco_eval(gt, dt, **params):
    from faster_coco_eval import COCO, COCOeval_faster

    return _run(COCO, COCOeval_faster, gt, dt, params)


def peer_params(iou_thresholds=None, rec_thresholds=None, max_dets=None, area_ranges=None):
    """Our keyword arguments translated to COCOeval.params attributes."""
    out = {}
    if iou_thresholds is not None:
        out["iouThrs"] = np.asarray(iou_thresholds, dtype=np.float64)
    if rec_thresholds is not None:
        out["recThrs"] = np.asarray(rec_thresholds, dtype=np.float64)
    if max_dets is not None:
        out["maxDets"] = list(max_dets)
    if area_ranges is not None:
        out["areaRng"] = [list(v) for v in area_ranges.values()]
        out["areaRngLbl"] = list(area_ranges)
    return out
