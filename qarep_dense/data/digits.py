"""scikit-learn's bundled digits (8x8 grey, 1797 images, no download) as an RGB ImageFolder export.

The CPU-scale stand-in for ImageNet used to reproduce the paper's quantization collapse (REFERENCE §8).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import cv2
import numpy as np

from ..fileio import claim, sealed

log = logging.getLogger(__name__)

DIGITS_TRAIN, DIGITS_VAL = 1437, 360


def digits_grey() -> tuple[np.ndarray, np.ndarray]:
    """(N, 8, 8) uint8 grey images (0..255, white strokes on black) and (N,) int labels."""
    from sklearn.datasets import load_digits  # lazily: sklearn is only needed for the digits exports

    digits = load_digits()
    grey = np.clip(digits.images * (255.0 / 16.0), 0, 255).astype(np.uint8)  # pixel values are 0..16
    return grey, digits.target.astype(np.int64)


def upsample(grey: np.ndarray, size: int) -> np.ndarray:
    """An 8x8 grey digit at ``size`` x ``size``, bilinearly (the look every digits export shares)."""
    return cv2.resize(grey, (size, size), interpolation=cv2.INTER_LINEAR)


def digits_images(size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(N, size, size, 3) uint8 RGB images and (N,) int labels, upsampled bilinearly from 8x8."""
    grey, labels = digits_grey()
    big = np.stack([upsample(im, size) for im in grey])
    return np.repeat(big[..., None], 3, axis=-1), labels


def digits_split(labels: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, val indices): the classification split, stratified 80/20 (1437/360) by ``seed``.

    Every digits export draws its splits from here, so a detection or segmentation validation canvas
    holds only digits the classifiers of the same split seed never trained on.
    """
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    train_idx, val_idx = train_test_split(index, test_size=0.2, stratify=labels, random_state=seed)
    return np.sort(train_idx), np.sort(val_idx)


def export_digits(out_dir: str | os.PathLike, size: int = 32, seed: int = 0) -> Path:
    """Write ``out_dir/{train,val}/<digit>/<index>.png`` (stratified 80/20 split: 1437/360) and return ``out_dir``.

    Skipped when ``out_dir`` holds a sealed export of the same settings (size, seed); see
    :mod:`qarep_dense.fileio.ownership` for what a regeneration replaces.
    """
    if size < 8:
        raise ValueError(f"export_digits: size must be >= 8 (the source images are 8x8), got {size}")
    out_dir = Path(out_dir)
    spec = {"dataset": "sklearn-digits", "size": size, "seed": seed, "split": "stratified-80-20", "version": 1}
    if sealed(out_dir, "sklearn-digits", spec):
        return out_dir
    with claim(out_dir, "sklearn-digits", spec, writes=("train", "val"), shared=True) as out:
        log.info("exporting scikit-learn digits at %dx%d to %s", size, size, out_dir)
        images, labels = digits_images(size)
        train_idx, val_idx = digits_split(labels, seed)
        counts = {}
        for split, ids in (("train", train_idx), ("val", val_idx)):
            for label in range(10):
                (out_dir / split / str(label)).mkdir(parents=True, exist_ok=True)
            for i in sorted(ids):
                path = out_dir / split / str(labels[i]) / f"{i:04d}.png"
                if not cv2.imwrite(str(path), images[i][..., ::-1]):  # OpenCV writes BGR
                    raise OSError(f"{path}: could not write image")
            counts[split] = len(ids)
        out.seal({"counts": counts})
    return out_dir
