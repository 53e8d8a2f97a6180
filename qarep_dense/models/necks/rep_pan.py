"""Rep-PAN: the YOLOv6 (v2-era) top-down + bottom-up feature pyramid with RepBlocks."""
from __future__ import annotations

import torch
from torch import nn

from ...layers import ConvBNAct
from ...layers.graph_ops import Concat
from ..backbones.efficientrep import RepBlock


class RepPANNeck(nn.Module):
    """Fuse backbone features (C3, C4, C5) at strides (8, 16, 32) (or any s, 2s, 4s) into (P3, P4, P5).

    in_channels: backbone widths (c3, c4, c5). channels: the six neck widths of YOLOv6's channel
    list (reduce0, reduce1 = P3 out, down0, P4 out, down1, P5 out). repeats: blocks in the four
    RepBlocks (top-down P4, top-down P3, bottom-up P4, bottom-up P5).

    Top-down: 1x1 reduce -> 2x2 stride-2 transposed conv (learned upsample) -> concat with the
    lateral feature -> RepBlock. Bottom-up: 3x3 stride-2 conv -> concat with the reduced map of
    the same stride -> RepBlock. Input feature sizes must halve exactly from level to level
    (input H, W multiples of 32).
    Outputs (N, channels[1], H/8, W/8), (N, channels[3], H/16, W/16), (N, channels[5], H/32, W/32).
    """

    def __init__(self, in_channels: tuple[int, int, int], channels: tuple[int, ...], repeats: tuple[int, ...],
                 block: str = "qarepvgg", act: str | None = "relu", strides: tuple[int, int, int] = (8, 16, 32)):
        super().__init__()
        if len(in_channels) != 3 or len(channels) != 6 or len(repeats) != 4:
            raise ValueError(f"RepPANNeck needs 3 in_channels, 6 channels and 4 repeats, got "
                             f"in_channels={in_channels}, channels={channels}, repeats={repeats}")
        if len(strides) != 3 or strides[0] < 1 or tuple(strides[1:]) != (2 * strides[0], 4 * strides[0]):
            raise ValueError(f"RepPANNeck: the input strides must double from level to level, got {strides}")
        c3, c4, c5 = in_channels
        reduce0, out3, down0, out4, down1, out5 = channels
        # One Concat per site: a quantizer attaches per-module observers, and a shared module
        # would pool the ranges of four different concats.
        self.concat0, self.concat1, self.concat2, self.concat3 = (Concat(1) for _ in range(4))
        # top-down path, stride 32 -> 16 -> 8
        self.reduce0 = ConvBNAct(c5, reduce0, 1, act=act)
        self.upsample0 = nn.ConvTranspose2d(reduce0, reduce0, 2, 2, bias=True)
        self.td_p4 = RepBlock(c4 + reduce0, reduce0, repeats[0], block, act)
        self.reduce1 = ConvBNAct(reduce0, out3, 1, act=act)
        self.upsample1 = nn.ConvTranspose2d(out3, out3, 2, 2, bias=True)
        self.td_p3 = RepBlock(c3 + out3, out3, repeats[1], block, act)
        # bottom-up path, stride 8 -> 16 -> 32
        self.downsample0 = ConvBNAct(out3, down0, 3, 2, act=act)
        self.bu_p4 = RepBlock(down0 + out3, out4, repeats[2], block, act)
        self.downsample1 = ConvBNAct(out4, down1, 3, 2, act=act)
        self.bu_p5 = RepBlock(down1 + reduce0, out5, repeats[3], block, act)
        self.out_channels: tuple[int, int, int] = (out3, out4, out5)
        self.strides: tuple[int, int, int] = tuple(int(v) for v in strides)  # a trunk at stem stride 1: 4/8/16

    def forward(self, feats: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c3, c4, c5 = feats
        lat0 = self.reduce0(c5)                                            # stride 32
        f4 = self.td_p4(self.concat0([self.upsample0(lat0), c4]))           # stride 16
        lat1 = self.reduce1(f4)                                            # stride 16
        p3 = self.td_p3(self.concat1([self.upsample1(lat1), c3]))           # stride 8
        p4 = self.bu_p4(self.concat2([self.downsample0(p3), lat1]))         # stride 16
        p5 = self.bu_p5(self.concat3([self.downsample1(p4), lat0]))         # stride 32
        return p3, p4, p5
