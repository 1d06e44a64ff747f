"""One test per rejected input class: the exception type and a message naming the field."""

import copy

import detection_map as dm
import numpy as np
import pytest


@pytest.fixture
def coco():
    return dm.synthetic_coco(5, 3, 6.0, seed=0, empty_image_fraction=0.0)


def edited(data, fn):
    data = copy.deepcopy(data)
    fn(data)
    return data


def test_malformed_json_file(tmp_path, coco):
    (tmp_path / "gt.json").write_text("{oops")
    with pytest.raises(ValueError, match="gt: .* is not valid JSON"):
        dm.evaluate_coco(tmp_path / "gt.json", coco[1])


def test_missing_file(tmp_path, coco):
    with pytest.raises(ValueError, match="dt: cannot read"):
        dm.evaluate_coco(coco[0], tmp_path / "nope.json")


def test_gt_not_a_dict(coco):
    with pytest.raises(TypeError, match="gt must be a COCO dataset dict"):
        dm.evaluate_coco([1, 2], coco[1])


def test_dt_not_a_list(coco):
    with pytest.raises(TypeError, match="dt must be a list"):
        dm.evaluate_coco(coco[0], {"annotations": []})


@pytest.mark.parametrize("key", ["images", "annotations", "categories"])
def test_gt_missing_top_level_key(coco, key):
    gt = edited(coco[0], lambda g: g.pop(key))
    with pytest.raises(ValueError, match=f"gt is missing the key '{key}'"):
        dm.evaluate_coco(gt, coco[1])


@pytest.mark.parametrize("key", ["images", "categories"])
def test_gt_empty_images_or_categories(coco, key):
    gt = edited(coco[0], lambda g: g.update({key: []}))
    with pytest.raises(ValueError, match=rf"gt\['{key}'\] is empty"):
        dm.evaluate_coco(gt, coco[1])


@pytest.mark.parametrize("key", ["id", "image_id", "category_id", "bbox", "area"])
def test_annotation_missing_key(coco, key):
    gt = edited(coco[0], lambda g: g["annotations"][2].pop(key))
    with pytest.raises(ValueError, match=rf"gt\['annotations'\]\[2\] is missing the key '{key}'"):
        dm.evaluate_coco(gt, coco[1])


@pytest.mark.parametrize("key", ["image_id", "category_id", "bbox", "score"])
def test_detection_missing_key(coco, key):
    dt = edited(coco[1], lambda d: d[1].pop(key))
    with pytest.raises(ValueError, match=rf"dt\[1\] is missing the key '{key}'"):
        dm.evaluate_coco(coco[0], dt)


def test_detection_record_not_a_dict(coco):
    with pytest.raises(TypeError, match=r"dt\[0\] must be a dict"):
        dm.evaluate_coco(coco[0], ["x"] + coco[1])


@pytest.mark.parametrize(
    "bbox", [[1, 2, -3, 4], [1, 2, 3, -0.5], [float("nan"), 0, 1, 1], [0, 0, float("inf"), 1]]
)
def test_bad_detection_box(coco, bbox):
    dt = edited(coco[1], lambda d: d[3].update(bbox=bbox))
    with pytest.raises(ValueError, match=r"dt\[3\]\['bbox'\] must be finite"):
        dm.evaluate_coco(coco[0], dt)


def test_bad_ground_truth_box(coco):
    gt = edited(coco[0], lambda g: g["annotations"][1].update(bbox=[0, 0, -1, 5]))
    with pytest.raises(ValueError, match=r"gt\['annotations'\]\[1\]\['bbox'\]"):
        dm.evaluate_coco(gt, coco[1])


@pytest.mark.parametrize("bbox", [[1, 2, 3], "1234", [1, 2, 3, 4, 5]])
def test_box_with_wrong_length(coco, bbox):
    dt = edited(coco[1], lambda d: d[2].update(bbox=bbox))
    with pytest.raises(ValueError, match=r"dt\[2\]\['bbox'\] must be 4 numbers"):
        dm.evaluate_coco(coco[0], dt)


