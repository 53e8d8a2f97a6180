"""Datasets, transforms and the single uint8 -> network-input preprocessing step."""
from .preprocess import DETECTION, IMAGENET, Preprocess

__all__ = ["Preprocess", "IMAGENET", "DETECTION"]
