"""Detection task, its recipe: YOLOv6-style training of a rep-block detector on COCO-format data.

``train(cfg, work_dir)`` builds the detector, the COCO loaders (real COCO 2017 or the synthetic
shapes export), the loss with its ATSS -> task-aligned assigner switch, and the hook set of the
YOLOv6 recipe (warm-up with momentum and bias-lr ramps, cosine, EMA, mosaic off for the last
epochs, eval + best-by-mAP checkpoints). At the end the EMA model is fused and evaluated too.

Batch size is *global* (split over torchrun processes); gradients accumulate to
``optim.nominal_batch`` and weight decay is scaled by batch*accumulate/nominal_batch, as in YOLOv6.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import ConfigError
from ..data.det_loader import make_det_loader
from ..data.preprocess import DETECTION
from ..data.digits_canvas import CanvasSpec, digits_canvas_paths, generate_digits_canvas
from ..data.synthetic.coco import generate_coco, synthetic_coco_paths
from ..engine.checkpoint import load_hs_model, load_pretrained_trunk
from ..engine.distributed import DistInfo, barrier
from ..engine.hooks import CheckpointHook, EMAHook, EpochCallbackHook, EvalHook, LoggerHook, YoloV6LRHook
from ..engine.logging import MetricLogger
from ..engine.trainer import Trainer, accumulate_steps
from ..evaluation.evaluators import DetectionEvaluator
from ..losses import DetectionLoss
from ..models.detector import TORCH_BN_EPS, TORCH_BN_MOMENTUM, Detector, build_detector, build_trunk_detector
from ..models.zoo import detector_scale
from ..ops import make_anchor_points
from .common import finalize_run, run_training
from .det_config import DetDataConfig, DetConfig, DetModelConfig, det_meta

log = logging.getLogger(__name__)


# --- builders ------------------------------------------------------------------------------------


def data_paths(cfg: DetDataConfig, generate: bool = True) -> dict[str, Path]:
    """{"train_images", "train_ann", "val_images", "val_ann"}; generates the synthetic export if asked.

    ``generate=False``: a synthetic config reads an existing export's layout and never writes.
    """
    root = Path(cfg.root)
    if cfg.kind == "synthetic" and not generate:
        return synthetic_coco_paths(root)
    if cfg.kind == "digits_canvas":
        spec = CanvasSpec(cfg.canvas_size, tuple(cfg.canvas_scales), passes=tuple(cfg.canvas_passes), seed=cfg.seed)
        return generate_digits_canvas(root, spec) if generate else existing_paths(digits_canvas_paths(root), root)
    if cfg.kind == "synthetic":
        return generate_coco(root, cfg.synthetic_train, cfg.synthetic_val, cfg.synthetic_image_size, seed=cfg.seed,
                             num_classes=cfg.synthetic_classes)
    return existing_paths({k: root / getattr(cfg, k) for k in ("train_images", "train_ann", "val_images", "val_ann")},
                          root)


def existing_paths(paths: dict[str, Path], root: Path) -> dict[str, Path]:
    """``paths`` if they all exist, else FileNotFoundError naming the missing ones."""
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        raise FileNotFoundError(f"data.root {root}: missing {missing} (expected the COCO 2017 layout, or the "
                                "export data.kind names; see README 'Real datasets')")
    return paths


def build_model(m: DetModelConfig) -> Detector:
    """The train-form detector of ``m``; a "trunk" with ``backbone_init`` starts from that classifier's stages."""
    if m.backbone == "efficientrep":
        return build_detector(m.scale, m.block, m.num_classes, m.use_dfl, m.reg_max, m.head_act, m.bn_eps,
                              m.bn_momentum)
    model = build_trunk_detector(m.arch, m.block, m.scale, m.num_classes, m.stem_stride, m.use_dfl, m.reg_max,
                                 m.head_act, m.bn_eps, m.bn_momentum)
    if m.backbone_init:
        load_pretrained_trunk(model.backbone, m.backbone_init)
        log.info("detector backbone %s/%s initialised from %s", m.arch, m.block, m.backbone_init)
    return model


