"""Detection transforms: small functions on numpy HWC uint8 images and (N, 4) xyxy pixel boxes.

Every random function takes an explicit ``numpy.random.Generator`` so a dataset can derive one
generator per (seed, epoch, index) and stay deterministic whatever the worker layout.
Classes travel next to the boxes as an (N,) array; functions that drop boxes return a ``keep``
mask (or the filtered classes) so callers can filter their labels alongside.
Resampling and colour conversion go through OpenCV (cv2.resize, cv2.warpAffine, cv2.cvtColor, cv2.LUT).
"""
from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np

PAD_VALUE = 114  # YOLO convention: mid-grey padding for letterbox, mosaic and affine borders


def _as_boxes(boxes: np.ndarray | None) -> np.ndarray:
    out = np.zeros((0, 4), np.float32) if boxes is None else np.asarray(boxes, np.float32).reshape(-1, 4)
    return out


def letterbox(img: np.ndarray, size: int | tuple[int, int], color: int = PAD_VALUE, scaleup: bool = True,
              interpolation: int = cv2.INTER_LINEAR) -> tuple[np.ndarray, float, tuple[float, float]]:
    """Resize keeping the aspect ratio, then pad to ``size`` with ``color``, image centred.

    Args:
        img: (H, W, 3) uint8.
        size: output side S (square) or (out_h, out_w).
        scaleup: if False, images smaller than ``size`` are only padded (ratio capped at 1).
    Returns:
        (out_h, out_w, 3) uint8, the scale ``ratio`` (new = old * ratio) and the left/top padding (pad_w, pad_h).
    """
    out_h, out_w = (size, size) if isinstance(size, int) else size
    h, w = img.shape[:2]
    if h == 0 or w == 0:
        raise ValueError(f"letterbox: empty image of shape {img.shape}")
    ratio = min(out_h / h, out_w / w)
    if not scaleup:
        ratio = min(ratio, 1.0)
    new_w, new_h = min(out_w, round(w * ratio)), min(out_h, round(h * ratio))
    if (new_w, new_h) != (w, h):
        img = cv2.resize(img, (new_w, new_h), interpolation=interpolation)
    pad_w, pad_h = (out_w - new_w) // 2, (out_h - new_h) // 2
    out = cv2.copyMakeBorder(img, pad_h, out_h - new_h - pad_h, pad_w, out_w - new_w - pad_w,
                             cv2.BORDER_CONSTANT, value=(color, color, color))
    return out, float(ratio), (float(pad_w), float(pad_h))


def letterbox_boxes(boxes: np.ndarray, ratio: float, pad: tuple[float, float]) -> np.ndarray:
    """Map (N, 4) xyxy boxes from original pixels into the letterboxed image: x * ratio + pad."""
    boxes = _as_boxes(boxes).copy()
    boxes[:, [0, 2]] = boxes[:, [0, 2]] * ratio + pad[0]
    boxes[:, [1, 3]] = boxes[:, [1, 3]] * ratio + pad[1]
    return boxes


def unletterbox_boxes(boxes: np.ndarray, ratio: float, pad: tuple[float, float],
                      orig_size: tuple[int, int]) -> np.ndarray:
    """Inverse of :func:`letterbox_boxes`, clipped to the original (h, w). (N, 4) -> (N, 4) float32.

    Works on numpy arrays; pass ``tensor.cpu().numpy()`` for model outputs.
    """
    boxes = _as_boxes(boxes).copy()
    boxes[:, [0, 2]] = (boxes[:, [0, 2]] - pad[0]) / ratio
    boxes[:, [1, 3]] = (boxes[:, [1, 3]] - pad[1]) / ratio
    h, w = orig_size
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
    return boxes


