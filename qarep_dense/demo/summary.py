"""summary.md of the main job: every table from the stage records, every plot linked, one section per
task, and a line saying why for anything that did not run."""
from __future__ import annotations

import json
import os
from pathlib import Path

from .verdict import Criteria, format_range, seed_range, verdict

SECTIONS = ("Classification", "Detection", "Segmentation", "Speed", "Pictures")
CLS_COLUMNS = (("fp32", "FP32"), ("int8_max", "INT8 max"), ("int8_hist", "INT8 entropy"),
               ("weights_only", "weights-only INT8"), ("acts_only", "activations-only INT8"),
               ("int8_max_repair", "INT8 max after repair"))
MECH_COLUMNS = (("near_dead_identity", "near-dead identity ch."), ("max_multiplier", "largest BN multiplier"),
                ("max_fused_weight", "largest fused weight"), ("worst_int8_error", "worst-channel INT8 weight error"),
                ("act_max", "largest input |x|"), ("act_max_over_std", "max |x| / std"), ("c1_flags", "C1 flags"),
                ("c2_flags", "C2 flags"))


def _rel(path: str | os.PathLike, out: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(out.resolve()))
    except ValueError:
        return str(path)


def _table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(str(c) for c in row) + " |" for row in rows]]


def _g(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _per_seed(records: dict, prefix: str, name: str, seeds: list[int]) -> list[tuple[int, dict]]:
    return [(s, records[f"{prefix}{name}_s{s}"]) for s in seeds if f"{prefix}{name}_s{s}" in records]


def _pipeline_table(out: Path, records: dict, seeds: list[int]) -> list[str]:
    """tools/quantize.py's all-INT8 choice next to plain max PTQ, per model and seed."""
    rows = [[m, s, f"{r['fp32']:.2f}", f"{records[f'cls_quant_{m}_s{s}']['int8_max']:.2f}"
             if f"cls_quant_{m}_s{s}" in records else "-", r["candidate"], f"{r['int8']:.2f}", _g(r["int8_ort"]),
             f"{r['drop']:.2f}", "yes" if r["budget_met"] else "no", f"[report]({_rel(r['report'], out)})"]
            for m in ("repvgg_custom", "qarepvgg") for s, r in _per_seed(records, "cls_pipeline_", m, seeds)]
    if not rows:
        return []
    return ["", "### One command: `tools/quantize.py --int8-only --max-drop 1` (candidates scored on training "
            "images, validation reported)", "",
            *_table(["model", "seed", "FP32", "INT8 max (plain PTQ)", "pipeline's choice", "pipeline INT8",
                     "ORT INT8", "drop", "within 1 point", "report"], rows)]


def _calib_images(records: dict) -> str:
    """How many images the classification PTQ stages calibrated on, as they recorded it."""
    counts = sorted({r["calib_images"] for name, r in records.items()
                     if name.startswith("cls_quant_") and isinstance(r, dict) and "calib_images" in r})
    if not counts:
        return "calibration images not recorded (stages of an earlier version)"
    return f"{counts[0]} calibration images" if len(counts) == 1 else f"{counts[0]}-{counts[-1]} calibration images"


def _cls_section(out: Path, records: dict, info: dict) -> list[str]:
    seeds, models = info["cls_seeds"], info["cls_models"]
    lines = [f"{info['cls_data']}, {info['cls_epochs']} epochs, "
             f"`{' '.join(info['cls_recipe'])}`, seeds {seeds}. Top-1 % as mean (min-max) over seeds. RepVGG "
             "custom = its authors' recipe (custom L2 on the branch kernels + weight decay on the identity-BN "
             "gammas); the others use normal L2. "
             + ("RepOpt-VGG's scales come from one Hyper-Search run (cls/hs). " if "repopt" in models else "")
             + "INT8 = W8A8 PTQ of the fused model (per-channel weights, per-tensor activations, every "
             f"conv and FC input), {_calib_images(records)}; weights-only / activations-only switch the other "
             "side's quantizers off.", ""]
    rows = []
    for m in models:
        per = _per_seed(records, "cls_quant_", m, seeds)
        if per:
            rows.append([m, *[format_range(seed_range(r[k] for _, r in per)) for k, _ in CLS_COLUMNS],
                         format_range(seed_range(r["repaired_channels"] for _, r in per), 0)])
    lines += _table(["model", *[h for _, h in CLS_COLUMNS], "channels zeroed by repair"], rows)
    rows_v = [{"seed": s, "block": b, "fp32": r["fp32"], "int8": r["int8_max"]}
              for b, m in (("repvgg", "repvgg_custom"), ("qarepvgg", "qarepvgg"))
              for s, r in _per_seed(records, "cls_quant_", m, seeds)]
    crit = Criteria(min_seeds=max(1, len(seeds)), min_collapsed=max(1, (4 * len(seeds) + 4) // 5))
    v = verdict(rows_v, crit)
    drops = {m: ", ".join(f"s{s}: {r['fp32'] - r['int8_max']:.1f}" for s, r in _per_seed(records, "cls_quant_", m,
                                                                                         seeds)) for m in models}
    lines += ["", f"**Verdict over these seeds** (RepVGG custom vs QARepVGG, max calibration): {v['summary']}.",
              "", "INT8 (max) drop per seed: " + "; ".join(f"{m} [{d}]" for m, d in drops.items() if d), ""]
    lines += ["### Mechanism (tools/analyze.py on the trained model)", ""]
    mech_rows = []
    for m in models:
        for s, r in _per_seed(records, "cls_analyze_", m, seeds):
            link = f"[report]({_rel(r['report'], out)})"
            mech_rows.append([m, s, *[_g(r.get(k, "")) for k, _ in MECH_COLUMNS], link])
    lines += _table(["model", "seed", *[h for _, h in MECH_COLUMNS], "report"], mech_rows)
    lines += ["", "### Dead-channel repair (RepVGG models)", ""]
    rep_rows = [[m, s, f"{r['int8_max']:.2f}", f"{r['int8_max_repair']:.2f}", r["repaired_channels"],
                 _g(r["repair"].get("alive_on_heldout", "-")), _g(r["repair"].get("heldout_rel_error", "-"))]
                for m in models if m.startswith("repvgg") for s, r in _per_seed(records, "cls_quant_", m, seeds)]
    lines += _table(["model", "seed", "INT8 max before", "after repair", "input channels zeroed",
                     "dead on calibration, alive on held-out", "FP32 rel. change on held-out"], rep_rows)
    lines += _pipeline_table(out, records, seeds)
    fig = next((r for k, r in records.items() if k.startswith("cls_figures")), None)
    if not fig:
        return lines + ["", "### The paper's Fig. 2-4", "", "- no figures"]
    lines += ["", f"### The paper's Fig. 2-4 for seed {fig['seed']}: RepVGG (custom L2) above, QARepVGG below", "",
              f"Drawn for seed {fig['seed']}, the seed whose RepVGG (custom L2) lost most under INT8 (max): "
              f"{fig['repvgg_int8_drop']:.1f} points; below it the QARepVGG model of the same seed.", ""]
    titles = {"fig2_weights": "Fig. 2/3: fused weights per layer (symlog axis)",
              "fig3_bn_scales": "Fig. 3: BN multipliers per branch", "fig4_branches": "Fig. 4: branch outputs",
              "activation_ranges": "input activation ranges (C2)"}
    lines += [f"- {titles.get(k, k)}: [{_rel(p, out)}]({_rel(p, out)})" for k, p in fig["figures"].items()]
    if "fig2_weights" in fig["figures"]:  # the one that shows the outliers
        lines += ["", f"![Fig. 2, seed {fig['seed']}]({_rel(fig['figures']['fig2_weights'], out)})"]
    return lines


def _ptq_rows(records: dict, prefix: str, seeds: list[int]) -> dict[str, list[dict]]:
    by_block: dict[str, list[dict]] = {}
    for s in seeds:
        for row in records.get(f"{prefix}{s}", {}).get("rows", []):
            by_block.setdefault(row.get("block") or row["model"], []).append(row)
    return by_block


def _ptq_summary(rows_by_block: dict[str, list[dict]], metric: str) -> list[str]:
    rows = []
    for block, rows_b in rows_by_block.items():
        ort = [r["ort_int8"] for r in rows_b if isinstance(r.get("ort_int8"), (int, float))]
        rows.append([block, len(rows_b), format_range(seed_range(r["fp32"] for r in rows_b)),
                     format_range(seed_range(r["int8"] for r in rows_b)),
                     format_range(seed_range(r["drop"] for r in rows_b)),
                     format_range(seed_range(ort)) if ort else "-", rows_b[0].get("ort_integer_convs", "-")])
    return _table(["block", "seeds", f"FP32 {metric}", f"INT8 {metric}", "drop", "ORT INT8", "ORT integer convs"],
                  rows)


def _det_section(out: Path, records: dict, info: dict) -> list[str]:
    seeds = info["det_seeds"]
    by_block = _ptq_rows(records, "det_ptq_s", seeds)
    metric = next((records[f"det_ptq_s{s}"]["metric"] for s in seeds if f"det_ptq_s{s}" in records), "AP")
    lines = [f"Synthetic COCO-format shapes, YOLOv6-n style detectors, {info['det_epochs']} epochs, seeds {seeds}; "
             "mean (min-max) over seeds; INT8 = W8A8 PTQ (max calibration), ORT INT8 = the QDQ export run by "
             "ONNX Runtime.", ""]
    lines += _ptq_summary(by_block, metric)
    lines += ["", "Per-seed tables: " + ", ".join(f"[seed {s}]({_rel(records[f'det_ptq_s{s}']['table'], out)})"
                                                    for s in seeds if f"det_ptq_s{s}" in records), "",
              "Reproducibility: every run uses `train.deterministic=true` and data.workers=0, so a rerun on the "
              "same machine (same torch build, same thread count) gives the same numbers. Across machines the "
              "CPU kernels (oneDNN/MKL code paths per instruction set, thread count) round differently; over "
              "hundreds of SGD steps that changes the trained detector, so AP moves by points from machine to "
              "machine. Compare the ranges over seeds, not single numbers."]
    return lines


def _seg_section(out: Path, records: dict, info: dict) -> list[str]:
    ptq = records.get("seg_ptq")
    if not ptq:
        return ["Segmentation did not run."]
    by_block = {}
    for row in ptq["rows"]:
        by_block.setdefault(row.get("block") or row["model"], []).append(row)
    seed = info["seg_seed"]
    return [f"QARepVGG and RepVGG segmentors on the synthetic segmentation data, one seed ({seed}).", "",
            *_ptq_summary(by_block, ptq.get("metric", "mIoU")), "", f"Table: [{_rel(ptq['table'], out)}]"
            f"({_rel(ptq['table'], out)})"]


def _speed_section(records: dict) -> list[str]:
    rows = [[name[len("speed_"):], r["batch"], f"{r['fp32_ms']:.2f}", f"{r['int8_ms']:.2f}", f"{r['speedup']:.2f}x",
             f"{r['integer_convs']}/{r['convs']}", f"{r['kernels']} ({r['kernel_reason']})"]
            for name, r in records.items() if name.startswith("speed_")]
    if not rows:
        return ["No fused models to time."]
    return ["Fused models, ONNX Runtime on this CPU, median of interleaved runs (threads as given to the demo).", "",
            *_table(["model", "batch", "FP32 ms", "INT8 ms", "speed-up", "integer convs", "INT8 kernels"], rows)]


def _pictures_section(out: Path, records: dict) -> list[str]:
    lines = []
    for name, files in records.items():
        if name.startswith("pictures_"):
            lines += ["", f"**{name[len('pictures_'):]}** (left FP32, right ONNX Runtime INT8)", ""]
            lines += [f"![{Path(f).stem}]({_rel(f, out)})" for f in files.get("side_by_side", [])]
    return lines or ["No pictures."]


def _markers(out: Path) -> list[dict]:
    found = []
    for marker in sorted((out / ".stages").glob("*.json")):
        try:
            found.append(json.loads(marker.read_text()))
        except (OSError, ValueError):
            continue
    return found


def stage_seconds(out: Path, prefix: str = "") -> float:
    """Total seconds the finished stages (those named ``prefix``...) took when they ran (from their
    markers); stages that ran side by side each count in full."""
    return sum(float(m.get("seconds", 0.0)) for m in _markers(out) if str(m.get("stage", "")).startswith(prefix))


def stage_span(out: Path) -> float | None:
    """Seconds from the first stage's start to the last one's end (None if no marker records them): the
    wall time of a run made in one go."""
    marks = [m for m in _markers(out) if "start" in m and "end" in m]
    return max(m["end"] for m in marks) - min(m["start"] for m in marks) if marks else None


def _timing_line(out: Path, info: dict) -> str:
    span = stage_span(out)
    per_task = ", ".join(f"{p.rstrip('_')} {stage_seconds(out, p) / 60:.1f}"
                         for p in ("cls_", "det_", "seg_", "speed_", "pictures_") if stage_seconds(out, p))
    return (f"{info.get('jobs', 1)} stages side by side, one thread each (latency: {info['threads']} threads). "
            + (f"Wall time from the first stage to the last: {span / 60:.1f} min; " if span is not None else "")
            + f"stage time {stage_seconds(out) / 60:.1f} min in total ({per_task or 'none'}; "
            f"{info['reused_stages']} stages reused from an earlier run).")


def render_summary(out: Path, records: dict, tasks: list[str], skipped: dict[str, str], info: dict,
                   failed: dict[str, str] | None = None) -> str:
    """The Markdown of summary.md; ``skipped`` maps a section key ("seg", "pictures") to the reason,
    ``failed`` a stage name to its error (listed first: the tables then lack those rows)."""
    out = Path(out)
    lines = ["# qarep-dense main job: RepVGG vs QARepVGG under INT8", "",
             f"Profile {info['profile']}, tasks {', '.join(tasks)}. {_timing_line(out, info)} Stage records: "
             "`.stages/`, tool logs: `logs/`."]
    if failed:
        lines += ["", f"**{len(failed)} stage(s) failed** (their rows are missing below; rerun to retry):", ""]
        lines += [f"- `{name}`: {why} (log: `logs/{name}.log`)" for name, why in failed.items()]
    if info["profile"] == "tiny":
        lines += ["", "**Tiny profile: toy models and data for testing the pipeline; the numbers mean nothing.**"]
    parts = {"Classification": ("cls", lambda: _cls_section(out, records, info)),
             "Detection": ("det", lambda: _det_section(out, records, info)),
             "Segmentation": ("seg", lambda: _seg_section(out, records, info)),
             "Speed": ("speed", lambda: _speed_section(records)),
             "Pictures": ("pictures", lambda: _pictures_section(out, records))}
    for title in SECTIONS:
        key, body = parts[title]
        lines += ["", f"## {title}", ""]
        if key in skipped:
            lines.append(f"{title} unavailable: {skipped[key]}.")
        elif key in TASKS_WITH_FLAG and key not in tasks:
            lines.append(f"Not run (not in --tasks {','.join(tasks)}).")
        else:
            lines += body()
    return "\n".join(lines) + "\n"


TASKS_WITH_FLAG = ("cls", "det", "seg")