def build_det_loaders(cfg: DetConfig, paths: dict[str, Path], dist: DistInfo):
    d = cfg.data
    if d.batch_size % dist.world_size:
        raise ConfigError(f"data.batch_size {d.batch_size} is not divisible by the {dist.world_size} processes")
    train = make_det_loader(paths["train_images"], paths["train_ann"], d.image_size, d.batch_size // dist.world_size,
                            train=True, augment=d.augment, workers=d.workers, seed=cfg.train.seed,
                            distributed=dist.distributed, drop_last=True)
    val = make_det_loader(paths["val_images"], paths["val_ann"], d.image_size, d.batch_size, train=False,
                          workers=d.workers)
    if train.dataset.num_classes != cfg.model.num_classes:
        raise ConfigError(f"model.num_classes is {cfg.model.num_classes} but {paths['train_ann']} has "
                          f"{train.dataset.num_classes} categories")
    return train, val


def build_loss(cfg: DetConfig, model: Detector) -> DetectionLoss:
    lc = cfg.loss
    return DetectionLoss(cfg.model.num_classes, reg_max=model.reg_max, use_dfl=model.reg_max > 0,
                         iou_type=lc.iou_type or detector_scale(cfg.model.scale).iou_loss,
                         loss_weights=dict(cls=lc.cls_weight, iou=lc.iou_weight, dfl=lc.dfl_weight),
                         atss_topk=lc.atss_topk, tal_topk=lc.tal_topk, tal_alpha=lc.tal_alpha, tal_beta=lc.tal_beta)


def base_lr(cfg: DetConfig) -> float:
    """``optim.lr0`` if the config sets it, else the scale's own lr0 (YOLOv6: n 0.02, t/s 0.01)."""
    return cfg.optim.lr0 if cfg.optim.lr0 is not None else detector_scale(cfg.model.scale).lr0


def build_det_optimizer(cfg: DetConfig, model: nn.Module, accumulate: int, per_process_batch: int,
                        world_size: int, reinit: bool = True) -> torch.optim.Optimizer:
    """SGD (Nesterov) over conv-weight / BN / bias groups, or the RepOptimizer for a "repopt" detector."""
    from ..optim import build_repopt_sgd, param_groups

    o = cfg.optim
    # YOLOv6 scales decay with the effective batch so the recipe holds at any batch size.
    wd = o.weight_decay * per_process_batch * world_size * accumulate / o.nominal_batch
    if cfg.repopt.hs_checkpoint:
        hs_model = load_hs_model(cfg.repopt.hs_checkpoint, "det", scale=cfg.model.scale)
        device = next(model.parameters()).device
        # a trunk started from a RepOpt-VGG classifier (model.backbone_init) keeps its weights; the neck and head
        # start from the scales, as a from-scratch RepOpt detector does
        keep = ("backbone.",) if cfg.model.backbone_init else ()
        return build_repopt_sgd(model, hs_model.to(device), base_lr(cfg), o.momentum, wd, o.nesterov, reinit=reinit,
                                keep=keep)
    return torch.optim.SGD(param_groups(model, wd), lr=base_lr(cfg), momentum=o.momentum, nesterov=o.nesterov,
                           weight_decay=0.0)


