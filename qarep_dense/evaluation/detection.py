"""COCO mAP of a detector: forward -> decode -> NMS -> un-letterbox -> pycocotools.

``model`` may be any callable mapping a preprocessed batch to the raw head tensors
``(cls_logits (N, A, C), reg (N, A, R))``: a train-form or fused Detector, a fake-quantized one, or
an ONNX Runtime session wrapper, so FP32 and INT8 numbers come from one code path.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from tqdm import tqdm

from ..data.preprocess import Preprocess
from ..models.postprocess import decode, nms
from ..ops import make_anchor_points
from .coco import COCOEvaluator


@dataclass(frozen=True)
class DetEvalSettings:
    """YOLOv6's COCO evaluation settings."""

    conf_thres: float = 0.03
    iou_thres: float = 0.65
    max_det: int = 300


@torch.no_grad()
def evaluate_detector(model: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], loader: Iterable,
                      evaluator: COCOEvaluator, preprocess: Preprocess, strides: tuple[int, ...], reg_max: int,
                      device: str | torch.device = "cpu", settings: DetEvalSettings = DetEvalSettings(),
                      progress: bool = False, desc: str = "eval") -> dict[str, float]:
    """Run ``model`` over an eval ``loader`` of (uint8 images, targets, infos) and return COCO metrics.

    Returns {"AP", "AP50", "AP75", "APs", "APm", "APl"} as fractions (see COCOEvaluator.summarize).
    """
    if isinstance(model, torch.nn.Module):
        model.eval()
    evaluator.reset()
    anchors: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
    for images, _, infos in tqdm(loader, desc=desc, disable=not progress, leave=False):
        x = preprocess(images.to(device))
        cls_logits, reg = model(x)
        hw = tuple(x.shape[-2:])
        if hw not in anchors:  # letterboxed batches share one size: build the grid once
            sizes = [(hw[0] // s, hw[1] // s) for s in strides]
            anchors[hw] = make_anchor_points(sizes, list(strides), device=cls_logits.device)
        boxes, scores = decode(cls_logits.float(), reg.float(), *anchors[hw], reg_max)
        for det, info in zip(nms(boxes, scores, settings.conf_thres, settings.iou_thres, settings.max_det), infos):
            det = det.cpu()
            evaluator.add_letterboxed(info, det[:, :4], det[:, 4], det[:, 5].long())
    return evaluator.summarize()
