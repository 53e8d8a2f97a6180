"""Classification task: typed config, builders, the train step, and ``train()`` (the logic of tools/train_cls.py).

``train(cfg, work_dir)`` trains a zoo classifier on an ImageFolder root (or the digits /
synthetic-shapes exports), evaluates top-1/top-5 every ``train.eval_interval`` epochs, writes
``last.pt`` / ``best.pt`` every epoch, then fuses the evaluated (EMA or final) model, evaluates
the deploy form too and writes ``deploy.pt`` and ``results.json``.

Batch size and learning rate are *global*: ``data.batch_size`` is split over the torchrun
processes, so one config gives the same recipe on 1 or N GPUs (no hidden lr scaling).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from ..config import ConfigError, config_to_dict, require
from ..data.digits import export_digits
from ..data.imagefolder import cls_transforms, make_cls_loader
from ..data.preprocess import IMAGENET, Preprocess
from ..data.synthetic.imagefolder import generate_imagefolder
from ..deploy.equivalence import max_abs_diff
from ..engine.checkpoint import load_hs_model
from ..engine.distributed import DistInfo, barrier, unwrap_model
from ..engine.hooks import CheckpointHook, EMAHook, EvalHook, LoggerHook, WarmupCosineLRHook
from ..engine.logging import MetricLogger
from ..engine.trainer import Trainer, accumulate_steps
from ..evaluation.classification import evaluate_classifier
from ..evaluation.evaluators import ClassificationEvaluator, EvalRequest
from ..fileio import write_json_atomic
from ..layers import BLOCK_TYPES
from ..models.classifier import build_classifier
from ..models.from_meta import REQUIRED_KEYS, classifier_from_meta
from ..models.zoo import CLASSIFIER_ARCHS
from .base import TaskRow, recorded_preprocess, require_meta, require_size
from .common import RepOptConfig, TrainConfig, finalize_run, run_training
from ..optim import build_repopt_sgd, custom_l2_penalty, param_groups

log = logging.getLogger(__name__)


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


# --- builders ------------------------------------------------------------------------------------


def prepare_data(cfg: DataConfig, num_classes: int) -> Path:
    """The ImageFolder root for ``cfg``: export digits / generate shapes there first if needed."""
    root = Path(cfg.root)
    if cfg.kind == "digits":
        export_digits(root, size=cfg.image_size, seed=cfg.seed)
    elif cfg.kind == "synthetic":
        generate_imagefolder(root, num_classes, cfg.synthetic_per_class_train, cfg.synthetic_per_class_val,
                             size=cfg.image_size, seed=cfg.seed)
    elif not (root / "train").is_dir() or not (root / "val").is_dir():
        raise FileNotFoundError(f"data.root {root}: expected an ImageFolder root with train/ and val/ subfolders")
    return root


def build_loaders(cfg: ClsConfig, root: Path, dist: DistInfo, device: torch.device):
    """(train loader with the per-process batch, validation loader) yielding uint8 images."""
    if cfg.data.batch_size % dist.world_size:
        raise ConfigError(f"data.batch_size {cfg.data.batch_size} is not divisible by the {dist.world_size} "
                          "processes (it is the global batch)")
    pin = device.type == "cuda"
    train_loader = make_cls_loader(root, cfg.data.image_size, cfg.data.batch_size // dist.world_size, train=True,
                                   workers=cfg.data.workers, distributed=dist.distributed, seed=cfg.train.seed,
                                   pin_memory=pin)
    val_loader = make_cls_loader(root, cfg.data.image_size, cfg.data.batch_size, train=False,
                                 workers=cfg.data.workers, pin_memory=pin)
    classes = train_loader.dataset.classes
    if len(classes) != cfg.model.num_classes:
        raise ConfigError(f"model.num_classes is {cfg.model.num_classes} but {root / 'train'} has "
                          f"{len(classes)} class folders")
    return train_loader, val_loader


def build_optimizer(cfg: ClsConfig, model: nn.Module, reinit: bool = True) -> torch.optim.Optimizer:
    """SGD over ``qarep_dense.optim.param_groups`` or, with ``repopt.hs_checkpoint``, the RepOptimizer.

    ``reinit`` (RepOpt only): re-initialise the target from the scales; False on resume, where the
    checkpoint's weights and optimizer state are loaded next.
    """
    o = cfg.optim
    if cfg.repopt.hs_checkpoint:
        hs_model = load_hs_model(cfg.repopt.hs_checkpoint, "cls", arch=cfg.model.arch)
        device = next(model.parameters()).device
        return build_repopt_sgd(model, hs_model.to(device), o.lr, o.momentum, o.weight_decay, o.nesterov,
                                reinit=reinit)
    groups = param_groups(model, o.weight_decay, o.l2, o.identity_decay)
    return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum,
                           nesterov=o.nesterov, weight_decay=0.0)  # each group carries its own decay


def make_step_fn(cfg: ClsConfig, preprocess: Preprocess, device: torch.device):
    """``step(model, (uint8 images (N,3,H,W), labels (N,))) -> (loss, {"ce", ["l2"]})``.

    With l2 "custom"/"eq5" RepVGG's penalty is added to the loss (those kernels get no plain decay).
    """
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.optim.label_smoothing)
    l2, wd = cfg.optim.l2, cfg.optim.weight_decay

    def step(model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        images, labels = batch
        logits = model(preprocess(images.to(device, non_blocking=True)))
        ce = criterion(logits.float(), labels.to(device, non_blocking=True))
        if l2 == "normal":
            return ce, {"ce": ce.detach()}
        penalty = custom_l2_penalty(unwrap_model(model), wd, denominator=(l2 == "custom"))
        return ce + penalty, {"ce": ce.detach(), "l2": penalty.detach()}

    return step


# --- training ------------------------------------------------------------------------------------


def build_trainer(cfg: ClsConfig, work_dir: Path, dist: DistInfo, device: torch.device, resume: bool):
    """Everything ``train`` needs: (trainer, evaluate(model) -> metrics, validation loader)."""
    root = prepare_data(cfg.data, cfg.model.num_classes) if dist.is_main else Path(cfg.data.root)
    barrier()  # other ranks wait for rank 0's export
    train_loader, val_loader = build_loaders(cfg, root, dist, device)
    model = build_classifier(cfg.model.arch, cfg.model.block, cfg.model.num_classes,
                             stem_stride=cfg.model.stem_stride).to(device)
    optimizer = build_optimizer(cfg, model, reinit=not resume)

    def evaluate(m: nn.Module) -> dict:
        return evaluate_classifier(m, val_loader, IMAGENET, device, topk=(1, 5), progress=cfg.train.progress)

    t = cfg.train
    hooks = [WarmupCosineLRHook(cfg.optim.warmup_epochs, cfg.optim.lrf), EvalHook(evaluate, t.eval_interval),
             LoggerHook(t.log_interval), CheckpointHook(work_dir, metric="top1", keep_every=t.keep_every)]
    if t.ema:
        hooks.append(EMAHook(t.ema_decay, t.ema_tau))
    per_process = cfg.data.batch_size // dist.world_size
    trainer = Trainer(model, optimizer, train_loader, make_step_fn(cfg, IMAGENET, device),
                      epochs=cfg.optim.epochs, hooks=hooks, device=device, amp=t.amp,
                      accumulate=accumulate_steps(cfg.optim.nominal_batch, per_process, dist.world_size),
                      grad_clip=cfg.optim.grad_clip, dist=dist, seed=t.seed, meta=cls_meta(cfg),
                      logger=MetricLogger(work_dir, enabled=dist.is_main, tensorboard=t.tensorboard),
                      progress=t.progress)
    return trainer, evaluate, val_loader


@torch.no_grad()
def max_logit_diff(a: nn.Module, b: nn.Module, loader, preprocess: Preprocess, device: torch.device,
                   max_batches: int = 20) -> float:
    """Largest |logit_a - logit_b| over the first ``max_batches`` batches of ``loader``."""
    worst = 0.0
    for i, (images, _) in enumerate(loader):
        if i >= max_batches:
            break
        worst = max(worst, max_abs_diff(a, b, preprocess(images.to(device))))
    return worst


def finalize(trainer: Trainer, evaluate, val_loader, work_dir: Path) -> dict:
    """Fuse, evaluate both forms, write ``deploy.pt`` and ``results.json`` (+ the top-1 gap and logit diff)."""
    deploy, train_form, results = finalize_run(trainer, evaluate, work_dir, "top1",
                                               {"task": "cls", "arch": trainer.meta["arch"],
                                                "block": trainer.meta["block"]})
    diff = max_logit_diff(trainer.eval_model, deploy, val_loader, IMAGENET, trainer.device)
    results.update(top1_gap=float(train_form["top1"]) - float(results["deploy"]["top1"]), max_logit_diff=diff)
    write_json_atomic(work_dir / "results.json", results)
    log.info("train-form top1 %.2f | deploy top1 %.2f | max logit diff %.3g -> %s", train_form["top1"],
             results["deploy"]["top1"], diff, work_dir / "results.json")
    return results


def train(cfg: ClsConfig, work_dir: str | os.PathLike, resume: bool = False,
          device: str | None = None, overwrite: bool = False) -> dict:
    """Train, evaluate, fuse, evaluate the deploy model; return the results dict (``{}`` on ranks > 0).

    Works under ``torchrun`` (DDP, one process per GPU, or Gloo on CPU) and as a plain call.
    ``device`` overrides ``cfg.train.device``. A work dir holding an earlier run's checkpoints is refused
    unless ``resume`` (continue it) or ``overwrite`` (start over).
    """
    work_dir = Path(work_dir)

    def build(dist: DistInfo, dev: torch.device):
        trainer, evaluate, val_loader = build_trainer(cfg, work_dir, dist, dev, resume)
        return trainer, lambda t: finalize(t, evaluate, val_loader, work_dir)

    return run_training(cfg, work_dir, resume, device, build, ("task", "arch", "block", "num_classes", "stem_stride"),
                        overwrite=overwrite)


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


TASK = TaskRow("cls", "classification", "top1", build_model_from_meta, make_evaluator, converted_meta,
               foreign_sources=("timm", "repvgg"), qat_loss=qat_loss, selection_score="kl", metric_counts_images=True,
               preprocess=preprocess_of, prepare_image=prepare_image, class_names=class_names, prediction="labels")
