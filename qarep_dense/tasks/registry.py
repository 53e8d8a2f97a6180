"""Tasks by name, and the one way to load a checkpoint: ours (train-form or deploy) or a foreign one.

    row = get_task("det")                        # a TaskRow: build_model, make_evaluator, metric ...
    model, meta = load_model(path, "cls")        # as saved (train form or deploy form), eval mode
    fused, meta = load_fused(path)               # always the fused deploy form, ready for INT8
    fused, meta = load_fused("repvgg_a0.safetensors", source_format="timm")  # converted on the fly

Importing the task modules does not import mmseg (the segmentation row loads it on first use), so
``import qarep_dense.tasks.registry`` stays light.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

from torch import nn

from ..deploy import reparameterize
from ..engine.checkpoint import CheckpointError, load_checkpoint, load_model_state, save_checkpoint
from ..evaluation.evaluators import EvalRequest
from ..fileio import claim_file, sha256_file
from . import classification, detection, segmentation
from .base import TASK_NAMES, TaskRow, check_task, require_meta

TASKS: dict[str, TaskRow] = {row.name: row for row in (classification.TASK, detection.TASK, segmentation.TASK)}

__all__ = ["TASKS", "TASK_NAMES", "TaskRow", "CheckpointError", "get_task", "check_task", "require_meta",
           "build_model_from_meta", "load_model", "load_fused", "fuse", "foreign_meta", "reparameterize",
           "save_checkpoint", "EvalRequest"]  # the last two: for the command lines, which import only tasks/


def get_task(task: str) -> TaskRow:
    """The row of ``task`` ("cls", "det" or "seg")."""
    if task not in TASKS:
        raise CheckpointError(f"unknown task {task!r}; expected one of {sorted(TASKS)}")
    return TASKS[task]


def build_model_from_meta(meta: dict, source: str = "checkpoint") -> nn.Module:
    """The (train-form, or deploy-form if ``meta['fused']``) model a checkpoint describes."""
    require_meta(meta, ("task",), source)
    model = get_task(meta["task"]).build_model(meta, source)
    if meta.get("fused"):
        model = reparameterize(model, fold_bn=meta.get("fold_bn", True))
    return model


def load_model(path: str | Path, task: str | tuple[str, ...] | None = None) -> tuple[nn.Module, dict]:
    """Load one of our checkpoints into a freshly built model; returns (model in eval mode, meta).

    ``task``: the task(s) the caller can handle; another task's checkpoint is refused by name.
    """
    state, meta = read_checkpoint(path)
    check_task(meta, task, str(path))
    model = build_model_from_meta(meta, str(path))
    load_model_state(model, state, source=str(path))
    return model.eval(), meta


def read_checkpoint(path: str | Path) -> tuple[dict, dict]:
    """(state dict, meta) of one of our checkpoints, or of one a task's training framework wrote (a row's
    ``read_checkpoint``: mmengine's ``iter_*.pth`` of a segmentation run). A file no reader takes raises the
    error of our own reader."""
    try:
        payload = load_checkpoint(path)
        return payload["model"], payload["meta"]
    except CheckpointError as ours:
        if not zipfile.is_zipfile(path):  # every torch.save since torch 1.6 is a zip archive
            raise
        for row in TASKS.values():
            if row.read_checkpoint is not None:
                try:
                    return row.read_checkpoint(Path(path))
                except CheckpointError:
                    continue
        raise ours


def fuse(model: nn.Module, meta: dict) -> nn.Module:
    """The deploy form of a loaded model: fused here unless ``meta['fused']`` says it already is."""
    return (model if meta.get("fused") else reparameterize(model)).eval()


def foreign_meta(meta: dict, src: str | os.PathLike, source_format: str, image_size: int | None = None,
                 data_config: str | os.PathLike | None = None) -> dict:
    """The metadata of a checkpoint converted from ``src``: the converter's model keys, completed by its task's
    row (input size, preprocessing, training config) and the file it came from."""
    row = get_task(meta["task"])
    if row.converted_meta is None:
        raise CheckpointError(f"{src}: {row.title} checkpoints cannot be converted")
    src = Path(src)
    converted = {"source": source_format, "file": src.name, "sha256": sha256_file(src)}
    return {**row.converted_meta(meta, image_size, data_config), "converted_from": converted}


def convert_checkpoint(src: str | os.PathLike, out: str | os.PathLike, source: str, arch: str | None = None,
                       scale: str | None = None, block: str | None = None, image_size: int | None = None,
                       data_config: str | os.PathLike | None = None) -> tuple[Path, dict]:
    """Convert the foreign checkpoint ``src`` and write ours to ``out``; returns (path, meta).

    Refuses an existing ``out`` (converted files are never overwritten). ``image_size``: recorded for the tools (default 224 for
    classifiers, 640 for detectors). ``data_config``: detection TOML whose data section the evaluator uses.
    The metadata is completed exactly as for an in-memory conversion (:func:`load_fused`).
    """
    from ..convert import ConversionError, convert_state

    src, out = Path(src), Path(out)
    if out.exists():  # checked before the work; the claim below holds the path while it is written
        raise ConversionError(f"{out}: already exists; choose another --out (converted files are never overwritten)")
    state, meta = convert_state(src, source, arch, scale, block)
    meta = foreign_meta(meta, src, source, image_size, data_config)
    with claim_file(out, "convert_ckpt", label="--out") as claimed:
        save_checkpoint(out, state, meta)
        claimed.seal()
    return out, meta


def load_fused(path: str | os.PathLike, task: str | tuple[str, ...] | None = None,
               source_format: str | None = None, device: str = "cpu", image_size: int | None = None,
               data_config: str | os.PathLike | None = None, **convert_args: str | None) -> tuple[nn.Module, dict]:
    """The fused (deploy-form) float model of a checkpoint, in eval mode on ``device``, and its metadata.

    path: our checkpoint (train or deploy form), or with ``source_format`` ("timm", "repvgg", "yolov6") a
    foreign file converted on the fly (nothing is written; ``convert_args``: arch / scale / block as
    tools/convert_ckpt.py takes them; ``image_size`` / ``data_config`` complete its metadata).
    task: the task(s) the caller can handle; another task's checkpoint is refused by name.
    """
    if source_format is None:
        model, meta = load_model(path, task)
    else:
        from ..convert import convert_state

        state, meta = convert_state(path, source_format, **convert_args)
        meta = foreign_meta(meta, path, source_format, image_size, data_config)
        check_task(meta, task, str(path))
        model = build_model_from_meta(meta, str(path))
        load_model_state(model, state, source=str(path))
    return fuse(model, meta).to(device), meta
