"""Detection DataLoader: batching of variable-length targets and seed/epoch-deterministic loading.

Determinism has two parts: the order (a DistributedSampler, which shuffles with seed + epoch; with one
replica when not distributed) and the augmentation (the dataset seeds each item from (seed, epoch, index)).
Call :func:`set_loader_epoch` before every epoch so both move on together.
"""
from __future__ import annotations

import os
import random

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from .coco import CocoDetection, DetAugment


def collate_detection(batch: list[tuple[torch.Tensor, torch.Tensor, dict]]
                      ) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """Stack dataset items into (images uint8 (N, 3, S, S), targets float32 (T, 6), infos list).

    Each target row is [image_index_in_batch, class, x1, y1, x2, y2]; T is the total box count.
    """
    if not batch:
        raise ValueError("collate_detection: empty batch")
    images, targets, infos = zip(*batch)
    rows = [torch.cat([torch.full((len(t), 1), float(i)), t.reshape(-1, 5).float()], dim=1)
            for i, t in enumerate(targets)]
    return torch.stack(images), torch.cat(rows), list(infos)


def _seed_worker(worker_id: int) -> None:
    """Seed python/numpy from torch's per-worker seed (for any third-party randomness; ours is per item)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_det_loader(img_dir: str | os.PathLike, ann_file: str | os.PathLike, image_size: int, batch_size: int,
                    train: bool, augment: DetAugment | None = None, workers: int = 0, shuffle: bool | None = None,
                    seed: int = 0, distributed: bool = False, drop_last: bool = False) -> DataLoader:
    """Build a COCO-format detection loader.

    Args:
        train: apply ``augment`` (None = letterbox only); ``shuffle`` defaults to ``train``.
        distributed: shard with the default process group's world size and rank.
    Returns a DataLoader over :class:`CocoDetection` yielding :func:`collate_detection` batches;
    ``loader.dataset`` exposes category_ids, names and mosaic_enabled (workers copy the dataset when an
    epoch's iteration starts, so a change applies from the next epoch).
    Side effect: with ``workers > 0`` OpenCV's thread pool is switched off process-wide (see below).
    A distributed sampler pads the last batch with repeated images; COCOEvaluator counts each image once.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if workers > 0:
        # OpenCV's thread pool does not survive fork(): a forked worker that touches it (a parallel cv2.resize,
        # or cv2.setNumThreads) can block forever on the parent's pool state (seen here in about 1 run in 4).
        # With the pool off in the parent before the workers fork, the workers run OpenCV serially, which is
        # also what N workers on N cores want. The main process then does no image work.
        cv2.setNumThreads(0)
    dataset = CocoDetection(img_dir, ann_file, image_size, train=train, augment=augment, seed=seed)
    if drop_last and len(dataset) < batch_size * (1 if not distributed else _world_size()):
        raise ValueError(f"{ann_file}: {len(dataset)} image(s) are fewer than one batch of {batch_size} per process "
                         "(the last partial batch is dropped, so the loader would yield nothing); lower the batch size")
    shuffle = train if shuffle is None else shuffle
    # torch's DistributedSampler is the library's seed+epoch shuffler; one replica outside distributed runs
    replicas = {} if distributed else {"num_replicas": 1, "rank": 0}
    sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last, **replicas)
    # persistent workers would keep stale copies of the dataset (epoch, mosaic_enabled): leave them off
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      collate_fn=collate_detection, worker_init_fn=_seed_worker, drop_last=drop_last,
                      generator=torch.Generator().manual_seed(seed), persistent_workers=False,
                      pin_memory=False)


def _world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def set_loader_epoch(loader: DataLoader, epoch: int) -> None:
    """Move both the sampler's shuffle and the dataset's augmentation stream to ``epoch``."""
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)
