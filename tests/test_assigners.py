"""ATSS and task-aligned assigners on a few anchors and boxes, with expectations worked out by hand."""
import statistics

import pytest
import torch

from qarep_dense.losses import ATSSAssigner, TaskAlignedAssigner, pad_targets
from qarep_dense.ops import make_anchor_boxes, make_anchor_points


def _gts(*rows, batch_size=1):
    return pad_targets(torch.tensor(rows, dtype=torch.float32).reshape(-1, 6), batch_size)


# ---------------------------------------------------------------- padding

def test_pad_targets_groups_rows_by_image():
    labels, boxes, mask = _gts([1, 2, 0, 0, 1, 1], [0, 1, 5, 5, 6, 6], [1, 0, 2, 2, 3, 3], batch_size=3)
    assert labels.tolist() == [[1, 0], [2, 0], [0, 0]]
    assert mask.tolist() == [[True, False], [True, True], [False, False]]
    assert boxes[1].tolist() == [[0, 0, 1, 1], [2, 2, 3, 3]]
    assert boxes[0, 0].tolist() == [5, 5, 6, 6]


# ---------------------------------------------------------------- ATSS

# Two levels on a 16x16 input: level 0 is 2x2 cells of stride 8 (anchor centres (4,4), (12,4), (4,12), (12,12)),
# level 1 one cell of stride 16 (centre (8,8)). cell_size=1 makes each anchor box its own cell.
SIZES, STRIDES = [(2, 2), (1, 1)], [8, 16]


def _atss(gt_rows, topk=2, pred_boxes=None):
    anchor_boxes, counts = make_anchor_boxes(SIZES, STRIDES, cell_size=1.0)
    return ATSSAssigner(num_classes=3, topk=topk)(anchor_boxes, counts, *_gts(*gt_rows), pred_boxes=pred_boxes)


def test_atss_hand_example():
    # gt [0,0,10,9], centre (5, 4.5). Nearest 2 on level 0: anchor 0 (d^2 1.25), anchor 1 (d^2 49.25);
    # level 1 has only anchor 4. IoUs with the gt (area 90): 64/90, 16/138, 90/256.
    ious = [64 / 90, 16 / 138, 90 / 256]
    threshold = statistics.mean(ious) + statistics.stdev(ious)  # 0.6926
    assert ious[0] >= threshold > max(ious[1:])
    labels, boxes, scores, fg = _atss([[0, 2, 0, 0, 10, 9]])
    assert fg.tolist() == [[True, False, False, False, False]]
    assert labels.tolist() == [[2, 3, 3, 3, 3]]  # background is num_classes
    assert boxes[0, 0].tolist() == [0, 0, 10, 9] and boxes[0, 1:].abs().sum() == 0
    assert scores[0, 0].tolist() == [0, 0, 1] and scores[0, 1:].abs().sum() == 0


def test_atss_threshold_uses_the_unbiased_std():
    # gt [0,0,11,11], topk 4: all five anchors are candidates. The level-1 anchor (IoU 121/256) clears
    # mean + population std but not mean + sample std (the ATSS paper's code), so only anchor 0 is positive.
    ious = [64 / 121, 24 / 161, 24 / 161, 9 / 176, 121 / 256]
    mean = statistics.mean(ious)
    assert mean + statistics.pstdev(ious) < ious[4] < mean + statistics.stdev(ious) < ious[0]
    _, _, _, fg = _atss([[0, 0, 0, 0, 11, 11]], topk=4)
    assert fg.tolist() == [[True, False, False, False, False]]


def test_atss_scores_are_iou_of_predicted_boxes():
    pred = torch.zeros(1, 5, 4)
    pred[0, 0] = torch.tensor([0.0, 0.0, 10.0, 18.0])  # IoU with the gt [0,0,10,9]: 90/180
    _, _, scores, fg = _atss([[0, 2, 0, 0, 10, 9]], pred_boxes=pred)
    assert fg[0, 0] and scores[0, 0, 2].item() == pytest.approx(0.5, abs=1e-6)


@pytest.mark.parametrize("y2, positive", [(7.9, False), (8.1, True)])
def test_atss_needs_the_anchor_centre_inside_the_gt(y2, positive):
    # gt [-8,-8,24,y2], centre (8, ~0): level-0 candidates anchors 0 and 1, IoU 64/area; level-1 anchor
    # (box [0,0,16,16], centre (8,8)) overlaps most and clears the threshold, but its centre is inside only if y2 > 8.
    area = 32 * (y2 + 8)
    level1 = 16 * y2 / (area + 256 - 16 * y2)
    level0 = 64 / area
    ious = [level0, level0, level1]
    assert level1 >= statistics.mean(ious) + statistics.stdev(ious) > level0
    _, _, _, fg = _atss([[0, 0, -8, -8, 24, y2]])
    assert fg.tolist() == [[False, False, False, False, positive]]


