"""Tasks by name: rebuild a model from a checkpoint's plain metadata, and score it.

Each task lives in its own module (``qarep_dense.tasks.<module>``) that provides

    build_model_from_meta(meta: dict) -> nn.Module           # the train-form network the meta describes
    make_evaluator(request: EvalRequest) -> Evaluator         # FP32 / INT8 scoring on that task's data

The modules are imported on first use, so asking for "cls" never imports mmseg and
``import qarep_dense`` stays light. Tools look tasks up here by name; adding a task is one row.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from torch import nn

from ..engine.checkpoint import CheckpointError, load_checkpoint, load_model_state
from ..layers.rep import reparameterize

TASK_MODULES: dict[str, str] = {
    "cls": "qarep_dense.tasks.classification",
    "det": "qarep_dense.tasks.detection",
    "seg": "qarep_dense.tasks.segmentation",
}
TASK_NAMES = {"cls": "classification", "det": "detection", "seg": "segmentation"}


def task_module(task: str) -> ModuleType:
    """The module implementing ``task`` ("cls", "det" or "seg")."""
    if task not in TASK_MODULES:
        raise CheckpointError(f"unknown task {task!r}; expected one of {sorted(TASK_MODULES)}")
    return importlib.import_module(TASK_MODULES[task])


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


def build_model_from_meta(meta: dict, source: str = "checkpoint") -> nn.Module:
    """The (train-form, or deploy-form if ``meta['fused']``) model a checkpoint describes."""
    require_meta(meta, ("task",), source)
    model = task_module(meta["task"]).build_model_from_meta(meta, source)
    if meta.get("fused"):
        model = reparameterize(model, fold_bn=meta.get("fold_bn", True))
    return model


def load_model(path: str | Path, task: str | tuple[str, ...] | None = None) -> tuple[nn.Module, dict]:
    """Load a checkpoint into a freshly built model; returns (model in eval mode, meta).

    ``task``: the task(s) the caller can handle; another task's checkpoint is refused by name.
    """
    payload = load_checkpoint(path)
    meta = payload["meta"]
    check_task(meta, task, str(path))
    model = build_model_from_meta(meta, str(path))
    load_model_state(model, payload["model"], source=str(path))
    return model.eval(), meta
