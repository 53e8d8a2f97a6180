"""FP32 vs INT8 post-training quantization, side by side: the paper's ``model | FP32 | INT8 | drop`` table
(the study behind ``tools/ptq_eval.py``).

Each checkpoint is loaded fused, evaluated in FP32, then for each calibrator run through
:func:`~qarep_dense.tasks.quant_check.quantize_and_check` (W8A8 per-channel weights / per-tensor
activations, calibrated on the train split with the evaluation preprocessing; with ``ort`` the QDQ model is
also evaluated in onnxruntime, integer kernels counted, not assumed). Writes OUT/ptq_table.{md,csv,json},
rewritten after every row: until the last row is in, the markdown table starts with
``partial: N of M rows`` and the json has ``"complete": false``, so an interrupted run is never read as a
finished one. OUT is claimed (:mod:`qarep_dense.fileio.ownership`): a later run into the same OUT replaces
exactly the files this one recorded and refuses to overwrite any file it did not write.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from torch import nn
from tqdm import tqdm

from ..engine.checkpoint import CheckpointError
from ..evaluation.evaluators import BATCH_SIZE, Evaluator
from ..fileio import Claim, claim, write_text_atomic
from ..quant import OrtModule, QuantConfig, choose_int8_kernels, ort_quantize_static
from .quant_check import CheckOptions, QuantReport, quantize_and_check
from .registry import get_task, load_fused
from .splits import request_for

log = logging.getLogger(__name__)
# Checkpoints compared in one table must describe the same network and input.
_SAME_META = ("task", "arch", "scale", "num_classes", "image_size", "stem_stride", "use_dfl")
TABLES = ("ptq_table.md", "ptq_table.csv", "ptq_table.json")


@dataclass
class PtqStudy:
    """One table: ``checkpoints`` (same network) x ``calibrators``. ``base`` carries the bits, percentile,
    calibration batches and the repair; ``ort`` / ``ort_static``: also score the exported QDQ model /
    onnxruntime's own quantize_static model in onnxruntime."""

    task: str
    checkpoints: list[Path]
    out: Path
    data: Path | None = None
    calibrators: list[str] = field(default_factory=lambda: ["max"])
    base: QuantConfig = field(default_factory=QuantConfig)
    batch_size: int = BATCH_SIZE
    workers: int = 0
    image_size: int | None = None
    ort: bool = False
    ort_static: bool = False
    ort_precision: str = "auto"
    device: str = "cpu"
    progress: bool = True


# --- checks before any work -----------------------------------------------------------------------

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


def check_inputs(study: PtqStudy) -> None:
    """Before any work: each checkpoint once, --data present if given, --out writable."""
    seen: dict[Path, Path] = {}
    for path in study.checkpoints:
        key = path.resolve()
        if key in seen:
            raise ValueError(f"--checkpoints: {path} is given twice (also as {seen[key]}); pass each checkpoint once")
        seen[key] = path
    if study.data is not None and not study.data.is_dir():
        raise FileNotFoundError(f"--data {study.data}: folder not found")
    check_writable(study.out)


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

def _ort_columns(report: QuantReport) -> dict:
    check = report.ort
    return {"ort_int8": report.int8_ort, "ort_kernels": check.kernels,
            "ort_kernel_reason": check.kernel_reason, "ort_all_convs_integer": check.all_convs_integer,
            "ort_integer_convs": f"{check.integer_convs}/{check.convs_total}",
            "ort_vs_torch_rel_error": check.rel_error,
            # ORT has no integer ConvTranspose on CPU: the detector's upsamples stay float, said here.
            **({"ort_float_conv_transposes": check.float_conv_transposes} if check.conv_transposes_total else {})}


def evaluate_row(label: str, model: nn.Module, meta: dict, fp32: float, evaluator: Evaluator,
                 config: QuantConfig, study: PtqStudy) -> tuple[dict, dict]:
    """Quantize ``model`` with ``config``, evaluate (and check in ORT); returns (table row, PTQ report dict)."""
    stem = f"{label.replace('/', '_')}_{config.calibrator}"
    options = CheckOptions(ort=study.ort, ort_precision=study.ort_precision,
                           onnx_path=study.out / "onnx" / f"{stem}_qdq.onnx", device=study.device,
                           progress=study.progress)
    report = quantize_and_check(model, evaluator.calibration_loader(), evaluator.preprocess, config, evaluator,
                                options, fp32=fp32)
    row = {"model": label, "block": meta.get("block"), "arch": meta.get("arch") or meta.get("scale"),
           "calibrator": config.calibrator, "backend": config.backend, "scheme": config.scheme, "fp32": fp32,
           "int8": report.int8,
           "drop": report.drop, "calib_seconds": report.ptq.calib_seconds}
    if report.ptq.repair is not None:
        repair = report.ptq.repair
        row.update({"repaired_channels": repair.zeroed_channels, "repair_alive_on_heldout": repair.alive_on_heldout,
                    "repair_heldout_max_abs_diff": repair.heldout_max_abs_diff})
    if study.ort:
        row.update(_ort_columns(report))
    if study.ort_static and config.calibrator != "mse":  # onnxruntime has no MSE calibrator
        path = ort_quantize_static(model, evaluator.calibration_loader(), evaluator.preprocess,
                                   study.out / "onnx" / f"{stem}_ort_static.onnx", config)
        kernels = row.get("ort_kernels") or choose_int8_kernels(path, mode=study.ort_precision).kernels
        row["ort_static_int8"] = evaluator.evaluate(OrtModule(path, precise_int8=kernels == "precise"))[
            evaluator.metric_name]
        row["ort_kernels"] = kernels
    return row, report.ptq.as_dict()


# --- output -------------------------------------------------------------------------------------

