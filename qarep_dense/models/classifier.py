"""RepVGG-style plain classifier: five stages of 3x3 blocks, global average pool, FC."""
from __future__ import annotations

import torch
from torch import nn

from .backbones.rep_trunk import OUTPUT_STRIDES, build_stages
from .zoo import classifier_arch


class RepClassifier(nn.Module):
    """Input (N, 3, H, W) -> logits (N, num_classes).

    ``stages`` holds stage0..stage4; each is an ``nn.Sequential`` of blocks whose first block
    strides by 2 (stage 0's stride is ``stem_stride``, 1 for 32x32 inputs).
    """

    def __init__(self, arch: str, block: str = "qarepvgg", num_classes: int = 1000, in_channels: int = 3,
                 stem_stride: int = 2):
        super().__init__()
        strides = (stem_stride,) + OUTPUT_STRIDES[32][0][1:]
        self.arch, self.block = arch, block
        # The same stages as the segmentation trunk: checkpoint keys are shared ("stages.N...").
        self.stages = build_stages(arch, block, in_channels, strides)
        in_ch = classifier_arch(arch).widths[-1]
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
