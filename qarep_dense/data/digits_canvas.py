"""Real handwriting for detection and segmentation: canvases of scikit-learn's digits, with boxes and stroke masks.

Each canvas (default 64x64, grey, white strokes on black) holds 2-3 handwritten digits pasted at one of a few
scales (default 16, 24 and 32 px squares) where their squares do not overlap. One export serves both tasks::

    leftImg8bit/{train,val}/<index>_leftImg8bit.png          the canvases (the Cityscapes layout mmseg reads)
    gtFine/{train,val}/<index>_gtFine_labelTrainIds.png      per-pixel labels: 0 background, 1 + digit on strokes,
                                                             255 (ignore) on the faint rim of a stroke
    annotations/instances_{train,val}.json                   COCO boxes, categories 1..10 = digits "0".."9"
    .written.json                                            what was written, with which parameters

A stroke pixel is one of value >= :data:`STROKE` after the bilinear upsampling; a digit's box is the tight hull
of its stroke pixels (pixel-edge convention: pixels 3..7 span x = 3 .. 8), and its mask is exactly those pixels,
so box and mask agree by construction. Pixels between :data:`RIM` and :data:`STROKE` are the anti-aliased rim:
neither stroke nor background, ignored by the segmentation metric as Cityscapes ignores its ambiguous pixels.

The digits come from the classification split (:func:`qarep_dense.data.digits.digits_split`, same
``split_seed``): training canvases use only training digits, validation canvases only validation digits, so no
handwritten sample is seen in both (and none of the validation digits trained the classifiers that pretrain
the backbones). Each split is walked ``passes`` times in a seeded order, each pass a new arrangement. Every
canvas draws from ``numpy.random.default_rng([seed, split, index])``: same parameters, same bytes. The export
is owned like every other writer's (:mod:`qarep_dense.fileio.ownership`): written once, skipped when current,
never writing over a path it did not write.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from .digits import digits_grey, digits_split, upsample
from ..fileio import claim, sealed

log = logging.getLogger(__name__)

DIGITS_CANVAS_OWNER = "digits-canvas"  # the ownership record's writer name

STROKE = 128  # a pixel at or above this value belongs to the digit's stroke (its mask and its box)
RIM = 32  # pixels in [RIM, STROKE) are the anti-aliased rim: label IGNORE
IGNORE = 255
CLASSES = ("background", *(str(d) for d in range(10)))  # segmentation label = 1 + digit
SPLITS = ("train", "val")
IMG_SUFFIX, SEG_SUFFIX = "_leftImg8bit.png", "_gtFine_labelTrainIds.png"
OWNED = ("leftImg8bit", "gtFine", "annotations")  # the paths the export writes under its root
_TRIES = 20  # placements tried per digit before it is left out of its canvas


@dataclass(frozen=True)
class CanvasSpec:
    """What an export holds. passes: how often each split's digits are walked (train, val)."""

    canvas: int = 64
    scales: tuple[int, ...] = (16, 24, 32)
    digits_per_canvas: tuple[int, int] = (2, 3)
    passes: tuple[int, int] = (4, 2)
    seed: int = 0
    split_seed: int = 0  # the classification split (data.seed of the digits classifiers)

    def __post_init__(self) -> None:
        lo, hi = self.digits_per_canvas
        if not 1 <= lo <= hi:
            raise ValueError(f"digits_per_canvas must be (min, max) with 1 <= min <= max, got {self.digits_per_canvas}")
        if not self.scales or min(self.scales) < 8 or max(self.scales) > self.canvas:
            raise ValueError(f"scales must be digit sizes in 8..canvas ({self.canvas}), got {self.scales}")
        if self.canvas < 32 or self.canvas % 32:
            raise ValueError(f"canvas must be a multiple of 32 (the detector's largest stride), got {self.canvas}")
        if len(self.passes) != 2 or min(self.passes) < 1:
            raise ValueError(f"passes must be (train, val) counts >= 1, got {self.passes}")

    def as_dict(self) -> dict:
        return {"dataset": "digits-canvas", "version": 2, **{k: list(v) if isinstance(v, tuple) else v
                                                             for k, v in asdict(self).items()}}


@dataclass(frozen=True)
class PastedDigit:
    """One digit on a canvas: its label, the source image index, its tight box [x, y, w, h] and stroke area."""

    digit: int
    source: int
    box: tuple[float, float, float, float]
    area: int


def _free(taken: list[tuple[int, int, int]], x: int, y: int, s: int) -> bool:
    """True when the square (x, y, s) keeps a 1-pixel gap to every square already placed."""
    return all(x + s + 1 <= tx or tx + ts + 1 <= x or y + s + 1 <= ty or ty + ts + 1 <= y for tx, ty, ts in taken)


