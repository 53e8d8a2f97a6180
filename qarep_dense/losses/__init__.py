"""Detection losses: IoU variants, varifocal, distribution focal, label assigners and the YOLOv6 loss."""
from .assigners import ATSSAssigner, Assignment, TaskAlignedAssigner, pad_targets
from .detection_loss import DetectionLoss
from .dfl import distribution_focal_loss
from .iou import IOU_LOSSES, aligned_iou, ciou_loss, giou_loss, iou_loss, pairwise_iou, siou_loss
from .varifocal import VarifocalLoss, varifocal_loss

__all__ = [
    "DetectionLoss", "ATSSAssigner", "TaskAlignedAssigner", "Assignment", "pad_targets",
    "VarifocalLoss", "varifocal_loss", "distribution_focal_loss",
    "IOU_LOSSES", "iou_loss", "giou_loss", "ciou_loss", "siou_loss", "pairwise_iou", "aligned_iou",
]
