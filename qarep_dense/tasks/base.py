"""The typed task interface: one :class:`TaskRow` per task (cls, det, seg).

A row says how to rebuild a task's network from a checkpoint's plain metadata, how to score it
(its :class:`~qarep_dense.evaluation.evaluators.Evaluator`), and how to complete the metadata of a
converted foreign checkpoint. The rows themselves live next to their task's code
(``classification.TASK``, ``detection.TASK``, ``segmentation.TASK``) and are looked up by name in
:mod:`qarep_dense.tasks.registry`. Nothing here imports mmseg.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torch import nn

from ..choices import EVAL_BATCH_SIZE, TASK_NAMES
from ..data.preprocess import Preprocess
from ..engine.checkpoint import CheckpointError
from ..evaluation.evaluators import EvalRequest, Evaluator


@dataclass(frozen=True)
class TaskRow:
    """One task of the toolkit.

    name: "cls" | "det" | "seg"; title: "classification" ...; metric: the evaluator's headline key
    ("top1", "AP", "mIoU"; higher is better).
    build_model(meta, source) -> the train-form network the metadata describes (``source`` names the
        file in errors).
    make_evaluator(request) -> the task's evaluator (validation split + calibration loader on the
        training split, both with the evaluation preprocessing).
    converted_meta(meta, image_size, data_config) -> the metadata of a converted foreign checkpoint
        completed with what the tools read (input size, preprocessing, a training config whose data
        section the evaluator uses); None: the task has no foreign checkpoints.
    foreign_sources: the ``convert`` sources this task's checkpoints can come from.
    qat_loss(meta, model, preprocess, device) -> ``loss(model, batch)``, the training loss of one batch of the task's
        calibration loader (training images), for QAT (every task has one: ``tools/quantize.py --allow-qat``).
    selection_score: how quantization candidates are scored against the FP32 model on the selection images
        ("kl": KL divergence of the softmax, for classifiers; "rel_mse": relative MSE of all outputs).
    preprocess(meta) -> the checkpoint's uint8 -> float step (its recorded mean/std, else the task's default).
    prepare_image(meta, size, source) -> ``prepare(path, rgb uint8 (H, W, 3)) -> (uint8 (3, H', W') network image,
        geometry to map outputs back)``, exactly as the evaluation prepares its images (inference on a user's
        images); ``size``: the input size (None: the task's own pipeline decides, or an error naming ``source``).
    class_names(meta) -> the names of the classes the checkpoint predicts, None when it cannot tell.
    prediction: what a prediction is, for drawing: "labels" (top-k), "boxes" or "mask".
    batch_size: the default ``--batch-size`` of the task's own evaluation tool (``choices.EVAL_BATCH_SIZE``);
        the INT8 tools use ``choices.BATCH_SIZE`` for every task.
    read_checkpoint(path) -> (state dict of the train-form model, metadata) of a checkpoint the task's training
        framework wrote (segmentation: mmengine's ``iter_*.pth``); None: only the project's own files.
    free_size_export: the ONNX graph keeps height and width free (a segmentor's logits come back at the input
        size); others are exported at one size, the batch axis free.
    metric_counts_images: the metric is the percentage of validation images right (top-1), so one image is
        worth 100 / N points; False for AP and mIoU.
    """

    name: str
    title: str
    metric: str
    build_model: Callable[[dict, str], nn.Module]
    make_evaluator: Callable[[EvalRequest], Evaluator]
    qat_loss: Callable[[dict, nn.Module, Preprocess, str], Callable]
    converted_meta: Callable[..., dict] | None = None
    foreign_sources: tuple[str, ...] = ()
    selection_score: str = "rel_mse"
    metric_counts_images: bool = False
    free_size_export: bool = False
    read_checkpoint: Callable[[Path], tuple[dict, dict]] | None = None
    preprocess: Callable[[dict], Preprocess] = lambda meta: recorded_preprocess(meta, Preprocess())
    prepare_image: Callable[[dict, int | None, str], Callable] | None = None
    class_names: Callable[[dict], list[str] | None] = lambda meta: meta.get("names") or meta.get("class_names")
    prediction: str = "labels"
    batch_size: int = EVAL_BATCH_SIZE["cls"]


def recorded_preprocess(meta: dict, default: Preprocess) -> Preprocess:
    """The uint8 -> float step a checkpoint records (``meta["preprocess"]``), else ``default``."""
    given = meta.get("preprocess")
    return Preprocess(mean=tuple(given["mean"]), std=tuple(given["std"])) if given else default


def require_size(size: int | None, source: str) -> int:
    """The input size a task needs to prepare images, or an error naming the checkpoint."""
    if not size:
        raise CheckpointError(f"{source}: no image_size in the checkpoint; pass --image-size")
    return size


def require_meta(meta: dict, keys: tuple[str, ...], source: str) -> None:
    """Raise naming the file and every metadata key it lacks (never a bare KeyError)."""
    missing = [k for k in keys if k not in meta]
    if missing:
        raise CheckpointError(f"{source}: checkpoint metadata has no {', '.join(map(repr, missing))} "
                              f"(task {meta.get('task')!r}); was it written by another tool or converted "
                              "without tools/convert_ckpt.py?")


def check_task(meta: dict, expected: str | tuple[str, ...] | None, source: str) -> None:
    """Refuse a checkpoint of another task, saying which was expected."""
    if expected is None:
        return
    wanted = (expected,) if isinstance(expected, str) else tuple(expected)
    task = meta.get("task")
    if task not in wanted:
        names = " or ".join(f"{t} ({TASK_NAMES.get(t, t)})" for t in wanted)
        raise CheckpointError(f"{source}: this is a {task!r} ({TASK_NAMES.get(task, 'unknown')}) checkpoint, "
                              f"but a {names} checkpoint is expected here")
