"""Deterministic street scenes in the Cityscapes layout, at reduced resolution.

    out_dir/leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    out_dir/gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png

Labels are Cityscapes trainIds (19 classes, 255 = ignore), so mmseg's ``CityscapesDataset``
reads the tree unchanged. A scene is painted back to front: sky, a skyline of buildings, a road
in perspective with sidewalks and terrain, walls and fences, trees, poles with signs and lights,
then cars, trucks, buses, people and bikes whose size grows towards the bottom of the image.
Each class has its own colour family and texture (windows, lane marks, foliage noise), every
object its own shade, every image its own lighting, so the classes are learnable but not from
one pixel's colour alone. The ego-vehicle's bonnet at the bottom edge is ignore (255), as in
Cityscapes.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import cv2
import numpy as np

from ...fileio import claim, sealed

log = logging.getLogger(__name__)

CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
           "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")
ID = {name: i for i, name in enumerate(CLASSES)}
IGNORE = 255
IMG_SUFFIX, SEG_SUFFIX = "_leftImg8bit.png", "_gtFine_labelTrainIds.png"
SPLITS = ("leftImg8bit", "gtFine")  # the folders this exporter owns under out_dir
CITIES = {"train": ("aachen", "bochum", "bremen"), "val": ("frankfurt",)}
# Base RGB colour of each class (close to the look of the class, not to Cityscapes' palette).
_BASE = np.array([
    (90, 90, 95), (165, 150, 140), (120, 95, 80), (150, 140, 120), (110, 120, 100), (70, 70, 70),
    (240, 200, 40), (40, 90, 200), (60, 130, 50), (140, 160, 80), (130, 180, 230), (200, 60, 60),
    (230, 120, 30), (30, 60, 170), (50, 110, 110), (200, 190, 60), (120, 50, 140), (220, 40, 200),
    (150, 30, 60)], dtype=np.float32)


def _poly(canvas: np.ndarray, label: np.ndarray, points, cls: int, color) -> None:
    pts = np.round(np.asarray(points, dtype=np.float64)).astype(np.int32)
    cv2.fillPoly(canvas, [pts], color)
    cv2.fillPoly(label, [pts], int(cls))


def _rect(canvas: np.ndarray, label: np.ndarray, x0: float, y0: float, x1: float, y1: float, cls: int, color) -> None:
    _poly(canvas, label, [(x0, y0), (x1, y0), (x1, y1), (x0, y1)], cls, color)


def _shade(rng: np.random.Generator, cls: int, spread: float = 18.0) -> tuple[int, ...]:
    c = np.clip(_BASE[cls] + rng.normal(0, spread, 3), 0, 255)
    return tuple(int(v) for v in c)


class _Scene:
    """One image being painted: ``img`` (H, W, 3) uint8 RGB and ``label`` (H, W) uint8 trainIds."""

    def __init__(self, height: int, width: int, rng: np.random.Generator):
        self.h, self.w, self.rng = height, width, rng
        self.img = np.zeros((height, width, 3), np.uint8)
        self.label = np.full((height, width), ID["sky"], np.uint8)
        self.horizon = rng.uniform(0.35, 0.5) * height
        self.vanish_x = rng.uniform(0.35, 0.65) * width

    def depth_scale(self, y: float) -> float:
        """Object size factor at image row ``y`` (0 at the horizon, 1 at the bottom edge)."""
        return max(0.05, (y - self.horizon) / (self.h - self.horizon))

    def road_edges(self, y: float) -> tuple[float, float]:
        t = self.depth_scale(y)
        half = t * self.w * 0.55
        return self.vanish_x - half, self.vanish_x + half

    def paint(self, x0, y0, x1, y1, cls: int, spread: float = 18.0) -> None:
        _rect(self.img, self.label, x0, y0, x1, y1, cls, _shade(self.rng, cls, spread))


def _background(s: _Scene) -> None:
    h, w, rng, hz = s.h, s.w, s.rng, s.horizon
    s.img[:] = _shade(rng, ID["sky"], 12)
    # skyline: buildings from the left to the right edge, some gaps show the sky
    x = -rng.uniform(0, 0.1) * w
    while x < w:
        bw = rng.uniform(0.08, 0.25) * w
        if rng.random() < 0.85:
            top = hz - rng.uniform(0.15, 0.7) * hz
            s.paint(x, top, x + bw, hz + 2, ID["building"], 25)
            _windows(s, x, top, x + bw, hz)
        x += bw
    # ground: sidewalk / terrain strips, then the road trapezoid on top
    _poly(s.img, s.label, [(0, hz), (w, hz), (w, h), (0, h)], ID["sidewalk"], _shade(rng, ID["sidewalk"]))
    for side in (-1, 1):
        if rng.random() < 0.5:
            xe = 0 if side < 0 else w
            _poly(s.img, s.label, [(xe, hz + 0.15 * (h - hz)), (xe, h), (xe - side * 0.12 * w, h)], ID["terrain"],
                  _shade(rng, ID["terrain"]))
    (l0, r0), (l1, r1) = s.road_edges(hz), s.road_edges(h)
    _poly(s.img, s.label, [(l0, hz), (r0, hz), (r1, h), (l1, h)], ID["road"], _shade(rng, ID["road"], 10))
    _lane_marks(s)


def _windows(s: _Scene, x0: float, y0: float, x1: float, y1: float) -> None:
    """Darker window grid on a facade (texture only: the label stays building)."""
    rng = s.rng
    step = max(4, int(rng.uniform(0.025, 0.05) * s.w))
    tint = np.array(_BASE[ID["building"]]) * rng.uniform(0.4, 0.7)
    for yy in range(int(y0) + 3, int(y1) - 3, step):
        for xx in range(int(x0) + 2, int(x1) - 2, step):
            cv2.rectangle(s.img, (xx, yy), (xx + step // 2, yy + step // 2), tuple(int(v) for v in tint), -1)


def _lane_marks(s: _Scene) -> None:
    y = s.horizon + 4
    while y < s.h:
        dy = 2 + 10 * s.depth_scale(y)
        cv2.line(s.img, (int(s.vanish_x), int(y)), (int(s.vanish_x), int(y + dy)), (225, 225, 215),
                 max(1, int(2 * s.depth_scale(y))))
        y += 2.5 * dy


def _roadside(s: _Scene) -> None:
    """Walls, fences, trees and poles along both sidewalks."""
    rng, hz = s.rng, s.horizon
    for side in (-1, 1):
        for _ in range(rng.integers(2, 6)):
            y = rng.uniform(hz + 2, s.h * 0.95)
            k = s.depth_scale(y)
            left, right = s.road_edges(y)
            x = (left - rng.uniform(0.03, 0.3) * s.w * k) if side < 0 else (right + rng.uniform(0.03, 0.3) * s.w * k)
            kind = rng.choice(["tree", "pole", "wall", "fence", "bush"], p=[0.3, 0.3, 0.15, 0.15, 0.1])
            size = s.h * 0.9 * k
            if kind == "tree":
                s.paint(x - 0.03 * size, y - 0.6 * size, x + 0.03 * size, y, ID["vegetation"], 10)
                r = 0.3 * size
                cv2.circle(s.img, (int(x), int(y - 0.7 * size)), max(2, int(r)), _shade(rng, ID["vegetation"], 20), -1)
                cv2.circle(s.label, (int(x), int(y - 0.7 * size)), max(2, int(r)), ID["vegetation"], -1)
            elif kind == "bush":
                s.paint(x - 0.3 * size, y - 0.2 * size, x + 0.3 * size, y, ID["vegetation"], 20)
            elif kind in ("wall", "fence"):
                s.paint(x - 0.5 * size, y - 0.25 * size, x + 0.5 * size, y, ID[kind], 15)
                if kind == "fence":  # vertical slats
                    for xx in np.arange(x - 0.5 * size, x + 0.5 * size, max(2.0, 0.06 * size)):
                        cv2.line(s.img, (int(xx), int(y - 0.25 * size)), (int(xx), int(y)), (60, 65, 55), 1)
            else:
                s.paint(x - 0.015 * size - 0.6, y - 0.9 * size, x + 0.015 * size + 0.6, y, ID["pole"], 10)
                top = y - 0.9 * size
                if rng.random() < 0.5:
                    s.paint(x - 0.06 * size, top, x + 0.06 * size, top + 0.12 * size, ID["traffic sign"], 25)
                else:
                    s.paint(x - 0.035 * size, top, x + 0.035 * size, top + 0.18 * size, ID["traffic light"], 15)


def _vehicle(s: _Scene, cls: int, x: float, y: float, size: float) -> None:
    aspect = {ID["car"]: (1.0, 0.45), ID["truck"]: (1.2, 0.8), ID["bus"]: (1.6, 0.9), ID["train"]: (2.5, 0.8)}[cls]
    w, h = aspect[0] * size, aspect[1] * size
    color = tuple(int(v) for v in np.clip(_BASE[cls] * s.rng.uniform(0.5, 1.4) + s.rng.normal(0, 25, 3), 0, 255))
    if cls == ID["car"]:
        _poly(s.img, s.label, [(x - w / 2, y - 0.15 * size), (x - w / 2, y - h * 0.6), (x - w / 4, y - h),
                               (x + w / 4, y - h), (x + w / 2, y - h * 0.6), (x + w / 2, y - 0.15 * size)], cls, color)
        _rect(s.img, s.label, x - w / 4 + 1, y - h + 1, x + w / 4 - 1, y - h * 0.65, cls, (50, 60, 70))  # windows
    else:
        _rect(s.img, s.label, x - w / 2, y - h, x + w / 2, y - 0.15 * size, cls, color)
        for yy in (y - 0.8 * h,):
            _rect(s.img, s.label, x - w / 2 + 2, yy, x + w / 2 - 2, yy + 0.2 * h, cls, (60, 70, 80))
    for wx in (x - w / 3, x + w / 3):  # wheels belong to the vehicle
        cv2.circle(s.img, (int(wx), int(y - 0.12 * size)), max(1, int(0.12 * size)), (20, 20, 20), -1)
        cv2.circle(s.label, (int(wx), int(y - 0.12 * size)), max(1, int(0.12 * size)), cls, -1)


def _person(s: _Scene, x: float, y: float, size: float, cls: int) -> None:
    h = size
    if cls in (ID["rider"], ID["bicycle"], ID["motorcycle"]):
        bike = ID["motorcycle"] if cls == ID["motorcycle"] else ID["bicycle"]
        for wx in (x - 0.25 * h, x + 0.25 * h):
            cv2.circle(s.img, (int(wx), int(y - 0.12 * h)), max(1, int(0.12 * h)), _shade(s.rng, bike), -1)
            cv2.circle(s.label, (int(wx), int(y - 0.12 * h)), max(1, int(0.12 * h)), bike, -1)
        s.paint(x - 0.25 * h, y - 0.28 * h, x + 0.25 * h, y - 0.2 * h, bike, 15)
        if cls == ID["bicycle"]:
            return
        cls, y = ID["rider"], y - 0.25 * h
    s.paint(x - 0.08 * h, y - 0.75 * h, x + 0.08 * h, y, cls, 30)
    cv2.circle(s.img, (int(x), int(y - 0.82 * h)), max(1, int(0.08 * h)), (210, 170, 140), -1)
    cv2.circle(s.label, (int(x), int(y - 0.82 * h)), max(1, int(0.08 * h)), cls, -1)


def _traffic(s: _Scene) -> None:
    """Vehicles on the road, people and bikes near the road edges, far to near (painter's order)."""
    rng = s.rng
    items = []
    for _ in range(rng.integers(2, 7)):
        cls = rng.choice([ID["car"], ID["truck"], ID["bus"], ID["train"]], p=[0.7, 0.12, 0.12, 0.06])
        items.append((rng.uniform(s.horizon + 3, s.h), "vehicle", int(cls)))
    for _ in range(rng.integers(1, 6)):
        cls = rng.choice([ID["person"], ID["rider"], ID["bicycle"], ID["motorcycle"]], p=[0.55, 0.2, 0.15, 0.1])
        items.append((rng.uniform(s.horizon + 3, s.h), "person", int(cls)))
    for y, kind, cls in sorted(items):
        k = s.depth_scale(y)
        left, right = s.road_edges(y)
        if kind == "vehicle":
            _vehicle(s, cls, rng.uniform(left + 0.1 * (right - left), right - 0.1 * (right - left)), y, 0.35 * s.w * k)
        else:
            edge = left if rng.random() < 0.5 else right
            _person(s, edge + rng.normal(0, 0.05 * s.w * k), y, 0.6 * s.h * k, cls)


def _finish(s: _Scene) -> None:
    rng = s.rng
    img = s.img.astype(np.float32)
    foliage = s.label == ID["vegetation"]
    img[foliage] *= rng.uniform(0.6, 1.3, size=(int(foliage.sum()), 1)).astype(np.float32)
    img += rng.normal(0, 6, img.shape).astype(np.float32)  # sensor noise
    img = img * rng.uniform(0.7, 1.2) + rng.uniform(-20, 20, 3).astype(np.float32)  # lighting
    s.img = cv2.GaussianBlur(np.clip(img, 0, 255).astype(np.uint8), (3, 3), 0.6)
    hood = int(s.h * rng.uniform(0.04, 0.1))  # ego vehicle: ignore, as in Cityscapes
    cv2.ellipse(s.label, (s.w // 2, s.h), (int(0.6 * s.w), hood), 0, 180, 360, IGNORE, -1)
    cv2.ellipse(s.img, (s.w // 2, s.h), (int(0.6 * s.w), hood), 0, 180, 360, (25, 25, 30), -1)


def street_scene(height: int, width: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One scene: (image (H, W, 3) uint8 RGB, label (H, W) uint8 trainIds in 0..18 or 255)."""
    s = _Scene(height, width, rng)
    _background(s)
    _roadside(s)
    _traffic(s)
    _finish(s)
    return s.img, s.label


def scene_files(out_dir: Path, split: str, index: int) -> tuple[Path, Path]:
    """(image path, label path) of scene ``index`` of ``split`` in the Cityscapes naming."""
    cities = CITIES[split]
    city = cities[index % len(cities)]
    stem = f"{city}_{index // len(cities):06d}_{19 + index % 7:06d}"
    return (out_dir / "leftImg8bit" / split / city / f"{stem}{IMG_SUFFIX}",
            out_dir / "gtFine" / split / city / f"{stem}{SEG_SUFFIX}")


def generate_cityscapes(out_dir: str | os.PathLike, num_train: int = 200, num_val: int = 50,
                        size: tuple[int, int] = (128, 256), seed: int = 0) -> Path:
    """Write ``num_train`` / ``num_val`` scenes of ``size`` (H, W) under ``out_dir``; return ``out_dir``.

    Each scene comes from its own generator seeded by (seed, split, index): a seed fixes every
    pixel. Skipped when ``out_dir`` holds a sealed export of the same settings. Only
    ``leftImg8bit/`` and ``gtFine/`` are written, and an existing one this exporter did not
    write is never touched (the call fails instead).
    """
    height, width = (int(v) for v in size)
    if num_train < 1 or num_val < 1 or height < 32 or width < 32:
        raise ValueError(f"generate_cityscapes: need num_train, num_val >= 1 and size >= 32x32; "
                         f"got {num_train}, {num_val}, {size}")
    out_dir = Path(out_dir)
    spec = {"dataset": "synthetic-cityscapes", "counts": [num_train, num_val], "size": [height, width],
            "seed": seed, "version": 1}
    if sealed(out_dir, "synthetic-cityscapes", spec):
        return out_dir
    log.info("generating %d + %d synthetic street scenes (%dx%d) in %s", num_train, num_val, height, width, out_dir)
    with claim(out_dir, "synthetic-cityscapes", spec, writes=SPLITS, shared=True) as out:
        for split_id, (split, count) in enumerate((("train", num_train), ("val", num_val))):
            for i in range(count):
                image, label = street_scene(height, width, np.random.default_rng([seed, split_id, i]))
                for path, array in zip(scene_files(out_dir, split, i), (image[..., ::-1], label)):  # OpenCV: BGR
                    path.parent.mkdir(parents=True, exist_ok=True)
                    if not cv2.imwrite(str(path), np.ascontiguousarray(array)):
                        raise OSError(f"{path}: could not write image")
        total = num_train + num_val
        out.seal({"counts": {"leftImg8bit": total, "gtFine": total}})
    return out_dir
