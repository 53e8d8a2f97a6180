"""Does a recipe reproduce the paper's collapse? Decided from measured rows, never typed in.

A row is one trained model: {"seed", "block" ("repvgg" or "qarepvgg"), "fp32", "int8"} in top-1 %.
RepVGG *collapses* in a seed when it trained (FP32 >= ``min_fp32``) and its INT8 top-1 is more than
``collapse_drop`` points below its FP32; QARepVGG *holds* when it trained and lost at most
``qa_tolerance`` points. The recipe reproduces the paper when, over at least ``min_seeds`` seeds,
RepVGG collapsed in at least ``min_collapsed`` and QARepVGG held in every one. The direction alone (RepVGG
lost more, by more than ``collapse_drop - qa_tolerance`` points) is counted too, floors or not.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class Criteria:
    """Thresholds in top-1 points."""

    collapse_drop: float = 10.0
    qa_tolerance: float = 1.5
    min_fp32: float = 90.0
    min_seeds: int = 5
    min_collapsed: int = 4


# The paper's Tables 8 and 9 at CPU scale (the dense study's targets, the main job's dense verdicts): RepVGG
# loses more than 3 AP / mIoU, QARepVGG stays within 1.3; a detector below 50 AP or a segmentor below 30 mIoU
# on the digit canvases counts as untrained.
DENSE_CRITERIA = {"det": Criteria(collapse_drop=3.0, qa_tolerance=1.3, min_fp32=50.0),
                  "seg": Criteria(collapse_drop=3.0, qa_tolerance=1.3, min_fp32=30.0)}


def verdict(rows: Iterable[dict], criteria: Criteria = Criteria(), reference: str = "repvgg",
            friendly: str = "qarepvgg") -> dict:
    """The verdict over the seeds that have both a ``reference`` and a ``friendly`` row.

    Returns {"seeds", "collapsed" (seeds), "held" (seeds), "untrained" ("block/s<seed>" below min_fp32),
    "reproduces" (bool), "summary" (one sentence)}.
    """
    c = criteria
    by_seed: dict[int, dict[str, dict]] = {}
    for r in rows:
        by_seed.setdefault(int(r["seed"]), {})[r["block"]] = r
    seeds = sorted(s for s, b in by_seed.items() if {reference, friendly} <= set(b))

    def drop(r: dict) -> float:
        return float(r["fp32"]) - float(r["int8"])

    def trained(r: dict) -> bool:
        return float(r["fp32"]) >= c.min_fp32

    collapsed = [s for s in seeds if trained(by_seed[s][reference]) and drop(by_seed[s][reference]) > c.collapse_drop]
    held = [s for s in seeds if trained(by_seed[s][friendly]) and drop(by_seed[s][friendly]) <= c.qa_tolerance]
    untrained = [f"{b}/s{s}" for s in seeds for b in (reference, friendly) if not trained(by_seed[s][b])]
    # The direction alone, whatever the floor: the reference lost more, and by more than the gap between the two
    # thresholds (a collapse against a hold), in how many seeds.
    gap = c.collapse_drop - c.qa_tolerance
    margins = {s: drop(by_seed[s][reference]) - drop(by_seed[s][friendly]) for s in seeds}
    more = [s for s in seeds if margins[s] > 0]
    clearly = [s for s in seeds if margins[s] > gap]
    ok = len(seeds) >= c.min_seeds and len(collapsed) >= c.min_collapsed and len(held) == len(seeds)
    n = len(seeds)
    summary = (f"{reference} collapsed (INT8 > {c.collapse_drop:g} points below FP32) in {len(collapsed)} of {n} "
               f"seeds, {friendly} held (within {c.qa_tolerance:g} points) in {len(held)} of {n}: ")
    summary += ("the paper's result is reproduced" if ok else
                f"not reproduced (needs >= {c.min_collapsed} collapses over >= {c.min_seeds} seeds and "
                f"{friendly} holding in every seed)")
    if untrained:
        summary += f"; not counted, FP32 below {c.min_fp32:g}: {', '.join(untrained)}"
    summary += (f"; the direction: {reference} lost more than {friendly} in {len(more)} of {n} seeds, more than "
                f"{gap:g} points more in {len(clearly)}")
    return {"seeds": seeds, "collapsed": collapsed, "held": held, "untrained": untrained, "reproduces": ok,
            "more": more, "clearly_more": clearly, "summary": summary}


def seed_range(values: Iterable[float]) -> dict:
    """{"mean", "min", "max", "n"} of per-seed values (NaN-free); raises on an empty sequence."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("seed_range: no values")
    return {"mean": statistics.fmean(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def format_range(stats: dict, digits: int = 2) -> str:
    """"97.50 (96.90-98.10)" for n > 1, "97.50" for one seed."""
    if stats["n"] == 1:
        return f"{stats['mean']:.{digits}f}"
    return f"{stats['mean']:.{digits}f} ({stats['min']:.{digits}f}-{stats['max']:.{digits}f})"
