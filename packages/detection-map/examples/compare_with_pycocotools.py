"""Evaluate a synthetic COCO set from JSON files with detection_map and, when installed,
pycocotools and faster-coco-eval; print the stats side by side and the time each took.

    python examples/compare_with_pycocotools.py --images 500
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
from pathlib import Path

import detection_map as dm
import numpy as np


def run_cocoeval(module: str, gt_path: str, dt_path: str) -> np.ndarray | None:
    try:
        if module == "pycocotools":
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval
        else:
            from faster_coco_eval import COCO
            from faster_coco_eval import COCOeval_faster as COCOeval
    except ImportError:
        return None
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_path)
        ev = COCOeval(gt, gt.loadRes(dt_path), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--categories", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    gt, dt = dm.synthetic_coco(args.images, args.categories, 30.0, seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        gt_path, dt_path = str(Path(tmp) / "gt.json"), str(Path(tmp) / "dt.json")
        Path(gt_path).write_text(json.dumps(gt))
        Path(dt_path).write_text(json.dumps(dt))
        rows = []
        start = time.perf_counter()
        ours = dm.evaluate_coco(gt_path, dt_path)
        rows.append(("detection_map", time.perf_counter() - start, ours.stats))
        for name in ("faster-coco-eval", "pycocotools"):
            start = time.perf_counter()
            stats = run_cocoeval(name, gt_path, dt_path)
            if stats is not None:
                rows.append((name, time.perf_counter() - start, stats))
    print(ours.summary())
    print(f"\n{len(dt)} detections on {args.images} images")
    for name, seconds, stats in rows:
        diff = np.abs(stats - ours.stats).max()
        print(f"{name:>18}: {seconds:7.3f} s   max |stats - ours| = {diff:.1e}")


if __name__ == "__main__":
    main()
