"""Rebuild a model from a checkpoint's plain metadata (no pickled classes anywhere)."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from ..engine.checkpoint import CheckpointError, load_checkpoint, load_model_state
from ..layers.rep import reparameterize
from .classifier import build_classifier


def build_model_from_meta(meta: dict) -> nn.Module:
    """Build the (train-form, or deploy-form if ``meta['fused']``) model a checkpoint describes."""
    task = meta.get("task")
    if task == "cls":
        model = build_classifier(meta["arch"], meta["block"], meta["num_classes"],
                                 stem_stride=meta.get("stem_stride", 2))
    elif task == "det":
        from .detector import build_detector

        model = build_detector(meta["scale"], meta["block"], meta["num_classes"], use_dfl=meta.get("use_dfl", False),
                               reg_max=meta.get("reg_max", 16), head_act=meta.get("head_act", "silu"))
    else:
        raise CheckpointError(f"unknown task {task!r} in checkpoint metadata")
    if meta.get("fused"):
        model = reparameterize(model, fold_bn=meta.get("fold_bn", True))
    return model


def load_model(path: str | Path) -> tuple[nn.Module, dict]:
    """Load a checkpoint into a freshly built model; returns (model in eval mode, meta)."""
    payload = load_checkpoint(path)
    model = build_model_from_meta(payload["meta"])
    load_model_state(model, payload["model"], source=str(path))
    return model.eval(), payload["meta"]