_COLUMNS = [("model", "model"), ("block", "block"), ("calibrator", "calibrator"), ("fp32", "FP32"),
            ("int8", "INT8"), ("drop", "drop"), ("repaired_channels", "repaired ch"),
            ("repair_alive_on_heldout", "dead calib / alive held-out"), ("ort_int8", "ORT INT8"),
            ("ort_kernels", "ORT kernels"), ("ort_integer_convs", "ORT int convs"),
            ("ort_float_conv_transposes", "ORT float deconvs"),
            ("ort_static_int8", "ORT static INT8")]


def _fmt(value) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def partial_line(done: int, total: int) -> str:
    """The first line of a table that is still being computed, or whose run stopped early."""
    return f"partial: {done} of {total} rows (the run has not finished, or stopped early)"


def markdown_table(rows: list[dict], metric: str, total: int | None = None) -> str:
    """The table; ``total``: rows the run will compute (a table with fewer rows is marked partial)."""
    scheme = rows[0]["scheme"] if rows else ""
    # "INT8" only for W8A8: a W4A8 table must not be read as INT8 numbers.
    cols = [(k, h.replace("INT8", scheme) if scheme != "W8A8" else h) for k, h in _COLUMNS if any(k in r for r in rows)]
    lines = [partial_line(len(rows), total), ""] if total is not None and len(rows) < total else []
    backend = rows[0].get("backend") if rows else None
    lines += [f"{metric}, {scheme}" + (f", backend {backend}" if backend else ""),
              "",
              "| " + " | ".join(h for _, h in cols) + " |",
              "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(_fmt(r.get(k, "")) for k, _ in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _onnx_files(label: str, calibrator: str) -> list[str]:
    """Files (relative to OUT) one row may write: the QDQ model and ORT's own model, each with the
    pre-processed copy and the transient optimized graph the integer-kernel check writes next to it."""
    stem = f"onnx/{label.replace('/', '_')}_{calibrator}"
    models = [f"{stem}_qdq", f"{stem}_qdq.pre", f"{stem}_ort_static", f"{stem}_ort_static.pre"]
    return [f"{m}{suffix}" for m in models for suffix in (".onnx", ".ort-optimized.onnx")]


def _spec(study: PtqStudy) -> dict:
    return {"tool": "ptq_eval", "task": study.task, "checkpoints": [str(p) for p in study.checkpoints],
            "calibrators": list(study.calibrators), "data": None if study.data is None else str(study.data)}


def claim_outputs(study: PtqStudy, labels: list[str]) -> Claim:
    """Claim ``study.out`` (:mod:`qarep_dense.fileio.ownership`): the files an earlier ptq_eval recorded there
    are replaced, any other file is left alone, and a file of someone else's where a table or ONNX model goes
    stops the run."""
    files = [*TABLES, *(f for label in labels for cal in study.calibrators for f in _onnx_files(label, cal))]
    return claim(study.out, "ptq_eval", _spec(study), writes=files, label="--out")


def write_outputs(study: PtqStudy, rows: list[dict], reports: dict, metric: str, total: int) -> str:
    """(Re)write the three tables with the rows so far (each file replaced atomically); ``total``: the rows
    the run will compute, so that a table with fewer is marked partial."""
    out = study.out
    table = markdown_table(rows, metric, total)
    write_text_atomic(out / "ptq_table.md", table)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    tmp = out / ".ptq_table.csv.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, out / "ptq_table.csv")
    payload = {"task": study.task, "metric": metric, "data": str(study.data),
               "checkpoints": [str(p) for p in study.checkpoints], "complete": len(rows) >= total,
               "rows_done": len(rows), "rows_total": total, "rows": rows, "ptq_reports": reports}
    write_text_atomic(out / "ptq_table.json", json.dumps(payload, indent=2, default=str))
    return table


def row_line(row: dict, index: int, total: int) -> str:
    """One computed row as a console line (the full table follows at the end)."""
    parts = [f"{h} {_fmt(row[k])}" for k, h in _COLUMNS if k in row and k not in ("model", "block", "calibrator")]
    return f"[{index}/{total}] {row['model']} {row['calibrator']}: " + ", ".join(parts)


def run_study(study: PtqStudy, echo: Callable[[str], None] = log.info) -> tuple[list[dict], str]:
    """Compute the table, writing it after every row; returns (rows, markdown table).

    ``echo`` gets each row's line as it is computed (a tool prints them).
    """
    check_inputs(study)
    loaded = [load_fused(p, study.task, device=study.device) for p in study.checkpoints]
    metas = [meta for _, meta in loaded]
    check_same_network(metas, study.checkpoints)
    request = request_for(study.checkpoints[0], metas[0], study.data, study.batch_size, study.workers, study.device,
                          study.image_size, study.progress)
    evaluator = get_task(study.task).make_evaluator(request)
    labels = model_labels(study.checkpoints)
    rows, reports, table = [], {}, ""
    jobs = [(label, m, meta, cal) for label, (m, meta) in zip(labels, loaded) for cal in study.calibrators]
    fp32_cache: dict[str, float] = {}
    with claim_outputs(study, labels) as claimed:
        for label, model, meta, cal in tqdm(jobs, desc="ptq_eval", disable=not study.progress):
            if label not in fp32_cache:
                fp32_cache[label] = evaluator.evaluate(model)[evaluator.metric_name]
            row, report = evaluate_row(label, model, meta, fp32_cache[label], evaluator,
                                       replace(study.base, calibrator=cal), study)
            rows.append(row)
            reports[f"{label}/{cal}"] = report
            echo(row_line(row, len(rows), len(jobs)))
            table = write_outputs(study, rows, reports, evaluator.metric_name, len(jobs))
        claimed.seal({"rows": len(rows)})
    return rows, table
