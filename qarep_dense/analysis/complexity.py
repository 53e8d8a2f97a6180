"""Parameter and multiply-add counts (the paper's Table 5 and YOLOv6's size columns)."""
from __future__ import annotations

import math

import torch
from torch import nn


@torch.no_grad()
def count_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-adds of one forward pass per image (``x`` is a batch; counts are divided by its size)
    over Conv2d, ConvTranspose2d and Linear layers. FLOPs in YOLOv6's sense are twice this."""
    total = 0

    def conv_hook(m: nn.Conv2d, inputs, out: torch.Tensor) -> None:
        nonlocal total
        total += out[0].numel() * (m.in_channels // m.groups) * math.prod(m.kernel_size)

    def deconv_hook(m: nn.ConvTranspose2d, inputs, out: torch.Tensor) -> None:
        nonlocal total  # every input element meets out/groups x k x k weights
        total += inputs[0][0].numel() * (m.out_channels // m.groups) * math.prod(m.kernel_size)

    def linear_hook(m: nn.Linear, inputs, out: torch.Tensor) -> None:
        nonlocal total
        total += out[0].numel() * m.in_features

    table = {nn.Conv2d: conv_hook, nn.ConvTranspose2d: deconv_hook, nn.Linear: linear_hook}
    hooks = [m.register_forward_hook(table[type(m)]) for m in model.modules() if type(m) in table]
    was_training = model.training
    try:
        model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return total


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
