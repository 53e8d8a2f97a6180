"""Small helpers shared by several test files (importable because pytest puts tests/ on sys.path)."""
from __future__ import annotations

import runpy
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import torch

REPO = Path(__file__).resolve().parents[1]


def tool(name: str, entry: str = "main") -> Callable:
    """A tool's entry function (``main(argv)`` by default) run in-process, without a second torch import.

    name: "train_det" or "train_det.py".
    """
    return getattr(tool_module(name), entry)


def tool_module(name: str) -> SimpleNamespace:
    """A tool's module globals (``.main``, ``.parse_args``, ...), loaded in-process from ``tools/``."""
    stem = name[:-3] if name.endswith(".py") else name
    return SimpleNamespace(**runpy.run_path(str(REPO / "tools" / f"{stem}.py"), run_name=stem))


def uint8_batches(n_batches: int = 2, batch: int = 8, size: int = 16, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A deterministic list of (uint8 images (batch, 3, size, size), dummy labels) batches: a calibration loader."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=g), torch.zeros(batch))
            for _ in range(n_batches)]
