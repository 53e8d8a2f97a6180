"""FP32 vs INT8 post-training quantization, side by side: the paper's ``model | FP32 | INT8 | drop`` table.

    python tools/ptq_eval.py --task cls --data data/imagenet \
        --checkpoints work_dirs/cls/a0_repvgg/deploy.pt work_dirs/cls/a0_qarepvgg/deploy.pt \
        --calibrator max percentile --calib-batches 16 --ort --out work_dirs/ptq/a0

Each checkpoint is loaded (and fused if it is a train-form checkpoint), evaluated in FP32,
quantized (pytorch-quantization, W8A8 per-channel weights / per-tensor activations, calibrated
on the train split with the evaluation preprocessing) and evaluated again; ``--ort`` also exports
the QDQ ONNX model and evaluates it in onnxruntime (integer kernels counted, not assumed).
Writes OUT/ptq_table.{md,csv,json} and OUT/onnx/*.onnx.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm import tqdm

from qarep_dense.data.preprocess import Preprocess
from qarep_dense.deploy import reparameterize
from qarep_dense.engine.checkpoint import CheckpointError
from qarep_dense.models.factory import load_model
from qarep_dense.quant import (CALIBRATORS, OrtModule, QuantConfig, check_ort_int8, export_qdq_onnx,
                               ort_quantize_static, quantize_ptq)
from qarep_dense.quant.calibration import batch_images
from qarep_dense.quant.evaluators import ClassificationEvaluator, DetectionEvaluator, Evaluator

log = logging.getLogger("ptq_eval")
# Checkpoints compared in one table must describe the same network and input.
_SAME_META = ("task", "arch", "scale", "num_classes", "image_size", "stem_stride", "use_dfl")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=sorted(EVALUATORS), default="cls", help="task evaluator (default: cls)")
    p.add_argument("--checkpoints", type=Path, nargs="+", required=True, help="checkpoints of the same arch")
    p.add_argument("--data", type=Path, default=None,
                   help="dataset root (cls: ImageFolder with train/ and val/, required; det: COCO-layout root, "
                        "default: the data.root of the checkpoint's training config)")
    p.add_argument("--calibrator", nargs="+", choices=CALIBRATORS, default=["max"], help="one or several")
    p.add_argument("--percentile", type=float, default=99.99, help="value for the percentile calibrator")
    p.add_argument("--calib-batches", type=int, default=8, help="calibration batches from the train split")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--weight-bits", type=int, default=8, help="8 (W8A8) or 4 (W4A8)")
    p.add_argument("--act-bits", type=int, default=8)
    p.add_argument("--repair", action="store_true", help="zero kernel columns of dead input channels before PTQ")
    p.add_argument("--ort", action="store_true", help="also evaluate the exported QDQ model in onnxruntime")
    p.add_argument("--ort-static", action="store_true",
                   help="also evaluate onnxruntime's own quantize_static model (max/percentile/entropy)")
    p.add_argument("--image-size", type=int, default=None, help="override the checkpoint's image_size")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("work_dirs/ptq_eval"), help="output folder")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = p.parse_args(argv)
    if args.calib_batches < 1 or args.batch_size < 1:
        p.error("--calib-batches and --batch-size must be >= 1")
    return args


# --- loading ----------------------------------------------------------------------------------

def model_labels(paths: list[Path]) -> list[str]:
    """Checkpoint file stems, with the parent folder prepended when stems repeat (deploy.pt ...)."""
    stems = [p.stem for p in paths]
    return [f"{p.parent.name}/{p.stem}" if stems.count(p.stem) > 1 else p.stem for p in paths]


def load_fused(path: Path, device: str) -> tuple[nn.Module, dict]:
    """Load a checkpoint and return its fused (deploy) float model in eval mode, and its meta."""
    model, meta = load_model(path)
    if not meta.get("fused"):
        model = reparameterize(model)
    return model.to(device).eval(), meta


def check_same_network(metas: list[dict], paths: list[Path]) -> None:
    """Raise if the checkpoints disagree on arch, classes or input (one table = one network)."""
    first = metas[0]
    for meta, path in zip(metas[1:], paths[1:]):
        diff = {k: (first.get(k), meta.get(k)) for k in _SAME_META if first.get(k) != meta.get(k)}
        if diff:
            detail = ", ".join(f"{k}: {a!r} vs {b!r}" for k, (a, b) in diff.items())
            raise CheckpointError(f"{path}: checkpoint is of a different network than {paths[0]} ({detail}); "
                                  "compare checkpoints of the same arch in one table")


# --- evaluators ---------------------------------------------------------------------------------

def _cls_evaluator(args: argparse.Namespace, meta: dict) -> Evaluator:
    from qarep_dense.data.imagefolder import make_cls_loader

    if args.data is None:
        raise ValueError("--task cls needs --data (an ImageFolder root with train/ and val/)")
    size = args.image_size or meta.get("image_size")
    if not size:
        raise CheckpointError(f"{args.checkpoints[0]}: no image_size in the checkpoint; pass --image-size")
    val = make_cls_loader(args.data, size, args.batch_size, train=False, workers=args.workers)
    # Calibrate on train images with the EVAL transforms (no random crops), shuffled for class variety.
    calib = make_cls_loader(args.data, size, args.batch_size, train=False, workers=args.workers, split="train",
                            shuffle=True)
    classes = len(val.dataset.classes)
    if classes != meta["num_classes"]:
        raise CheckpointError(f"{args.checkpoints[0]}: model has {meta['num_classes']} classes but {args.data} "
                              f"has {classes}")
    preprocess = Preprocess(**meta["preprocess"]) if meta.get("preprocess") else Preprocess()
    return ClassificationEvaluator(val, calib, preprocess, args.device, progress=not args.no_progress)


def _det_evaluator(args: argparse.Namespace, meta: dict) -> Evaluator:
    """COCO mAP on the val split of the checkpoint's training data (or --data, same layout)."""
    from qarep_dense.tasks.detection import loaders_from_meta

    cfg, val, calib = loaders_from_meta(meta, str(args.checkpoints[0]), args.data, args.image_size, args.batch_size,
                                        args.workers)
    model = load_model(args.checkpoints[0])[0]
    return DetectionEvaluator(val, calib, Preprocess(**meta["preprocess"]), model.strides, model.reg_max,
                              args.device, cfg.eval, progress=not args.no_progress)


