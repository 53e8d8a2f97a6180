"""report.md of the quantization pipeline, and its one-line diagnosis, from the report.json content."""
from __future__ import annotations


def diagnosis_line(analysis: dict) -> str:
    """One line from the C1/C2 flags of :func:`qarep_dense.analysis.pipeline.analyze_model`."""
    c1, c2 = analysis["flags"]["C1"], analysis["flags"]["C2"]
    if not c1 and not c2:
        return ("C1 and C2 hold: weights and activations have feasible ranges, so plain max-calibrated INT8 "
                "should work.")
    parts = []
    if c1:
        parts.append(f"C1 fails in {len(c1)} layer(s) (first: {c1[0]['layer']}: {'; '.join(c1[0]['reasons'])}): "
                     "outlier weights set per-channel INT8 scales, the repair / CLE target this")
    if c2:
        parts.append(f"C2 fails in {len(c2)} layer(s) (first: {c2[0]['layer']}: {'; '.join(c2[0]['reasons'])}): "
                     "wide activations cost per-tensor INT8 resolution, a clipping calibrator targets this")
    return "; ".join(parts) + "."


def _f(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 0.01 and value != 0 else f"{value:.{digits}f}"
    return str(value)


def _candidate_rows(report: dict) -> list[str]:
    cls = report["selection"]["score"] == "kl"  # the KL columns exist for classifiers only
    head = "| candidate | time s | selection score | rel MSE |" + (" KL | top-1 agree | sel. top-1 |" if cls else "") + \
        f" val {report['metric']} (not used) |"
    lines = [head, "|" + "|".join("---" for _ in head.split("|")[1:-1]) + "|"]
    chosen = report["chosen"]["candidate"]
    for c in sorted(report["candidates"], key=lambda c: c["selection"]["score"]):
        s = c["selection"]
        name = f"**{c['name']}** (chosen)" if c["name"] == chosen else c["name"]
        row = f"| {name} | {c['seconds']:.1f} | {s['score']:.4g} | {s['rel_mse']:.4g} |"
        if cls:
            row += f" {_f(s['kl'], 4)} | {_f(s['top1_agreement'], 4)} | {_f(s['top1'])} |"
        lines.append(row + f" {_f(c['validation'])} |")
    return lines


def _overlap_words(sel: dict) -> str:
    if sel.get("disjoint_from_calibration", True):
        return (f"that calibration ({sel['calib_images']} images) and the repair's held-out batch never saw")
    return (f"that OVERLAP the {sel['calib_images']} calibration images (the training split is smaller than "
            "calibration + selection: lower --selection-images or --calib-batches, or add training images)")


def _resolution_lines(report: dict) -> list[str]:
    res = report.get("metric_resolution")
    if not res or not res.get("finer_than_budget"):
        return []
    return [f"Note: with {res['validation_images']} validation images one image is worth "
            f"{res['points_per_image']:.2f} {report['metric']} points, more than the budget of "
            f"{report['max_drop']:.2f}: the budget means that no validation prediction may get worse.", ""]


def render_report(report: dict) -> str:
    m, sel = report["metric"], report["selection"]
    chosen = report["chosen"]
    verdict = "met" if report["budget_met"] else "MISSED"
    if not report["is_int8"]:
        verdict = "NOT MET: no conv runs as an integer kernel, this is not an INT8 model"
    lines = [
        f"# INT8 quantization of {report['checkpoint']}",
        "",
        f"{report['task']} {report['arch']} ({report['block']})"
        + (f", converted from {report['converted_from']}" if report["converted_from"] else "")
        + f"; quantization backend {report.get('backend', 'pytorch_quantization')}",
        "",
        "## Result",
        "",
        f"| | {m} |", "|---|---|",
        f"| FP32 | {report['fp32']:.2f} |",
        f"| INT8 (fake quant, {report['how']}) | {report['int8']:.2f} |",
        f"| INT8 in ONNX Runtime ({report['ort']['kernels']} kernels, `{report['onnx_scored']}`) | "
        f"{report['int8_ort']:.2f} |",
        f"| drop | {report['drop']:.2f} (budget {report['max_drop']:.2f}: **{verdict}**) |",
        "",
        f"Chosen: calibrator **{chosen['calibrator']}**, repair {'on' if chosen['repair'] else 'off'}, "
        f"CLE {chosen['cle']}, bias correction {'on' if chosen.get('bias_correction') else 'off'}, float layers {len(chosen['float_layers'])}"
        + (f" ({', '.join(chosen['float_layers'])})" if chosen["float_layers"] else "")
        + f", QAT {'yes' if chosen['qat'] else 'no'}. "
        f"Integer convs in ORT: {report['integer_convs']}/{report['convs']}. Latency (batch 1, median): "
        f"FP32 {report['ort']['latency_ms']['fp32']:.2f} ms, INT8 {report['ort']['latency_ms']['int8']:.2f} ms "
        f"({report['threads']} torch threads, {report['cpu_count']} CPUs). ORT vs fake quant: relative error "
        f"{_f(report['ort']['ort_vs_fakequant_rel_error'], 3)}.",
        "",
        *_resolution_lines(report),
    ]
    if report.get("diagnosis"):
        d = report["diagnosis"]
        lines += ["## Diagnosis", "", d["line"], "", f"Details: [{d['report']}]({d['report']}).", ""]
        lines += [f"![{p}]({p})" for p in d["plots"]] + [""]
    lines += [
        "## Candidates",
        "",
        f"Scored on {sel['images']} training images {_overlap_words(sel)}; the score is the {'mean KL divergence of the softmax' if sel['score'] == 'kl' else 'relative MSE of the outputs'} "
        "against the FP32 model (lower is better); ties go to the cheaper candidate. Time: the float transform "
        "plus calibration (plus the bias correction of '+bc' candidates). The last column was measured on the validation split AFTER the choice and was not "
        "used for it.",
        "",
        *_candidate_rows(report),
        "",
        f"Spearman rank correlation of the selection score with the validation {m} over the candidates: "
        f"{_f(sel['spearman_score_vs_validation'], 3)} (-1: the score ranks the candidates exactly as validation "
        "does).",
        "",
        f"Why this candidate: lowest selection score ({chosen['candidate']}). Its all-INT8 validation {m}: "
        f"{report['int8_all_int8_choice']:.2f} (FP32 {report['fp32']:.2f}).",
        "",
    ]
    if report.get("partial"):
        shipped = report["partial"]["shipped"]
        lines += ["## Partial quantization", "",
                  "The all-INT8 choice missed the budget. The budget is a promise about the validation metric, so "
                  "each step below was checked there (the one setting fitted to validation): the most sensitive "
                  "layers (output MSE on calibration images) are kept in float, fewest first. The first step that "
                  "meets the budget ends the ladder; when none does, the best step is shipped (marked).", "",
                  f"| float layers | validation {m} | drop | shipped |", "|---|---|---|---|"]
        lines += [f"| {len(s['float_layers'])} | {s['validation']:.2f} | {s['drop']:.2f} | "
                  f"{'**yes**' if i == shipped else ''} |" for i, s in enumerate(report["partial"]["steps"])]
        lines.append("")
    if report.get("qat"):
        q = report["qat"]
        verdict = "it is shipped." if q["kept"] else \
            f"the PTQ model ({report['int8']:.2f}) is better and is shipped instead."
        lines += ["## QAT", "", f"A short QAT fine-tune of the best PTQ model gave validation {m} "
                  f"{q['validation']:.2f} (drop {q['drop']:.2f}); {verdict}", ""]
    elif not report["budget_met"] and report["int8_only"]:
        lines += ["--int8-only: no layer may stay in float, so the all-INT8 result above is final.", ""]
    lines += ["## Time", "", "| step | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in report["seconds"].items()]
    return "\n".join(lines) + "\n"
