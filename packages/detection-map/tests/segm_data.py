"""Seeded synthetic COCO instance-segmentation sets (test helper; needs pycocotools)."""

from __future__ import annotations

import numpy as np


def _polygon(rng, cx, cy, radius, k):
    ang = np.sort(rng.uniform(0, 2 * np.pi, k))
    r = radius * rng.uniform(0.5, 1.0, k)
    return np.stack([cx + r * np.cos(ang), cy + r * np.sin(ang)], 1).ravel()


def synthetic_segm(n_images, n_cats, seed, with_bbox=False, crowd_fraction=0.15):
    from pycocotools import mask as mu

    rng = np.random.default_rng(seed)
    images, anns, dts = [], [], []
    for i in range(n_images):
        h, w = int(rng.integers(20, 300)), int(rng.integers(20, 300))
        img_id = 2 * i + 1
        images.append({"id": img_id, "height": h, "width": w})
        for _ in range(int(rng.integers(0, 6))):
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
            radius = float(np.exp(rng.uniform(np.log(2), np.log(150))))
            cat = int(rng.integers(1, n_cats + 1))
            crowd = rng.random() < crowd_fraction
            if crowd:  # crowds come as uncompressed RLE, like COCO's
                m = np.zeros((h, w), np.uint8)
                y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
                bh, bw = int(rng.integers(1, 40)), int(rng.integers(1, 40))
                m[y0 : y0 + bh, x0 : x0 + bw] = 1
                shape = np.array([x0, y0, x0 + bw, y0, x0 + bw, y0 + bh, x0, y0 + bh], float)
                rle = mu.encode(np.asfortranarray(m))
                flat = m.ravel(order="F")
                change = np.flatnonzero(np.r_[True, flat[1:] != flat[:-1], True])
                counts = np.diff(change).tolist()
                if flat[0] == 1:
                    counts = [0] + counts
                segm = {"counts": counts, "size": [h, w]}
                area = float(mu.area(rle))
            else:
                polys = [_polygon(rng, cx, cy, radius, int(rng.integers(3, 9))).tolist()]
                if rng.random() < 0.2:  # an object in two pieces
                    polys.append(_polygon(rng, cx + radius, cy, radius / 2, 4).tolist())
                segm = polys
                shape = np.asarray(polys[0])
                area = float(mu.area(mu.merge(mu.frPyObjects(polys, h, w))))
                area *= rng.uniform(0.7, 1.3)  # the area field need not be the mask area
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": cat,
                         "segmentation": segm, "area": area, "iscrowd": int(crowd)})  # fmt: skip
            for _ in range(int(rng.integers(0, 4))):  # detections near this object
                poly = shape + rng.normal(0, 0.08, len(shape)) * max(radius, 3) + rng.normal(0, 1.5)
                dts.append((img_id, cat if rng.random() < 0.8 else int(rng.integers(1, n_cats + 1)),
                            poly, h, w))  # fmt: skip
        for _ in range(int(rng.integers(0, 3))):  # false positives
            poly = _polygon(rng, rng.uniform(0, w), rng.uniform(0, h), rng.uniform(2, 20), 5)
            dts.append((img_id, int(rng.integers(1, n_cats + 1)), poly, h, w))
    results = []
    for img_id, cat, poly, h, w in dts:
        rle = mu.frPyObjects([poly.tolist()], h, w)[0]
        res = {"image_id": img_id, "category_id": cat,
               "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")},
               "score": float(np.round(rng.random(), 2))}  # fmt: skip
        if with_bbox:
            res["bbox"] = [float(v) for v in mu.toBbox(rle)]
        results.append(res)
    cats = [{"id": c} for c in range(1, n_cats + 1)]
    return {"images": images, "annotations": anns, "categories": cats}, results
