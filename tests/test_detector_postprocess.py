"""decode + NMS on hand-made tensors."""
from __future__ import annotations

import math

import pytest
import torch

from qarep_dense.models.postprocess import decode, nms
from qarep_dense.ops import make_anchor_points


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_decode_without_dfl_scales_distances_by_stride():
    points, strides = make_anchor_points([(1, 2), (1, 1)], [8, 16])  # (4,4), (12,4), (8,8)
    reg = torch.tensor([[[1.0, 1.0, 1.0, 1.0], [0.5, 0.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0]]])
    cls = torch.tensor([[[0.0], [logit(0.9)], [-100.0]]])
    boxes, scores = decode(cls, reg, points, strides, reg_max=0)
    expected = torch.tensor([[[-4.0, -4.0, 12.0, 12.0],      # 8 px each side of (4, 4)
                              [8.0, 4.0, 28.0, 12.0],        # l=4, t=0, r=16, b=8 around (12, 4)
                              [-8.0, -24.0, 56.0, 72.0]]])   # 16, 32, 48, 64 around (8, 8)
    assert torch.allclose(boxes, expected)
    assert torch.allclose(scores, torch.tensor([[[0.5], [0.9], [0.0]]]), atol=1e-6)


def test_decode_with_dfl_takes_the_bin_expectation():
    points, strides = make_anchor_points([(1, 1)], [8])  # (4, 4)
    reg_max = 4
    logits = torch.full((4, reg_max + 1), -1e4)
    logits[0, 2] = logits[1, 1] = logits[2, 3] = 0.0  # one-hot bins 2, 1, 3
    logits[3, 0] = logits[3, 2] = 0.0  # two equal bins: expectation 1
    boxes, _ = decode(torch.zeros(1, 1, 2), logits.reshape(1, 1, -1), points, strides, reg_max)
    assert torch.allclose(boxes, torch.tensor([[[4 - 16.0, 4 - 8.0, 4 + 24.0, 4 + 8.0]]]))


def _boxes_scores(num_classes: int = 2):
    boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0],
                           [1.0, 0.0, 11.0, 10.0],     # IoU with box 0: 90/110 = 0.82
                           [50.0, 50.0, 60.0, 60.0]]])
    scores = torch.zeros(1, 3, num_classes)
    return boxes, scores


def test_nms_same_class_overlap_keeps_the_best():
    boxes, scores = _boxes_scores()
    scores[0, 0, 0], scores[0, 1, 0] = 0.8, 0.9
    out = nms(boxes, scores, conf_thres=0.1, iou_thres=0.65)
    assert len(out) == 1
    assert torch.allclose(out[0], torch.tensor([[1.0, 0.0, 11.0, 10.0, 0.9, 0.0]]))


def test_nms_different_classes_do_not_suppress():
    boxes, scores = _boxes_scores()
    scores[0, 0, 0], scores[0, 1, 1] = 0.8, 0.9
    out = nms(boxes, scores, conf_thres=0.1, iou_thres=0.65)[0]
    assert out[:, 4].tolist() == pytest.approx([0.9, 0.8])
    assert out[:, 5].tolist() == [1.0, 0.0]


def test_nms_iou_below_threshold_keeps_both():
    boxes, scores = _boxes_scores()
    scores[0, 0, 0], scores[0, 1, 0] = 0.8, 0.9
    out = nms(boxes, scores, conf_thres=0.1, iou_thres=0.9)[0]  # 0.82 < 0.9
    assert out.shape == (2, 6)


def test_nms_conf_threshold_and_multi_label():
    boxes, scores = _boxes_scores()
    scores[0, 2] = torch.tensor([0.5, 0.4])    # one box, two classes above 0.3
    scores[0, 0, 0] = 0.2                      # below the threshold
    multi = nms(boxes, scores, conf_thres=0.3)[0]
    assert multi[:, 4].tolist() == pytest.approx([0.5, 0.4]) and multi[:, 5].tolist() == [0.0, 1.0]
    single = nms(boxes, scores, conf_thres=0.3, multi_label=False)[0]
    assert single.shape == (1, 6) and single[0, 4].item() == pytest.approx(0.5)
    assert nms(boxes, scores, conf_thres=0.6)[0].shape == (0, 6)


def test_nms_max_det_and_batch():
    boxes = torch.tensor([[i * 20.0, 0.0, i * 20.0 + 10, 10.0] for i in range(5)]).expand(2, 5, 4)
    scores = torch.linspace(0.5, 0.9, 5).reshape(1, 5, 1).expand(2, 5, 1)
    out = nms(boxes, scores, max_det=3)
    assert len(out) == 2
    assert out[1][:, 4].tolist() == pytest.approx([0.9, 0.8, 0.7])


def test_bad_input_raises():
    points, strides = make_anchor_points([(2, 2)], [8])
    with pytest.raises(ValueError, match=r"reg has 4 channels but reg_max=16 needs"):
        decode(torch.zeros(1, 4, 3), torch.zeros(1, 4, 4), points, strides, reg_max=16)
    with pytest.raises(ValueError, match="were the anchors made for another input size"):
        decode(torch.zeros(1, 5, 3), torch.zeros(1, 5, 4), points, strides, reg_max=0)
    with pytest.raises(ValueError, match="must agree in N and A"):
        decode(torch.zeros(1, 4, 3), torch.zeros(1, 3, 4), points, strides, reg_max=0)
    with pytest.raises(ValueError, match="conf_thres must lie in"):
        nms(torch.zeros(1, 4, 4), torch.zeros(1, 4, 3), conf_thres=1.5)
    with pytest.raises(ValueError, match=r"boxes must be \(N, A, 4\)"):
        nms(torch.zeros(4, 4), torch.zeros(1, 4, 3))


def test_detector_outputs_decode_and_nms_end_to_end():
    from qarep_dense.models.detector import build_detector

    model = build_detector("test", "qarepvgg", num_classes=3).eval()
    h, w = 64, 96
    with torch.no_grad():
        cls, reg = model(torch.rand(2, 3, h, w))
    points, strides = model.anchors(h, w)
    boxes, scores = decode(cls, reg, points, strides, model.reg_max)
    assert boxes.shape == (2, 8 * 12 + 4 * 6 + 2 * 3, 4) and scores.shape == (2, 126, 3)
    # at init every side sits about one stride from its anchor (reg bias 1.0, prediction weights ~0)
    expected = torch.cat([points - strides, points + strides], dim=1)
    assert ((boxes - expected) / strides).abs().max() < 0.05
    dets = nms(boxes, scores, conf_thres=0.005)
    assert len(dets) == 2 and all(d.shape[1] == 6 and len(d) <= 300 for d in dets)
