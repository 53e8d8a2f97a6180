"""Task-aligned assigner (Feng et al., TOOD, ICCV 2021), YOLOv6's assigner after the warm-up epochs.

Written by hand: torchvision ships no label assigner. Per gt and anchor the alignment metric is
t = s^alpha * IoU^beta, s the predicted probability of the gt's class and IoU that of the predicted box with
the gt. Per gt the ``topk`` anchors by t among those whose point lies inside the gt are positive; an anchor
positive for several gts keeps the one with the highest IoU. Target score of a positive anchor:
t / max t over the gt's positives * max IoU over the gt's positives.
"""
from __future__ import annotations

import torch

from ..iou import pairwise_iou
from .common import Assignment, check_gts, empty_assignment, gather_targets, keep_highest_iou, points_in_boxes


class TaskAlignedAssigner:
    """TOOD's assigner on anchor points; stateless, runs without gradients."""

    def __init__(self, num_classes: int, topk: int = 13, alpha: float = 1.0, beta: float = 6.0,
                 eps: float = 1e-9) -> None:
        if num_classes < 1 or topk < 1:
            raise ValueError(f"TaskAlignedAssigner: num_classes={num_classes} and topk={topk} must be >= 1")
        self.num_classes, self.topk, self.alpha, self.beta, self.eps = num_classes, topk, alpha, beta, eps

    def _metric(self, pred_scores: torch.Tensor, pred_boxes: torch.Tensor, gt_labels: torch.Tensor,
                gt_boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Alignment metric and IoU, both (N, M, A)."""
        n, a, _ = pred_scores.shape
        m = gt_labels.shape[1]
        cls_scores = pred_scores.gather(2, gt_labels.unsqueeze(1).expand(n, a, m)).transpose(1, 2)
        ious = pairwise_iou(gt_boxes, pred_boxes)
        return cls_scores.pow(self.alpha) * ious.pow(self.beta), ious

    def _topk_mask(self, metric: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
        """Per gt the ``topk`` anchors by metric among those inside it -> (N, M, A) bool.

        Anchors with metric 0 are left out: their target score would be 0 anyway, and which of several
        tied zeros ``topk`` returns is arbitrary.
        """
        k = min(self.topk, metric.shape[-1])
        ranked = torch.where(inside, metric, metric.new_tensor(-1.0))
        idx = ranked.topk(k, dim=-1).indices
        top = torch.zeros_like(inside).scatter_(-1, idx, True)
        return top & inside & (metric > 0)

    @torch.no_grad()
    def __call__(self, pred_scores: torch.Tensor, pred_boxes: torch.Tensor, anchor_points: torch.Tensor,
                 gt_labels: torch.Tensor, gt_boxes: torch.Tensor, gt_mask: torch.Tensor) -> Assignment:
        """Assign anchors to gts.

        pred_scores (N, A, C) class probabilities (after sigmoid); pred_boxes (N, A, 4) xyxy pixels;
        anchor_points (A, 2) xy pixels; gt_labels (N, M) long, gt_boxes (N, M, 4), gt_mask (N, M) bool.
        """
        check_gts(gt_labels, gt_boxes, gt_mask, self.num_classes)
        n, a, c = pred_scores.shape
        if c != self.num_classes or pred_boxes.shape != (n, a, 4) or anchor_points.shape != (a, 2):
            raise ValueError(f"pred_scores {tuple(pred_scores.shape)}, pred_boxes {tuple(pred_boxes.shape)}, "
                             f"anchor_points {tuple(anchor_points.shape)}: expected (N, A, {self.num_classes}), "
                             f"(N, A, 4), (A, 2)")
        if gt_labels.shape[1] == 0:
            return empty_assignment(n, a, self.num_classes, pred_boxes)
        metric, ious = self._metric(pred_scores.float(), pred_boxes.float(), gt_labels, gt_boxes.float())
        inside = points_in_boxes(anchor_points, gt_boxes) & gt_mask.unsqueeze(-1)
        pos = keep_highest_iou(self._topk_mask(metric, inside), ious)
        metric, ious = metric * pos, ious * pos
        scale = ious.amax(-1, keepdim=True) / (metric.amax(-1, keepdim=True) + self.eps)  # (N, M, 1) per gt
        scores = (metric * scale).amax(1)  # (N, A): one gt per anchor after keep_highest_iou
        return gather_targets(pos, gt_labels, gt_boxes, scores, self.num_classes)
