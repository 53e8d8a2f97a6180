"""FP32 vs INT8 post-training quantization, side by side: the paper's ``model | FP32 | INT8 | drop`` table.

    python tools/ptq_eval.py --task cls --data data/imagenet \
        --checkpoints work_dirs/cls/a0_repvgg/deploy.pt work_dirs/cls/a0_qarepvgg/deploy.pt \
        --calibrator max percentile --calib-batches 16 --ort --out work_dirs/ptq/a0

Each checkpoint is loaded (and fused if it is a train-form checkpoint), evaluated in FP32,
quantized (pytorch-quantization, W8A8 per-channel weights / per-tensor activations, calibrated
on the train split with the evaluation preprocessing) and evaluated again; ``--ort`` also exports
the QDQ ONNX model and evaluates it in onnxruntime (integer kernels counted, not assumed).
Writes OUT/ptq_table.{md,csv,json} (rewritten after every row, and each row printed as it is
computed) and OUT/onnx/*.onnx. OUT/manifest.json records what was written there: a later run into
the same OUT removes exactly those files (and refuses to overwrite any file it did not write).
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[1])  # this checkout: `python tools/x.py` runs without an install
if sys.path[:1] != [_ROOT]:
    sys.path.insert(0, _ROOT)

import torch  # noqa: E402
from torch import nn  # noqa: E402
from tqdm import tqdm  # noqa: E402

from qarep_dense.data.export_guard import begin_export, finish_export  # noqa: E402
from qarep_dense.deploy import reparameterize  # noqa: E402
from qarep_dense.engine.checkpoint import CheckpointError  # noqa: E402
from qarep_dense.quant import (CALIBRATORS, OrtModule, QuantConfig, check_ort_int8, choose_int8_kernels,  # noqa: E402
                               export_qdq_onnx, ort_quantize_static, quantize_ptq)
from qarep_dense.quant.calibration import batch_images  # noqa: E402
from qarep_dense.evaluation.evaluators import EvalRequest, Evaluator  # noqa: E402
from qarep_dense.fileio import write_text_atomic  # noqa: E402
from qarep_dense.tasks.registry import TASK_MODULES, load_model, task_module  # noqa: E402

log = logging.getLogger("ptq_eval")
# Checkpoints compared in one table must describe the same network and input.
_SAME_META = ("task", "arch", "scale", "num_classes", "image_size", "stem_stride", "use_dfl")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=sorted(TASK_MODULES), default="cls", help="task evaluator (default: cls)")
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
    p.add_argument("--repair", action="store_true",
                   help="before PTQ, zero the dead-input kernel slices that set an INT8 weight scale (checked on one "
                        "held-out calibration batch)")
    p.add_argument("--ort", action="store_true", help="also evaluate the exported QDQ model in onnxruntime")
    p.add_argument("--ort-static", action="store_true",
                   help="also evaluate onnxruntime's own quantize_static model (max/percentile/entropy)")
    p.add_argument("--ort-precision", choices=["auto", "default", "precise"], default="auto",
                   help="onnxruntime INT8 kernels: auto (per machine: CPU features, checked against fake quant on a "
                        "calibration batch), default (fast U8S8) or precise (exact U8U8)")
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
    """Checkpoint file stems, with as many parent folders prepended as it takes to tell repeated stems apart."""
    def label(p: Path, depth: int) -> str:
        return "/".join([*p.resolve().parent.parts[len(p.resolve().parent.parts) - depth:], p.stem])

    labels = []
    for p in paths:
        depth = 0
        while sum(label(q, depth) == label(p, depth) for q in paths) > 1 and depth < len(p.resolve().parts):
            depth += 1
        labels.append(label(p, depth))
    return labels


def check_inputs(args: argparse.Namespace) -> None:
    """Before any work: each checkpoint once, --data present if given, --out writable."""
    seen: dict[Path, Path] = {}
    for path in args.checkpoints:
        key = path.resolve()
        if key in seen:
            raise ValueError(f"--checkpoints: {path} is given twice (also as {seen[key]}); pass each checkpoint once")
        seen[key] = path
    if args.data is not None and not args.data.is_dir():
        raise FileNotFoundError(f"--data {args.data}: folder not found")
    check_writable(args.out)


def check_writable(out: Path) -> None:
    """Prove results can be written to ``out`` before any work, so they are never lost at the end.

    An existing folder gets a real test write; a missing one needs its nearest existing parent to be a
    writable folder (it is created only when the first results are written).
    """
    try:
        if out.exists():
            if not out.is_dir():
                raise NotADirectoryError(f"{out} is a file")
            with tempfile.NamedTemporaryFile(dir=out, prefix=".ptq_eval-write-check-"):
                pass
            return
        parent = next(p for p in out.absolute().parents if p.exists())
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            raise PermissionError(f"{parent} is not a writable folder")
    except OSError as err:
        raise NotADirectoryError(f"--out {out}: cannot write results there ({err}); choose another folder") from None


def load_fused(path: Path, device: str, task: str) -> tuple[nn.Module, dict]:
    """Load a checkpoint and return its fused (deploy) float model in eval mode, and its meta."""
    model, meta = load_model(path, task)
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


# --- one row ------------------------------------------------------------------------------------

def _ort_columns(qmodel: nn.Module, evaluator: Evaluator, example: torch.Tensor, onnx_path: Path,
                 precision: str) -> dict:
    export_qdq_onnx(qmodel, example, onnx_path)
    with torch.no_grad():
        reference = qmodel(example)
    check = check_ort_int8(onnx_path, example, reference, precision=precision)
    score = evaluator.evaluate(OrtModule(check.onnx_path, precise_int8=check.kernels == "precise"))
    return {"ort_int8": score[evaluator.metric_name], "ort_kernels": check.kernels,
            "ort_kernel_reason": check.kernel_reason, "ort_all_convs_integer": check.all_convs_integer,
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
           "calib_seconds": report.calib_seconds}
    if report.repair is not None:
        row.update({"repaired_channels": report.repair.zeroed_channels,
                    "repair_alive_on_heldout": report.repair.alive_on_heldout,
                    "repair_heldout_max_abs_diff": report.repair.heldout_max_abs_diff})
    example = evaluator.preprocess(batch_images(next(iter(evaluator.calibration_loader()))).to(args.device))[:8]
    stem = f"{label.replace('/', '_')}_{config.calibrator}"
    if args.ort:
        row.update(_ort_columns(qmodel, evaluator, example, args.out / "onnx" / f"{stem}_qdq.onnx", args.ort_precision))
    if args.ort_static and config.calibrator != "mse":  # onnxruntime has no MSE calibrator
        path = ort_quantize_static(model, evaluator.calibration_loader(), evaluator.preprocess,
                                   args.out / "onnx" / f"{stem}_ort_static.onnx", config)
        kernels = row.get("ort_kernels") or choose_int8_kernels(path, mode=args.ort_precision).kernels
        row["ort_static_int8"] = evaluator.evaluate(OrtModule(path, precise_int8=kernels == "precise"))[metric]
        row["ort_kernels"] = kernels
    return row, report.as_dict()


# --- output -------------------------------------------------------------------------------------

_COLUMNS = [("model", "model"), ("block", "block"), ("calibrator", "calibrator"), ("fp32", "FP32"),
            ("int8", "INT8"), ("drop", "drop"), ("repaired_channels", "repaired ch"),
            ("repair_alive_on_heldout", "dead calib / alive held-out"), ("ort_int8", "ORT INT8"),
            ("ort_kernels", "ORT kernels"), ("ort_integer_convs", "ORT int convs"),
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


TABLES = ("ptq_table.md", "ptq_table.csv", "ptq_table.json")


def _onnx_files(label: str, calibrator: str) -> list[str]:
    """Files (relative to OUT) one row may write: the QDQ model and ORT's own model, each with the
    pre-processed copy and the transient optimized graph the integer-kernel check writes next to it."""
    stem = f"onnx/{label.replace('/', '_')}_{calibrator}"
    models = [f"{stem}_qdq", f"{stem}_qdq.pre", f"{stem}_ort_static", f"{stem}_ort_static.pre"]
    return [f"{m}{suffix}" for m in models for suffix in (".onnx", ".ort-optimized.onnx")]


def _legacy_outputs(out: Path) -> list[str]:
    """What a ptq_eval of an earlier version (no manifest) wrote in ``out``, recognised by its ptq_table.json."""
    try:
        old = json.loads((out / "ptq_table.json").read_text())
    except (OSError, ValueError):
        return []
    if not (isinstance(old, dict) and {"task", "metric", "checkpoints", "rows"} <= set(old)
            and isinstance(old["rows"], list) and all(isinstance(r, dict) for r in old["rows"])):
        return []
    files = [*TABLES]
    for row in old["rows"]:
        if isinstance(row.get("model"), str) and isinstance(row.get("calibrator"), str):
            files += _onnx_files(row["model"], row["calibrator"])
    return files


def claim_outputs(out: Path, args: argparse.Namespace, labels: list[str]) -> None:
    """Remove what an earlier ptq_eval wrote in ``out`` (only that) and record what this run will write."""
    files = [*TABLES, *(f for label in labels for cal in args.calibrator for f in _onnx_files(label, cal))]
    adopt = _legacy_outputs(out) if not (out / "manifest.json").exists() else []
    begin_export(out, _spec(args), files, adopt=adopt)


def _spec(args: argparse.Namespace) -> dict:
    return {"tool": "ptq_eval", "task": args.task, "checkpoints": [str(p) for p in args.checkpoints],
            "calibrators": list(args.calibrator), "data": None if args.data is None else str(args.data)}


def write_outputs(out: Path, rows: list[dict], reports: dict, args: argparse.Namespace, metric: str) -> str:
    """(Re)write the three tables with the rows so far; each file is replaced atomically."""
    table = markdown_table(rows, metric)
    write_text_atomic(out / "ptq_table.md", table)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    tmp = out / ".ptq_table.csv.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, out / "ptq_table.csv")
    payload = {"task": args.task, "metric": metric, "data": str(args.data),
               "checkpoints": [str(p) for p in args.checkpoints], "rows": rows, "ptq_reports": reports}
    write_text_atomic(out / "ptq_table.json", json.dumps(payload, indent=2, default=str))
    return table


def row_line(row: dict, index: int, total: int) -> str:
    """One computed row as a console line (the full table follows at the end)."""
    parts = [f"{h} {_fmt(row[k])}" for k, h in _COLUMNS if k in row and k not in ("model", "block", "calibrator")]
    return f"[{index}/{total}] {row['model']} {row['calibrator']}: " + ", ".join(parts)


def run(args: argparse.Namespace) -> list[dict]:
    check_inputs(args)
    loaded = [load_fused(p, args.device, args.task) for p in args.checkpoints]
    metas = [meta for _, meta in loaded]
    check_same_network(metas, args.checkpoints)
    request = EvalRequest(args.checkpoints[0], metas[0], args.data, args.image_size, args.batch_size, args.workers,
                          args.device, progress=not args.no_progress)
    evaluator = task_module(args.task).make_evaluator(request)
    base = QuantConfig(calibrator=args.calibrator[0], percentile=args.percentile,
                       num_calib_batches=args.calib_batches, weight_bits=args.weight_bits,
                       act_bits=args.act_bits, repair_dead_channels=args.repair)
    labels = model_labels(args.checkpoints)
    claim_outputs(args.out, args, labels)
    rows, reports = [], {}
    jobs = [(label, m, meta, cal) for label, (m, meta) in zip(labels, loaded) for cal in args.calibrator]
    fp32_cache: dict[str, float] = {}
    for label, model, meta, cal in tqdm(jobs, desc="ptq_eval", disable=args.no_progress):
        if label not in fp32_cache:
            fp32_cache[label] = evaluator.evaluate(model)[evaluator.metric_name]
        row, report = evaluate_row(label, model, meta, fp32_cache[label], evaluator, replace(base, calibrator=cal),
                                   args)
        rows.append(row)
        reports[f"{label}/{cal}"] = report
        print(row_line(row, len(rows), len(jobs)), flush=True)
        table = write_outputs(args.out, rows, reports, args, evaluator.metric_name)
    finish_export(args.out, _spec(args), {"rows": len(rows)})
    print(table)
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        run(args)
    except (CheckpointError, ValueError, FileNotFoundError, FileExistsError, NotADirectoryError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
