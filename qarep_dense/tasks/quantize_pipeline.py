"""The user's job in one call: a RepVGG-family checkpoint in, a verified INT8 model within a budget out.

    report = quantize_checkpoint(QuantizeOptions(Path("deploy.pt"), Path("data/digits"), Path("out")))

1. Load (a foreign checkpoint is converted in memory), fuse, evaluate FP32 on the validation split.
2. Diagnose (the C1/C2 analysis of :mod:`qarep_dense.analysis`): one line on why it will or will not quantize.
3. Candidate search (:mod:`qarep_dense.quant.search`): calibrators x {repair, CLE, both in either order}
   x {with, without bias correction}, each timed, scored on a selection split of training images that calibration never saw.
4. The budget. Candidates are chosen on the selection split only; ``max_drop`` is a promise about the
   validation metric, so it is checked there. What to try is the :class:`~qarep_dense.quant.search.BudgetStrategy`'s
   call (the chosen all-INT8 candidate; if it misses and float layers are allowed, a ladder of 1, 2, 3, 4, 6, ...
   layers kept in float, the most sensitive first by output MSE on calibration images; then, with ``allow_qat``
   a short QAT fine-tune of the best so far); :func:`meet_budget` is the loop that
   quantizes and evaluates what it asks for. The best trial ships (the first that meets the budget, else the
   highest metric), and a model without a quantized conv never meets it. The number of float layers is thus the
   one setting fitted to the validation split, and the report says so. After the choice, every candidate is also evaluated on
   validation -- labelled as not used for the choice -- to show how well the selection score predicted it.
5. :func:`~qarep_dense.tasks.quant_check.check_int8` on the shipped model: export QDQ ONNX, run it in ONNX
   Runtime with the INT8 kernels chosen for this CPU, count integer convs (none: not INT8, budget not met),
   compare with the fake-quant model, time FP32 vs INT8; report.json names the file ORT scored.
6. Write report.md / report.json, model_int8.onnx and the chosen fake-quant checkpoint into ``out``.
   Nothing is written outside ``out``; an existing non-empty ``out`` this pipeline did not write is refused.
"""
from __future__ import annotations

import copy
import logging
import os
import time
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from ..choices import CHECKPOINT_SOURCES, ORT_KERNEL_MODES
from ..engine.checkpoint import CheckpointError, checkpoint_path_problem, load_checkpoint, save_checkpoint
from ..engine.distributed import resolve_device
from ..evaluation.evaluators import BATCH_SIZE
from ..fileio import Claim, claim, write_json_atomic, write_text_atomic
from ..quant.backends import get_backend, iter_quantizers
from ..quant.calibration import batch_images
from ..quant.config import CALIBRATORS, QuantConfig
from ..quant.ptq import quantize_ptq, rebuild_fakequant
from ..quant.search import (TRANSFORMS, BudgetStrategy, CandidateResult, SearchData, Trial, candidate_config,
                            candidate_specs, choose, run_search, spearman)
from ..quant.sensitivity import rank_layers
from ..quant.swap import quantized_convs
from .quant_check import CheckOptions, Int8Check, check_batch, check_int8
from .quantize_report import diagnosis_line, render_report
from .registry import TASKS, build_model_from_meta, fuse, get_task, load_fused, load_model
from .splits import request_for, task_data

log = logging.getLogger(__name__)
# --bias-correction: the candidate forms searched, and how many of the best uncorrected candidates then get a
# corrected twin ("auto"; "all" corrects every candidate, 3-4x the search time for the same budget outcome on
# every recorded search: qarep_dense.quant.search).
BIAS_CORRECTION = {"auto": ((False,), 3), "all": ((False, True), 0), "on": ((True,), 0), "off": ((False,), 0)}
# The files written into OUT (a user's file at one of these paths stops the run); diagnosis/ is written too.
OUT_FILES = ("report.md", "report.json", "model_int8.onnx", "model_int8.pre.onnx", "model_int8.ort-optimized.onnx",
             "model_int8.pre.ort-optimized.onnx", "model_fp32.onnx", "model_fakequant.pt")


