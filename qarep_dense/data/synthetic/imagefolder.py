"""Deterministic shape classes in ImageFolder layout: one class per shape, textured backgrounds.

Tiny, fast, download-free data for end-to-end tests and demos of the classification tools.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import cv2
import numpy as np

from ...fileio import claim, sealed
from .shapes import SHAPES, draw_shape, textured_background

log = logging.getLogger(__name__)

_SPLITS = {"train": 0, "val": 1}


def shape_image(shape: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size, 3) uint8 RGB: one ``shape`` of random size, position and colour on a textured background."""
    img = textured_background(rng, size, size)
    radius = rng.uniform(0.22, 0.4) * size
    cx, cy = rng.uniform(radius, size - radius, size=2)
    color = rng.integers(0, 256, size=3)
    if np.abs(color - img.reshape(-1, 3).mean(0)).mean() < 60:  # keep the shape visible
        color = 255 - color
    draw_shape(img, shape, cx, cy, radius, tuple(int(c) for c in color))
    return img


def generate_imagefolder(out_dir: str | os.PathLike, num_classes: int = 6, per_class_train: int = 100,
                         per_class_val: int = 20, size: int = 32, seed: int = 0) -> Path:
    """Write ``out_dir/{train,val}/<shape>/<index>.png`` for the first ``num_classes`` shapes; return ``out_dir``.

    Every image comes from its own generator seeded by (seed, split, class, index), so a seed
    fixes every pixel. Skipped when ``out_dir`` holds a sealed export of the same settings.
    """
    if not 2 <= num_classes <= len(SHAPES):
        raise ValueError(f"generate_imagefolder: num_classes must be 2..{len(SHAPES)} (one per shape), "
                         f"got {num_classes}")
    if per_class_train < 1 or per_class_val < 1 or size < 16:
        raise ValueError("generate_imagefolder: per_class_train and per_class_val must be >= 1 and size >= 16; "
                         f"got {per_class_train}, {per_class_val}, {size}")
    out_dir = Path(out_dir)
    spec = {"dataset": "synthetic-shapes", "num_classes": num_classes, "per_class": [per_class_train, per_class_val],
            "size": size, "seed": seed, "version": 1}
    if sealed(out_dir, "synthetic-shapes", spec):
        return out_dir
    log.info("generating synthetic shape classes (%d x %d/%d images) in %s", num_classes, per_class_train,
             per_class_val, out_dir)
    with claim(out_dir, "synthetic-shapes", spec, writes=tuple(_SPLITS), shared=True) as out:
        counts = {}
        for split, per_class in (("train", per_class_train), ("val", per_class_val)):
            for c, shape in enumerate(SHAPES[:num_classes]):
                folder = out_dir / split / shape
                folder.mkdir(parents=True, exist_ok=True)
                for i in range(per_class):
                    rng = np.random.default_rng([seed, _SPLITS[split], c, i])
                    path = folder / f"{i:05d}.png"
                    if not cv2.imwrite(str(path), shape_image(shape, size, rng)[..., ::-1]):  # OpenCV writes BGR
                        raise OSError(f"{path}: could not write image")
            counts[split] = per_class * num_classes
        out.seal({"counts": counts})
    return out_dir