EVALUATORS: dict[str, Callable[[argparse.Namespace, dict], Evaluator]] = {"cls": _cls_evaluator,
                                                                          "det": _det_evaluator}


# --- one row ------------------------------------------------------------------------------------

def _ort_columns(qmodel: nn.Module, evaluator: Evaluator, example: torch.Tensor, onnx_path: Path) -> dict:
    export_qdq_onnx(qmodel, example, onnx_path)
    with torch.no_grad():
        reference = qmodel(example)
    check = check_ort_int8(onnx_path, example, reference)
    score = evaluator.evaluate(OrtModule(check.onnx_path))[evaluator.metric_name]
    return {"ort_int8": score, "ort_all_convs_integer": check.all_convs_integer,
            "ort_integer_convs": f"{check.integer_convs}/{check.convs_total}",
            "ort_vs_torch_rel_error": check.rel_error,
            # ORT has no integer ConvTranspose on CPU: the detector's upsamples stay float, said here.
            **({"ort_float_conv_transposes": check.float_conv_transposes} if check.conv_transposes_total else {})}


def evaluate_row(label: str, model: nn.Module, meta: dict, fp32: float, evaluator: Evaluator,
                 config: QuantConfig, args: argparse.Namespace) -> tuple[dict, dict]:
    """Quantize ``model`` with ``config``, evaluate; returns (table row, PTQ report dict)."""
    metric = evaluator.metric_name
    qmodel, report = quantize_ptq(model, evaluator.calibration_loader(), evaluator.preprocess, config, args.device,
                                  progress=not args.no_progress)
    int8 = evaluator.evaluate(qmodel)[metric]
    row = {"model": label, "block": meta.get("block"), "arch": meta.get("arch") or meta.get("scale"), "calibrator": config.calibrator,
           "scheme": config.scheme, "fp32": fp32, "int8": int8, "drop": fp32 - int8,
           "repaired_channels": sum(len(e.channels) for e in report.repair), "calib_seconds": report.calib_seconds}
    example = evaluator.preprocess(batch_images(next(iter(evaluator.calibration_loader()))).to(args.device))[:8]
    stem = f"{label.replace('/', '_')}_{config.calibrator}"
    if args.ort:
        row.update(_ort_columns(qmodel, evaluator, example, args.out / "onnx" / f"{stem}_qdq.onnx"))
    if args.ort_static and config.calibrator != "mse":  # onnxruntime has no MSE calibrator
        path = ort_quantize_static(model, evaluator.calibration_loader(), evaluator.preprocess,
                                   args.out / "onnx" / f"{stem}_ort_static.onnx", config)
        row["ort_static_int8"] = evaluator.evaluate(OrtModule(path))[metric]
    return row, report.as_dict()


