"""RepOptimizer (SGD) for RepOpt-VGG: train a plain 3x3 ConvBNAct as if it were a multi-branch block.

The equivalent multi-branch ("CSLA") block is  y = BN(s3*conv3x3(x) + s1*conv1x1(x) + (s_id + d)*x)
with constant per-channel scales from a Hyper-Search run and a trainable per-channel identity
delta d (initially 0). SGD on (K3, K1, d) moves the equivalent kernel W = s3*K3 + s1*pad(K1) + (s_id+d)*I by
    mask * dL/dW + wd * (W - s_id*I),   mask = s3^2 everywhere, + s1^2 at the centre, + 1 at the identity centre,
which is what :class:`RepOptimizerSGD` applies to W directly (momentum and Nesterov are linear, so they carry over).
"""
from __future__ import annotations

import torch
from torch import nn

from ..layers import kernels
from ..layers.conv import ConvBNAct
from ..layers.rep_blocks import LinearAddBlock
from .weight_decay import param_groups

Scales = dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]


def extract_scales(hs_model: nn.Module) -> Scales:
    """{module name: (s3, s1, s_id or None)} for every LinearAddBlock of a trained Hyper-Search model."""
    scales = {name: m.scales() for name, m in hs_model.named_modules() if isinstance(m, LinearAddBlock)}
    if not scales:
        raise ValueError(f"{type(hs_model).__name__} has no LinearAddBlock: not a Hyper-Search ('hs') model")
    return scales


def _targets(model: nn.Module, scales: Scales) -> dict[str, ConvBNAct]:
    modules = dict(model.named_modules())
    missing = [n for n in scales if not isinstance(modules.get(n), ConvBNAct)]
    if missing:
        raise ValueError(f"RepOpt target has no ConvBNAct at {missing[:5]} (Hyper-Search and target must share the arch)")
    return {n: modules[n] for n in scales}


def _identity(conv: nn.Conv2d) -> torch.Tensor:
    return kernels.identity_kernel(conv.out_channels, conv.groups, 3, conv.weight)


def gradient_masks(model: nn.Module, scales: Scales) -> dict[nn.Parameter, tuple[torch.Tensor, torch.Tensor]]:
    """{target conv weight: (gradient mask, decay anchor s_id*I)} per the module docstring."""
    out = {}
    for name, target in _targets(model, scales).items():
        s3, s1, s_id = (None if s is None else s.to(target.conv.weight) for s in scales[name])
        weight = target.conv.weight
        mask = (s3 ** 2).view(-1, 1, 1, 1).expand_as(weight).clone()
        mask[:, :, 1, 1] += (s1 ** 2).view(-1, 1)
        anchor = torch.zeros_like(weight)
        if s_id is not None:
            eye = _identity(target.conv)
            mask += eye
            anchor = eye * s_id.view(-1, 1, 1, 1)
        out[weight] = (mask.detach(), anchor.detach())
    return out


@torch.no_grad()
def init_target_from_scales(model: nn.Module, scales: Scales, generator: torch.Generator | None = None) -> None:
    """Re-initialise each target kernel as W = s3*K3 + s1*pad(K1) + s_id*I (K3: the target's own init,
    K1: a fresh default-initialised 1x1 kernel), i.e. the CSLA block's equivalent kernel at step 0."""
    for name, target in _targets(model, scales).items():
        conv = target.conv
        s3, s1, s_id = (None if s is None else s.to(conv.weight) for s in scales[name])
        k1 = torch.empty(conv.out_channels, conv.in_channels // conv.groups, 1, 1, dtype=conv.weight.dtype)
        bound = 1.0 / (k1[0].numel() ** 0.5)  # nn.Conv2d's default kaiming_uniform(a=sqrt(5)) bound
        k1.uniform_(-bound, bound, generator=generator)
        weight = conv.weight * s3.view(-1, 1, 1, 1) + kernels.pad_to(k1.to(conv.weight), 3) * s1.view(-1, 1, 1, 1)
        if s_id is not None:
            weight = weight + _identity(conv) * s_id.view(-1, 1, 1, 1)
        conv.weight.copy_(weight)


class RepOptimizerSGD(torch.optim.Optimizer):
    """SGD (momentum, Nesterov, L2) with constant per-kernel gradient masks.

    ``masks`` maps a parameter to (mask, decay anchor); other parameters get plain SGD. Same update
    rule as ``torch.optim.SGD`` (dampening 0).
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, nesterov: bool = False,
                 masks: dict[nn.Parameter, tuple[torch.Tensor, torch.Tensor]] | None = None):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov))
        self.masks = dict(masks or {})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            wd, momentum, lr = group["weight_decay"], group["momentum"], group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                d_p = p.grad
                if p in self.masks:
                    mask, anchor = (t.to(p) for t in self.masks[p])
                    d_p = d_p * mask
                    if wd:
                        d_p = d_p + wd * (p - anchor)
                elif wd:
                    d_p = d_p + wd * p
                if momentum:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = d_p.clone()
                    else:
                        buf.mul_(momentum).add_(d_p)
                    d_p = d_p + momentum * buf if group["nesterov"] else buf
                p.add_(d_p, alpha=-lr)
        return loss


def build_repopt_sgd(model: nn.Module, hs_model: nn.Module, lr: float, momentum: float = 0.9,
                     weight_decay: float = 0.0, nesterov: bool = False, reinit: bool = True,
                     keep: tuple[str, ...] = ()) -> RepOptimizerSGD:
    """Scales from ``hs_model`` -> (optionally) re-initialise the "repopt" ``model`` -> its RepOptimizer.

    Call after moving ``model`` to its device. On resume pass ``reinit=False`` and load the optimizer state.
    keep: module-name prefixes whose targets keep their weights when re-initialising (a backbone loaded from a
    RepOpt-VGG classifier was trained under RepOptimizer already; mmseg's constructor keeps it the same way).
    """
    scales = extract_scales(hs_model)
    if reinit:
        init_target_from_scales(model, {n: s for n, s in scales.items() if not n.startswith(keep)} if keep else scales)
    return RepOptimizerSGD(param_groups(model, weight_decay), lr, momentum, weight_decay, nesterov,
                           masks=gradient_masks(model, scales))
