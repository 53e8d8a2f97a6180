"""Segmentation task: MMSegmentation 1.x configs trained by mmengine's ``Runner`` (the logic of tools/train_seg.py).

Nothing here imports mmengine / mmseg / mmcv at module level: ``qarep_dense.integrations.mmseg``
is loaded on first use, so asking the task registry for "cls" or "det" never pulls mmseg in.

``train(config, ...)`` generates the synthetic street scenes a config asks for
(``synthetic_cityscapes = dict(...)``), checks the dataset files, trains with the Runner
(mmengine checkpoints ``iter_*.pth``, exact ``--resume``), then, on rank 0, writes the project's own
checkpoints: ``last.pt`` (train form) and ``deploy.pt`` (backbone re-parameterized, heads' BN
folded), evaluates both with mmseg's IoU metric and writes ``results.json``.
"""
from __future__ import annotations

import logging
import os
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..choices import EVAL_BATCH_SIZE
from ..data.preprocess import Preprocess
from ..deploy.equivalence import max_abs_diff
from ..engine.checkpoint import save_checkpoint
from ..evaluation.evaluators import EvalRequest
from ..evaluation.segmentation import SegmentationEvaluator
from ..layers.rep import reparameterize
from ..fileio import Claim, claim_file, sealed, write_json_atomic
from .base import TaskRow, require_meta
from .common import METRICS_UNIT, claim_work_dir

log = logging.getLogger(__name__)


def _mm():
    from ..integrations import mmseg

    return mmseg


def _rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0"))


def prepare_synthetic(cfg: Any, timeout_s: float = 900.0) -> None:
    """Write the generated data the config asks for into ``cfg.data_root`` (rank 0; other torchrun ranks wait
    until it is sealed): ``synthetic_cityscapes = dict(...)`` street scenes or ``digits_canvas = dict(...)``
    handwritten digit canvases (the keys of :class:`~qarep_dense.data.digits_canvas.CanvasSpec`)."""
    root = Path(cfg.train_dataloader.dataset.data_root)
    if cfg.get("synthetic_cityscapes"):
        from ..data.synthetic.cityscapes import generate_cityscapes

        spec = cfg.synthetic_cityscapes
        args = dict(num_train=spec["num_train"], num_val=spec["num_val"], size=tuple(spec["size"]), seed=spec["seed"])
        write, owner = partial(generate_cityscapes, root, **args), "synthetic-cityscapes"
    elif cfg.get("digits_canvas"):
        from ..data.digits_canvas import DIGITS_CANVAS_OWNER, CanvasSpec, generate_digits_canvas

        canvas = CanvasSpec(**{k: tuple(v) if isinstance(v, (list, tuple)) else v
                               for k, v in dict(cfg.digits_canvas).items()})
        write, owner = partial(generate_digits_canvas, root, canvas), DIGITS_CANVAS_OWNER
    else:
        return
    if _rank() == 0:
        write()
        return
    deadline = time.monotonic() + timeout_s
    while sealed(root, owner, verify=False) is None:  # rank 0 is writing
        if time.monotonic() > deadline:
            raise TimeoutError(f"{root}: rank 0 did not finish the synthetic export in {timeout_s:.0f} s")
        time.sleep(1.0)


def configure(config: str | os.PathLike, work_dir: str | os.PathLike | None = None, resume: str | bool = False,
              amp: bool = False, cfg_options: dict | None = None, launcher: str = "none",
              data_root: str | os.PathLike | None = None):
    """The mmengine ``Config`` of a run: file + ``--cfg-options``, work dir, launcher, AMP, resume and
    ``data_root`` (set on the train / val / test datasets alike)."""
    mm = _mm()
    mm.check_launcher(launcher)
    cfg = mm.load_config(config, cfg_options)
    if data_root is not None:
        if not Path(data_root).is_dir():  # a typo must not become a freshly generated synthetic dataset
            raise FileNotFoundError(f"--data-root {data_root}: folder not found (a synthetic config generates its "
                                    "scenes at its own data_root, or into an existing folder given here)")
        cfg.data_root = str(data_root)
        for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
            if cfg.get(loader) is not None:
                cfg[loader].dataset.data_root = str(data_root)
    cfg.work_dir = str(work_dir or cfg.get("work_dir") or Path("work_dirs/seg") / Path(config).stem)
    cfg.launcher = launcher
    if amp:
        cfg.optim_wrapper.type = "AmpOptimWrapper"
        cfg.optim_wrapper.loss_scale = "dynamic"
    if resume:  # an explicit checkpoint: mmengine's own search would start over next to a copied iter_N.pth
        cfg.resume = True
        cfg.load_from = str(mm.resume_checkpoint(Path(cfg.work_dir), resume))
    return cfg


