"""evaluate_coco against pycocotools' COCOeval on seeded synthetic sets, to 1e-12."""

import detection_map as dm
import numpy as np
import pytest
from coco_peers import faster_coco_eval, peer_params, pycocotools_eval

pytest.importorskip("pycocotools")

ATOL = 1e-12


def assert_same(ours, peer):
    np.testing.assert_allclose(ours.stats, peer.stats, rtol=0, atol=ATOL)
    np.testing.assert_allclose(ours.precision, peer.eval["precision"], rtol=0, atol=ATOL)
    np.testing.assert_allclose(ours.recall, peer.eval["recall"], rtol=0, atol=ATOL)
    np.testing.assert_allclose(ours.scores, peer.eval["scores"], rtol=0, atol=ATOL)


SETS = [
    # (images, categories, dets per image, kwargs for synthetic_coco)
    (1, 1, 5.0, {}),
    (7, 3, 13.0, {}),
    (31, 5, 30.0, {}),
    (53, 11, 17.0, {"crowd_fraction": 0.3}),  # many crowds absorbing detections
    (41, 7, 40.0, {"score_decimals": 1}),  # heavy score ties, within and across images
    (29, 4, 25.0, {"crowded_image_fraction": 0.3}),  # many images over maxDets=100
    (37, 6, 9.0, {"empty_image_fraction": 0.5, "gts_per_image": 3.0}),
    (23, 2, 60.0, {"score_decimals": None}),
]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("n_img,n_cat,n_det,kw", SETS)
def test_default_parameters_match_pycocotools(seed, n_img, n_cat, n_det, kw):
    gt, dt = dm.synthetic_coco(n_img, n_cat, n_det, seed=seed, **kw)
    assert_same(dm.evaluate_coco(gt, dt), pycocotools_eval(gt, dt))


CUSTOM = [
    {"iou_thresholds": [0.1, 0.33, 0.5, 0.75, 0.9]},
    {"iou_thresholds": [0.0, 0.42, 1.0]},  # 0 matches anything; 1 is clamped to 1 - 1e-10
    {"iou_thresholds": [0.6]},  # no 0.5 / 0.75: those stats are -1
    {"iou_thresholds": [0.75, 0.5, 0.6]},  # unsorted is allowed, as in pycocotools
    {"rec_thresholds": np.linspace(0, 1, 11)},
    {"rec_thresholds": [0.0, 0.05, 0.3, 0.3, 0.999]},
    {"max_dets": (1, 5, 20)},  # no maxDets=100: stats[0] is -1, as in pycocotools
    {"max_dets": (3, 50, 200)},
    {
        "area_ranges": {
            "all": (0, 1e10),
            "small": (0, 500.0),
            "medium": (500.0, 5000.0),
            "large": (5000.0, 1e10),
            "tiny": (0, 64.0),
        }
    },  # fmt: skip
    {"area_ranges": {"all": (100.0, 20000.0), "odd": (1000.0, 1000.0)}},
]


@pytest.mark.parametrize("params", CUSTOM, ids=lambda p: next(iter(p)))
def test_custom_parameters_match_pycocotools(params):
    gt, dt = dm.synthetic_coco(43, 6, 35.0, seed=5, crowded_image_fraction=0.1)
    ours = dm.evaluate_coco(gt, dt, **params)
    assert_same(ours, pycocotools_eval(gt, dt, **peer_params(**params)))


def test_empty_detections_give_zero_and_minus_one():
    gt, _ = dm.synthetic_coco(19, 4, 1.0, seed=3)
    ours = dm.evaluate_coco(gt, [])
    assert_same(ours, pycocotools_eval(gt, []))
    assert set(np.unique(ours.stats)) <= {0.0, -1.0}


def test_ground_truth_without_annotations_gives_minus_one():
    gt, dt = dm.synthetic_coco(11, 3, 8.0, seed=4)
    gt = {**gt, "annotations": []}
    ours = dm.evaluate_coco(gt, dt)
    assert_same(ours, pycocotools_eval(gt, dt))
    assert (ours.stats == -1).all()


