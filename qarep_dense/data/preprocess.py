"""THE one place that turns uint8 images into network input.

Datasets and loaders yield uint8 tensors; training, evaluation, calibration and export all call
a :class:`Preprocess`, so an INT8 engine calibrated here sees exactly what evaluation sees.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Preprocess:
    """x_float = (x_uint8 / 255 - mean) / std, per channel.

    Accepts (N, C, H, W) or (C, H, W) uint8 (or already-float 0..255) tensors and returns float32
    on ``x``'s device (move the uint8 batch first: 4x less to copy).
    """

    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float()
        elif not x.is_floating_point():
            raise TypeError(f"Preprocess expects uint8 or float images, got {x.dtype}")
        shape = (-1, 1, 1)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(shape) * 255.0
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(shape) * 255.0
        return (x - mean) / std

    def as_dict(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}


IMAGENET = Preprocess(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
DETECTION = Preprocess()  # YOLOv6 convention: x / 255
