"""COCO-format dataset, loader and synthetic generator on a tiny synthetic set (non-square images, odd ids)."""
import json
import logging
import shutil

import numpy as np
import pytest
import torch

from qarep_dense.data.coco import AnnotationError, CocoDetection, DetAugment, ImageReadError
from qarep_dense.data.det_loader import collate_detection, make_det_loader, set_loader_epoch
from qarep_dense.data.synthetic.coco import generate_coco, render_image
from qarep_dense.data.synthetic.shapes import SHAPES, textured_background
from qarep_dense.data.transforms import unletterbox_boxes

CAT_IDS = [3, 7, 11, 20]  # non-contiguous on purpose
SIZE_HW = (96, 128)
NO_AUG = DetAugment(hsv_h=0, hsv_s=0, hsv_v=0, translate=0, scale=0, flip_lr=0, mosaic=0)

# the 80 category ids of COCO 2017 (1..90 with gaps)
COCO80 = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33,
          34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61,
          62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90]


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    root = tmp_path_factory.mktemp("syncoco")
    return generate_coco(root, num_train=8, num_val=6, image_size=SIZE_HW, seed=3, num_classes=4,
                         category_ids=CAT_IDS, ext="png")


def _val(syn, size=64, **kw):
    return CocoDetection(syn["val_images"], syn["val_ann"], size, **kw)


def _write_json(path, data):
    path.write_text(json.dumps(data))
    return path


def _one_image_json(tmp_path, syn, annotations, categories=None):
    """A copy of val image 1 with the given annotations."""
    shutil.copy(syn["val_images"] / "000001.png", tmp_path / "a.png")
    data = {"images": [{"id": 5, "file_name": "a.png", "height": SIZE_HW[0], "width": SIZE_HW[1]}],
            "annotations": annotations, "categories": categories or [{"id": 1, "name": "thing"}]}
    return _write_json(tmp_path / "ann.json", data)


def test_category_mapping_non_contiguous(syn):
    ds = _val(syn)
    assert ds.category_ids == CAT_IDS and ds.names == list(SHAPES[:4]) and ds.num_classes == 4
    gt = json.loads(syn["val_ann"].read_text())
    for k in range(len(ds)):
        _, targets, info = ds[k]
        cats = sorted(a["category_id"] for a in gt["annotations"] if a["image_id"] == info["image_id"])
        assert sorted(CAT_IDS[int(c)] for c in targets[:, 0]) == cats


def test_coco80_ids_map_to_contiguous(tmp_path, syn):
    order = np.random.default_rng(0).permutation(COCO80).tolist()  # listed out of order in the file
    cats = [{"id": c, "name": f"c{c}"} for c in order]
    ann = [{"id": 1, "image_id": 5, "category_id": 13, "bbox": [10, 10, 20, 20]},
           {"id": 2, "image_id": 5, "category_id": 90, "bbox": [30, 30, 20, 20]}]
    ds = CocoDetection(tmp_path, _one_image_json(tmp_path, syn, ann, cats), 64)
    assert ds.category_ids == COCO80 and ds.names[11] == "c13"
    assert ds[0][1][:, 0].tolist() == [11.0, 79.0]


