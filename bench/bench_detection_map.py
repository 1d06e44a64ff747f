"""detection-map: COCO bbox mAP end to end, ours vs pycocotools and faster-coco-eval.

End to end means what a user runs: read the ground-truth and results JSON files, match,
accumulate and summarise (the 12 stats). The inputs are seeded synthetic sets
(``detection_map.synthetic_coco``: 20 categories, ~30 detections per image, crowds,
score ties, empty images) written to disk once per size, outside the timed function.
Every impl's 12 stats are checked against ours before timing, so no row times a wrong
answer. A VOC case times ``evaluate_voc`` against a loop transcription of the devkit's
``voc_eval.py`` (the devkit itself is not a package).

All rows run on the CPU: neither the package nor its peers use an accelerator.
"""

from __future__ import annotations

import contextlib
import io
import json

import detection_map
import numpy as np
import pytest

import harness

PACKAGE = "detection-map"
PEER = "pycocotools"
IMPLS = ["detection_map", "faster-coco-eval", "pycocotools"]
CATEGORIES, DETS_PER_IMAGE = 20, 30.0
# images per dataset; the cpu preset keeps pycocotools' rounds affordable on 2 cores
SIZES = harness.pick(cpu=[150, 600], gpu=[500, 2000, 5000])
# rounds per impl (after 0 or 1 warm-up): the slow peer gets few rounds at large sizes
ROUNDS = harness.pick(
    cpu={"detection_map": (5, 1), "faster-coco-eval": (3, 1), "pycocotools": (1, 0)},
    gpu={"detection_map": (5, 1), "faster-coco-eval": (3, 1), "pycocotools": (2, 0)},
)
ROUNDS_LARGE = {"detection_map": (5, 1), "faster-coco-eval": (3, 0), "pycocotools": (1, 0)}


@pytest.fixture(scope="module")
def coco_files(tmp_path_factory):
    """size -> (gt path, dt path, number of detections); written once per size."""
    cache: dict[int, tuple[str, str, int, int]] = {}

    def get(n_images: int):
        if n_images not in cache:
            gt, dt = detection_map.synthetic_coco(
                n_images, CATEGORIES, DETS_PER_IMAGE, seed=n_images
            )
            root = tmp_path_factory.mktemp(f"coco{n_images}")
            (root / "gt.json").write_text(json.dumps(gt))
            (root / "dt.json").write_text(json.dumps(dt))
            cache[n_images] = (
                str(root / "gt.json"), str(root / "dt.json"), len(dt), len(gt["annotations"])
            )  # fmt: skip
        return cache[n_images]

    return get


def _cocoeval_runner(impl: str, gt_path: str, dt_path: str):
    if impl == "pycocotools":
        coco_mod = pytest.importorskip("pycocotools.coco")
        eval_mod = pytest.importorskip("pycocotools.cocoeval")
        COCO, COCOeval = coco_mod.COCO, eval_mod.COCOeval
    else:
        fce = pytest.importorskip("faster_coco_eval")
        COCO, COCOeval = fce.COCO, fce.COCOeval_faster

    def run():
        with contextlib.redirect_stdout(io.StringIO()):  # both print progress
            gt = COCO(gt_path)
            dt = gt.loadRes(dt_path)
            ev = COCOeval(gt, dt, "bbox")
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        return ev.stats

    return run


@pytest.mark.parametrize("n_images", SIZES)
@pytest.mark.parametrize("impl", IMPLS)
def test_coco_end_to_end(benchmark, coco_files, impl, n_images):
    gt_path, dt_path, n_dets, n_anns = coco_files(n_images)
    ours = lambda: detection_map.evaluate_coco(gt_path, dt_path).stats
    fn = ours if impl == "detection_map" else _cocoeval_runner(impl, gt_path, dt_path)
    rounds, warmup = (ROUNDS_LARGE if n_images >= 2000 else ROUNDS)[impl]
    # never time a wrong answer: check the stats first (one extra peer run; pycocotools
    # only on the smallest set, where it is cheap; the tests cover it in depth)
    if impl == "faster-coco-eval" or (impl == "pycocotools" and n_images == SIZES[0]):
        np.testing.assert_allclose(fn(), ours(), rtol=0, atol=1e-12)
    harness.measure(
        benchmark,
        fn,
        package=PACKAGE,
        case=f"coco_end_to_end_{n_images}img",
        impl=impl,
        peer="" if impl == PEER else PEER,
        dtype="float64",
        params={
            "images": n_images,
            "categories": CATEGORIES,
            "detections": n_dets,
            "annotations": n_anns,
            "iou_type": "bbox",
        },  # fmt: skip
        device="cpu",
        work=n_dets,
        work_unit="det",
        rounds=rounds,
        warmup=warmup,
    )


