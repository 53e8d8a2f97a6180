"""Float ONNX export of a fused (deploy) model, checked against PyTorch in ONNX Runtime.

The check is relative (:func:`qarep_dense.deploy.equivalence.normalized_max_error`): an exact export of
a detector whose box outputs are ~1e4 differs from PyTorch by ~1e-3 in absolute terms (float32 rounding
of large numbers), which says nothing about the export. A segmentor is exported with free height and
width and checked at a second input size, so a size baked into the graph (a resize to the traced
shape) is caught here and not on a user's first image of another size.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..choices import ONNX_RTOL
from .equivalence import normalized_max_error, remaining_multi_branch
from .ort import _flat, export_graph, make_session, run_session


@torch.no_grad()
def export_onnx(model: nn.Module, example: torch.Tensor, path: str | Path, opset: int = 13,
                dynamic_batch: bool = True, dynamic_hw: bool = False) -> Path:
    """Export an eval-mode deploy model; input "input" (N, 3, H, W), outputs "output" or "output_i".

    dynamic_hw: leave the input's height and width free (segmentors: logits come back at input size).
    Refuses a model that still has multi-branch blocks: exporting the training form ships a
    slower graph that no INT8 toolchain fuses (fuse with ``reparameterize`` first).
    """
    leftover = remaining_multi_branch(model)
    if leftover:
        raise ValueError(f"export_onnx: the model is not fused ({len(leftover)} multi-branch blocks, e.g. "
                         f"{leftover[0]}); call qarep_dense.layers.reparameterize(model) first")
    return export_graph(model.eval(), example, path, opset, dynamic_batch, dynamic_hw=dynamic_hw)


@dataclass
class OnnxCheck:
    """ORT vs PyTorch on one input: its shape, the normalized error (see :data:`qarep_dense.choices.ONNX_RTOL`)
    and max |diff|."""

    input_shape: list[int]
    normalized_error: float
    max_abs_diff: float


@dataclass
class OnnxExport:
    """An exported file and its checks; ``ok`` when every check's normalized error is at most ``rtol``."""

    path: Path
    rtol: float
    dynamic_hw: bool
    checks: list[OnnxCheck] = field(default_factory=list)

    @property
    def worst(self) -> float:
        return max(c.normalized_error for c in self.checks)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and self.worst <= self.rtol

    def as_dict(self) -> dict:
        return {"onnx": str(self.path), "rtol": self.rtol, "dynamic_hw": self.dynamic_hw, "ok": self.ok,
                "checks": [asdict(c) for c in self.checks]}


@torch.no_grad()
def check_onnx(path: str | Path, model: nn.Module, example: torch.Tensor, threads: int = 2) -> OnnxCheck:
    """ORT outputs of the file at ``path`` vs ``model``'s on ``example`` (N, 3, H, W)."""
    ort_outs = run_session(make_session(path, threads), example)
    torch_outs = [t.float().cpu().numpy() for t in _flat(model.eval()(example))]
    if len(ort_outs) != len(torch_outs):
        raise ValueError(f"{path}: {len(ort_outs)} ONNX outputs but the model returns {len(torch_outs)}")
    for a, b in zip(ort_outs, torch_outs):
        if a.shape != b.shape:  # e.g. a segmentor exported with its height and width baked in
            raise ValueError(f"{path}: ONNX output shape {list(a.shape)} != PyTorch {list(b.shape)} "
                             f"on input {list(example.shape)}")
    diff = max(float(np.abs(a.astype(np.float64) - b).max()) for a, b in zip(ort_outs, torch_outs))
    return OnnxCheck(list(example.shape), normalized_max_error(ort_outs, torch_outs), diff)


def verify_onnx(path: str | Path, model: nn.Module, example: torch.Tensor, threads: int = 2) -> float:
    """Max |ORT - PyTorch| over all outputs on ``example`` (absolute; :func:`check_onnx` gives the relative error)."""
    return check_onnx(path, model, example, threads).max_abs_diff


def export_checked(model: nn.Module, examples: Sequence[torch.Tensor], path: str | Path, opset: int = 13,
                   dynamic_hw: bool = False, rtol: float = ONNX_RTOL, threads: int = 2) -> OnnxExport:
    """Export ``model`` (fused, eval) traced on ``examples[0]`` and check it in ORT on every example.

    With ``dynamic_hw`` the further examples should differ in height/width (and batch) from the first,
    so the check proves the graph is not tied to the traced shape. Returns the report; the caller
    decides what a failed check means (the file stays, for inspection).
    """
    if not examples:
        raise ValueError("export_checked: at least one example input is needed")
    path = export_onnx(model, examples[0], path, opset, dynamic_batch=True, dynamic_hw=dynamic_hw)
    report = OnnxExport(Path(path), rtol, dynamic_hw)
    report.checks = [check_onnx(path, model, x, threads) for x in examples]
    return report


def example_inputs(batch: int, height: int, width: int, dynamic_hw: bool, stride: int = 32,
                   seed: int = 0) -> list[torch.Tensor]:
    """Two random inputs for :func:`export_checked`: (batch, 3, H, W) to trace, then a second one with
    one more image and, when ``dynamic_hw``, another height and width (H + stride, W + 2 * stride:
    multiples of the backbone's stride stay valid for every output stride) to check the free axes."""
    g = torch.Generator().manual_seed(seed)
    second = (height + stride, width + 2 * stride) if dynamic_hw else (height, width)
    return [torch.randn(batch, 3, height, width, generator=g), torch.randn(batch + 1, 3, *second, generator=g)]
