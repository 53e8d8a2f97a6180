"""The mechanism per backbone stage (qarep_dense.analysis.trunk): dead identity channels and the largest fused
weight, the numbers the dense study and the main job's dense sections report."""
from __future__ import annotations

import math

import pytest
import torch
from cv2 import imread

from qarep_dense.analysis.trunk import plot_stage_mechanism, trunk_of
from qarep_dense.demo.stage_jobs import checkpoint_mechanism as stage_mechanism
from qarep_dense.engine.checkpoint import save_checkpoint
from qarep_dense.models.classifier import build_classifier

META = {"task": "cls", "arch": "test", "num_classes": 10, "fused": False}


def _classifier(tmp_path, block: str, kill: dict[int, list[int]] | None = None):
    """A tiny classifier whose identity-BN channels ``kill`` ({stage: channels}) are dead: running variance 0
    and gamma 2, so the fused identity weight is 2 / sqrt(eps)."""
    torch.manual_seed(0)
    model = build_classifier("test", block, 10, stem_stride=1)
    for stage, channels in (kill or {}).items():
        bn = next(m.branch_identity for m in model.stages[stage].modules()
                  if getattr(m, "branch_identity", None) is not None)
        bn.running_var[channels] = 0.0
        bn.weight.data[channels] = 2.0
    path = tmp_path / f"{block}.pt"
    save_checkpoint(path, model.state_dict(), {**META, "block": block})
    return path, model


def test_dead_identity_channels_and_their_fused_weight_are_found_per_stage(tmp_path):
    path, model = _classifier(tmp_path, "repvgg", {2: [0, 3]})
    rows = stage_mechanism(path, "cls")
    assert [r["stage"] for r in rows] == list(range(len(model.stages)))
    assert rows[2]["dead"] == 2 and sum(r["dead"] for r in rows) == 2
    eps = next(m.branch_identity for m in model.stages[2].modules()
               if getattr(m, "branch_identity", None) is not None).eps
    assert rows[2]["max_fused_weight"] >= 2.0 / math.sqrt(eps) * 0.99  # the identity outlier lands in the fused conv
    assert max(r["max_fused_weight"] for i, r in enumerate(rows) if i != 2) < 2.0 / math.sqrt(eps) * 0.5


def test_qarepvgg_has_no_identity_bn_to_die(tmp_path):
    path, _ = _classifier(tmp_path, "qarepvgg")
    assert all(r["dead"] == 0 for r in stage_mechanism(path, "cls"))


def test_fused_checkpoints_and_unknown_tasks_are_refused(tmp_path):
    path, model = _classifier(tmp_path, "repvgg")
    fused = tmp_path / "fused.pt"
    save_checkpoint(fused, model.state_dict(), {**META, "block": "repvgg", "fused": True})
    with pytest.raises(Exception, match="fused|train-form"):
        stage_mechanism(fused, "cls")
    with pytest.raises(ValueError, match="task 'pose'"):
        trunk_of(model, "pose")


def test_the_figure_is_written(tmp_path):
    path, _ = _classifier(tmp_path, "repvgg", {2: [1]})
    rows = stage_mechanism(path, "cls")
    out = plot_stage_mechanism({"repvgg": {"before": rows, "after": rows}, "qarepvgg": {"before": rows, "after": rows}},
                               tmp_path / "fig" / "mechanism.png")
    image = imread(str(out))
    assert image is not None and image.shape[0] > 100 and image.shape[1] > 300
