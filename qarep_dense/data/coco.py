"""COCO-format detection dataset: validated annotations, letterbox for eval, mosaic/affine/HSV/flip for training.

Items are ``(image uint8 (3, S, S), targets float32 (M, 5) [class, x1, y1, x2, y2], info)``; boxes are
in the pixels of the returned (letterboxed / augmented) image, classes contiguous 0..C-1 in the order
of the sorted COCO category ids (for COCO 2017 that is the standard 80 -> 91 map).
``info`` = {"image_id", "file", "orig_size": (h, w), "ratio", "pad": (pad_w, pad_h)}; ratio and pad
describe the letterbox exactly in eval mode (no augmentation), which is what evaluation maps back with.

Randomness: item ``i`` of epoch ``e`` draws from ``numpy.random.default_rng([seed, e, i])``, so an epoch's
augmentation does not depend on the number of workers or on which worker loads which item.
"""
from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from . import transforms as T
from .image_check import ImageReadError, check_image_files  # noqa: F401 (ImageReadError: raised at build)

logger = logging.getLogger(__name__)


class AnnotationError(ValueError):
    """A COCO annotation file is unreadable or does not have the COCO structure."""


@dataclass
class DetAugment:
    """Training augmentation (YOLOv6 defaults). Probabilities: flip_lr, mosaic, mixup; the rest are gains/ranges."""

    hsv_h: float = 0.015
    hsv_s: float = 0.7
    hsv_v: float = 0.4
    degrees: float = 0.0
    translate: float = 0.1
    scale: float = 0.5
    shear: float = 0.0
    flip_lr: float = 0.5
    mosaic: float = 1.0
    mixup: float = 0.0


def load_coco_json(ann_file: str | os.PathLike) -> dict:
    """Read and structurally validate a COCO detection JSON; errors name the file and the problem."""
    path = Path(ann_file)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: annotation file not found")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AnnotationError(f"{path}: not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise AnnotationError(f"{path}: expected a JSON object at the top level, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise AnnotationError(f"{path}: missing or non-list {key!r} (a COCO detection file needs "
                                  f"'images', 'annotations' and 'categories' lists)")
    _check_entries(path, data)
    return data


def _check_entries(path: Path, data: dict) -> None:
    required = {"images": ("id", "file_name", "width", "height"),
                "annotations": ("id", "image_id", "category_id", "bbox"),
                "categories": ("id", "name")}
    for key, fields in required.items():
        for k, entry in enumerate(data[key]):
            missing = [f for f in fields if not isinstance(entry, dict) or f not in entry]
            if missing:
                raise AnnotationError(f"{path}: {key}[{k}] lacks field(s) {missing}")
    # pycocotools indexes annotations by id: a repeated id silently replaces one box by another in the
    # evaluation's ground truth (fewer, duplicated boxes and a wrong AP), so it is refused here
    for key in ("images", "annotations", "categories"):
        ids = [e["id"] for e in data[key]]
        if not all(isinstance(i, int) for i in ids):
            raise AnnotationError(f"{path}: {key!r} ids must be integers")
        if len(set(ids)) != len(ids):
            twice = sorted(i for i, n in Counter(ids).items() if n > 1)
            raise AnnotationError(f"{path}: duplicate ids in {key!r} (e.g. {twice[:3]})")
    image_ids = {e["id"] for e in data["images"]}
    cat_ids = {e["id"] for e in data["categories"]}
    for ann in data["annotations"]:
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4
                and all(isinstance(v, (int, float)) and np.isfinite(v) for v in bbox)):
            raise AnnotationError(f"{path}: annotation id {ann['id']}: bbox must be 4 numbers [x, y, w, h], "
                                  f"got {bbox!r}")
        if ann["image_id"] not in image_ids:
            raise AnnotationError(f"{path}: annotation id {ann['id']} refers to unknown image_id {ann['image_id']}")
        if ann["category_id"] not in cat_ids:
            raise AnnotationError(f"{path}: annotation id {ann['id']} has unknown category_id {ann['category_id']}")


