"""Write an analysis report as JSON (every number) and Markdown (the verdict first, then the tables)."""
from __future__ import annotations

import json
import math
from pathlib import Path


def _finite(obj):
    """JSON has no inf/nan: write them as the strings "inf", "-inf", "nan"."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_json(report: dict, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(_finite(report), indent=2) + "\n")
    return path


def _g(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_g(v) for v in row) + " |" for row in rows]
    return lines + [""]


def _flag_section(title: str, flags: list[dict], explain: str) -> list[str]:
    lines = [f"## {title}", "", explain, ""]
    if not flags:
        return lines + ["No layer flagged.", ""]
    for f in flags:
        block = f" (block `{f['block']}`)" if f.get("block") else ""
        lines.append(f"- **`{f['layer']}`**{block}: " + "; ".join(f["reasons"]))
        n = f["numbers"]
        if "max_multiplier" in n:
            lines.append(f"  - largest BN multiplier in the block: {n['max_multiplier']:.4g} "
                         f"({n['max_multiplier_branch']} branch, channel {n['max_multiplier_channel']}); "
                         f"near-dead BN channels: {n['near_dead']}")
    return lines + [""]


def _weights_table(weights: list[dict]) -> list[str]:
    rows = [[w["name"], "x".join(map(str, w["shape"])), w["std"], w["max_abs"], w["max_over_std"],
             w["channel_spread"], w["int8_error"], w["int8_error_channel"]] for w in weights]
    return ["## Fused weights per layer (Fig. 2/3)", "",
            "INT8 error: the worst output channel's share of output power lost to per-channel INT8 weight "
            "quantization, weighting each weight by its input channel's measured power.", ""] + _table(
        ["layer", "shape", "std", "max abs", "max/std", "channel spread", "INT8 error", "channel"], rows)


def _scales_table(scales: list[dict]) -> list[str]:
    kinds = [k for k in ("3x3", "1x1", "identity", "post", "bn") if any(k in s["branches"] for s in scales)]
    rows = []
    for s in scales:
        cells = [f"{s['branches'][k]['max_abs']:.4g} ({s['branches'][k]['near_dead']})" if k in s["branches"]
                 else "-" for k in kinds]
        rows.append([s["name"], *cells, s["near_dead"]])
    return ["## BN multipliers gamma/sqrt(var+eps) per block (Fig. 3)", "",
            "Largest |multiplier| per branch, with the count of near-dead channels (running var < eps) "
            "in brackets.", ""] + _table(["block", *kinds, "near-dead total"], rows)


def _activations_table(acts: dict[str, dict]) -> list[str]:
    rows = [[name, s["amax"], s["std"], s["amax_over_std"], s["channel_spread"], s["dead_channels"]]
            for name, s in acts.items()]
    return ["## Layer inputs (C2)", ""] + _table(
        ["layer", "max abs", "std", "max/std", "channel spread", "dead channels"], rows)


def _branches_table(branches: dict[str, dict]) -> list[str]:
    keys = ["3x3", "1x1", "identity", "avg", "sum", "post_bn"]
    keys = [k for k in keys if any(k in b["branches"] for b in branches.values())]
    rows = [[name, *[f"{b['branches'][k]['mean']:.3g} / {b['branches'][k]['std']:.3g}"
                     if k in b["branches"] else "-" for k in keys], b["std_ratio"]]
            for name, b in branches.items()]
    return ["## Branch outputs per block (Fig. 4)", "",
            "mean / std of each branch over all channels; std ratio = std(sum) / largest branch std "
            "(> 1: adding the branches widened the distribution).", ""] + _table(["block", *keys, "std ratio"], rows)


def render_markdown(report: dict) -> str:
    """The Markdown report: verdict, flagged layers, then the per-layer and per-block tables."""
    c1, c2 = report["flags"]["C1"], report["flags"]["C2"]
    lines = ["# Quantization-friendliness report", ""]
    lines += [f"- {k}: {v}" for k, v in report["model"].items()]
    lines += [f"- activation inputs: {report['inputs']}", "",
              f"**C1 (weights): {len(c1)} layer(s) flagged. C2 (activations): {len(c2)} layer(s) flagged.**", "",
              "Thresholds: " + ", ".join(f"{k} {v:g}" for k, v in report["thresholds"].items()), ""]
    lines += _flag_section("C1: fused-weight outliers", c1,
                           "Weights are quantized per output channel: an outlier makes its channel's INT8 step "
                           "coarse enough to round the channel's other weights to zero; harmful when the outlier "
                           "multiplies an input that is always zero.")
    lines += _flag_section("C2: activation ranges", c2,
                           "Conv/linear inputs are quantized per tensor: one extreme value or channel sets the "
                           "step for all.")
    lines += _weights_table(report["weights"])
    if report["bn_scales"]:
        lines += _scales_table(report["bn_scales"])
    lines += _activations_table(report["activations"])
    if report["branches"]:
        lines += _branches_table(report["branches"])
    lines += ["## Plots", ""] + [f"![{name}]({name})" for name in report["plots"]] + [""]
    return "\n".join(lines)


def write_markdown(report: dict, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(render_markdown(report))
    return path
