"""Variant tables. A variant is a row, never a class."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClassifierArch:
    """One row of the RepVGG/QARepVGG/RepOpt-VGG classification zoo (REFERENCE §2).

    blocks: blocks per stage 1..4 (stage 0 is one block). width_a scales stages 0..3, width_b stage 4;
    stage-0 width is min(64, 64a). groups applies to the global layers in ``grouped_layers``.
    """

    blocks: tuple[int, int, int, int]
    width_a: float
    width_b: float
    groups: int = 1
    base_width: int = 64

    @property
    def widths(self) -> tuple[int, int, int, int, int]:
        a, b, base = self.width_a, self.width_b, self.base_width
        return (min(base, int(base * a)), int(base * a), int(2 * base * a), int(4 * base * a), int(8 * base * b))

    @property
    def grouped_layers(self) -> frozenset[int]:
        # Global layer index: stage 0 is layer 0, the first block of stage 1 is layer 1.
        # The zoo groups every even layer from 2 to 26 (B-series depth).
        return frozenset(range(2, 27, 2)) if self.groups > 1 else frozenset()


_A = (2, 4, 14, 1)
_B = (4, 6, 16, 1)

CLASSIFIER_ARCHS: dict[str, ClassifierArch] = {
    "A0": ClassifierArch(_A, 0.75, 2.5),
    "A1": ClassifierArch(_A, 1.0, 2.5),
    "A2": ClassifierArch(_A, 1.5, 2.75),
    "B0": ClassifierArch(_B, 1.0, 2.5),
    "B1": ClassifierArch(_B, 2.0, 4.0),
    "B1g2": ClassifierArch(_B, 2.0, 4.0, groups=2),
    "B1g4": ClassifierArch(_B, 2.0, 4.0, groups=4),
    "B2": ClassifierArch(_B, 2.5, 5.0),
    "B2g2": ClassifierArch(_B, 2.5, 5.0, groups=2),
    "B2g4": ClassifierArch(_B, 2.5, 5.0, groups=4),
    "B3": ClassifierArch(_B, 3.0, 5.0),
    "B3g2": ClassifierArch(_B, 3.0, 5.0, groups=2),
    "B3g4": ClassifierArch(_B, 3.0, 5.0, groups=4),
    # Half-width A0 (widths 24/24/48/96/640): the CPU-scale model of the digits experiments.
    "A0h": ClassifierArch(_A, 0.375, 1.25),
    # Tiny row for fast tests (widths 8/8/16/32/64); grouped so the test exercises groups.
    "test": ClassifierArch((1, 2, 1, 1), 0.125, 0.125, groups=2),
}


def classifier_arch(name: str) -> ClassifierArch:
    if name not in CLASSIFIER_ARCHS:
        raise ValueError(f"unknown classifier arch {name!r}; expected one of {sorted(CLASSIFIER_ARCHS)}")
    return CLASSIFIER_ARCHS[name]


# --- YOLOv6 (v2-era) detector scales, REFERENCE §4 -------------------------------------------

# Backbone stem + 4 ERBlocks, then the 4 neck RepBlocks; channels likewise (backbone 5, neck 6).
YOLOV6_BASE_REPEATS = (1, 6, 12, 18, 6, 12, 12, 12, 12)
YOLOV6_BASE_CHANNELS = (64, 128, 256, 512, 1024, 256, 128, 128, 256, 256, 512)


@dataclass(frozen=True)
class DetectorScale:
    """depth/width multipliers; repeats = max(round(n*depth), 1) for n > 1; channels = ceil(c*width/8)*8.

    iou_loss: the box loss YOLOv6 trains this scale with (``loss.iou_type`` "" picks it).
    lr0: YOLOv6's base learning rate for this scale, used when ``optim.lr0`` is unset.
    """

    depth: float
    width: float
    iou_loss: str = "siou"
    lr0: float = 0.01


DETECTOR_SCALES: dict[str, DetectorScale] = {
    "n": DetectorScale(0.33, 0.25, "siou", 0.02),
    "t": DetectorScale(0.33, 0.375, "siou", 0.01),
    "s": DetectorScale(0.33, 0.5, "giou", 0.01),
    # Tiny row for tests and CPU demos.
    "test": DetectorScale(0.05, 0.125, "siou", 0.01),
}


def detector_scale(name: str) -> DetectorScale:
    if name not in DETECTOR_SCALES:
        raise ValueError(f"unknown detector scale {name!r}; expected one of {sorted(DETECTOR_SCALES)}")
    return DETECTOR_SCALES[name]