def test_atss_anchor_claimed_by_two_gts_goes_to_higher_iou():
    # a 16x16 gt matches the level-1 anchor box exactly (IoU 1); a second gt [0,0,16,15] reaches IoU 15/16 with it
    anchor_boxes, counts = make_anchor_boxes(SIZES, STRIDES, cell_size=1.0)
    ious = [[64 / 256] * 4 + [1.0], [64 / 240, 64 / 240, 56 / 248, 56 / 248, 240 / 256]]
    for row in ious:  # both gts keep anchor 4 (IoU above threshold); only it, on these values
        assert row[4] >= statistics.mean(row[:2] + row[4:]) + statistics.stdev(row[:2] + row[4:])
    labels, boxes, _, fg = ATSSAssigner(3, topk=2)(anchor_boxes, counts, *_gts([0, 1, 0, 0, 16, 16],
                                                                               [0, 2, 0, 0, 16, 15]))
    assert fg[0].tolist() == [False, False, False, False, True]
    assert labels[0, 4].item() == 1 and boxes[0, 4].tolist() == [0, 0, 16, 16]


def test_atss_equal_ious_all_pass_the_threshold():
    # a small gt inside all four 40-px anchor boxes of a 2x2 level: every candidate has IoU 64/1600, std 0;
    # only anchor 0 has its centre inside the gt
    anchor_boxes, counts = make_anchor_boxes([(2, 2)], [8])
    _, _, _, fg = ATSSAssigner(2)(anchor_boxes, counts, *_gts([0, 1, 0, 0, 8, 8]))
    assert fg.tolist() == [[True, False, False, False]]


def test_atss_zero_area_gt_gets_no_anchor():
    _, _, scores, fg = _atss([[0, 1, 4, 4, 4, 4], [0, 0, 4, 2, 4, 12]])
    assert not fg.any() and torch.isfinite(scores).all()


# ---------------------------------------------------------------- task-aligned

# One 4x4 level of stride 8 on a 32x32 input; anchor k sits at ((k % 4) * 8 + 4, (k // 4) * 8 + 4).
POINTS, _ = make_anchor_points([(4, 4)], [8])


def _tal(scores, pred_boxes, gt_rows, topk=13, **kw):
    return TaskAlignedAssigner(num_classes=2, topk=topk, **kw)(scores[None], pred_boxes[None], POINTS, *_gts(*gt_rows))


def test_tal_topk_follows_scores_and_skips_anchors_outside():
    gt = [0.0, 0.0, 16.0, 16.0]  # contains anchors 0, 1, 4, 5
    scores = torch.full((16, 2), 0.1)
    scores[[5, 0, 1, 4, 15], 1] = torch.tensor([0.9, 0.6, 0.3, 0.2, 0.99])  # anchor 15 lies outside
    pred = torch.tensor(gt).expand(16, 4)  # every predicted box equals the gt: metric = score
    labels, boxes, target_scores, fg = _tal(scores, pred, [[0, 1, *gt]], topk=2)
    assert fg[0].nonzero().flatten().tolist() == [0, 5]
    assert labels[0, [0, 5]].tolist() == [1, 1]
    # metric / max metric * max IoU (1): 0.6 / 0.9 and 1
    assert target_scores[0, [0, 5], 1].tolist() == pytest.approx([0.6 / 0.9, 1.0], abs=1e-5)
    assert target_scores[0, :, 0].abs().sum() == 0


def test_tal_metric_combines_score_and_iou():
    gt = [0.0, 0.0, 16.0, 16.0]
    scores = torch.full((16, 2), 0.1)
    scores[0, 0], scores[5, 0] = 0.9, 0.2
    pred = torch.tensor(gt).expand(16, 4).clone()
    pred[0] = torch.tensor([0.0, 0.0, 16.0, 8.0])  # IoU 0.5
    # metric (alpha 1, beta 6): anchor 0 0.9 * 0.5^6 = 0.014, anchor 5 0.2 * 1 = 0.2 -> anchor 5 wins
    _, _, target_scores, fg = _tal(scores, pred, [[0, 0, *gt]], topk=1)
    assert fg[0].nonzero().flatten().tolist() == [5]
    # beta 0 ignores the IoU -> the score decides; normalised score = max IoU of the positives (0.5)
    _, _, target_scores, fg = _tal(scores, pred, [[0, 0, *gt]], topk=1, beta=0.0)
    assert fg[0].nonzero().flatten().tolist() == [0]
    assert target_scores[0, 0, 0].item() == pytest.approx(0.5, abs=1e-5)


