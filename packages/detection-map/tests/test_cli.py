import json

import detection_map as dm
import pytest
from detection_map.cli import main


@pytest.fixture
def coco_files(tmp_path):
    gt, dt = dm.synthetic_coco(13, 4, 12.0, seed=1)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dt.json").write_text(json.dumps(dt))
    return tmp_path, dm.evaluate_coco(gt, dt)


def test_coco_summary_and_per_class(coco_files, capsys):
    path, res = coco_files
    assert main(["coco", str(path / "gt.json"), str(path / "dt.json"), "--per-class"]) == 0
    out = capsys.readouterr().out
    assert res.summary() in out
    assert "AR100" in out and len(out.splitlines()) == 12 + 1 + len(res.per_class)


def test_coco_plot_writes_png(coco_files):
    pytest.importorskip("matplotlib")
    path, _ = coco_files
    assert main(["coco", str(path / "gt.json"), str(path / "dt.json"), "--plot",
                 str(path / "pr.png")]) == 0  # fmt: skip
    assert (path / "pr.png").read_bytes()[:4] == b"\x89PNG"


def test_voc_command(tmp_path, capsys):
    gts = [{"image_id": 1, "boxes": [[0, 0, 10, 10], [20, 20, 40, 40]], "labels": [0, 1],
            "difficult": [False, False]}]  # fmt: skip
    dets = [{"image_id": 1, "boxes": [[0, 0, 10, 10], [21, 20, 40, 41]], "scores": [0.9, 0.5],
             "labels": [0, 1]}]  # fmt: skip
    (tmp_path / "g.json").write_text(json.dumps(gts))
    (tmp_path / "d.json").write_text(json.dumps(dets))
    args = ["voc", str(tmp_path / "g.json"), str(tmp_path / "d.json"), "--use-07-metric"]
    assert main(args + ["--per-class"]) == 0
    out = capsys.readouterr().out
    assert "mAP" in out and "1.0000" in out
    pytest.importorskip("matplotlib")
    assert main(args + ["--plot", str(tmp_path / "v.png")]) == 0
    assert (tmp_path / "v.png").exists()


def test_bad_file_exits_with_message(tmp_path, capsys):
    (tmp_path / "bad.json").write_text("{not json")
    assert main(["coco", str(tmp_path / "bad.json"), str(tmp_path / "bad.json")]) == 2
    assert "gt" in capsys.readouterr().err