@dataclass
class QuantizeOptions:
    """What the user asked for (tools/quantize.py's command line).

    checkpoint: ours (train or deploy form) or, with ``source``, a timm / official RepVGG / YOLOv6 file.
    data: dataset root (classification: ImageFolder with train/ and val/; detection: COCO layout, default
        the checkpoint's training data). max_drop: the budget in validation-metric points.
    int8_only: never keep a layer in float (the all-INT8 result is reported even if it misses the budget).
    allow_qat: fine-tune the best candidate with QAT if PTQ misses the budget, with the task's own loss
        (classifiers: cross-entropy; detectors: their training loss; segmentors: their decode head's loss).
    selection_images: training images set aside to score candidates (after the calibration images).
    bias_correction: "auto" (the 3 best uncorrected candidates also compete corrected), "all" (every
        candidate with and without it), "on" (only corrected ones) or "off".
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
    batch_size: int = BATCH_SIZE
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
        problem = checkpoint_path_problem(self.checkpoint)  # a folder is called a folder, with what it holds
        if problem:
            raise CheckpointError(problem)
        resolve_device(self.device)
        if self.data is not None and not self.data.is_dir():
            raise FileNotFoundError(f"--data {self.data}: folder not found")
        if not (0 <= self.max_drop < float("inf")):  # report.json is strict JSON: no Infinity or NaN in it
            raise ValueError(f"--max-drop must be a finite number >= 0 (points of the validation metric), got "
                             f"{self.max_drop}; for no budget at all give one larger than the metric, e.g. 100")
        if self.data_config is not None and not Path(self.data_config).is_file():
            raise FileNotFoundError(f"--data-config {self.data_config}: file not found")
        if self.source is not None and self.source not in CHECKPOINT_SOURCES:
            raise ValueError(f"--from {self.source!r}: expected one of {list(CHECKPOINT_SOURCES)}")
        if self.ort_precision not in ORT_KERNEL_MODES:
            raise ValueError(f"--ort-precision {self.ort_precision!r}: expected one of {list(ORT_KERNEL_MODES)}")
        for name in ("calib_batches", "batch_size", "selection_images", "qat_epochs", "latency_repeats"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.bias_correction not in BIAS_CORRECTION:
            raise ValueError(f"--bias-correction {self.bias_correction!r}: expected one of {list(BIAS_CORRECTION)}")
        QuantConfig(backend=self.backend)  # the backend's name checked here, before any work
        self.specs()
        return self

    def specs(self) -> list:
        return candidate_specs(self.calibrators, self.transforms, BIAS_CORRECTION[self.bias_correction][0])

    @property
    def correct_best(self) -> int:
        return BIAS_CORRECTION[self.bias_correction][1]


# --- the output folder ----------------------------------------------------------------------------

def claim_out(opts: QuantizeOptions) -> Claim:
    """Claim ``opts.out`` (:mod:`qarep_dense.fileio.ownership`), once the inputs are loaded and checked: a
    folder this pipeline did not write is refused, a second run into it gets "in use by pid N", and the files
    the last run recorded (only those) are replaced; a user's file inside, e.g. in diagnosis/, stays."""
    return claim(opts.out, "quantize", _spec(opts), writes=OUT_FILES, label="--out")


# --- loading --------------------------------------------------------------------------------------

def load_for_quantization(opts: QuantizeOptions) -> tuple[nn.Module, nn.Module, dict]:
    """(the model as given -- train form when it is one, for the diagnosis --, its fused float model, meta)."""
    task = opts.task or tuple(TASKS)
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


# --- the loop of the budget strategy --------------------------------------------------------------

def qat_step(qmodel: nn.Module, loader, meta: dict, preprocess, opts: QuantizeOptions) -> nn.Module:
    """A short QAT fine-tune of a copy of ``qmodel`` on the training split with the task's own loss
    (classifiers: cross-entropy; detectors: the training loss; segmentors: the decode head's loss)."""
    from ..quant.qat import prepare_qat, qat_finetune

    model = prepare_qat(copy.deepcopy(qmodel))
    loss = get_task(meta["task"]).qat_loss(meta, model, preprocess, opts.device)
    qat_finetune(model, loader, preprocess, None, epochs=opts.qat_epochs, warmup_epochs=0, lr=opts.qat_lr,
                 device=opts.device, progress=opts.progress, batch_loss=loss)
    return model.eval()


