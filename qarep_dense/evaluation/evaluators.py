"""Task evaluators for the FP32-vs-INT8 tools: one small protocol, one implementation per task.

Classification and detection (COCO mAP) are implemented here; segmentation (mIoU through mmseg's
metric) lives in :mod:`qarep_dense.evaluation.segmentation` and implements the same members. Each task's
row turns an :class:`EvalRequest` into its evaluator (``qarep_dense.tasks.registry.get_task(name).make_evaluator``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Protocol, runtime_checkable

import torch
from torch import nn

from ..choices import BATCH_SIZE  # the INT8 tools' --batch-size (a task row's own: EVAL_BATCH_SIZE)
from ..data.preprocess import Preprocess
from ..evaluation.classification import evaluate_classifier


@dataclass(frozen=True)
class EvalRequest:
    """What a tool knows when it asks a task for an evaluator.

    checkpoint/meta: the first checkpoint of the table and its metadata (data layout, image size);
    data: a dataset root given on the command line (None: the one the checkpoint was trained on).
    """

    checkpoint: Path
    meta: dict
    data: Path | None = None
    image_size: int | None = None
    batch_size: int = BATCH_SIZE
    workers: int = 0
    device: str = "cpu"
    progress: bool = True


@runtime_checkable
class Evaluator(Protocol):
    """metric_name: the headline key of ``evaluate``'s dict (higher is better).
    preprocess: the uint8 -> float step shared by evaluation and calibration."""

    metric_name: str
    preprocess: Preprocess

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Score ``model`` (torch or an ORT-backed module) on the evaluation split."""
        ...

    def calibration_loader(self) -> Iterable:
        """Loader of calibration batches (uint8 images first), from the training split."""
        ...


class ClassificationEvaluator:
    """Top-1/top-5 on a loader of (uint8 (N, 3, H, W), labels (N,))."""

    metric_name = "top1"

    def __init__(self, val_loader: Iterable, calib_loader: Iterable, preprocess: Preprocess,
                 device: str | torch.device = "cpu", progress: bool = True):
        self.val_loader = val_loader
        self.calib_loader = calib_loader
        self.preprocess = preprocess
        self.device = device
        self.progress = progress

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return evaluate_classifier(model, self.val_loader, self.preprocess, self.device, topk=(1, 5),
                                   progress=self.progress)

    def calibration_loader(self) -> Iterable:
        return self.calib_loader


class DetectionEvaluator:
    """COCO mAP (percent, like the paper's tables) of a detector on a loader of (uint8 images, targets, infos).

    The one place a detector is scored: training runs, ``tools/eval_det.py`` and the INT8 tools, all in percent
    (:meth:`evaluate`); :meth:`evaluate_fractions` gives pycocotools' 0..1 numbers it is computed from.
    """

    metric_name = "AP"

    def __init__(self, val_loader: Iterable, calib_loader: Iterable | None, preprocess: Preprocess,
                 strides: tuple[int, ...],
                 reg_max: int, device: str | torch.device = "cpu", settings=None, progress: bool = True):
        from ..evaluation.coco import COCOEvaluator
        from ..evaluation.detection import DetEvalSettings

        self.val_loader, self.calib_loader, self.preprocess = val_loader, calib_loader, preprocess
        self.strides, self.reg_max, self.device, self.progress = tuple(strides), reg_max, device, progress
        self.settings = settings or DetEvalSettings()
        self.coco = COCOEvaluator(val_loader.dataset.ann_file, val_loader.dataset.category_ids)

    def evaluate_fractions(self, model: nn.Module) -> dict[str, float]:
        """pycocotools' numbers as they are (AP, AP50, ... in 0..1)."""
        from ..evaluation.detection import evaluate_detector

        return evaluate_detector(model, self.val_loader, self.coco, self.preprocess, self.strides, self.reg_max,
                                 self.device, self.settings, progress=self.progress)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return {k: 100.0 * v for k, v in self.evaluate_fractions(model).items()}

    def calibration_loader(self) -> Iterable:
        if self.calib_loader is None:
            raise ValueError("this detection evaluator was built without a calibration loader")
        return self.calib_loader
