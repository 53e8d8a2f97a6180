"""Float ONNX export of a fused (deploy) model, checked against PyTorch in ONNX Runtime."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from .equivalence import remaining_multi_branch


def _flat(outputs) -> list[torch.Tensor]:
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    n_out = len(_flat(model(example)))
    names = ["output"] if n_out == 1 else [f"output_{i}" for i in range(n_out)]
    axes = {name: {0: "batch"} for name in ["input", *names]} if dynamic_batch else None
    torch.onnx.export(model, (example,), str(path), opset_version=opset, dynamo=False, input_names=["input"],
                      output_names=names, dynamic_axes=axes)
    return path


@torch.no_grad()
def verify_onnx(path: str | Path, model: nn.Module, example: torch.Tensor, threads: int = 2) -> float:
    """Max |ORT - PyTorch| over all outputs on ``example``."""
    import onnxruntime as ort  # lazy: deployment-only dependency

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ort_outs = session.run(None, {"input": example.cpu().numpy().astype(np.float32)})
    torch_outs = [t.float().cpu().numpy() for t in _flat(model.eval()(example))]
    return max(float(np.abs(a - b).max()) for a, b in zip(ort_outs, torch_outs))