@dataclass
class BudgetRun:
    """What the budget loop needs besides the strategy: the chosen candidate's float model, its PTQ config,
    the data and how to score a model on validation."""

    float_model: nn.Module
    config: QuantConfig
    data: SearchData
    preprocess: object
    evaluate: object
    training: object  # the calibration loader (training images), for QAT
    meta: dict


def meet_budget(run: BudgetRun, qmodel: nn.Module, fp32: float, opts: QuantizeOptions) -> BudgetStrategy:
    """The loop that quantizes, evaluates and records what the :class:`BudgetStrategy` asks for, starting
    from the chosen all-INT8 candidate ``qmodel``; returns the strategy (its trials, its best)."""
    backend = get_backend(run.config.backend)

    def rank() -> list[dict]:
        ranking = rank_layers(qmodel, run.data.calib[:2], run.preprocess, opts.device, run.config.backend,
                              progress=opts.progress)
        return [e.as_dict() for e in ranking]

    strategy = BudgetStrategy(fp32, opts.max_drop, None if opts.int8_only else rank, opts.allow_qat)
    while (step := strategy.next_step()) is not None:
        if not strategy.trials:
            model = qmodel
        elif step.qat:
            model = qat_step(strategy.best().model, run.training, run.meta, run.preprocess, opts)
        else:
            model, _ = quantize_ptq(run.float_model, run.data.calib, run.preprocess,
                                    replace(run.config, skip_layers=step.float_layers), opts.device, progress=False)
        strategy.record(Trial(step, run.evaluate(model), quantized_convs(model, backend), model))
    return strategy


# --- ONNX Runtime -----------------------------------------------------------------------------------

def _ort_fields(check: Int8Check) -> dict:
    ort, latency = check.ort, check.latency
    return {"int8_ort": check.int8_ort, "onnx_scored": check.scored_file, "pre_processed": ort.pre_processed,
            "kernels": ort.kernels, "kernel_reason": ort.kernel_reason,
            "integer_convs": ort.integer_convs, "convs": ort.convs_total,
            "float_conv_transposes": ort.float_conv_transposes, "ort_vs_fakequant_rel_error": ort.rel_error,
            "ort_vs_fakequant_argmax_agreement": ort.argmax_agreement,
            "latency_ms": None if latency is None else {"fp32": latency["fp32_ms"], "int8": latency["int8_ms"]}}


def check_in_ort(qmodel: nn.Module, fused: nn.Module, data: SearchData, preprocess, evaluator,
                 opts: QuantizeOptions) -> dict:
    """The shipped fake-quant model (PTQ or QAT alike) through :func:`check_int8`, written into ``opts.out``."""
    options = CheckOptions(ort_precision=opts.ort_precision, onnx_path=opts.out / "model_int8.onnx", latency=True,
                           fp32_onnx_path=opts.out / "model_fp32.onnx", repeats=opts.latency_repeats,
                           device=opts.device, progress=opts.progress)
    return _ort_fields(check_int8(qmodel, fused, check_batch(data.calib, preprocess, options), evaluator, options))


# --- the pipeline -----------------------------------------------------------------------------------

def _spec(opts: QuantizeOptions) -> dict:
    return {"tool": "quantize", "checkpoint": str(opts.checkpoint), "data": str(opts.data), "source": opts.source,
            "max_drop": opts.max_drop}


def quantize_checkpoint(opts: QuantizeOptions) -> dict:
    """Run the whole pipeline (module doc); returns the report.json content."""
    with ExitStack() as claimed:  # the output folder's claim, released however the run ends
        return _quantize(opts, claimed)


