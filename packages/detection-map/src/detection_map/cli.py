"""``detection-map coco GT.json DT.json`` and ``detection-map voc GT.json DT.json``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import numpy as np

from .coco import COCOResult, evaluate_coco
from .voc import VOCResult, evaluate_voc


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="detection-map", description="COCO and PASCAL VOC mean Average Precision."
    )
    sub = parser.add_subparsers(dest="protocol", required=True)
    c = sub.add_parser("coco", help="COCO bbox/segm evaluation (pycocotools' numbers)")
    c.add_argument("gt", help="COCO dataset JSON (images, annotations, categories)")
    c.add_argument("dt", help="COCO results JSON (a list of detections)")
    c.add_argument("--iou-type", choices=("bbox", "segm"), default="bbox")
    v = sub.add_parser("voc", help="PASCAL VOC evaluation (voc_eval.py's numbers)")
    v.add_argument("gt", help="JSON list of {image_id, boxes, labels, difficult?} per image")
    v.add_argument("dt", help="JSON list of {image_id, boxes, scores, labels} per image")
    v.add_argument("--iou-threshold", type=float, default=0.5)
    v.add_argument("--use-07-metric", action="store_true", help="11-point AP (VOC2007)")
    v.add_argument("--use-difficult", action="store_true", help="count difficult objects")
    for p in (c, v):
        p.add_argument("--per-class", action="store_true", help="print a per-class table")
        p.add_argument("--plot", metavar="PNG", help="save precision/recall curves (matplotlib)")
    return parser


def _coco_table(result: COCOResult) -> str:
    lines = [f"{'category':>10}  {'AP':>7}  {'AP50':>7}  {'AP75':>7}  {'AR100':>7}"]
    for cat, v in result.per_class.items():
        lines.append(
            f"{cat:>10}  {v['AP']:7.4f}  {v['AP50']:7.4f}  {v['AP75']:7.4f}  {v['AR100']:7.4f}"
        )
    return "\n".join(lines)


def _plot_coco(result: COCOResult, path: str, plt) -> None:
    a = result.area_labels.index("all") if "all" in result.area_labels else 0
    p = result.precision[:, :, :, a, -1]  # (T, R, K)
    fig, ax = plt.subplots(figsize=(5, 4))
    curves = [("mean over IoU", slice(None))]
    curves += [
        (f"IoU={t:.2f}", [i]) for i, t in enumerate(result.iou_thresholds) if t in (0.5, 0.75)
    ]
    for name, t in curves:
        block = np.where(p[t] > -1, p[t], np.nan)  # (t, R, K)
        with np.errstate(invalid="ignore"):
            mean = np.nanmean(
                np.moveaxis(block, 1, 0).reshape(len(result.rec_thresholds), -1), axis=1
            )
        ax.plot(result.rec_thresholds, mean, label=name)
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
           title="COCO precision/recall (mean over classes)")  # fmt: skip
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_voc(result: VOCResult, path: str, plt) -> None:
    fig, ax = plt.subplots(figsize=(5, 4))
    for label, (rec, prec) in result.curves.items():
        if result.num_positives[label]:
            ax.plot(rec, prec, label=f"{label} (AP {result.per_class[label]:.3f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
           title=f"VOC precision/recall (mAP {result.map:.3f})")  # fmt: skip
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``detection-map`` command; returns the exit status."""
    args = _parser().parse_args(argv)
    plt = None
    if args.plot:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print(
                "detection-map: --plot needs matplotlib (pip install matplotlib)", file=sys.stderr
            )
            return 2
    try:
        if args.protocol == "coco":
            result = evaluate_coco(args.gt, args.dt, args.iou_type)
            print(result.summary())
            if args.per_class:
                print(_coco_table(result))
            if plt is not None:
                _plot_coco(result, args.plot, plt)
        else:
            with open(args.gt, encoding="utf-8") as f:
                gts = json.load(f)
            with open(args.dt, encoding="utf-8") as f:
                dts = json.load(f)
            result = evaluate_voc(
                gts, dts, args.iou_threshold, args.use_07_metric, args.use_difficult
            )
            print(result.summary() if args.per_class else f"mAP = {result.map:0.4f}")
            if plt is not None:
                _plot_voc(result, args.plot, plt)
    except (ValueError, TypeError, OSError) as err:
        print(f"detection-map: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
