"""evaluate_voc and average_precision against a direct transcription of voc_eval.py."""

import detection_map as dm
import numpy as np
import pytest


def devkit_voc_ap(rec, prec, use_07_metric):
    """voc_ap as the devkit writes it (loops, float64)."""
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = 0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
            ap = ap + p / 11.0
        return ap
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])


def devkit_voc_eval(gts, dets, label, ovthresh, use_07_metric, use_difficult):
    """voc_eval for one class: per-detection loop over score-sorted detections."""
    recs, npos = {}, 0
    for g in gts:
        keep = np.asarray(g["labels"]) == label
        boxes = np.asarray(g["boxes"], dtype=float).reshape(-1, 4)[keep]
        diff = np.asarray(g.get("difficult", np.zeros(len(keep), bool)), bool)[keep]
        if use_difficult:
            diff = np.zeros_like(diff)
        recs[g["image_id"]] = {"bbox": boxes, "difficult": diff, "det": [False] * len(boxes)}
        npos += int((~diff).sum())
    image_ids, conf, bbs = [], [], []
    for d in dets:
        keep = np.asarray(d["labels"]) == label
        for b, s in zip(np.asarray(d["boxes"], float).reshape(-1, 4)[keep],
                        np.asarray(d["scores"], float)[keep], strict=True):  # fmt: skip
            image_ids.append(d["image_id"])
            conf.append(s)
            bbs.append(b)
    order = np.argsort(-np.array(conf), kind="stable")  # the devkit's sort, made stable
    nd = len(order)
    tp, fp = np.zeros(nd), np.zeros(nd)
    for d in range(nd):
        R = recs[image_ids[order[d]]]
        bb = bbs[order[d]]
        ovmax = -np.inf
        BBGT = R["bbox"]
        if BBGT.size > 0:
            ixmin = np.maximum(BBGT[:, 0], bb[0])
            iymin = np.maximum(BBGT[:, 1], bb[1])
            ixmax = np.minimum(BBGT[:, 2], bb[2])
            iymax = np.minimum(BBGT[:, 3], bb[3])
            iw = np.maximum(ixmax - ixmin + 1.0, 0.0)
            ih = np.maximum(iymax - iymin + 1.0, 0.0)
            inters = iw * ih
            uni = ((bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0)
                   + (BBGT[:, 2] - BBGT[:, 0] + 1.0) * (BBGT[:, 3] - BBGT[:, 1] + 1.0)
                   - inters)  # fmt: skip
            overlaps = inters / uni
            ovmax = np.max(overlaps)
            jmax = np.argmax(overlaps)
        if ovmax > ovthresh:
            if not R["difficult"][jmax]:
                if not R["det"][jmax]:
                    tp[d] = 1.0
                    R["det"][jmax] = True
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0
    fp, tp = np.cumsum(fp), np.cumsum(tp)
    if npos == 0:
        return float("nan"), npos
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return devkit_voc_ap(rec, prec, use_07_metric), npos


def make_voc(seed, n_img, n_cls, int_coords=True, score_decimals=2):
    rng = np.random.default_rng(seed)
    gts, dets = [], []
    for i in range(n_img):
        n = int(rng.integers(0, 6))
        xy = rng.uniform(0, 300, (n, 2))
        wh = rng.uniform(5, 150, (n, 2))
        boxes = np.concatenate([xy, xy + wh], 1)
        if int_coords:
            boxes = np.round(boxes)
        labels = rng.integers(0, n_cls, n)
        diff = rng.random(n) < 0.2
        gts.append({"image_id": f"img{i}", "boxes": boxes, "labels": labels, "difficult": diff})
        m = int(rng.integers(0, 9))
        src = rng.integers(0, max(n, 1), m)
        det = rng.uniform(0, 300, (m, 4))
        det[:, 2:] = det[:, :2] + rng.uniform(5, 150, (m, 2))
        if n:
            near = rng.random(m) < 0.7
            det[near] = boxes[src[near]] + rng.normal(0, 4, (int(near.sum()), 4))
        det[:, 2:] = np.maximum(det[:, 2:], det[:, :2])
        if int_coords:
            det = np.round(det)
        dl = np.where(rng.random(m) < 0.8, labels[src] if n else 0, rng.integers(0, n_cls, m))
        scores = rng.random(m)
        if score_decimals is not None:
            scores = np.round(scores, score_decimals)
        if m or rng.random() < 0.5:  # some images have no detection record at all
            dets.append({"image_id": f"img{i}", "boxes": det, "scores": scores, "labels": dl})
    return gts, dets


@pytest.mark.parametrize("use_07_metric", [False, True])
@pytest.mark.parametrize("use_difficult", [False, True])
@pytest.mark.parametrize("seed,n_img,n_cls", [(0, 1, 1), (1, 13, 3), (2, 47, 7), (3, 101, 5)])
def test_matches_devkit(seed, n_img, n_cls, use_07_metric, use_difficult):
    gts, dets = make_voc(seed, n_img, n_cls)
    res = dm.evaluate_voc(gts, dets, 0.5, use_07_metric, use_difficult)
    expected = {}
    for label in res.per_class:
        ap, npos = devkit_voc_eval(gts, dets, label, 0.5, use_07_metric, use_difficult)
        expected[label] = ap
        assert res.num_positives[label] == npos
    for label, ap in expected.items():
        if np.isnan(ap):
            assert np.isnan(res.per_class[label])
        else:
            assert res.per_class[label] == pytest.approx(ap, abs=1e-12, rel=0)
    finite = [v for v in expected.values() if np.isfinite(v)]
    if finite:
        assert res.map == pytest.approx(np.mean(finite), abs=1e-12, rel=0)


