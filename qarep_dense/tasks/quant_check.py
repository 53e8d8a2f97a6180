"""The one INT8 pipeline every tool, the main job, inference and the benchmarks call:

    quantize (calibrator, optional dead-channel repair, optional float layers) -> evaluate the fake-quant
    model -> export QDQ ONNX -> choose ORT's INT8 kernels for this CPU -> run it in ORT (metric, integer
    conv count, agreement with fake quant) -> optional FP32 vs INT8 latency, side by side.

    fused, meta = load_fused("deploy.pt", "cls")
    evaluator = get_task("cls").make_evaluator(EvalRequest(Path("deploy.pt"), meta, Path("data/digits")))
    report = quantize_and_check(fused, evaluator.calibration_loader(), evaluator.preprocess,
                                QuantConfig(calibrator="entropy"), evaluator,
                                CheckOptions(onnx_path=Path("out/model_int8.onnx")))
    print(report.fp32, report.int8, report.int8_ort, report.integer_convs, report.convs)

The check itself, :func:`check_int8` (export QDQ, ORT's kernel choice, integer-conv count, agreement with
fake quant, ORT metric, latency), takes any fake-quant model: ``quantize_and_check`` calls it after PTQ,
``tools/quantize.py`` calls it once on the model it ships (PTQ, partial PTQ or QAT alike).
"""
from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from ..data.preprocess import Preprocess
from ..evaluation.evaluators import Evaluator
from ..quant import CALIBRATORS, OrtReport, PTQReport, QuantConfig, check_ort_int8, export_qdq_onnx, quantize_ptq
from ..quant.calibration import batch_images

log = logging.getLogger(__name__)
__all__ = ["CALIBRATORS", "CheckOptions", "Int8Check", "QuantConfig", "QuantReport", "check_batch", "check_int8",
           "measure_latency", "quantize_and_check", "quantize_ptq"]


@dataclass(frozen=True)
class CheckOptions:
    """What :func:`quantize_and_check` does after quantizing, and where.

    evaluate: score the fake-quant model with the evaluator (skipped without one).
    ort: export QDQ ONNX to ``onnx_path`` and check it in onnxruntime (kernels chosen per ``ort_precision``:
        "auto" per machine, "default" U8S8, "precise" U8U8); ort_metric: also score the ORT model.
    ort_pre_process: run ORT's quant_pre_process first (True), never (False, the file checked is the file
        shipped), or only when a conv did not become an integer kernel (None); never for a free-size export.
    onnx_path: the QDQ file (the check's side files are written next to it); None: a temporary folder,
        removed afterwards (then ``ort_metric`` and ``latency`` still run, before it is removed).
    latency: time the FP32 graph (written to ``fp32_onnx_path``, default ``<onnx stem>.fp32.onnx``) and
        the INT8 graph on the check batch, interleaved, ``repeats`` times each, on ``threads`` threads.
    check_images: images of the first calibration batch used as the export / agreement / latency batch.
    dynamic_hw: export with free height and width (a segmentor run on images of any size).
    """

    evaluate: bool = True
    ort: bool = True
    ort_metric: bool = True
    ort_precision: str = "auto"
    ort_pre_process: bool | None = None
    onnx_path: Path | None = None
    latency: bool = False
    fp32_onnx_path: Path | None = None
    repeats: int = 20
    threads: int = 2
    check_images: int = 8
    dynamic_hw: bool = False
    device: str = "cpu"
    progress: bool = True


