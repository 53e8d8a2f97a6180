"""EfficientRep: the YOLOv6 (v2-era) backbone built from any re-parameterizable 3x3 block.

Layout (strides in brackets): stem block [2] -> ERBlock 1 [4] -> ERBlock 2 [8] -> ERBlock 3 [16]
-> ERBlock 4 [32] -> SimSPPF. An ERBlock is a stride-2 block followed by a :class:`RepBlock`.
Every 3x3 block comes from :func:`qarep_dense.layers.make_block`, so RepVGG, QARepVGG (and its
ablation rows), RepOpt-VGG and the Hyper-Search block all build the same graph.
"""
from __future__ import annotations

import torch
from torch import nn

from ...layers import ConvBNAct, block_spec, make_block
from ...layers.graph_ops import Concat


class RepBlock(nn.Sequential):
    """``n`` chained 3x3 blocks: the first maps in->out, the other n-1 keep out channels.

    Input (N, C_in, H, W) -> output (N, C_out, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, n: int, block: str, act: str | None = "relu"):
        if n < 1:
            raise ValueError(f"RepBlock needs n >= 1 blocks, got n={n}")
        blocks = [make_block(block, in_channels, out_channels, 1, act=act)]
        blocks += [make_block(block, out_channels, out_channels, 1, act=act) for _ in range(n - 1)]
        super().__init__(*blocks)
        self.in_channels, self.out_channels = in_channels, out_channels


class SimSPPF(nn.Module):
    """Simplified SPPF: 1x1 conv to C_in/2, three chained k x k max-pools, concat of all four, 1x1 conv.

    Chained 5x5 pools see 5x5, 9x9 and 13x13 windows (SPP's pyramid) at the cost of three small pools.
    Input (N, C_in, H, W) -> output (N, C_out, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 5, act: str | None = "relu"):
        super().__init__()
        hidden = in_channels // 2
        self.reduce = ConvBNAct(in_channels, hidden, 1, act=act)
        # Three pool modules rather than one reused: a quantizer that swaps MaxPool2d for a
        # quantized pool must see three sites with their own ranges.
        self.pools = nn.ModuleList(nn.MaxPool2d(kernel_size, 1, kernel_size // 2) for _ in range(3))
        self.concat = Concat(1)
        self.expand = ConvBNAct(4 * hidden, out_channels, 1, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.reduce(x)
        pyramid = [x]
        for pool in self.pools:
            pyramid.append(pool(pyramid[-1]))
        return self.expand(self.concat(pyramid))


class EfficientRep(nn.Module):
    """Backbone returning features at strides 8, 16 and 32.

    channels: widths of (stem, ERBlock1..4); repeats: blocks per RepBlock of ERBlock1..4
    (a 5-tuple whose first entry, the stem's repeat count, must be 1 as in YOLOv6).
    Input (N, in_channels, H, W), H and W multiples of 32 ->
    tuple of (N, channels[2], H/8, W/8), (N, channels[3], H/16, W/16), (N, channels[4], H/32, W/32).
    """

    def __init__(self, channels: tuple[int, ...], repeats: tuple[int, ...], block: str = "qarepvgg",
                 in_channels: int = 3, act: str | None = "relu"):
        super().__init__()
        if len(channels) != 5 or len(repeats) != 5:
            raise ValueError(f"EfficientRep needs 5 channels and 5 repeats, got channels={channels}, "
                             f"repeats={repeats}")
        if repeats[0] != 1:
            raise ValueError(f"EfficientRep's stem is a single block (repeats[0] == 1), got repeats={repeats}")
        block_spec(block)  # fail early, with the list of valid names
        self.block = block
        self.stem = make_block(block, in_channels, channels[0], 2, act=act)
        stages = []
        for i in range(1, 5):
            stage = [make_block(block, channels[i - 1], channels[i], 2, act=act),
                     RepBlock(channels[i], channels[i], repeats[i], block, act)]
            if i == 4:
                stage.append(SimSPPF(channels[4], channels[4], 5, act))
            stages.append(nn.Sequential(*stage))
        self.stages = nn.ModuleList(stages)
        self.out_channels: tuple[int, int, int] = (channels[2], channels[3], channels[4])
        self.strides: tuple[int, int, int] = (8, 16, 32)
        self.out_strides = self.strides  # the name RepTrunk declares its outputs under

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.stem(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats[1], feats[2], feats[3]
