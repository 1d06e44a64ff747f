"""Object-detection mAP: VOC07 11-point, VOC10+ all-point and COCO."""

__version__ = "0.1.0"

__all__: list[str] = []
