"""Detector post-processing as plain functions: decode raw head tensors, then NMS."""
from __future__ import annotations

import torch
from torchvision.ops import batched_nms

from ..ops import decode_distances, dist2bbox


def decode(cls_logits: torch.Tensor, reg: torch.Tensor, anchor_points: torch.Tensor,
           stride_tensor: torch.Tensor, reg_max: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw head outputs -> (boxes (N, A, 4) xyxy in input pixels, scores (N, A, C) in [0, 1]).

    cls_logits (N, A, C); reg (N, A, 4 * (reg_max + 1)) as ltrb distances in stride units
    (a DFL distribution per side when reg_max > 0); anchor_points (A, 2) xy pixels;
    stride_tensor (A, 1), both from ``Detector.anchors``.
    """
    if cls_logits.dim() != 3 or reg.dim() != 3 or cls_logits.shape[:2] != reg.shape[:2]:
        raise ValueError(f"decode: cls_logits (N, A, C) and reg (N, A, R) must agree in N and A, got "
                         f"{tuple(cls_logits.shape)} and {tuple(reg.shape)}")
    if reg_max < 0 or reg.shape[-1] != 4 * (reg_max + 1):
        raise ValueError(f"decode: reg has {reg.shape[-1]} channels but reg_max={reg_max} needs "
                         f"4 * (reg_max + 1) = {4 * (reg_max + 1)}")
    num_anchors = reg.shape[1]
    if anchor_points.shape != (num_anchors, 2) or stride_tensor.shape != (num_anchors, 1):
        raise ValueError(f"decode: anchor_points must be ({num_anchors}, 2) and stride_tensor ({num_anchors}, 1), "
                         f"got {tuple(anchor_points.shape)} and {tuple(stride_tensor.shape)}; "
                         "were the anchors made for another input size?")
    distances = decode_distances(reg, reg_max) * stride_tensor
    return dist2bbox(distances, anchor_points), cls_logits.sigmoid()


def _candidates(boxes: torch.Tensor, scores: torch.Tensor, conf_thres: float, multi_label: bool,
                max_candidates: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One image's (boxes (K, 4), scores (K,), classes (K,)) above the threshold, best first, K <= max_candidates."""
    if multi_label:  # one candidate per (anchor, class) pair above threshold
        anchor_idx, cls = (scores > conf_thres).nonzero(as_tuple=True)
        score = scores[anchor_idx, cls]
    else:
        score, cls = scores.max(dim=1)
        anchor_idx = (score > conf_thres).nonzero(as_tuple=True)[0]
        score, cls = score[anchor_idx], cls[anchor_idx]
    # Cap the NMS input: an untrained model can put every anchor above a low threshold.
    order = score.argsort(descending=True)[:max_candidates]
    return boxes[anchor_idx[order]], score[order], cls[order]


def nms(boxes: torch.Tensor, scores: torch.Tensor, conf_thres: float = 0.03, iou_thres: float = 0.65,
        max_det: int = 300, multi_label: bool = True, max_candidates: int = 30000) -> list[torch.Tensor]:
    """Class-aware NMS per image (torchvision ``batched_nms``: boxes of different classes never suppress).

    boxes (N, A, 4) xyxy; scores (N, A, C). multi_label keeps every class above ``conf_thres`` for an
    anchor (COCO-eval setting); otherwise only its best class. Returns N tensors (K, 6) of
    [x1, y1, x2, y2, score, class], sorted by score, K <= max_det.
    """
    if boxes.dim() != 3 or boxes.shape[-1] != 4 or scores.dim() != 3 or boxes.shape[:2] != scores.shape[:2]:
        raise ValueError(f"nms: boxes must be (N, A, 4) and scores (N, A, C) with the same N and A, got "
                         f"{tuple(boxes.shape)} and {tuple(scores.shape)}")
    if not 0.0 <= conf_thres < 1.0 or not 0.0 <= iou_thres <= 1.0:
        raise ValueError(f"nms: conf_thres must lie in [0, 1) and iou_thres in [0, 1], "
                         f"got conf_thres={conf_thres}, iou_thres={iou_thres}")
    if max_det < 1 or max_candidates < 1:
        raise ValueError(f"nms: max_det and max_candidates must be >= 1, got {max_det}, {max_candidates}")
    results = []
    for img_boxes, img_scores in zip(boxes, scores):
        b, s, c = _candidates(img_boxes, img_scores, conf_thres, multi_label, max_candidates)
        keep = batched_nms(b.float(), s.float(), c, iou_thres)[:max_det]
        results.append(torch.cat([b[keep], s[keep, None], c[keep, None].to(b.dtype)], dim=1))
    return results
