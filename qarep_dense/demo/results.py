"""The main job's machine-readable results (OUT/results.json) and the tables built from them.

:func:`build_rows` turns the stages' records into one row per measured model and seed:
``{"model", "block", "seed", "fp32", "int8", "int8_ort", "pipeline_int8", "metric"}``. Both results.json
(:func:`results_payload`, written by :func:`write_results`) and summary.md's main tables (:func:`task_table`)
are made from these rows, so the two cannot disagree; ``python -m qarep_dense.demo.results OUT/results.json``
prints the tables of docs/results.md from a run's file (:func:`render_tables`).

Units: every value is in percent. The records the rows read already hold percent (the evaluators' headline
metrics: top-1, COCO AP x 100, mmseg's mIoU); the only fractions in a run's records are the detection
trainings' own results.json (COCO's 0..1 scale), which the rows do not read: FP32 and INT8 both come from the
measurement stage that evaluated the fused model, with the same evaluator. A field that was not measured
(no ONNX Runtime run, no quantize pipeline) is absent from its row, never null; a model that was not
measured has no row.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from ..fileio import write_json_atomic
from .verdict import format_range, seed_range

RESULTS_FILE = "results.json"
TASK_TITLES = {"cls": "Classification", "det": "Detection", "seg": "Segmentation"}
ROW_FIELDS = ("model", "block", "seed", "fp32", "int8", "int8_ort", "pipeline_int8", "metric")
DENSE_PAIR = ("repvgg", "qarepvgg")  # the blocks of every detection and segmentation run (--dense-blocks adds more)
VALUE_FIELDS = ("fp32", "int8", "int8_ort", "pipeline_int8")
COLUMNS = {"fp32": "FP32 (fused model)",
           "int8": "W8A8 post-training quantization of the fused model, fake-quantized in PyTorch (see \"int8\")",
           "int8_ort": "the same INT8 model exported as QDQ ONNX and run by ONNX Runtime",
           "pipeline_int8": "tools/quantize.py --int8-only --max-drop 1: the search's all-INT8 choice"}
SETTINGS = ("profile", "cls_seeds", "det_seeds", "seg_seeds", "cls_epochs", "det_epochs", "cls_recipe", "cls_models",
            "det_blocks", "canvas_data")
CLS_METRIC = "top1"  # cls_quant records hold top-1 (%) under their variants' names (cls_story.quant_variants)


def _row(model: str, block: str | None, seed: int, metric: str, values: dict) -> dict:
    """One row; a value that was not measured (None, or NaN from a run that gave no number) is left out."""
    row = {"model": model, "block": block, "seed": seed, "metric": metric,
           **{k: float(v) for k, v in values.items()
              if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}}
    return {k: row[k] for k in ROW_FIELDS if k in row and row[k] is not None}


def _pipeline_int8(records: dict, task: str, model: str, seed: int) -> float | None:
    """The all-INT8 choice of the quantize-pipeline stage ``<task>_pipeline_<model>_s<seed>``, if it ran."""
    return (records.get(f"{task}_pipeline_{model}_s{seed}") or {}).get("int8")


def _cls_rows(records: dict, info: dict) -> list[dict]:
    rows = []
    for model in info["cls_models"]:
        for seed in info["cls_seeds"]:
            quant = records.get(f"cls_quant_{model}_s{seed}")
            if quant:
                block = (records.get(f"cls_train_{model}_s{seed}") or {}).get("block")
                rows.append(_row(model, block, seed, CLS_METRIC, {
                    "fp32": quant["fp32"], "int8": quant["int8_max"],
                    "pipeline_int8": _pipeline_int8(records, "cls", model, seed)}))
    return rows


def model_name(label: str, seed: int, block: str | None) -> str:
    """The model of a PTQ-table row: its work folder without the seed ("repvgg_s0/deploy" -> "repvgg"),
    or its block when the label names no folder."""
    parts = label.split("/")
    name = parts[-2] if len(parts) > 1 else (block or label)
    return name[: -len(f"_s{seed}")] if name.endswith(f"_s{seed}") else name


def _ptq_rows(records: dict, task: str, tables: list[tuple[str, int]]) -> list[dict]:
    """Rows of the PTQ-table stages ``tables`` ([(stage, seed)]): one per model of each table."""
    rows = []
    for stage, seed in tables:
        record = records.get(stage) or {}
        for r in record.get("rows", []):
            model = model_name(r["model"], seed, r.get("block"))
            rows.append(_row(model, r.get("block"), seed, record["metric"], {
                "fp32": r["fp32"], "int8": r["int8"], "int8_ort": r.get("ort_int8"),
                "pipeline_int8": _pipeline_int8(records, task, model, seed)}))
    return rows


def dense_stage(kind: str, task: str, seed: int, blocks) -> str:
    """The name of a stage that measures several dense models together ("ptq", "mechanism"): the pair's plain
    name, or with the blocks in it when there are more, so a folder rerun with more blocks measures them all
    anew rather than reusing a table without them."""
    name = f"{task}_{kind}_s{seed}"
    return name if set(blocks) <= set(DENSE_PAIR) else f"{name}_{'-'.join(blocks)}"


def _ptq_stages(task: str, info: dict) -> list[tuple[str, int]]:
    blocks = info.get("det_blocks", DENSE_PAIR)  # the segmentors train the detectors' seeds and blocks
    return [(dense_stage("ptq", task, s, blocks), s) for s in info["det_seeds"]]


def build_rows(records: dict, tasks: list[str], info: dict) -> dict[str, list[dict]]:
    """{task: rows} for each task of ``tasks`` (in ``TASK_TITLES`` order), from the stages' records;
    ``info``: the run's settings as the summary gets them (seeds, models)."""
    return {task: _cls_rows(records, info) if task == "cls" else _ptq_rows(records, task, _ptq_stages(task, info))
            for task in TASK_TITLES if task in tasks}