def test_annotation_id_zero_quirk_is_reproduced():
    # pycocotools stores the matched gt id and tests it for truthiness
    gt, dt = dm.synthetic_coco(9, 3, 12.0, seed=6)
    for ann in gt["annotations"]:
        ann["id"] -= 1  # the first annotation now has id 0
    target = gt["annotations"][0]
    dt = dt + [{"image_id": target["image_id"], "category_id": target["category_id"],
                "bbox": list(target["bbox"]), "score": 1.0}]  # fmt: skip
    assert_same(dm.evaluate_coco(gt, dt), pycocotools_eval(gt, dt))


def test_ignore_field_is_overwritten_by_iscrowd_like_pycocotools():
    gt, dt = dm.synthetic_coco(17, 3, 15.0, seed=8)
    for i, ann in enumerate(gt["annotations"]):
        ann["ignore"] = int(i % 3 == 0)  # pycocotools discards this
    assert_same(dm.evaluate_coco(gt, dt), pycocotools_eval(gt, dt))


def test_exact_duplicate_boxes_tie_on_iou():
    # two identical gts and identical detections: IoU ties decide which gt is taken
    gt = {
        "images": [{"id": 5}],
        "categories": [{"id": 2}],
        "annotations": [
            {
                "id": i + 1,
                "image_id": 5,
                "category_id": 2,
                "bbox": [10, 10, 30, 30],
                "area": 900.0,
                "iscrowd": int(i == 2),
            }  # fmt: skip
            for i in range(3)
        ],
    }
    dt = [{"image_id": 5, "category_id": 2, "bbox": [10, 10, 30, 30], "score": 0.5}] * 4
    assert_same(dm.evaluate_coco(gt, dt), pycocotools_eval(gt, dt))


def test_reads_json_files(tmp_path):
    import json

    gt, dt = dm.synthetic_coco(13, 3, 10.0, seed=9)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dt.json").write_text(json.dumps(dt))
    ours = dm.evaluate_coco(tmp_path / "gt.json", str(tmp_path / "dt.json"))
    assert_same(ours, pycocotools_eval(gt, dt))


def test_per_class_matches_pycocotools_single_category_runs():
    gt, dt = dm.synthetic_coco(31, 4, 20.0, seed=10)
    ours = dm.evaluate_coco(gt, dt)
    for cat in [c["id"] for c in gt["categories"]]:
        peer = pycocotools_eval(gt, dt, catIds=[cat])
        got = ours.per_class[cat]
        for key, idx in (("AP", 0), ("AP50", 1), ("AP75", 2), ("AR100", 8)):
            assert got[key] == pytest.approx(peer.stats[idx], abs=ATOL), (cat, key)


def test_dataframe_and_summary():
    pd = pytest.importorskip("pandas")
    gt, dt = dm.synthetic_coco(13, 3, 10.0, seed=2)
    res = dm.evaluate_coco(gt, dt)
    df = res.to_dataframe()
    assert isinstance(df, pd.DataFrame)
    assert list(df["category_id"]) == sorted(c["id"] for c in gt["categories"])
    np.testing.assert_array_equal(df["AP"].to_numpy(), [v["AP"] for v in res.per_class.values()])
    lines = res.summary().splitlines()
    assert len(lines) == 12
    assert lines[0].startswith(" Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all")
    assert lines[0].endswith(f"= {res.stats[0]:0.3f}")


@pytest.mark.parametrize(
    "seed,kw",
    [(0, {"score_decimals": None}), (1, {}), (2, {"score_decimals": 1, "crowd_fraction": 0.2})],
)
def test_faster_coco_eval_agrees(seed, kw):
    pytest.importorskip("faster_coco_eval")
    gt, dt = dm.synthetic_coco(37, 6, 30.0, seed=seed, **kw)
    ours = dm.evaluate_coco(gt, dt)
    peer = faster_coco_eval(gt, dt)
    np.testing.assert_allclose(ours.stats, peer.stats, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours.precision, peer.eval["precision"], rtol=0, atol=1e-12)
