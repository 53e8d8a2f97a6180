"""RepVGG-style plain classifier: five stages of 3x3 blocks, global average pool, FC."""
from __future__ import annotations

import torch
from torch import nn

from ..layers import block_spec, make_block
from .zoo import classifier_arch


class RepClassifier(nn.Module):
    """Input (N, 3, H, W) -> logits (N, num_classes).

    ``stages`` holds stage0..stage4; each is an ``nn.Sequential`` of blocks whose first block
    strides by 2 (stage 0's stride is ``stem_stride``, 1 for 32x32 inputs).
    """

    def __init__(self, arch: str, block: str = "qarepvgg", num_classes: int = 1000, in_channels: int = 3,
                 stem_stride: int = 2):
        super().__init__()
        spec = classifier_arch(arch)
        block_spec(block)  # validate early with a clear message
        self.arch, self.block = arch, block
        widths = spec.widths
        layer = 0
        stages = [nn.Sequential(make_block(block, in_channels, widths[0], stem_stride))]
        in_ch = widths[0]
        for width, depth in zip(widths[1:], spec.blocks):
            blocks = []
            for i in range(depth):
                layer += 1
                groups = spec.groups if layer in spec.grouped_layers else 1
                blocks.append(make_block(block, in_ch, width, 2 if i == 0 else 1, groups))
                in_ch = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        self.num_features = in_ch

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of stages 1..4 (strides 4, 8, 16, 32 with the default stem)."""
        feats = []
        x = self.stages[0](x)
        for stage in self.stages[1:]:
            x = stage(x)
            feats.append(x)
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(x)
        return self.fc(torch.flatten(self.pool(x), 1))


def build_classifier(arch: str, block: str = "qarepvgg", num_classes: int = 1000, **options) -> RepClassifier:
    """Build a zoo classifier, e.g. ``build_classifier("A0", "repvgg")``.

    arch: a key of ``CLASSIFIER_ARCHS`` (A0..B3g4, A0h, test); block: a key of ``BLOCK_TYPES``
    ("repvgg", "qarepvgg", "qarepvgg_v2", "repopt", "hs", or an ablation row). ``options`` go to
    :class:`RepClassifier` (``in_channels``, ``stem_stride``).
    """
    return RepClassifier(arch, block, num_classes, **options)
