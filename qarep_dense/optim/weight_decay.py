"""Parameter groups and the three weight-decay schemes the paper compares.

- "normal": plain L2 (SGD weight_decay) on conv/linear kernels; BN parameters and biases are not decayed.
  This is QARepVGG's choice (M1).
- "custom": RepVGG's ``get_custom_L2``: the 3x3/1x1 kernels of blocks with BN on both branches are
  decayed through their *equivalent* kernel, scaled by the detached BN multipliers t = gamma/sqrt(var+eps):
  l2 = ||K3||^2 - ||K3_centre||^2 + sum((K3_centre*t3 + K1*t1)^2 / (t3^2 + t1^2)).
- "eq5": the paper's Eq. 5, the same without the denominator.
With "custom"/"eq5" those kernels get no ordinary decay; add ``custom_l2_penalty`` to the loss.

RepVGG's official training script (the recipe behind the paper's S0 row) also gives ordinary weight decay
to every identity-branch BN gamma (``rbr_identity.weight``; ours is ``branch_identity.weight``) while the
3x3/1x1 BN parameters and all biases stay undecayed. Decaying that gamma is what lets identity channels
shrink towards zero, the road to the near-dead channels (variance ~0, huge gamma/sqrt(var+eps)) behind
the INT8 collapse, so "custom" follows it by default (group "identity_decay").
"""
from __future__ import annotations

import torch
from torch import nn

from ..layers.kernels import bn_scale
from ..layers.rep_blocks import RepVGGBlock

L2_MODES = ("normal", "custom", "eq5")


def _custom_l2_blocks(model: nn.Module) -> list[RepVGGBlock]:
    """Blocks whose 3x3 and 1x1 branches both carry a BN: the ones custom L2 is defined for."""
    return [m for m in model.modules()
            if isinstance(m, RepVGGBlock) and m.branch_3x3.bn is not None and m.branch_1x1.bn is not None]


def _identity_gammas(model: nn.Module) -> set[int]:
    """ids of the BN gammas on RepVGG identity branches (RepVGG's ``identity.weight``)."""
    return {id(m.branch_identity.weight) for m in model.modules()
            if isinstance(m, RepVGGBlock) and isinstance(m.branch_identity, nn.BatchNorm2d)
            and m.branch_identity.weight is not None}


def param_groups(model: nn.Module, weight_decay: float, l2: str = "normal",
                 identity_decay: bool | None = None) -> list[dict]:
    """Optimizer groups named "decay", "no_decay" (BN and scale parameters), "bias", with custom L2
    "custom_l2" (kernels decayed by the penalty instead) and "identity_decay" (identity-BN gammas,
    decayed with ``weight_decay``). Empty groups are left out.

    ``identity_decay``: decay the identity-BN gammas as RepVGG's official training does; ``None`` means
    on for "custom"/"eq5" (RepVGG's recipe) and off for "normal". Every trainable parameter lands in
    exactly one group.
    """
    if l2 not in L2_MODES:
        raise ValueError(f"unknown l2 mode {l2!r}; expected one of {L2_MODES}")
    if identity_decay is None:
        identity_decay = l2 != "normal"
    identity = _identity_gammas(model) if identity_decay else set()
    custom: set[int] = set()
    if l2 != "normal":
        blocks = _custom_l2_blocks(model)
        if not blocks:
            raise ValueError(f"l2={l2!r} needs RepVGG blocks with BN on the 3x3 and 1x1 branches; "
                             f"{type(model).__name__} has none (use l2='normal')")
        custom = {id(p) for b in blocks for p in (b.branch_3x3.conv.weight, b.branch_1x1.conv.weight)}
    groups: dict[str, list[nn.Parameter]] = {"decay": [], "no_decay": [], "bias": [], "custom_l2": [],
                                             "identity_decay": []}
    seen: set[int] = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            if id(p) in custom:
                groups["custom_l2"].append(p)
            elif id(p) in identity:
                groups["identity_decay"].append(p)
            elif name == "bias":
                groups["bias"].append(p)
            elif isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)) or p.ndim <= 1:
                groups["no_decay"].append(p)  # norm affine parameters and per-channel scales
            else:
                groups["decay"].append(p)
    decayed = ("decay", "identity_decay")
    return [{"params": ps, "weight_decay": weight_decay if name in decayed else 0.0, "name": name}
            for name, ps in groups.items() if ps]


def custom_l2_penalty(model: nn.Module, weight_decay: float, denominator: bool = True) -> torch.Tensor:
    """weight_decay * 0.5 * sum over blocks of RepVGG's custom L2 (``denominator=False``: Eq. 5).

    Returns a 0-d tensor to add to the loss.
    """
    blocks = _custom_l2_blocks(model)
    if not blocks:
        raise ValueError("custom L2 needs RepVGG blocks with BN on the 3x3 and 1x1 branches; the model has none")
    total = None
    for block in blocks:
        k3, k1 = block.branch_3x3.conv.weight, block.branch_1x1.conv.weight
        t3 = bn_scale(block.branch_3x3.bn).detach().view(-1, 1, 1, 1)
        t1 = bn_scale(block.branch_1x1.bn).detach().view(-1, 1, 1, 1)
        centre = k3[:, :, 1:2, 1:2]
        circle = (k3 ** 2).sum() - (centre ** 2).sum()
        eq = centre * t3 + k1 * t1
        eq_term = (eq ** 2 / (t3 ** 2 + t1 ** 2)).sum() if denominator else (eq ** 2).sum()
        term = circle + eq_term
        total = term if total is None else total + term
    return 0.5 * weight_decay * total