@pytest.mark.parametrize("thr", [0.0, 0.3, 0.7, 0.95])
def test_thresholds_and_float_boxes(thr):
    gts, dets = make_voc(4, 37, 4, int_coords=False, score_decimals=None)
    res = dm.evaluate_voc(gts, dets, iou_threshold=thr)
    for label, ap in res.per_class.items():
        want, _ = devkit_voc_eval(gts, dets, label, thr, False, False)
        assert ap == pytest.approx(want, abs=1e-12, rel=0) or (np.isnan(ap) and np.isnan(want))


def test_duplicates_are_false_positives_and_difficult_is_neither():
    gts = [{"image_id": 0, "boxes": [[0, 0, 9, 9], [50, 50, 59, 59]], "labels": [1, 1],
            "difficult": [False, True]}]  # fmt: skip
    dets = [{"image_id": 0, "boxes": [[0, 0, 9, 9], [0, 0, 9, 9], [50, 50, 59, 59]],
             "scores": [0.9, 0.8, 0.95], "labels": [1, 1, 1]}]  # fmt: skip
    res = dm.evaluate_voc(gts, dets)
    rec, prec = res.curves[1]
    # order: difficult hit (neither), TP, duplicate FP
    np.testing.assert_array_equal(rec, [0.0, 1.0, 1.0])
    np.testing.assert_array_equal(prec, [0.0, 1.0, 0.5])
    assert res.per_class[1] == 1.0
    assert dm.evaluate_voc(gts, dets, use_difficult=True).num_positives[1] == 2


def test_torch_tensors_and_lists_are_accepted():
    torch = pytest.importorskip("torch")
    gts, dets = make_voc(5, 19, 3)
    ref = dm.evaluate_voc(gts, dets)
    as_lists = [{k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in d.items()} for d in gts]
    as_torch = [
        {k: (torch.as_tensor(v) if isinstance(v, np.ndarray) else v) for k, v in d.items()}
        for d in dets
    ]
    res = dm.evaluate_voc(as_lists, as_torch)
    assert res.per_class.keys() == ref.per_class.keys()
    for k in ref.per_class:
        assert res.per_class[k] == ref.per_class[k] or np.isnan(ref.per_class[k])


def test_class_without_ground_truth_is_nan_and_left_out_of_the_mean():
    gts = [{"image_id": 1, "boxes": [[0, 0, 10, 10]], "labels": [0]}]
    dets = [{"image_id": 1, "boxes": [[0, 0, 10, 10], [5, 5, 9, 9]], "scores": [0.9, 0.4],
             "labels": [0, 3]}]  # fmt: skip
    res = dm.evaluate_voc(gts, dets)
    assert np.isnan(res.per_class[3]) and res.per_class[0] == 1.0 and res.map == 1.0
    assert "mAP" in res.summary()


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("use_07", [False, True])
def test_average_precision_voc_matches_devkit(seed, use_07):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    tp = np.cumsum(rng.random(n) < 0.6).astype(float)
    fp = np.cumsum(np.ones(n)) - tp
    npos = int(tp[-1] + rng.integers(0, 5))
    rec, prec = tp / max(npos, 1), tp / np.maximum(tp + fp, np.finfo(float).eps)
    got = dm.average_precision(rec, prec, "voc07" if use_07 else "voc10")
    assert got == pytest.approx(devkit_voc_ap(rec, prec, use_07), abs=1e-12, rel=0)


def test_average_precision_coco101_matches_pycocotools_cell():
    # one category, one image: the 101-point mean is AP@[0.5] of pycocotools
    pytest.importorskip("pycocotools")
    from coco_peers import pycocotools_eval

    gt, dt = dm.synthetic_coco(1, 1, 40.0, seed=11, gts_per_image=15, empty_image_fraction=0)
    peer = pycocotools_eval(gt, dt, iouThrs=np.array([0.5]), areaRng=[[0, 1e10]],
                            areaRngLbl=["all"], maxDets=[1, 10, 100])  # fmt: skip
    res = dm.evaluate_coco(gt, dt, iou_thresholds=[0.5], area_ranges={"all": (0, 1e10)})
    assert res.stats[1] == pytest.approx(peer.stats[1], abs=1e-12)
    # rebuild the curve from the same matches
    from detection_map import _coco_io, _coco_match

    g = _coco_io.load_ground_truth(gt)
    d = _coco_io.load_detections(dt, g)
    m = _coco_match.match(g, d, np.array([0.5]), np.array([[0.0, 1e10]]), 100)
    hit = m.matched_gt[0, 0] >= 0
    ig = np.zeros_like(hit)
    ig[hit] = g.iscrowd[m.matched_gt[0, 0][hit]]
    tp = np.cumsum(hit & ~ig).astype(float)
    fp = np.cumsum(~hit & ~ig).astype(float)
    npig = int((~g.iscrowd).sum())
    ap = dm.average_precision(tp / npig, tp / (fp + tp + np.spacing(1)), "coco101")
    assert ap == pytest.approx(peer.eval["precision"][0, :, 0, 0, 2].mean(), abs=1e-12)


def test_average_precision_empty_curve_is_zero():
    for method in ("voc07", "voc10", "coco101"):
        assert dm.average_precision([], [], method) == 0.0
