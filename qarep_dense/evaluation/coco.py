"""COCO box AP through pycocotools' COCOeval (the reference implementation every published number uses).

Detections are added per image in ORIGINAL image pixels (xyxy) with contiguous labels; the evaluator maps
labels to COCO category ids and boxes to xywh. Only images passed to ``add`` are evaluated (an image with no
detections must still be added, with empty arrays), so a partial pass over a dataset is scored on what it saw.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
from typing import Sequence

import numpy as np
import torch

from ..data.coco import load_coco_json
from ..data.transforms import unletterbox_boxes

logger = logging.getLogger(__name__)

METRIC_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # COCOeval.stats[0:6], in this order


def _numpy(x: np.ndarray | torch.Tensor | Sequence, dtype: type) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _coco_from_file(ann_file: str | os.PathLike):
    """A pycocotools COCO built from our validated JSON (clear errors instead of a KeyError deep inside)."""
    from pycocotools.coco import COCO

    data = load_coco_json(ann_file)
    for ann in data["annotations"]:  # COCOeval reads both; fill the COCO defaults for minimal files
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", float(ann["bbox"][2] * ann["bbox"][3]))
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress to stdout
        coco.createIndex()
    return coco


class COCOEvaluator:
    """Accumulate detections and score them with pycocotools COCOeval (bbox).

    Args:
        coco_gt: a ``pycocotools.coco.COCO`` or the path of a COCO instances JSON.
        category_ids: COCO category id of each contiguous label (``dataset.category_ids``).
    """

    def __init__(self, coco_gt, category_ids: Sequence[int]) -> None:
        self.coco_gt = coco_gt if hasattr(coco_gt, "getCatIds") else _coco_from_file(coco_gt)
        self.category_ids = [int(c) for c in category_ids]
        unknown = sorted(set(self.category_ids) - set(self.coco_gt.getCatIds()))
        if unknown:
            raise ValueError(f"COCOEvaluator: category_ids {unknown} are not categories of the ground truth")
        self._known_images = set(self.coco_gt.getImgIds())
        self.reset()

    def reset(self) -> None:
        # image_id -> (K, 7) [image_id, x, y, w, h, score, category_id]; keyed so that an image added twice
        # (a DistributedSampler pads the last batch with repeats) counts once
        self._results: dict[int, np.ndarray] = {}

    def add(self, image_id: int, boxes_xyxy: np.ndarray | torch.Tensor, scores: np.ndarray | torch.Tensor,
            labels: np.ndarray | torch.Tensor) -> None:
        """Record one image's detections: boxes (K, 4) xyxy in original pixels, scores (K,), labels (K,) 0..C-1.

        Adding the same image again replaces its detections.
        """
        image_id = int(image_id)
        if image_id not in self._known_images:
            raise ValueError(f"COCOEvaluator.add: image_id {image_id} is not in the ground truth")
        boxes = _numpy(boxes_xyxy, np.float64).reshape(-1, 4)
        scores_np = _numpy(scores, np.float64).reshape(-1)
        labels_np = _numpy(labels, np.int64).reshape(-1)
        if not len(boxes) == len(scores_np) == len(labels_np):
            raise ValueError(f"COCOEvaluator.add: image {image_id}: boxes/scores/labels lengths differ "
                             f"({len(boxes)}/{len(scores_np)}/{len(labels_np)})")
        if not (np.isfinite(boxes).all() and np.isfinite(scores_np).all()):
            raise ValueError(f"COCOEvaluator.add: image {image_id}: non-finite boxes or scores")
        if len(labels_np) and (labels_np.min() < 0 or labels_np.max() >= len(self.category_ids)):
            raise ValueError(f"COCOEvaluator.add: image {image_id}: labels must be in 0..{len(self.category_ids) - 1}, "
                             f"got range {labels_np.min()}..{labels_np.max()}")
        cats = np.asarray(self.category_ids, np.float64)[labels_np]
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
        self._results[image_id] = np.column_stack([np.full(len(boxes), image_id), xywh, scores_np, cats])

    @property
    def image_ids(self) -> list[int]:
        """Ids of the images added so far (the ones :meth:`summarize` evaluates)."""
        return sorted(self._results)

    def add_letterboxed(self, info: dict, boxes_xyxy: np.ndarray | torch.Tensor, scores: np.ndarray | torch.Tensor,
                        labels: np.ndarray | torch.Tensor) -> None:
        """Like :meth:`add` for boxes in the letterboxed network input; ``info`` is the dataset item's info dict."""
        boxes = unletterbox_boxes(_numpy(boxes_xyxy, np.float32), info["ratio"], info["pad"], info["orig_size"])
        self.add(info["image_id"], boxes, scores, labels)

    def summarize(self) -> dict[str, float]:
        """{"AP", "AP50", "AP75", "APs", "APm", "APl"} as fractions 0..1 over the added images.

        Zeros when nothing was detected; an area range without ground truth (COCOeval's -1) is reported as NaN.
        """
        dets = np.concatenate([np.zeros((0, 7)), *self._results.values()])
        if len(dets) == 0:
            return {k: 0.0 for k in METRIC_KEYS}
        from pycocotools.cocoeval import COCOeval

        log = io.StringIO()
        with contextlib.redirect_stdout(log):
            coco_dt = self.coco_gt.loadRes(dets)  # builds a new COCO; the gt is left untouched
            coco_eval = COCOeval(self.coco_gt, coco_dt, iouType="bbox")
            coco_eval.params.imgIds = self.image_ids
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        logger.info("COCOeval on %d images, %d detections:\n%s", len(self.image_ids), len(dets), log.getvalue())
        return {k: (float(v) if v >= 0 else float("nan")) for k, v in zip(METRIC_KEYS, coco_eval.stats[:6])}
