"""Seeded synthetic COCO datasets for tests, benchmarks and examples.

The sets are built to hit the awkward corners of COCO evaluation: images without
ground truth, categories without ground truth or without detections, crowd regions,
an ``area`` field that differs from the box area, tied (rounded) scores, and images with
more detections than the largest ``maxDets``.
"""

from __future__ import annotations

import numpy as np


def synthetic_coco(
    num_images: int = 50,
    num_categories: int = 7,
    dets_per_image: float = 30.0,
    *,
    seed: int = 0,
    gts_per_image: float = 7.0,
    crowd_fraction: float = 0.05,
    empty_image_fraction: float = 0.1,
    score_decimals: int | None = 2,
    crowded_image_fraction: float = 0.02,
) -> tuple[dict, list[dict]]:
    """Return ``(gt, dt)``: a COCO dataset dict and a COCO results list.

    Image ids are non-contiguous and shuffled; the last category never has ground truth
    and the first category never gets a detection (when ``num_categories >= 3``).
    Detections are jittered copies of ground truths plus uniform false positives; a
    fraction of images get 150 detections (above the default ``maxDets=100``).
    ``score_decimals`` rounds scores so that ties occur (``None`` keeps them distinct).
    """
    rng = np.random.default_rng(seed)
    image_ids = rng.permutation(np.arange(num_images) * 3 + 1)
    cat_ids = np.arange(num_categories) * 2 + 1
    gt_cats = cat_ids[:-1] if num_categories >= 3 else cat_ids
    dt_cats = cat_ids[1:] if num_categories >= 3 else cat_ids
    images = [{"id": int(i), "width": 640, "height": 480} for i in image_ids]
    annotations: list[dict] = []
    results: list[dict] = []
    for img in image_ids.tolist():
        n_gt = 0 if rng.random() < empty_image_fraction else int(rng.poisson(gts_per_image))
        # sizes log-uniform from ~4 px to ~300 px so all three area ranges are populated
        wh = np.exp(rng.uniform(np.log(4), np.log(300), size=(n_gt, 2)))
        xy = rng.uniform(0, 400, size=(n_gt, 2))
        cats = rng.choice(gt_cats, size=n_gt)
        crowd = rng.random(n_gt) < crowd_fraction
        for j in range(n_gt):
            w, h = wh[j]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": img,
                    "category_id": int(cats[j]),
                    "bbox": [float(xy[j, 0]), float(xy[j, 1]), float(w), float(h)],
                    "area": float(w * h * rng.uniform(0.5, 1.0)),
                    "iscrowd": int(crowd[j]),
                }
            )
        n_dt = 150 if rng.random() < crowded_image_fraction else int(rng.poisson(dets_per_image))
        n_true = min(n_dt, n_gt * 2)
        src = rng.integers(0, max(n_gt, 1), size=n_true)
        boxes = np.empty((n_dt, 4))
        cats_dt = rng.choice(dt_cats, size=n_dt)
        if n_gt:
            jitter = rng.normal(0, 0.06, size=(n_true, 4))
            boxes[:n_true, :2] = xy[src] + jitter[:, :2] * wh[src]
            boxes[:n_true, 2:] = wh[src] * np.exp(jitter[:, 2:])
            keep_cat = rng.random(n_true) < 0.8
            cats_dt[:n_true] = np.where(
                keep_cat & np.isin(cats[src], dt_cats), cats[src], cats_dt[:n_true]
            )
        n_fp = n_dt - (n_true if n_gt else 0)
        boxes[n_dt - n_fp :, :2] = rng.uniform(0, 400, size=(n_fp, 2))
        boxes[n_dt - n_fp :, 2:] = np.exp(rng.uniform(np.log(4), np.log(300), size=(n_fp, 2)))
        # true positives tend to score higher than the uniform false positives
        scores = rng.uniform(0.0, 0.7, size=n_dt)
        if n_gt:
            scores[:n_true] = rng.uniform(0.3, 1.0, size=n_true)
        if score_decimals is not None:
            scores = np.round(scores, score_decimals)
        for j in rng.permutation(n_dt).tolist():
            results.append(
                {
                    "image_id": img,
                    "category_id": int(cats_dt[j]),
                    "bbox": [float(v) for v in boxes[j]],
                    "score": float(scores[j]),
                }
            )
    categories = [{"id": int(c), "name": f"class{c}"} for c in cat_ids]
    gt = {"images": images, "annotations": annotations, "categories": categories}
    return gt, results