def _image_targets(anns: list[dict], size: tuple[int, int], cat_to_index: dict[int, int]) -> tuple[np.ndarray, int]:
    """(M, 5) [class, x1, y1, x2, y2] of the non-crowd annotations, clipped to (h, w); and the dropped count."""
    rows = [[cat_to_index[a["category_id"]], *a["bbox"]] for a in anns if not a.get("iscrowd", 0)]
    if not rows:
        return np.zeros((0, 5), np.float32), 0
    arr = np.asarray(rows, np.float32)
    arr[:, 3:5] += arr[:, 1:3]  # xywh -> xyxy
    boxes, keep = T.clip_and_filter_boxes(arr[:, 1:5], size[1], size[0], min_size=0.0, max_aspect=None)
    return np.concatenate([arr[keep, :1], boxes], axis=1), int((~keep).sum())


class CocoDetection(Dataset):
    """COCO-format detection dataset yielding letterboxed (eval) or augmented (train) S x S samples.

    Args:
        img_dir: folder holding the ``file_name`` of every image in the JSON.
        ann_file: COCO instances JSON.
        image_size: output side S.
        train: enables ``augment`` (None = letterbox only, like eval).
        seed: base of the per-item random generators.
        check_images: read every image's header now (format, size against the JSON), so a corrupt file
            raises :class:`ImageReadError` naming it when the dataset is built, not mid-epoch.
    Set ``mosaic_enabled = False`` to switch mosaic off (last epochs); call ``set_epoch`` every epoch.
    """

    def __init__(self, img_dir: str | os.PathLike, ann_file: str | os.PathLike, image_size: int,
                 train: bool = False, augment: DetAugment | None = None, seed: int = 0,
                 check_images: bool = True) -> None:
        if not isinstance(image_size, int) or image_size <= 0:
            raise ValueError(f"image_size must be a positive int, got {image_size!r}")
        self.img_dir, self.ann_file = Path(img_dir), Path(ann_file)
        self.image_size, self.train, self.seed = image_size, train, seed
        self.augment = augment if train else None
        self.mosaic_enabled = True
        self.epoch = 0
        data = load_coco_json(self.ann_file)
        cats = sorted(data["categories"], key=lambda c: c["id"])
        self.category_ids: list[int] = [c["id"] for c in cats]
        self.names: list[str] = [c["name"] for c in cats]
        cat_to_index = {cid: k for k, cid in enumerate(self.category_ids)}
        self.images = sorted(data["images"], key=lambda e: e["id"])
        if not self.images:
            raise AnnotationError(f"{self.ann_file}: the 'images' list is empty (no image to train or evaluate on)")
        by_image: dict[Any, list[dict]] = {e["id"]: [] for e in self.images}
        for ann in data["annotations"]:
            by_image[ann["image_id"]].append(ann)
        self.labels, dropped = [], 0
        for e in self.images:
            targets, n = _image_targets(by_image[e["id"]], (e["height"], e["width"]), cat_to_index)
            self.labels.append(targets)
            dropped += n
        if dropped:
            logger.warning("%s: dropped %d degenerate boxes (width or height <= 0 after clipping to the image)",
                           self.ann_file, dropped)
        self._check_files(check_images)

    def _check_files(self, check_images: bool) -> None:
        if not self.img_dir.is_dir():
            raise FileNotFoundError(f"{self.img_dir}: image folder not found (annotations: {self.ann_file})")
        missing = [str(self.img_dir / e["file_name"]) for e in self.images
                   if not os.path.isfile(self.img_dir / e["file_name"])]
        if missing:
            shown = ", ".join(missing[:3]) + (f" (+{len(missing) - 3} more)" if len(missing) > 3 else "")
            raise FileNotFoundError(f"{self.ann_file}: {len(missing)} image(s) listed but missing on disk: {shown}")
        if check_images:
            check_image_files([self.img_dir / e["file_name"] for e in self.images], f"{self.ann_file}",
                              expected_hw=[(e["height"], e["width"]) for e in self.images])

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def __len__(self) -> int:
        return len(self.images)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's augmentation stream (call before iterating; workers copy the dataset then)."""
        self.epoch = int(epoch)

    def load_image(self, index: int) -> np.ndarray:
        """Decoded RGB (H, W, 3) uint8 of image ``index``; corrupt or mis-sized files raise naming the path."""
        entry = self.images[index]
        path = self.img_dir / entry["file_name"]
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise OSError(f"{path}: cannot decode image (missing, truncated or not an image file)")
        if img.shape[:2] != (entry["height"], entry["width"]):
            raise ValueError(f"{path}: decoded size {img.shape[:2]} differs from (height, width) "
                             f"({entry['height']}, {entry['width']}) in {self.ann_file}")
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)

    def _info(self, index: int, ratio: float, pad: tuple[float, float]) -> dict:
        e = self.images[index]
        return {"image_id": int(e["id"]), "file": str(self.img_dir / e["file_name"]),
                "orig_size": (int(e["height"]), int(e["width"])), "ratio": float(ratio), "pad": pad}

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
        if self.augment is None:
            img, boxes, classes, ratio, pad = self._letterboxed(index)
        else:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            img, boxes, classes, ratio, pad = self._augmented(index, rng)
        targets = np.concatenate([classes.reshape(-1, 1), boxes.reshape(-1, 4)], axis=1).astype(np.float32)
        image = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
        return image, torch.from_numpy(targets), self._info(index, ratio, pad)

    def _letterboxed(self, index: int):
        img, ratio, pad = T.letterbox(self.load_image(index), self.image_size)
        labels = self.labels[index]
        return img, T.letterbox_boxes(labels[:, 1:], ratio, pad), labels[:, 0].copy(), ratio, pad

    def _resized(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        img, ratio = T.resize_long_side(self.load_image(index), self.image_size)
        labels = self.labels[index]
        return img, labels[:, 1:] * ratio, labels[:, 0].copy()

    def _augmented(self, index: int, rng: np.random.Generator):
        """Mosaic (or letterbox) -> random affine to S x S -> optional mixup -> HSV -> horizontal flip."""
        aug = self.augment
        img, boxes, classes, ratio, pad = self._mosaic_or_letterbox(index, rng)
        if aug.mixup > 0 and rng.random() < aug.mixup:
            other = int(rng.integers(len(self)))
            img2, boxes2, classes2, _, _ = self._mosaic_or_letterbox(other, rng)
            img, boxes, classes = T.mixup(img, boxes, classes, img2, boxes2, classes2, rng)
        img = T.augment_hsv(img, rng, aug.hsv_h, aug.hsv_s, aug.hsv_v)
        if rng.random() < aug.flip_lr:
            img, boxes = T.flip_lr(img, boxes)
        return img, boxes, classes, ratio, pad

    def _mosaic_or_letterbox(self, index: int, rng: np.random.Generator):
        aug, s = self.augment, self.image_size
        if self.mosaic_enabled and aug.mosaic > 0 and rng.random() < aug.mosaic:
            picks = [index, *(int(i) for i in rng.integers(len(self), size=3))]
            parts = [self._resized(i) for i in picks]
            img, boxes, classes = T.mosaic4(*zip(*parts), size=s, rng=rng)
            ratio, pad = self.image_size / max(self.images[index]["height"], self.images[index]["width"]), (0.0, 0.0)
        else:
            img, boxes, classes, ratio, pad = self._letterboxed(index)
        img, boxes, keep = T.random_affine(img, boxes, rng, out_size=(s, s), degrees=aug.degrees,
                                           translate=aug.translate, scale=aug.scale, shear=aug.shear)
        return img, boxes, classes[keep], ratio, pad
