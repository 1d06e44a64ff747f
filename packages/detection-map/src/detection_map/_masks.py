"""COCO segmentations (polygons, RLE) as pixel masks, with pycocotools' rasterisation.

A COCO run-length encoding (RLE) lists alternating run lengths of 0s and 1s over the
image read column by column (Fortran order), starting with 0s. Compressed RLE packs
those counts into a printable string; polygons are rasterised the way pycocotools'
``rleFrPoly`` does it (edges walked on a 5x finer grid, one crossing kept per column
at each downsampled pixel centre), so the masks, their areas and IoUs are identical.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_SCALE = 5.0


def counts_from_string(s: str | bytes) -> np.ndarray:
    """Decode a compressed RLE string into run lengths (pycocotools' ``rleFrString``).

    Each count is a little-endian run of 5-bit groups (char - 48; bit 0x20 = more
    follows, bit 0x10 of the last group = negative); from the fourth count on, each is
    stored as the difference to the count two places before. Vectorised over chars.
    """
    data = s.encode("ascii") if isinstance(s, str) else bytes(s)
    c = np.frombuffer(data, dtype=np.uint8).astype(np.int64) - 48  # (L,)
    if len(c) == 0:
        return np.zeros(0, dtype=np.int64)
    last = (c & 0x20) == 0  # the group that ends a count
    if not last[-1]:
        raise ValueError("RLE counts string ends in the middle of a number")
    count_id = np.r_[0, np.cumsum(last)[:-1]]  # (L,) which count each group belongs to
    starts = np.flatnonzero(np.r_[True, last[:-1]])  # first group of each count
    k = np.arange(len(c)) - starts[count_id]  # group position inside its count
    x = np.zeros(len(starts), dtype=np.int64)
    np.add.at(x, count_id, (c & 0x1F) << (5 * k))
    n_groups = np.diff(np.r_[starts, len(c)])
    negative = (c[last] & 0x10) != 0
    x = np.where(negative, x - (np.int64(1) << (5 * n_groups)), x)  # sign extension
    # undo the deltas: counts[i] = x[i] + counts[i - 2] for i >= 3
    counts = x.copy()
    for parity in (1, 0):
        first = 1 if parity == 1 else 2  # counts[1] and counts[2] are stored raw
        idx = np.arange(first, len(x), 2)
        counts[idx] = np.cumsum(x[idx])
    return counts & 0xFFFFFFFF  # the C code stores uint


def counts_from_polygon(xy: Any, h: int, w: int) -> np.ndarray:
    """Run lengths of one polygon ``[x0, y0, x1, y1, ...]`` (pycocotools' ``rleFrPoly``)."""
    pts = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    # C's (int)(v + .5) truncates toward zero
    x = np.trunc(_SCALE * pts[:, 0] + 0.5).astype(np.int64)
    y = np.trunc(_SCALE * pts[:, 1] + 0.5).astype(np.int64)
    x, y = np.r_[x, x[:1]], np.r_[y, y[:1]]
    us, vs = [], []
    # walk every edge densely on the fine grid (a handful of edges: a short loop)
    for j in range(len(pts)):
        xs, xe, ys, ye = int(x[j]), int(x[j + 1]), int(y[j]), int(y[j + 1])
        dx, dy = abs(xe - xs), abs(ys - ye)
        flip = (dx >= dy and xs > xe) or (dx < dy and ys > ye)
        if flip:
            xs, xe, ys, ye = xe, xs, ye, ys
        if dx >= dy:
            s = (ye - ys) / dx if dx else 0.0
            d = np.arange(dx + 1)
            t = dx - d if flip else d
            us.append(t + xs)
            vs.append(np.trunc(ys + s * t + 0.5).astype(np.int64))
        else:
            s = (xe - xs) / dy
            d = np.arange(dy + 1)
            t = dy - d if flip else d
            vs.append(t + ys)
            us.append(np.trunc(xs + s * t + 0.5).astype(np.int64))
    u = np.concatenate(us) if us else np.zeros(0, np.int64)
    v = np.concatenate(vs) if vs else np.zeros(0, np.int64)
    # keep the points where the fine x changes and lands on a coarse pixel centre
    change = np.flatnonzero(u[1:] != u[:-1]) + 1
    uj, uprev = u[change], u[change - 1]
    vj, vprev = v[change], v[change - 1]
    xd = (np.where(uj < uprev, uj, uj - 1).astype(np.float64) + 0.5) / _SCALE - 0.5
    keep = (np.floor(xd) == xd) & (xd >= 0) & (xd <= w - 1)
    yd = (np.where(vj < vprev, vj, vprev).astype(np.float64) + 0.5) / _SCALE - 0.5
    yd = np.ceil(np.clip(yd, 0, h))
    a = (xd[keep].astype(np.int64) * h + yd[keep].astype(np.int64)).tolist()
    a.append(h * w)
    a.sort()
    diffs = np.diff(np.r_[0, a]).tolist()
    # merge zero-length runs into the run before them
    out = [diffs[0]]
    j = 1
    while j < len(diffs):
        if diffs[j] > 0:
            out.append(diffs[j])
            j += 1
        else:
            j += 1
            if j < len(diffs):
                out[-1] += diffs[j]
                j += 1
    return np.asarray(out, dtype=np.int64)


def mask_from_counts(counts: np.ndarray, h: int, w: int) -> np.ndarray:
    """Flat (h * w,) bool mask in column-major order from run lengths."""
    counts = np.asarray(counts, dtype=np.int64)
    ends = np.cumsum(counts)
    if len(counts) and ends[-1] != h * w:
        raise ValueError(f"RLE counts sum to {int(ends[-1])}, expected h * w = {h * w}")
    value = np.zeros(len(counts), dtype=bool)
    value[1::2] = True
    return np.repeat(value, counts)


def segmentation_mask(segm: Any, h: int, w: int, where: str) -> np.ndarray:
    """Flat column-major bool mask of a COCO ``segmentation`` (polygons or RLE)."""
    if isinstance(segm, list):
        if not segm:
            return np.zeros(h * w, dtype=bool)
        mask = np.zeros(h * w, dtype=bool)
        for poly in segm:  # several polygons of one object: their union
            if len(poly) < 4 or len(poly) % 2:
                raise ValueError(f"{where}: a polygon needs an even number >= 4 of coordinates")
            mask |= mask_from_counts(counts_from_polygon(poly, h, w), h, w)
        return mask
    if isinstance(segm, dict) and "counts" in segm and "size" in segm:
        size = tuple(int(v) for v in segm["size"])
        if size != (h, w):
            raise ValueError(f"{where}: RLE size {list(size)} differs from the image's [{h}, {w}]")
        counts = segm["counts"]
        if isinstance(counts, (str, bytes)):
            return mask_from_counts(counts_from_string(counts), h, w)
        return mask_from_counts(np.asarray(counts, dtype=np.int64), h, w)
    raise ValueError(f"{where}: segmentation must be polygons or an RLE dict, got {type(segm)}")


def mask_ious(dt_masks: np.ndarray, gt_masks: np.ndarray, gt_crowd: np.ndarray) -> np.ndarray:
    """(D, G) mask IoU from (D, P) and (G, P) bool masks; crowd: intersection / dt area.

    Intersections are integer pixel counts from one matrix product, exact in float32
    up to 2**24 pixels (float64 beyond), and the quotient is the same float division
    pycocotools' ``rleIou`` does.
    """
    dtype = np.float32 if dt_masks.shape[1] <= 2**24 else np.float64
    inter = (dt_masks.astype(dtype) @ gt_masks.astype(dtype).T).astype(np.float64)  # (D, G)
    d_area = dt_masks.sum(axis=1, dtype=np.int64)[:, None].astype(np.float64)
    g_area = gt_masks.sum(axis=1, dtype=np.int64)[None, :].astype(np.float64)
    union = np.where(gt_crowd[None, :], d_area, d_area + g_area - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def segm_iou_fn(gt, dt):
    """An ``iou_fn`` for ``_coco_match.match``: mask IoUs of the requested pairs.

    Called with detection indices (n,) and, per detection, the ground-truth indices
    (n, G) of its pair (``real`` marks the columns that exist). Works image by image:
    decode the masks involved once, one matrix product, scatter back.
    """

    def iou_fn(dt_idx: np.ndarray, gt_pos: np.ndarray, real: np.ndarray) -> np.ndarray:
        out = np.zeros(gt_pos.shape)
        img = dt.image_index[dt_idx]
        order = np.argsort(img, kind="stable")
        cuts = np.flatnonzero(np.r_[True, img[order][1:] != img[order][:-1], True])
        for lo, hi in zip(cuts[:-1], cuts[1:], strict=True):
            rows = order[lo:hi]
            h, w = (int(v) for v in gt.image_hw[img[rows[0]]])
            need = np.unique(gt_pos[rows][real[rows]])  # (u,) gts of this image
            gm = np.stack([segmentation_mask(gt.segmentations[g], h, w,
                                             f"gt['annotations'][{g}]['segmentation']")
                           for g in need])  # fmt: skip
            dm = np.stack([segmentation_mask(dt.segmentations[d], h, w,
                                             f"dt[{d}]['segmentation']")
                           for d in dt_idx[rows]])  # fmt: skip
            iou = mask_ious(dm, gm, gt.iscrowd[need])  # (r, u)
            col = np.minimum(np.searchsorted(need, gt_pos[rows]), len(need) - 1)  # (r, G)
            out[rows] = np.take_along_axis(iou, col, axis=1)  # padding is masked later
        return out

    return iou_fn
