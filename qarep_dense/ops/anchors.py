"""Anchor points for an anchor-free head (one point per feature-map cell, level by level, row-major)."""
from __future__ import annotations

import torch


def make_anchor_points(feature_sizes: list[tuple[int, int]], strides: list[int], offset: float = 0.5,
                       device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell centres in input pixels.

    Returns points (A, 2) as (x, y) and stride_tensor (A, 1), A = sum(h*w); levels in the order given.
    """
    points, stride_list = [], []
    for (h, w), s in zip(feature_sizes, strides):
        ys = (torch.arange(h, device=device, dtype=dtype) + offset) * s
        xs = (torch.arange(w, device=device, dtype=dtype) + offset) * s
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack([xx, yy], -1).reshape(-1, 2))
        stride_list.append(torch.full((h * w, 1), float(s), device=device, dtype=dtype))
    return torch.cat(points), torch.cat(stride_list)


def make_anchor_boxes(feature_sizes: list[tuple[int, int]], strides: list[int], cell_size: float = 5.0,
                      offset: float = 0.5, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
                      ) -> tuple[torch.Tensor, list[int]]:
    """Square anchor boxes (side ``cell_size * stride``) centred on the anchor points, for ATSS.

    Returns boxes (A, 4) xyxy in input pixels and the number of anchors per level.
    """
    points, stride_tensor = make_anchor_points(feature_sizes, strides, offset, device, dtype)
    half = cell_size * stride_tensor / 2
    boxes = torch.cat([points - half, points + half], dim=-1)
    return boxes, [h * w for h, w in feature_sizes]
