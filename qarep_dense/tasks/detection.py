"""Detection task, its row: rebuild, evaluate, convert, prepare images, QAT loss (the registry's entry
points). The config lives in :mod:`.det_config`, the training recipe (``train``) in :mod:`.det_recipe`;
both are re-exported here, the task's one import path.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..choices import EVAL_BATCH_SIZE
from ..config import ConfigError, config_to_dict
from ..data.det_loader import make_det_loader
from ..data.preprocess import DETECTION, Preprocess
from ..data.transforms import letterbox
from ..evaluation.evaluators import BATCH_SIZE, DetectionEvaluator, EvalRequest
from ..models.from_meta import REQUIRED_KEYS, detector_from_meta
from .base import TaskRow, recorded_preprocess, require_meta, require_size
from .det_config import (DetModelConfig, DetDataConfig, DetOptimConfig, DetLossConfig, DetTrainConfig,
                         DetRepOptConfig, DetConfig, det_meta)  # noqa: F401  (one import path for the task)
from .det_recipe import (data_paths, build_model, build_det_loaders, build_loss, base_lr, build_det_optimizer,
                         make_det_step,
                         make_det_evaluator, build_det_trainer, finalize, train)  # noqa: F401


# --- saved checkpoints (the task's row) ---------------------------------------------------------


def loaders_from_meta(meta: dict, source: str, data_root: str | os.PathLike | None = None,
                      image_size: int | None = None, batch_size: int = BATCH_SIZE, workers: int = 0):
    """(config, val loader, calibration loader) for a detector checkpoint written by ``train``.

    The data layout comes from the checkpoint's training config (``data_root`` replaces its root);
    the calibration loader reads shuffled *train* images with the eval letterbox, so calibration
    sees exactly the preprocessing evaluation sees.
    """
    from ..config import config_from_dict
    from ..engine.checkpoint import CheckpointError

    if meta.get("task") != "det" or "config" not in meta:
        raise CheckpointError(f"{source}: not a detector checkpoint written by tools/train_det.py")
    cfg = config_from_dict(meta["config"], DetConfig, source=f"{source} (training config)")
    if data_root is not None:  # data given on a command line is read as it is: never generated into
        if not Path(data_root).is_dir():
            raise FileNotFoundError(f"--data {data_root}: folder not found")
        cfg.data.root = str(data_root)
    paths = data_paths(cfg.data, generate=data_root is None)
    size = image_size or meta["image_size"]
    val = make_det_loader(paths["val_images"], paths["val_ann"], size, batch_size, train=False, workers=workers)
    calib = make_det_loader(paths["train_images"], paths["train_ann"], size, batch_size, train=False, shuffle=True,
                            workers=workers)
    return cfg, val, calib


def build_model_from_meta(meta: dict, source: str = "checkpoint") -> nn.Module:
    """The train-form detector a checkpoint's metadata describes (``models.from_meta.detector_from_meta``)."""
    require_meta(meta, REQUIRED_KEYS["det"], source)
    if meta.get("backbone", "efficientrep") == "trunk":
        require_meta(meta, ("arch", "stem_stride"), source)
    return detector_from_meta(meta)


def make_evaluator(request: EvalRequest) -> DetectionEvaluator:
    """COCO mAP (percent) on the val split of the checkpoint's training data (or ``request.data``, same layout)."""
    cfg, val, calib = loaders_from_meta(request.meta, str(request.checkpoint), request.data, request.image_size,
                                        request.batch_size, request.workers)
    model = build_model_from_meta(request.meta, str(request.checkpoint))
    return DetectionEvaluator(val, calib, preprocess_of(request.meta), model.strides, model.reg_max,
                              request.device, cfg.eval, progress=request.progress)


def converted_meta(meta: dict, image_size: int | None = None, data_config: str | os.PathLike | None = None) -> dict:
    """A converted detector's metadata with a training config whose data section the evaluators read.

    Default: the COCO 2017 recipe (``--data COCO_ROOT``) at 640; ``data_config``: a detection TOML whose
    data / eval sections are kept (its model section is replaced). Category ids and names: COCO's 80
    when the detector has 80 classes, else 1..N / class0..
    """
    from dataclasses import replace

    from ..config import load_config
    from ..convert import COCO80_IDS, COCO80_NAMES

    size = image_size or 640
    if size % 32:
        raise ConfigError(f"--image-size must be a multiple of 32 for a detector, got {size}")
    model_cfg = DetModelConfig(meta["scale"], meta["block"], meta["num_classes"], meta["use_dfl"], meta["reg_max"],
                               meta["head_act"], meta["bn_eps"], meta["bn_momentum"])
    base = load_config(data_config, DetConfig) if data_config else DetConfig()
    # replace() re-runs the config's cross-key checks with the converted model
    cfg = replace(base, model=model_cfg, data=replace(base.data, image_size=size))
    n = meta["num_classes"]
    coco = n == len(COCO80_IDS)
    return {**meta, "image_size": size, "preprocess": DETECTION.as_dict(),
            "category_ids": COCO80_IDS if coco else list(range(1, n + 1)),
            "names": COCO80_NAMES if coco else [f"class{i}" for i in range(n)], "config": config_to_dict(cfg)}


def qat_loss(meta: dict, model: nn.Module, preprocess: Preprocess, device: str):
    """The detector's training loss (the checkpoint's loss settings, task-aligned assigner: the one training
    ends with) of one (uint8 images, targets, infos) batch: the QAT loss of a detector."""
    from ..config import config_from_dict

    require_meta(meta, ("config",), "checkpoint")  # its loss settings
    cfg = config_from_dict(meta["config"], DetConfig, source="checkpoint metadata (training config)")
    loss_fn = build_loss(cfg, model)
    loss_fn.set_assigner("tal")
    step = make_det_step(model, loss_fn, torch.device(device))
    return lambda m, batch: step(m, batch)[0]


def preprocess_of(meta: dict) -> Preprocess:
    """The checkpoint's uint8 -> float step; YOLOv6's x / 255 when it records none."""
    return recorded_preprocess(meta, DETECTION)


def prepare_image(meta: dict, size: int | None, source: str = "checkpoint"):
    """The evaluation's letterbox of one RGB image (H, W, 3) -> uint8 (3, S, S), with the ratio and padding that
    map boxes back onto the image."""
    size = require_size(size, source)

    def prepare(path: Path, img: np.ndarray):
        boxed, ratio, pad = letterbox(img, size)
        return torch.from_numpy(np.ascontiguousarray(boxed.transpose(2, 0, 1))), {"ratio": ratio, "pad": pad}
    return prepare


TASK = TaskRow("det", "detection", "AP", build_model_from_meta, make_evaluator, qat_loss,
               converted_meta=converted_meta, foreign_sources=("yolov6",), preprocess=preprocess_of,
               prepare_image=prepare_image, prediction="boxes", batch_size=EVAL_BATCH_SIZE["det"])
