"""Post-training quantization of a fused model."""
from __future__ import annotations

import copy
import logging
from dataclasses import asdict, dataclass, field
from typing import Iterable

import torch
from torch import nn

from ..data.preprocess import Preprocess
from ..deploy.equivalence import remaining_multi_branch
from .backends import get_backend
from .bias_correction import BiasCorrectionReport, correct_bias
from .calibration import calibrate, collect_batches
from .config import QuantConfig
from .repair import RepairReport, repair_dead_channels
from .swap import add_output_quantizers, quantize_modules

log = logging.getLogger(__name__)


@dataclass
class PTQReport:
    """What :func:`quantize_ptq` did."""

    config: dict
    quantized: list[str]
    act_amax: dict[str, float]
    repair: RepairReport | None = None  # None: no repair was asked for
    calib_seconds: float = 0.0
    calib_images: int = 0
    output_quantized: list[str] = field(default_factory=list)  # modules given an output/input quantizer
    bias_correction: BiasCorrectionReport | None = None  # None: not asked for

    def as_dict(self) -> dict:
        out = asdict(self)
        out["repair"] = self.repair.as_dict() if self.repair is not None else None
        out["bias_correction"] = self.bias_correction.as_dict() if self.bias_correction is not None else None
        return out


def check_fused(model: nn.Module, where: str = "quantize_ptq") -> None:
    """Refuse a model that still has multi-branch blocks (PTQ of the paper is on the deploy model)."""
    leftover = remaining_multi_branch(model)
    if leftover:
        shown = ", ".join(leftover[:4]) + (" ..." if len(leftover) > 4 else "")
        raise ValueError(f"{where}: the model is not fused: it still has {len(leftover)} multi-branch blocks "
                         f"({shown}). Fuse it first with qarep_dense.deploy.reparameterize(model).")


def quantize_ptq(fused_model: nn.Module, calib_loader: Iterable, preprocess: Preprocess,
                 config: QuantConfig | None = None, device: str | torch.device = "cpu",
                 progress: bool = True) -> tuple[nn.Module, PTQReport]:
    """Fake-quantize a copy of ``fused_model`` and calibrate it; ``fused_model`` is not changed.

    calib_loader: yields uint8 image batches (N, 3, H, W), alone or as the first item of a tuple;
        the first ``config.num_calib_batches`` are used.
    preprocess: the SAME ``Preprocess`` evaluation uses.
    With ``config.repair_dead_channels`` one more batch of the loader, never used for calibration,
    is the repair's held-out batch (see :mod:`~qarep_dense.quant.repair`).
    With ``config.quantize_conv_outputs`` the first image of the first batch is traced once to find
    the convs that need their own output quantizer (see :func:`~qarep_dense.quant.swap.add_output_quantizers`).
    With ``config.bias_correction`` the calibrated model's biases are then corrected on the calibration
    batches against the float model (after the repair, when there is one).
    Returns (quantized model in eval mode on ``device``, :class:`PTQReport`).
    """
    config = (config or QuantConfig()).validate()
    check_fused(fused_model)
    backend = get_backend(config.backend)
    want = config.num_calib_batches + int(config.repair_dead_channels)
    batches = collect_batches(calib_loader, want)
    heldout = batches[config.num_calib_batches:]
    batches = batches[:config.num_calib_batches]
    model = copy.deepcopy(fused_model).to(device).eval()
    repair = None
    if config.repair_dead_channels:
        repair = repair_dead_channels(model, batches, preprocess, device, progress, heldout=heldout)
    reference = copy.deepcopy(model) if config.bias_correction else None
    quantized = quantize_modules(model, backend, config)
    if not quantized:
        raise ValueError("quantize_ptq: nothing to quantize (no Conv2d/ConvTranspose2d/Linear outside skip_layers)")
    outputs = []
    if config.quantize_conv_outputs:
        outputs = add_output_quantizers(model, backend, config, preprocess(batches[0][:1].to(device)))
    amax, seconds = calibrate(model, backend, batches, preprocess, config, device, progress)
    corrected = None
    if reference is not None:
        corrected = correct_bias(model, reference, batches, preprocess, config.backend, device)
    log.info("PTQ %s, %s calibration on %d batches: %d modules quantized in %.1f s", config.scheme,
             config.calibrator, len(batches), len(quantized), seconds)
    report = PTQReport(config.as_dict(), quantized, amax, repair, seconds, sum(int(b.shape[0]) for b in batches),
                       outputs, corrected)
    return model.eval(), report


def rebuild_fakequant(fused_model: nn.Module, config: QuantConfig, example_input: torch.Tensor, state: dict,
                      device: str | torch.device = "cpu") -> nn.Module:
    """The fake-quant model :func:`quantize_ptq` made from ``fused_model`` with ``config``, restored from its
    state dict ``state`` (weights after any float transform, corrected biases, calibrated ranges) without
    calibration data. ``example_input``: one preprocessed input of the model's size, traced (values
    unused) to place the output quantizers exactly as ``quantize_ptq`` did. ``fused_model`` is not changed.
    """
    config = config.validate()
    check_fused(fused_model, "rebuild_fakequant")
    backend = get_backend(config.backend)
    model = copy.deepcopy(fused_model).to(device).eval()
    quantize_modules(model, backend, config)
    if config.quantize_conv_outputs:
        add_output_quantizers(model, backend, config, example_input.to(device))
    backend.load_calibrated(model, {k: v.to(device) for k, v in state.items()})
    return model.eval()


QUANTIZED_SIDES = ("weights", "activations")


def quantize_one_side(qmodel: nn.Module, side: str, backend_name: str | None = None) -> nn.Module:
    """Keep only the ``side`` ("weights" or "activations") of a calibrated fake-quant model in INT8, in place.

    Which side of W8A8 breaks a model: the other side's quantizers are switched off (float), nothing is
    recalibrated. A quantizer calibration left without a range stays off. Returns ``qmodel``.
    """
    if side not in QUANTIZED_SIDES:
        raise ValueError(f"quantize_one_side: side must be one of {QUANTIZED_SIDES}, got {side!r}")
    backend = get_backend(backend_name or QuantConfig().backend)
    weights = {id(backend.layer_quantizers(m)["weight"]) for m in qmodel.modules() if backend.is_quant_layer(m)}
    for m in qmodel.modules():
        if backend.is_quantizer(m):
            on = (id(m) in weights) == (side == "weights")
            backend.set_enabled(m, on and backend.amax(m) is not None)
    return qmodel
