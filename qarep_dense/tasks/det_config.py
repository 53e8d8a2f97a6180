"""Detection task, its config: the typed TOML schema of tools/train_det.py and the metadata a run records
in its checkpoints (:mod:`~qarep_dense.tasks.detection` is the task's one import path).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal


from ..config import config_to_dict, require
from ..data.coco import DetAugment
from ..data.preprocess import DETECTION
from ..evaluation.detection import DetEvalSettings
from ..layers import BLOCK_TYPES
from ..models.zoo import CLASSIFIER_ARCHS, DETECTOR_SCALES
from .common import RepOptConfig, TrainConfig



# --- config --------------------------------------------------------------------------------------


@dataclass
class DetModelConfig:
    scale: str = "s"                # a DETECTOR_SCALES row: n, t, s, test
    block: str = "qarepvgg"         # a BLOCK_TYPES row (repvgg, qarepvgg, qarepvgg_v2, repopt, hs, ...)
    num_classes: int = 80
    use_dfl: bool = False           # YOLOv6 v2.0 trained n/t/s without DFL
    reg_max: int = 16
    head_act: str = "silu"
    bn_eps: float = 1e-3            # YOLOv6's BatchNorm settings (its initialize_weights), on every BN
    bn_momentum: float = 0.03       # (with backbone "trunk": on the neck and head; the trunk keeps the classifier's)
    backbone: Literal["efficientrep", "trunk"] = "efficientrep"  # trunk: a classifier's stages (pretrainable)
    arch: str = "A0h"               # backbone "trunk": the CLASSIFIER_ARCHS row
    stem_stride: int = 2            # backbone "trunk": the classifier's (1 for the digits classifiers)
    backbone_init: str = ""         # backbone "trunk": a train-form classification checkpoint to start from


@dataclass
class DetDataConfig:
    kind: Literal["coco", "synthetic", "digits_canvas"] = "coco"
    root: str = "data/coco"         # COCO 2017 layout; the synthetic export is written here if absent
    train_images: str = "images/train2017"  # relative to root
    train_ann: str = "annotations/instances_train2017.json"
    val_images: str = "images/val2017"
    val_ann: str = "annotations/instances_val2017.json"
    image_size: int = 640
    batch_size: int = 32            # global
    workers: int = 8
    augment: DetAugment = field(default_factory=DetAugment)
    synthetic_train: int = 400      # synthetic export sizes (kind = "synthetic")
    synthetic_val: int = 100
    synthetic_image_size: int = 256
    synthetic_classes: int = 6
    canvas_size: int = 64           # digit canvases (kind = "digits_canvas"): side, digit sizes, passes (train, val)
    canvas_scales: tuple[int, ...] = (16, 24, 32)
    canvas_passes: tuple[int, int] = (4, 2)
    seed: int = 0                   # synthetic / canvas layout seed; canvases split the digits as data.seed 0 does


@dataclass
class DetOptimConfig:
    lr0: float | None = None        # None: the scale's own lr0 (DETECTOR_SCALES: n 0.02, t/s 0.01)
    lrf: float = 0.01
    momentum: float = 0.937
    weight_decay: float = 5e-4
    nesterov: bool = True
    epochs: int = 300
    warmup_epochs: float = 3.0
    warmup_min_iters: int = 1000
    warmup_momentum: float = 0.8
    warmup_bias_lr: float = 0.1
    nominal_batch: int = 64
    grad_clip: float | None = None


@dataclass
class DetLossConfig:
    iou_type: str = ""              # "" = the scale's default (siou for n/t, giou for s)
    cls_weight: float = 1.0
    iou_weight: float = 2.5
    dfl_weight: float = 0.5
    atss_epochs: int = 4            # ATSS assigner for the first epochs, then task-aligned
    atss_topk: int = 9
    tal_topk: int = 13
    tal_alpha: float = 1.0
    tal_beta: float = 6.0


@dataclass
class DetTrainConfig(TrainConfig):
    eval_interval: int = 10
    ema: bool = True                # YOLOv6 evaluates and fuses the EMA model
    mosaic_off_epochs: int = 15     # mosaic off for the last N epochs


DetRepOptConfig = RepOptConfig  # one RepOpt section for every task


@dataclass
class DetConfig:
    model: DetModelConfig = field(default_factory=DetModelConfig)
    data: DetDataConfig = field(default_factory=DetDataConfig)
    optim: DetOptimConfig = field(default_factory=DetOptimConfig)
    loss: DetLossConfig = field(default_factory=DetLossConfig)
    eval: DetEvalSettings = field(default_factory=DetEvalSettings)
    train: DetTrainConfig = field(default_factory=DetTrainConfig)
    repopt: DetRepOptConfig = field(default_factory=DetRepOptConfig)

    def __post_init__(self) -> None:
        m, d, o = self.model, self.data, self.optim
        require([
            (m.scale in DETECTOR_SCALES, f"model.scale {m.scale!r} is not one of {sorted(DETECTOR_SCALES)}"),
            (m.block in BLOCK_TYPES, f"model.block {m.block!r} is not one of {sorted(BLOCK_TYPES)}"),
            (m.num_classes >= 1, f"model.num_classes must be >= 1, got {m.num_classes}"),
            (d.image_size % 32 == 0, f"data.image_size must be a multiple of 32, got {d.image_size}"),
            (d.batch_size >= 1 and o.epochs >= 1, "data.batch_size and optim.epochs must be >= 1"),
            (o.lr0 is None or o.lr0 > 0, f"optim.lr0 must be > 0 (or unset: the scale's lr0), got {o.lr0}"),
            (m.bn_eps > 0 and 0 < m.bn_momentum <= 1,
             f"model.bn_eps must be > 0 and model.bn_momentum in (0, 1]; got {m.bn_eps}, {m.bn_momentum}"),
            (self.loss.iou_type in ("", "giou", "siou", "ciou"), f"loss.iou_type {self.loss.iou_type!r} unknown"),
            (d.kind != "digits_canvas" or m.num_classes == 10, "data.kind 'digits_canvas' needs model.num_classes = 10"),
            (m.backbone == "trunk" or not m.backbone_init,
             f"model.backbone_init is set but model.backbone is {m.backbone!r}; a classifier initialises a 'trunk'"),
            (m.arch in CLASSIFIER_ARCHS, f"model.arch {m.arch!r} is not one of {sorted(CLASSIFIER_ARCHS)}"),
            (m.stem_stride in (1, 2), f"model.stem_stride must be 1 or 2, got {m.stem_stride}"),
            (not self.repopt.hs_checkpoint or m.block == "repopt",
             f"repopt.hs_checkpoint is set but model.block is {m.block!r}; RepOptimizer trains block 'repopt'"),
        ])


def det_meta(cfg: DetConfig, category_ids: list[int], names: list[str]) -> dict:
    """Checkpoint metadata of a train-form detector (read back by :func:`build_model_from_meta`)."""
    m = cfg.model
    return {"task": "det", "scale": m.scale, "block": m.block, "num_classes": m.num_classes,
            "use_dfl": m.use_dfl, "reg_max": m.reg_max, "head_act": m.head_act, "bn_eps": m.bn_eps,
            "bn_momentum": m.bn_momentum, "fused": False, "fold_bn": True, **backbone_meta(m),
            "image_size": cfg.data.image_size, "preprocess": DETECTION.as_dict(), "category_ids": category_ids,
            "names": names, "config": config_to_dict(cfg)}


def backbone_meta(m: DetModelConfig) -> dict:
    """The backbone's part of the metadata: {"backbone"} plus, for a trunk, its arch and stem stride."""
    return {"backbone": m.backbone, **({"arch": m.arch, "stem_stride": m.stem_stride} if m.backbone == "trunk" else {})}