# --- VOC -----------------------------------------------------------------------------
def _voc_devkit_loop(gts, dets, labels, thr=0.5):
    """voc_eval.py's per-detection loop, all-point AP, one class at a time (the peer)."""
    aps = []
    for label in labels:
        recs, npos = {}, 0
        for g in gts:
            keep = g["labels"] == label
            recs[g["image_id"]] = [g["boxes"][keep], g["difficult"][keep], [False] * keep.sum()]
            npos += int((~g["difficult"][keep]).sum())
        ids, conf, bbs = [], [], []
        for d in dets:
            keep = d["labels"] == label
            ids += [d["image_id"]] * int(keep.sum())
            conf.append(d["scores"][keep])
            bbs.append(d["boxes"][keep])
        conf, bbs = np.concatenate(conf), np.concatenate(bbs)
        order = np.argsort(-conf, kind="stable")
        tp, fp = np.zeros(len(order)), np.zeros(len(order))
        for i, j in enumerate(order):
            boxes, difficult, taken = recs[ids[j]]
            bb = bbs[j]
            ovmax = -np.inf
            if len(boxes):
                iw = np.maximum(
                    np.minimum(boxes[:, 2], bb[2]) - np.maximum(boxes[:, 0], bb[0]) + 1, 0
                )
                ih = np.maximum(
                    np.minimum(boxes[:, 3], bb[3]) - np.maximum(boxes[:, 1], bb[1]) + 1, 0
                )
                inter = iw * ih
                g_area = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
                union = (bb[2] - bb[0] + 1) * (bb[3] - bb[1] + 1) + g_area - inter
                ov = inter / union
                ovmax, jmax = ov.max(), ov.argmax()
            if ovmax > thr:
                if not difficult[jmax]:
                    if not taken[jmax]:
                        tp[i], taken[jmax] = 1.0, True
                    else:
                        fp[i] = 1.0
            else:
                fp[i] = 1.0
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        rec, prec = tp / max(npos, 1), tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        mrec = np.concatenate(([0.0], rec, [1.0]))
        mpre = np.maximum.accumulate(np.concatenate(([0.0], prec, [0.0]))[::-1])[::-1]
        k = np.flatnonzero(mrec[1:] != mrec[:-1])
        aps.append(float(np.sum((mrec[k + 1] - mrec[k]) * mpre[k + 1])))
    return float(np.mean(aps))


def _voc_data(n_images: int):
    """Per-image VOC dicts from the synthetic COCO set (xywh -> xyxy, 10% difficult)."""
    gt, dt = detection_map.synthetic_coco(n_images, CATEGORIES, DETS_PER_IMAGE, seed=7,
                                          crowd_fraction=0.0)  # fmt: skip
    rng = np.random.default_rng(7)
    by_img_g = {im["id"]: [] for im in gt["images"]}
    by_img_d = {im["id"]: [] for im in gt["images"]}
    for a in gt["annotations"]:
        by_img_g[a["image_id"]].append(a)
    for d in dt:
        by_img_d[d["image_id"]].append(d)
    xyxy = lambda b: np.array(b, dtype=np.float64).reshape(-1, 4) @ np.array(
        [[1, 0, 1, 0], [0, 1, 0, 1], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=np.float64)  # fmt: skip
    gts = [{"image_id": i, "boxes": xyxy([a["bbox"] for a in g]),
            "labels": np.array([a["category_id"] for a in g], dtype=np.int64),
            "difficult": rng.random(len(g)) < 0.1} for i, g in by_img_g.items()]  # fmt: skip
    dets = [{"image_id": i, "boxes": xyxy([x["bbox"] for x in d]),
             "scores": np.array([x["score"] for x in d]),
             "labels": np.array([x["category_id"] for x in d], dtype=np.int64)}
            for i, d in by_img_d.items()]  # fmt: skip
    labels = sorted({a["category_id"] for a in gt["annotations"]})
    return gts, dets, labels


VOC_SIZES = harness.pick(cpu=[300], gpu=[2000])


@pytest.mark.parametrize("n_images", VOC_SIZES)
@pytest.mark.parametrize("impl", ["detection_map", "voc_eval.py loop"])
def test_voc_map(benchmark, impl, n_images):
    gts, dets, labels = _voc_data(n_images)
    ours = lambda: detection_map.evaluate_voc(gts, dets).map
    peer = lambda: _voc_devkit_loop(gts, dets, labels)
    fn = ours if impl == "detection_map" else peer
    n_dets = sum(len(d["scores"]) for d in dets)
    assert abs(fn() - ours()) <= 1e-12
    harness.measure(
        benchmark,
        fn,
        package=PACKAGE,
        case=f"voc_map_{n_images}img",
        impl=impl,
        peer="" if impl == "voc_eval.py loop" else "voc_eval.py loop",
        dtype="float64",
        params={
            "images": n_images,
            "categories": len(labels),
            "detections": n_dets,
            "iou_threshold": 0.5,
            "metric": "voc10",
        },  # fmt: skip
        device="cpu",
        work=n_dets,
        work_unit="det",
        rounds=3,
        warmup=1,
    )