def test_eval_item_letterbox_and_inverse(syn):
    ds = _val(syn)  # 96x128 -> 64: ratio 0.5, content 48x64, 8 grey rows above and below
    gt = json.loads(syn["val_ann"].read_text())
    image, targets, info = ds[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.uint8 and targets.dtype == torch.float32
    assert info["image_id"] == 1 and info["orig_size"] == SIZE_HW and info["ratio"] == 0.5 and info["pad"] == (0, 8)
    assert info["file"].endswith("000001.png")
    assert (image[:, :8] == 114).all() and (image[:, 56:] == 114).all()
    expect = np.array([[x, y, x + w, y + h] for a in gt["annotations"] if a["image_id"] == 1
                       for x, y, w, h in [a["bbox"]]])
    back = unletterbox_boxes(targets[:, 1:].numpy(), info["ratio"], info["pad"], info["orig_size"])
    np.testing.assert_allclose(np.sort(back, 0), np.sort(expect, 0), atol=1e-4)


def test_no_mosaic_no_jitter_train_equals_eval(syn):
    ds_eval = _val(syn)
    ds = _val(syn, train=True, augment=DetAugment(hsv_h=0, hsv_s=0, hsv_v=0, translate=0, scale=0, flip_lr=0))
    ds.mosaic_enabled = False
    for k in range(3):
        a, b = ds[k], ds_eval[k]
        assert torch.equal(a[0], b[0]) and torch.allclose(a[1], b[1])
    ds.mosaic_enabled = True
    assert not torch.equal(ds[0][0], ds_eval[0][0])


def test_train_items_are_valid(syn):
    ds = CocoDetection(syn["train_images"], syn["train_ann"], 64, train=True, augment=DetAugment(mixup=0.5))
    for k in range(len(ds)):
        image, targets, _ = ds[k]
        assert image.shape == (3, 64, 64) and targets.shape[1] == 5
        boxes = targets[:, 1:]
        assert (boxes >= 0).all() and (boxes <= 64).all()
        assert ((boxes[:, 2:] - boxes[:, :2]) >= 2).all()
        assert set(targets[:, 0].tolist()) <= {0.0, 1.0, 2.0, 3.0}


def test_image_without_annotations(tmp_path, syn):
    ann = _one_image_json(tmp_path, syn, [])
    assert CocoDetection(tmp_path, ann, 64)[0][1].shape == (0, 5)
    ds = CocoDetection(tmp_path, ann, 64, train=True, augment=DetAugment())
    images, targets, infos = collate_detection([ds[0], ds[0]])
    assert images.shape == (2, 3, 64, 64) and targets.shape == (0, 6) and len(infos) == 2


def test_crowd_ignored_oob_clipped_degenerate_dropped(tmp_path, syn, caplog):
    ann = [{"id": 1, "image_id": 5, "category_id": 1, "bbox": [-10, 80, 40, 40]},   # -> [0, 80, 30, 96]
           {"id": 2, "image_id": 5, "category_id": 1, "bbox": [20, 20, 30, 30], "iscrowd": 1},
           {"id": 3, "image_id": 5, "category_id": 1, "bbox": [140, 10, 20, 20]},   # right of the image
           {"id": 4, "image_id": 5, "category_id": 1, "bbox": [50, 50, 0, 10]}]     # zero width
    with caplog.at_level(logging.WARNING):
        ds = CocoDetection(tmp_path, _one_image_json(tmp_path, syn, ann), 128)  # 96x128 at 128: pad_h 16
    assert "dropped 2 degenerate boxes" in caplog.text
    np.testing.assert_allclose(ds[0][1].numpy(), [[0, 0, 96, 30, 112]])


@pytest.mark.parametrize("text, match", [
    ("{not json", "not valid JSON"),
    ('{"images": [], "categories": []}', "missing or non-list 'annotations'"),
    ('[1, 2]', "JSON object"),
])
def test_malformed_json_names_file(tmp_path, syn, text, match):
    bad = tmp_path / "broken.json"
    bad.write_text(text)
    with pytest.raises(AnnotationError, match=match) as err:
        CocoDetection(syn["val_images"], bad, 64)
    assert "broken.json" in str(err.value)


def test_malformed_entries_named(tmp_path, syn):
    ann = [{"id": 9, "image_id": 5, "category_id": 1, "bbox": [1, 2, 3]}]
    with pytest.raises(AnnotationError, match=r"ann.json: annotation id 9: bbox must be 4 numbers"):
        CocoDetection(tmp_path, _one_image_json(tmp_path, syn, ann), 64)
    ann = [{"id": 9, "image_id": 6, "category_id": 1, "bbox": [1, 2, 3, 4]}]
    with pytest.raises(AnnotationError, match="unknown image_id 6"):
        CocoDetection(tmp_path, _one_image_json(tmp_path, syn, ann), 64)
    with pytest.raises(FileNotFoundError, match="nope.json: annotation file not found"):
        CocoDetection(tmp_path, tmp_path / "nope.json", 64)
    # two boxes under one id: pycocotools would keep one of them twice in the evaluation's ground truth
    ann = [{"id": 3, "image_id": 5, "category_id": 1, "bbox": [1, 2, 3, 4]},
           {"id": 3, "image_id": 5, "category_id": 1, "bbox": [9, 9, 5, 5]}]
    with pytest.raises(AnnotationError, match=r"ann.json: duplicate ids in 'annotations' \(e.g. \[3\]\)"):
        CocoDetection(tmp_path, _one_image_json(tmp_path, syn, ann), 64)


def test_missing_image_named_at_construction(tmp_path, syn):
    ann = _one_image_json(tmp_path, syn, [])
    (tmp_path / "a.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing on disk: .*a\.png"):
        CocoDetection(tmp_path, ann, 64)


def test_corrupt_image_named_at_build_and_at_load(tmp_path, syn):
    ann = _one_image_json(tmp_path, syn, [])
    (tmp_path / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(ImageReadError, match=r"ann\.json: 1 corrupt .*a\.png: not a readable image"):
        CocoDetection(tmp_path, ann, 64)  # found when the dataset is built, before an epoch is spent
    ds = CocoDetection(tmp_path, ann, 64, check_images=False)
    with pytest.raises(OSError, match=r"a\.png: cannot decode image"):
        ds[0]


def test_image_size_differing_from_annotation_caught_at_build(tmp_path, syn):
    ann = _one_image_json(tmp_path, syn, [])
    data = json.loads(ann.read_text())
    data["images"][0]["height"] = 50
    _write_json(ann, data)
    with pytest.raises(ImageReadError, match=r"a\.png: header size .* \(96, 128\) differs from the declared \(50, 128\)"):
        CocoDetection(tmp_path, ann, 64)


def test_empty_images_list_names_the_annotation_file(tmp_path, syn):
    ann = _write_json(tmp_path / "empty.json", {"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]})
    with pytest.raises(AnnotationError, match=r"empty\.json: the 'images' list is empty"):
        make_det_loader(tmp_path, ann, 64, batch_size=2, train=True)


def test_fewer_images_than_one_batch_names_the_annotation_file(syn):
    with pytest.raises(ValueError, match=r"instances_val\.json: 6 image\(s\) are fewer than one batch of 8"):
        make_det_loader(syn["val_images"], syn["val_ann"], 64, batch_size=8, train=True, drop_last=True)


def test_collate_builds_image_indices():
    batch = [(torch.zeros(3, 8, 8, dtype=torch.uint8), torch.tensor([[1, 0, 0, 2, 2], [2, 1, 1, 3, 3.]]), {"i": 0}),
             (torch.ones(3, 8, 8, dtype=torch.uint8), torch.zeros((0, 5)), {"i": 1}),
             (torch.ones(3, 8, 8, dtype=torch.uint8), torch.tensor([[0, 4, 4, 6, 6.]]), {"i": 2})]
    images, targets, infos = collate_detection(batch)
    assert images.shape == (3, 3, 8, 8) and images.dtype == torch.uint8
    expected = torch.tensor([[0, 1, 0, 0, 2, 2], [0, 2, 1, 1, 3, 3], [2, 0, 4, 4, 6, 6.]])
    assert torch.equal(targets, expected) and [i["i"] for i in infos] == [0, 1, 2]


def _epoch(loader, epoch):
    set_loader_epoch(loader, epoch)
    return [(img.clone(), tgt.clone(), [i["image_id"] for i in info]) for img, tgt, info in loader]


def _same(a, b):
    return len(a) == len(b) and all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) and x[2] == y[2]
                                    for x, y in zip(a, b))


def test_loader_deterministic_per_seed_and_workers(syn):
    def make(seed, workers):
        return make_det_loader(syn["train_images"], syn["train_ann"], 64, batch_size=3, train=True,
                               augment=DetAugment(), workers=workers, shuffle=True, seed=seed)
    a0, a1 = _epoch(make(1, 0), 0), _epoch(make(1, 0), 1)
    assert _same(a0, _epoch(make(1, 0), 0))
    assert _same(a0, _epoch(make(1, 2), 0))  # worker layout does not change the samples
    assert not _same(a0, a1) and not _same(a0, _epoch(make(2, 0), 0))
    assert sorted(i for batch in a0 for i in batch[2]) == list(range(1, 9))  # one epoch = every image once


def test_eval_loader_order_and_shapes(syn):
    loader = make_det_loader(syn["val_images"], syn["val_ann"], 64, batch_size=4, train=False)
    batches = _epoch(loader, 0)
    assert [b[2] for b in batches] == [[1, 2, 3, 4], [5, 6]]
    assert batches[0][0].shape == (4, 3, 64, 64) and batches[0][1].shape[1] == 6
    with pytest.raises(ValueError, match="batch_size"):
        make_det_loader(syn["val_images"], syn["val_ann"], 64, batch_size=0, train=False)


def test_generator_deterministic_and_reused(tmp_path):
    a = generate_coco(tmp_path / "a", 3, 2, 64, seed=5, num_classes=3)
    b = generate_coco(tmp_path / "b", 3, 2, 64, seed=5, num_classes=3)
    c = generate_coco(tmp_path / "c", 3, 2, 64, seed=6, num_classes=3)
    for key in ("train_ann", "val_ann"):
        assert a[key].read_bytes() == b[key].read_bytes()
    assert (a["train_images"] / "000002.jpg").read_bytes() == (b["train_images"] / "000002.jpg").read_bytes()
    assert a["train_ann"].read_bytes() != c["train_ann"].read_bytes()
    stamp = a["train_ann"].stat().st_mtime_ns
    generate_coco(tmp_path / "a", 3, 2, 64, seed=5, num_classes=3)
    assert a["train_ann"].stat().st_mtime_ns == stamp  # same parameters: skipped
    with pytest.raises(FileExistsError, match=r"a: holds synthetic-coco data generated with other settings "
                                              r"\(num_train 3 -> 4\)"):
        generate_coco(tmp_path / "a", 4, 2, 64, seed=5, num_classes=3)  # new parameters: refused, not regenerated
    assert a["train_ann"].stat().st_mtime_ns == stamp


def test_generator_content(syn):
    data = json.loads(syn["train_ann"].read_text())
    assert [c["id"] for c in data["categories"]] == CAT_IDS
    per_image = np.bincount([a["image_id"] for a in data["annotations"]], minlength=9)[1:]
    assert per_image.min() >= 1 and per_image.max() <= 6
    for a in data["annotations"]:
        x, y, w, h = a["bbox"]
        assert a["iscrowd"] == 0 and a["category_id"] in CAT_IDS and 0 < a["area"] <= w * h
        assert x >= 0 and y >= 0 and x + w <= SIZE_HW[1] and y + h <= SIZE_HW[0]
        assert max(w, h) >= 0.08 * 96 * 0.5  # at least half of the smallest shape stays visible


def test_render_image_boxes_are_tight_hulls_of_visible_pixels():
    rng = np.random.default_rng(0)
    img, objects = render_image(rng, 80, 100, num_classes=6, max_objects=1)
    (cls, (x, y, w, h), area), = objects
    # the background is drawn first from the same stream: the shape is where the pixels differ
    plain = textured_background(np.random.default_rng(0), 80, 100)
    diff = np.abs(img.astype(int) - plain.astype(int)).sum(-1) > 0
    ys, xs = np.nonzero(diff)
    assert [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()] == [x, y, w, h]
    assert diff.sum() <= area and area > 0


@pytest.mark.parametrize("kwargs, match", [
    ({"num_classes": 7}, "num_classes"), ({"category_ids": [1, 1, 2]}, "distinct"), ({"image_size": 16}, "32 px"),
    ({"ext": "bmp"}, "ext"),
])
def test_generator_rejects_bad_args(tmp_path, kwargs, match):
    args = {"num_classes": 3, "image_size": 64} | kwargs
    with pytest.raises(ValueError, match=match):
        generate_coco(tmp_path, 1, 1, **args)
