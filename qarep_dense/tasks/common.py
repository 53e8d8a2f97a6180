"""Pieces every task's ``train()`` shares: seeding, determinism, resume checks, result files."""
from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from ..config import config_to_dict
from ..engine.checkpoint import CheckpointError, load_checkpoint
from ..engine.distributed import DistInfo, cleanup_distributed, init_distributed
from ..engine.logging import setup_logging
from ..engine.trainer import Trainer

log = logging.getLogger(__name__)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def set_determinism(deterministic: bool) -> None:
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for determinism
        # warn_only: some CUDA backward kernels (adaptive avg-pool) have no deterministic variant;
        # on CPU every op used here is deterministic, which the exact-resume tests rely on.
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


def check_resume_meta(path: Path, saved: dict, expected: dict, keys: Iterable[str]) -> None:
    """Refuse to resume a run whose checkpoint was written for another model."""
    for key in keys:
        if saved.get(key) != expected.get(key):
            raise CheckpointError(f"{path} was written for {key}={saved.get(key)!r} but this config has "
                                  f"{key}={expected.get(key)!r}; resume with the same model settings or use another "
                                  "--work-dir")


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


BuildFn = Callable[[DistInfo, torch.device], tuple[Trainer, Callable[[Trainer], dict]]]


def run_training(cfg: Any, work_dir: str | os.PathLike, resume: bool, device: str | None, build: BuildFn,
                 resume_keys: tuple[str, ...]) -> dict:
    """The shared life of a training run, plain or under torchrun:

    init the process group -> logging -> determinism and seeds -> ``build(dist, device)`` returns
    (trainer, finish) -> optional exact resume from WORK_DIR/last.pt (refused if ``resume_keys`` of the
    checkpoint's meta differ) -> config.json -> train -> ``finish(trainer)`` on rank 0 (``{}`` elsewhere).
    """
    import torch.distributed as tdist

    work_dir = Path(work_dir)
    owns_group = not (tdist.is_available() and tdist.is_initialized())
    dist, dev = init_distributed(device or cfg.train.device)
    if dist.is_main:
        work_dir.mkdir(parents=True, exist_ok=True)
    try:
        setup_logging(work_dir, dist.is_main)
        set_determinism(cfg.train.deterministic)
        seed_all(cfg.train.seed + dist.rank)
        trainer, finish = build(dist, dev)
        last = work_dir / "last.pt"
        if resume:
            if not last.is_file():
                raise FileNotFoundError(f"--resume: {last} not found (nothing to resume in {work_dir})")
            payload = load_checkpoint(last)  # on CPU: RNG states must stay CPU tensors
            check_resume_meta(last, payload["meta"], trainer.meta, resume_keys)
            trainer.resume(payload, source=str(last))
        elif last.is_file() and dist.is_main:
            log.warning("%s exists and will be overwritten; pass --resume to continue that run", last)
        if dist.is_main:
            write_json_atomic(work_dir / "config.json", config_to_dict(cfg))
        trainer.train()
        return finish(trainer) if dist.is_main else {}
    finally:
        if owns_group:
            cleanup_distributed()
