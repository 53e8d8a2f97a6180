"""The re-parameterization protocol and the one walker that applies it.

Two explicit stages:
1. *fuse branches*: every multi-branch block becomes one conv. QARepVGG keeps its post-BN as a
   :class:`ConvBNAct` (conv with bias -> BN -> act), the QAT-friendly form.
2. *fold BN*: every :class:`ConvBNAct` becomes a :class:`ConvAct` (plain conv for float deploy).
"""
from __future__ import annotations

import copy
from typing import Protocol, runtime_checkable

from torch import nn

from .conv import ConvBNAct


@runtime_checkable
class Reparameterizable(Protocol):
    def fuse(self) -> nn.Module:
        """Return the deploy module equivalent to ``self`` in eval mode; never mutates ``self``."""
        ...


def _fuse_children(module: nn.Module, fold_bn: bool) -> int:
    replaced = 0
    for name, child in module.named_children():
        replaced += _fuse_children(child, fold_bn)
        # A fused block may itself be fusable (QARepVGG -> ConvBNAct -> ConvAct): go to a fixed point.
        while isinstance(child, Reparameterizable) and (fold_bn or not isinstance(child, ConvBNAct)):
            child = child.fuse()
            setattr(module, name, child)
            replaced += 1
    return replaced


def reparameterize(model: nn.Module, fold_bn: bool = True) -> nn.Module:
    """Return an eval-mode deploy copy of ``model``; ``model`` itself is left untouched.

    ``fold_bn=False`` stops after stage 1, keeping every BN that follows a fused conv (for QAT);
    ``fold_bn=True`` also folds those BNs, leaving plain convs.
    """
    deploy = copy.deepcopy(model).eval()
    if isinstance(deploy, Reparameterizable) and (fold_bn or not isinstance(deploy, ConvBNAct)):
        # A whole-model wrapper that holds BNs of its own (the segmentor's heads) takes the choice itself.
        fused = deploy.fuse(fold_bn=fold_bn) if getattr(deploy, "fuse_takes_fold_bn", False) else deploy.fuse()
        return reparameterize(fused, fold_bn)
    _fuse_children(deploy, fold_bn)
    return deploy
