"""Float ONNX export of any task's checkpoint, checked in ONNX Runtime (``tools/export_onnx.py``)."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..choices import ONNX_RTOL
from ..deploy.onnx import OnnxExport, example_inputs, export_checked
from ..fileio import claim_file
from .registry import TASKS, get_task, load_fused

__all__ = ["export_checkpoint_onnx"]


def export_checkpoint_onnx(checkpoint: str | os.PathLike, out: str | os.PathLike,
                           image_size: int | list[int] | None = None, batch: int = 1, opset: int = 13,
                           rtol: float = ONNX_RTOL, overwrite: bool = False) -> tuple[OnnxExport, dict]:
    """Fuse ``checkpoint``, export it to ``out`` and compare ORT with PyTorch; returns (report, meta).

    image_size: S or [H, W] (default: the checkpoint's ``image_size``, else 224). A task row with
    ``free_size_export`` (a segmentor) keeps height and width free in the graph. Sizes and batch are checked
    by a PyTorch forward pass before anything is written. ``out`` is claimed once the checkpoint is loaded
    and checked: an earlier export of ours is replaced, any other file only with ``overwrite``; the file is
    written next to ``out`` and moved into place only when the export finished, so a failed export leaves
    no ``out`` behind.
    """
    if batch < 1:
        raise ValueError(f"--batch must be >= 1 (the example batch; the batch axis stays free), got {batch}")
    sizes = [image_size] if isinstance(image_size, int) else list(image_size or [])
    if any(s < 1 for s in sizes):
        raise ValueError(f"--image-size must be >= 1 pixels, got {' '.join(map(str, sizes))}")
    deploy, meta = load_fused(checkpoint, tuple(TASKS))
    recorded = meta.get("image_size") or 224  # S, or [H, W] (a segmentor's crop)
    size = sizes or ([recorded] if isinstance(recorded, int) else list(recorded))
    height, width = (size * 2)[:2]  # [S] or [H, W]
    dynamic_hw = get_task(meta["task"]).free_size_export
    examples = example_inputs(batch, height, width, dynamic_hw)
    try:
        with torch.no_grad():
            deploy(examples[0])
    except (ValueError, RuntimeError) as err:
        raise ValueError(f"--image-size {height} {width} (batch {batch}): {checkpoint} cannot run at this size: "
                         f"{str(err).splitlines()[0]}") from None
    out = Path(out)
    partial = out.with_name(f".{out.name}.partial")
    with claim_file(out, "export_onnx", label="--out", overwrite=overwrite) as claimed:
        try:
            report = export_checked(deploy, examples, partial, opset, dynamic_hw, rtol)
            os.replace(partial, out)
        finally:
            partial.unlink(missing_ok=True)
        report.path = out
        claimed.seal()
    return report, meta
