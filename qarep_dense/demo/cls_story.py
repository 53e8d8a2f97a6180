"""The classification story's numbers for one trained model: which side of W8A8 breaks, and why.

:func:`quant_variants` evaluates the fused model in FP32 and under post-training quantization with the
paper's setting (max calibration), one histogram calibrator, weights-only and activations-only INT8
(the other side's quantizers switched off after calibration) and max calibration after the dead-channel
repair. :func:`mechanism` reads ``tools/analyze.py``'s report.json for the paper's mechanism figures.
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

from torch import nn

log = logging.getLogger(__name__)

VARIANTS = ("fp32", "int8_max", "int8_hist", "weights_only", "acts_only", "int8_max_repair")


def quant_variants(deploy_path: str | os.PathLike, data_root: str | os.PathLike, hist_calibrator: str = "entropy",
                   calib_batches: int = 4, batch_size: int = 64, progress: bool = False) -> dict:
    """Top-1 (%) of a fused classifier checkpoint in FP32 and the INT8 variants of :data:`VARIANTS`.

    Calibration: ``calib_batches`` shuffled training batches with the evaluation preprocessing.
    Also returns "calib_images" (the images calibration used), "repaired_channels" (input channels the repair
    zeroed) and "repair" (the repair's summary: channels dead on calibration but alive on the held-out batch,
    FP32 agreement there).
    """
    from ..quant.ptq import quantize_one_side
    from ..tasks.quant_check import QuantConfig, quantize_ptq
    from ..tasks.registry import get_task, load_model
    from ..tasks.splits import request_for

    model, meta = load_model(deploy_path, "cls")
    if not meta.get("fused"):
        raise ValueError(f"{deploy_path}: expected a fused (deploy) checkpoint")
    # one loader size for both splits: the validation batch does not change top-1, the calibration batch does
    evaluator = get_task("cls").make_evaluator(request_for(deploy_path, meta, data_root, batch_size,
                                                           progress=progress))

    def top1(m: nn.Module) -> float:
        return float(evaluator.evaluate(m)["top1"])

    def ptq(calibrator: str, repair: bool = False):
        cfg = QuantConfig(calibrator=calibrator, num_calib_batches=calib_batches, repair_dead_channels=repair)
        return quantize_ptq(model, evaluator.calibration_loader(), evaluator.preprocess, cfg, progress=progress)

    out: dict = {"fp32": top1(model)}
    q, report = ptq("max")
    out["int8_max"], out["calib_images"] = top1(q), int(report.calib_images)  # what calibration saw
    out["weights_only"] = top1(quantize_one_side(q, "weights"))
    q, _ = ptq("max")
    out["acts_only"] = top1(quantize_one_side(q, "activations"))
    q, _ = ptq(hist_calibrator)
    out["int8_hist"], out["hist_calibrator"] = top1(q), hist_calibrator
    q, report = ptq("max", repair=True)
    out["int8_max_repair"] = top1(q)
    repair = report.as_dict().get("repair") or {}
    out["repair"] = {k: v for k, v in repair.items() if k != "entries"}
    out["repaired_channels"] = int(repair.get("zeroed_channels", 0))
    return out


def _finite_max(values: list[float]) -> float:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return max(vals) if vals else float("nan")


def mechanism(report_path: str | os.PathLike) -> dict:
    """The paper's mechanism figures from an analysis report.json (tools/analyze.py of a train-form model).

    near_dead_identity: identity-BN channels whose running variance is below eps (summed over blocks);
    max_multiplier: largest BN multiplier gamma/sqrt(var+eps) of any branch; max_fused_weight: largest
    |w| of the fused model; worst_int8_error: the worst output channel's relative INT8 weight error over
    all layers; act_max / act_max_over_std: the largest layer-input |x| and its ratio to that input's std;
    c1_flags / c2_flags: layers flagged for weights / activations.
    """
    path = Path(report_path)
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: unreadable analysis report ({err})") from err
    scales = report.get("bn_scales", [])
    weights = report.get("weights", [])
    acts = report.get("activations", {})
    dead = sum(b.get("branches", {}).get("identity", {}).get("near_dead", 0) for b in scales)
    act_max = [a.get("amax") for a in acts.values()]
    ratios = [a.get("amax_over_std") for a in acts.values()]
    return {"near_dead_identity": int(dead),
            "max_multiplier": _finite_max([b.get("max_abs") for b in scales]),
            "max_fused_weight": _finite_max([w.get("max_abs") for w in weights]),
            "worst_int8_error": _finite_max([w.get("int8_error") for w in weights]),
            "act_max": _finite_max(act_max),
            "act_max_over_std": _finite_max(ratios),
            "c1_flags": len(report.get("flags", {}).get("C1", [])),
            "c2_flags": len(report.get("flags", {}).get("C2", []))}


def story_figures(base: str | os.PathLike, seed: int, drop: float) -> dict[str, str]:
    """The paper's Fig. 2-4 of RepVGG (custom L2) of ``seed`` above its QARepVGG twin, from their analyses under
    ``base``; returns {figure: path}."""
    from ..analysis import PLOT_FILES
    from ..analysis.plots import plot_side_by_side

    base = Path(base)
    left, right = base / f"repvgg_custom_s{seed}" / "analysis", base / f"qarepvgg_s{seed}" / "analysis"
    figures = {}
    for key, fig in (("weights", "fig2_weights"), ("bn_scales", "fig3_bn_scales"), ("branches", "fig4_branches"),
                     ("activations", "activation_ranges")):
        pair = [left / PLOT_FILES[key], right / PLOT_FILES[key]]
        if all(p.is_file() for p in pair):
            path = plot_side_by_side(
                pair, [f"RepVGG (custom L2), seed {seed}: INT8 (max) {drop:.1f} points below FP32",
                       f"QARepVGG, seed {seed}"], base / f"{fig}.png", stack=True,
                title=f"Seed {seed}: the RepVGG model with the largest INT8 drop, and its QARepVGG twin")
            figures[fig] = str(path)
    return figures
