"""COCOEvaluator: pycocotools AP on ground-truth-as-prediction, shifted boxes, hand-computed cases, bad input."""
import json
import math

import numpy as np
import pytest
import torch

from qarep_dense.data.coco import AnnotationError, CocoDetection
from qarep_dense.data.synthetic.coco import generate_coco
from qarep_dense.evaluation.coco import METRIC_KEYS, COCOEvaluator

CAT_IDS = [2, 5, 9]


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    root = tmp_path_factory.mktemp("syncoco_eval")
    return generate_coco(root, num_train=0, num_val=8, image_size=(96, 128), seed=11, num_classes=3,
                         category_ids=CAT_IDS, ext="png")


def _gt_detections(ann_file, shift=0.0):
    """Per image: (boxes xyxy, scores, contiguous labels) equal to the ground truth, x shifted by shift * width."""
    data = json.loads(ann_file.read_text())
    out = {img["id"]: ([], [], []) for img in data["images"]}
    for a in data["annotations"]:
        x, y, w, h = a["bbox"]
        boxes, scores, labels = out[a["image_id"]]
        boxes.append([x + shift * w, y, x + w + shift * w, y + h])
        scores.append(0.9)
        labels.append(CAT_IDS.index(a["category_id"]))
    return out


def _score(evaluator, dets):
    for image_id, (boxes, scores, labels) in dets.items():
        evaluator.add(image_id, np.reshape(boxes, (-1, 4)), np.array(scores), np.array(labels))
    return evaluator.summarize()


def test_ground_truth_as_prediction_scores_one(syn):
    res = _score(COCOEvaluator(syn["val_ann"], CAT_IDS), _gt_detections(syn["val_ann"]))
    assert set(res) == set(METRIC_KEYS)
    assert [res["AP"], res["AP50"], res["AP75"]] == pytest.approx([1.0, 1.0, 1.0], abs=1e-9)
    assert all(res[k] == pytest.approx(1.0) or math.isnan(res[k]) for k in ("APs", "APm", "APl"))


def test_shifted_boxes_score_below_one(syn):
    res = _score(COCOEvaluator(syn["val_ann"], CAT_IDS), _gt_detections(syn["val_ann"], shift=0.2))
    # a 20% shift leaves IoU = 0.8 / 1.2 = 0.667: matched at IoU 0.5..0.65 only (4 of 10 thresholds)
    assert res["AP50"] == pytest.approx(1.0) and res["AP75"] == 0.0
    assert res["AP"] == pytest.approx(0.4, abs=1e-6)


def test_wrong_labels_score_near_zero(syn):
    dets = {k: (b, s, [(label + 1) % 3 for label in lab]) for k, (b, s, lab) in _gt_detections(syn["val_ann"]).items()}
    # only a relabelled box that happens to overlap another shape of that class can still match
    assert _score(COCOEvaluator(syn["val_ann"], CAT_IDS), dets)["AP"] < 0.05


def test_no_detections_gives_zeros(syn):
    ev = COCOEvaluator(syn["val_ann"], CAT_IDS)
    assert ev.summarize() == {k: 0.0 for k in METRIC_KEYS}
    ev.add(1, np.zeros((0, 4)), np.zeros(0), np.zeros(0))
    assert ev.summarize() == {k: 0.0 for k in METRIC_KEYS}


def test_hand_computed_ap(tmp_path):
    # 2 medium ground-truth boxes; one exact hit (0.9) and one false positive (0.8): recall tops at 0.5
    # with precision 1, so the 101-point interpolated AP is 51/101 at every IoU threshold
    data = {"images": [{"id": 1, "file_name": "x.jpg", "height": 200, "width": 200}],
            "annotations": [{"id": k + 1, "image_id": 1, "category_id": 4, "bbox": bbox, "area": 2500, "iscrowd": 0}
                            for k, bbox in enumerate([[10, 10, 50, 50], [100, 100, 50, 50]])],
            "categories": [{"id": 4, "name": "box"}]}
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(data))
    ev = COCOEvaluator(path, [4])
    ev.add(1, torch.tensor([[10.0, 10, 60, 60], [150, 10, 190, 50]]), torch.tensor([0.9, 0.8]), torch.tensor([0, 0]))
    res = ev.summarize()
    assert res["AP"] == pytest.approx(51 / 101) and res["APm"] == pytest.approx(51 / 101)
    assert math.isnan(res["APs"]) and math.isnan(res["APl"])


def test_dataset_letterbox_roundtrip_scores_one(syn):
    """Targets of the letterboxed eval items, mapped back with add_letterboxed, are the ground truth again."""
    ds = CocoDetection(syn["val_images"], syn["val_ann"], 64)
    ev = COCOEvaluator(syn["val_ann"], ds.category_ids)
    for k in range(len(ds)):
        _, targets, info = ds[k]
        ev.add_letterboxed(info, targets[:, 1:], torch.full((len(targets),), 0.5), targets[:, 0].long())
    assert ev.summarize()["AP"] == pytest.approx(1.0, abs=1e-9)


def test_accepts_coco_object_and_subset_of_images(syn):
    from pycocotools.coco import COCO

    ev = COCOEvaluator(COCO(str(syn["val_ann"])), CAT_IDS)
    dets = _gt_detections(syn["val_ann"])
    boxes, scores, labels = dets[2]
    ev.add(2, np.array(boxes), np.array(scores), np.array(labels))
    assert ev.summarize()["AP"] == pytest.approx(1.0, abs=1e-9)  # only image 2 was evaluated


def test_bad_input_raises(syn, tmp_path):
    ev = COCOEvaluator(syn["val_ann"], CAT_IDS)
    with pytest.raises(ValueError, match="labels must be in 0..2"):
        ev.add(1, np.zeros((1, 4)), np.ones(1), np.array([3]))
    with pytest.raises(ValueError, match="image_id 999 is not in the ground truth"):
        ev.add(999, np.zeros((0, 4)), np.zeros(0), np.zeros(0))
    with pytest.raises(ValueError, match="lengths differ"):
        ev.add(1, np.zeros((2, 4)), np.ones(1), np.zeros(2))
    with pytest.raises(ValueError, match="non-finite"):
        ev.add(1, np.full((1, 4), np.nan), np.ones(1), np.zeros(1))
    with pytest.raises(ValueError, match=r"category_ids \[77\]"):
        COCOEvaluator(syn["val_ann"], [2, 5, 77])
    bad = tmp_path / "bad_gt.json"
    bad.write_text('{"images": []')
    with pytest.raises(AnnotationError, match="bad_gt.json: not valid JSON"):
        COCOEvaluator(bad, CAT_IDS)


def test_adding_an_image_twice_counts_once(syn):
    ev = COCOEvaluator(syn["val_ann"], CAT_IDS)
    boxes, scores, labels = _gt_detections(syn["val_ann"])[3]
    ev.add(3, np.zeros((1, 4)) + [0, 0, 5, 5], np.ones(1), np.zeros(1))  # replaced below
    for _ in range(2):  # a padded DistributedSampler repeats images
        ev.add(3, np.array(boxes), np.array(scores), np.array(labels))
    assert ev.image_ids == [3] and ev.summarize()["AP"] == pytest.approx(1.0, abs=1e-9)
