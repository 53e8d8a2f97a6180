"""Re-parameterizable 3x3 blocks: RepVGG, QARepVGG (with every ablation setting), RepOpt-VGG.

One class, :class:`RepVGGBlock`, covers RepVGG, QARepVGG, its "V2" AvgPool variant and every row
of the paper's ablation (Tables 3 and 4): they differ only in which branches carry BN and whether
a post-BN follows the sum. The settings are rows of ``BLOCK_TYPES``. RepOpt-VGG trains a plain
:class:`ConvBNAct` with gradient masks; its Hyper-Search model uses :class:`LinearAddBlock`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import nn

from . import kernels
from .conv import ConvAct, ConvBNAct, make_act

BranchNorm = Literal["bn", "bn_noaffine", "none"]


@dataclass(frozen=True)
class BlockSpec:
    """Which branches a block has and how each is normalised.

    kind: "rep" (multi-branch RepVGGBlock), "plain" (RepOpt target ConvBNAct) or "hs" (LinearAddBlock).
    norm_3x3 / norm_1x1: "bn", "bn_noaffine" or "none" (no BN, and no bias on the 1x1).
    identity: "bn", "plain" or None (no identity branch even when shapes allow one).
    avg_pool: add the YOLOv6 "V2" 3x3 average-pool branch.
    post_bn: one BN after the sum (QARepVGG's M4).
    """

    kind: Literal["rep", "plain", "hs"] = "rep"
    norm_3x3: BranchNorm = "bn"
    norm_1x1: BranchNorm = "bn"
    identity: Literal["bn", "plain"] | None = "bn"
    avg_pool: bool = False
    post_bn: bool = False


_REPVGG = BlockSpec()
_S2 = replace(_REPVGG, identity="plain")
_S3 = replace(_S2, norm_1x1="none")
_QAREPVGG = replace(_S3, post_bn=True)

# Rows of the paper's ablation. S0 and S1 share a block and differ only in the weight decay
# (custom L2 vs normal L2, chosen in the optimizer config); likewise "+M2 alone" is S2's block.
BLOCK_TYPES: dict[str, BlockSpec] = {
    "repvgg": _REPVGG,                                    # S0 / S1
    "qarepvgg": _QAREPVGG,                                # S4 = M1+M2+M3+M4
    "qarepvgg_v2": replace(_QAREPVGG, avg_pool=True),     # YOLOv6 QARepVGGBlockV2
    "qarepvgg_s2": _S2,                                   # +M2: plain identity
    "qarepvgg_s3": _S3,                                   # +M3: no BN on the 1x1
    "qarepvgg_m3": replace(_REPVGG, norm_1x1="none"),     # M3 alone
    "qarepvgg_m4": replace(_REPVGG, post_bn=True),        # M4 alone
    "qarepvgg_bn1x1_noaffine": replace(_S2, norm_1x1="bn_noaffine"),  # Table 4
    "qarepvgg_no_bn3x3": replace(_S2, norm_3x3="none"),                 # Table 4 (diverges)
    "qarepvgg_no_bn3x3_no_bn1x1": replace(_S3, norm_3x3="none"),        # Table 4 (diverges)
    # S4 without the 3x3 BN: the post-BN is the only BN (the official QARepVGG code's QARepVGGBlock)
    "qarepvgg_no_bn3x3_post_bn": replace(_QAREPVGG, norm_3x3="none"),
    "repopt": BlockSpec(kind="plain"),
    "hs": BlockSpec(kind="hs"),
}


def block_spec(block: str) -> BlockSpec:
    if block not in BLOCK_TYPES:
        raise ValueError(f"unknown block type {block!r}; expected one of {sorted(BLOCK_TYPES)}")
    return BLOCK_TYPES[block]


def make_block(block: str | BlockSpec, in_channels: int, out_channels: int, stride: int = 1,
               groups: int = 1, act: str | None = "relu", dilation: int = 1) -> nn.Module:
    """Build one 3x3 block of the named type (a key of ``BLOCK_TYPES``) or spec.

    ``dilation`` dilates the 3x3 branch (segmentation backbones at output stride 8/16); the 1x1 and
    identity branches read the centre pixel either way, so fusion stays exact.
    """
    spec = block_spec(block) if isinstance(block, str) else block
    if spec.kind == "plain":
        return ConvBNAct(in_channels, out_channels, 3, stride, groups, act, dilation=dilation)
    if spec.kind == "hs":
        return LinearAddBlock(in_channels, out_channels, stride, groups, act, dilation=dilation)
    return RepVGGBlock(in_channels, out_channels, stride, groups, act, spec, dilation=dilation)


def _norm(kind: BranchNorm, channels: int) -> nn.Module | None:
    if kind == "none":
        return None
    return nn.BatchNorm2d(channels, affine=(kind == "bn"))


class _Branch(nn.Module):
    """conv [-> BN]. Without BN the 3x3 conv carries a bias and the 1x1 does not (paper, M3);
    ``bias=False`` drops the 3x3 bias too (a post-BN after the sum makes it redundant)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int,
                 norm: BranchNorm, dilation: int = 1, bias: bool = True):
        super().__init__()
        bias = bias and norm == "none" and kernel_size == 3
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride,
                              kernels.same_padding(kernel_size, dilation), dilation=dilation, groups=groups, bias=bias)
        self.bn = _norm(norm, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y if self.bn is None else self.bn(y)

    def kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Equivalent 3x3 kernel and bias of this branch."""
        weight = kernels.pad_to(self.conv.weight.detach(), 3)
        bias = self.conv.bias
        if self.bn is not None:
            return kernels.fold_bn(weight, bias, self.bn)
        if bias is None:
            bias = torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)
        return weight.clone(), bias.detach().clone()


class RepVGGBlock(nn.Module):
    """3x3 + 1x1 (+ identity) (+ 3x3 avg-pool) branches, summed, [post-BN], activation.

    Input (N, C_in, H, W) -> output (N, C_out, H/stride, W/stride). The identity and avg-pool
    branches exist only when C_in == C_out and stride == 1, as in YOLOv6's QARepVGGBlockV2.
    With ``dilation`` > 1 only the 3x3 branch dilates; a dilated block has no avg-pool branch
    (a 3x3 average pool is not a dilated kernel, so it could not fuse exactly).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, groups: int = 1,
                 act: str | None = "relu", spec: BlockSpec = _REPVGG, dilation: int = 1):
        super().__init__()
        if spec.kind != "rep":
            raise ValueError(f"RepVGGBlock needs a 'rep' spec, got kind={spec.kind!r}")
        if spec.avg_pool and dilation != 1:
            raise ValueError(f"a block with the avg-pool branch cannot be dilated (dilation={dilation}): the pool "
                             "would not fuse into the dilated 3x3 kernel")
        self.in_channels, self.out_channels, self.stride, self.groups = in_channels, out_channels, stride, groups
        self.dilation = dilation
        self.spec = spec
        self.branch_3x3 = _Branch(in_channels, out_channels, 3, stride, groups, spec.norm_3x3, dilation,
                                  bias=not spec.post_bn)
        self.branch_1x1 = _Branch(in_channels, out_channels, 1, stride, groups, spec.norm_1x1)
        same_shape = in_channels == out_channels and stride == 1
        self.branch_identity: nn.Module | None = None
        if spec.identity is not None and same_shape:
            self.branch_identity = nn.BatchNorm2d(out_channels) if spec.identity == "bn" else nn.Identity()
        self.branch_avg = nn.AvgPool2d(3, 1, 1) if spec.avg_pool and same_shape else None
        self.post_bn = nn.BatchNorm2d(out_channels) if spec.post_bn else None
        self.act = make_act(act)

    def branch_outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each branch's output before the sum (for the paper's Fig. 4 analysis)."""
        out = {"3x3": self.branch_3x3(x), "1x1": self.branch_1x1(x)}
        if self.branch_identity is not None:
            out["identity"] = self.branch_identity(x)
        if self.branch_avg is not None:
            out["avg"] = self.branch_avg(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = sum(self.branch_outputs(x).values())
        if self.post_bn is not None:
            y = self.post_bn(y)
        return self.act(y)

    def kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The single 3x3 kernel and bias equal to the sum of the branches (before any post-BN)."""
        weight, bias = self.branch_3x3.kernel_bias()
        w1, b1 = self.branch_1x1.kernel_bias()
        weight, bias = weight + w1, bias + b1
        like = weight
        if isinstance(self.branch_identity, nn.BatchNorm2d):
            w_id, b_id = kernels.fold_bn(kernels.identity_kernel(self.in_channels, self.groups, 3, like), None,
                                         self.branch_identity)
            weight, bias = weight + w_id, bias + b_id
        elif self.branch_identity is not None:
            weight = weight + kernels.identity_kernel(self.in_channels, self.groups, 3, like)
        if self.branch_avg is not None:
            weight = weight + kernels.avgpool_kernel(self.in_channels, self.groups, 3, like)
        return weight, bias

    def fuse(self) -> nn.Module:
        weight, bias = self.kernel_bias()
        conv = kernels.conv_like(self.branch_3x3.conv, weight, bias)
        act = kernels.clone_module(self.act)
        if self.post_bn is not None:
            return ConvBNAct.from_parts(conv, kernels.clone_module(self.post_bn), act)
        return ConvAct(conv, act)