def _ptq_calibration(records: dict, stages: list[tuple[str, int]]) -> dict:
    """Scheme, calibrators and calibration image counts of the PTQ-table stages, from the rows and the
    stage's ptq_table.json (its PTQ reports), as recorded."""
    rows = [r for stage, _ in stages for r in (records.get(stage) or {}).get("rows", [])]
    images: set[int] = set()
    for stage, _ in stages:
        table = (records.get(stage) or {}).get("table")
        report = Path(table).with_name("ptq_table.json") if table else None
        try:
            reports = json.loads(report.read_text()).get("ptq_reports", {}) if report else {}
        except (OSError, ValueError):
            reports = {}
        images |= {int(r["calib_images"]) for r in reports.values() if isinstance(r, dict) and "calib_images" in r}
    return {"scheme": sorted({r["scheme"] for r in rows if "scheme" in r}),
            "calibrator": sorted({r["calibrator"] for r in rows if "calibrator" in r}), "calib_images": sorted(images)}


def int8_settings(records: dict, tasks: list[str], info: dict) -> dict:
    """Per task, how its "int8" column was made, as the records say: scheme, calibrator, calibration images."""
    out = {}
    for task in TASK_TITLES:
        if task == "cls" and task in tasks:
            quants = [r for name, r in records.items() if name.startswith("cls_quant_") and isinstance(r, dict)]
            # the "int8" column reads each record's int8_max: W8A8 with the max calibrator (cls_story.quant_variants)
            out[task] = {"scheme": ["W8A8"] if quants else [], "calibrator": ["max"] if quants else [],
                         "calib_images": sorted({int(r["calib_images"]) for r in quants if "calib_images" in r})}
        elif task in tasks:
            out[task] = _ptq_calibration(records, _ptq_stages(task, info))
    return out


def calibration_text(how: dict) -> str:
    """"max calibration, 256 calibration images": a task's entry of :func:`int8_settings`, in words."""
    counts = how.get("calib_images") or []
    images = ("calibration images not recorded (stages of an earlier version)" if not counts else
              f"{counts[0]} calibration images" if len(counts) == 1 else f"{counts[0]}-{counts[-1]} calibration images")
    return f"{'/'.join(how.get('calibrator') or []) or 'unrecorded'} calibration, {images}"


def results_payload(records: dict, tasks: list[str], info: dict) -> dict:
    """The content of OUT/results.json: {"units", "columns", "int8", "settings", and one row list per task}."""
    return {"units": "percent", "columns": COLUMNS,
            "int8": {"what": "W8A8 post-training quantization of the fused (deploy) model: per-channel weights, "
                             "per-tensor activations", **int8_settings(records, tasks, info)},
            "settings": {k: info[k] for k in SETTINGS if k in info},
            **build_rows(records, tasks, info)}


def write_results(out: str | os.PathLike, records: dict, tasks: list[str], info: dict) -> Path:
    """Write OUT/results.json atomically (inside the main job's claim of OUT, which records it when sealed)."""
    path = Path(out) / RESULTS_FILE
    write_json_atomic(path, results_payload(records, tasks, info), indent=1)
    return path


