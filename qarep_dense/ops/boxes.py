"""Distance <-> box coding of the anchor-free head."""
from __future__ import annotations

import torch


def dist2bbox(distance: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """(..., 4) left/top/right/bottom distances around (..., 2) points -> (..., 4) xyxy boxes."""
    lt, rb = distance.split(2, dim=-1)
    return torch.cat([points - lt, points + rb], dim=-1)


def bbox2dist(points: torch.Tensor, boxes: torch.Tensor, reg_max: float) -> torch.Tensor:
    """xyxy boxes -> ltrb distances from points, clipped to [0, reg_max - 0.01] (DFL's bin range)."""
    lt = points - boxes[..., :2]
    rb = boxes[..., 2:] - points
    return torch.cat([lt, rb], dim=-1).clamp(0, reg_max - 0.01)


def decode_distances(reg: torch.Tensor, reg_max: int) -> torch.Tensor:
    """Head regression output (..., 4*(reg_max+1)) with DFL, or (..., 4) without -> (..., 4) ltrb in stride units.

    With DFL each side is the expectation of a softmax over reg_max+1 integer bins.
    """
    if reg_max == 0:
        return reg
    bins = torch.arange(reg_max + 1, dtype=reg.dtype, device=reg.device)
    probs = reg.unflatten(-1, (4, reg_max + 1)).softmax(-1)
    return (probs * bins).sum(-1)
