"""Checkpoints: ``state_dict``s plus plain metadata, written atomically, loaded with weights_only=True.

Layout of a checkpoint file (a dict):
    format: "qarep-dense/1"
    meta:   plain dict (task, arch, block, num_classes, fused, preprocess, config ...)
    model:  model state_dict
    ...     any other states the trainer adds (optimizer, scheduler, scaler, ema, epoch, rng)
"""
from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

FORMAT = "qarep-dense/1"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, of another format, or does not fit the model."""


def save_checkpoint(path: str | os.PathLike, model_state: dict, meta: dict, **states: Any) -> Path:
    """Write atomically: to a temporary file in the same folder, fsync, then rename over ``path``.

    A run killed mid-write leaves the previous checkpoint intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "meta": dict(meta), "model": model_state, **states}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint this project wrote; raise :class:`CheckpointError` naming the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, OSError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot read checkpoint (truncated or corrupt file?): {err}") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or "model" not in payload:
        raise CheckpointError(f"{path}: not a qarep-dense checkpoint (expected format {FORMAT!r} with a 'model' entry)")
    return payload


def load_model_state(model: nn.Module, state: dict, source: str = "checkpoint") -> None:
    """Strict load with a message that lists what is missing, unexpected or mis-shaped.

    ``strict=False`` loads are never used: they hide a checkpoint of another arch or block type.
    """
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mis_shaped = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or mis_shaped:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mis_shaped)):
            if keys:
                shown = ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")
                parts.append(f"{len(keys)} {label}: {shown}")
        raise CheckpointError(f"{source} does not fit the model ({type(model).__name__}): " + "; ".join(parts))
    model.load_state_dict(state, strict=True)