@dataclass
class QuantReport:
    """What :func:`quantize_and_check` measured. Metrics are the evaluator's headline (``metric``), None
    when not measured; ``drop`` = fp32 - int8. ``model`` (the calibrated fake-quant model) is not part of
    :meth:`to_dict`."""

    scheme: str
    calibrator: str
    metric: str | None = None
    fp32: float | None = None
    int8: float | None = None
    int8_metrics: dict[str, float] = field(default_factory=dict)
    int8_ort: float | None = None
    ptq: PTQReport | None = None
    onnx: str | None = None
    ort: OrtReport | None = None
    latency: dict[str, Any] | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    model: nn.Module | None = field(default=None, repr=False, compare=False)

    @property
    def drop(self) -> float | None:
        return None if self.fp32 is None or self.int8 is None else self.fp32 - self.int8

    @property
    def integer_convs(self) -> int | None:
        return None if self.ort is None else self.ort.integer_convs

    @property
    def convs(self) -> int | None:
        return None if self.ort is None else self.ort.convs_total

    @property
    def kernels(self) -> str | None:
        return None if self.ort is None else self.ort.kernels

    def to_dict(self) -> dict:
        return {"scheme": self.scheme, "calibrator": self.calibrator, "metric": self.metric, "fp32": self.fp32,
                "int8": self.int8, "drop": self.drop, "int8_metrics": dict(self.int8_metrics),
                "int8_ort": self.int8_ort, "integer_convs": self.integer_convs, "convs": self.convs,
                "kernels": self.kernels, "onnx": self.onnx,
                "onnx_scored": None if self.ort is None else Path(self.ort.onnx_path).name,
                "ptq": None if self.ptq is None else self.ptq.as_dict(),
                "ort": None if self.ort is None else self.ort.as_dict(),
                "latency": self.latency, "seconds": dict(self.seconds)}


def quantize_and_check(fused: nn.Module, calib: Iterable, preprocess: Preprocess, config: QuantConfig | None = None,
                       evaluator: Evaluator | None = None, options: CheckOptions | None = None,
                       fp32: float | None = None) -> QuantReport:
    """Quantize ``fused`` (a deploy-form float model, not changed) and check the INT8 model end to end.

    calib: calibration batches or a loader of them (uint8 (N, 3, H, W), alone or first of a tuple); the
        first ``config.num_calib_batches`` are used, one more with ``config.repair_dead_channels``.
    preprocess: the evaluation's uint8 -> float step (the evaluator's, when there is one).
    config: calibrator, bits, repair, float layers (``skip_layers``); default: W8A8 max.
    evaluator: scores FP32 / INT8 / ORT INT8 on the validation split; None (e.g. a user's unlabelled
        images): no metric, only the export and the ORT check.
    fp32: the FP32 metric when the caller already has it (evaluated here otherwise, with an evaluator).
    """
    config = config or QuantConfig()
    opts = options or CheckOptions()
    report = QuantReport(config.scheme, config.calibrator, metric=evaluator.metric_name if evaluator else None)
    scoring = evaluator is not None and opts.evaluate
    if scoring:
        report.fp32 = fp32 if fp32 is not None else _timed(report.seconds, "fp32", lambda: _score(evaluator, fused))
    report.model, report.ptq = _timed(report.seconds, "quantize", lambda: quantize_ptq(
        fused, calib, preprocess, config, opts.device, progress=opts.progress))
    if scoring:
        report.int8_metrics = _timed(report.seconds, "int8", lambda: evaluator.evaluate(report.model))
        report.int8 = float(report.int8_metrics[evaluator.metric_name])
    if opts.ort:
        example = check_batch(calib, preprocess, opts)
        check = check_int8(report.model, fused, example, evaluator, opts)
        report.onnx, report.ort, report.int8_ort, report.latency = check.onnx, check.ort, check.int8_ort, check.latency
        report.seconds.update(check.seconds)
    return report


def check_batch(calib: Iterable, preprocess: Preprocess, opts: CheckOptions) -> torch.Tensor:
    """The export / agreement / latency batch: the first ``opts.check_images`` images of the first calibration
    batch, preprocessed, on ``opts.device``."""
    return preprocess(batch_images(next(iter(calib))).to(opts.device))[:opts.check_images]


def _score(evaluator: Evaluator, model: nn.Module) -> float:
    return float(evaluator.evaluate(model)[evaluator.metric_name])


def _timed(seconds: dict[str, float], key: str, fn):
    start = time.perf_counter()
    value = fn()
    seconds[key] = time.perf_counter() - start
    return value