class ScaleLayer(nn.Module):
    """Learnable per-channel scale (RepOpt Hyper-Search): y = x * scale[c]."""

    def __init__(self, channels: int, init: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, -1, 1, 1)


class LinearAddBlock(nn.Module):
    """RepOpt Hyper-Search block: s3*conv3x3(x) + s1*conv1x1(x) [+ s_id*x] -> BN -> act.

    The trained scales are extracted (``scales()``) and drive the RepOptimizer of the plain
    target. The sum is linear, so ``fuse()`` gives a ConvBNAct of the target's shape.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, groups: int = 1,
                 act: str | None = "relu", conv_scale_init: float = 1.0, dilation: int = 1):
        super().__init__()
        self.in_channels, self.out_channels, self.stride, self.groups = in_channels, out_channels, stride, groups
        self.conv_3x3 = nn.Conv2d(in_channels, out_channels, 3, stride, dilation, dilation=dilation, groups=groups,
                                  bias=False)
        self.conv_1x1 = nn.Conv2d(in_channels, out_channels, 1, stride, 0, groups=groups, bias=False)
        self.scale_3x3 = ScaleLayer(out_channels, conv_scale_init)
        self.scale_1x1 = ScaleLayer(out_channels, conv_scale_init)
        has_identity = in_channels == out_channels and stride == 1
        self.scale_identity = ScaleLayer(out_channels, 1.0) if has_identity else None
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = make_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.scale_3x3(self.conv_3x3(x)) + self.scale_1x1(self.conv_1x1(x))
        if self.scale_identity is not None:
            y = y + self.scale_identity(x)
        return self.act(self.bn(y))

    def scales(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(s_3x3, s_1x1, s_identity or None), each of shape (C_out,), detached."""
        s_id = None if self.scale_identity is None else self.scale_identity.weight.detach().clone()
        return self.scale_3x3.weight.detach().clone(), self.scale_1x1.weight.detach().clone(), s_id

    def fuse(self) -> ConvBNAct:
        s3, s1, s_id = self.scales()
        weight = self.conv_3x3.weight.detach() * s3.view(-1, 1, 1, 1)
        weight = weight + kernels.pad_to(self.conv_1x1.weight.detach(), 3) * s1.view(-1, 1, 1, 1)
        if s_id is not None:
            weight = weight + kernels.identity_kernel(self.in_channels, self.groups, 3, weight) * s_id.view(-1, 1, 1, 1)
        conv = kernels.conv_like(self.conv_3x3, weight, None)
        return ConvBNAct.from_parts(conv, kernels.clone_module(self.bn), kernels.clone_module(self.act))
