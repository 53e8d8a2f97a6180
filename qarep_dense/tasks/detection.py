"""Detection task: YOLOv6-style training of a rep-block detector on COCO-format data.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..config import ConfigError, config_to_dict, require
from ..data.coco import DetAugment
from ..data.det_loader import make_det_loader
from ..data.preprocess import DETECTION, Preprocess
from ..data.digits_canvas import CanvasSpec, digits_canvas_paths, generate_digits_canvas
from ..data.synthetic.coco import generate_coco, synthetic_coco_paths
from ..engine.checkpoint import load_pretrained_trunk
from ..engine.distributed import DistInfo, barrier
from ..engine.hooks import CheckpointHook, EMAHook, EpochCallbackHook, EvalHook, LoggerHook, YoloV6LRHook
from ..engine.logging import MetricLogger
from ..engine.trainer import Trainer, accumulate_steps
from ..evaluation.detection import DetEvalSettings
from ..evaluation.evaluators import DetectionEvaluator, EvalRequest
from ..layers import BLOCK_TYPES
from ..losses import DetectionLoss
from ..models.detector import TORCH_BN_EPS, TORCH_BN_MOMENTUM, Detector, build_detector, build_trunk_detector
from ..models.zoo import CLASSIFIER_ARCHS, DETECTOR_SCALES, detector_scale
from ..ops import make_anchor_points
from .base import TaskRow, require_meta
from .common import RepOptConfig, TrainConfig, finalize_run, run_training

log = logging.getLogger(__name__)


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


# --- builders ------------------------------------------------------------------------------------


def data_paths(cfg: DetDataConfig, generate: bool = True) -> dict[str, Path]:
    """{"train_images", "train_ann", "val_images", "val_ann"}; generates the synthetic export if asked.

    ``generate=False``: a synthetic config reads an existing export's layout and never writes.
    """
    root = Path(cfg.root)
    if cfg.kind == "digits_canvas":
        spec = CanvasSpec(cfg.canvas_size, tuple(cfg.canvas_scales), passes=tuple(cfg.canvas_passes), seed=cfg.seed)
        return generate_digits_canvas(root, spec) if generate else existing_paths(digits_canvas_paths(root), root)
    if cfg.kind == "synthetic" and not generate:
        return synthetic_coco_paths(root)
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
        from .registry import load_model

        hs_model, hs_meta = load_model(cfg.repopt.hs_checkpoint, "det")
        if hs_meta.get("block") != "hs" or hs_meta.get("fused") or hs_meta.get("scale") != cfg.model.scale:
            raise ConfigError(f"repopt.hs_checkpoint {cfg.repopt.hs_checkpoint}: expected an unfused 'hs' detector "
                              f"of scale {cfg.model.scale!r}, got block {hs_meta.get('block')!r} "
                              f"scale {hs_meta.get('scale')!r}")
        device = next(model.parameters()).device
        return build_repopt_sgd(model, hs_model.to(device), base_lr(cfg), o.momentum, wd, o.nesterov, reinit=reinit)
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
    """The training run's ``evaluate(model) -> metrics`` (COCO fractions 0..1, the checkpoints' scale)."""
    return DetectionEvaluator(val_loader, None, DETECTION, strides, reg_max, device, cfg.eval,
                              progress=cfg.train.progress).evaluate_fractions


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
                      progress=t.progress)
    return trainer, evaluate


def finalize(trainer: Trainer, evaluate, work_dir: Path) -> dict:
    """Fuse the evaluated (EMA) model, evaluate both forms, write ``deploy.pt`` and ``results.json``."""
    _, train_form, results = finalize_run(trainer, evaluate, work_dir, "AP",
                                          {"task": "det", "scale": trainer.meta["scale"],
                                           "block": trainer.meta["block"]})
    log.info("train-form AP50 %.3f AP %.3f | deploy AP50 %.3f AP %.3f -> %s", train_form["AP50"], train_form["AP"],
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


# --- saved checkpoints (the task's row) ---------------------------------------------------------


def loaders_from_meta(meta: dict, source: str, data_root: str | os.PathLike | None = None,
                      image_size: int | None = None, batch_size: int = 32, workers: int = 0):
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
    """The train-form detector a checkpoint's metadata describes.

    A checkpoint without ``bn_eps`` / ``bn_momentum`` was trained with PyTorch's BatchNorm defaults
    (1e-5 / 0.1) and is rebuilt with them, so its outputs do not change.
    """
    require_meta(meta, ("scale", "block", "num_classes"), source)
    if meta.get("backbone", "efficientrep") == "trunk":
        require_meta(meta, ("arch", "stem_stride"), source)
        return build_trunk_detector(meta["arch"], meta["block"], meta["scale"], meta["num_classes"],
                                    meta["stem_stride"], use_dfl=meta.get("use_dfl", False),
                                    reg_max=meta.get("reg_max", 16), head_act=meta.get("head_act", "silu"),
                                    bn_eps=meta["bn_eps"], bn_momentum=meta["bn_momentum"])
    return build_detector(meta["scale"], meta["block"], meta["num_classes"], use_dfl=meta.get("use_dfl", False),
                          reg_max=meta.get("reg_max", 16), head_act=meta.get("head_act", "silu"),
                          bn_eps=meta.get("bn_eps", TORCH_BN_EPS),
                          bn_momentum=meta.get("bn_momentum", TORCH_BN_MOMENTUM))


def make_evaluator(request: EvalRequest) -> DetectionEvaluator:
    """COCO mAP (percent) on the val split of the checkpoint's training data (or ``request.data``, same layout)."""
    cfg, val, calib = loaders_from_meta(request.meta, str(request.checkpoint), request.data, request.image_size,
                                        request.batch_size, request.workers)
    model = build_model_from_meta(request.meta, str(request.checkpoint))
    return DetectionEvaluator(val, calib, DETECTION if not request.meta.get("preprocess")
                              else Preprocess(**request.meta["preprocess"]), model.strides, model.reg_max,
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


TASK = TaskRow("det", "detection", "AP", build_model_from_meta, make_evaluator, converted_meta,
               foreign_sources=("yolov6",), qat_loss=qat_loss)
