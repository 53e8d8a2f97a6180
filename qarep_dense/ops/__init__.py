"""Box and anchor arithmetic shared by the detector head, its post-processing and its losses."""
from .anchors import make_anchor_boxes, make_anchor_points
from .boxes import bbox2dist, decode_distances, dist2bbox

__all__ = ["make_anchor_points", "make_anchor_boxes", "dist2bbox", "bbox2dist", "decode_distances"]
