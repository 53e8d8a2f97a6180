"""IoU losses, VFL, DFL and the full detection loss, against hand-computed values."""
import math

import pytest
import torch
import torch.nn.functional as F

from qarep_dense.losses import (
    DetectionLoss,
    VarifocalLoss,
    aligned_iou,
    ciou_loss,
    distribution_focal_loss,
    giou_loss,
    iou_loss,
    siou_loss,
    varifocal_loss,
)
from qarep_dense.ops import decode_distances, dist2bbox, make_anchor_points


def _boxes(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def _softplus(x):
    return math.log1p(math.exp(x))


def _sigmoid(x):
    return 1 / (1 + math.exp(-x))


# ---------------------------------------------------------------- IoU losses

@pytest.mark.parametrize("iou_type", ["giou", "ciou", "siou"])
def test_identical_boxes_have_zero_loss(iou_type):
    b = _boxes([0, 0, 4, 2], [3, 5, 10, 6.5])
    assert torch.allclose(iou_loss(b, b.clone(), iou_type), torch.zeros(2, dtype=torch.float64), atol=1e-6)


def test_giou_disjoint_and_hand_value():
    # disjoint: IoU 0, enclosing [0,0,3,1] area 3, union 2 -> GIoU = -1/3, loss 4/3
    loss = giou_loss(_boxes([0, 0, 1, 1]), _boxes([2, 0, 3, 1]))
    assert loss.item() > 1
    assert loss.item() == pytest.approx(4 / 3, abs=1e-6)
    # overlap: inter 1, union 7, enclosing 9 -> GIoU = 1/7 - 2/9, loss = 1 + 5/63
    assert giou_loss(_boxes([0, 0, 2, 2]), _boxes([1, 1, 3, 3])).item() == pytest.approx(68 / 63, abs=1e-6)


def test_ciou_hand_value():
    # pred 2x1 vs target 1x2: IoU 1/3, centre distance^2 0.5, enclosing diagonal^2 8
    v = 4 / math.pi**2 * (math.atan(1 / 2) - math.atan(2)) ** 2
    alpha = v / (1 - 1 / 3 + v)
    expected = 1 - 1 / 3 + 0.5 / 8 + alpha * v
    assert ciou_loss(_boxes([0, 0, 2, 1]), _boxes([0, 0, 1, 2])).item() == pytest.approx(expected, abs=1e-6)


def test_siou_hand_values_and_symmetry():
    # dx = dy = 1: angle cost 1, gamma 1, enclosing 3x3, equal shapes
    expected = 1 - 1 / 7 + (2 - 2 * math.exp(-1 / 9)) / 2
    assert siou_loss(_boxes([0, 0, 2, 2]), _boxes([1, 1, 3, 3])).item() == pytest.approx(expected, abs=1e-6)
    # disjoint, dx = 4, dy = 1, enclosing 7x3, widths 2 vs 4; angle cost in the paper's own form
    angle = 1 - 2 * math.sin(math.asin(1 / math.sqrt(17)) - math.pi / 4) ** 2
    gamma = 2 - angle
    distance = 2 - math.exp(-gamma * (4 / 7) ** 2) - math.exp(-gamma * (1 / 3) ** 2)
    shape = (1 - math.exp(-0.5)) ** 4
    a, b = _boxes([0, 0, 2, 2]), _boxes([3, 1, 7, 3])
    assert siou_loss(a, b).item() == pytest.approx(1 + (distance + shape) / 2, abs=1e-6)
    assert siou_loss(a, b).item() == pytest.approx(siou_loss(b, a).item(), abs=1e-9)


def test_siou_gradient_un_inverts_an_inverted_box():
    # Predicted x1 = 6 > x2 = 4 (inverted), centred on the target: only the shape cost can act on x1 / x2.
    pred = torch.tensor([[6.0, 2, 4, 8]], requires_grad=True)
    target = _boxes([2, 2, 8, 8])
    siou_loss(pred, target).sum().backward()
    gx1, gx2 = pred.grad[0, 0].item(), pred.grad[0, 2].item()
    assert gx1 > 1e-3 and gx2 < -1e-3  # descent moves x1 left and x2 right
    # and plain gradient descent turns the box the right way round
    box = torch.tensor([[6.0, 2, 4, 8]], requires_grad=True)
    opt = torch.optim.SGD([box], lr=2.0)
    for _ in range(200):
        opt.zero_grad()
        siou_loss(box, target).sum().backward()
        opt.step()
    assert (box[0, 2] - box[0, 0]).item() > 0


@pytest.mark.parametrize("iou_type", ["giou", "ciou", "siou"])
def test_degenerate_boxes_give_finite_loss_and_gradients(iou_type):
    pred = torch.tensor([[5.0, 5, 5, 5], [0, 0, 2, 0], [1, 1, 3, 4]], requires_grad=True)
    target = torch.tensor([[0.0, 0, 10, 10], [0, 0, 2, 2], [2, 2, 2, 2]])
    loss = iou_loss(pred, target, iou_type)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(pred.grad).all()


def test_iou_loss_rejects_bad_input():
    with pytest.raises(ValueError, match="iou_type='diou2'"):
        iou_loss(_boxes([0, 0, 1, 1]), _boxes([0, 0, 1, 1]), "diou2")
    with pytest.raises(ValueError, match="must both be"):
        iou_loss(_boxes([0, 0, 1, 1]), _boxes([0, 0, 1, 1], [0, 0, 1, 1]))


# ---------------------------------------------------------------- VFL and DFL

def test_varifocal_loss_hand_formula():
    logits = torch.tensor([0.0, 2.0, -1.0])
    score = torch.tensor([0.0, 0.8, 0.0])
    label = torch.tensor([0.0, 1.0, 0.0])
    e0 = 0.75 * 0.5**2 * math.log(2)  # negative: alpha p^gamma * BCE(p, 0)
    e1 = 0.8 * (0.8 * _softplus(-2.0) + 0.2 * _softplus(2.0))  # positive: score * BCE(p, 0.8)
    e2 = 0.75 * _sigmoid(-1.0) ** 2 * _softplus(-1.0)
    per = varifocal_loss(logits, score, label, reduction="none")
    assert per.tolist() == pytest.approx([e0, e1, e2], abs=1e-6)
    assert VarifocalLoss()(logits, score, label).item() == pytest.approx(e0 + e1 + e2, abs=1e-6)
    with pytest.raises(ValueError, match="same shape"):
        varifocal_loss(logits, score[:2], label)


def test_dfl_on_a_bin_is_cross_entropy_of_that_bin():
    logits = torch.tensor([[0.3, -1.0, 2.0, 0.5, 0.1]] * 3)
    ce = [F.cross_entropy(logits[:1], torch.tensor([k])).item() for k in range(5)]
    got = distribution_focal_loss(logits, torch.tensor([3.0, 2.25, 4.0]))
    assert got.tolist() == pytest.approx([ce[3], 0.75 * ce[2] + 0.25 * ce[3], ce[4]], abs=1e-6)
    with pytest.raises(ValueError, match=r"target must lie in \[0, 4\]"):
        distribution_focal_loss(logits, torch.tensor([1.0, 4.5, 0.0]))


# ---------------------------------------------------------------- DetectionLoss

GRID = [(8, 8), (4, 4), (2, 2)]  # a 64x64 input
STRIDES = [8, 16, 32]


def _fit(use_dfl, assigner, iou_type, steps=30):
    """Fit leaf (1, A, C) logits and (1, A, R) regression outputs to one box; returns the items per step and
    the IoU of the best-scoring anchor's decoded box with the target at the end."""
    points, strides = make_anchor_points(GRID, STRIDES)
    num_anchors, reg_max = points.shape[0], 16
    crit = DetectionLoss(2, reg_max=reg_max, use_dfl=use_dfl, iou_type=iou_type)
    crit.set_assigner(assigner)
    cls = torch.full((1, num_anchors, 2), -2.0).requires_grad_()
    # start from boxes 3 strides wide (bins peaked at 1.5) so that predictions overlap the target,
    # as after a head's usual initialisation
    bins = torch.arange(reg_max + 1.0)
    reg = ((-(bins - 1.5) ** 2 / 2).repeat(4).expand(1, num_anchors, -1).clone() if use_dfl
           else torch.full((1, num_anchors, 4), 1.5)).requires_grad_()
    target_box = torch.tensor([10.0, 12.0, 50.0, 40.0])
    targets = torch.cat([torch.tensor([0.0, 1.0]), target_box])[None]
    opt = torch.optim.Adam([cls, reg], lr=0.1)
    history = []
    for _ in range(steps):
        loss, items = crit(cls, reg, points, strides, targets, GRID)
        opt.zero_grad()
        loss.backward()
        assert torch.isfinite(cls.grad).all() and torch.isfinite(reg.grad).all()
        opt.step()
        history.append(items)
    with torch.no_grad():
        boxes = dist2bbox(decode_distances(reg[0], reg_max if use_dfl else 0) * strides, points)
        best = cls[0, :, 1].argmax()
        return history, aligned_iou(boxes[best], target_box).item()


@pytest.mark.parametrize("use_dfl", [True, False])
@pytest.mark.parametrize("assigner", ["atss", "tal"])
def test_detection_loss_decreases_when_fitting_one_box(use_dfl, assigner):
    hist, best_iou = _fit(use_dfl, assigner, "siou" if use_dfl else "giou")
    assert hist[-1]["total"] < 0.5 * hist[0]["total"]
    assert hist[-1]["iou"] < 0.25 * hist[0]["iou"]
    assert best_iou > 0.7
    for items in hist:
        assert items["total"] == pytest.approx(items["cls"] + items["iou"] + items["dfl"], rel=1e-5)
        assert (items["dfl"] > 0) == use_dfl


def _one_level_2x2():
    """One 2x2 level of stride 8 (16x16 image). With anchor boxes of 40 px all four contain a gt [0,0,8,8]
    with the same IoU 0.04, so the ATSS threshold is exactly 0.04 and only anchor 0 (centre (4,4)) has its
    centre inside the gt: it is the one positive."""
    points, strides = make_anchor_points([(2, 2)], [8])
    return points, strides, [(2, 2)]


def test_detection_loss_hand_value_without_dfl():
    points, strides, sizes = _one_level_2x2()
    crit = DetectionLoss(2, use_dfl=False, iou_type="giou")
    cls = torch.tensor([[0.5, -1.0]] * 4).repeat(2, 1, 1)  # (2, 4, 2), same in both images
    reg = torch.full((2, 4, 4), 0.5)
    reg[:, 0] = torch.tensor([0.5, 0.5, 0.75, 0.5])  # anchor 0 predicts [0,0,10,8]: IoU 0.8 with the gt
    targets = torch.tensor([[0, 1, 0, 0, 8, 8], [1, 1, 0, 0, 8, 8.0]])
    loss, items = crit(cls, reg, points, strides, targets, sizes)
    neg = lambda x: 0.75 * _sigmoid(x) ** 2 * _softplus(x)  # noqa: E731
    pos = 0.8 * (0.8 * _softplus(1.0) + 0.2 * _softplus(-1.0))  # class 1 (logit -1) of anchor 0, target 0.8
    per_image = neg(0.5) + pos + 3 * (neg(0.5) + neg(-1.0))
    norm = 1.6  # target-score sum: 0.8 in each image
    assert items["cls"] == pytest.approx(2 * per_image / norm, rel=1e-5)
    assert items["iou"] == pytest.approx(2.5 * 2 * 0.8 * (1 - 0.8) / norm, rel=1e-5)  # GIoU = IoU here
    assert items["dfl"] == 0.0
    assert loss.item() == pytest.approx(items["total"], rel=1e-6)


def test_detection_loss_dfl_hand_value():
    points, strides, sizes = _one_level_2x2()
    crit = DetectionLoss(2, reg_max=16, use_dfl=True)
    reg = torch.zeros(1, 4, 68)  # uniform bins: every side 8 strides, box [-60,-60,68,68] px
    targets = torch.tensor([[0, 0, 0, 0, 8, 8.0]])
    _, items = crit(torch.zeros(1, 4, 2), reg, points, strides, targets, sizes)
    score = 64 / 128**2  # IoU of that box with the gt; the normaliser clamps to 1
    # target distances are 0.5 stride on every side: half CE of bin 0, half of bin 1, both log(17)
    assert items["dfl"] == pytest.approx(0.5 * math.log(17) * score, rel=1e-5)


def test_empty_ground_truth_gives_cls_only_loss_and_finite_gradients():
    points, strides = make_anchor_points(GRID, STRIDES)
    a = points.shape[0]
    cls = torch.full((2, a, 3), -1.0, requires_grad=True)
    reg = torch.zeros(2, a, 68, requires_grad=True)
    for assigner in ("atss", "tal"):
        crit = DetectionLoss(3)
        crit.set_assigner(assigner)
        loss, items = crit(cls, reg, points, strides, torch.zeros(0, 6), GRID)
        expected = 2 * a * 3 * 0.75 * _sigmoid(-1.0) ** 2 * _softplus(-1.0)  # normaliser clamps to 1
        assert loss.item() == pytest.approx(expected, rel=1e-5)
        assert items["iou"] == 0.0 and items["dfl"] == 0.0
        cls.grad = reg.grad = None
        loss.backward()
        assert torch.isfinite(cls.grad).all() and (cls.grad > 0).all()
        assert reg.grad is not None and torch.count_nonzero(reg.grad) == 0


def test_one_empty_image_and_degenerate_box_do_not_produce_nan():
    points, strides = make_anchor_points(GRID, STRIDES)
    cls = torch.zeros(3, points.shape[0], 2, requires_grad=True)
    reg = torch.zeros(3, points.shape[0], 4, requires_grad=True)  # zero-area predicted boxes too
    targets = torch.tensor([[0, 0, 4, 4, 20, 20], [2, 1, 10, 10, 10, 10.0], [2, 0, 8, 3, 8, 30]])
    for iou_type in ("giou", "ciou", "siou"):
        for assigner in ("atss", "tal"):
            crit = DetectionLoss(2, use_dfl=False, iou_type=iou_type)
            crit.set_assigner(assigner)
            loss, _ = crit(cls, reg, points, strides, targets, GRID)
            cls.grad = reg.grad = None
            loss.backward()
            assert torch.isfinite(loss) and torch.isfinite(cls.grad).all() and torch.isfinite(reg.grad).all()


def test_loss_is_float32_under_autocast():
    points, strides = make_anchor_points(GRID, STRIDES)
    cls = torch.zeros(1, points.shape[0], 2, dtype=torch.bfloat16, requires_grad=True)
    reg = torch.zeros(1, points.shape[0], 68, dtype=torch.bfloat16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = DetectionLoss(2)(cls, reg, points, strides, torch.tensor([[0, 1, 4, 4, 28, 20.0]]), GRID)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert torch.isfinite(reg.grad.float()).all()


def test_decoded_boxes_match_the_loss_convention():
    # the loss decodes like the head's post-processing: ltrb in stride units around the anchor point
    points, strides = make_anchor_points([(1, 1)], [8])
    box = dist2bbox(decode_distances(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), 0) * strides, points)
    assert box.tolist() == [[-4.0, -12.0, 28.0, 36.0]]


def test_detection_loss_rejects_bad_input():
    points, strides = make_anchor_points(GRID, STRIDES)
    a = points.shape[0]
    crit = DetectionLoss(2, reg_max=16)
    cls, reg = torch.zeros(1, a, 2), torch.zeros(1, a, 68)
    good = torch.tensor([[0, 1, 4, 4, 20, 20.0]])
    with pytest.raises(ValueError, match=r"reg: expected \(N, A, 68\)"):
        crit(cls, torch.zeros(1, a, 4), points, strides, good, GRID)
    with pytest.raises(ValueError, match=r"cls_logits: expected \(N, A, 2\)"):
        crit(torch.zeros(1, a, 3), reg, points, strides, good, GRID)
    with pytest.raises(ValueError, match="targets: expected a"):
        crit(cls, reg, points, strides, good[:, :5], GRID)
    with pytest.raises(ValueError, match="image_index"):
        crit(cls, reg, points, strides, torch.tensor([[1, 1, 4, 4, 20, 20.0]]), GRID)
    with pytest.raises(ValueError, match="gt_labels: classes"):
        crit(cls, reg, points, strides, torch.tensor([[0, 2, 4, 4, 20, 20.0]]), GRID)
    with pytest.raises(ValueError, match="x2 >= x1"):
        crit(cls, reg, points, strides, torch.tensor([[0, 1, 20, 4, 4, 20.0]]), GRID)
    with pytest.raises(ValueError, match="feature_sizes"):
        crit(cls, reg, points, strides, good, [(4, 4)])
    with pytest.raises(ValueError, match="unknown assigner 'simota'"):
        crit.set_assigner("simota")
    with pytest.raises(ValueError, match="iou_type='eiou'"):
        DetectionLoss(2, iou_type="eiou")
    with pytest.raises(ValueError, match=r"loss_weights: unknown keys \['box'\]"):
        DetectionLoss(2, loss_weights={"box": 1.0})
    assert DetectionLoss(2, loss_weights={"iou": 1.0}).loss_weights == {"cls": 1.0, "iou": 1.0, "dfl": 0.5}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("assigner", ["atss", "tal"])
def test_cuda_fp16_autocast_matches_cpu(assigner):
    points, strides = make_anchor_points(GRID, STRIDES)
    gen = torch.Generator().manual_seed(0)
    cls, reg = torch.randn(2, points.shape[0], 2, generator=gen), torch.randn(2, points.shape[0], 68, generator=gen)
    targets = torch.tensor([[0, 1, 10, 12, 50, 40], [1, 0, 4, 4, 30, 20.0]])
    crit = DetectionLoss(2)
    crit.set_assigner(assigner)
    _, cpu = crit(cls, reg, points, strides, targets, GRID)
    with torch.autocast("cuda", dtype=torch.float16):
        loss, gpu = crit(*(x.cuda() for x in (cls, reg, points, strides, targets)), GRID)
    assert loss.dtype == torch.float32 and loss.device.type == "cuda"
    assert gpu == pytest.approx(cpu, rel=1e-4)
