"""iou_type="segm" against pycocotools on seeded synthetic polygon/RLE sets, to 1e-12."""

import detection_map as dm
import numpy as np
import pytest
from coco_peers import _run
from detection_map import _masks
from segm_data import synthetic_segm

mu = pytest.importorskip("pycocotools.mask")
# pycocotools.mask.decode trips a numpy 2 DeprecationWarning of its own
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def segm_peer(gt, dt, **params):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    return _run(COCO, lambda g, d, _: COCOeval(g, d, "segm"), gt, dt, params)


def assert_same(ours, peer):
    np.testing.assert_allclose(ours.stats, peer.stats, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours.precision, peer.eval["precision"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours.recall, peer.eval["recall"], rtol=0, atol=1e-12)


@pytest.mark.parametrize("with_bbox", [False, True])  # loadRes' bbox branch sets area w*h
@pytest.mark.parametrize("seed,n_img,n_cat", [(0, 1, 1), (1, 17, 3), (2, 41, 5)])
def test_segm_matches_pycocotools(seed, n_img, n_cat, with_bbox):
    gt, dt = synthetic_segm(n_img, n_cat, seed, with_bbox=with_bbox)
    assert_same(dm.evaluate_coco(gt, dt, "segm"), segm_peer(gt, dt))


def test_segm_custom_area_ranges():
    gt, dt = synthetic_segm(23, 3, 5)
    ranges = {"all": (0, 1e10), "small": (0, 100.0), "medium": (100.0, 600.0),
              "large": (600.0, 1e10)}  # fmt: skip
    ours = dm.evaluate_coco(gt, dt, "segm", area_ranges=ranges, iou_thresholds=[0.3, 0.5, 0.75])
    peer = segm_peer(gt, dt, areaRng=[list(v) for v in ranges.values()],
                     areaRngLbl=list(ranges), iouThrs=np.array([0.3, 0.5, 0.75]))  # fmt: skip
    assert_same(ours, peer)


@pytest.mark.parametrize("seed", range(4))
def test_polygon_rasterisation_and_rle_strings_match_pycocotools(seed):
    rng = np.random.default_rng(seed)
    for _ in range(40):
        h, w = int(rng.integers(3, 70)), int(rng.integers(3, 70))
        poly = rng.uniform(-4, max(h, w) + 4, 2 * int(rng.integers(3, 9)))
        if rng.random() < 0.3:
            poly = np.round(poly)
        rle = mu.frPyObjects([poly.tolist()], h, w)[0]
        ref = mu.decode(rle).ravel(order="F").astype(bool)
        ours = _masks.mask_from_counts(_masks.counts_from_polygon(poly, h, w), h, w)
        np.testing.assert_array_equal(ours, ref)
        from_string = _masks.mask_from_counts(_masks.counts_from_string(rle["counts"]), h, w)
        np.testing.assert_array_equal(from_string, ref)


def test_mask_iou_matches_pycocotools_including_crowds():
    rng = np.random.default_rng(3)
    h, w = 31, 47
    masks = [(rng.random((h, w)) < p).astype(np.uint8) for p in (0.1, 0.5, 0.9, 0.0)]
    rles = [mu.encode(np.asfortranarray(m)) for m in masks]
    flat = np.stack([m.ravel(order="F").astype(bool) for m in masks])
    crowd = np.array([0, 1, 0, 1], dtype=bool)
    want = mu.iou(rles, rles, crowd.astype(np.uint8).tolist())
    np.testing.assert_allclose(_masks.mask_ious(flat, flat, crowd), want, rtol=0, atol=1e-15)


def test_segm_needs_image_sizes_and_segmentations():
    gt, dt = synthetic_segm(3, 2, 0)
    no_size = {**gt, "images": [{"id": im["id"]} for im in gt["images"]]}
    with pytest.raises(ValueError, match=r"gt\['images'\]\[0\] is missing the key 'height'"):
        dm.evaluate_coco(no_size, dt, "segm")
    bad_dt = [{k: v for k, v in d.items() if k != "segmentation"} for d in dt]
    with pytest.raises(ValueError, match=r"dt\[0\] is missing the key 'segmentation'"):
        dm.evaluate_coco(gt, bad_dt, "segm")
    wrong = [dict(dt[0], segmentation={"size": [1, 1], "counts": "1"})] + dt[1:]
    with pytest.raises(ValueError, match=r"dt\[0\]\['segmentation'\]: RLE size"):
        dm.evaluate_coco(gt, wrong, "segm")


def test_cli_segm(tmp_path, capsys):
    import json

    from detection_map.cli import main

    gt, dt = synthetic_segm(9, 2, 4)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dt.json").write_text(json.dumps(dt))
    assert main(["coco", str(tmp_path / "gt.json"), str(tmp_path / "dt.json"),
                 "--iou-type", "segm"]) == 0  # fmt: skip
    assert dm.evaluate_coco(gt, dt, "segm").summary() in capsys.readouterr().out
