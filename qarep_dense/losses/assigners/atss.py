"""Adaptive Training Sample Selection (Zhang et al., CVPR 2020), YOLOv6's warm-up assigner.

Written by hand: torchvision ships no label assigner. Per gt: take the ``topk`` anchors nearest to its centre
on every level, threshold their IoU with the gt at mean + std over those candidates, and keep the ones whose
centre lies inside the gt. An anchor claimed by several gts goes to the one with the highest IoU.
"""
from __future__ import annotations

import torch

from ..iou import pairwise_iou
from .common import Assignment, check_gts, empty_assignment, gather_targets, keep_highest_iou, points_in_boxes


def _centres(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[..., :2] + boxes[..., 2:]) / 2


class ATSSAssigner:
    """ATSS on anchor boxes (``qarep_dense.ops.make_anchor_boxes``); stateless, runs without gradients."""

    def __init__(self, num_classes: int, topk: int = 9, tolerance: float = 1e-6) -> None:
        if num_classes < 1 or topk < 1:
            raise ValueError(f"ATSSAssigner: num_classes={num_classes} and topk={topk} must be >= 1")
        self.num_classes, self.topk, self.tolerance = num_classes, topk, tolerance

    def _candidates(self, gt_boxes: torch.Tensor, anchor_boxes: torch.Tensor, level_counts: list[int]) -> torch.Tensor:
        """Per gt, the ``topk`` anchors nearest its centre on each level -> (N, M, K) anchor indices."""
        gt_c, anc_c = _centres(gt_boxes), _centres(anchor_boxes)
        # squared distances suffice for ranking and avoid cdist's matmul shortcut, which can reorder near-ties
        dist = (gt_c.unsqueeze(-2) - anc_c).pow(2).sum(-1)  # (N, M, A)
        picks, start = [], 0
        for count in level_counts:
            k = min(self.topk, count)
            idx = dist[..., start:start + count].topk(k, dim=-1, largest=False).indices
            picks.append(idx + start)
            start += count
        return torch.cat(picks, -1)

    @torch.no_grad()
    def __call__(self, anchor_boxes: torch.Tensor, level_counts: list[int], gt_labels: torch.Tensor,
                 gt_boxes: torch.Tensor, gt_mask: torch.Tensor, pred_boxes: torch.Tensor | None = None) -> Assignment:
        """Assign anchors to gts.

        anchor_boxes (A, 4) xyxy pixels, level order; level_counts anchors per level (sum A);
        gt_labels (N, M) long, gt_boxes (N, M, 4) xyxy pixels, gt_mask (N, M) bool (from ``pad_targets``);
        pred_boxes (N, A, 4) xyxy pixels, optional: when given, target scores are the IoU of each positive
        anchor's predicted box with its gt (IoU-aware targets for VFL), otherwise 1.
        """
        check_gts(gt_labels, gt_boxes, gt_mask, self.num_classes)
        if sum(level_counts) != anchor_boxes.shape[0]:
            raise ValueError(f"level_counts: sum {sum(level_counts)} != number of anchor_boxes {anchor_boxes.shape[0]}")
        n, m = gt_labels.shape
        if m == 0:
            return empty_assignment(n, anchor_boxes.shape[0], self.num_classes, anchor_boxes)
        ious = pairwise_iou(gt_boxes, anchor_boxes)  # (N, M, A)
        cand_idx = self._candidates(gt_boxes, anchor_boxes, level_counts)  # (N, M, K)
        cand_ious = ious.gather(-1, cand_idx)
        # unbiased std as in the ATSS paper's code; a single candidate has no spread
        std = cand_ious.std(-1, keepdim=True) if cand_idx.shape[-1] > 1 else torch.zeros_like(cand_ious)
        # the tolerance keeps candidates whose IoU equals the threshold: a small gt inside several anchor boxes
        # gives them all the same IoU (std 0), and the rounding of the mean must not drop them all
        threshold = cand_ious.mean(-1, keepdim=True) + std - self.tolerance
        is_cand = torch.zeros_like(ious, dtype=torch.bool).scatter_(-1, cand_idx, True)
        pos = is_cand & (ious >= threshold) & points_in_boxes(_centres(anchor_boxes), gt_boxes)
        pos = keep_highest_iou(pos & gt_mask.unsqueeze(-1), ious)
        if pred_boxes is None:
            scores = torch.ones_like(ious[:, 0])
        else:
            scores = (pairwise_iou(gt_boxes, pred_boxes) * pos).amax(1)  # (N, A), IoU with the assigned gt
        return gather_targets(pos, gt_labels, gt_boxes, scores, self.num_classes)
