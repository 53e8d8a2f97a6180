"""Efficient decoupled head (YOLOv6 v2-era): anchor-free, one anchor point per feature-map cell."""
from __future__ import annotations

import math

import torch
from torch import nn

from ...layers import ConvBNAct


class _LevelHead(nn.Module):
    """One pyramid level: 1x1 stem, then separate 3x3 cls and reg convs, each with a 1x1 prediction.

    Input (N, C, H, W) -> (cls (N, num_classes, H, W), reg (N, reg_channels, H, W)).
    """

    def __init__(self, channels: int, num_classes: int, reg_channels: int, act: str | None):
        super().__init__()
        self.stem = ConvBNAct(channels, channels, 1, act=act)
        self.cls_conv = ConvBNAct(channels, channels, 3, act=act)
        self.reg_conv = ConvBNAct(channels, channels, 3, act=act)
        self.cls_pred = nn.Conv2d(channels, num_classes, 1)
        self.reg_pred = nn.Conv2d(channels, reg_channels, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.stem(x)
        return self.cls_pred(self.cls_conv(x)), self.reg_pred(self.reg_conv(x))


def _flatten_level(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, H*W, C), cells row-major, the order of ``make_anchor_points``."""
    return x.flatten(2).transpose(1, 2)


class EffiDeHead(nn.Module):
    """Raw head outputs for all levels, concatenated in stride order.

    in_channels: widths of the three input levels. reg_max: 0 for plain ltrb regression (4 channels
    per anchor), > 0 for DFL (4 * (reg_max + 1) channels: a distribution over integer bins per side).
    Input: tuple of (N, in_channels[i], H_i, W_i) ->
    (cls_logits (N, A, num_classes), reg (N, A, 4 * (reg_max + 1))), A = sum(H_i * W_i).
    """

    def __init__(self, in_channels: tuple[int, ...], num_classes: int = 80, reg_max: int = 0,
                 act: str | None = "silu", prior_prob: float = 0.01):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if reg_max < 0:
            raise ValueError(f"reg_max must be >= 0 (0 = no DFL), got {reg_max}")
        if not 0.0 < prior_prob < 1.0:
            raise ValueError(f"prior_prob must lie in (0, 1), got {prior_prob}")
        self.num_classes, self.reg_max = num_classes, reg_max
        self.reg_channels = 4 * (reg_max + 1)
        self.levels = nn.ModuleList(_LevelHead(c, num_classes, self.reg_channels, act) for c in in_channels)
        self.initialize(prior_prob)

    @torch.no_grad()
    def initialize(self, prior_prob: float = 0.01) -> None:
        """Start every class score at ``prior_prob`` (focal-loss prior) and every box side at one
        stride (without DFL; with DFL a constant bias leaves the bin distribution uniform).

        Small random prediction weights (std 0.01, as torchvision's RetinaNet/FCOS) rather than
        YOLOv6's zeros: with zero weights no gradient reaches the neck on the first step.
        """
        for level in self.levels:
            nn.init.normal_(level.cls_pred.weight, std=0.01)
            nn.init.constant_(level.cls_pred.bias, -math.log((1 - prior_prob) / prior_prob))
            nn.init.normal_(level.reg_pred.weight, std=0.01)
            nn.init.constant_(level.reg_pred.bias, 1.0)

    def forward(self, feats: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        if len(feats) != len(self.levels):
            raise ValueError(f"EffiDeHead expects {len(self.levels)} feature levels, got {len(feats)}")
        cls_out, reg_out = [], []
        for level, x in zip(self.levels, feats):
            cls, reg = level(x)
            cls_out.append(_flatten_level(cls))
            reg_out.append(_flatten_level(reg))
        return torch.cat(cls_out, 1), torch.cat(reg_out, 1)
