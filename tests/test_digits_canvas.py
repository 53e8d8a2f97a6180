"""Digit canvases: deterministic, disjoint splits, tight boxes, masks that agree with the boxes, guarded folder."""
from __future__ import annotations

import hashlib
import json

import cv2
import numpy as np
import pytest

from qarep_dense.data.digits import digits_grey, digits_split
from qarep_dense.data.digits_canvas import (IGNORE, STROKE, CanvasSpec, canvas_files, generate_digits_canvas,
                                            render_canvas)

SPEC = CanvasSpec(passes=(1, 1))


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    root = tmp_path_factory.mktemp("canvas") / "digits"
    generate_digits_canvas(root, SPEC)
    return root


def _coco(root, split):
    return json.loads((root / "annotations" / f"instances_{split}.json").read_text())


def _digest(root) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".written")):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_same_spec_writes_the_same_bytes_and_is_skipped_when_current(export, tmp_path):
    again = tmp_path / "again"
    generate_digits_canvas(again, SPEC)
    assert _digest(again) == _digest(export)
    stamp = (again / ".written.json").stat().st_mtime_ns
    generate_digits_canvas(again, SPEC)  # current: nothing rewritten
    assert (again / ".written.json").stat().st_mtime_ns == stamp
    other = tmp_path / "other"
    generate_digits_canvas(other, CanvasSpec(passes=(1, 1), seed=1))
    assert _digest(other) != _digest(export)


def test_validation_canvases_use_only_validation_digits(export):
    _, labels = digits_grey()
    train_idx, val_idx = digits_split(labels, SPEC.split_seed)
    used = {split: {a["source_index"] for a in _coco(export, split)["annotations"]} for split in ("train", "val")}
    assert used["val"] <= set(val_idx.tolist()) and used["train"] <= set(train_idx.tolist())
    assert not used["train"] & used["val"]
    assert len(used["val"]) > 0.8 * len(val_idx)  # a pass places most of its digits


def test_boxes_inside_the_canvas_tight_on_the_strokes_and_masks_inside_boxes(export):
    coco = _coco(export, "val")
    by_image: dict[int, list[dict]] = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    assert {c["id"] for c in coco["categories"]} == set(range(1, 11))
    for info in coco["images"][:60]:
        image_path, label_path = canvas_files(export, "val", info["id"] - 1)
        image = cv2.imread(str(image_path), cv2.IMREAD_GRAYSCALE)
        label = cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED)
        assert image.shape == label.shape == (SPEC.canvas, SPEC.canvas)
        covered = np.zeros_like(label, bool)
        for a in by_image[info["id"]]:
            x, y, w, h = (int(v) for v in a["bbox"])
            assert 0 <= x and 0 <= y and x + w <= SPEC.canvas and y + h <= SPEC.canvas and w > 0 and h > 0
            window = label[y:y + h, x:x + w] == a["category_id"]
            # tight: strokes of this digit reach every edge of its box
            assert window[0].any() and window[-1].any() and window[:, 0].any() and window[:, -1].any()
            assert window.sum() == a["area"]
            assert (image[y:y + h, x:x + w][window] >= STROKE).all()
            covered[y:y + h, x:x + w] |= window
        strokes = (label >= 1) & (label <= 10)
        assert (strokes == covered).all()  # every stroke pixel lies in the box of its own digit
        assert set(np.unique(label).tolist()) <= {0, IGNORE, *range(1, 11)}


def test_render_canvas_labels_each_digit_with_its_class():
    grey, labels = digits_grey()
    spec = CanvasSpec(scales=(24,), digits_per_canvas=(2, 2))
    sources = [0, 1]  # a "0" and a "1"
    _, label, pasted = render_canvas(np.random.default_rng(0), grey, labels, sources, spec)
    assert [p.digit for p in pasted] == labels[sources].tolist()
    assert {int(v) for v in np.unique(label)} - {0, IGNORE} == {1 + int(d) for d in labels[sources]}


def test_refuses_to_write_over_a_folder_it_did_not_write(tmp_path):
    (tmp_path / "gtFine").mkdir()
    (tmp_path / "gtFine" / "mine.png").write_bytes(b"user data")
    with pytest.raises(FileExistsError, match="gtFine"):
        generate_digits_canvas(tmp_path, SPEC)
    assert (tmp_path / "gtFine" / "mine.png").read_bytes() == b"user data"


@pytest.mark.parametrize("kwargs, message", [(dict(canvas=48), "multiple of 32"), (dict(scales=(80,)), "scales"),
                                             (dict(digits_per_canvas=(3, 2)), "digits_per_canvas"),
                                             (dict(passes=(0, 1)), "passes")])
def test_bad_spec_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CanvasSpec(**kwargs)


def test_annotation_ids_are_unique_and_every_box_reaches_the_evaluation(export):
    """pycocotools indexes ground truth by annotation id: a repeated id would drop boxes from the AP."""
    from qarep_dense.evaluation.coco import _coco_from_file

    for split in ("train", "val"):
        ann_file = export / "annotations" / f"instances_{split}.json"
        coco = _coco_from_file(ann_file)
        listed = _coco(export, split)["annotations"]
        assert len({a["id"] for a in listed}) == len(listed)
        indexed = [coco.loadAnns(coco.getAnnIds(imgIds=[img])) for img in coco.getImgIds()]
        assert sum(len(anns) for anns in indexed) == len(listed)
        assert sorted(tuple(a["bbox"]) for anns in indexed for a in anns) == sorted(tuple(a["bbox"]) for a in listed)
