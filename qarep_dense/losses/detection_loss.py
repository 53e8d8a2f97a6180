"""YOLOv6 (v2-era) detection loss: VFL classification + IoU loss (+ DFL), ATSS then task-aligned assignment.

Normalisation follows YOLOv6: every term is divided by the sum of the target scores over the batch
(clamped to >= 1), the classification term being a plain VFL sum and the box terms weighted per positive
anchor by its target score. Boxes are compared in stride units, where DFL's bins live (IoU losses are
scale-invariant, so this changes nothing for them).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import bbox2dist, decode_distances, dist2bbox, make_anchor_boxes
from .assigners import Assignment, ATSSAssigner, TaskAlignedAssigner, pad_targets
from .dfl import distribution_focal_loss
from .iou import IOU_LOSSES, iou_loss
from .varifocal import varifocal_loss

DEFAULT_LOSS_WEIGHTS = {"cls": 1.0, "iou": 2.5, "dfl": 0.5}
ASSIGNERS = ("atss", "tal")


class DetectionLoss(nn.Module):
    """Loss of the anchor-free decoupled head. Call it with the head outputs and a (T, 6) target list.

    ``set_assigner("tal")`` switches from ATSS (default) to the task-aligned assigner after the warm-up epochs.
    """

    def __init__(self, num_classes: int, reg_max: int = 16, use_dfl: bool = True, iou_type: str = "giou",
                 loss_weights: dict[str, float] | None = None, atss_topk: int = 9, tal_topk: int = 13,
                 tal_alpha: float = 1.0, tal_beta: float = 6.0, vfl_alpha: float = 0.75, vfl_gamma: float = 2.0,
                 anchor_cell_size: float = 5.0) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes={num_classes}: must be >= 1")
        if use_dfl and reg_max < 1:
            raise ValueError(f"reg_max={reg_max}: DFL needs reg_max >= 1 (or pass use_dfl=False)")
        if iou_type not in IOU_LOSSES:
            raise ValueError(f"iou_type={iou_type!r}: unknown IoU loss; choose one of {sorted(IOU_LOSSES)}")
        unknown = set(loss_weights or {}) - set(DEFAULT_LOSS_WEIGHTS)
        if unknown:
            raise ValueError(f"loss_weights: unknown keys {sorted(unknown)}; "
                             f"expected some of {sorted(DEFAULT_LOSS_WEIGHTS)}")
        weights = {**DEFAULT_LOSS_WEIGHTS, **(loss_weights or {})}  # keys left out keep YOLOv6's weights
        self.num_classes, self.use_dfl, self.iou_type = num_classes, use_dfl, iou_type
        self.reg_max = reg_max if use_dfl else 0
        self.loss_weights = weights
        self.vfl_alpha, self.vfl_gamma, self.anchor_cell_size = vfl_alpha, vfl_gamma, anchor_cell_size
        self.atss = ATSSAssigner(num_classes, atss_topk)
        self.tal = TaskAlignedAssigner(num_classes, tal_topk, tal_alpha, tal_beta)
        self.assigner = "atss"

    def set_assigner(self, name: str) -> None:
        """Pick the label assigner: "atss" (warm-up) or "tal"."""
        if name not in ASSIGNERS:
            raise ValueError(f"set_assigner: unknown assigner {name!r}; choose one of {ASSIGNERS}")
        self.assigner = name

    def _check_inputs(self, cls_logits: torch.Tensor, reg: torch.Tensor, anchor_points: torch.Tensor,
                      stride_tensor: torch.Tensor, feature_sizes: list[tuple[int, int]]) -> None:
        if cls_logits.dim() != 3 or cls_logits.shape[-1] != self.num_classes:
            raise ValueError(f"cls_logits: expected (N, A, {self.num_classes}), got {tuple(cls_logits.shape)}")
        n, a, _ = cls_logits.shape
        reg_ch = 4 * (self.reg_max + 1)
        if reg.shape != (n, a, reg_ch):
            raise ValueError(f"reg: expected (N, A, {reg_ch}) = ({n}, {a}, {reg_ch}) for reg_max={self.reg_max}, "
                             f"use_dfl={self.use_dfl}; got {tuple(reg.shape)}")
        if anchor_points.shape != (a, 2) or stride_tensor.shape != (a, 1):
            raise ValueError(f"anchor_points {tuple(anchor_points.shape)} and stride_tensor "
                             f"{tuple(stride_tensor.shape)}: expected ({a}, 2) and ({a}, 1)")
        if sum(h * w for h, w in feature_sizes) != a:
            raise ValueError(f"feature_sizes {list(feature_sizes)}: sum of h*w must equal the {a} anchors")

    def _strides(self, stride_tensor: torch.Tensor, feature_sizes: list[tuple[int, int]]) -> list[float]:
        """One stride per level, read from the first anchor of each level."""
        starts, start = [], 0
        for h, w in feature_sizes:
            starts.append(start)
            start += h * w
        return stride_tensor[starts, 0].tolist()

    def _assign(self, cls_logits: torch.Tensor, pred_boxes_px: torch.Tensor, anchor_points: torch.Tensor,
                stride_tensor: torch.Tensor, gts: tuple[torch.Tensor, ...], feature_sizes: list[tuple[int, int]]
                ) -> Assignment:
        """Run the active assigner; pred_boxes_px (N, A, 4) detached, in pixels."""
        if self.assigner == "tal":
            return self.tal(cls_logits.detach().sigmoid(), pred_boxes_px, anchor_points, *gts)
        strides = self._strides(stride_tensor, feature_sizes)
        anchor_boxes, counts = make_anchor_boxes(feature_sizes, strides, self.anchor_cell_size,
                                                 device=anchor_points.device, dtype=anchor_points.dtype)
        return self.atss(anchor_boxes, counts, *gts, pred_boxes=pred_boxes_px)

    def _box_losses(self, reg: torch.Tensor, pred_boxes: torch.Tensor, points: torch.Tensor, target_boxes: torch.Tensor,
                    weight: torch.Tensor, fg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Un-normalised IoU and DFL sums over positive anchors; boxes and points in stride units.

        reg (N, A, 4*(reg_max+1)), pred_boxes/target_boxes (N, A, 4), points (A, 2), weight (P,), fg (N, A).
        """
        loss_iou = (iou_loss(pred_boxes[fg], target_boxes[fg], self.iou_type) * weight).sum()
        if not self.use_dfl:
            return loss_iou, reg.sum() * 0.0
        target_ltrb = bbox2dist(points, target_boxes, self.reg_max)[fg]  # (P, 4) in [0, reg_max - 0.01]
        logits = reg[fg].unflatten(-1, (4, self.reg_max + 1))
        loss_dfl = (distribution_focal_loss(logits, target_ltrb).mean(-1) * weight).sum()
        return loss_iou, loss_dfl

    def forward(self, cls_logits: torch.Tensor, reg: torch.Tensor, anchor_points: torch.Tensor,
                stride_tensor: torch.Tensor, targets: torch.Tensor, feature_sizes: list[tuple[int, int]]
                ) -> tuple[torch.Tensor, dict[str, float]]:
        """cls_logits (N, A, C) raw; reg (N, A, 4*(reg_max+1)) with DFL or (N, A, 4) without; anchor_points (A, 2)
        and stride_tensor (A, 1) from ``make_anchor_points``; targets (T, 6) [image_index, class, x1, y1, x2, y2]
        in input pixels; feature_sizes [(h, w)] per level.

        Returns the weighted total (0-d, float32) and {"cls", "iou", "dfl", "total"} as floats (weighted terms).
        """
        self._check_inputs(cls_logits, reg, anchor_points, stride_tensor, feature_sizes)
        # AMP: assignment thresholds and the exp/log terms need float32
        with torch.autocast(device_type=cls_logits.device.type, enabled=False):
            cls_logits, reg = cls_logits.float(), reg.float()
            anchor_points, stride_tensor = anchor_points.float(), stride_tensor.float()
            gts = pad_targets(targets.to(cls_logits.device, torch.float32), cls_logits.shape[0])
            points = anchor_points / stride_tensor
            pred_boxes = dist2bbox(decode_distances(reg, self.reg_max), points)  # (N, A, 4), stride units
            assign = self._assign(cls_logits, pred_boxes.detach() * stride_tensor, anchor_points, stride_tensor,
                                  gts, feature_sizes)
            one_hot = F.one_hot(assign.target_labels, self.num_classes + 1)[..., :self.num_classes]
            loss_cls = varifocal_loss(cls_logits, assign.target_scores, one_hot, self.vfl_alpha, self.vfl_gamma)
            norm = assign.target_scores.sum().clamp(min=1.0)
            fg = assign.fg_mask
            if fg.any():
                weight = assign.target_scores.sum(-1)[fg]
                loss_iou, loss_dfl = self._box_losses(reg, pred_boxes, points, assign.target_boxes / stride_tensor,
                                                      weight, fg)
            else:  # keep the graph connected so every parameter gets a (zero) gradient
                loss_iou = loss_dfl = reg.sum() * 0.0
            terms = {"cls": loss_cls / norm, "iou": loss_iou / norm, "dfl": loss_dfl / norm}
            weighted = {k: v * self.loss_weights[k] for k, v in terms.items()}
            total = weighted["cls"] + weighted["iou"] + weighted["dfl"]
        values = torch.stack([weighted["cls"], weighted["iou"], weighted["dfl"], total]).detach().tolist()
        return total, dict(zip(("cls", "iou", "dfl", "total"), values))
