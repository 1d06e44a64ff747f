"""MeanAveragePrecision (streaming) and the loop reference against evaluate_coco/pycocotools."""

import detection_map as dm
import numpy as np
import pytest
from detection_map import _coco_io, coco, reference


def per_image(gt, dt, box_format="xyxy"):
    """COCO dicts -> torchmetrics-style (preds, targets) lists, by ascending image id.

    The metric numbers images in update order, and cross-image score ties are broken by
    image order, so this order is what makes it comparable with pycocotools.
    """

    def conv(b):
        b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
        if box_format == "xyxy":
            return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], 1)
        if box_format == "cxcywh":
            return np.concatenate([b[:, :2] + b[:, 2:] / 2, b[:, 2:]], 1)
        return b

    preds, targets = [], []
    for img in sorted(gt["images"], key=lambda im: im["id"]):
        a = [x for x in gt["annotations"] if x["image_id"] == img["id"]]
        d = [x for x in dt if x["image_id"] == img["id"]]
        targets.append({"boxes": conv([x["bbox"] for x in a]),
                        "labels": np.array([x["category_id"] for x in a], dtype=np.int64),
                        "iscrowd": np.array([x["iscrowd"] for x in a], dtype=np.int64),
                        "area": np.array([x["area"] for x in a])})  # fmt: skip
        labels = np.array([x["category_id"] for x in d], dtype=np.int64)
        preds.append({"boxes": conv([x["bbox"] for x in d]),
                      "scores": np.array([x["score"] for x in d]), "labels": labels})  # fmt: skip
    return preds, targets


def used_categories(gt, dt):
    """Keep only the categories that occur (the metric only knows labels it has seen)."""
    seen = {a["category_id"] for a in gt["annotations"]} | {d["category_id"] for d in dt}
    return {**gt, "categories": [c for c in gt["categories"] if c["id"] in seen]}


@pytest.mark.parametrize("box_format", ["xyxy", "xywh", "cxcywh"])
def test_streaming_equals_batch_evaluation(box_format):
    gt, dt = dm.synthetic_coco(23, 5, 20.0, seed=3, score_decimals=None)
    gt = used_categories(gt, dt)
    ref = dm.evaluate_coco(gt, dt)
    preds, targets = per_image(gt, dt, box_format)
    metric = dm.MeanAveragePrecision(box_format=box_format)
    for i in range(0, len(preds), 7):  # awkward batch size
        metric.update(preds[i : i + 7], targets[i : i + 7])
    res = metric.compute()
    np.testing.assert_allclose(res.stats, ref.stats, rtol=0, atol=1e-12)
    np.testing.assert_allclose(res.precision, ref.precision, rtol=0, atol=1e-12)


def test_streaming_matches_pycocotools_without_area_field():
    pytest.importorskip("pycocotools")
    from coco_peers import pycocotools_eval

    gt, dt = dm.synthetic_coco(17, 4, 25.0, seed=4)
    gt = used_categories(gt, dt)
    for a in gt["annotations"]:
        a["area"] = a["bbox"][2] * a["bbox"][3]  # what the metric assumes without "area"
    preds, targets = per_image(gt, dt)
    for t in targets:
        del t["area"]
    metric = dm.MeanAveragePrecision()
    metric.update(preds, targets)
    peer = pycocotools_eval(gt, dt)
    np.testing.assert_allclose(metric.compute().stats, peer.stats, rtol=0, atol=1e-12)


def test_state_dict_resume_continues_exactly():
    gt, dt = dm.synthetic_coco(19, 4, 15.0, seed=5)
    preds, targets = per_image(gt, dt)
    full = dm.MeanAveragePrecision()
    full.update(preds, targets)
    first = dm.MeanAveragePrecision()
    first.update(preds[:8], targets[:8])
    resumed = dm.MeanAveragePrecision()
    resumed.load_state_dict(first.state_dict())
    resumed.update(preds[8:], targets[8:])
    np.testing.assert_array_equal(resumed.compute().precision, full.compute().precision)
    resumed.reset()
    with pytest.raises(ValueError, match="update"):
        resumed.compute()


def test_torch_inputs():
    torch = pytest.importorskip("torch")
    gt, dt = dm.synthetic_coco(7, 3, 10.0, seed=6)
    preds, targets = per_image(gt, dt)
    m_np, m_t = dm.MeanAveragePrecision(), dm.MeanAveragePrecision()
    m_np.update(preds, targets)
    to_t = lambda ds: [{k: torch.as_tensor(v) for k, v in d.items()} for d in ds]
    m_t.update(to_t(preds), to_t(targets))
    np.testing.assert_array_equal(m_t.compute().stats, m_np.compute().stats)


@pytest.mark.parametrize("seed", [0, 1])
def test_loop_reference_equals_fast_path(seed):
    gt, dt = dm.synthetic_coco(11, 4, 18.0, seed=seed, crowd_fraction=0.2,
                               crowded_image_fraction=0.1)  # fmt: skip
    g = _coco_io.load_ground_truth(gt)
    d = _coco_io.load_detections(dt, g)
    ranges = np.array(list(coco.DEFAULT_AREA_RANGES.values()))
    thr = np.array([0.3, 0.5, 0.75])
    prec, rec = reference.evaluate_reference(g, d, thr, coco.DEFAULT_REC_THRESHOLDS,
                                             (1, 10, 100), ranges)  # fmt: skip
    fast = dm.evaluate_coco(gt, dt, iou_thresholds=thr)
    np.testing.assert_allclose(fast.precision, prec, rtol=0, atol=1e-12)
    np.testing.assert_allclose(fast.recall, rec, rtol=0, atol=1e-12)
