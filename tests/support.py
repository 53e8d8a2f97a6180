"""Small helpers shared by several test files (importable because pytest puts tests/ on sys.path)."""
from __future__ import annotations

import torch


def uint8_batches(n_batches: int = 2, batch: int = 8, size: int = 16, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A deterministic list of (uint8 images (batch, 3, size, size), dummy labels) batches: a calibration loader."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=g), torch.zeros(batch))
            for _ in range(n_batches)]