def _quantize(opts: QuantizeOptions, claimed: ExitStack) -> dict:
    opts.validate()
    start, cpu_start = time.perf_counter(), time.process_time()
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

    row = get_task(task)
    data = split_training_images(split.calibration, split.selection, opts, row.selection_score == "kl")
    out = claimed.enter_context(claim_out(opts))  # inputs loaded and checked: a failed load leaves OUT as it was
    fp32 = evaluate(fused)
    t = lap("load_and_fp32", t)
    diagnosis = _diagnose(model, data, preprocess, opts) if opts.diagnose else None
    t = lap("diagnosis", t)

    base = QuantConfig(num_calib_batches=len(data.calib), backend=opts.backend)
    results, qmodels, floats = run_search(fused, data, preprocess, opts.specs(), base, row.selection_score == "kl",
                                          opts.device, opts.progress, correct_best=opts.correct_best)
    chosen = choose(results)
    t = lap("search", t)
    config = candidate_config(chosen.spec, base)
    run = BudgetRun(floats[chosen.spec.transform], config, data, preprocess, evaluate, split.calibration, meta)
    strategy = meet_budget(run, qmodels[chosen.spec.name], fp32, opts)
    chosen.validation = strategy.trials[0].metric
    best = strategy.best()
    t = lap("budget", t)

    for r in results:  # after the choice; NOT used for it (report only)
        if r.validation is None:
            r.validation = evaluate(qmodels[r.spec.name])
    t = lap("validation_of_all_candidates", t)

    config = replace(config, skip_layers=best.step.float_layers)
    ort = check_in_ort(best.model, fused, data, preprocess, evaluator, opts)
    t = lap("onnx_runtime", t)
    final = {"model": best.model, "metric": best.metric, "float_layers": list(best.step.float_layers),
             "qat": best.step.qat, "how": best.step.how}
    _save_fakequant(final["model"], meta, chosen, final, config, [1, *data.calib[0].shape[1:]],
                    opts.out / "model_fakequant.pt")
    timings["total"] = round(time.perf_counter() - start, 2)
    timings["total_cpu"] = round(time.process_time() - cpu_start, 2)  # this process's CPU time: load-independent

    report = _report(opts, meta, metric_name, fp32, final, chosen, results, strategy, ort, diagnosis, data,
                     split.selection_disjoint, _metric_resolution(row, evaluator), timings)
    write_json_atomic(opts.out / "report.json", report)
    write_text_atomic(opts.out / "report.md", render_report(report))
    out.seal({"candidates": len(results)})
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
    backend = get_backend(config.backend)
    quant = {"calibrator": chosen.spec.calibrator, "transform": chosen.spec.transform,
             "bias_correction": chosen.spec.bias_correction,
             "float_layers": final["float_layers"], "qat": final["qat"],
             "config": config.as_dict(), "input_shape": list(input_shape),
             # quantizers that saw no calibration data stay float by design; any other must have its range
             "uncalibrated_quantizers": [n for n, q in iter_quantizers(model, backend) if backend.amax(q) is None]}
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_checkpoint(path, state, {**meta, "fused": True, "fake_quant": quant})


def load_fakequant(path: str | os.PathLike, device: str = "cpu") -> tuple[nn.Module, dict]:
    """The fake-quant model tools/quantize.py saved as ``model_fakequant.pt``, ready to evaluate, fine-tune
    with QAT or export; returns (model in eval mode on ``device``, meta).

    Strict: every key must fit the rebuilt model, and every quantizer must have its calibrated range
    (``_amax``) unless the file records it as never calibrated; otherwise a :class:`CheckpointError` names the
    file (a quantizer without its range would silently run in float).
    """
    payload = load_checkpoint(path)
    meta = payload["meta"]
    quant = meta.get("fake_quant")
    if not isinstance(quant, dict) or "config" not in quant or "input_shape" not in quant:
        raise CheckpointError(f"{path}: not a fake-quant checkpoint of tools/quantize.py (no 'fake_quant' config in "
                              "its metadata; files of versions before bias correction lack it: run tools/quantize.py "
                              "again); a float checkpoint loads with tasks.registry.load_model")
    try:
        config = QuantConfig(**{**quant["config"], "skip_layers": tuple(quant["config"]["skip_layers"])}).validate()
        example = torch.zeros(quant["input_shape"])
    except (TypeError, KeyError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path}: its fake-quant metadata is not a valid configuration ({type(err).__name__}: "
                              f"{err}); was it edited? run tools/quantize.py again") from None
    fused = build_model_from_meta(meta, str(path)).eval()
    try:
        model = rebuild_fakequant(fused, config, example, payload["model"], device)
    except RuntimeError as err:  # a state dict that does not fit the rebuilt structure
        raise CheckpointError(f"{path}: the saved fake-quant state does not fit the model its metadata describes: "
                              f"{str(err).splitlines()[0]}") from None
    backend = get_backend(config.backend)
    uncalibrated = set(quant.get("uncalibrated_quantizers", ()))
    missing = [n for n, _ in iter_quantizers(model, backend)
               if n not in uncalibrated and f"{n}._amax" not in payload["model"]]
    if missing:
        raise CheckpointError(f"{path}: {len(missing)} quantizer(s) have no calibrated range (_amax) in the file "
                              f"({', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}); they would run in "
                              "float: the file is incomplete or was edited, run tools/quantize.py again")
    return model, meta


