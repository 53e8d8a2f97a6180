"""Pieces shared by the ATSS and task-aligned assigners.

Ground truths are handled batched: the (T, 6) target list is padded to (N, M) per image, M the largest
count in the batch, with a boolean ``gt_mask`` marking the real rows. Per-gt x per-anchor quantities are
(N, M, A) tensors; an anchor's assignment is resolved along the M axis.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class Assignment(NamedTuple):
    """What an assigner returns (unpacks as a 4-tuple).

    target_labels (N, A) long: class of the assigned gt; ``num_classes`` on background anchors.
    target_boxes (N, A, 4): xyxy of the assigned gt in input pixels; zeros on background anchors.
    target_scores (N, A, C): soft score at the target class of foreground anchors, zeros elsewhere.
    fg_mask (N, A) bool: anchors assigned to a gt.
    """

    target_labels: torch.Tensor
    target_boxes: torch.Tensor
    target_scores: torch.Tensor
    fg_mask: torch.Tensor


def pad_targets(targets: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(T, 6) [image_index, class, x1, y1, x2, y2] -> gt_labels (N, M) long, gt_boxes (N, M, 4), gt_mask (N, M) bool.

    Rows keep their order within each image. M = max gts per image (0 when T == 0).
    """
    if targets.dim() != 2 or targets.shape[1] != 6:
        raise ValueError(f"targets: expected a (T, 6) tensor [image_index, class, x1, y1, x2, y2], "
                         f"got shape {tuple(targets.shape)}")
    image_idx = targets[:, 0].long()
    if targets.numel() and (image_idx.min() < 0 or image_idx.max() >= batch_size):
        raise ValueError(f"targets: image_index must lie in [0, {batch_size - 1}], "
                         f"got [{image_idx.min().item()}, {image_idx.max().item()}]")
    boxes = targets[:, 2:]
    if not torch.isfinite(boxes).all() or (boxes[:, 2:] < boxes[:, :2]).any():
        raise ValueError("targets: boxes must be finite xyxy with x2 >= x1 and y2 >= y1")
    counts = torch.bincount(image_idx, minlength=batch_size)
    max_count = int(counts.max().item()) if targets.numel() else 0
    order = torch.argsort(image_idx, stable=True)
    image_idx = image_idx[order]
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(len(order), device=targets.device) - starts[image_idx]
    gt_labels = targets.new_zeros(batch_size, max_count, dtype=torch.long)
    gt_boxes = targets.new_zeros(batch_size, max_count, 4)
    gt_mask = torch.zeros(batch_size, max_count, dtype=torch.bool, device=targets.device)
    gt_labels[image_idx, slot] = targets[order, 1].long()
    gt_boxes[image_idx, slot] = targets[order, 2:]
    gt_mask[image_idx, slot] = True
    return gt_labels, gt_boxes, gt_mask


def points_in_boxes(points: torch.Tensor, boxes: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """Whether each point (A, 2) lies strictly inside each box (N, M, 4) -> (N, M, A) bool.

    Strict, so a zero-width or zero-height box contains no point.
    """
    x, y = points[:, 0], points[:, 1]
    deltas = torch.stack([x - boxes[..., 0:1], y - boxes[..., 1:2], boxes[..., 2:3] - x, boxes[..., 3:4] - y], -1)
    return deltas.amin(-1) > eps


def keep_highest_iou(pos: torch.Tensor, ious: torch.Tensor) -> torch.Tensor:
    """Resolve anchors positive for several gts: keep only the gt with the highest IoU among those.

    pos (N, M, A) bool, ious (N, M, A) -> (N, M, A) bool with at most one True per anchor. The argmax runs
    over the gts the anchor is positive for only (YOLOv6 takes it over all gts, which can hand the anchor
    to a gt it was never a candidate of).
    """
    if pos.shape[1] < 2:
        return pos
    best = torch.where(pos, ious, ious.new_tensor(-1.0)).argmax(1)  # (N, A)
    return pos & F.one_hot(best, pos.shape[1]).transpose(1, 2).bool()


def gather_targets(pos: torch.Tensor, gt_labels: torch.Tensor, gt_boxes: torch.Tensor, scores: torch.Tensor,
                   num_classes: int) -> Assignment:
    """Build the per-anchor targets from a resolved positive mask.

    pos (N, M, A) bool with at most one True per anchor; gt_labels (N, M); gt_boxes (N, M, 4);
    scores (N, A) soft score of each foreground anchor (ignored on background).
    """
    fg_mask = pos.any(1)  # (N, A)
    gt_idx = pos.to(torch.uint8).argmax(1)  # (N, A); 0 on background, masked below
    labels = torch.where(fg_mask, gt_labels.gather(1, gt_idx), num_classes)
    boxes = gt_boxes.gather(1, gt_idx.unsqueeze(-1).expand(-1, -1, 4)) * fg_mask.unsqueeze(-1)
    one_hot = F.one_hot(labels, num_classes + 1)[..., :num_classes].to(scores.dtype)
    return Assignment(labels, boxes, one_hot * scores.unsqueeze(-1), fg_mask)


def empty_assignment(batch_size: int, num_anchors: int, num_classes: int, like: torch.Tensor) -> Assignment:
    """All anchors background (no ground truth in the batch)."""
    n, a = batch_size, num_anchors
    return Assignment(torch.full((n, a), num_classes, dtype=torch.long, device=like.device),
                      like.new_zeros(n, a, 4), like.new_zeros(n, a, num_classes),
                      torch.zeros(n, a, dtype=torch.bool, device=like.device))


def check_gts(gt_labels: torch.Tensor, gt_boxes: torch.Tensor, gt_mask: torch.Tensor, num_classes: int) -> None:
    """Validate padded ground truth shapes and class range; raise ValueError naming the argument."""
    n, m = gt_labels.shape[:2] if gt_labels.dim() == 2 else (-1, -1)
    if gt_labels.dim() != 2 or gt_boxes.shape != (n, m, 4) or gt_mask.shape != (n, m):
        raise ValueError(f"gt_labels {tuple(gt_labels.shape)}, gt_boxes {tuple(gt_boxes.shape)} and gt_mask "
                         f"{tuple(gt_mask.shape)} must be (N, M), (N, M, 4) and (N, M)")
    real = gt_labels[gt_mask]
    if real.numel() and (real.min() < 0 or real.max() >= num_classes):
        raise ValueError(f"gt_labels: classes must lie in [0, {num_classes - 1}], "
                         f"got [{real.min().item()}, {real.max().item()}]")
