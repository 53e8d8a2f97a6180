"""Synthetic COCO-format detection data: coloured shapes on textured backgrounds.

Layout written under ``root`` (the real COCO layout, so every tool runs unchanged on it)::

    images/train/000001.jpg ...   annotations/instances_train.json
    images/val/000001.jpg ...     annotations/instances_val.json
    .written.json                 what was generated, with which parameters (reruns are skipped)

The folder is claimed like every output (:mod:`qarep_dense.fileio.ownership`): the generator writes only
``images/{train,val}`` and ``annotations/instances_{train,val}.json``, refuses when one of them holds files
it did not record (a user's data), and on regeneration removes only the files it recorded.

Each image holds 1-6 shapes (class = shape kind) of 8-40% of the short side. Later shapes may cover
earlier ones; a placement that would hide more than half of an earlier shape is retried, and every box is
the tight hull of the shape's *visible* pixels (the mask returned by ``draw_shape``), so boxes are exact.
Every image draws from ``numpy.random.default_rng([seed, split, index])``: same seed, same bytes.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from tqdm import tqdm

from ...fileio import claim, sealed
from .shapes import SHAPES, draw_shape, textured_background

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
SPLITS = ("train", "val")
_MAX_TRIES = 12
_MIN_VISIBLE = 0.5  # an earlier shape must keep at least half of its painted pixels
_MIN_CONTRAST = 90.0  # L1 distance (0..765) between a shape's colour and the background under it


def _place_shape(rng: np.random.Generator, img: np.ndarray, owner: np.ndarray, painted: np.ndarray,
                 visible: np.ndarray, num_classes: int, size_range: tuple[float, float],
                 force: bool) -> tuple[int, np.ndarray] | None:
    """Try random shapes until one contrasts with what it covers and hides no earlier shape too much.

    Returns (class index, (H, W) bool mask) of the accepted shape, or None; ``force`` accepts the last try.
    """
    h, w = img.shape[:2]
    scratch = np.zeros_like(img)
    for attempt in range(_MAX_TRIES):
        cls = int(rng.integers(num_classes))
        radius = rng.uniform(*size_range) * min(h, w) / 2
        cx, cy = rng.uniform(radius, w - radius), rng.uniform(radius, h - radius)
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        scratch[:] = 0
        mask = draw_shape(scratch, SHAPES[cls], cx, cy, radius, color)
        if not mask.any():
            continue
        contrast = np.abs(img[mask].astype(np.float32).mean(0) - np.array(color, np.float32)).sum()
        under = owner[mask]
        hidden = np.bincount(under[under >= 0], minlength=len(painted))
        keeps_others = bool(np.all(visible - hidden >= _MIN_VISIBLE * painted))
        if (contrast >= _MIN_CONTRAST and keeps_others) or (force and attempt == _MAX_TRIES - 1):
            img[mask] = color
            return cls, mask
    return None


def render_image(rng: np.random.Generator, height: int, width: int, num_classes: int,
                 size_range: tuple[float, float] = (0.08, 0.40), max_objects: int = 6,
                 ) -> tuple[np.ndarray, list[tuple[int, list[float], int]]]:
    """One synthetic image: RGB (H, W, 3) uint8 and [(class index, [x, y, w, h] tight box, visible area)]."""
    img = textured_background(rng, height, width)
    owner = np.full((height, width), -1, np.int16)  # index of the shape visible at each pixel
    painted = np.zeros(0, np.int64)  # pixels each shape painted, and how many of them are still visible
    visible = np.zeros(0, np.int64)
    classes: list[int] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        placed = _place_shape(rng, img, owner, painted, visible, num_classes, size_range, force=not classes)
        if placed is None:
            continue
        cls, mask = placed
        under = owner[mask]
        visible = visible - np.bincount(under[under >= 0], minlength=len(classes))
        owner[mask] = len(classes)
        painted, visible = np.append(painted, mask.sum()), np.append(visible, mask.sum())
        classes.append(cls)
    objects = []
    for k, cls in enumerate(classes):
        ys, xs = np.nonzero(owner == k)
        x1, y1 = int(xs.min()), int(ys.min())
        # pixel-edge convention: a shape covering columns 3..7 spans x = 3 .. 8
        objects.append((cls, [float(x1), float(y1), float(xs.max() + 1 - x1), float(ys.max() + 1 - y1)], len(xs)))
    return img, objects


def _write_split(root: Path, split: str, split_id: int, count: int, size: tuple[int, int], seed: int,
                 category_ids: list[int], ext: str, progress: bool) -> Path:
    img_dir = root / "images" / split
    img_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if ext == "jpg" else []
    for i in tqdm(range(count), desc=f"synthetic coco {split}", disable=not progress, leave=False):
        rng = np.random.default_rng([seed, split_id, i])
        img, objects = render_image(rng, size[0], size[1], len(category_ids))
        name = f"{i + 1:06d}.{ext}"
        if not cv2.imwrite(str(img_dir / name), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), params):
            raise OSError(f"{img_dir / name}: cv2.imwrite failed")
        images.append({"id": i + 1, "file_name": name, "height": size[0], "width": size[1]})
        for cls, bbox, area in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": category_ids[cls],
                                "bbox": bbox, "area": float(area), "iscrowd": 0})
    data = {"info": {"description": f"qarep-dense synthetic shapes ({split})", "version": FORMAT_VERSION},
            "licenses": [], "images": images, "annotations": annotations,
            "categories": [{"id": cid, "name": SHAPES[k], "supercategory": "shape"}
                           for k, cid in enumerate(category_ids)]}
    ann_file = root / "annotations" / f"instances_{split}.json"
    ann_file.parent.mkdir(parents=True, exist_ok=True)
    ann_file.write_text(json.dumps(data, indent=1))
    return ann_file


def _outputs(root: Path) -> dict[str, Path]:
    out = {}
    for split in SPLITS:
        out[f"{split}_images"] = root / "images" / split
        out[f"{split}_ann"] = root / "annotations" / f"instances_{split}.json"
    return out


def owned_paths() -> tuple[str, ...]:
    """The paths (relative to the root) the generator writes, and the only ones it may ever remove."""
    return tuple(p for split in SPLITS for p in (f"images/{split}", f"annotations/instances_{split}.json"))


def synthetic_coco_paths(root: str | os.PathLike) -> dict[str, Path]:
    """The layout of an existing export under ``root`` (nothing generated); raises naming what is missing."""
    out = _outputs(Path(root))
    missing = [str(p) for p in out.values() if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{root}: missing {missing} (expected the synthetic COCO layout "
                                "images/{train,val}, annotations/instances_{train,val}.json)")
    return out


def _check_args(num_train: int, num_val: int, size: tuple[int, int], num_classes: int,
                category_ids: list[int], ext: str) -> None:
    if num_train < 0 or num_val < 0:
        raise ValueError(f"num_train/num_val must be >= 0, got {num_train}/{num_val}")
    if min(size) < 32:
        raise ValueError(f"image_size must be at least 32 px, got {size}")
    if not 1 <= num_classes <= len(SHAPES):
        raise ValueError(f"num_classes must be in 1..{len(SHAPES)} (one class per shape), got {num_classes}")
    if len(category_ids) != num_classes or len(set(category_ids)) != num_classes or min(category_ids) < 1:
        raise ValueError(f"category_ids must be {num_classes} distinct ids >= 1, got {category_ids}")
    if ext not in ("jpg", "png"):
        raise ValueError(f"ext must be 'jpg' or 'png', got {ext!r}")


def generate_coco(root: str | os.PathLike, num_train: int, num_val: int, image_size: int | tuple[int, int] = 256,
                  seed: int = 0, num_classes: int = len(SHAPES), category_ids: Sequence[int] | None = None,
                  ext: str = "jpg", progress: bool = False) -> dict[str, Path]:
    """Write (or reuse) a synthetic COCO-format dataset under ``root``.

    Args:
        image_size: side S, or (height, width) for non-square images.
        category_ids: COCO ids of the classes (default 1..num_classes); non-contiguous ids are allowed.
    Returns paths {"train_images", "train_ann", "val_images", "val_ann"}. Skips the work when
    ``root`` holds a sealed export of exactly these parameters with its files intact. Raises
    ``FileExistsError`` naming the folder when one of the paths it writes holds files it did not record.
    """
    root = Path(root)
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(int(v) for v in image_size)
    ids = list(range(1, num_classes + 1)) if category_ids is None else [int(c) for c in category_ids]
    _check_args(num_train, num_val, size, num_classes, ids, ext)
    params = {"format": FORMAT_VERSION, "num_train": num_train, "num_val": num_val, "image_size": list(size),
              "seed": seed, "category_ids": ids, "ext": ext}
    out = _outputs(root)
    if sealed(root, "synthetic-coco", params):
        logger.info("%s: synthetic COCO data already generated, reusing it", root)
        return out
    with claim(root, "synthetic-coco", params, writes=owned_paths(), shared=True) as claimed:  # refuses a user's
        counts = {}
        for split_id, (split, count) in enumerate(zip(SPLITS, (num_train, num_val))):
            _write_split(root, split, split_id, count, size, seed, ids, ext, progress)
            counts[split] = count
        claimed.seal({"counts": counts})  # last: a crash mid-way leaves the export unsealed
    return out