def resize_long_side(img: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """Resize so the longer side equals ``size`` (aspect kept, no padding). Returns (img, ratio).

    INTER_AREA when shrinking avoids aliasing; INTER_LINEAR when enlarging.
    """
    h, w = img.shape[:2]
    ratio = size / max(h, w)
    if ratio != 1.0:
        interp = cv2.INTER_AREA if ratio < 1 else cv2.INTER_LINEAR
        img = cv2.resize(img, (max(1, round(w * ratio)), max(1, round(h * ratio))), interpolation=interp)
    return img, ratio


def clip_and_filter_boxes(boxes: np.ndarray, width: float, height: float, min_size: float = 2.0,
                          ref_areas: np.ndarray | None = None, min_area_ratio: float = 0.1,
                          max_aspect: float | None = 20.0) -> tuple[np.ndarray, np.ndarray]:
    """Clip (N, 4) xyxy boxes to [0, width] x [0, height] and drop degenerate ones.

    A box is dropped when, after clipping, its width or height is < ``min_size`` (or <= 0), when its area
    is below ``min_area_ratio`` of ``ref_areas`` (the (N,) area it had before the transform, in the output
    frame: mostly cropped away), or when its aspect ratio exceeds ``max_aspect`` (slivers left by a crop).
    Returns (kept boxes (K, 4) float32, keep mask (N,) bool).
    """
    boxes = _as_boxes(boxes).copy()
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    keep = (bw > 0) & (bh > 0) & (bw >= min_size) & (bh >= min_size)
    if ref_areas is not None:
        keep &= bw * bh >= min_area_ratio * np.asarray(ref_areas, np.float32).reshape(-1)
    if max_aspect is not None:
        eps = 1e-9
        keep &= np.maximum(bw / (bh + eps), bh / (bw + eps)) < max_aspect
    return boxes[keep], keep


def flip_lr(img: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror horizontally: (H, W, 3) image and (N, 4) boxes (x -> W - x, x1/x2 swapped)."""
    w = img.shape[1]
    boxes = _as_boxes(boxes).copy()
    boxes[:, [0, 2]] = w - boxes[:, [2, 0]]
    return np.ascontiguousarray(img[:, ::-1]), boxes


def augment_hsv(img: np.ndarray, rng: np.random.Generator, hgain: float = 0.015, sgain: float = 0.7,
                vgain: float = 0.4) -> np.ndarray:
    """Random hue/saturation/value gains on an RGB (H, W, 3) uint8 image; returns a new image.

    Gains are drawn uniformly in [1 - g, 1 + g]; applied through 256-entry lookup tables, which is
    far cheaper than float HSV arithmetic on every pixel.
    """
    if not (hgain or sgain or vgain):
        return img
    gains = rng.uniform(-1, 1, 3) * np.array([hgain, sgain, vgain]) + 1
    hue, sat, val = cv2.split(cv2.cvtColor(img, cv2.COLOR_RGB2HSV))
    x = np.arange(256, dtype=np.float32)
    lut_h = ((x * gains[0]) % 180).astype(np.uint8)  # OpenCV 8-bit hue lives in 0..179
    lut_s = np.clip(x * gains[1], 0, 255).astype(np.uint8)
    lut_v = np.clip(x * gains[2], 0, 255).astype(np.uint8)
    hsv = cv2.merge((cv2.LUT(hue, lut_h), cv2.LUT(sat, lut_s), cv2.LUT(val, lut_v)))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def affine_matrix(in_size: tuple[int, int], out_size: tuple[int, int], rng: np.random.Generator,
                  degrees: float = 0.0, translate: float = 0.1, scale: float = 0.5,
                  shear: float = 0.0) -> tuple[np.ndarray, float]:
    """Random 2x3 affine taking the input centre to the (jittered) output centre.

    Order: centre the input, rotate + scale, shear, then translate by up to ``translate`` of the output size.
    Returns (M (2, 3) float64, scale factor s).
    """
    in_h, in_w = in_size
    out_h, out_w = out_size
    centre = np.eye(3)
    centre[:2, 2] = (-in_w / 2, -in_h / 2)
    s = rng.uniform(1 - scale, 1 + scale)
    rot = np.eye(3)
    rot[:2] = cv2.getRotationMatrix2D(center=(0, 0), angle=rng.uniform(-degrees, degrees), scale=s)
    shr = np.eye(3)
    shr[0, 1] = math.tan(math.radians(rng.uniform(-shear, shear)))
    shr[1, 0] = math.tan(math.radians(rng.uniform(-shear, shear)))
    move = np.eye(3)
    move[:2, 2] = (rng.uniform(0.5 - translate, 0.5 + translate) * out_w,
                   rng.uniform(0.5 - translate, 0.5 + translate) * out_h)
    return (move @ shr @ rot @ centre)[:2], float(s)


def transform_boxes(boxes: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine to (N, 4) xyxy boxes; the result is the axis-aligned hull of the 4 corners."""
    boxes = _as_boxes(boxes)
    if len(boxes) == 0:
        return boxes.copy()
    corners = boxes[:, [0, 1, 2, 1, 2, 3, 0, 3]].reshape(-1, 2)  # (4N, 2): tl, tr, br, bl
    corners = corners @ matrix[:, :2].T.astype(np.float32) + matrix[:, 2].astype(np.float32)
    corners = corners.reshape(-1, 4, 2)
    return np.concatenate([corners.min(1), corners.max(1)], axis=1).astype(np.float32)


def random_affine(img: np.ndarray, boxes: np.ndarray, rng: np.random.Generator,
                  out_size: tuple[int, int] | None = None, degrees: float = 0.0, translate: float = 0.1,
                  scale: float = 0.5, shear: float = 0.0, min_size: float = 2.0,
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random rotation/scale/shear/translation with 114-grey borders (cv2.warpAffine).

    Args:
        img: (H, W, 3) uint8; boxes: (N, 4) xyxy.
        out_size: (out_h, out_w); default the input size. A (2S, 2S) mosaic canvas with out_size (S, S)
            yields the centre crop, jittered by ``translate``.
    Returns:
        image (out_h, out_w, 3), kept boxes (K, 4) clipped to the output, keep mask (N,) bool.
    """
    out_size = out_size or img.shape[:2]
    matrix, s = affine_matrix(img.shape[:2], out_size, rng, degrees, translate, scale, shear)
    out_h, out_w = out_size
    identity = np.allclose(matrix, [[1, 0, 0], [0, 1, 0]]) and tuple(img.shape[:2]) == tuple(out_size)
    if not identity:
        img = cv2.warpAffine(img, matrix, dsize=(out_w, out_h), flags=cv2.INTER_LINEAR,
                             borderValue=(PAD_VALUE, PAD_VALUE, PAD_VALUE))
    boxes = _as_boxes(boxes)
    moved = transform_boxes(boxes, matrix)
    ref_areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) * s * s
    kept, keep = clip_and_filter_boxes(moved, out_w, out_h, min_size=min_size, ref_areas=ref_areas)
    return img, kept, keep


def mosaic4(images: Sequence[np.ndarray], boxes: Sequence[np.ndarray], classes: Sequence[np.ndarray],
            size: int, rng: np.random.Generator, min_size: float = 2.0,
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tile four images around a random centre of a (2S, 2S) grey canvas.

    Each image (already resized so its long side is about S) meets the centre with one corner:
    image 0 lies up-left of the centre, 1 up-right, 2 down-left, 3 down-right; what falls outside
    the canvas is cropped. Follow with :func:`random_affine` (out_size (S, S)) to get an S x S sample.
    Returns canvas (2S, 2S, 3) uint8, boxes (K, 4) inside the canvas, classes (K,).
    """
    if not len(images) == len(boxes) == len(classes) == 4:
        raise ValueError(f"mosaic4 needs exactly 4 images, boxes and class arrays, got "
                         f"{len(images)}/{len(boxes)}/{len(classes)}")
    side = 2 * size
    canvas = np.full((side, side, 3), PAD_VALUE, np.uint8)
    xc, yc = (int(v) for v in rng.uniform(0.5 * size, 1.5 * size, 2))
    all_boxes, all_classes = [], []
    for k, (img, bxs, cls) in enumerate(zip(images, boxes, classes)):
        h, w = img.shape[:2]
        px = xc - w if k in (0, 2) else xc  # canvas position of the image's top-left pixel
        py = yc - h if k in (0, 1) else yc
        x1, y1, x2, y2 = max(px, 0), max(py, 0), min(px + w, side), min(py + h, side)
        canvas[y1:y2, x1:x2] = img[y1 - py:y2 - py, x1 - px:x2 - px]
        all_boxes.append(_as_boxes(bxs) + np.array([px, py, px, py], np.float32))
        all_classes.append(np.asarray(cls, np.float32).reshape(-1))
    merged, cls = np.concatenate(all_boxes), np.concatenate(all_classes)
    ref_areas = (merged[:, 2] - merged[:, 0]) * (merged[:, 3] - merged[:, 1])
    merged, keep = clip_and_filter_boxes(merged, side, side, min_size=min_size, ref_areas=ref_areas)
    return canvas, merged, cls[keep]


def mixup(img1: np.ndarray, boxes1: np.ndarray, classes1: np.ndarray, img2: np.ndarray, boxes2: np.ndarray,
          classes2: np.ndarray, rng: np.random.Generator, alpha: float = 32.0,
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Blend two same-sized images with ratio ~ Beta(alpha, alpha) (close to 0.5) and keep both box sets."""
    if img1.shape != img2.shape:
        raise ValueError(f"mixup needs images of the same shape, got {img1.shape} and {img2.shape}")
    r = rng.beta(alpha, alpha)
    img = (img1.astype(np.float32) * r + img2.astype(np.float32) * (1 - r)).round().astype(np.uint8)
    boxes = np.concatenate([_as_boxes(boxes1), _as_boxes(boxes2)])
    classes = np.concatenate([np.asarray(c, np.float32).reshape(-1) for c in (classes1, classes2)])
    return img, boxes, classes
