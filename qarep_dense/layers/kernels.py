"""Kernel algebra for re-parameterization, written once as small pure functions.

Every function returns new tensors and never touches its inputs, so ``fuse()`` can be called
on a training model without side effects.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights


def bn_scale(bn: nn.BatchNorm2d) -> torch.Tensor:
    """Per-channel multiplier gamma / sqrt(var + eps) of an eval-mode BN (gamma=1 if affine=False)."""
    gamma = bn.weight if bn.affine else torch.ones_like(bn.running_var)
    return gamma / torch.sqrt(bn.running_var + bn.eps)


def fold_bn(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold an eval-mode BN that follows a conv with ``weight``/``bias`` into that conv.

    w' = w * gamma / sqrt(var + eps);  b' = beta + (b - mean) * gamma / sqrt(var + eps).
    A conv bias is handled by shifting the mean (mean' = mean - bias).
    """
    gamma = bn.weight if bn.affine else torch.ones_like(bn.running_var)
    beta = bn.bias if bn.affine else torch.zeros_like(bn.running_var)
    w, b = fuse_conv_bn_weights(weight.detach(), None if bias is None else bias.detach(),
                                bn.running_mean, bn.running_var, bn.eps, gamma.detach(), beta.detach())
    return w.detach().clone(), b.detach().clone()


def pad_to(kernel: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad a (O, I, k, k) kernel to (O, I, size, size), centred."""
    pad = (size - kernel.shape[-1]) // 2
    return nn.functional.pad(kernel, [pad, pad, pad, pad])


def identity_kernel(channels: int, groups: int, size: int, like: torch.Tensor) -> torch.Tensor:
    """The (C, C/groups, size, size) kernel of a grouped conv that copies its input.

    Output channel i reads input i, which sits at position i % (C/groups) inside its group.
    """
    per_group = channels // groups
    kernel = torch.zeros(channels, per_group, size, size, dtype=like.dtype, device=like.device)
    idx = torch.arange(channels, device=like.device)
    kernel[idx, idx % per_group, size // 2, size // 2] = 1.0
    return kernel


def avgpool_kernel(channels: int, groups: int, size: int, like: torch.Tensor) -> torch.Tensor:
    """Kernel of a per-channel size x size average pool (count_include_pad=True) as a grouped conv."""
    per_group = channels // groups
    kernel = torch.zeros(channels, per_group, size, size, dtype=like.dtype, device=like.device)
    idx = torch.arange(channels, device=like.device)
    kernel[idx, idx % per_group] = 1.0 / (size * size)
    return kernel


def same_padding(kernel_size: int, dilation: int = 1) -> int:
    """Padding that keeps H x W at stride 1 for an odd kernel: a dilated k x k kernel spans d*(k-1)+1 pixels."""
    return dilation * (kernel_size // 2)


def conv_like(template: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Conv2d:
    """A new Conv2d with the geometry of ``template`` (kernel size taken from ``weight``).

    The padding follows the dilation: a fused dilated 3x3 must see exactly the pixels its
    branches saw, or the output shifts and shrinks.
    """
    k = weight.shape[-1]
    dilation = template.dilation[0]
    conv = nn.Conv2d(template.in_channels, template.out_channels, k, template.stride, same_padding(k, dilation),
                     dilation=dilation, groups=template.groups, bias=bias is not None,
                     device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(bias)
    return conv


def clone_module(module: nn.Module) -> nn.Module:
    return copy.deepcopy(module)
