"""mIoU of a tensor-in / logits-out segmentor (torch, fused, fake-quant or ONNX Runtime-backed).

The metric object is mmseg's ``IoUMetric`` (built by :mod:`qarep_dense.integrations.mmseg` and
passed in as a factory), so the numbers are mmseg's own; this module only feeds it, without
importing mmseg.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from ..data.preprocess import Preprocess


def seg_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) logits of ``model`` on preprocessed ``images``; the first output of a tuple (ORT)."""
    out = model(images)
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def evaluate_segmentor(model: nn.Module, loader: Iterable, preprocess: Preprocess, make_metric: Callable[[], Any],
                       device: str | torch.device = "cpu", progress: bool = True) -> dict[str, float]:
    """Feed ``model``'s predictions on ``loader`` into a fresh metric; returns its dict (mIoU, mAcc, aAcc in %).

    loader: batches of (uint8 RGB (N, 3, H, W), list of N ground-truth maps (H_i, W_i)); logits
    are resized bilinearly to each ground truth's size before the argmax, as mmseg does.
    make_metric: returns an object with mmseg's ``process(data_batch, data_samples)`` /
    ``compute_metrics(results)`` / ``results`` interface.
    """
    was_training = model.training
    model.eval()
    metric = make_metric()
    try:
        for images, gts in tqdm(loader, desc="mIoU", disable=not progress, leave=False):
            logits = seg_logits(model, preprocess(images.to(device)))
            samples = []
            for logit, gt in zip(logits, gts):
                if logit.shape[-2:] != gt.shape[-2:]:
                    logit = F.interpolate(logit[None].float(), size=gt.shape[-2:], mode="bilinear",
                                          align_corners=False)[0]
                pred = logit.argmax(0, keepdim=True).cpu()
                samples.append({"pred_sem_seg": {"data": pred}, "gt_sem_seg": {"data": gt[None].cpu()}})
            metric.process({}, samples)
        if not metric.results:
            raise ValueError("segmentation evaluation loader yielded no images")
        return {k: float(v) for k, v in metric.compute_metrics(metric.results).items()}
    finally:
        model.train(was_training)


class SegmentationEvaluator:
    """mIoU (percent) on a validation loader; calibration batches from the training split (same
    evaluation pipeline and preprocessing). Implements ``qarep_dense.evaluation.evaluators.Evaluator``."""

    metric_name = "mIoU"

    def __init__(self, val_loader: Iterable, calib_loader: Iterable, preprocess: Preprocess,
                 make_metric: Callable[[], Any], device: str | torch.device = "cpu", progress: bool = True):
        self.val_loader, self.calib_loader, self.preprocess = val_loader, calib_loader, preprocess
        self.make_metric, self.device, self.progress = make_metric, device, progress

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return evaluate_segmentor(model, self.val_loader, self.preprocess, self.make_metric, self.device,
                                  self.progress)

    def calibration_loader(self) -> Iterable:
        return self.calib_loader
