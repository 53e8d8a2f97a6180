"""mmengine's checkpoints (``iter_*.pth``) under torch's ``weights_only=True``, and a readable error for a bad one.

mmengine calls ``torch.load`` with torch's default (weights_only=True since torch 2.6); its checkpoints then
fail on the few globals they hold. :func:`allow_mmengine_checkpoints` allow-lists exactly those. A resume or
``load_from`` file is read once before the Runner starts (:func:`check_mmengine_checkpoint`), so that a
crafted pickle, a zero-byte or truncated file fails naming the file, not in torch's traceback (which
recommends ``weights_only=False``) or as a bare ``EOFError``.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from mmengine.logging import HistoryBuffer

from ...engine.checkpoint import CheckpointError, read_torch_file


def _numpy_globals() -> list:
    """numpy's array and scalar reconstructors and dtype classes (HistoryBuffer arrays, the ETA scalar)."""
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray
    dtypes = [type(np.dtype(t)) for t in (np.float64, np.float32, np.int64, np.int32, np.bool_)]
    return [multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype, *dtypes]


_HISTORY_STATISTICS = frozenset({"min", "max", "current", "mean"})


def history_buffer_getattr(obj: object, name: str):
    """The one ``getattr`` mmengine checkpoints need: a HistoryBuffer pickles its statistics
    methods as ``getattr(HistoryBuffer, "mean")``. Anything else is refused (a general ``getattr``
    in the unpickler would reach any object's globals)."""
    if obj is HistoryBuffer and name in _HISTORY_STATISTICS:
        return getattr(obj, name)
    raise pickle.UnpicklingError(f"refused getattr({obj!r}, {name!r}) while loading a checkpoint")


# Exactly what mmengine 0.10's CheckpointHook writes beyond tensors and plain containers: the
# MessageHub's HistoryBuffers (with their statistics methods), numpy arrays and scalars.
MMENGINE_CHECKPOINT_GLOBALS: list = [HistoryBuffer, (history_buffer_getattr, "builtins.getattr"), *_numpy_globals()]


def allow_mmengine_checkpoints() -> None:
    """Allow-list :data:`MMENGINE_CHECKPOINT_GLOBALS` for ``torch.load(..., weights_only=True)``.

    Only these exact classes are allowed; any other global in a file (a crafted pickle) is still refused.
    """
    torch.serialization.add_safe_globals(MMENGINE_CHECKPOINT_GLOBALS)


def check_mmengine_checkpoint(path: str | Path, role: str, resume: bool = False) -> dict:
    """Read the mmengine checkpoint ``path`` (weights only) and return it; raise :class:`CheckpointError`
    naming the file and ``role`` ("--resume", "load_from") when it is missing, a folder, empty, truncated,
    unsafe, or (``resume``) holds no ``state_dict`` (``load_from`` may also be a bare state dict)."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{role} {path}: is a folder; give a checkpoint file (e.g. {path}/iter_<N>.pth)")
    if not path.is_file():
        raise CheckpointError(f"{role} {path}: checkpoint file not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{role} {path}: empty file (0 bytes), not a checkpoint")
    payload = read_torch_file(path, role)
    if not isinstance(payload, dict) or (resume and "state_dict" not in payload):
        raise CheckpointError(f"{role} {path}: not an mmengine checkpoint (a dict with a 'state_dict' entry); a project "
                              "checkpoint (last.pt) is evaluated with tools/eval_seg.py, not resumed")
    return payload


allow_mmengine_checkpoints()

__all__ = ["MMENGINE_CHECKPOINT_GLOBALS", "allow_mmengine_checkpoints", "history_buffer_getattr",
           "check_mmengine_checkpoint"]
