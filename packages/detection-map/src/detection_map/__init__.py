"""Object-detection mAP: VOC07 11-point, VOC10+ all-point and COCO.

``evaluate_coco`` reproduces ``pycocotools.cocoeval.COCOeval`` (bbox) and
``evaluate_voc`` the PASCAL VOC devkit's ``voc_eval.py``, both with vectorised numpy.
"""

from .ap import average_precision
from .coco import COCOResult, evaluate_coco
from .metric import MeanAveragePrecision
from .synthetic import synthetic_coco
from .voc import VOCResult, evaluate_voc

__version__ = "0.1.0"

__all__ = [
    "COCOResult",
    "MeanAveragePrecision",
    "VOCResult",
    "average_precision",
    "evaluate_coco",
    "evaluate_voc",
    "synthetic_coco",
]
