"""Reading and validating COCO ground truth and results into flat numpy columns.

The evaluators never touch the JSON records again after this: every annotation becomes
one row of a few aligned arrays, and image/category ids become dense indices. The only
Python loops here are the list comprehensions that pull one field out of every record,
which is the unavoidable price of a list of dicts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class CocoGroundTruth:
    """Ground truth as aligned columns; N annotations, I images, K categories."""

    image_ids: np.ndarray  # (I,) int64, sorted, unique
    category_ids: np.ndarray  # (K,) int64, sorted, unique
    image_index: np.ndarray  # (N,) int64 into image_ids
    category_index: np.ndarray  # (N,) int64 into category_ids
    boxes: np.ndarray  # (N, 4) float64 xywh
    area: np.ndarray  # (N,) float64, the annotation's own "area" field
    iscrowd: np.ndarray  # (N,) bool
    ann_ids: np.ndarray  # (N,) int64
    segmentations: list | None = None  # N raw "segmentation" values (segm only)
    image_hw: np.ndarray | None = None  # (I, 2) int64 height, width (segm only)


@dataclass
class CocoDetections:
    """Detections as aligned columns in input order; M detections."""

    image_index: np.ndarray  # (M,) int64 into CocoGroundTruth.image_ids
    category_index: np.ndarray  # (M,) int64 into CocoGroundTruth.category_ids
    boxes: np.ndarray  # (M, 4) float64 xywh
    scores: np.ndarray  # (M,) float64
    area: np.ndarray  # (M,) float64, as pycocotools' loadRes sets it (see load_detections)
    segmentations: list | None = None  # M raw "segmentation" values (segm only)


def _short(record: Any) -> str:
    text = repr(record)
    return text if len(text) <= 200 else text[:197] + "..."


def _load_json(source: Any, name: str) -> Any:
    if isinstance(source, (str, os.PathLike)):
        try:
            with open(source, encoding="utf-8") as f:
                return json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{name}: {os.fspath(source)!r} is not valid JSON ({err})") from err
        except OSError as err:
            raise ValueError(f"{name}: cannot read {os.fspath(source)!r} ({err})") from err
    return source


def _column(records: Sequence[Any], key: str, where: str, default: Any = None) -> list:
    """``[r[key] for r in records]``; on failure, name the first offending record."""
    try:
        if default is None:
            return [r[key] for r in records]
        return [r.get(key, default) for r in records]
    except (KeyError, TypeError, AttributeError):
        for i, r in enumerate(records):
            if not isinstance(r, dict):
                raise TypeError(f"{where}[{i}] must be a dict, got {_short(r)}") from None
            if key not in r:
                raise ValueError(f"{where}[{i}] is missing the key {key!r}: {_short(r)}") from None
        raise


def _int_ids(values: list, where: str, key: str, records: Sequence[Any]) -> np.ndarray:
    arr = np.asarray(values) if values else np.zeros(0, dtype=np.int64)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        for i, v in enumerate(values):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(
                    f"{where}[{i}][{key!r}] must be an integer, got {type(v).__name__}: "
                    f"{_short(records[i])}"
                )
    return arr.astype(np.int64).reshape(-1)


def _boxes(values: list, where: str, records: Sequence[Any]) -> np.ndarray:
    """(N, 4) float64 xywh; rejects ragged, non-numeric, non-finite, negative w/h."""
    try:
        boxes = np.asarray(values, dtype=np.float64)
        ok_shape = boxes.shape == (len(values), 4) or (len(values) == 0)
    except (ValueError, TypeError):
        ok_shape = False
    if not ok_shape:
        for i, b in enumerate(values):
            try:
                row = np.asarray(b, dtype=np.float64)
            except (ValueError, TypeError):
                row = None
            if row is None or row.shape != (4,):
                raise ValueError(
                    f"{where}[{i}]['bbox'] must be 4 numbers [x, y, w, h], got {_short(records[i])}"
                )
    boxes = boxes.reshape(-1, 4)
    bad = ~np.isfinite(boxes).all(axis=1) | (boxes[:, 2] < 0) | (boxes[:, 3] < 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{where}[{i}]['bbox'] must be finite with width >= 0 and height >= 0, got "
            f"{_short(records[i])}"
        )
    return boxes


def _finite_floats(values: list, where: str, key: str, records: Sequence[Any]) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
        if arr.shape != (len(values),):
            raise ValueError
    except (ValueError, TypeError):
        arr = None
    bad = np.ones(len(values), dtype=bool) if arr is None else ~np.isfinite(arr)
    if arr is None:
        for i, v in enumerate(values):
            if isinstance(v, (int, float, np.number)) and not isinstance(v, bool):
                bad[i] = not np.isfinite(v)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{where}[{i}][{key!r}] must be a finite number, got {_short(records[i])}")
    return arr


def _index_into(ids: np.ndarray, known: np.ndarray, where: str, key: str, records) -> np.ndarray:
    pos = np.searchsorted(known, ids)
    pos_clipped = np.minimum(pos, max(len(known) - 1, 0))
    bad = (
        (pos >= len(known)) | (known[pos_clipped] != ids) if len(known) else np.ones_like(ids, bool)
    )
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{where}[{i}][{key!r}] = {int(ids[i])} is not in the ground truth: "
            f"{_short(records[i])}"
        )
    return pos


def _unique_sorted(ids: np.ndarray, where: str) -> np.ndarray:
    order = np.sort(ids)
    dup = order[1:] == order[:-1]
    if dup.any():
        raise ValueError(f"{where}: id {int(order[1:][dup][0])} appears more than once")
    return order


def load_ground_truth(gt: Any, iou_type: str = "bbox") -> CocoGroundTruth:
    """Parse a COCO dataset (dict or path) into :class:`CocoGroundTruth`.

    For ``iou_type="segm"`` the annotations need ``segmentation`` (``bbox`` becomes
    optional) and the images ``height`` and ``width``.
    """
    gt = _load_json(gt, "gt")
    if not isinstance(gt, dict):
        raise TypeError(f"gt must be a COCO dataset dict or a path, got {type(gt).__name__}")
    for key in ("images", "annotations", "categories"):
        if key not in gt:
            raise ValueError(f"gt is missing the key {key!r} (has {sorted(gt)})")
        if not isinstance(gt[key], list):
            raise TypeError(f"gt[{key!r}] must be a list, got {type(gt[key]).__name__}")
    images, anns, cats = gt["images"], gt["annotations"], gt["categories"]
    if not images:
        raise ValueError("gt['images'] is empty: there is nothing to evaluate on")
    if not cats:
        raise ValueError("gt['categories'] is empty: there is nothing to evaluate")
    image_ids = _unique_sorted(
        _int_ids(_column(images, "id", "gt['images']"), "gt['images']", "id", images),
        "gt['images']",
    )
    category_ids = _unique_sorted(
        _int_ids(_column(cats, "id", "gt['categories']"), "gt['categories']", "id", cats),
        "gt['categories']",
    )
    where = "gt['annotations']"
    ann_ids = _int_ids(_column(anns, "id", where), where, "id", anns)
    _unique_sorted(ann_ids, where)
    img = _int_ids(_column(anns, "image_id", where), where, "image_id", anns)
    cat = _int_ids(_column(anns, "category_id", where), where, "category_id", anns)
    segm = iou_type == "segm"
    if segm and not all("bbox" in a for a in anns if isinstance(a, dict)):
        boxes = np.zeros((len(anns), 4))  # pycocotools never reads it for masks
    else:
        boxes = _boxes(_column(anns, "bbox", where), where, anns)
    area = _finite_floats(_column(anns, "area", where), where, "area", anns)
    iscrowd = np.asarray(_column(anns, "iscrowd", where, default=0)).reshape(-1)
    segmentations = image_hw = None
    if segm:
        segmentations = _column(anns, "segmentation", where)
        raw_ids = np.asarray(_column(images, "id", "gt['images']"), dtype=np.int64)
        hw = np.stack(
            [_int_ids(_column(images, key, "gt['images']"), "gt['images']", key, images)
             for key in ("height", "width")], axis=1,
        )  # fmt: skip
        image_hw = hw[np.argsort(raw_ids)]  # aligned with the sorted image_ids
    return CocoGroundTruth(
        image_ids=image_ids,
        category_ids=category_ids,
        image_index=_index_into(img, image_ids, where, "image_id", anns),
        category_index=_index_into(cat, category_ids, where, "category_id", anns),
        boxes=boxes,
        area=area,
        iscrowd=iscrowd.astype(bool),
        ann_ids=ann_ids,
        segmentations=segmentations,
        image_hw=image_hw,
    )


def load_detections(dt: Any, gt: CocoGroundTruth, iou_type: str = "bbox") -> CocoDetections:
    """Parse a COCO results list (list or path) against already-parsed ground truth.

    A detection's area is ``w * h`` of its ``bbox``, as pycocotools' ``loadRes`` sets it.
    For ``iou_type="segm"`` each result needs ``segmentation``; ``loadRes`` then still
    takes the bbox branch (area ``w * h``) when the first result has a non-empty
    ``bbox``, and uses the mask area only otherwise. Reproduced as is.
    """
    dt = _load_json(dt, "dt")
    if not isinstance(dt, list):
        raise TypeError(f"dt must be a list of result dicts or a path, got {type(dt).__name__}")
    where = "dt"
    img = _int_ids(_column(dt, "image_id", where), where, "image_id", dt)
    cat = _int_ids(_column(dt, "category_id", where), where, "category_id", dt)
    scores = _finite_floats(_column(dt, "score", where), where, "score", dt)
    image_index = _index_into(img, gt.image_ids, where, "image_id", dt)
    segmentations = None
    if iou_type == "segm":
        segmentations = _column(dt, "segmentation", where)
        bbox_branch = bool(dt) and isinstance(dt[0], dict) and dt[0].get("bbox", []) != []
        if bbox_branch:
            boxes = _boxes(_column(dt, "bbox", where), where, dt)
            area = boxes[:, 2] * boxes[:, 3]
        else:
            from ._masks import segmentation_mask

            boxes = np.zeros((len(dt), 4))
            hw = gt.image_hw[image_index]
            area = np.array(
                [segmentation_mask(s, int(h), int(w), f"dt[{i}]['segmentation']").sum()
                 for i, (s, (h, w)) in enumerate(zip(segmentations, hw, strict=True))],
                dtype=np.float64,
            )  # fmt: skip
    else:
        boxes = _boxes(_column(dt, "bbox", where), where, dt)
        area = boxes[:, 2] * boxes[:, 3]
    return CocoDetections(
        image_index=image_index,
        category_index=_index_into(cat, gt.category_ids, where, "category_id", dt),
        boxes=boxes,
        scores=scores,
        area=area,
        segmentations=segmentations,
    )
