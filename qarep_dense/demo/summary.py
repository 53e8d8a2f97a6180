"""summary.md of the main job: every table from the stage records, every plot linked, one section per
task, and a line saying why for anything that did not run. Each task's main table is rendered from the rows of
results.json (:mod:`.results`), so the page and the file agree."""
from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

from .results import DENSE_PAIR, build_rows, calibration_text, dense_stage, int8_settings, markdown_table, task_table
from .verdict import DENSE_CRITERIA, Criteria, format_range, seed_range, verdict

SECTIONS = ("Classification", "Detection", "Segmentation", "Speed", "Pictures")
# The variants beside the main table's FP32 and INT8 (max): those two come from the rows of results.json.
CLS_COLUMNS = (("int8_hist", "INT8 entropy"),
               ("weights_only", "weights-only INT8"), ("acts_only", "activations-only INT8"),
               ("int8_max_repair", "INT8 max after repair"))
STORY = {"repvgg_custom": "repvgg", "qarepvgg": "qarepvgg"}
MECH_COLUMNS = (("near_dead_identity", "near-dead identity ch."), ("max_multiplier", "largest BN multiplier"),
                ("max_fused_weight", "largest fused weight"), ("worst_int8_error", "worst-channel INT8 weight error"),
                ("act_max", "largest input |x|"), ("act_max_over_std", "max |x| / std"), ("c1_flags", "C1 flags"),
                ("c2_flags", "C2 flags"))


def _rel(path: str | os.PathLike, out: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(out.resolve()))
    except ValueError:
        return str(path)


