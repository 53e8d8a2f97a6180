"""Varifocal loss (Zhang et al., VarifocalNet, CVPR 2021) on raw logits.

Written by hand: ``torchvision.ops.sigmoid_focal_loss`` weights positives and negatives symmetrically with
hard 0/1 targets, while VFL trains positives towards an IoU-aware soft score weighted by that score and
down-weights only the negatives by ``alpha * p^gamma``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_REDUCTIONS = ("none", "sum", "mean")


def varifocal_loss(logits: torch.Tensor, gt_score: torch.Tensor, label: torch.Tensor, alpha: float = 0.75,
                   gamma: float = 2.0, reduction: str = "sum") -> torch.Tensor:
    """VFL of raw class ``logits`` against soft targets; all three inputs have the same shape (..., C).

    ``gt_score`` is the IoU-aware target (0 for negatives), ``label`` the one-hot class of positive anchors.
    weight = alpha * p^gamma * (1 - label) + gt_score * label, p = sigmoid(logits);
    loss = weight * BCE-with-logits(logits, gt_score). Computed in float32 (AMP-safe).
    """
    if not logits.shape == gt_score.shape == label.shape:
        raise ValueError(f"varifocal_loss: logits {tuple(logits.shape)}, gt_score {tuple(gt_score.shape)} and "
                         f"label {tuple(label.shape)} must have the same shape")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction={reduction!r}: choose one of {_REDUCTIONS}")
    logits, gt_score, label = logits.float(), gt_score.float(), label.float()
    weight = alpha * torch.sigmoid(logits).pow(gamma) * (1 - label) + gt_score * label
    loss = F.binary_cross_entropy_with_logits(logits, gt_score, reduction="none") * weight
    if reduction == "sum":
        return loss.sum()
    return loss.mean() if reduction == "mean" else loss


class VarifocalLoss(nn.Module):
    """Module form of :func:`varifocal_loss` (default reduction: sum, as the detection loss normalises itself)."""

    def __init__(self, alpha: float = 0.75, gamma: float = 2.0, reduction: str = "sum") -> None:
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction={reduction!r}: choose one of {_REDUCTIONS}")
        self.alpha, self.gamma, self.reduction = alpha, gamma, reduction

    def forward(self, logits: torch.Tensor, gt_score: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return varifocal_loss(logits, gt_score, label, self.alpha, self.gamma, self.reduction)
