"""Per-layer quantization sensitivity, fast: quantize one unit at a time, measure output error.

A full-metric sweep per layer (YOLOv6's partial quantization re-runs COCO eval per layer) is
slow; the relative MSE of the model outputs on a few calibration batches ranks layers in
seconds. An optional task-metric callback gives the slow, exact ranking when wanted.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from typing import Callable, Iterable, Sequence

import torch
from torch import nn
from tqdm import tqdm

from ..data.preprocess import Preprocess
from .backends import QuantBackend, get_backend
from .calibration import collect_batches, flatten_outputs, forward_batches
from .config import QuantConfig
from .ptq import PTQReport, quantize_ptq
from .swap import quant_units, set_quantizers_enabled

log = logging.getLogger(__name__)


@dataclass
class LayerSensitivity:
    """Error when only ``name`` is quantized: relative output MSE, and the metric drop if measured."""

    name: str
    rel_mse: float
    metric: float | None = None
    metric_drop: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def relative_mse(outputs: Sequence, reference: Sequence) -> float:
    """sum ||y - y_ref||^2 / sum ||y_ref||^2 over batches and over every tensor of each output."""
    num = den = 0.0
    for out, ref in zip(outputs, reference):
        for a, b in zip(flatten_outputs(out), flatten_outputs(ref)):
            num += float(((a.float() - b.float()) ** 2).sum())
            den += float((b.float() ** 2).sum())
    return num / den if den > 0 else float("inf") if num > 0 else 0.0


def _only(model: nn.Module, backend: QuantBackend, quantizers: list[nn.Module]) -> None:
    set_quantizers_enabled(model, backend, False)
    for q in quantizers:
        backend.set_enabled(q, backend.amax(q) is not None)


def rank_layers(qmodel: nn.Module, batches: Sequence[torch.Tensor], preprocess: Preprocess,
                device: str | torch.device = "cpu", backend: str = "pytorch_quantization",
                metric_fn: Callable[[nn.Module], float] | None = None,
                progress: bool = True) -> list[LayerSensitivity]:
    """Rank the quantized units of a calibrated ``qmodel``, most sensitive first.

    Without ``metric_fn`` the key is the relative output MSE; with it (higher = better, e.g. top-1)
    the key is the metric drop versus the float model. The model's quantizers are all re-enabled
    at the end.
    """
    b = get_backend(backend)
    units = quant_units(qmodel, b)
    qmodel.eval()
    try:
        set_quantizers_enabled(qmodel, b, False)
        reference = forward_batches(qmodel, batches, preprocess, device, progress=False, keep_outputs=True)
        float_metric = metric_fn(qmodel) if metric_fn else None
        results = []
        for name, quantizers in tqdm(units.items(), desc="sensitivity", disable=not progress, leave=False):
            _only(qmodel, b, quantizers)
            outs = forward_batches(qmodel, batches, preprocess, device, progress=False, keep_outputs=True)
            entry = LayerSensitivity(name, relative_mse(outs, reference))
            if metric_fn:
                entry.metric = metric_fn(qmodel)
                entry.metric_drop = float_metric - entry.metric
            results.append(entry)
    finally:
        set_quantizers_enabled(qmodel, b, True)
    key = (lambda e: e.metric_drop) if metric_fn else (lambda e: e.rel_mse)
    return sorted(results, key=key, reverse=True)


def sensitivity(fused_model: nn.Module, calib_loader: Iterable, preprocess: Preprocess,
                config: QuantConfig | None = None, device: str | torch.device = "cpu", num_batches: int = 2,
                metric_fn: Callable[[nn.Module], float] | None = None,
                progress: bool = True) -> list[LayerSensitivity]:
    """Calibrate once (``config``), then rank every quantized unit on ``num_batches`` calibration batches."""
    qmodel, _ = quantize_ptq(fused_model, calib_loader, preprocess, config, device, progress)
    batches = collect_batches(calib_loader, num_batches)
    return rank_layers(qmodel, batches, preprocess, device, (config or QuantConfig()).backend, metric_fn, progress)


def quantize_partial(fused_model: nn.Module, calib_loader: Iterable, preprocess: Preprocess, keep_float: int,
                     config: QuantConfig | None = None, device: str | torch.device = "cpu",
                     ranking: list[LayerSensitivity] | None = None,
                     progress: bool = True) -> tuple[nn.Module, PTQReport, list[LayerSensitivity]]:
    """"Partial" PTQ: leave the ``keep_float`` most sensitive units in float, quantize the rest.

    Returns (quantized model, report, ranking used). Pass ``ranking`` to reuse an earlier one.
    """
    config = config or QuantConfig()
    if keep_float < 0:
        raise ValueError(f"quantize_partial: keep_float must be >= 0, got {keep_float}")
    ranking = ranking or sensitivity(fused_model, calib_loader, preprocess, config, device, progress=progress)
    skip = tuple(dict.fromkeys([*config.skip_layers, *(e.name for e in ranking[:keep_float])]))
    qmodel, report = quantize_ptq(fused_model, calib_loader, preprocess, replace(config, skip_layers=skip), device,
                                  progress)
    return qmodel, report, ranking
