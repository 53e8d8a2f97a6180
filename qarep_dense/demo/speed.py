"""FP32 vs onnxruntime INT8 latency of one fused checkpoint, measured side by side in one process.

The FP32 graph and the calibrated QDQ graph are exported from the same fused model and timed in
interleaved runs (so load from other processes hits both alike); the integer convs are counted in
ORT's optimized graph and the INT8 kernels are chosen per machine (``deploy.ort.choose_int8_kernels``).
"""
from __future__ import annotations

import logging
import os
import statistics
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def _median_ms(sessions: dict, batch, repeats: int) -> dict[str, float]:
    from ..deploy.ort import run_session

    times: dict[str, list[float]] = {k: [] for k in sessions}
    for s in sessions.values():  # warm-up
        run_session(s, batch)
    for _ in range(repeats):
        for key, s in sessions.items():
            start = time.perf_counter()
            run_session(s, batch)
            times[key].append((time.perf_counter() - start) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def measure_speed(checkpoint: str | os.PathLike, task: str, out_dir: str | os.PathLike, data: str | None = None,
                  batch_size: int = 8, repeats: int = 20, threads: int = 2, calib_batches: int = 2) -> dict:
    """{"fp32_ms", "int8_ms", "speedup", "integer_convs", "convs", "kernels", "kernel_reason", "batch"}.

    checkpoint: a fused or train-form checkpoint of ``task``; data: the dataset root its evaluator needs
    (classification), None to use the training config's (detection).
    """
    from ..deploy import reparameterize
    from ..deploy.ort import choose_int8_kernels, export_graph, make_session
    from ..evaluation.evaluators import EvalRequest
    from ..quant import QuantConfig, export_qdq_onnx, quantize_ptq
    from ..quant.calibration import batch_images
    from ..quant.export import kernel_counts
    from ..tasks.registry import load_model, task_module

    model, meta = load_model(checkpoint, task)
    if not meta.get("fused"):
        model = reparameterize(model)
    model.eval()
    request = EvalRequest(Path(checkpoint), meta, Path(data) if data else None, None, batch_size, 0, "cpu",
                          progress=False)
    evaluator = task_module(task).make_evaluator(request)
    qmodel, _ = quantize_ptq(model, evaluator.calibration_loader(), evaluator.preprocess,
                             QuantConfig(num_calib_batches=calib_batches), progress=False)
    example = evaluator.preprocess(batch_images(next(iter(evaluator.calibration_loader()))))[:batch_size]
    out = Path(out_dir)
    fp32_path = export_graph(model, example, out / "fp32.onnx")
    int8_path = export_qdq_onnx(qmodel, example, out / "int8_qdq.onnx")
    with torch.no_grad():
        reference = qmodel(example)
    choice = choose_int8_kernels(int8_path, example, reference, threads=threads)
    _, convs, integer, _ = kernel_counts(int8_path, threads)
    sessions = {"fp32": make_session(fp32_path, threads),
                "int8": make_session(int8_path, threads, precise_int8=choice.kernels == "precise")}
    ms = _median_ms(sessions, example, repeats)
    return {"fp32_ms": ms["fp32"], "int8_ms": ms["int8"], "speedup": ms["fp32"] / ms["int8"],
            "integer_convs": integer, "convs": convs, "kernels": choice.kernels, "kernel_reason": choice.reason,
            "batch": int(example.shape[0]), "threads": threads, "repeats": repeats}
