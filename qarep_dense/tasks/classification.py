"""Classification task, its row: rebuild, evaluate, convert, prepare images, QAT loss (the registry's entry
points). The config lives in :mod:`.cls_config`, the training recipe (``train``) in :mod:`.cls_recipe`;
both are re-exported here, the task's one import path.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..config import ConfigError, config_to_dict
from ..data.imagefolder import cls_transforms, make_cls_loader
from ..data.preprocess import IMAGENET, Preprocess
from ..evaluation.evaluators import ClassificationEvaluator, EvalRequest
from ..models.from_meta import REQUIRED_KEYS, classifier_from_meta
from .base import TaskRow, recorded_preprocess, require_meta, require_size
from .cls_config import ClsConfig, DataConfig, ModelConfig, OptimConfig, cls_meta  # noqa: F401  (one import path)
from .cls_recipe import (prepare_data, build_loaders, build_optimizer, make_step_fn, build_trainer, max_logit_diff,
                         finalize, train)  # noqa: F401


# --- saved checkpoints (the task's row) ---------------------------------------------------------


def build_model_from_meta(meta: dict, source: str = "checkpoint") -> nn.Module:
    """The train-form classifier a checkpoint's metadata describes."""
    require_meta(meta, REQUIRED_KEYS["cls"], source)
    return classifier_from_meta(meta)


def converted_meta(meta: dict, image_size: int | None = None, data_config: str | os.PathLike | None = None) -> dict:
    """A converted classifier's metadata with what the tools read: input size (default 224), ImageNet
    preprocessing and a training config (``data_config`` is for detectors and must be None here)."""
    if data_config is not None:
        raise ConfigError("--data-config is for detectors; a classifier's data is given to the tools with --data")
    size = image_size or 224
    cfg = ClsConfig(model=ModelConfig(meta["arch"], meta["block"], meta["num_classes"], meta["stem_stride"]),
                    data=DataConfig(image_size=size))
    return {**meta, "image_size": size, "preprocess": IMAGENET.as_dict(), "config": config_to_dict(cfg)}


def preprocess_of(meta: dict) -> Preprocess:
    """The checkpoint's uint8 -> float step; ImageNet mean/std when it records none, since every classifier of
    this project is trained with it (``make_step_fn(cfg, IMAGENET, ...)``)."""
    return recorded_preprocess(meta, IMAGENET)


def prepare_image(meta: dict, size: int | None, source: str = "checkpoint"):
    """The evaluation's resize / centre crop of one RGB image (H, W, 3) -> uint8 (3, S, S), no geometry."""
    transform = cls_transforms(require_size(size, source), train=False)
    return lambda path, img: (transform(torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))), {})


def class_names(meta: dict) -> list[str] | None:
    """The class folders of the training data the checkpoint's config names, when they are still there."""
    root = Path(meta.get("config", {}).get("data", {}).get("root", "")) / "train"
    if not root.is_dir():
        return meta.get("names") or meta.get("class_names")
    return sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def validation_loader(data: str | os.PathLike, image_size: int, batch_size: int, workers: int = 0):
    """The evaluation's loader over ``data``/val (uint8 images with the eval resize / crop, labels)."""
    return make_cls_loader(data, image_size, batch_size, train=False, workers=workers)


def make_evaluator(request: EvalRequest) -> ClassificationEvaluator:
    """Top-1 on ``request.data``/val, calibration on shuffled train images with the *eval* transforms."""
    from ..engine.checkpoint import CheckpointError

    if request.data is None:
        raise ValueError("classification needs --data (an ImageFolder root with train/ and val/)")
    meta = request.meta
    size = request.image_size or meta.get("image_size")
    if not size:
        raise CheckpointError(f"{request.checkpoint}: no image_size in the checkpoint; pass --image-size")
    val = validation_loader(request.data, size, request.batch_size, request.workers)
    calib = make_cls_loader(request.data, size, request.batch_size, train=False, workers=request.workers,
                            split="train", shuffle=True)
    classes = len(val.dataset.classes)
    if classes != meta["num_classes"]:
        raise CheckpointError(f"{request.checkpoint}: model has {meta['num_classes']} classes but {request.data} "
                              f"has {classes}")
    return ClassificationEvaluator(val, calib, preprocess_of(meta), request.device, progress=request.progress)


def qat_loss(meta: dict, model: nn.Module, preprocess: Preprocess, device: str):
    """Cross-entropy of one (uint8 images, labels) batch: the QAT loss of a classifier."""
    from ..quant.qat import supervised_loss

    return supervised_loss(nn.functional.cross_entropy, preprocess, device)


TASK = TaskRow("cls", "classification", "top1", build_model_from_meta, make_evaluator, qat_loss,
               converted_meta=converted_meta, foreign_sources=("timm", "repvgg"), selection_score="kl",
               metric_counts_images=True, preprocess=preprocess_of, prepare_image=prepare_image, class_names=class_names,
               prediction="labels")
