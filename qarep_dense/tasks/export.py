"""Float ONNX export of any task's checkpoint, checked in ONNX Runtime (``tools/export_onnx.py``)."""
from __future__ import annotations

import os
from pathlib import Path

from ..deploy.onnx import DEFAULT_RTOL, OnnxExport, example_inputs, export_checked
from ..fileio import claim_file

__all__ = ["DEFAULT_RTOL", "DYNAMIC_HW", "EXPORTABLE", "export_checkpoint_onnx"]
from .registry import load_fused

# Tasks whose network takes one (N, 3, H, W) image tensor: the export below.
EXPORTABLE = ("cls", "det", "seg")
# Tasks whose graph keeps height and width free (a segmentor's logits come back at the input size).
DYNAMIC_HW = ("seg",)


def export_checkpoint_onnx(checkpoint: str | os.PathLike, out: str | os.PathLike,
                           image_size: int | list[int] | None = None, batch: int = 1, opset: int = 13,
                           rtol: float = DEFAULT_RTOL, overwrite: bool = False) -> tuple[OnnxExport, dict]:
    """Fuse ``checkpoint``, export it to ``out`` and compare ORT with PyTorch; returns (report, meta).

    image_size: S or [H, W] (default: the checkpoint's ``image_size``, else 224). ``out`` is claimed once the
    checkpoint is loaded: an earlier export of ours is replaced, any other file only with ``overwrite``.
    """
    deploy, meta = load_fused(checkpoint, EXPORTABLE)
    size = image_size or meta.get("image_size") or 224
    height, width = (size, size) if isinstance(size, int) else (list(size) * 2)[:2]  # S, [S] or [H, W]
    dynamic_hw = meta["task"] in DYNAMIC_HW
    with claim_file(out, "export_onnx", label="--out", overwrite=overwrite) as claimed:
        report = export_checked(deploy, example_inputs(batch, height, width, dynamic_hw), Path(out), opset,
                                dynamic_hw, rtol)
        claimed.seal()
    return report, meta