def _metric_resolution(row, evaluator) -> dict | None:
    """How many metric points one validation image is worth, for a metric that counts images (top-1);
    None for AP / mIoU, where one image moves the metric by no fixed amount."""
    dataset = getattr(getattr(evaluator, "val_loader", None), "dataset", None)
    if not row.metric_counts_images or dataset is None or not len(dataset):
        return None
    return {"validation_images": len(dataset), "points_per_image": 100.0 / len(dataset)}


def _budget_fields(opts, fp32: float, strategy: BudgetStrategy, ort: dict, resolution: dict | None) -> dict:
    best = strategy.best()
    drop = fp32 - best.metric
    int8 = bool(ort["integer_convs"]) and best.quantized_convs > 0
    if resolution is not None:
        resolution["finer_than_budget"] = resolution["points_per_image"] > opts.max_drop
    ladder, qat = strategy.ladder_trials(), strategy.qat_trial()
    return {"int8": best.metric, "int8_all_int8_choice": strategy.trials[0].metric, "drop": drop,
            "max_drop": opts.max_drop, "budget_met": bool(strategy.met(best) and int8), "is_int8": int8,
            "how": best.step.how, "metric_resolution": resolution,
            "partial": None if not ladder else {"ranking": strategy.ranking[:20],
                                                "steps": [t.as_dict(fp32) for t in ladder],
                                                "shipped": next((i for i, t in enumerate(ladder) if t is best), None)},
            "qat": None if qat is None else {**qat.as_dict(fp32), "kept": best is qat}}


def _report(opts, meta, metric_name, fp32, final, chosen, results, strategy, ort, diagnosis, data, disjoint,
            resolution, timings) -> dict:
    scores = [r.selection.score for r in results]
    vals = [r.validation for r in results]
    return {
        "checkpoint": str(opts.checkpoint), "task": meta["task"], "metric": metric_name,
        "arch": meta.get("arch") or meta.get("scale"), "block": meta.get("block"),
        "converted_from": opts.source, "backend": opts.backend, "fp32": fp32, "int8_ort": ort["int8_ort"],
        **_budget_fields(opts, fp32, strategy, ort, resolution),
        "chosen": {"candidate": chosen.spec.name, "calibrator": chosen.spec.calibrator, "repair": chosen.spec.repair,
                   "cle": chosen.spec.cle, "bias_correction": chosen.spec.bias_correction,
                   "float_layers": final["float_layers"], "qat": final["qat"]},
        "candidates": [r.as_dict() for r in results],
        "selection": {"images": sum(int(b.shape[0]) for b in data.selection),
                      "score": get_task(meta["task"]).selection_score,
                      "calib_images": sum(int(b.shape[0]) for b in data.calib),
                      "disjoint_from_calibration": bool(disjoint),
                      # lower score should mean higher validation metric: a good predictor gives -1
                      "spearman_score_vs_validation": spearman(scores, vals)},
        "int8_only": opts.int8_only, "allow_qat": opts.allow_qat,
        "integer_convs": ort["integer_convs"], "convs": ort["convs"], "onnx_scored": ort["onnx_scored"], "ort": ort,
        "diagnosis": diagnosis, "seconds": timings, "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }


__all__ = ["QuantizeOptions", "quantize_checkpoint", "load_fakequant"]