def _g(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _per_seed(records: dict, prefix: str, name: str, seeds: list[int]) -> list[tuple[int, dict]]:
    return [(s, records[f"{prefix}{name}_s{s}"]) for s in seeds if f"{prefix}{name}_s{s}" in records]


def _pipeline_table(out: Path, records: dict, task: str, rows: list[dict], seeds: list[int],
                    flags: str = "--int8-only --max-drop 1") -> list[str]:
    """tools/quantize.py's all-INT8 choice next to plain max PTQ (the task table's "int8"), per model and seed."""
    plain = {(r["model"], r["seed"]): r.get("int8") for r in rows}
    models = ("repvgg_custom", "qarepvgg") if task == "cls" else ("repvgg", "qarepvgg")
    table = [[m, s, f"{r['fp32']:.2f}", _g(plain.get((m, s), "-")), r["candidate"], f"{r['int8']:.2f}",
              _g(r["int8_ort"]), f"{r['drop']:.2f}", "yes" if r["budget_met"] else "no",
              f"[report]({_rel(r['report'], out)})"]
             for m in models for s, r in _per_seed(records, f"{task}_pipeline_", m, seeds)]
    if not table:
        return []
    return ["", f"### One command: `tools/quantize.py {flags}` (candidates scored on training "
            "images, validation reported)", "",
            *markdown_table(["model", "seed", "FP32", "INT8 max (plain PTQ)", "pipeline's choice", "pipeline INT8",
                             "ORT INT8", "drop", "within 1 point", "report"], table)]


def _story_verdict(rows: list[dict], seeds: list[int], story: dict[str, str], base: Criteria = Criteria()) -> str:
    """RepVGG against QARepVGG over the run's seeds (max calibration): the verdict's summary line, with
    ``base``'s thresholds and "most of the run's seeds" (4 of 5) as the count."""
    pairs = [{**r, "block": story[r["model"]]} for r in rows if r["model"] in story and "int8" in r]
    crit = replace(base, min_seeds=max(1, len(seeds)), min_collapsed=max(1, (4 * len(seeds) + 4) // 5))
    return verdict(pairs, crit)["summary"]


def _cls_section(out: Path, records: dict, info: dict, rows: list[dict], how: dict) -> list[str]:
    seeds, models = info["cls_seeds"], info["cls_models"]
    lines = [f"{info['cls_data']}, {info['cls_epochs']} epochs, "
             f"`{' '.join(info['cls_recipe'])}`, seeds {seeds}. Top-1 % as mean (min-max) over seeds. RepVGG "
             "custom = its authors' recipe (custom L2 on the branch kernels + weight decay on the identity-BN "
             "gammas); the others use normal L2. "
             + ("RepOpt-VGG's scales come from one Hyper-Search run (cls/hs). " if "repopt" in models else
                "RepOpt-VGG, the optimizer-side baseline, is left out: `--cls-models repvgg_custom,qarepvgg,repopt` "
                "adds its rows. ")
             + "INT8 = W8A8 PTQ of the fused model (per-channel weights, per-tensor activations, every "
             f"conv and FC input), {calibration_text(how)}; weights-only / activations-only switch the other "
             "side's quantizers off. The first table is results.json's rows.", ""]
    lines += task_table(rows)
    variants = []
    for m in models:
        per = _per_seed(records, "cls_quant_", m, seeds)
        if per:
            variants.append([m, *[format_range(seed_range(r[k] for _, r in per)) for k, _ in CLS_COLUMNS],
                             format_range(seed_range(r["repaired_channels"] for _, r in per), 0)])
    lines += ["", "Other INT8 variants of the same models:", ""]
    lines += markdown_table(["model", *[h for _, h in CLS_COLUMNS], "channels zeroed by repair"], variants)
    # the verdict's two sides: RepVGG with its authors' recipe against QARepVGG (repvgg_normal is also a "repvgg")
    lines += ["", f"**Verdict over these seeds** (RepVGG custom vs QARepVGG, max calibration): "
              f"{_story_verdict(rows, seeds, STORY)}.", ""]
    lines += ["### Mechanism (tools/analyze.py on the trained model)", ""]
    mech_rows = []
    for m in models:
        for s, r in _per_seed(records, "cls_analyze_", m, seeds):
            link = f"[report]({_rel(r['report'], out)})"
            mech_rows.append([m, s, *[_g(r.get(k, "")) for k, _ in MECH_COLUMNS], link])
    lines += markdown_table(["model", "seed", *[h for _, h in MECH_COLUMNS], "report"], mech_rows)
    lines += ["", "### Dead-channel repair (RepVGG models)", ""]
    rep_rows = [[m, s, f"{r['int8_max']:.2f}", f"{r['int8_max_repair']:.2f}", r["repaired_channels"],
                 _g(r["repair"].get("alive_on_heldout", "-")), _g(r["repair"].get("heldout_rel_error", "-"))]
                for m in models if m.startswith("repvgg") for s, r in _per_seed(records, "cls_quant_", m, seeds)]
    lines += markdown_table(["model", "seed", "INT8 max before", "after repair", "input channels zeroed",
                             "dead on calibration, alive on held-out", "FP32 rel. change on held-out"], rep_rows)
    lines += _pipeline_table(out, records, "cls", rows, seeds)
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


def _ort_convs(records: dict, stages: list[str]) -> str:
    """"repvgg 56/56, qarepvgg 56/56": the integer convs ONNX Runtime ran, per model of the first table."""
    record = next((records[s] for s in stages if s in records), {})
    return ", ".join(f"{r.get('block') or r['model']} {r['ort_integer_convs']}" for r in record.get("rows", [])
                     if "ort_integer_convs" in r) or "not recorded"


DENSE_STORY = {"repvgg": "repvgg", "qarepvgg": "qarepvgg"}
DENSE_TEXT = {
    "det": "Detectors (the A0h trunk of the classifiers above, Rep-PAN neck, efficient decoupled head; YOLOv6's "
           "fine-tuning recipe: `{det_config}`, {epochs} epochs)",
    "seg": "FCN segmentors (the A0h trunk of the classifiers above, stroke masks of 11 classes; mmseg's schedule "
           "with `norm_decay_mult=0`: `{seg_config}`)"}


def _dense_section(out: Path, records: dict, info: dict, rows: list[dict], how: dict, task: str) -> list[str]:
    """Detection or segmentation: each block's model fine-tuned from that block's classifier of the same seed."""
    seeds, blocks = info["det_seeds"], info.get("det_blocks", DENSE_PAIR)
    if not rows:
        return task_table(rows)

    def ptq(seed: int) -> str:
        return dense_stage("ptq", task, seed, blocks)

    recipe = DENSE_TEXT[task].format(epochs=info["det_epochs"], **info["dense_configs"])
    lines = [recipe + f", on {info.get('canvas_data', 'digit canvases')}, "
             f"seeds {seeds}: RepVGG starts from the RepVGG (custom L2) classifier, QARepVGG from the QARepVGG one"
             + ("; RepOpt-VGG from the RepOpt-VGG one, trained with RepOptimizer (detection: the masks of one "
                "Hyper-Search detector, det/hs; segmentation: those of the classifiers' Hyper-Search run)"
                if "repopt" in blocks else " (`--dense-blocks repvgg,qarepvgg,repopt` adds RepOpt-VGG's rows)")
             + ". "
             f"INT8 = W8A8 PTQ of the fused model ({calibration_text(how)}), the same for every model; ORT INT8 = the "
             "QDQ export run by ONNX Runtime. The table is results.json's rows.", ""]
    lines += [*task_table(rows), "", f"**Verdict over these seeds** (RepVGG vs QARepVGG, max calibration): "
              f"{_story_verdict(rows, seeds, DENSE_STORY, DENSE_CRITERIA[task])}.", "",
              f"Integer convs in ONNX Runtime: {_ort_convs(records, [ptq(s) for s in seeds])}.", "",
              "Per-seed tables: " + ", ".join(f"[seed {s}]({_rel(records[ptq(s)]['table'], out)})"
                                              for s in seeds if ptq(s) in records)]
    lines += _pipeline_table(out, records, task, rows, seeds, info.get("dense_quantize", "--int8-only --max-drop 1"))
    for seed in seeds:
        mech = records.get(dense_stage("mechanism", task, seed, blocks))
        if mech:
            cells = [[b, r0["stage"], f"{r0['dead']} -> {r1['dead']}",
                      f"{r0['max_fused_weight']:.3g} -> {r1['max_fused_weight']:.3g}"]
                     for b, pair in mech["blocks"].items() for r0, r1 in zip(pair["before"], pair["after"])]
            lines += ["", f"### Mechanism of the backbones, seed {seed}: classifier -> fine-tuned", "",
                      *markdown_table(["block", "stage", "near-dead identity channels", "largest fused weight"], cells),
                      "", f"![mechanism, seed {seed}]({_rel(mech['figure'], out)})"]
    if task == "det":
        lines += ["", "Reproducibility: every run uses `train.deterministic=true` and data.workers=0, so a rerun on "
                  "the same machine (same torch build, same thread count) gives the same numbers; across machines "
                  "the CPU kernels round differently, so compare the ranges over seeds, not single numbers."]
    return lines


def _speed_section(records: dict) -> list[str]:
    rows = [[name[len("speed_"):], r["batch"], f"{r['fp32_ms']:.2f}", f"{r['int8_ms']:.2f}", f"{r['speedup']:.2f}x",
             f"{r['integer_convs']}/{r['convs']}", f"{r['kernels']} ({r['kernel_reason']})"]
            for name, r in records.items() if name.startswith("speed_")]
    if not rows:
        return ["No fused models to time."]
    return ["Fused models, ONNX Runtime on this CPU, median of interleaved runs (threads as given to the demo).", "",
            *markdown_table(["model", "batch", "FP32 ms", "INT8 ms", "speed-up", "integer convs", "INT8 kernels"],
                            rows)]


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
    rows, how = build_rows(records, tasks, info), int8_settings(records, tasks, info)  # results.json's rows
    parts = {"Classification": ("cls", lambda: _cls_section(out, records, info, rows["cls"], how["cls"])),
             "Detection": ("det", lambda: _dense_section(out, records, info, rows["det"], how["det"], "det")),
             "Segmentation": ("seg", lambda: _dense_section(out, records, info, rows["seg"], how["seg"], "seg")),
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