def make_det_step(model: Detector, loss_fn: DetectionLoss, device: torch.device):
    """``step(model, (uint8 images, targets (T, 6), infos)) -> (loss, items)``."""
    strides = list(model.strides)

    def step(wrapped: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        images, targets, _ = batch
        x = DETECTION(images.to(device, non_blocking=True))
        cls_logits, reg = wrapped(x)
        sizes = [(x.shape[-2] // s, x.shape[-1] // s) for s in strides]
        points, stride_tensor = make_anchor_points(sizes, strides, device=x.device)
        loss, items = loss_fn(cls_logits, reg, points, stride_tensor, targets.to(device), sizes)
        return loss, {k: v for k, v in items.items() if k != "total"}

    return step


def make_det_evaluator(cfg: DetConfig, val_loader, strides: tuple[int, ...], reg_max: int, device: torch.device):
    """The training run's ``evaluate(model) -> metrics`` (COCO AP in percent, as every file and table here)."""
    return DetectionEvaluator(val_loader, None, DETECTION, strides, reg_max, device, cfg.eval,
                              progress=cfg.train.progress).evaluate


def build_det_trainer(cfg: DetConfig, work_dir: Path, dist: DistInfo, device: torch.device, resume: bool):
    """(trainer, evaluate(model) -> metrics)."""
    paths = data_paths(cfg.data) if dist.is_main else None
    barrier()  # other ranks wait for rank 0's export
    paths = paths or data_paths(cfg.data)
    train_loader, val_loader = build_det_loaders(cfg, paths, dist)
    model = build_model(cfg.model).to(device)
    per_process = cfg.data.batch_size // dist.world_size
    accumulate = accumulate_steps(cfg.optim.nominal_batch, per_process, dist.world_size)
    optimizer = build_det_optimizer(cfg, model, accumulate, per_process, dist.world_size, reinit=not resume)
    loss_fn = build_loss(cfg, model)
    evaluate = make_det_evaluator(cfg, val_loader, model.strides, model.reg_max, device)
    o, t = cfg.optim, cfg.train
    dataset = train_loader.dataset

    def mosaic_off(_: Trainer) -> None:
        dataset.mosaic_enabled = False

    hooks = [YoloV6LRHook(o.lrf, o.warmup_epochs, o.warmup_min_iters, o.warmup_momentum, o.momentum, o.warmup_bias_lr),
             EpochCallbackHook(cfg.loss.atss_epochs, lambda _: loss_fn.set_assigner("tal"), "assigner ATSS -> TAL"),
             EpochCallbackHook(max(o.epochs - t.mosaic_off_epochs, 0), mosaic_off, "mosaic off"),
             EvalHook(evaluate, t.eval_interval), LoggerHook(t.log_interval),
             CheckpointHook(work_dir, metric="AP", keep_every=t.keep_every)]
    if t.ema:
        hooks.append(EMAHook(t.ema_decay, t.ema_tau))
    trainer = Trainer(model, optimizer, train_loader, make_det_step(model, loss_fn, device), epochs=o.epochs,
                      hooks=hooks, device=device, amp=t.amp, accumulate=accumulate, grad_clip=o.grad_clip, dist=dist,
                      seed=t.seed, meta=det_meta(cfg, dataset.category_ids, dataset.names),
                      logger=MetricLogger(work_dir, enabled=dist.is_main, tensorboard=t.tensorboard),
                      progress=t.progress, channels_last=t.channels_last, compile=t.compile)
    return trainer, evaluate


def finalize(trainer: Trainer, evaluate, work_dir: Path) -> dict:
    """Fuse the evaluated (EMA) model, evaluate both forms, write ``deploy.pt`` and ``results.json``."""
    _, train_form, results = finalize_run(trainer, evaluate, work_dir, "AP",
                                          {"task": "det", "scale": trainer.meta["scale"],
                                           "block": trainer.meta["block"]})
    log.info("train-form AP50 %.2f AP %.2f | deploy AP50 %.2f AP %.2f -> %s", train_form["AP50"], train_form["AP"],
             results["deploy"]["AP50"], results["deploy"]["AP"], work_dir / "results.json")
    return results


def train(cfg: DetConfig, work_dir: str | os.PathLike, resume: bool = False, device: str | None = None,
          overwrite: bool = False) -> dict:
    """Train, evaluate, fuse, evaluate the deploy model; return the results dict (``{}`` on ranks > 0).

    Works under ``torchrun`` (DDP) and as a plain call; ``device`` overrides ``cfg.train.device``.
    A work dir holding an earlier run's checkpoints is refused unless ``resume`` or ``overwrite``.
    """
    work_dir = Path(work_dir)

    def build(dist: DistInfo, dev: torch.device):
        trainer, evaluate = build_det_trainer(cfg, work_dir, dist, dev, resume)
        return trainer, lambda t: finalize(t, evaluate, work_dir)

    # bn_eps / bn_momentum: a run from before they were recorded trained with PyTorch's 1e-5 / 0.1; it resumes
    # with model.bn_eps=1e-5 model.bn_momentum=0.1 and is refused under other BN settings (they would silently
    # change its numerics).
    return run_training(cfg, work_dir, resume, device, build, ("task", "scale", "block", "num_classes", "use_dfl",
                                                              "bn_eps", "bn_momentum", "backbone", "arch"),
                        overwrite=overwrite, unrecorded={"bn_eps": TORCH_BN_EPS, "bn_momentum": TORCH_BN_MOMENTUM,
                                                         "backbone": "efficientrep"})


