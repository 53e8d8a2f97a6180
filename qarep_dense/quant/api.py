"""Public quantization API, in one place.

    qmodel, report = quantize_ptq(fused, calib_loader, preprocess, QuantConfig(calibrator="percentile"))
    path = export_qdq_onnx(qmodel, preprocess(images), "model.onnx")
    ort = check_ort_int8(path, preprocess(images), qmodel(preprocess(images)))

No quantization library or onnx/onnxruntime is imported until a function needs it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from torch import nn

from ..data.preprocess import Preprocess
from ..deploy.ort import KernelChoice, choose_int8_kernels
from .calibration import collect_batches
from .config import CALIBRATORS, QuantConfig
from .export import OrtModule, OrtReport, check_ort_int8, export_qdq_onnx
from .bias_correction import BiasCorrectionReport, correct_bias
from .ptq import QUANTIZED_SIDES, PTQReport, check_fused, quantize_one_side, quantize_ptq, rebuild_fakequant
from .qat import fold_after_qat, prepare_qat, qat_finetune
from .repair import RepairEntry, RepairReport, find_dead_inputs, repair_dead_channels
from .sensitivity import LayerSensitivity, quantize_partial, rank_layers, sensitivity


def ort_quantize_static(fused_model: nn.Module, calib_loader: Iterable, preprocess: Preprocess,
                        path: str | Path, config: QuantConfig | None = None, per_channel: bool = True,
                        pre_process: bool = True) -> Path:
    """onnxruntime's own static INT8 quantization (QDQ, symmetric; per-channel weights unless
    ``per_channel`` is False) of a fused model after ``quant_pre_process`` (unless ``pre_process`` is
    False), calibrated on the same preprocessed batches as :func:`quantize_ptq` (``config.calibrator``:
    max, percentile or entropy; ``config.num_calib_batches``). Returns the ONNX path."""
    from .backends.ort_static import ort_quantize_static as _quantize

    config = (config or QuantConfig()).validate()
    check_fused(fused_model, "ort_quantize_static")
    batches = collect_batches(calib_loader, config.num_calib_batches)
    return _quantize(fused_model.eval(), batches, preprocess, path, config.calibrator, config.percentile,
                     per_channel=per_channel, pre_process=pre_process)


__all__ = [
    "CALIBRATORS", "QuantConfig", "PTQReport", "quantize_ptq", "check_fused", "rebuild_fakequant",
    "QUANTIZED_SIDES", "quantize_one_side",
    "BiasCorrectionReport", "correct_bias",
    "prepare_qat", "qat_finetune", "fold_after_qat",
    "LayerSensitivity", "sensitivity", "rank_layers", "quantize_partial",
    "export_qdq_onnx", "check_ort_int8", "OrtReport", "OrtModule", "ort_quantize_static",
    "KernelChoice", "choose_int8_kernels",
    "RepairEntry", "RepairReport", "find_dead_inputs", "repair_dead_channels",
]
