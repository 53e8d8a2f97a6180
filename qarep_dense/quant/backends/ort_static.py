"""onnxruntime's own static quantization: a second INT8 backend for CPU deployment.

Float fused model -> ONNX -> ``quant_pre_process`` (shape inference + graph optimization; without
it most convs stay float, REFERENCE §7) -> ``quantize_static`` (QDQ, per-channel symmetric int8
weights, symmetric int8 activations), calibrated on the same preprocessed batches as PTQ.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process
from torch import nn

from ...data.preprocess import Preprocess
from ...deploy.onnx import export_onnx

log = logging.getLogger(__name__)

_METHODS = {"max": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
            "entropy": CalibrationMethod.Entropy}


class PreprocessedReader(CalibrationDataReader):
    """Feeds uint8 batches through ``preprocess`` as {"input": float32 (N, 3, H, W)} dicts."""

    def __init__(self, batches: Sequence[torch.Tensor], preprocess: Preprocess):
        self._batches = list(batches)
        self._preprocess = preprocess
        self._index = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._index >= len(self._batches):
            return None
        x = self._preprocess(self._batches[self._index].cpu())
        self._index += 1
        return {"input": x.numpy().astype(np.float32)}

    def rewind(self) -> None:
        self._index = 0


def ort_quantize_static(fused_model: nn.Module, batches: Sequence[torch.Tensor], preprocess: Preprocess,
                        path: str | Path, calibrator: str = "max", percentile: float = 99.99,
                        per_channel: bool = True, opset: int = 13, pre_process: bool = True) -> Path:
    """Write an ORT-quantized QDQ INT8 model of ``fused_model`` to ``path``.

    batches: uint8 calibration batches (N, 3, H, W). calibrator: "max", "percentile" or "entropy"
    (ORT has no MSE calibrator). per_channel: per-output-channel weight scales (False: one per
    tensor). pre_process: run ``quant_pre_process`` first (False only to measure what it is worth).
    """
    if calibrator not in _METHODS:
        raise ValueError(f"ort_quantize_static: calibrator {calibrator!r} is not available in onnxruntime; "
                         f"expected one of {sorted(_METHODS)}")
    if not batches:
        raise ValueError("ort_quantize_static: no calibration batches")
    path = Path(path)
    device = next(fused_model.parameters()).device
    example = preprocess(batches[0][:1].to(device))
    extra = {"ActivationSymmetric": True, "WeightSymmetric": True}
    if calibrator == "percentile":
        extra["CalibPercentile"] = percentile
    with tempfile.TemporaryDirectory() as tmp:
        float_path = export_onnx(fused_model, example, Path(tmp) / "float.onnx", opset)
        pre_path = Path(tmp) / "float.pre.onnx"
        if pre_process:
            quant_pre_process(str(float_path), str(pre_path))
        else:
            pre_path = float_path
        quantize_static(str(pre_path), str(path), PreprocessedReader(batches, preprocess),
                        quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=_METHODS[calibrator], extra_options=extra)
    log.info("onnxruntime static quantization (%s) written to %s", calibrator, path)
    return path