# --- output -------------------------------------------------------------------------------------

_COLUMNS = [("model", "model"), ("block", "block"), ("calibrator", "calibrator"), ("fp32", "FP32"),
            ("int8", "INT8"), ("drop", "drop"), ("ort_int8", "ORT INT8"), ("ort_integer_convs", "ORT int convs"),
            ("ort_float_conv_transposes", "ORT float deconvs"),
            ("ort_static_int8", "ORT static INT8")]


def _fmt(value) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def markdown_table(rows: list[dict], metric: str) -> str:
    scheme = rows[0]["scheme"] if rows else ""
    # "INT8" only for W8A8: a W4A8 table must not be read as INT8 numbers.
    cols = [(k, h.replace("INT8", scheme) if scheme != "W8A8" else h) for k, h in _COLUMNS if any(k in r for r in rows)]
    lines = [f"{metric}, {scheme}",
             "",
             "| " + " | ".join(h for _, h in cols) + " |",
             "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(_fmt(r.get(k, "")) for k, _ in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, rows: list[dict], reports: dict, args: argparse.Namespace, metric: str) -> str:
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(rows, metric)
    (out / "ptq_table.md").write_text(table)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(out / "ptq_table.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    payload = {"task": args.task, "metric": metric, "data": str(args.data),
               "checkpoints": [str(p) for p in args.checkpoints], "rows": rows, "ptq_reports": reports}
    (out / "ptq_table.json").write_text(json.dumps(payload, indent=2, default=str))
    return table


def run(args: argparse.Namespace) -> list[dict]:
    loaded = [load_fused(p, args.device) for p in args.checkpoints]
    metas = [meta for _, meta in loaded]
    check_same_network(metas, args.checkpoints)
    evaluator = EVALUATORS[args.task](args, metas[0])
    base = QuantConfig(calibrator=args.calibrator[0], percentile=args.percentile,
                       num_calib_batches=args.calib_batches, weight_bits=args.weight_bits,
                       act_bits=args.act_bits, repair_dead_channels=args.repair)
    rows, reports = [], {}
    jobs = [(label, m, meta, cal) for label, (m, meta) in zip(model_labels(args.checkpoints), loaded)
            for cal in args.calibrator]
    fp32_cache: dict[str, float] = {}
    for label, model, meta, cal in tqdm(jobs, desc="ptq_eval", disable=args.no_progress):
        if label not in fp32_cache:
            fp32_cache[label] = evaluator.evaluate(model)[evaluator.metric_name]
        row, report = evaluate_row(label, model, meta, fp32_cache[label], evaluator, replace(base, calibrator=cal),
                                   args)
        rows.append(row)
        reports[f"{label}/{cal}"] = report
    print(write_outputs(args.out, rows, reports, args, evaluator.metric_name))
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        run(args)
    except (CheckpointError, ValueError, FileNotFoundError, NotADirectoryError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