@pytest.mark.parametrize("score", [float("nan"), float("inf"), "high", None])
def test_bad_score(coco, score):
    dt = edited(coco[1], lambda d: d[4].update(score=score))
    with pytest.raises(ValueError, match=r"dt\[4\]\['score'\] must be a finite number"):
        dm.evaluate_coco(coco[0], dt)


def test_detection_on_unknown_image(coco):
    dt = edited(coco[1], lambda d: d[0].update(image_id=999_999))
    with pytest.raises(ValueError, match=r"dt\[0\]\['image_id'\] = 999999 is not in the ground"):
        dm.evaluate_coco(coco[0], dt)


def test_detection_with_unknown_category(coco):
    dt = edited(coco[1], lambda d: d[5].update(category_id=12345))
    with pytest.raises(ValueError, match=r"dt\[5\]\['category_id'\] = 12345"):
        dm.evaluate_coco(coco[0], dt)


def test_annotation_on_unknown_image(coco):
    gt = edited(coco[0], lambda g: g["annotations"][0].update(image_id=-7))
    with pytest.raises(ValueError, match=r"gt\['annotations'\]\[0\]\['image_id'\] = -7"):
        dm.evaluate_coco(gt, coco[1])


def test_non_integer_image_id(coco):
    dt = edited(coco[1], lambda d: d[0].update(image_id="a"))
    with pytest.raises(TypeError, match=r"dt\[0\]\['image_id'\] must be an integer"):
        dm.evaluate_coco(coco[0], dt)


def test_duplicate_annotation_id(coco):
    gt = edited(coco[0], lambda g: g["annotations"][1].update(id=g["annotations"][0]["id"]))
    with pytest.raises(ValueError, match=r"gt\['annotations'\]: id .* more than once"):
        dm.evaluate_coco(gt, coco[1])


@pytest.mark.parametrize("iou_type", ["keypoints", "mask", "BBOX"])
def test_unsupported_iou_type(coco, iou_type):
    with pytest.raises(ValueError, match="iou_type"):
        dm.evaluate_coco(coco[0], coco[1], iou_type)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"iou_thresholds": [0.5, 1.5]}, "iou_thresholds"),
        ({"iou_thresholds": []}, "iou_thresholds"),
        ({"rec_thresholds": [0.5, 0.2]}, "rec_thresholds"),
        ({"max_dets": (1, 10)}, "max_dets"),
        ({"max_dets": (10, 1, 100)}, "max_dets"),
        ({"max_dets": (1, 10, 100.0)}, "max_dets"),
        ({"area_ranges": {"all": (0, 1, 2)}}, "area_ranges"),
    ],
)
def test_bad_parameters(coco, kwargs, name):
    with pytest.raises(ValueError, match=name):
        dm.evaluate_coco(coco[0], coco[1], **kwargs)


def test_area_ranges_not_a_mapping(coco):
    with pytest.raises(TypeError, match="area_ranges"):
        dm.evaluate_coco(coco[0], coco[1], area_ranges=[(0, 1e10)])


# --- VOC ---------------------------------------------------------------------------
GT = [{"image_id": 0, "boxes": [[0, 0, 10, 10]], "labels": [1]}]
DT = [{"image_id": 0, "boxes": [[0, 0, 10, 10]], "scores": [0.5], "labels": [1]}]


def test_voc_empty_ground_truths():
    with pytest.raises(ValueError, match="ground_truths is empty"):
        dm.evaluate_voc([], DT)


@pytest.mark.parametrize("key", ["image_id", "boxes", "labels"])
def test_voc_missing_key(key):
    gts = [{k: v for k, v in GT[0].items() if k != key}]
    with pytest.raises(ValueError, match=rf"ground_truths\[0\] is missing the key '{key}'"):
        dm.evaluate_voc(gts, DT)


def test_voc_missing_scores():
    dets = [{k: v for k, v in DT[0].items() if k != "scores"}]
    with pytest.raises(ValueError, match=r"detections\[0\] is missing the key 'scores'"):
        dm.evaluate_voc(GT, dets)


@pytest.mark.parametrize("boxes", [[[0, 0, 10]], [[5, 0, 4, 10]], [[0, 0, np.nan, 1]]])
def test_voc_bad_boxes(boxes):
    with pytest.raises(ValueError, match=r"detections\[0\]\['boxes'\]"):
        dm.evaluate_voc(GT, [{**DT[0], "boxes": boxes}])


