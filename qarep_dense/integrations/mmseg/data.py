"""Datasets of the segmentation task through mmseg: file checks at build time, loaders, the mIoU metric.

The loaders hand out (uint8 RGB (N, 3, H, W), [label (H, W)]) through the config's evaluation pipeline,
for the project's evaluator and calibration; training itself uses mmengine's loaders from the config.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from mmengine.config import Config
from PIL import Image

from ...data.image_check import check_image_files


def check_dataset_files(dataset_cfg: dict, config_path: str | None = None) -> int:
    """Check a Cityscapes-style dataset config against the disk; returns the number of images.

    Raises FileNotFoundError naming the folder when the data root or a split folder is missing,
    ValueError naming the folder when it holds no image, naming the image when its label file is
    missing, and naming the file when an image or label is corrupt (header check) or a label's size
    differs from its image's (mmseg itself would fail later, deep in a worker or at evaluation, or
    pair files silently).
    """
    root = Path(dataset_cfg.get("data_root") or "")
    prefix = dataset_cfg.get("data_prefix", {})
    img_suffix = dataset_cfg.get("img_suffix", "_leftImg8bit.png")
    seg_suffix = dataset_cfg.get("seg_map_suffix", "_gtFine_labelTrainIds.png")
    where = f" (config {config_path})" if config_path else ""
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: data root not found{where}; expected leftImg8bit/ and gtFine/ below it")
    img_dir, seg_dir = root / prefix.get("img_path", ""), root / prefix.get("seg_map_path", "")
    for folder in (img_dir, seg_dir):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: split folder not found under data root {root}{where}")
    images = sorted(img_dir.rglob(f"*{img_suffix}"))
    if not images:
        raise ValueError(f"{img_dir}: no *{img_suffix} images{where}")
    labels = []
    for image in images:
        label = seg_dir / image.relative_to(img_dir).parent / (image.name[: -len(img_suffix)] + seg_suffix)
        if not label.is_file():
            raise FileNotFoundError(f"{image}: image has no label file (expected {label}); "
                                    "make labelTrainIds with cityscapesscripts' createTrainIdLabelImgs")
        labels.append(label)
    check_image_files(images, f"{img_dir}{where}")  # a corrupt file fails now, not at evaluation
    check_image_files(labels, f"{seg_dir}{where}")
    _check_label_sizes(images, labels, where)
    return len(images)


def _header_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        return img.size  # (width, height), read from the header only


def _check_label_sizes(images: list[Path], labels: list[Path], where: str) -> None:
    """A label map must have its image's size: otherwise eval_seg resizes the logits to the label and
    reports an mIoU, and training fails after its last iteration with an IndexError naming no file."""
    for image, label in zip(images, labels):
        img_size, seg_size = _header_size(image), _header_size(label)
        if img_size != seg_size:
            raise ValueError(f"{label}: label map is {seg_size[0]}x{seg_size[1]} (width x height) but its image "
                             f"{image} is {img_size[0]}x{img_size[1]}{where}; a label map must match its image")


def preprocess_of(cfg: Config):
    """The :class:`~qarep_dense.data.preprocess.Preprocess` equal to the config's ``SegDataPreProcessor``
    on RGB uint8 input (the loaders below hand out RGB)."""
    from ...data.preprocess import Preprocess

    dp = cfg.model.get("data_preprocessor") or cfg.get("data_preprocessor") or {}
    if not dp.get("bgr_to_rgb", False):
        raise ValueError("the segmentation config's data_preprocessor must set bgr_to_rgb=True (RGB-trained model)")
    return Preprocess(mean=tuple(float(m) / 255 for m in dp["mean"]), std=tuple(float(s) / 255 for s in dp["std"]))


def dataset_cfg(cfg: Config, split: str, data_root: str | Path | None = None) -> dict:
    """The config's test dataset settings (evaluation pipeline) pointed at ``split`` ("train" or "val")."""
    ds = copy.deepcopy(cfg.test_dataloader.dataset.to_dict())
    if split == "train":
        ds["data_prefix"] = copy.deepcopy(cfg.train_dataloader.dataset.data_prefix.to_dict())
    if data_root is not None:
        ds["data_root"] = str(data_root)
    return ds


def collate_seg(items: list[dict]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """mmseg samples -> (uint8 RGB (N, 3, H, W), [ground truth (H, W)]); mmseg loads BGR."""
    images = [item["inputs"] for item in items]
    if len({tuple(im.shape) for im in images}) > 1:
        paths = [item["data_samples"].img_path for item in items]
        raise ValueError(f"images of one evaluation batch differ in size ({paths}); use --batch-size 1")
    gts = [item["data_samples"].gt_sem_seg.data[0] for item in items]
    return torch.stack(images).flip(1), gts


def build_dataset(ds_cfg: dict):
    """An mmseg dataset (e.g. ``CityscapesDataset``) from its config dict, in the "mmseg" registry scope."""
    from mmengine.registry import DefaultScope
    from mmseg.registry import DATASETS

    with DefaultScope.overwrite_default_scope("mmseg"):
        return DATASETS.build(ds_cfg)


def shuffled_order(n: int, seed: int) -> list[int]:
    """One fixed shuffle of ``n`` indices: the order a ``DataLoader(shuffle=True,
    generator=torch.Generator().manual_seed(seed))`` reads on its first pass (its iterator draws a base seed
    from the generator, then the sampler a permutation), so calibrations made before every pass read it stay
    reproducible."""
    generator = torch.Generator().manual_seed(seed)
    torch.empty((), dtype=torch.int64).random_(generator=generator)
    return torch.randperm(n, generator=generator).tolist()


def seg_loaders(cfg: Config, data_root: str | Path | None, batch_size: int, workers: int = 0, seed: int = 0):
    """(validation loader, shuffled calibration loader on the train split, dataset metainfo), both
    through the config's evaluation pipeline; the files are checked first (errors name them).

    The calibration loader reads the same shuffled order on every pass (as the classification and detection
    loaders do), so every model measured with one evaluator calibrates on the same images."""
    from torch.utils.data import DataLoader

    loaders, meta = [], None
    for split in ("val", "train"):
        ds_cfg = dataset_cfg(cfg, split, data_root)
        check_dataset_files(ds_cfg)
        dataset = build_dataset(ds_cfg)
        meta = meta or dataset.metainfo
        order = shuffled_order(len(dataset), seed) if split == "train" else None  # a list is a valid sampler
        loaders.append(DataLoader(dataset, batch_size, sampler=order, num_workers=workers, collate_fn=collate_seg,
                                  generator=torch.Generator().manual_seed(seed)))
    return loaders[0], loaders[1], meta


def iou_metric_factory(metainfo: dict, ignore_index: int = 255):
    """A function returning a fresh mmseg ``IoUMetric`` (mIoU) for ``metainfo``'s classes."""
    from mmseg.evaluation import IoUMetric

    def make():
        metric = IoUMetric(iou_metrics=["mIoU"], ignore_index=ignore_index)
        metric.dataset_meta = metainfo
        return metric

    return make


__all__ = ["check_dataset_files", "preprocess_of", "dataset_cfg", "collate_seg", "build_dataset", "seg_loaders",
           "shuffled_order", "iou_metric_factory"]
