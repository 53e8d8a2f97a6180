"""The user's job in one call: a RepVGG-family checkpoint in, a verified INT8 model within a budget out.

    report = quantize_checkpoint(QuantizeOptions(Path("deploy.pt"), Path("data/digits"), Path("out")))

1. Load (a foreign checkpoint is converted in memory), fuse, evaluate FP32 on the validation split.
2. Diagnose (the C1/C2 analysis of :mod:`qarep_dense.analysis`): one line on why it will or will not quantize.
3. Candidate search (:mod:`qarep_dense.quant.search`): calibrators x {repair, CLE, both in either order}
   x {with, without bias correction}, each timed, scored on a selection split of training images that calibration never saw.
4. The budget. Candidates are chosen on the selection split only; ``max_drop`` is a promise about the
   validation metric, so it is checked there: once for the chosen all-INT8 candidate; if it misses and
   float layers are allowed, for each step of a ladder of 1, 2, 3, 4, 6, 8, ... layers kept in float
   (the most sensitive first, ranked by output MSE on calibration images); then, with ``allow_qat`` (and a
   classifier or detector), after a short QAT fine-tune. The number of float layers is thus the one setting fitted to
   the validation split, and the report says so. After the choice, every candidate is also evaluated on
   validation -- labelled as not used for the choice -- to show how well the selection score predicted it.
5. Export QDQ ONNX, run it in ONNX Runtime with the INT8 kernels chosen for this CPU, count integer convs,
   compare with the fake-quant model, time FP32 vs INT8.
6. Write report.md / report.json, model_int8.onnx and the chosen fake-quant checkpoint into ``out``.
   Nothing is written outside ``out``; an existing non-empty ``out`` this pipeline did not write is refused.
"""
from __future__ import annotations

import copy
import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from ..data.export_guard import MANIFEST, begin_export, finish_export
from ..engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ..fileio import write_json_atomic, write_text_atomic
from ..quant.calibration import batch_images, flatten_outputs
from ..quant.config import CALIBRATORS, QuantConfig
from ..quant.export import check_ort_int8, export_qdq_onnx
from ..quant.ptq import quantize_ptq, rebuild_fakequant
from ..quant.search import (TRANSFORMS, CandidateResult, SearchData, candidate_config, candidate_specs, choose,
                            run_search, spearman)
from ..quant.sensitivity import rank_layers
from .quant_check import CheckOptions, measure_latency, quantize_and_check
from .quantize_report import diagnosis_line, render_report
from .registry import build_model_from_meta, fuse, get_task, load_fused, load_model
from .splits import request_for, task_data

log = logging.getLogger(__name__)

SOURCES = ("timm", "repvgg", "yolov6")
BIAS_CORRECTION = {"auto": (False, True), "on": (True,), "off": (False,)}
OUT_FILES = ("report.md", "report.json", "model_int8.onnx", "model_int8.pre.onnx", "model_int8.ort-optimized.onnx",
             "model_int8.pre.ort-optimized.onnx", "model_fp32.onnx", "model_fakequant.pt", "diagnosis")


