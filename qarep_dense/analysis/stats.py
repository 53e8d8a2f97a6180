"""Streaming statistics shared by the weight, activation and branch analyses."""
from __future__ import annotations

import math

import torch
from torch import nn


def safe_ratio(num: float, den: float) -> float:
    """num / den, with 0/0 -> 0 and x/0 -> inf (an all-zero tensor has no outliers; a lone value does)."""
    if den > 0:
        return num / den
    return math.inf if num > 0 else 0.0


def channel_first(x: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """Reshape a layer input to (C, M): channels first, everything else flattened.

    Conv inputs are (N, C, H, W) with channels on dim 1; Linear inputs are (..., C) with channels last.
    """
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1]).t()
    return x.transpose(0, 1).reshape(x.shape[1], -1)


def median(values: torch.Tensor) -> float:
    """Interpolated median (``torch.median`` returns the lower of the two middle values)."""
    return float(torch.quantile(values.double().flatten(), 0.5))


class RunningStats:
    """Mean/std/min/max over every element seen so far, plus each channel's max |x|.

    Batches are merged with Chan's parallel update so a large mean does not cancel the variance
    (the naive sum-of-squares formula loses it in float arithmetic).
    """

    def __init__(self) -> None:
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.channel_amax: torch.Tensor | None = None
        self.channel_sq: torch.Tensor | None = None
        self.channel_n = 0

    def update(self, x: torch.Tensor) -> None:
        """Add a (C, M) channel-first batch of values."""
        x64 = x.detach().double()
        n = x64.numel()
        if n == 0:
            return
        mean_b = float(x64.mean())
        m2_b = float(((x64 - mean_b) ** 2).sum())
        total = self.count + n
        delta = mean_b - self.mean
        self.mean += delta * n / total
        self.m2 += m2_b + delta * delta * self.count * n / total
        self.count = total
        self.min = min(self.min, float(x64.min()))
        self.max = max(self.max, float(x64.max()))
        amax = x64.abs().amax(dim=1).cpu()
        sq = (x64 * x64).sum(dim=1).cpu()
        self.channel_amax = amax if self.channel_amax is None else torch.maximum(self.channel_amax, amax)
        self.channel_sq = sq if self.channel_sq is None else self.channel_sq + sq
        self.channel_n += x64.shape[1]

    @property
    def channel_power(self) -> torch.Tensor | None:
        """(C,) mean of x^2 per channel (float64), or None before the first update."""
        return None if self.channel_sq is None else self.channel_sq / self.channel_n

    @property
    def std(self) -> float:
        """Population standard deviation (divides by the element count)."""
        return math.sqrt(self.m2 / self.count) if self.count else 0.0

    def summary(self) -> dict[str, float | int]:
        """mean, std, min, max, amax (= max |x|), amax_over_std, and the per-channel range spread.

        channel_spread = largest channel max|x| / median over live (non-zero) channels: the factor by
        which one channel stretches a per-tensor quantization scale. worst_channel is its index.
        """
        amax = max(abs(self.min), abs(self.max)) if self.count else 0.0
        out: dict[str, float | int] = {
            "count": self.count, "mean": self.mean, "std": self.std, "min": self.min, "max": self.max,
            "amax": amax, "amax_over_std": safe_ratio(amax, self.std),
            "channel_spread": 0.0, "worst_channel": -1, "dead_channels": 0,
        }
        if self.channel_amax is not None:
            live = self.channel_amax[self.channel_amax > 0]
            out["dead_channels"] = int((self.channel_amax == 0).sum())
            out["worst_channel"] = int(self.channel_amax.argmax())
            out["channel_spread"] = safe_ratio(float(self.channel_amax.max()), median(live) if live.numel() else 0.0)
        return out
