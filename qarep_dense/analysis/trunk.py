"""The paper's mechanism per backbone stage, for a classifier and the dense models fine-tuned from it.

A detector or segmentor started from a classifier carries the classifier's trunk (``.stages``). Where RepVGG's
identity-BN channels died in pretraining, their fused identity weights (gamma / sqrt(eps)) stay in the fine-tuned
model: a dead input channel gives its gamma no gradient and the BN weights are not decayed (YOLOv6's groups,
mmseg's ``norm_decay_mult=0``). :func:`stage_mechanism` counts those channels and the largest fused weight per
stage; :func:`plot_stage_mechanism` draws the classifier -> fine-tuned pairs of several models side by side.
"""
from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from ..layers.rep import reparameterize
from .bn_scales import bn_scale_stats


def trunk_of(model: nn.Module, task: str) -> nn.Module:
    """The backbone trunk (the module with ``.stages``) of a train-form classifier, detector or segmentor."""
    trunks = {"cls": lambda m: m, "det": lambda m: m.backbone, "seg": lambda m: m.segmentor.backbone}
    if task not in trunks:
        raise ValueError(f"task {task!r}: choose from {', '.join(trunks)}")
    trunk = trunks[task](model)
    if not hasattr(trunk, "stages"):
        raise ValueError(f"the {task} model's backbone ({type(trunk).__name__}) has no .stages: not a rep trunk")
    return trunk


def stage_mechanism(model: nn.Module, task: str) -> list[dict]:
    """Per trunk stage of a train-form model: ``dead``, the identity-BN channels whose running variance is below
    eps, and ``max_fused_weight``, the largest |w| of the stage once fused (the identity outliers land there)."""
    out = []
    for k, stage in enumerate(trunk_of(model, task).stages):
        dead = sum(b.branches["identity"].near_dead for b in bn_scale_stats(stage) if "identity" in b.branches)
        fused = reparameterize(stage)  # (a copy: the model is left as it was)
        weight = max(float(m.weight.detach().abs().max()) for m in fused.modules() if isinstance(m, nn.Conv2d))
        out.append({"stage": k, "dead": int(dead), "max_fused_weight": weight})
    return out


def plot_stage_mechanism(models: dict[str, dict[str, list[dict]]], path: str | os.PathLike, title: str = "") -> Path:
    """Largest fused weight per stage (log axis), classifier (hollow) and fine-tuned (filled), one colour per
    model, with the near-dead identity channels written above each fine-tuned bar.

    ``models``: {label: {"before": stage_mechanism of the classifier, "after": that of the dense model}}.
    """
    from matplotlib import rcParams

    from .plots import NOTE_PT, TICK_PT, _figure

    path = Path(path)
    stages = max(len(m["after"]) for m in models.values())
    width = 0.8 / (2 * len(models))
    fig, (ax,) = _figure(1.6 * stages + 2, 3.6)
    colours = rcParams["axes.prop_cycle"].by_key()["color"]
    for j, (label, pair) in enumerate(models.items()):
        colour = colours[j % len(colours)]
        for half, key in enumerate(("before", "after")):
            rows = pair.get(key) or []
            xs = [r["stage"] - 0.4 + width * (2 * j + half + 0.5) for r in rows]
            ys = [max(r["max_fused_weight"], 1e-3) for r in rows]
            ax.bar(xs, ys, width, color=colour if key == "after" else "none", edgecolor=colour,
                   label=f"{label}: {'fine-tuned' if key == 'after' else 'classifier'}")
            if key == "after":
                for x, y, r in zip(xs, ys, rows):
                    ax.text(x, y * 1.15, str(r["dead"]), ha="center", va="bottom", fontsize=NOTE_PT, color=colour)
    ax.set_yscale("log")
    ax.set_xticks(range(stages), [f"stage {k}" for k in range(stages)])
    ax.set_ylabel("largest fused |weight|")
    ax.set_title(title or "Largest fused weight per stage (numbers: near-dead identity channels)", fontsize=TICK_PT)
    ax.legend(fontsize=NOTE_PT, ncol=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
