"""ImageNet-layout folders (``root/<split>/<class>/<image>``) as uint8 datasets and loaders.

Loaders yield (uint8 (N, 3, H, W), int64 labels (N,)); normalisation is NOT done here but by
:mod:`qarep_dense.data.preprocess` (``IMAGENET``), the one uint8 -> float step.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import v2

from .image_check import ImageReadError, check_image_files

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
IMAGE_FORMATS = {"JPEG", "MPO", "PNG", "WEBP"}  # what torchvision's decode_image reads (Pillow's names)
# Below this size images are tiny (digits, synthetic shapes at 32): resize directly, light augmentation.
SMALL_IMAGE = 64


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def list_classes(root: str | os.PathLike) -> list[str]:
    """Sorted class subfolder names of an ImageFolder root (hidden folders skipped)."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root}: image folder not found")
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: expected a folder of class subfolders, found a file")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"{root}: no class subfolders (expected the ImageNet layout {root}/<class>/<image>)")
    return classes


class ImageFolderDataset(Dataset):
    """Images of ``root/<class>/**/<file>`` as (uint8 (3, H, W) tensor, class index).

    ``class_names`` fixes the class -> index mapping (pass the train split's classes to a
    validation split so the indices agree); by default it is the sorted subfolder names.
    ``transform`` is applied to the uint8 image tensor. ``check_images``: read every file's header now
    (raises :class:`ImageReadError` naming the corrupt files), so a bad file fails before training.
    """

    def __init__(self, root: str | os.PathLike, transform: Callable | None = None,
                 class_names: Sequence[str] | None = None, check_images: bool = True):
        self.root = Path(root)
        found = list_classes(self.root)
        self.classes = list(class_names) if class_names is not None else found
        unknown = sorted(set(found) - set(self.classes))
        if unknown:
            raise ValueError(f"{self.root}: class folders {unknown[:5]} are not among the expected classes")
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        self.samples: list[tuple[Path, int]] = []
        for name in found:
            files = _list_images(self.root / name)
            if not files:
                raise ValueError(f"{self.root / name}: class folder has no images ({', '.join(IMAGE_EXTENSIONS)})")
            self.samples.extend((f, self.class_to_idx[name]) for f in files)
        if check_images:
            check_image_files([p for p, _ in self.samples], str(self.root), IMAGE_FORMATS)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> torch.Tensor:
        """The untransformed uint8 (3, H, W) image; raises :class:`ImageReadError` naming the file."""
        path = self.samples[index][0]
        try:
            return decode_image(str(path), mode=ImageReadMode.RGB)
        except (RuntimeError, ValueError, OSError) as err:
            raise ImageReadError(f"{path}: cannot read image (corrupt or unsupported file?): {err}") from err

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.load(index)
        if self.transform is not None:
            image = self.transform(image)
        return image, self.samples[index][1]


def cls_transforms(image_size: int, train: bool) -> v2.Compose:
    """uint8 -> uint8 (3, image_size, image_size) transforms.

    ImageNet sizes (>= 64): train RandomResizedCrop + horizontal flip (the paper's "simple
    augmentation"); eval Resize(image_size / 0.875) + CenterCrop. Tiny images: resize straight to
    the size; train adds a random crop with 2-pixel padding and no flip (digits are not mirror-symmetric).
    """
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if image_size >= SMALL_IMAGE:
        if train:
            ops = [v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip()]
        else:
            ops = [v2.Resize(int(image_size / 0.875), antialias=True), v2.CenterCrop(image_size)]
    else:
        ops = [v2.Resize((image_size, image_size), antialias=True)]
        if train:
            ops.append(v2.RandomCrop(image_size, padding=2))
    return v2.Compose(ops)


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker (base_seed + id) but not numpy/random; derive those from it.
    seed = torch.initial_seed() % 2 ** 32
    np.random.seed(seed)
    random.seed(seed)


def make_cls_loader(root: str | os.PathLike, image_size: int, batch_size: int, train: bool, workers: int = 0,
                    shuffle: bool | None = None, distributed: bool = False, seed: int = 0,
                    split: str | None = None, pin_memory: bool = False) -> DataLoader:
    """A loader over ``root/<split>`` (split "train" or "val" by ``train``) yielding
    (uint8 (N, 3, image_size, image_size), int64 labels (N,)).

    Shuffling goes through a ``DistributedSampler`` (one replica when not distributed) so each
    epoch's order is a function of (seed, epoch): the trainer calls ``set_epoch``, which makes
    resumed runs replay the same order. Train loaders drop the last partial batch (BN needs > 1 sample).
    """
    root = Path(root)
    split = split or ("train" if train else "val")
    train_dir = root / "train"
    class_names = list_classes(train_dir) if split != "train" and train_dir.is_dir() else None
    dataset = ImageFolderDataset(root / split, cls_transforms(image_size, train), class_names)
    shuffle = train if shuffle is None else shuffle
    sampler = None
    if shuffle or distributed:
        from torch import distributed as dist
        world, rank = (dist.get_world_size(), dist.get_rank()) if distributed else (1, 0)
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed)
    if train and len(dataset) // (sampler.num_replicas if sampler else 1) < batch_size:
        raise ValueError(f"{root / split}: {len(dataset)} images are fewer than one batch of {batch_size} "
                         "per process (lower data.batch_size)")
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=train,
                      pin_memory=pin_memory, worker_init_fn=_seed_worker,
                      generator=torch.Generator().manual_seed(seed))

