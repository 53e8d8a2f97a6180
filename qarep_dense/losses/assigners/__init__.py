"""Label assigners of the anchor-free detector: ATSS (warm-up) and task-aligned (TOOD), batched over images."""
from .atss import ATSSAssigner
from .common import Assignment, pad_targets, points_in_boxes
from .tal import TaskAlignedAssigner

__all__ = ["ATSSAssigner", "TaskAlignedAssigner", "Assignment", "pad_targets", "points_in_boxes"]
