"""Plain convolution units: the deploy form every rep block fuses into."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from . import kernels

ActFactory = Callable[[], nn.Module]


def make_act(act: str | None) -> nn.Module:
    """Activation by name; ``None``/"identity" gives ``nn.Identity``."""
    table: dict[str, ActFactory] = {
        "relu": lambda: nn.ReLU(inplace=True),
        "silu": lambda: nn.SiLU(inplace=True),
        "identity": nn.Identity,
    }
    key = act or "identity"
    if key not in table:
        raise ValueError(f"unknown activation {act!r}; expected one of {sorted(table)}")
    return table[key]()


class ConvAct(nn.Module):
    """Conv2d (with bias) followed by an activation: the fully folded deploy unit."""

    def __init__(self, conv: nn.Conv2d, act: nn.Module):
        super().__init__()
        self.conv = conv
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


class ConvBNAct(nn.Module):
    """Conv2d -> BatchNorm2d -> activation.

    Used as a building block (bias-free conv), as the RepOpt-VGG target block, and as the
    QAT-friendly fused form of a QARepVGG block (conv with bias, post-BN kept). ``fuse()``
    folds the BN and returns a :class:`ConvAct`.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 groups: int = 1, act: str | None = "relu", bias: bool = False, padding: int | None = None,
                 dilation: int = 1):
        super().__init__()
        padding = kernels.same_padding(kernel_size, dilation) if padding is None else padding
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation=dilation,
                              groups=groups, bias=bias)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = make_act(act)

    @classmethod
    def from_parts(cls, conv: nn.Conv2d, bn: nn.BatchNorm2d, act: nn.Module) -> "ConvBNAct":
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        module.conv, module.bn, module.act = conv, bn, act
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))

    def fuse(self) -> ConvAct:
        weight, bias = kernels.fold_bn(self.conv.weight, self.conv.bias, self.bn)
        return ConvAct(kernels.conv_like(self.conv, weight, bias), kernels.clone_module(self.act))
