"""The zoo's five-stage trunk (RepVGG / QARepVGG / RepOpt-VGG) as a dense-prediction backbone.

Stage k (k = 0..4) is an ``nn.Sequential`` of 3x3 blocks whose first block strides by
``strides[k]``; every block of stage k is dilated by ``dilations[k]``. Output stride 32 is the
zoo itself; the mmseg-style ``-d8`` / ``-d16`` variants trade the last strides for dilation:

    output stride 32: strides (2, 2, 2, 2, 2), dilations (1, 1, 1, 1, 1)
    output stride 16: strides (2, 2, 2, 2, 1), dilations (1, 1, 1, 1, 2)
    output stride 8:  strides (2, 2, 2, 1, 1), dilations (1, 1, 1, 2, 4)

The classifier builds its stages with the same :func:`build_stages`, so a classification
checkpoint's ``stages.*`` keys are exactly a trunk's keys (pretrained backbones load strictly).
"""
from __future__ import annotations

import torch
from torch import nn

from ...layers import block_spec, make_block
from ..zoo import classifier_arch

NUM_STAGES = 5
OUTPUT_STRIDES: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {
    32: ((2, 2, 2, 2, 2), (1, 1, 1, 1, 1)),
    16: ((2, 2, 2, 2, 1), (1, 1, 1, 1, 2)),
    8: ((2, 2, 2, 1, 1), (1, 1, 1, 2, 4)),
}


def _check_per_stage(name: str, values: tuple[int, ...], allowed: tuple[int, ...] | None = None) -> tuple[int, ...]:
    values = tuple(int(v) for v in values)
    if len(values) != NUM_STAGES:
        raise ValueError(f"{name} needs one value per stage (stages 0..4), got {values}")
    if allowed is not None and any(v not in allowed for v in values):
        raise ValueError(f"{name} {values}: each value must be one of {allowed}")
    if any(v < 1 for v in values):
        raise ValueError(f"{name} {values}: values must be >= 1")
    return values


def build_stages(arch: str, block: str, in_channels: int = 3, strides: tuple[int, ...] = OUTPUT_STRIDES[32][0],
                 dilations: tuple[int, ...] = OUTPUT_STRIDES[32][1]) -> nn.Sequential:
    """Stages 0..4 of zoo row ``arch`` built from ``block``; the zoo's grouped layers keep their groups."""
    spec = classifier_arch(arch)
    block_spec(block)  # validate early with the list of valid names
    strides = _check_per_stage("strides", strides, (1, 2))
    dilations = _check_per_stage("dilations", dilations)
    widths = spec.widths
    stages = [nn.Sequential(make_block(block, in_channels, widths[0], strides[0], dilation=dilations[0]))]
    in_ch, layer = widths[0], 0
    for k, (width, depth) in enumerate(zip(widths[1:], spec.blocks), start=1):
        blocks = []
        for i in range(depth):
            layer += 1
            groups = spec.groups if layer in spec.grouped_layers else 1
            blocks.append(make_block(block, in_ch, width, strides[k] if i == 0 else 1, groups, dilation=dilations[k]))
            in_ch = width
        stages.append(nn.Sequential(*blocks))
    return nn.Sequential(*stages)


class RepTrunk(nn.Module):
    """Input (N, in_channels, H, W) -> tuple of the outputs of the stages in ``out_indices``.

    ``out_indices`` index stages 0..4 (default (1, 2, 3, 4): strides 4, 8, 16, 32 in the zoo
    layout). ``out_channels[i]`` / ``out_strides[i]`` declare the i-th output, so a head can be
    sized without running the network; a stage of stride s output has size ceil(H / s).
    All five stages are built whatever ``out_indices`` is, so classification checkpoints load strictly.
    """

    def __init__(self, arch: str, block: str = "qarepvgg", in_channels: int = 3,
                 out_indices: tuple[int, ...] = (1, 2, 3, 4), strides: tuple[int, ...] = OUTPUT_STRIDES[32][0],
                 dilations: tuple[int, ...] = OUTPUT_STRIDES[32][1]):
        super().__init__()
        out_indices = tuple(int(i) for i in out_indices)
        if not out_indices or any(i not in range(NUM_STAGES) for i in out_indices) or \
                list(out_indices) != sorted(set(out_indices)):
            raise ValueError(f"out_indices {out_indices}: expected increasing stage indices in 0..{NUM_STAGES - 1}")
        self.arch, self.block = arch, block
        self.stages = build_stages(arch, block, in_channels, strides, dilations)
        self.out_indices = out_indices
        self.strides, self.dilations = tuple(strides), tuple(dilations)
        widths = classifier_arch(arch).widths
        cumulative, stride = [], 1
        for s in self.strides:
            stride *= s
            cumulative.append(stride)
        self.out_channels: tuple[int, ...] = tuple(widths[i] for i in out_indices)
        self.out_strides: tuple[int, ...] = tuple(cumulative[i] for i in out_indices)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feats = []
        for k, stage in enumerate(self.stages):
            if k > self.out_indices[-1]:
                break  # later stages feed no output
            x = stage(x)
            if k in self.out_indices:
                feats.append(x)
        return tuple(feats)