def test_voc_bad_scores():
    with pytest.raises(ValueError, match=r"detections\[0\]\['scores'\] must be finite"):
        dm.evaluate_voc(GT, [{**DT[0], "scores": [float("inf")]}])


def test_voc_label_length_mismatch():
    with pytest.raises(ValueError, match=r"ground_truths\[0\]\['labels'\] must have shape"):
        dm.evaluate_voc([{**GT[0], "labels": [1, 2]}], DT)


def test_voc_unknown_image():
    with pytest.raises(ValueError, match=r"detections\[0\]\['image_id'\] = 3"):
        dm.evaluate_voc(GT, [{**DT[0], "image_id": 3}])


def test_voc_duplicate_image():
    with pytest.raises(ValueError, match="ground_truths: an image_id appears"):
        dm.evaluate_voc(GT + GT, DT)


def test_voc_record_not_a_dict():
    with pytest.raises(TypeError, match=r"detections\[0\] must be a dict"):
        dm.evaluate_voc(GT, [("a", 1)])


@pytest.mark.parametrize("thr", [-0.1, 1.5, "0.5"])
def test_voc_bad_threshold(thr):
    with pytest.raises(ValueError, match="iou_threshold"):
        dm.evaluate_voc(GT, DT, iou_threshold=thr)


# --- average_precision -----------------------------------------------------------------
def test_ap_unknown_method():
    with pytest.raises(ValueError, match="method must be one of"):
        dm.average_precision([0.5], [1.0], "voc12")


def test_ap_length_mismatch():
    with pytest.raises(ValueError, match="same length"):
        dm.average_precision([0.1, 0.2], [1.0], "voc10")


def test_ap_not_1d_or_not_finite():
    with pytest.raises(ValueError, match="recall must be 1-D"):
        dm.average_precision([[0.1]], [1.0], "voc10")
    with pytest.raises(ValueError, match="precision must be finite"):
        dm.average_precision([0.1], [np.nan], "voc07")


def test_ap_non_numeric():
    with pytest.raises(TypeError, match="recall must be a 1-D array of floats"):
        dm.average_precision(["a"], [1.0], "voc10")


# --- MeanAveragePrecision ------------------------------------------------------------
P = [{"boxes": np.array([[0.0, 0, 10, 10]]), "scores": np.array([0.9]), "labels": np.array([1])}]
T = [{"boxes": np.array([[0.0, 0, 10, 10]]), "labels": np.array([1])}]


def test_metric_bad_box_format():
    with pytest.raises(ValueError, match="box_format"):
        dm.MeanAveragePrecision(box_format="yxyx")


def test_metric_length_mismatch():
    with pytest.raises(ValueError, match="preds and targets must have the same length"):
        dm.MeanAveragePrecision().update(P, T + T)


def test_metric_not_lists():
    with pytest.raises(TypeError, match="preds and targets must be lists"):
        dm.MeanAveragePrecision().update(P[0], T[0])


def test_metric_missing_key_leaves_state_untouched():
    m = dm.MeanAveragePrecision()
    with pytest.raises(ValueError, match=r"targets\[1\] is missing the key\(s\) \['labels'\]"):
        m.update(P + P, T + [{"boxes": T[0]["boxes"]}])
    assert m.state_dict()["preds"] == []


def test_metric_bad_boxes():
    bad = [{**P[0], "boxes": np.array([[10.0, 0, 0, 10]])}]  # x2 < x1 in xyxy
    with pytest.raises(ValueError, match=r"preds\[0\]\['boxes'\]\[0\]"):
        dm.MeanAveragePrecision().update(bad, T)


def test_metric_float_labels():
    with pytest.raises(TypeError, match=r"targets\[0\]\['labels'\] must hold integers"):
        dm.MeanAveragePrecision().update(P, [{**T[0], "labels": np.array([1.5])}])


def test_metric_scores_shape():
    with pytest.raises(ValueError, match=r"preds\[0\]\['scores'\] must have shape \(1,\)"):
        dm.MeanAveragePrecision().update([{**P[0], "scores": np.array([0.1, 0.2])}], T)
