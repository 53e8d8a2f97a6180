"""Float ONNX export of a fused (deploy) model, checked against PyTorch in ONNX Runtime."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from .equivalence import remaining_multi_branch
from .ort import _flat, export_graph, make_session, run_session


@torch.no_grad()
def export_onnx(model: nn.Module, example: torch.Tensor, path: str | Path, opset: int = 13,
                dynamic_batch: bool = True) -> Path:
    """Export an eval-mode deploy model; input "input" (N, 3, H, W), outputs "output" or "output_i".

    Refuses a model that still has multi-branch blocks: exporting the training form ships a
    slower graph that no INT8 toolchain fuses (fuse with ``reparameterize`` first).
    """
    leftover = remaining_multi_branch(model)
    if leftover:
        raise ValueError(f"export_onnx: the model is not fused ({len(leftover)} multi-branch blocks, e.g. "
                         f"{leftover[0]}); call qarep_dense.layers.reparameterize(model) first")
    return export_graph(model.eval(), example, path, opset, dynamic_batch)


@torch.no_grad()
def verify_onnx(path: str | Path, model: nn.Module, example: torch.Tensor, threads: int = 2) -> float:
    """Max |ORT - PyTorch| over all outputs on ``example``."""
    ort_outs = run_session(make_session(path, threads), example)
    torch_outs = [t.float().cpu().numpy() for t in _flat(model.eval()(example))]
    return max(float(np.abs(a - b).max()) for a, b in zip(ort_outs, torch_outs))