def check_checkpoints(cfg: Any) -> None:
    """Read the resume / ``load_from`` checkpoint before the Runner does (errors name the file), and refuse a
    resume whose config changes what the checkpoint restores."""
    mm = _mm()
    if cfg.get("load_from"):
        payload = mm.check_mmengine_checkpoint(cfg.load_from, "--resume" if cfg.get("resume") else "load_from",
                                               resume=bool(cfg.get("resume")))
        if cfg.get("resume"):
            mm.check_resume_config(Path(cfg.load_from), (payload.get("meta") or {}).get("cfg"), cfg)


@torch.no_grad()
def _max_logit_diff(a: nn.Module, b: nn.Module, evaluator: SegmentationEvaluator, batches: int = 2) -> float:
    worst = 0.0
    for i, (images, _) in enumerate(evaluator.val_loader):
        if i >= batches:
            break
        worst = max(worst, max_abs_diff(a, b, evaluator.preprocess(images.to(evaluator.device))))
    return worst


def finalize(model: nn.Module, cfg: Any, work_dir: Path, device: str = "cpu", progress: bool = True,
             mmseg_val: dict | None = None) -> dict:
    """Write ``last.pt`` / ``deploy.pt`` of ``model`` (a trained mmseg segmentor), evaluate both, write results.json."""
    mm = _mm()
    meta = mm.seg_meta(cfg)
    wrapped = mm.SegmentorLogits(mm.revert_sync_bn(model)).to(device).eval()
    save_checkpoint(work_dir / "last.pt", wrapped.state_dict(), meta)
    deploy = reparameterize(wrapped)
    request = EvalRequest(work_dir / "last.pt", meta, None, batch_size=int(cfg.val_dataloader.batch_size),
                          device=device, progress=progress)
    evaluator = make_evaluator(request)
    train_form, deploy_metrics = evaluator.evaluate(wrapped), evaluator.evaluate(deploy)
    save_checkpoint(work_dir / "deploy.pt", deploy.state_dict(), {**meta, "fused": True}, metrics=deploy_metrics)
    results = {"task": "seg", "metrics_unit": METRICS_UNIT, "arch": meta["arch"], "block": meta["block"],
               "head": meta["head"],
               "train_form": train_form, "deploy": deploy_metrics, "mmseg_val": {k: float(v) for k, v in (mmseg_val or {}).items()},
               "max_logit_diff": _max_logit_diff(wrapped, deploy, evaluator),
               "files": {"last": str(work_dir / "last.pt"), "deploy": str(work_dir / "deploy.pt")}}
    write_json_atomic(work_dir / "results.json", results)
    log.info("train-form mIoU %.2f | deploy mIoU %.2f | max logit diff %.3g -> %s", train_form["mIoU"],
             deploy_metrics["mIoU"], results["max_logit_diff"], work_dir / "results.json")
    return results


# What mmengine's Runner and this module leave in a work dir (adopted as ours in a work dir without a record).
SEG_WORK_DIR_FILES = ("iter_*.pth", "last_checkpoint", "last.pt", "deploy.pt", "results.json", "2*/*")


def check_max_iters(cfg: Any) -> None:
    """Refuse a run that would train nothing and save the untrained model as its result."""
    iters = (cfg.get("train_cfg") or {}).get("max_iters")
    if iters is not None and (not isinstance(iters, int) or iters < 1):
        raise ValueError(f"train_cfg.max_iters={iters!r}: must be an integer of at least 1 (with 0 the run would "
                         "save an untrained model)")


def train(config: str | os.PathLike, work_dir: str | os.PathLike | None = None, resume: str | bool = False,
          amp: bool = False, cfg_options: dict | None = None, launcher: str = "none", progress: bool = True,
          data_root: str | os.PathLike | None = None, overwrite: bool = False) -> dict:
    """Train ``config`` with mmengine's Runner; returns results (``{}`` on ranks > 0).

    ``resume``: False, True/"auto" (the latest checkpoint of the work dir) or a checkpoint path.
    ``overwrite``: start over in a work dir that holds an earlier run's checkpoints (refused otherwise).
    The returned dict also holds ``start_iter`` (0, or the iteration resumed from) and ``end_iter``.
    """
    cfg = configure(config, work_dir, resume, amp, cfg_options, launcher, data_root)
    check_max_iters(cfg)
    check_checkpoints(cfg)
    files = (*SEG_WORK_DIR_FILES, f"{Path(config).stem}.py")  # mmengine dumps the config beside the checkpoints
    claimed = claim_work_dir(Path(cfg.work_dir), resume, overwrite, "train_seg", ("iter_*.pth", "last.pt"),
                             files) if _rank() == 0 else None
    try:
        results = _train_claimed(cfg, config, progress)
        if claimed is not None:
            claimed.seal()
        return results
    finally:
        if claimed is not None:
            claimed.release()


