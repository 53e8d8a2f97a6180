"""A detector on the classification zoo's trunk, initialised from a classifier checkpoint (model.backbone = "trunk")."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from qarep_dense.engine.checkpoint import CheckpointError, save_checkpoint
from qarep_dense.layers.rep import reparameterize
from qarep_dense.layers.rep_blocks import RepVGGBlock
from qarep_dense.models.classifier import build_classifier
from qarep_dense.models.detector import TORCH_BN_EPS, YOLOV6_BN_EPS, build_trunk_detector
from qarep_dense.tasks.detection import (DetConfig, DetDataConfig, DetModelConfig, build_det_optimizer, build_model,
                                         build_model_from_meta, det_meta)


def _classifier_checkpoint(path, block="repvgg", seed=0):
    torch.manual_seed(seed)
    model = build_classifier("test", block, 10, stem_stride=1)
    for m in model.modules():  # non-trivial BN statistics, so a load that misses them shows
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    save_checkpoint(path, model.state_dict(), {"task": "cls", "arch": "test", "block": block, "num_classes": 10,
                                               "fused": False, "stem_stride": 1})
    return model


def _config(**model) -> DetConfig:
    return DetConfig(model=DetModelConfig(**{"scale": "test", "block": "repvgg", "num_classes": 10,
                                             "backbone": "trunk", "arch": "test", "stem_stride": 1, **model}))


def test_trunk_detector_strides_shapes_and_exact_fusion():
    torch.manual_seed(0)
    det = build_trunk_detector("test", "repvgg", "test", 10, stem_stride=1).eval()
    assert det.strides == (4, 8, 16)
    x = torch.randn(2, 3, 32, 32)
    cls, reg = det(x)
    assert cls.shape == (2, 8 * 8 + 4 * 4 + 2 * 2, 10) and reg.shape[:2] == cls.shape[:2]
    fused = reparameterize(det)
    assert not any(isinstance(m, RepVGGBlock) for m in fused.modules())
    for a, b in zip(det(x), fused(x)):
        assert torch.allclose(a, b, atol=1e-4)
    assert build_trunk_detector("test", "qarepvgg", "test", 10, stem_stride=2).strides == (8, 16, 32)


def test_trunk_keeps_the_classifiers_bn_eps_neck_and_head_get_yolov6s():
    det = build_trunk_detector("test", "repvgg", "test", 10, stem_stride=1)
    eps = {part: {m.eps for m in getattr(det, part).modules() if isinstance(m, nn.BatchNorm2d)}
           for part in ("backbone", "neck", "head")}
    assert eps["backbone"] == {TORCH_BN_EPS} and eps["neck"] == {YOLOV6_BN_EPS}
    assert eps["head"] <= {YOLOV6_BN_EPS}


def test_backbone_init_loads_the_classifier_stages_exactly(tmp_path):
    classifier = _classifier_checkpoint(tmp_path / "cls.pt")
    det = build_model(_config(backbone_init=str(tmp_path / "cls.pt")).model)
    own = classifier.state_dict()
    for key, value in det.backbone.state_dict().items():
        assert torch.equal(value, own[key]), key
    fresh = build_model(_config().model)  # the from-scratch row: same network, its own init
    assert not torch.equal(fresh.backbone.stages[1][0].branch_3x3.bn.running_var,
                           det.backbone.stages[1][0].branch_3x3.bn.running_var)


def test_backbone_init_of_another_block_or_a_detector_is_refused(tmp_path):
    _classifier_checkpoint(tmp_path / "qa.pt", block="qarepvgg")
    with pytest.raises(CheckpointError, match=r"qa\.pt: checkpoint block 'qarepvgg' does not match"):
        build_model(_config(backbone_init=str(tmp_path / "qa.pt")).model)
    save_checkpoint(tmp_path / "det.pt", {}, {"task": "det", "fused": False})
    with pytest.raises(CheckpointError, match=r"det\.pt: a pretrained backbone needs a train-form classification"):
        build_model(_config(backbone_init=str(tmp_path / "det.pt")).model)


def test_yolov6_groups_decay_conv_weights_only(tmp_path):
    cfg = _config()
    det = build_model(cfg.model)
    opt = build_det_optimizer(cfg, det, accumulate=1, per_process_batch=16, world_size=1)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    norms = [p for m in det.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()]
    identity = [m.branch_identity.weight for m in det.modules() if isinstance(m, RepVGGBlock)
                and isinstance(m.branch_identity, nn.BatchNorm2d)]
    assert norms and identity and not any(id(p) in decayed for p in norms + identity)
    convs = [m.weight for m in det.modules() if isinstance(m, nn.Conv2d)]
    assert all(id(w) in decayed for w in convs)
    assert not any(id(m.bias) in decayed for m in det.modules() if getattr(m, "bias", None) is not None)


def test_metadata_rebuilds_the_trunk_detector(tmp_path):
    cfg = _config()
    det = build_model(cfg.model)
    meta = det_meta(cfg, list(range(1, 11)), [str(d) for d in range(10)])
    assert meta["backbone"] == "trunk" and meta["arch"] == "test" and meta["stem_stride"] == 1
    rebuilt = build_model_from_meta(meta)
    rebuilt.load_state_dict(det.state_dict())  # strict: same modules, same shapes
    assert rebuilt.strides == det.strides


@pytest.mark.parametrize("model, data, message", [
    (dict(backbone="efficientrep", backbone_init="cls.pt"), {}, "model.backbone_init is set but model.backbone"),
    (dict(arch="Z9"), {}, "model.arch 'Z9' is not one of"),
    (dict(stem_stride=4), {}, "model.stem_stride must be 1 or 2"),
    (dict(num_classes=6), dict(kind="digits_canvas"), "data.kind 'digits_canvas' needs model.num_classes = 10"),
])
def test_bad_trunk_or_canvas_settings_are_refused(model, data, message):
    base = _config()
    with pytest.raises(ValueError, match=message):
        replace(base, model=replace(base.model, **model), data=DetDataConfig(**data))


def test_repopt_detector_keeps_its_pretrained_trunk_and_starts_neck_and_head_from_the_scales(tmp_path):
    from qarep_dense.optim.repopt import RepOptimizerSGD

    classifier = _classifier_checkpoint(tmp_path / "repopt.pt", block="repopt")
    torch.manual_seed(1)
    hs = build_trunk_detector("test", "hs", "test", 10, stem_stride=1)
    save_checkpoint(tmp_path / "hs.pt", hs.state_dict(), {**det_meta(_config(block="hs"), list(range(1, 11)),
                                                                      [str(d) for d in range(10)]), "fused": False})
    for init in (str(tmp_path / "repopt.pt"), None):
        cfg = _config(block="repopt", backbone_init=init)
        cfg = replace(cfg, repopt=replace(cfg.repopt, hs_checkpoint=str(tmp_path / "hs.pt")))
        torch.manual_seed(2)
        det = build_model(cfg.model)
        neck = {k: v.clone() for k, v in det.neck.state_dict().items()}
        opt = build_det_optimizer(cfg, det, accumulate=1, per_process_batch=16, world_size=1)
        assert isinstance(opt, RepOptimizerSGD) and opt.masks
        trunk_kept = all(torch.equal(v, classifier.state_dict()[k]) for k, v in det.backbone.state_dict().items())
        assert trunk_kept == (init is not None), init  # from scratch: the trunk starts from the scales too
        assert any(not torch.equal(v, neck[k]) for k, v in det.neck.state_dict().items())  # re-initialised