@dataclass
class QuantizeOptions:
    """What the user asked for (tools/quantize.py's command line).

    checkpoint: ours (train or deploy form) or, with ``source``, a timm / official RepVGG / YOLOv6 file.
    data: dataset root (classification: ImageFolder with train/ and val/; detection: COCO layout, default
        the checkpoint's training data). max_drop: the budget in validation-metric points.
    int8_only: never keep a layer in float (the all-INT8 result is reported even if it misses the budget).
    allow_qat: fine-tune the best candidate with QAT if PTQ misses the budget (classifiers and detectors).
    selection_images: training images set aside to score candidates (after the calibration images).
    bias_correction: "auto" (candidates with and without it compete), "on" (only corrected ones) or "off".
    backend: the fake-quant backend (``QuantConfig.backend``): "pytorch_quantization" or "modelopt".
    """

    checkpoint: Path
    data: Path | None
    out: Path
    max_drop: float = 1.0
    task: str | None = None
    source: str | None = None
    int8_only: bool = False
    allow_qat: bool = False
    ort_precision: str = "auto"
    calibrators: tuple[str, ...] = CALIBRATORS
    transforms: tuple[str, ...] = TRANSFORMS
    bias_correction: str = "auto"
    backend: str = "pytorch_quantization"
    calib_batches: int = 8
    batch_size: int = 32
    selection_images: int = 256
    image_size: int | None = None
    data_config: Path | None = None  # a converted detector: the detection TOML whose data section evaluation reads
    block: str | None = None  # a converted checkpoint's block type, when its weights cannot tell (plain YOLOv6 dicts)
    qat_epochs: int = 2
    qat_lr: float = 1e-3
    latency_repeats: int = 20
    diagnose: bool = True
    device: str = "cpu"
    progress: bool = True

    def validate(self) -> "QuantizeOptions":
        self.checkpoint, self.out = Path(self.checkpoint), Path(self.out)
        self.data = Path(self.data) if self.data is not None else None
        if not self.checkpoint.is_file():
            raise FileNotFoundError(f"{self.checkpoint}: checkpoint not found")
        if self.data is not None and not self.data.is_dir():
            raise FileNotFoundError(f"--data {self.data}: folder not found")
        if not (self.max_drop >= 0):
            raise ValueError(f"--max-drop must be >= 0 (points of the validation metric), got {self.max_drop}")
        if self.data_config is not None and not Path(self.data_config).is_file():
            raise FileNotFoundError(f"--data-config {self.data_config}: file not found")
        if self.source is not None and self.source not in SOURCES:
            raise ValueError(f"--from {self.source!r}: expected one of {list(SOURCES)}")
        if self.ort_precision not in ("auto", "default", "precise"):
            raise ValueError(f"--ort-precision {self.ort_precision!r}: expected auto, default or precise")
        for name in ("calib_batches", "batch_size", "selection_images", "qat_epochs", "latency_repeats"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.bias_correction not in BIAS_CORRECTION:
            raise ValueError(f"--bias-correction {self.bias_correction!r}: expected one of {list(BIAS_CORRECTION)}")
        QuantConfig(backend=self.backend)  # the backend's name checked here, before any work
        self.specs()
        return self

    def specs(self) -> list:
        return candidate_specs(self.calibrators, self.transforms, BIAS_CORRECTION[self.bias_correction])


# --- the output folder ----------------------------------------------------------------------------

def claim_out(out: Path, spec: dict) -> None:
    """Refuse an existing non-empty ``out`` that holds no manifest of ours; else record what we will write."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out}: is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).exists():
        raise FileExistsError(f"--out {out}: folder exists, is not empty and was not written by tools/quantize.py; "
                              "choose another folder (nothing was changed)")
    if out.is_dir() and (out / MANIFEST).exists():
        previous = load_manifest_spec(out)
        if previous.get("tool") != "quantize":
            raise FileExistsError(f"--out {out}: {out / MANIFEST} belongs to another tool ({previous.get('tool')!r}); "
                                  "choose another folder (nothing was changed)")
    begin_export(out, spec, OUT_FILES)


def load_manifest_spec(out: Path) -> dict:
    import json

    try:
        data = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError) as err:
        raise FileExistsError(f"--out {out}: {out / MANIFEST} is unreadable ({err}); choose another folder") from None
    return data.get("spec", {}) if isinstance(data, dict) else {}


# --- loading --------------------------------------------------------------------------------------

def load_for_quantization(opts: QuantizeOptions) -> tuple[nn.Module, nn.Module, dict]:
    """(the model as given -- train form when it is one, for the diagnosis --, its fused float model, meta)."""
    task = opts.task or ("cls", "det", "seg")
    if opts.source is not None:
        fused, meta = load_fused(opts.checkpoint, task, source_format=opts.source, device=opts.device,
                                 image_size=opts.image_size, data_config=opts.data_config, block=opts.block)
        return fused, fused, meta
    model, meta = load_model(opts.checkpoint, task)
    model = model.to(opts.device).eval()
    return model, fuse(model, meta).to(opts.device), meta


def split_training_images(calibration, selection, opts: QuantizeOptions, classification: bool) -> SearchData:
    """Calibration batches, then one held-out batch for the repair, from one pass over the (shuffled)
    calibration loader; the selection batches (and labels) from the selection loader, which holds the
    training images that pass reaches last (:func:`~qarep_dense.tasks.splits.carve_selection`)."""
    calib, heldout = [], []
    for batch in calibration:
        images = batch_images(batch)
        if images.numel() == 0:
            continue
        (calib if len(calib) < opts.calib_batches else heldout).append(images)
        if heldout:
            break
    selected, labels = [], []
    for batch in selection:
        selected.append(batch_images(batch))
        if classification and isinstance(batch, (tuple, list)) and len(batch) > 1:
            labels.append(torch.as_tensor(batch[1]))
    if not calib or not selected:
        raise ValueError(f"{opts.data}: the training split is too small for {opts.calib_batches} calibration "
                         f"batches of {opts.batch_size} images and a selection split; lower --calib-batches or "
                         "--batch-size")
    if not heldout:
        log.warning("no training batch left for the repair's held-out check")
    return SearchData(calib, heldout, selected, labels if classification and labels else None)


# --- budget steps ---------------------------------------------------------------------------------

def _ladder(n: int) -> list[int]:
    """1, 2, 3, 4, 6, 9, ... up to ``n`` (``n``: the most units that may stay float)."""
    steps, k = [], 1
    while k <= n:
        steps.append(k)
        k = k + 1 if k < 4 else int(k * 1.5)
    if n and steps[-1] != n:
        steps.append(n)
    return steps


def partial_ladder(float_model: nn.Module, qmodel: nn.Module, data: SearchData, preprocess, config: QuantConfig,
                   evaluate, fp32: float, int8: float, max_drop: float, device: str, progress: bool) -> dict:
    """Keep the fewest most-sensitive units in float that meet the budget on validation (see module doc)."""
    ranking = rank_layers(qmodel, data.calib[:2], preprocess, device, config.backend, progress=progress)
    steps = []
    best = (qmodel, [], int8)
    for k in _ladder(len(ranking) - 1):  # at least one unit stays quantized
        skip = tuple(e.name for e in ranking[:k])
        model, _ = quantize_ptq(float_model, data.calib, preprocess, replace(config, skip_layers=skip), device,
                                progress=False)
        metric = evaluate(model)
        steps.append({"float_layers": list(skip), "validation": metric, "drop": fp32 - metric})
        best = (model, list(skip), metric)
        if fp32 - metric <= max_drop:
            break
    return {"ranking": [e.as_dict() for e in ranking], "steps": steps, "model": best[0], "float_layers": best[1],
            "metric": best[2]}


def qat_step(qmodel: nn.Module, loader, meta: dict, preprocess, opts: QuantizeOptions) -> nn.Module:
    """A short QAT fine-tune of a copy of ``qmodel`` on the training split with the task's own loss
    (classifiers: cross-entropy; detectors: the training loss)."""
    from ..quant.qat import prepare_qat, qat_finetune

    model = prepare_qat(copy.deepcopy(qmodel))
    loss = get_task(meta["task"]).qat_loss(meta, model, preprocess, opts.device)
    qat_finetune(model, loader, preprocess, None, epochs=opts.qat_epochs, warmup_epochs=0, lr=opts.qat_lr,
                 device=opts.device, progress=opts.progress, batch_loss=loss)
    return model.eval()


# --- ONNX Runtime -----------------------------------------------------------------------------------

def _ort_fields(check, int8_ort: float | None, latency: dict | None) -> dict:
    return {"int8_ort": int8_ort, "kernels": check.kernels, "kernel_reason": check.kernel_reason,
            "integer_convs": check.integer_convs, "convs": check.convs_total,
            "float_conv_transposes": check.float_conv_transposes, "ort_vs_fakequant_rel_error": check.rel_error,
            "ort_vs_fakequant_argmax_agreement": check.argmax_agreement,
            "latency_ms": None if latency is None else {"fp32": latency["fp32_ms"], "int8": latency["int8_ms"]}}


def _check_options(opts: QuantizeOptions, evaluate: bool) -> CheckOptions:
    return CheckOptions(evaluate=evaluate, ort_precision=opts.ort_precision, onnx_path=opts.out / "model_int8.onnx",
                        latency=True, fp32_onnx_path=opts.out / "model_fp32.onnx", repeats=opts.latency_repeats,
                        device=opts.device, progress=opts.progress)


def check_ptq_in_ort(float_model: nn.Module, data: SearchData, preprocess, config: QuantConfig,
                     evaluator, fp32: float, final_model: nn.Module, opts: QuantizeOptions) -> dict:
    """The chosen PTQ model through :func:`quantize_and_check` (export, ORT kernels, integer convs, agreement,
    ORT metric, latency against ``float_model`` in FP32, the same function as the given model). It re-quantizes
    ``float_model`` with ``config`` on the same batches: the same model as ``final_model``, checked on the
    export batch."""
    report = quantize_and_check(float_model, data.calib, preprocess, config, evaluator, _check_options(opts, False),
                                fp32=fp32)
    example = preprocess(data.calib[0][:8].to(opts.device))
    with torch.no_grad():
        pairs = zip(flatten_outputs(report.model(example)), flatten_outputs(final_model(example)))
        diff = max(float((a - b).abs().max()) for a, b in pairs)
    if diff > 1e-4:
        log.warning("the re-quantized model differs from the chosen one by %.3g on the export batch", diff)
    return _ort_fields(report.ort, report.int8_ort, report.latency)


def check_qat_in_ort(qmodel: nn.Module, fused: nn.Module, example: torch.Tensor, evaluator,
                     opts: QuantizeOptions) -> dict:
    """A QAT model cannot be re-made from a config: the same checks on the model itself."""
    from ..deploy.ort import OrtModule

    path = export_qdq_onnx(qmodel, example, opts.out / "model_int8.onnx")
    with torch.no_grad():
        reference = qmodel(example)
    check = check_ort_int8(path, example, reference, precision=opts.ort_precision)
    precise = check.kernels == "precise"
    metric = float(evaluator.evaluate(OrtModule(check.onnx_path, precise_int8=precise))[evaluator.metric_name])
    latency = measure_latency(fused, example, opts.out / "model_fp32.onnx", Path(check.onnx_path), precise,
                              repeats=opts.latency_repeats)
    return _ort_fields(check, metric, latency)


# --- the pipeline -----------------------------------------------------------------------------------

def _spec(opts: QuantizeOptions) -> dict:
    return {"tool": "quantize", "checkpoint": str(opts.checkpoint), "data": str(opts.data), "source": opts.source,
            "max_drop": opts.max_drop}


def quantize_checkpoint(opts: QuantizeOptions) -> dict:
    """Run the whole pipeline (module doc); returns the report.json content."""
    opts.validate()
    start, cpu_start = time.perf_counter(), time.process_time()
    claim_out(opts.out, _spec(opts))
    timings: dict[str, float] = {}

    def lap(name: str, t0: float) -> float:
        timings[name] = round(time.perf_counter() - t0, 2)
        return time.perf_counter()

    t = time.perf_counter()
    model, fused, meta = load_for_quantization(opts)
    task = meta["task"]
    request = request_for(opts.checkpoint, meta, opts.data, opts.batch_size, device=opts.device,
                          image_size=opts.image_size, progress=opts.progress)
    split = task_data(request, calib_images=opts.batch_size * (opts.calib_batches + 1),
                      selection_images=opts.selection_images)
    evaluator, preprocess = split.evaluator, split.preprocess
    metric_name = evaluator.metric_name

    def evaluate(m: nn.Module) -> float:
        return float(evaluator.evaluate(m)[metric_name])

    classification = task == "cls"
    data = split_training_images(split.calibration, split.selection, opts, classification)
    fp32 = evaluate(fused)
    t = lap("load_and_fp32", t)
    diagnosis = _diagnose(model, data, preprocess, opts) if opts.diagnose else None
    t = lap("diagnosis", t)

    base = QuantConfig(num_calib_batches=len(data.calib), backend=opts.backend)
    specs = opts.specs()
    results, qmodels, floats = run_search(fused, data, preprocess, specs, base, classification, opts.device,
                                          opts.progress)
    chosen = choose(results)
    t = lap("search", t)
    qmodel = qmodels[chosen.spec.name]
    int8_all = evaluate(qmodel)
    chosen.validation = int8_all
    final = {"model": qmodel, "metric": int8_all, "float_layers": [], "qat": False, "how": "all-INT8 PTQ"}
    partial = None
    if fp32 - int8_all > opts.max_drop and not opts.int8_only:
        config = candidate_config(chosen.spec, base)
        partial = partial_ladder(floats[chosen.spec.transform], qmodel, data, preprocess, config, evaluate, fp32,
                                 int8_all, opts.max_drop, opts.device, opts.progress)
        final.update(model=partial["model"], metric=partial["metric"], float_layers=partial["float_layers"],
                     how=f"partial PTQ, {len(partial['float_layers'])} layers in float")
        t = lap("partial", t)
    if fp32 - final["metric"] > opts.max_drop and opts.allow_qat:
        if get_task(task).qat_loss is not None:
            qat_model = qat_step(final["model"], split.calibration, meta, preprocess, opts)
            qat_metric = evaluate(qat_model)
            final.update(model=qat_model, metric=qat_metric, qat=True, how=final["how"] + " + QAT")
        else:  # a segmentor's loss lives in mmseg's model: train it with tools/train_seg.py instead
            log.warning("--allow-qat: QAT in this pipeline is for classifiers and detectors; %s is left at PTQ", task)
        t = lap("qat", t)

    for r in results:  # after the choice; NOT used for it (report only)
        if r.validation is None:
            r.validation = evaluate(qmodels[r.spec.name])
    t = lap("validation_of_all_candidates", t)

    config = replace(candidate_config(chosen.spec, base), skip_layers=tuple(final["float_layers"]))
    if final["qat"]:
        example = preprocess(data.calib[0][:8].to(opts.device))
        ort = check_qat_in_ort(final["model"], fused, example, evaluator, opts)
    else:
        ort = check_ptq_in_ort(floats[chosen.spec.transform], data, preprocess, config, evaluator, fp32,
                               final["model"], opts)
    t = lap("onnx_runtime", t)
    _save_fakequant(final["model"], meta, chosen, final, config, [1, *data.calib[0].shape[1:]],
                    opts.out / "model_fakequant.pt")
    timings["total"] = round(time.perf_counter() - start, 2)
    timings["total_cpu"] = round(time.process_time() - cpu_start, 2)  # this process's CPU time: load-independent

    report = _report(opts, meta, metric_name, fp32, int8_all, final, chosen, results, partial, ort, diagnosis,
                     data, timings)
    write_json_atomic(opts.out / "report.json", report)
    write_text_atomic(opts.out / "report.md", render_report(report))
    finish_export(opts.out, _spec(opts), {"candidates": len(results)})
    return report


def _diagnose(model: nn.Module, data: SearchData, preprocess, opts: QuantizeOptions) -> dict:
    from ..analysis.pipeline import analyze_model

    batches = [preprocess(b.to(opts.device)) for b in data.calib[:2]]
    analysis = analyze_model(copy.deepcopy(model), batches, opts.out / "diagnosis", device=opts.device,
                             input_note="calibration images", progress=opts.progress)
    return {"line": diagnosis_line(analysis), "C1": len(analysis["flags"]["C1"]), "C2": len(analysis["flags"]["C2"]),
            "report": "diagnosis/report.md", "plots": [f"diagnosis/{p}" for p in analysis["plots"]]}


def _save_fakequant(model: nn.Module, meta: dict, chosen: CandidateResult, final: dict, config: QuantConfig,
                    input_shape: list[int], path: Path) -> None:
    """The chosen fake-quant model: its state dict, and in the metadata what :func:`load_fakequant` needs to
    rebuild its structure (the PTQ config, the input shape its output quantizers were placed for)."""
    quant = {"calibrator": chosen.spec.calibrator, "transform": chosen.spec.transform,
             "bias_correction": chosen.spec.bias_correction,
             "float_layers": final["float_layers"], "qat": final["qat"],
             "config": config.as_dict(), "input_shape": list(input_shape)}
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_checkpoint(path, state, {**meta, "fused": True, "fake_quant": quant})


def load_fakequant(path: str | os.PathLike, device: str = "cpu") -> tuple[nn.Module, dict]:
    """The fake-quant model tools/quantize.py saved as ``model_fakequant.pt``, ready to evaluate, fine-tune
    with QAT or export; returns (model in eval mode on ``device``, meta)."""
    payload = load_checkpoint(path)
    meta = payload["meta"]
    quant = meta.get("fake_quant")
    if not isinstance(quant, dict) or "config" not in quant or "input_shape" not in quant:
        raise CheckpointError(f"{path}: not a fake-quant checkpoint of tools/quantize.py (no 'fake_quant' config in "
                              "its metadata; files of versions before bias correction lack it: run tools/quantize.py "
                              "again); a float checkpoint loads with tasks.registry.load_model")
    config = QuantConfig(**{**quant["config"], "skip_layers": tuple(quant["config"]["skip_layers"])})
    fused = build_model_from_meta(meta, str(path)).eval()
    example = torch.zeros(quant["input_shape"])
    try:
        model = rebuild_fakequant(fused, config, example, payload["model"], device)
    except RuntimeError as err:  # a state dict that does not fit the rebuilt structure
        raise CheckpointError(f"{path}: the saved fake-quant state does not fit the model its metadata describes: "
                              f"{str(err).splitlines()[0]}") from None
    return model, meta


def _report(opts, meta, metric_name, fp32, int8_all, final, chosen, results, partial, ort, diagnosis, data,
            timings) -> dict:
    drop = fp32 - final["metric"]
    scores = [r.selection.score for r in results]
    vals = [r.validation for r in results]
    return {
        "checkpoint": str(opts.checkpoint), "task": meta["task"], "metric": metric_name,
        "arch": meta.get("arch") or meta.get("scale"), "block": meta.get("block"),
        "converted_from": opts.source, "backend": opts.backend,
        "fp32": fp32, "int8": final["metric"], "int8_all_int8_choice": int8_all, "int8_ort": ort["int8_ort"],
        "drop": drop, "max_drop": opts.max_drop, "budget_met": bool(drop <= opts.max_drop),
        "how": final["how"],
        "chosen": {"candidate": chosen.spec.name, "calibrator": chosen.spec.calibrator, "repair": chosen.spec.repair,
                   "cle": chosen.spec.cle, "bias_correction": chosen.spec.bias_correction,
                   "float_layers": final["float_layers"], "qat": final["qat"]},
        "candidates": [r.as_dict() for r in results],
        "selection": {"images": sum(int(b.shape[0]) for b in data.selection), "score": "kl" if meta["task"] == "cls"
                      else "rel_mse", "calib_images": sum(int(b.shape[0]) for b in data.calib),
                      # lower score should mean higher validation metric: a good predictor gives -1
                      "spearman_score_vs_validation": spearman(scores, vals)},
        "partial": None if partial is None else {"ranking": partial["ranking"][:20], "steps": partial["steps"]},
        "int8_only": opts.int8_only, "allow_qat": opts.allow_qat,
        "integer_convs": ort["integer_convs"], "convs": ort["convs"], "ort": ort,
        "diagnosis": diagnosis, "seconds": timings, "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }


__all__ = ["QuantizeOptions", "quantize_checkpoint", "load_fakequant", "SOURCES"]