def test_tal_anchor_inside_two_gts_goes_to_higher_iou():
    gt_a, gt_b = [0.0, 0.0, 16.0, 16.0], [8.0, 8.0, 24.0, 24.0]  # A holds anchors 0,1,4,5; B holds 5,6,9,10
    scores = torch.full((16, 2), 0.5)
    pred = torch.tensor([4.0, 4.0, 20.0, 20.0]).expand(16, 4).clone()  # IoU 144/368 with both gts
    pred[5] = torch.tensor([7.0, 7.0, 23.0, 23.0])  # IoU 225/287 with B, 81/431 with A
    labels, boxes, target_scores, fg = _tal(scores, pred, [[0, 0, *gt_a], [0, 1, *gt_b]])
    assert fg[0].nonzero().flatten().tolist() == [0, 1, 4, 5, 6, 9, 10]
    assert labels[0, [0, 1, 4, 5, 6, 9, 10]].tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert boxes[0, 5].tolist() == gt_b
    iou_b5, iou_other = 225 / 287, 144 / 368
    # gt B: anchor 5 has the largest metric -> score = its IoU; the others scale by (iou_other / iou_b5)^6
    assert target_scores[0, 5, 1].item() == pytest.approx(iou_b5, rel=1e-4)
    assert target_scores[0, 6, 1].item() == pytest.approx((iou_other / iou_b5) ** 6 * iou_b5, rel=1e-4)
    # gt A: its positives share one metric -> each gets the max IoU
    assert target_scores[0, [0, 1, 4], 0].tolist() == pytest.approx([iou_other] * 3, rel=1e-4)


def test_tal_zero_area_gt_and_zero_area_predictions_stay_finite():
    scores = torch.full((16, 2), 0.5)
    pred = torch.zeros(16, 4)
    _, _, target_scores, fg = _tal(scores, pred, [[0, 0, 4, 4, 4, 4], [0, 1, 0, 0, 16, 16]])
    assert not fg.any() and torch.isfinite(target_scores).all()


# ---------------------------------------------------------------- both

def test_no_ground_truth_gives_all_background():
    anchor_boxes, counts = make_anchor_boxes(SIZES, STRIDES)
    gts = _gts(batch_size=2)
    labels, boxes, scores, fg = ATSSAssigner(3)(anchor_boxes, counts, *gts)
    assert labels.shape == (2, 5) and (labels == 3).all() and not fg.any() and scores.shape == (2, 5, 3)
    labels, boxes, scores, fg = TaskAlignedAssigner(2)(torch.rand(2, 16, 2), torch.rand(2, 16, 4), POINTS, *gts)
    assert (labels == 2).all() and not fg.any() and scores.abs().sum() == 0 and boxes.shape == (2, 16, 4)


def test_batched_assignment_equals_per_image_assignment():
    gen = torch.Generator().manual_seed(0)
    sizes, strides = [(8, 8), (4, 4), (2, 2)], [8, 16, 32]
    points, _ = make_anchor_points(sizes, strides)
    anchor_boxes, counts = make_anchor_boxes(sizes, strides)
    xy = torch.rand(7, 2, generator=gen) * 40
    rows = torch.cat([torch.tensor([[0.0], [0], [0], [2], [2], [2], [2]]), torch.randint(0, 3, (7, 1), generator=gen),
                      xy, xy + 8 + torch.rand(7, 2, generator=gen) * 24], 1)  # image 1 has no gt
    scores = torch.rand(3, 84, 3, generator=gen)
    centre = points.expand(3, -1, -1)
    half = 12 * torch.rand(2, 3, 84, 2, generator=gen)
    pred = torch.cat([centre - half[0], centre + half[1]], -1)
    atss, tal = ATSSAssigner(3), TaskAlignedAssigner(3)
    batched = [atss(anchor_boxes, counts, *pad_targets(rows, 3), pred_boxes=pred),
               tal(scores, pred, points, *pad_targets(rows, 3))]
    assert batched[0].fg_mask.any() and batched[1].fg_mask.any()
    for i in range(3):
        one = rows[rows[:, 0] == i].clone()
        one[:, 0] = 0
        single = [atss(anchor_boxes, counts, *pad_targets(one, 1), pred_boxes=pred[i:i + 1]),
                  tal(scores[i:i + 1], pred[i:i + 1], points, *pad_targets(one, 1))]
        for b, s in zip(batched, single):
            for bt, st in zip(b, s):
                assert torch.allclose(bt[i:i + 1].float(), st.float(), atol=1e-6)


def test_assigners_reject_bad_input():
    anchor_boxes, counts = make_anchor_boxes(SIZES, STRIDES)
    with pytest.raises(ValueError, match="level_counts"):
        ATSSAssigner(3)(anchor_boxes, [4], *_gts([0, 1, 0, 0, 8, 8]))
    with pytest.raises(ValueError, match="gt_labels: classes"):
        ATSSAssigner(3)(anchor_boxes, counts, *_gts([0, 3, 0, 0, 8, 8]))
    with pytest.raises(ValueError, match=r"pred_scores \(1, 16, 3\)"):
        TaskAlignedAssigner(2)(torch.rand(1, 16, 3), torch.rand(1, 16, 4), POINTS, *_gts([0, 1, 0, 0, 8, 8]))
    with pytest.raises(ValueError, match="topk=0"):
        TaskAlignedAssigner(2, topk=0)
