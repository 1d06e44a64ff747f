"""A streaming COCO mAP accumulator with torchmetrics' ``update(preds, targets)`` shape."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from . import coco
from ._coco_io import CocoDetections, CocoGroundTruth

BOX_FORMATS = ("xyxy", "xywh", "cxcywh")


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _to_xywh(boxes: np.ndarray, box_format: str) -> np.ndarray:
    if box_format == "xywh":
        return boxes
    if box_format == "xyxy":
        return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    return np.concatenate([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, 2:]], axis=1)


class MeanAveragePrecision:
    """Collect per-image predictions and targets, then evaluate them COCO-style.

    ``update(preds, targets)`` takes two equally long lists of dicts, one per image:
    preds ``{"boxes": (N, 4), "scores": (N,), "labels": (N,) int}``, targets
    ``{"boxes": (G, 4), "labels": (G,) int, "iscrowd": (G,) optional, "area": (G,)
    optional}`` (numpy, lists or torch tensors). Without ``area`` a target's area is its
    box area, as torchmetrics does for bbox. ``compute()`` runs :func:`evaluate_coco`
    on everything collected (categories: every label seen) and returns a
    :class:`COCOResult`.
    """

    def __init__(
        self,
        box_format: str = "xyxy",
        iou_thresholds: Sequence[float] | None = None,
        rec_thresholds: Sequence[float] | None = None,
        max_detection_thresholds: Sequence[int] = (1, 10, 100),
        area_ranges: Mapping[str, tuple[float, float]] | None = None,
    ) -> None:
        if box_format not in BOX_FORMATS:
            raise ValueError(f"box_format must be one of {BOX_FORMATS}, got {box_format!r}")
        self.box_format = box_format
        self._params = coco._check_params(
            iou_thresholds, rec_thresholds, max_detection_thresholds, area_ranges
        )
        self.reset()

    def reset(self) -> None:
        """Forget every image seen so far."""
        self._preds: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._targets: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []

    def _boxes(self, d: Mapping, where: str) -> np.ndarray:
        b = _np(d["boxes"]).astype(np.float64)
        if b.size == 0:
            b = b.reshape(0, 4)
        if b.ndim != 2 or b.shape[1] != 4:
            raise ValueError(f"{where}['boxes'] must have shape (N, 4), got {b.shape}")
        xywh = _to_xywh(b, self.box_format)
        bad = ~np.isfinite(xywh).all(axis=1) | (xywh[:, 2] < 0) | (xywh[:, 3] < 0)
        if bad.any():
            j = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"{where}['boxes'][{j}] must be finite with non-negative width and height "
                f"({self.box_format}), got {b[j].tolist()}"
            )
        return xywh

    @staticmethod
    def _vec(d: Mapping, key: str, n: int, where: str, kind: str) -> np.ndarray:
        v = _np(d[key])
        if v.shape != (n,):
            raise ValueError(f"{where}[{key!r}] must have shape ({n},), got {v.shape}")
        if kind == "int" and n and v.dtype.kind not in "iub":
            raise TypeError(f"{where}[{key!r}] must hold integers, got dtype {v.dtype}")
        if kind == "float":
            v = v.astype(np.float64)
            if not np.isfinite(v).all():
                raise ValueError(f"{where}[{key!r}] must be finite, got {v.tolist()}")
        return v

    def update(self, preds: Sequence[Mapping], targets: Sequence[Mapping]) -> None:
        """Add one batch: ``preds[i]`` and ``targets[i]`` describe the same image."""
        if not isinstance(preds, (list, tuple)) or not isinstance(targets, (list, tuple)):
            raise TypeError(
                "preds and targets must be lists of dicts, got "
                f"{type(preds).__name__} and {type(targets).__name__}"
            )
        if len(preds) != len(targets):
            raise ValueError(
                f"preds and targets must have the same length, got {len(preds)} and {len(targets)}"
            )
        new_p, new_t = [], []
        for i, (p, t) in enumerate(zip(preds, targets, strict=True)):
            for name, d, keys in (("preds", p, ("boxes", "scores", "labels")),
                                  ("targets", t, ("boxes", "labels"))):  # fmt: skip
                if not isinstance(d, Mapping):
                    raise TypeError(f"{name}[{i}] must be a dict, got {type(d).__name__}")
                missing = [k for k in keys if k not in d]
                if missing:
                    raise ValueError(f"{name}[{i}] is missing the key(s) {missing}")
            pb = self._boxes(p, f"preds[{i}]")
            ps = self._vec(p, "scores", len(pb), f"preds[{i}]", "float")
            pl = self._vec(p, "labels", len(pb), f"preds[{i}]", "int").astype(np.int64)
            tb = self._boxes(t, f"targets[{i}]")
            tl = self._vec(t, "labels", len(tb), f"targets[{i}]", "int").astype(np.int64)
            crowd = (
                self._vec(t, "iscrowd", len(tb), f"targets[{i}]", "int").astype(bool)
                if "iscrowd" in t
                else np.zeros(len(tb), bool)
            )
            area = (
                self._vec(t, "area", len(tb), f"targets[{i}]", "float")
                if "area" in t
                else tb[:, 2] * tb[:, 3]
            )
            new_p.append((pb, ps, pl))
            new_t.append((tb, tl, crowd, area))
        self._preds += new_p  # all-or-nothing: a bad record leaves the state untouched
        self._targets += new_t

    def state_dict(self) -> dict[str, Any]:
        """Everything collected so far (plain numpy arrays), for checkpointing."""
        return {"box_format": self.box_format, "preds": list(self._preds),
                "targets": list(self._targets)}  # fmt: skip

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned; later updates continue from it."""
        self._preds = list(state["preds"])
        self._targets = list(state["targets"])

    def compute(self) -> coco.COCOResult:
        """Evaluate every image collected so far (equal to pycocotools on the same data)."""
        if not self._targets:
            raise ValueError("compute() called before any update(): there are no images")
        n = len(self._targets)
        t_count = np.array([len(t[0]) for t in self._targets])
        p_count = np.array([len(p[0]) for p in self._preds])
        t_lab = np.concatenate([t[1] for t in self._targets])
        p_lab = np.concatenate([p[2] for p in self._preds])
        cats = np.unique(np.concatenate([t_lab, p_lab]))
        if len(cats) == 0:
            cats = np.zeros(1, np.int64)  # no label anywhere: one empty category, all -1
        gt = CocoGroundTruth(
            image_ids=np.arange(n, dtype=np.int64),
            category_ids=cats,
            image_index=np.repeat(np.arange(n), t_count),
            category_index=np.searchsorted(cats, t_lab),
            boxes=np.concatenate([t[0] for t in self._targets]).reshape(-1, 4),
            area=np.concatenate([t[3] for t in self._targets]),
            iscrowd=np.concatenate([t[2] for t in self._targets]),
            ann_ids=np.arange(1, len(t_lab) + 1, dtype=np.int64),
        )
        boxes = np.concatenate([p[0] for p in self._preds]).reshape(-1, 4)
        dt = CocoDetections(
            image_index=np.repeat(np.arange(n), p_count),
            category_index=np.searchsorted(cats, p_lab),
            boxes=boxes,
            scores=np.concatenate([p[1] for p in self._preds]),
            area=boxes[:, 2] * boxes[:, 3],
        )
        iou, rec, md, labels, ranges = self._params
        return coco.evaluate_columns(gt, dt, iou, rec, md, labels, ranges)