# --- tables ---------------------------------------------------------------------------------------------------

def markdown_table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(str(c) for c in row) + " |" for row in rows]]


def _cell(values: list[float], seeds: int) -> str:
    """mean (min-max) over the seeds that have the value; says how many when some lack it."""
    if not values:
        return "-"
    text = format_range(seed_range(values))
    return text if len(values) == seeds else f"{text} [{len(values)} of {seeds} seeds]"


def _drop(row: dict) -> float | None:
    return row["fp32"] - row["int8"] if "fp32" in row and "int8" in row else None


def task_table(rows: list[dict]) -> list[str]:
    """Markdown lines: per model, mean (min-max) over its seeds of FP32, INT8, the drop and (when any row has
    them) ORT INT8 and the pipeline's INT8; then the INT8 drop per seed."""
    if not rows:
        return ["No model was measured."]
    metric = rows[0]["metric"]
    by_model: dict[str, list[dict]] = {}
    for r in rows:
        by_model.setdefault(r["model"], []).append(r)
    optional = [k for k in ("int8_ort", "pipeline_int8") if any(k in r for r in rows)]
    header = ["model", "block", "seeds", f"FP32 {metric}", f"INT8 {metric}", "drop",
              *[{"int8_ort": "ORT INT8", "pipeline_int8": "pipeline INT8"}[k] for k in optional]]
    body = []
    for model, group in by_model.items():
        n = len(group)
        drops = [d for d in map(_drop, group) if d is not None]
        body.append([model, group[0].get("block", "-"), n, *[_cell([r[k] for r in group if k in r], n)
                                                             for k in ("fp32", "int8")],
                     _cell(drops, n), *[_cell([r[k] for r in group if k in r], n) for k in optional]])
    per_seed = "; ".join(f"{model} [" + ", ".join(f"s{r['seed']}: {_drop(r):.2f}" for r in group
                                                   if _drop(r) is not None) + "]"
                         for model, group in by_model.items())
    return [*markdown_table(header, body), "", f"INT8 drop per seed ({metric} points): {per_seed}"]


# --- reading a results.json -----------------------------------------------------------------------------------

def _check_row(row, where: str) -> None:
    if not isinstance(row, dict):
        raise ValueError(f"{where}: a row is {type(row).__name__}, not an object")
    missing = [k for k in ("model", "seed", "metric") if k not in row]
    unknown = sorted(set(row) - set(ROW_FIELDS))
    bad = [k for k in VALUE_FIELDS if k in row and not (isinstance(row[k], (int, float))
                                                       and not isinstance(row[k], bool) and math.isfinite(row[k]))]
    if missing or unknown or bad:
        raise ValueError(f"{where}: row {row.get('model', '?')}/s{row.get('seed', '?')}: "
                         + "; ".join(filter(None, [missing and f"missing {missing}", unknown and f"unknown {unknown}",
                                                   bad and f"not a finite number: {bad}"])))


def load_results(path: str | os.PathLike) -> dict:
    """A main job's results.json, checked: a malformed file raises ValueError naming it and what is wrong."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"{path}: not a readable JSON file ({err})") from None
    if not isinstance(data, dict) or data.get("units") != "percent":
        raise ValueError(f"{path}: not a main job's results.json (no \"units\": \"percent\" at the top level)")
    for task in TASK_TITLES:
        rows = data.get(task, [])
        if not isinstance(rows, list):
            raise ValueError(f"{path}: \"{task}\" is {type(rows).__name__}, not a list of rows")
        for row in rows:
            _check_row(row, f"{path}: \"{task}\"")
    return data


def render_tables(data: dict) -> str:
    """The Markdown of docs/results.md's main-job tables: one per task present in ``data`` (a results.json)."""
    int8 = data.get("int8", {})
    lines = []
    for task, title in TASK_TITLES.items():
        if task in data:
            lines += [f"### {title}", "", f"Mean (min-max) over seeds, percent. INT8: {int8.get('what', 'W8A8 PTQ')}; "
                      f"{calibration_text(int8.get(task, {}))}.", "",
                      *task_table(data[task]), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qarep_dense.demo.results",
                                     description="Print the main job's tables (docs/results.md) from its results.json.")
    parser.add_argument("results", type=Path, help="a main job's OUT/results.json")
    args = parser.parse_args(argv)
    try:
        data = load_results(args.results)
    except ValueError as err:
        parser.error(str(err))
    sys.stdout.write(render_tables(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
