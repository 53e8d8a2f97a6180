"""Pieces every task's ``train()`` shares: seeding, determinism, resume checks, result files."""
from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from ..engine.checkpoint import CheckpointError


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