def _train_claimed(cfg: Any, config: str | os.PathLike, progress: bool) -> dict:
    mm = _mm()
    prepare_synthetic(cfg)
    for split in ("train", "val"):
        mm.check_dataset_files(getattr(cfg, f"{split}_dataloader").dataset, str(config))
    runner = mm.build_runner(cfg)
    start = {}
    runner.register_hook(mm.StartIterHook(start), priority="LOWEST")
    runner.train()
    if runner.rank != 0:
        return {}
    mmseg_val = runner.val() if cfg.get("val_cfg") is not None else None
    model = runner.model.module if hasattr(runner.model, "module") else runner.model
    device = str(next(model.parameters()).device)
    results = finalize(model, cfg, Path(cfg.work_dir), device, progress, mmseg_val)
    results.update(start_iter=start.get("iter", 0), end_iter=runner.iter, work_dir=cfg.work_dir)
    write_json_atomic(Path(cfg.work_dir) / "results.json", results)
    return results


# --- saved checkpoints (the task registry's entry points) ----------------------------------------


def claim_deploy_file(path: Path) -> Claim:
    """``tools/eval_seg.py --save-deploy``'s file, claimed before the evaluation: a folder, someone else's file,
    a parent that is a file or cannot be written are refused then, naming the option."""
    return claim_file(path, "eval_seg", label="--save-deploy")



def build_model_from_meta(meta: dict, source: str = "checkpoint") -> nn.Module:
    """The train-form segmentor (tensor in, logits out) a checkpoint's metadata describes."""
    require_meta(meta, ("mmseg_config", "arch", "block", "num_classes"), source)
    return _mm().model_from_meta(meta)


def make_evaluator(request: EvalRequest) -> SegmentationEvaluator:
    """mIoU on the val split of the checkpoint's dataset (``request.data`` swaps the data root);
    calibration batches: shuffled train images through the evaluation pipeline."""
    mm = _mm()
    cfg = mm.config_from_text(request.meta["mmseg_config"])
    val, calib, metainfo = mm.seg_loaders(cfg, request.data, request.batch_size, request.workers)
    ignore = int(cfg.model.decode_head.get("ignore_index", 255))
    return SegmentationEvaluator(val, calib, mm.preprocess_of(cfg), mm.iou_metric_factory(metainfo, ignore),
                                 request.device, request.progress)


def qat_loss(meta: dict, model: nn.Module, preprocess: Preprocess, device: str):
    """The decode head's loss (the checkpoint's mmseg config) of one (uint8 images, ground truths) batch of the
    evaluation pipeline's training images: the QAT loss of a segmentor."""
    mm = _mm()
    loss = mm.decode_head_loss(mm.config_from_text(meta["mmseg_config"]))
    return lambda m, batch: loss(m(preprocess(batch[0].to(device))), batch[1])


def dataset_class_names(meta: dict) -> list[str] | None:
    """The class names of the checkpoint's mmseg dataset class, None if it declares none."""
    from mmseg.registry import DATASETS

    dataset = DATASETS.get(_mm().config_from_text(meta["mmseg_config"]).test_dataloader.dataset.type)
    names = getattr(dataset, "METAINFO", {}).get("classes")
    return list(names) if names else None


def image_pipeline(meta: dict):
    """``prepare(path) -> uint8 RGB (3, H, W)``: the checkpoint's mmseg test pipeline without its annotation
    steps (the evaluation's resize), for a user's images."""
    from mmengine.dataset import Compose
    from mmengine.registry import DefaultScope

    cfg = _mm().config_from_text(meta["mmseg_config"])
    steps = [s for s in cfg.test_dataloader.dataset.pipeline if s["type"] not in ("LoadAnnotations", "CheckSegLabels")]
    with DefaultScope.overwrite_default_scope("mmseg"):
        pipeline = Compose(steps)

    def prepare(path: Path) -> torch.Tensor:
        with DefaultScope.overwrite_default_scope("mmseg"):
            item = pipeline({"img_path": str(path)})
        return item["inputs"].flip(0)  # mmseg loads BGR; the model takes RGB (as its evaluation loader)
    return prepare


def read_checkpoint(path: Path) -> tuple[dict, dict]:
    """(state, meta) of an mmengine ``iter_*.pth`` of a segmentation run (its config travels in the file)."""
    return _mm().read_mmengine_checkpoint(path)


def prepare_image(meta: dict, size: int | None = None, source: str = "checkpoint"):
    """The checkpoint's mmseg test pipeline without its annotation steps (it carries its own resize)."""
    pipeline = image_pipeline(meta)
    return lambda path, img: (pipeline(path), {})


def class_names(meta: dict) -> list[str] | None:
    return meta.get("names") or (dataset_class_names(meta) if meta.get("mmseg_config") else None)


TASK = TaskRow("seg", "segmentation", "mIoU", build_model_from_meta, make_evaluator, qat_loss,
               free_size_export=True, read_checkpoint=read_checkpoint, prepare_image=prepare_image,
               class_names=class_names, prediction="mask", batch_size=EVAL_BATCH_SIZE["seg"])