@dataclass
class Int8Check:
    """What :func:`check_int8` found. ``onnx``: the QDQ file written (None when it was written to a temporary
    folder, since removed); ``ort.onnx_path``: the file ONNX Runtime ran and scored (the ``.pre.onnx`` when
    ORT's pre-processing ran); ``int8_ort``: the evaluator's headline metric of that file (None without an
    evaluator or with ``ort_metric`` off); ``latency``: :func:`measure_latency` (None unless asked for)."""

    onnx: str | None
    ort: OrtReport
    int8_ort: float | None = None
    latency: dict[str, Any] | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def scored_file(self) -> str:
        """The name of the ONNX file ORT ran (``model_int8.onnx`` or ``model_int8.pre.onnx``)."""
        return Path(self.ort.onnx_path).name


def check_int8(qmodel: nn.Module, fused: nn.Module, example: torch.Tensor, evaluator: Evaluator | None = None,
               options: CheckOptions | None = None) -> Int8Check:
    """The one INT8 check, for any fake-quant model (PTQ, partial PTQ, QAT): export ``qmodel`` to QDQ ONNX,
    let ORT choose its INT8 kernels for this CPU, count the convs that became integer kernels, compare ORT's
    outputs with ``qmodel``'s on ``example`` (a preprocessed batch), then (``options``) score the ORT model with
    ``evaluator`` and time it against ``fused`` (the float model, exported as FP32 ONNX)."""
    opts = options or CheckOptions()
    if opts.onnx_path is not None:
        return _check_at(qmodel, fused, example, evaluator, opts, Path(opts.onnx_path))
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        check = _check_at(qmodel, fused, example, evaluator, opts, Path(tmp) / "model_int8.onnx")
    check.onnx = None  # removed with the folder
    return check


def _check_at(qmodel: nn.Module, fused: nn.Module, example: torch.Tensor, evaluator: Evaluator | None,
              opts: CheckOptions, onnx_path: Path) -> Int8Check:
    from ..deploy.ort import OrtModule

    seconds: dict[str, float] = {}
    start = time.perf_counter()
    path = export_qdq_onnx(qmodel, example, onnx_path, dynamic_hw=opts.dynamic_hw)
    with torch.no_grad():
        reference = qmodel(example)
    # ORT's shape pre-processing needs fixed spatial sizes: a free-size export is checked as it is.
    ort = check_ort_int8(path, example, reference, threads=opts.threads,
                         pre_process=False if opts.dynamic_hw else opts.ort_pre_process, precision=opts.ort_precision)
    seconds["ort_check"] = time.perf_counter() - start
    check = Int8Check(str(path), ort, seconds=seconds)
    precise = ort.kernels == "precise"
    if evaluator is not None and opts.ort_metric:
        ort_model = OrtModule(ort.onnx_path, threads=opts.threads, precise_int8=precise)
        check.int8_ort = _timed(seconds, "int8_ort", lambda: _score(evaluator, ort_model))
    if opts.latency:
        fp32_path = opts.fp32_onnx_path or onnx_path.with_suffix(".fp32.onnx")
        check.latency = measure_latency(fused, example, fp32_path, Path(ort.onnx_path), precise, opts.threads,
                                        opts.repeats)
    return check


def measure_latency(fused: nn.Module, example: torch.Tensor, fp32_path: Path, int8_path: Path, precise_int8: bool,
                    threads: int = 2, repeats: int = 20) -> dict[str, Any]:
    """{"fp32_ms", "int8_ms", "speedup", "batch", "threads", "repeats"}: median onnxruntime latency of the FP32
    graph of ``fused`` (exported to ``fp32_path``) and of the INT8 graph, timed in interleaved runs so that
    load from other processes hits both alike."""
    from ..deploy.ort import export_graph, make_session, run_session

    export_graph(fused.eval(), example, fp32_path)
    sessions = {"fp32": make_session(fp32_path, threads), "int8": make_session(int8_path, threads,
                                                                              precise_int8=precise_int8)}
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for s in sessions.values():  # warm-up
        run_session(s, example)
    for _ in range(repeats):
        for key, s in sessions.items():
            start = time.perf_counter()
            run_session(s, example)
            times[key].append((time.perf_counter() - start) * 1e3)
    ms = {k: statistics.median(v) for k, v in times.items()}
    return {"fp32_ms": ms["fp32"], "int8_ms": ms["int8"], "speedup": ms["fp32"] / ms["int8"],
            "batch": int(example.shape[0]), "threads": threads, "repeats": repeats}
