"""Drawing predictions on RGB uint8 images with OpenCV: boxes with labels, blended class masks, top-k labels."""
from __future__ import annotations

import cv2
import numpy as np


def draw_boxes(img: np.ndarray, det: np.ndarray, names: list[str]) -> np.ndarray:
    out = img.copy()
    for x1, y1, x2, y2, score, cls in det:
        color = palette_color(int(cls))
        cv2.rectangle(out, (int(x1), int(y1)), (int(x2), int(y2)), color, 2)
        cv2.putText(out, f"{names[int(cls)]} {score:.2f}", (int(x1), max(int(y1) - 3, 10)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.4, color, 1, cv2.LINE_AA)
    return out


def palette_color(index: int) -> tuple[int, int, int]:
    return tuple(int(c) for c in np.random.default_rng(int(index)).integers(40, 256, 3))


def draw_mask(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``img`` with the (H, W) class map blended in at 50 %."""
    colors = np.array([palette_color(i) for i in range(int(mask.max()) + 1)], np.uint8)
    return cv2.addWeighted(img, 0.5, colors[mask], 0.5, 0)


def draw_labels(img: np.ndarray, labels: list[tuple[str, float]]) -> np.ndarray:
    """Top-k "label prob" lines on a dark band; images under 256 px high are enlarged (nearest) to be legible."""
    factor = max(1.0, 256 / img.shape[0])
    out = cv2.resize(img, None, fx=factor, fy=factor, interpolation=cv2.INTER_NEAREST) if factor > 1 else img.copy()
    cv2.rectangle(out, (0, 0), (out.shape[1], 8 + 18 * len(labels)), (0, 0, 0), -1)
    for i, (name, p) in enumerate(labels):
        cv2.putText(out, f"{name} {p:.2f}", (4, 20 + 18 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return out
