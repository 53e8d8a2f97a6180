"""Metrics: classification top-k, COCO mAP through pycocotools (imported when first used)."""
from .classification import evaluate_classifier

__all__ = ["evaluate_classifier"]
