"""Classification data: ImageFolder dataset/loader, digits export, synthetic shape classes."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.io import write_png

from qarep_dense.data.digits import export_digits
from qarep_dense.data.imagefolder import ImageFolderDataset, ImageReadError, make_cls_loader
from qarep_dense.data.synthetic.imagefolder import generate_imagefolder
from qarep_dense.data.synthetic.shapes import SHAPES


def solid(path: Path, rgb: tuple[int, int, int], size: tuple[int, int] = (20, 24)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = torch.tensor(rgb, dtype=torch.uint8).view(3, 1, 1).expand(3, *size).contiguous()
    write_png(image, str(path))


@pytest.fixture
def tree(tmp_path):
    """root/{train,val}/{cat,dog}: cats red, dogs blue; val has no 'cat' folder."""
    root = tmp_path / "ds"
    for i in range(3):
        solid(root / "train" / "cat" / f"{i}.png", (255, 0, 0))
        solid(root / "train" / "dog" / f"{i}.png", (0, 0, 255))
    solid(root / "val" / "dog" / "0.png", (0, 0, 255))
    return root


def test_imagefolder_returns_uint8_chw_rgb_and_labels(tree):
    ds = ImageFolderDataset(tree / "train")
    assert ds.classes == ["cat", "dog"] and len(ds) == 6
    image, label = ds[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 20, 24) and label == 0
    assert image[:, 0, 0].tolist() == [255, 0, 0]  # RGB order, not OpenCV's BGR
    assert ds[5][0][:, 0, 0].tolist() == [0, 0, 255] and ds[5][1] == 1


def test_loader_shapes_and_val_uses_train_class_indices(tree):
    train = make_cls_loader(tree, 16, batch_size=4, train=True)
    images, labels = next(iter(train))
    assert images.dtype == torch.uint8 and images.shape == (4, 3, 16, 16) and labels.dtype == torch.int64
    assert len(train) == 1  # 6 images, batch 4, last partial batch dropped
    val = make_cls_loader(tree, 16, batch_size=4, train=False)
    images, labels = next(iter(val))
    assert images.shape == (1, 3, 16, 16)
    assert labels.tolist() == [1]  # 'dog' keeps the train index although val has no 'cat'


def test_imagenet_size_eval_transform_resizes_then_center_crops(tmp_path):
    root = tmp_path / "big"
    for split in ("train", "val"):
        solid(root / split / "a" / "0.png", (10, 20, 30), size=(100, 150))
    images, _ = next(iter(make_cls_loader(root, 64, batch_size=1, train=False)))
    assert images.shape == (1, 3, 64, 64) and images[0, :, 32, 32].tolist() == [10, 20, 30]


def test_shuffle_order_is_a_function_of_seed_and_epoch(tree):
    def order(epoch: int, seed: int) -> list[int]:
        loader = make_cls_loader(tree, 8, batch_size=1, train=False, shuffle=True, seed=seed, split="train")
        loader.sampler.set_epoch(epoch)
        return list(iter(loader.sampler))

    assert order(1, 0) == order(1, 0)
    assert sorted(order(1, 0)) == list(range(6))
    assert order(0, 0) != order(1, 0) or order(0, 0) != order(2, 0)


def test_missing_and_empty_folders_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere: image folder not found"):
        ImageFolderDataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty: no class subfolders"):
        ImageFolderDataset(tmp_path / "empty")
    (tmp_path / "noimg" / "cls").mkdir(parents=True)
    (tmp_path / "noimg" / "cls" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"noimg/cls: class folder has no images"):
        ImageFolderDataset(tmp_path / "noimg")
    with pytest.raises(ValueError, match=r"fewer than one batch of 64"):
        make_cls_loader(_one_image_tree(tmp_path), 8, batch_size=64, train=True)


def _one_image_tree(tmp_path: Path) -> Path:
    root = tmp_path / "one"
    for split in ("train", "val"):
        solid(root / split / "a" / "0.png", (1, 2, 3))
    return root


def test_corrupt_image_names_the_file(tree):
    bad = tree / "train" / "dog" / "9_bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    with pytest.raises(ImageReadError, match=r"train: 1 corrupt .*9_bad\.png: not a readable image"):
        ImageFolderDataset(tree / "train")  # found when the dataset is built, before any training
    ds = ImageFolderDataset(tree / "train", check_images=False)
    index = [str(p) for p, _ in ds.samples].index(str(bad))
    with pytest.raises(ImageReadError, match=r"9_bad\.png: cannot read image"):
        ds[index]  # and again when loaded, should it break after the check


def test_truncated_png_and_wrong_format_are_caught_at_build(tree):
    good = (tree / "train" / "dog" / "0.png").read_bytes()
    (tree / "train" / "dog" / "7_cut.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(ImageReadError, match=r"7_cut\.png: PNG without its end chunk"):
        ImageFolderDataset(tree / "train")
    (tree / "train" / "dog" / "7_cut.png").unlink()
    from PIL import Image

    Image.new("RGB", (4, 4)).save(tree / "train" / "dog" / "8.jpg", format="BMP")  # decode_image cannot read BMP
    with pytest.raises(ImageReadError, match=r"8\.jpg: format BMP is not one of"):
        make_cls_loader(tree, 16, batch_size=2, train=True)


def test_digits_export_counts_classes_and_skip(tmp_path):
    out = export_digits(tmp_path / "digits", size=32, seed=0)
    counts = {split: len(list((out / split).glob("*/*.png"))) for split in ("train", "val")}
    assert counts == {"train": 1437, "val": 360}
    assert sorted(p.name for p in (out / "train").iterdir()) == [str(d) for d in range(10)]
    per_class_val = [len(list((out / "val" / str(d)).glob("*.png"))) for d in range(10)]
    assert all(35 <= n <= 37 for n in per_class_val)  # stratified: ~20% of each ~180-image class
    train_ids = {p.stem for p in (out / "train").glob("*/*.png")}
    assert not train_ids & {p.stem for p in (out / "val").glob("*/*.png")}  # disjoint splits
    image, _ = ImageFolderDataset(out / "val")[0]
    assert image.shape == (3, 32, 32) and torch.equal(image[0], image[1])  # grey replicated to RGB
    record = out / ".written.json"
    stamp = record.stat().st_mtime_ns
    export_digits(out, size=32, seed=0)
    assert record.stat().st_mtime_ns == stamp  # skipped: same export already there
    assert json.loads(record.read_text())["info"]["counts"] == {"train": 1437, "val": 360}


def test_exporter_refuses_to_delete_foreign_data(tmp_path):
    solid(tmp_path / "mine" / "train" / "x" / "0.png", (0, 0, 0))
    with pytest.raises(FileExistsError, match=r"mine: holds files this project did not write \(train/x/0.png\)"):
        generate_imagefolder(tmp_path / "mine", per_class_train=1, per_class_val=1)


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.png"))}


def test_synthetic_generator_is_deterministic(tmp_path):
    a = generate_imagefolder(tmp_path / "a", num_classes=4, per_class_train=3, per_class_val=2, seed=7)
    b = generate_imagefolder(tmp_path / "b", num_classes=4, per_class_train=3, per_class_val=2, seed=7)
    c = generate_imagefolder(tmp_path / "c", num_classes=4, per_class_train=3, per_class_val=2, seed=8)
    assert _digest(a) == _digest(b) and len(_digest(a)) == 4 * 5
    assert _digest(a) != _digest(c)
    assert sorted(p.name for p in (a / "train").iterdir()) == sorted(SHAPES[:4])
    images = np.stack([ImageFolderDataset(a / "train")[i][0].numpy() for i in range(3)])
    assert images.std() > 10  # textured, not blank
    with pytest.raises(ValueError, match=r"num_classes must be 2\.\.6"):
        generate_imagefolder(tmp_path / "d", num_classes=9)
