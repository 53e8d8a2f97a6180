"""Tensor ops as explicit modules, so a quantizer can find them by type instead of by module path.

A functional ``torch.cat`` inside ``forward`` is invisible to module-swapping quantizers; a
``Concat`` module is not (TensorRT wants one shared scale across a concat's inputs).
"""
from __future__ import annotations

import torch
from torch import nn


class Concat(nn.Module):
    """torch.cat(list_of_tensors, dim)."""

    def __init__(self, dim: int = 1):
        super().__init__()
        self.dim = dim

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(list(xs), self.dim)


class Add(nn.Module):
    """Elementwise sum of two tensors."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b
