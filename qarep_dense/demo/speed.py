"""FP32 vs onnxruntime INT8 latency of one fused checkpoint, measured side by side in one process.

The FP32 graph and the calibrated QDQ graph are exported from the same fused model and timed in
interleaved runs (so load from other processes hits both alike); the integer convs are counted in
ORT's optimized graph and the INT8 kernels are chosen per machine (``deploy.ort.choose_int8_kernels``).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def measure_speed(checkpoint: str | os.PathLike, task: str, out_dir: str | os.PathLike, data: str | None = None,
                  batch_size: int = 8, repeats: int = 20, threads: int = 2, calib_batches: int = 2) -> dict:
    """{"fp32_ms", "int8_ms", "speedup", "integer_convs", "convs", "kernels", "kernel_reason", "batch"}.

    checkpoint: a fused or train-form checkpoint of ``task``; data: the dataset root its evaluator needs
    (classification), None to use the training config's (detection). Writes OUT_DIR/fp32.onnx and
    OUT_DIR/int8_qdq.onnx.
    """
    from ..tasks.quant_check import CheckOptions, QuantConfig, quantize_and_check
    from ..tasks.registry import get_task, load_fused
    from ..tasks.splits import request_for

    model, meta = load_fused(checkpoint, task)
    evaluator = get_task(task).make_evaluator(request_for(checkpoint, meta, data, batch_size, progress=False))
    out = Path(out_dir)
    options = CheckOptions(evaluate=False, ort_metric=False, onnx_path=out / "int8_qdq.onnx", latency=True,
                           fp32_onnx_path=out / "fp32.onnx", repeats=repeats, threads=threads,
                           check_images=batch_size, progress=False)
    report = quantize_and_check(model, evaluator.calibration_loader(), evaluator.preprocess,
                                QuantConfig(num_calib_batches=calib_batches), evaluator, options)
    return {**{k: report.latency[k] for k in ("fp32_ms", "int8_ms", "speedup")},
            "integer_convs": report.integer_convs, "convs": report.convs, "kernels": report.kernels,
            "kernel_reason": report.ort.kernel_reason, "batch": report.latency["batch"], "threads": threads,
            "repeats": repeats}
