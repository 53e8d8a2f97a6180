"""Drawing primitives shared by every synthetic generator: textured backgrounds and filled shapes.

Everything is driven by an explicit ``numpy.random.Generator`` so a seed fixes every pixel.
"""
from __future__ import annotations

import cv2
import numpy as np

SHAPES = ("circle", "square", "triangle", "cross", "ring", "diamond")


def textured_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(H, W, 3) uint8: a smooth colour gradient plus blurred noise, so shapes are not trivially separable."""
    base = rng.uniform(40, 200, size=3)
    tilt = rng.uniform(-60, 60, size=(2, 3))
    yy, xx = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    img = base + yy[..., None] * tilt[0] + xx[..., None] * tilt[1]
    noise = rng.normal(0, 25, size=(height, width, 3)).astype(np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), sigmaX=max(1.0, min(height, width) / 64))
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def _polygon(shape: str, cx: float, cy: float, r: float) -> np.ndarray | None:
    if shape == "square":
        pts = [(-r, -r), (r, -r), (r, r), (-r, r)]
    elif shape == "triangle":
        pts = [(0, -r), (r * 0.95, r * 0.8), (-r * 0.95, r * 0.8)]
    elif shape == "diamond":
        pts = [(0, -r), (r * 0.7, 0), (0, r), (-r * 0.7, 0)]
    elif shape == "cross":
        a = r / 3
        pts = [(-a, -r), (a, -r), (a, -a), (r, -a), (r, a), (a, a), (a, r), (-a, r), (-a, a), (-r, a), (-r, -a), (-a, -a)]
    else:
        return None
    return np.array([(cx + x, cy + y) for x, y in pts], dtype=np.int32)


def draw_shape(img: np.ndarray, shape: str, cx: float, cy: float, radius: float,
               color: tuple[int, int, int]) -> np.ndarray:
    """Draw a filled ``shape`` centred at (cx, cy) with half-size ``radius`` onto ``img`` in place.

    Returns the (H, W) bool mask of the pixels it painted (for boxes and segmentation labels).
    """
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    mask = np.zeros(img.shape[:2], dtype=np.uint8)
    centre, r = (int(round(cx)), int(round(cy))), max(1, int(round(radius)))
    if shape == "circle":
        cv2.circle(mask, centre, r, 1, thickness=-1)
    elif shape == "ring":
        cv2.circle(mask, centre, r, 1, thickness=max(1, r // 3))
    else:
        cv2.fillPoly(mask, [_polygon(shape, cx, cy, radius)], 1)
    painted = mask.astype(bool)
    img[painted] = color
    return painted
