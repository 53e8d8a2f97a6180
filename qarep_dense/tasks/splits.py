"""A task's three data splits for INT8 work: evaluation, calibration and selection.

evaluation: the validation split the results are reported on (the evaluator's).
calibration: shuffled training images through the evaluation preprocessing (the evaluator's loader).
selection: training images set aside to choose between quantization candidates, so that no choice is
    tuned on the reported validation split. Carved deterministically from the calibration loader's own
    order: its *last* images, disjoint from the first ``calib_images`` that calibration reads whenever
    the training split holds at least ``calib_images + selection_images`` images.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch
from torch.utils.data import DataLoader, RandomSampler, Subset

from ..data.preprocess import Preprocess
from ..evaluation.evaluators import BATCH_SIZE, EvalRequest, Evaluator

log = logging.getLogger(__name__)


@dataclass
class TaskData:
    """evaluator: scores on the validation split; calibration: loader of training batches; selection: loader
    over held-back training images (batches as the evaluation's: images first); preprocess: uint8 -> float."""

    evaluator: Evaluator
    calibration: Iterable
    selection: DataLoader
    preprocess: Preprocess
    selection_disjoint: bool


def sampler_order(loader: DataLoader) -> list[int]:
    """The dataset indices ``loader`` reads on its next pass, without changing that pass.

    A random sampler sharing the loader's generator advances it on every pass, after the one draw a
    loader iterator takes for its workers' base seed: that draw is replayed, and the state put back.
    """
    sampler = loader.sampler
    generator = getattr(sampler, "generator", None) if isinstance(sampler, RandomSampler) else None
    if generator is None:
        return [int(i) for i in sampler]
    state = generator.get_state()
    try:
        if generator is loader.generator:
            torch.empty((), dtype=torch.int64).random_(generator=generator)  # the iterator's base seed
        return [int(i) for i in sampler]
    finally:
        generator.set_state(state)


def carve_selection(calib_loader: DataLoader, calib_images: int, selection_images: int,
                    batch_size: int | None = None) -> tuple[DataLoader, bool]:
    """(loader over the last ``selection_images`` of the calibration order, whether they are disjoint from its
    first ``calib_images``). Deterministic: the same loader gives the same selection images."""
    if selection_images < 1:
        raise ValueError(f"selection_images must be >= 1, got {selection_images}")
    order = sampler_order(calib_loader)
    chosen = order[-min(selection_images, len(order)):]
    disjoint = len(order) >= calib_images + len(chosen)
    if not disjoint:
        log.warning("the training split has %d images, fewer than %d for calibration + %d for selection: the "
                    "selection images overlap the calibration images", len(order), calib_images, selection_images)
    loader = DataLoader(Subset(calib_loader.dataset, chosen), batch_size=batch_size or calib_loader.batch_size,
                        shuffle=False, num_workers=calib_loader.num_workers, collate_fn=calib_loader.collate_fn)
    return loader, disjoint


def task_data(request: EvalRequest, calib_images: int, selection_images: int = 256) -> TaskData:
    """The evaluator of ``request``'s task and its calibration / selection loaders.

    calib_images: how many images calibration reads (``num_calib_batches * batch_size``, plus one batch for
    the repair's held-out check) -- the selection images avoid them.
    """
    from .registry import get_task

    evaluator = get_task(request.meta["task"]).make_evaluator(request)
    calibration = evaluator.calibration_loader()
    selection, disjoint = carve_selection(calibration, calib_images, selection_images, request.batch_size)
    return TaskData(evaluator, calibration, selection, evaluator.preprocess, disjoint)


def request_for(checkpoint: str | Path, meta: dict, data: str | Path | None = None, batch_size: int = BATCH_SIZE,
                workers: int = 0, device: str = "cpu", image_size: int | None = None,
                progress: bool = True) -> EvalRequest:
    """The :class:`EvalRequest` a tool builds from its command line (paths typed here once)."""
    return EvalRequest(Path(checkpoint), meta, Path(data) if data is not None else None, image_size, batch_size,
                       workers, device, progress)
