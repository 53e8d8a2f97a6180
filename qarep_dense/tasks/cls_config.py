"""Classification task, its config: the typed TOML schema of tools/train_cls.py and the metadata a run
records in its checkpoints (:mod:`~qarep_dense.tasks.classification` is the task's one import path).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal


from ..config import config_to_dict, require
from ..data.preprocess import IMAGENET
from ..layers import BLOCK_TYPES
from ..models.zoo import CLASSIFIER_ARCHS
from .common import RepOptConfig, TrainConfig



# --- config --------------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    arch: str = "A0"                # a CLASSIFIER_ARCHS row
    block: str = "qarepvgg"         # a BLOCK_TYPES row
    num_classes: int = 1000
    stem_stride: int = 2            # 1 for 32x32 inputs


@dataclass
class DataConfig:
    kind: Literal["imagefolder", "digits", "synthetic"] = "imagefolder"
    root: str = "data/imagenet"     # holds train/ and val/; digits/synthetic are written here if absent
    image_size: int = 224
    batch_size: int = 256           # global: split over the torchrun processes
    workers: int = 4
    seed: int = 0                   # split / generation seed of the digits and synthetic exports
    synthetic_per_class_train: int = 100
    synthetic_per_class_val: int = 20


@dataclass
class OptimConfig:
    lr: float = 0.1                 # for the global batch
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False
    l2: Literal["normal", "custom", "eq5"] = "normal"
    identity_decay: bool | None = None  # decay identity-BN gammas (RepVGG's recipe); None: on iff l2 != "normal"
    epochs: int = 120
    warmup_epochs: float = 5.0
    lrf: float = 0.0                # cosine ends at lr * lrf
    label_smoothing: float = 0.0
    nominal_batch: int | None = None  # accumulate gradients up to this batch (None: no accumulation)
    grad_clip: float | None = None


@dataclass
class ClsConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    repopt: RepOptConfig = field(default_factory=RepOptConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        m, d, o, t = self.model, self.data, self.optim, self.train
        require([
            (m.arch in CLASSIFIER_ARCHS, f"model.arch {m.arch!r} is not one of {sorted(CLASSIFIER_ARCHS)}"),
            (m.block in BLOCK_TYPES, f"model.block {m.block!r} is not one of {sorted(BLOCK_TYPES)}"),
            (m.num_classes >= 2, f"model.num_classes must be >= 2, got {m.num_classes}"),
            (m.stem_stride in (1, 2), f"model.stem_stride must be 1 or 2, got {m.stem_stride}"),
            (d.batch_size >= 1 and d.image_size >= 8, "data.batch_size must be >= 1 and data.image_size >= 8"),
            (o.epochs >= 1 and o.lr > 0, f"optim.epochs must be >= 1 and optim.lr > 0; got {o.epochs}, {o.lr}"),
            (t.eval_interval >= 1, f"train.eval_interval must be >= 1, got {t.eval_interval}"),
            (d.kind != "digits" or m.num_classes == 10, "data.kind 'digits' needs model.num_classes = 10"),
            (d.kind != "synthetic" or 2 <= m.num_classes <= 6,
             "data.kind 'synthetic' has one class per shape: model.num_classes must be 2..6"),
            (not self.repopt.hs_checkpoint or m.block == "repopt",
             f"repopt.hs_checkpoint is set but model.block is {m.block!r}; RepOptimizer trains block 'repopt'"),
        ])


def cls_meta(cfg: ClsConfig) -> dict:
    """Checkpoint metadata of a train-form classifier (read back by :func:`build_model_from_meta`)."""
    return {"task": "cls", "arch": cfg.model.arch, "block": cfg.model.block, "num_classes": cfg.model.num_classes,
            "stem_stride": cfg.model.stem_stride, "fused": False, "fold_bn": True,
            "image_size": cfg.data.image_size, "preprocess": IMAGENET.as_dict(), "config": config_to_dict(cfg)}


