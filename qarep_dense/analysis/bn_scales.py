"""Per-branch BN multipliers gamma / sqrt(var + eps) of the training-form blocks (the paper's Fig. 3).

Fusion multiplies each branch's kernel by its BN multiplier. An identity-branch BN sits after the
previous block's ReLU; a channel that ReLU never lets through has running variance ~1e-16, so its
multiplier is limited only by eps (gamma / sqrt(1e-5) = 316 * gamma) and lands in the fused kernel as
one huge weight: the C1 violation.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..layers.conv import ConvBNAct
from ..layers.kernels import bn_scale
from ..layers.rep_blocks import LinearAddBlock, RepVGGBlock
from .stats import median


@dataclass(frozen=True)
class BranchScale:
    """Summary of one BN's multipliers. near_dead: channels whose running variance is below the BN's
    eps, where eps and not the data sets the multiplier. argmax indexes the largest |multiplier|."""

    max_abs: float
    median_abs: float
    min_abs: float
    argmax: int
    near_dead: int
    channels: int


@dataclass(frozen=True)
class BlockScaleStats:
    """All BN multipliers of one block; branch keys: "3x3", "1x1", "identity", "post" (or "bn")."""

    name: str
    branches: dict[str, BranchScale]

    @property
    def near_dead(self) -> int:
        return sum(b.near_dead for b in self.branches.values())

    def largest(self) -> tuple[str, float]:
        """(branch, multiplier) of the largest |multiplier| in the block."""
        branch = max(self.branches, key=lambda k: self.branches[k].max_abs)
        return branch, self.branches[branch].max_abs

    def as_dict(self) -> dict:
        branch, value = self.largest()
        return {"name": self.name, "near_dead": self.near_dead, "max_branch": branch, "max_abs": value,
                "branches": {k: asdict(v) for k, v in self.branches.items()}}


def block_norms(module: nn.Module) -> dict[str, nn.BatchNorm2d]:
    """The BNs a block's fusion multiplies into its kernel, keyed by branch; {} for other modules."""
    if isinstance(module, RepVGGBlock):
        norms = {"3x3": module.branch_3x3.bn, "1x1": module.branch_1x1.bn,
                 "identity": module.branch_identity, "post": module.post_bn}
        return {k: v for k, v in norms.items() if isinstance(v, nn.BatchNorm2d)}
    if isinstance(module, LinearAddBlock):
        return {"post": module.bn}
    if isinstance(module, ConvBNAct):
        return {"bn": module.bn}
    return {}


def bn_scale_values(model: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """{block name: {branch: multipliers (C,)}} for every block that has BNs, in module order."""
    out = {}
    for name, module in model.named_modules():
        norms = block_norms(module)
        if norms:
            out[name] = {k: bn_scale(bn).detach().double().cpu() for k, bn in norms.items()}
    return out


def _summarize(scale: torch.Tensor, bn: nn.BatchNorm2d) -> BranchScale:
    mag = scale.abs()
    return BranchScale(max_abs=float(mag.max()), median_abs=median(mag), min_abs=float(mag.min()),
                       argmax=int(mag.argmax()), near_dead=int((bn.running_var < bn.eps).sum()),
                       channels=int(mag.numel()))


def bn_scale_stats(model: nn.Module) -> list[BlockScaleStats]:
    """Summaries of every block's BN multipliers (train-form model; a fused model has none left)."""
    stats = []
    for name, module in model.named_modules():
        norms = block_norms(module)
        if norms:
            branches = {k: _summarize(bn_scale(bn).detach().double().cpu(), bn) for k, bn in norms.items()}
            stats.append(BlockScaleStats(name, branches))
    return stats
