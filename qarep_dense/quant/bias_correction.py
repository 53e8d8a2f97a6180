"""Empirical bias correction: remove the mean shift that quantization adds to each layer's output.

Quantizing a layer's weights and input changes its output by an error whose mean over the data is
not zero (clipped outliers, the rounding of a few dominant weights): every following layer then sees
a shifted input. Nagel et al. ("Data-Free Quantization Through Weight Equalization and Bias
Correction", ICCV 2019) correct it by adding the expected error to the layer's bias. This is the
empirical form: the expectation is measured on calibration images.

Layers are corrected one at a time in the order the forward pass runs them, each against the float
model's output of the same layer, with every earlier layer already corrected: a layer's correction
thus also absorbs the mean shift its quantized input still carries. Only a bias changes; weights,
scales and the export are as before (ONNX Runtime folds the bias into its int32 accumulator).

Written here because none of the project's libraries has it: pytorch-quantization and onnxruntime's
quantizer do not, and AIMET (which does) is not a dependency.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from ..data.preprocess import Preprocess
from .backends import get_backend
from .swap import QUANT_WRAPPERS

log = logging.getLogger(__name__)


@dataclass
class BiasCorrectionReport:
    """layers: names corrected (float model names, forward order); max_shift: the largest |correction|
    relative to the layer's output scale (max |mean output| over channels), per layer."""

    layers: list[str] = field(default_factory=list)
    max_shift: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"layers": len(self.layers), "largest_relative_shift": max(self.max_shift.values(), default=0.0)}


class _Stop(Exception):
    """Raised by a hook once the layer of interest has run: the rest of the forward pass is not needed."""


def _float_name(model: nn.Module, name: str) -> str:
    """The float model's name of a module of the fake-quant ``model`` (wrappers add a ``.module`` level)."""
    kept, path = [], []
    for part in name.split("."):
        parent = model.get_submodule(".".join(path))
        if not (part == "module" and isinstance(parent, QUANT_WRAPPERS)):
            kept.append(part)
        path.append(part)
    return ".".join(kept)


def _channel_sum(out: torch.Tensor) -> torch.Tensor:
    """Per-channel sum over every dimension but 1 (N, C[, H, W]), in float64."""
    dims = [d for d in range(out.dim()) if d != 1]
    return out.detach().double().sum(dims)


def _execution_order(model: nn.Module, names: Sequence[str], example: torch.Tensor) -> list[str]:
    """``names`` in the order one forward pass first runs them; modules it never runs come last (their
    correction is then zero: they see no data)."""
    ran: list[str] = []
    handles = [model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: ran.append(n)) for n in names]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return list(dict.fromkeys([*ran, *names]))


@torch.no_grad()
def _output_means(model: nn.Module, names: Sequence[str], batches: Sequence[torch.Tensor], preprocess: Preprocess,
                  device, stop_after: str | None = None) -> dict[str, torch.Tensor]:
    """{name: per-channel mean output} over ``batches``; with ``stop_after`` the pass ends after that module."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(module, inputs, out, name):
        sums[name] = sums.get(name, 0) + _channel_sum(out)
        counts[name] = counts.get(name, 0) + out.numel() // out.shape[1]
        if name == stop_after:
            raise _Stop

    handles = [model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: hook(m, i, o, n)) for n in names]
    try:
        for images in batches:
            try:
                model(preprocess(images.to(device)))
            except _Stop:
                pass
    finally:
        for h in handles:
            h.remove()
    return {n: sums[n] / counts[n] for n in sums}


@torch.no_grad()
def correct_bias(qmodel: nn.Module, float_model: nn.Module, batches: Sequence[torch.Tensor], preprocess: Preprocess,
                 backend: str = "pytorch_quantization", device: str | torch.device = "cpu") -> BiasCorrectionReport:
    """Correct the bias of every quantized layer of ``qmodel`` IN PLACE against ``float_model`` (the float
    model ``qmodel`` was quantized from) on ``batches`` of uint8 images. Returns what was done."""
    qb = get_backend(backend)
    qmodel.eval(), float_model.eval()
    qnames = [n for n, m in qmodel.named_modules() if qb.is_quant_layer(m)]
    to_float = {n: _float_name(qmodel, n) for n in qnames}
    if not qnames or not batches:
        return BiasCorrectionReport()
    reference = _output_means(float_model, list(to_float.values()), batches, preprocess, device)
    order = _execution_order(qmodel, qnames, preprocess(batches[0][:1].to(device)))
    report = BiasCorrectionReport()
    for name in order:
        fname = to_float[name]
        if fname not in reference:
            continue
        layer = qmodel.get_submodule(name)
        means = _output_means(qmodel, [name], batches, preprocess, device, stop_after=name)
        if name not in means:
            continue
        shift = (reference[fname] - means[name]).to(layer.weight.dtype)
        if layer.bias is None:
            layer.bias = nn.Parameter(torch.zeros(shift.numel(), dtype=layer.weight.dtype, device=layer.weight.device))
        layer.bias.add_(shift.to(layer.bias.device))
        scale = float(reference[fname].abs().max()) or 1.0
        report.layers.append(fname)
        report.max_shift[fname] = float(shift.abs().max()) / scale
    log.info("bias correction: %d layers, largest shift %.3g of the output scale", len(report.layers),
             max(report.max_shift.values(), default=0.0))
    return report


__all__ = ["BiasCorrectionReport", "correct_bias"]