def render_canvas(rng: np.random.Generator, grey: np.ndarray, labels: np.ndarray, sources: list[int],
                  spec: CanvasSpec) -> tuple[np.ndarray, np.ndarray, list[PastedDigit]]:
    """One canvas from the 8x8 digits ``grey[sources]``: (image (C, C) uint8, label map (C, C) uint8, digits).

    A digit whose square finds no free place in ``_TRIES`` draws is left out (the first always fits).
    """
    c = spec.canvas
    image = np.zeros((c, c), np.uint8)
    label = np.zeros((c, c), np.uint8)
    taken: list[tuple[int, int, int]] = []
    pasted = []
    for src in sources:
        size = int(rng.choice(spec.scales))
        patch = upsample(grey[src], size)
        stroke = patch >= STROKE
        if not stroke.any():
            continue  # a blank source image: nothing to find
        for _ in range(_TRIES):
            x, y = (int(v) for v in rng.integers(0, c - size + 1, 2))
            if _free(taken, x, y, size):
                break
        else:
            continue
        taken.append((x, y, size))
        image[y:y + size, x:x + size] = patch
        window = label[y:y + size, x:x + size]
        window[(patch >= RIM) & ~stroke] = IGNORE
        window[stroke] = 1 + int(labels[src])
        ys, xs = np.nonzero(stroke)
        x1, y1 = x + int(xs.min()), y + int(ys.min())
        box = (float(x1), float(y1), float(x + xs.max() + 1 - x1), float(y + ys.max() + 1 - y1))
        pasted.append(PastedDigit(int(labels[src]), int(src), box, int(stroke.sum())))
    return image, label, pasted


def canvas_sources(rng: np.random.Generator, pool: np.ndarray, spec: CanvasSpec, passes: int) -> list[list[int]]:
    """The digits of each canvas: ``passes`` seeded walks over ``pool``, cut into groups of 2-3 (min..max)."""
    lo, hi = spec.digits_per_canvas
    groups = []
    for _ in range(passes):
        order = rng.permutation(pool)
        i = 0
        while i < len(order):
            n = int(rng.integers(lo, hi + 1))
            groups.append([int(v) for v in order[i:i + n]])
            i += n
    return groups


def canvas_files(root: Path, split: str, index: int) -> tuple[Path, Path]:
    """(image, label map) paths of canvas ``index`` (0-based) of ``split``."""
    stem = f"{index + 1:06d}"
    return (root / "leftImg8bit" / split / f"{stem}{IMG_SUFFIX}", root / "gtFine" / split / f"{stem}{SEG_SUFFIX}")


def _write_split(root: Path, split_id: int, pool: np.ndarray, grey: np.ndarray, labels: np.ndarray,
                 spec: CanvasSpec) -> dict:
    split = SPLITS[split_id]
    groups = canvas_sources(np.random.default_rng([spec.seed, split_id]), pool, spec, spec.passes[split_id])
    images, annotations = [], []
    for i, sources in enumerate(groups):
        image, label, pasted = render_canvas(np.random.default_rng([spec.seed, split_id, i]), grey, labels, sources,
                                             spec)
        for path, array in zip(canvas_files(root, split, i), (image, label)):
            path.parent.mkdir(parents=True, exist_ok=True)
            if not cv2.imwrite(str(path), array):
                raise OSError(f"{path}: could not write image")
        images.append({"id": i + 1, "file_name": canvas_files(root, split, i)[0].name, "height": spec.canvas,
                       "width": spec.canvas})
        first = len(annotations) + 1  # (read once: a comprehension would give every digit of a canvas one id)
        annotations += [{"id": first + k, "image_id": i + 1, "category_id": p.digit + 1,
                         "bbox": list(p.box), "area": float(p.area), "iscrowd": 0, "source_index": p.source}
                        for k, p in enumerate(pasted)]
    coco = {"info": {"description": f"qarep-dense digit canvases ({split})", "version": 1}, "licenses": [],
            "images": images, "annotations": annotations,
            "categories": [{"id": d + 1, "name": str(d), "supercategory": "digit"} for d in range(10)]}
    ann = root / "annotations" / f"instances_{split}.json"
    ann.parent.mkdir(parents=True, exist_ok=True)
    ann.write_text(json.dumps(coco))
    return {"canvases": len(images), "digits": len(annotations)}


def digits_canvas_paths(root: str | os.PathLike) -> dict[str, Path]:
    """{"train_images", "train_ann", "val_images", "val_ann"} of the export under ``root`` (COCO view)."""
    root = Path(root)
    return {key: path for split in SPLITS for key, path in
            ((f"{split}_images", root / "leftImg8bit" / split),
             (f"{split}_ann", root / "annotations" / f"instances_{split}.json"))}


def generate_digits_canvas(root: str | os.PathLike, spec: CanvasSpec = CanvasSpec()) -> dict[str, Path]:
    """Write (or reuse) the digit canvases of ``spec`` under ``root``; returns :func:`digits_canvas_paths`.

    Raises ``FileExistsError`` (:class:`~qarep_dense.fileio.ClaimError`) naming the path when one of
    ``leftImg8bit/``, ``gtFine/`` or ``annotations/`` exists under ``root`` without being this exporter's.
    """
    root = Path(root)
    params = spec.as_dict()
    if sealed(root, DIGITS_CANVAS_OWNER, params):
        return digits_canvas_paths(root)
    grey, labels = digits_grey()
    pools = digits_split(labels, spec.split_seed)
    log.info("writing digit canvases (%dx%d, scales %s) to %s", spec.canvas, spec.canvas, spec.scales, root)
    with claim(root, DIGITS_CANVAS_OWNER, params, writes=OWNED, shared=True) as out:
        counts = {split: _write_split(root, k, pools[k], grey, labels, spec) for k, split in enumerate(SPLITS)}
        out.seal({"counts": counts})
    return digits_canvas_paths(root)
