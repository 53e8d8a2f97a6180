"""IoU arithmetic on xyxy boxes: batched pairwise IoU for the assigners and per-box IoU losses.

GIoU and the distance part of CIoU come from ``torchvision.ops``. Written here by hand, and why:

* ``pairwise_iou``: torchvision's ``box_iou`` takes only 2-D (M, 4) x (A, 4) inputs and divides by the
  union without an epsilon; the assigners need it batched over images, and predicted or padded
  boxes can have zero area (0 / 0 = NaN).
* CIoU's aspect-ratio term: torchvision computes ``atan(w / h)`` without an epsilon, which is NaN
  for a zero-height box (a raw regression output can be one); the rest of CIoU is torchvision's DIoU.
* SIoU (Gevorgyan 2022, used by YOLOv6-n/t): not in torchvision.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torchvision.ops import distance_box_iou_loss, generalized_box_iou_loss

_EPS = 1e-7


def _wh(boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Width and height of (..., 4) xyxy boxes, clamped at 0 so inverted boxes count as empty."""
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0), (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def pairwise_iou(boxes1: torch.Tensor, boxes2: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """IoU of every box in ``boxes1`` (..., M, 4) with every box in ``boxes2`` (..., A, 4) -> (..., M, A).

    Leading dimensions broadcast. Zero-area or inverted boxes give IoU 0, never NaN.
    """
    # (..., M, 1, 4) against (..., 1, A, 4): the aligned formula broadcasts to every pair
    return aligned_iou(boxes1.unsqueeze(-2), boxes2.unsqueeze(-3), eps)


def aligned_iou(boxes1: torch.Tensor, boxes2: torch.Tensor, eps: float = _EPS) -> torch.Tensor:
    """IoU of matching rows: (..., 4) and (..., 4) -> (...) (leading dimensions broadcast)."""
    lt = torch.maximum(boxes1[..., :2], boxes2[..., :2])
    rb = torch.minimum(boxes1[..., 2:], boxes2[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    w1, h1 = _wh(boxes1)
    w2, h2 = _wh(boxes2)
    return inter / (w1 * h1 + w2 * h2 - inter + eps)


def giou_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = _EPS) -> torch.Tensor:
    """Per-box 1 - GIoU of (n, 4) xyxy boxes -> (n,); range [0, 2)."""
    return generalized_box_iou_loss(pred, target, reduction="none", eps=eps)


def ciou_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = _EPS) -> torch.Tensor:
    """Per-box 1 - CIoU of (n, 4) xyxy boxes -> (n,).

    CIoU = DIoU - alpha * v, v = 4/pi^2 (atan(w_t/h_t) - atan(w_p/h_p))^2, alpha = v / (1 - IoU + v) (no gradient).
    """
    diou = distance_box_iou_loss(pred, target, reduction="none", eps=eps)
    wp, hp = _wh(pred)
    wt, ht = _wh(target)
    v = (4 / math.pi**2) * (torch.atan(wt / (ht + eps)) - torch.atan(wp / (hp + eps))).pow(2)
    with torch.no_grad():
        alpha = v / (1 - aligned_iou(pred, target, eps) + v + eps)
    return diou + alpha * v


def siou_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = _EPS, theta: float = 4.0) -> torch.Tensor:
    """Per-box SIoU loss of (n, 4) xyxy boxes -> (n,): 1 - IoU + (distance cost + shape cost) / 2.

    Angle cost: Lambda = 1 - 2 sin^2(arcsin(sin a) - pi/4) with a the angle of the centre offset to the x axis;
    this equals sin(2a) = 2 |dx| |dy| / sigma^2, the same for a and pi/2 - a, so the paper's choice of the
    smaller angle needs no branch. Distance cost: sum over x, y of 1 - exp(-(2 - Lambda) (d / c)^2), with c the
    side of the smallest enclosing box. Shape cost: sum over w, h of (1 - exp(-|w_p - w_t| / max(w_p, w_t)))^theta.

    The shape cost uses the *signed* predicted width and height (x2 - x1, y2 - y1), as YOLOv6 does: for an
    inverted prediction (x2 < x1, which raw ltrb regression can produce) the cost keeps growing as the box
    inverts further, so its gradient pushes x1 down and x2 up. With widths clamped at 0 the IoU and shape
    terms would be flat there and only the centre distance would move the box. The IoU term keeps the
    clamped areas (an inverted box overlaps nothing; a negative area in the union could flip its sign).
    """
    wp = pred[..., 2] - pred[..., 0]
    hp = pred[..., 3] - pred[..., 1]
    wt, ht = _wh(target)
    dx = (target[..., 0] + target[..., 2] - pred[..., 0] - pred[..., 2]) / 2
    dy = (target[..., 1] + target[..., 3] - pred[..., 1] - pred[..., 3]) / 2
    enclose_w = torch.maximum(pred[..., 2], target[..., 2]) - torch.minimum(pred[..., 0], target[..., 0])
    enclose_h = torch.maximum(pred[..., 3], target[..., 3]) - torch.minimum(pred[..., 1], target[..., 1])

    angle = 2 * dx.abs() * dy.abs() / (dx.pow(2) + dy.pow(2) + eps)
    gamma = 2 - angle
    rho_x = (dx / (enclose_w + eps)).pow(2)
    rho_y = (dy / (enclose_h + eps)).pow(2)
    distance = 2 - torch.exp(-gamma * rho_x) - torch.exp(-gamma * rho_y)

    omega_w = (wp - wt).abs() / (torch.maximum(wp, wt) + eps)
    omega_h = (hp - ht).abs() / (torch.maximum(hp, ht) + eps)
    shape = (1 - torch.exp(-omega_w)).pow(theta) + (1 - torch.exp(-omega_h)).pow(theta)
    return 1 - aligned_iou(pred, target, eps) + (distance + shape) / 2


IOU_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "giou": giou_loss,
    "ciou": ciou_loss,
    "siou": siou_loss,
}


def iou_loss(pred: torch.Tensor, target: torch.Tensor, iou_type: str = "giou") -> torch.Tensor:
    """Per-box IoU-variant loss of (n, 4) xyxy boxes -> (n,), ``iou_type`` one of :data:`IOU_LOSSES`."""
    if iou_type not in IOU_LOSSES:
        raise ValueError(f"iou_type={iou_type!r}: unknown IoU loss; choose one of {sorted(IOU_LOSSES)}")
    if pred.shape != target.shape or pred.shape[-1:] != (4,):
        raise ValueError(f"iou_loss: pred {tuple(pred.shape)} and target {tuple(target.shape)} must both be (n, 4)")
    return IOU_LOSSES[iou_type](pred, target)
