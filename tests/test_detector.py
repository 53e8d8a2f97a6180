"""YOLOv6 v2-era detector: shapes, anchors, init, fusion equivalence, round-trip, ONNX, bad input."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from qarep_dense.deploy import remaining_multi_branch
from qarep_dense.engine.checkpoint import load_checkpoint, load_model_state, save_checkpoint
from qarep_dense.layers import ScaleLayer, reparameterize
from qarep_dense.models.backbones import EfficientRep
from qarep_dense.models.detector import Detector, build_detector, scaled_channels, scaled_repeats
from qarep_dense.models.heads import EffiDeHead
from qarep_dense.models.necks import RepPANNeck

BLOCKS = ["repvgg", "qarepvgg", "qarepvgg_v2", "repopt", "hs"]


@torch.no_grad()
def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics/affine, Hyper-Search scales and head weights, so fusion has work to do."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
            m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
            if m.affine:
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.2)
        elif isinstance(m, ScaleLayer):
            m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
    for p in model.head.parameters():  # head preds start at std 0.01: make them matter
        p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return model


def test_scaled_repeats_and_channels_follow_yolov6_rules():
    # s: depth 0.33, width 0.5. 6*0.33=1.98->2, 12*0.33=3.96->4, 18*0.33=5.94->6; the stem's 1 stays 1.
    assert scaled_repeats(0.33) == (1, 2, 4, 6, 2, 4, 4, 4, 4)
    # t: width 0.375 -> 64*0.375 = 24, 1024*0.375 = 384, 128*0.375 = 48; test: 64*0.125 = 8.
    assert scaled_channels(0.375) == (24, 48, 96, 192, 384, 96, 48, 48, 96, 96, 192)
    assert scaled_channels(0.125)[:2] == (8, 16)
    assert scaled_channels(0.3)[0] == 24  # 64*0.3 = 19.2 rounds up to a multiple of 8
    assert scaled_repeats(0.05) == (1,) * 9  # never below one block


@pytest.mark.parametrize("use_dfl, reg_channels", [(False, 4), (True, 4 * 17)])
def test_output_shapes_and_anchor_count_non_square(use_dfl, reg_channels):
    model = build_detector("test", "qarepvgg", num_classes=5, use_dfl=use_dfl).eval()
    h, w = 128, 96
    sizes = model.feature_sizes(h, w)
    assert sizes == [(16, 12), (8, 6), (4, 3)]
    num_anchors = 16 * 12 + 8 * 6 + 4 * 3
    with torch.no_grad():
        cls, reg = model(torch.randn(2, 3, h, w))
    assert cls.shape == (2, num_anchors, 5)
    assert reg.shape == (2, num_anchors, reg_channels)
    assert model.reg_max == (16 if use_dfl else 0)
    points, strides = model.anchors(h, w)
    assert points.shape == (num_anchors, 2) and strides.shape == (num_anchors, 1)
    # first anchor: centre of cell (0, 0) at stride 8; last: bottom-right cell of stride 32
    assert points[0].tolist() == [4.0, 4.0] and points[-1].tolist() == [80.0, 112.0]
    assert strides[:192].eq(8).all() and strides[192:240].eq(16).all() and strides[240:].eq(32).all()


def test_backbone_and_neck_declare_output_shapes():
    model = build_detector("test", "repvgg").eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        feats = model.backbone(x)
        pans = model.neck(feats)
    for module, outs in ((model.backbone, feats), (model.neck, pans)):
        assert tuple(f.shape[1] for f in outs) == module.out_channels
        assert tuple(64 // f.shape[2] for f in outs) == module.strides == (8, 16, 32)
        assert tuple(96 // f.shape[3] for f in outs) == (8, 16, 32)


def test_head_output_is_level_concat_in_row_major_order():
    """The flattening contract with the loss: anchor k of level 1 is cell (k // W, k % W)."""
    head = EffiDeHead((4, 4, 4), num_classes=3, reg_max=0).eval()
    feats = tuple(torch.randn(1, 4, 8 // 2 ** i, 6 // 2 ** i) for i in range(3))
    with torch.no_grad():
        cls, reg = head(feats)
        ref_cls, ref_reg = head.levels[1](feats[1])  # (1, 3, 4, 3), (1, 4, 4, 3)
    offset = 8 * 6
    row, col = 2, 1
    k = offset + row * 3 + col
    assert torch.equal(cls[0, k], ref_cls[0, :, row, col])
    assert torch.equal(reg[0, k], ref_reg[0, :, row, col])


def test_cls_bias_init_is_the_focal_prior():
    model = build_detector("test", "qarepvgg", num_classes=7)
    expected = -math.log((1 - 0.01) / 0.01)  # -4.59512
    for level in model.head.levels:
        assert torch.allclose(level.cls_pred.bias, torch.full((7,), expected))
        assert torch.allclose(level.reg_pred.bias, torch.ones(4))
    with torch.no_grad():
        cls, _ = model.eval()(torch.randn(1, 3, 64, 64))
    # std-0.01 prediction weights barely move the scores off the prior
    assert abs(cls.sigmoid().mean().item() - 0.01) < 0.005


def test_forward_backward_reaches_the_stem():
    model = build_detector("test", "qarepvgg", num_classes=3).train()
    cls, reg = model(torch.randn(2, 3, 64, 64))
    (cls.sigmoid().sum() + reg.abs().sum()).backward()
    stem_grad = model.backbone.stem.branch_3x3.conv.weight.grad
    assert stem_grad is not None and stem_grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters())


def _assert_fused_equal(model: nn.Module, x: torch.Tensor, fold_bn: bool) -> None:
    deploy = reparameterize(model, fold_bn=fold_bn)
    assert remaining_multi_branch(deploy) == []
    if fold_bn:
        assert not any(isinstance(m, nn.BatchNorm2d) for m in deploy.modules())
    with torch.no_grad():
        ref, out = model.eval()(x), deploy(x)
    for a, b in zip(ref, out):
        scale = max(1.0, a.abs().max().item())
        assert (a - b).abs().max().item() < 1e-9 * scale


@pytest.mark.parametrize("block", BLOCKS)
def test_fused_detector_equals_unfused_float64(block):
    model = randomize(build_detector("test", block, num_classes=4)).double().eval()
    x = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    _assert_fused_equal(model, x, fold_bn=True)
    _assert_fused_equal(model, x, fold_bn=False)


@pytest.mark.parametrize("block", ["repvgg", "qarepvgg"])
def test_fused_equals_unfused_with_deeper_repblocks(block):
    """The test scale has one block per RepBlock; here n > 1 exercises the identity branches in the neck too."""
    backbone = EfficientRep((8, 8, 16, 16, 32), (1, 2, 1, 3, 2), block)
    neck = RepPANNeck(backbone.out_channels, (16, 8, 8, 16, 16, 32), (2, 3, 2, 2), block)
    model = Detector(backbone, neck, EffiDeHead(neck.out_channels, 3, reg_max=4))
    model = randomize(model, seed=1).double().eval()
    _assert_fused_equal(model, torch.randn(1, 3, 64, 64, dtype=torch.float64), fold_bn=True)


def test_state_dict_round_trip_through_checkpoint(tmp_path):
    src = randomize(build_detector("test", "qarepvgg", num_classes=3, use_dfl=True, reg_max=4)).eval()
    meta = {"task": "det", "scale": "test", "block": "qarepvgg", "num_classes": 3, "use_dfl": True,
            "reg_max": 4, "image_size": 64, "fused": False, "fold_bn": True}
    path = save_checkpoint(tmp_path / "det.pt", src.state_dict(), meta)
    payload = load_checkpoint(path)
    dst = build_detector("test", "qarepvgg", num_classes=3, use_dfl=True, reg_max=4)
    load_model_state(dst, payload["model"], source=str(path))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(src(x), dst.eval()(x)):
            assert torch.equal(a, b)
    assert payload["meta"] == meta


def test_onnx_export_of_fused_detector_matches_pytorch(tmp_path):
    pytest.importorskip("onnxruntime")
    from qarep_dense.deploy.ort import export_graph, make_session, run_session

    model = reparameterize(randomize(build_detector("test", "qarepvgg", num_classes=4)))
    x = torch.randn(1, 3, 64, 96)
    path = tmp_path / "det.onnx"
    export_graph(model, x, path)
    cls_ort, reg_ort = run_session(make_session(path), x)
    with torch.no_grad():
        cls, reg = model(x)
    assert cls_ort.shape == tuple(cls.shape) and reg_ort.shape == tuple(reg.shape)
    assert torch.allclose(torch.from_numpy(cls_ort), cls, atol=1e-4)
    assert torch.allclose(torch.from_numpy(reg_ort), reg, atol=1e-4)


def test_bad_input_raises_clear_errors():
    model = build_detector("test", "repvgg")
    with pytest.raises(ValueError, match=r"100x96 must be positive multiples of 32"):
        model(torch.randn(1, 3, 100, 96))
    with pytest.raises(ValueError, match=r"must be \(N, C, H, W\)"):
        model(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="unknown detector scale 'xl'"):
        build_detector("xl")
    with pytest.raises(ValueError, match="unknown block type 'vgg'"):
        build_detector("test", "vgg")
    with pytest.raises(ValueError, match="use_dfl=True needs reg_max >= 1"):
        build_detector("test", use_dfl=True, reg_max=0)
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        build_detector("test", num_classes=0)
    with pytest.raises(ValueError, match="stem is a single block"):
        EfficientRep((8, 8, 16, 16, 32), (2, 1, 1, 1, 1))


def test_every_batchnorm_gets_yolov6_settings_and_fusion_keeps_them():
    model = build_detector("test", "qarepvgg", num_classes=3)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) > 20  # backbone, neck and head convs
    assert all(m.eps == 1e-3 and m.momentum == 0.03 for m in bns)
    kept = [m for m in reparameterize(model, fold_bn=False).modules() if isinstance(m, nn.BatchNorm2d)]
    assert kept and all(m.eps == 1e-3 for m in kept)  # QARepVGG's post-BN kept for QAT


def test_bn_settings_come_from_the_checkpoint_and_old_checkpoints_keep_torch_defaults(tmp_path):
    from qarep_dense.tasks.registry import load_model

    base = {"task": "det", "scale": "test", "block": "repvgg", "num_classes": 3, "image_size": 64,
            "fused": False, "fold_bn": True}
    # written before bn_eps / bn_momentum were recorded: trained with PyTorch's 1e-5 / 0.1
    old = randomize(build_detector("test", "repvgg", num_classes=3, bn_eps=1e-5, bn_momentum=0.1)).eval()
    new = randomize(build_detector("test", "repvgg", num_classes=3)).eval()
    old_path = save_checkpoint(tmp_path / "old.pt", old.state_dict(), base)
    new_path = save_checkpoint(tmp_path / "new.pt", new.state_dict(), {**base, "bn_eps": 1e-3, "bn_momentum": 0.03})
    x = torch.randn(1, 3, 64, 64)
    for path, ref, eps, momentum in ((old_path, old, 1e-5, 0.1), (new_path, new, 1e-3, 0.03)):
        model, _ = load_model(path)
        assert {(m.eps, m.momentum) for m in model.modules() if isinstance(m, nn.BatchNorm2d)} == {(eps, momentum)}
        with torch.no_grad():
            for a, b in zip(ref(x), model(x)):
                assert torch.equal(a, b)
    # the eps matters: the old weights under the new eps give other outputs
    model, _ = load_model(old_path)
    with torch.no_grad():
        moved = build_detector("test", "repvgg", num_classes=3)
        moved.load_state_dict(old.state_dict())
        assert (moved.eval()(x)[1] - model(x)[1]).abs().max() > 1e-4


def test_scale_lr0_is_the_default_learning_rate():
    from qarep_dense.tasks.detection import DetConfig, DetModelConfig, DetOptimConfig, base_lr, build_det_optimizer

    n = DetConfig(model=DetModelConfig(scale="n"))
    assert n.optim.lr0 is None and base_lr(n) == 0.02
    assert base_lr(DetConfig(model=DetModelConfig(scale="s"))) == 0.01
    assert base_lr(DetConfig(model=DetModelConfig(scale="n"), optim=DetOptimConfig(lr0=0.05))) == 0.05
    model = build_detector("test", "repvgg", num_classes=2)  # the optimizer reads only the config's scale
    optimizer = build_det_optimizer(n, model, accumulate=1, per_process_batch=64, world_size=1)
    assert {g["lr"] for g in optimizer.param_groups} == {0.02}
    with pytest.raises(ValueError, match="optim.lr0 must be > 0"):
        DetConfig(optim=DetOptimConfig(lr0=0.0))
