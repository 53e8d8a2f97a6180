"""Classification task, its recipe: builders, the train step, and ``train()`` (the logic of tools/train_cls.py).

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
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import ConfigError
from ..data.digits import export_digits
from ..data.imagefolder import make_cls_loader
from ..data.preprocess import IMAGENET, Preprocess
from ..data.synthetic.imagefolder import generate_imagefolder
from ..deploy.equivalence import max_abs_diff
from ..engine.checkpoint import load_hs_model
from ..engine.distributed import DistInfo, barrier, unwrap_model
from ..engine.hooks import CheckpointHook, EMAHook, EvalHook, LoggerHook, WarmupCosineLRHook
from ..engine.logging import MetricLogger
from ..engine.trainer import Trainer, accumulate_steps
from ..evaluation.classification import evaluate_classifier
from ..fileio import write_json_atomic
from ..models.classifier import build_classifier
from .common import finalize_run, run_training
from ..optim import build_repopt_sgd, custom_l2_penalty, param_groups
from .cls_config import DataConfig, ClsConfig, cls_meta

log = logging.getLogger(__name__)


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
                      progress=t.progress, channels_last=t.channels_last, compile=t.compile)
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


