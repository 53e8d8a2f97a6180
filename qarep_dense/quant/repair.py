"""Dead-channel repair: the fix for the collapse mechanism of the paper's Fig. 3.

A RepVGG identity BN whose input channel died (always zero after the previous ReLU) learns a
running variance near 0, so the fused kernel carries gamma/sqrt(var+eps) (hundreds) at that
channel's identity position. The weight is multiplied by zeros in FP32 and does no harm, but it
sets the per-output-channel weight scale in INT8 and wipes out every other weight of that output
channel. Zeroing kernel columns that read an input channel which is exactly zero on ALL
calibration data removes the outlier and leaves FP32 outputs on that data bit-identical.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Sequence

import torch
from torch import nn
from tqdm import tqdm

from ..data.preprocess import Preprocess

log = logging.getLogger(__name__)
_LAYERS = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)


@dataclass
class RepairEntry:
    """One repaired layer: the input channels whose kernel columns were zeroed."""

    layer: str
    channels: list[int]
    max_abs_before: float
    max_abs_after: float

    def as_dict(self) -> dict:
        return asdict(self)


def _channel_amax(x: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """Per-input-channel max |x|: channels are dim 1 for convs, the last dim for Linear."""
    if isinstance(layer, nn.Linear):
        return x.detach().abs().reshape(-1, x.shape[-1]).amax(dim=0)
    return x.detach().abs().transpose(0, 1).reshape(x.shape[1], -1).amax(dim=1)


@torch.no_grad()
def find_dead_inputs(model: nn.Module, batches: Sequence[torch.Tensor], preprocess: Preprocess,
                     device: str | torch.device = "cpu", progress: bool = False) -> dict[str, torch.Tensor]:
    """{layer name: bool (C_in,) mask of input channels that are exactly 0 on every batch}.

    Covers Conv2d, ConvTranspose2d and Linear layers; runs ``model`` in eval mode.
    """
    amax: dict[str, torch.Tensor] = {}
    hooks = []
    for name, layer in model.named_modules():
        if type(layer) in _LAYERS:
            def hook(mod, inputs, name=name):
                a = _channel_amax(inputs[0], mod)
                amax[name] = a if name not in amax else torch.maximum(amax[name], a)
            hooks.append(layer.register_forward_pre_hook(hook))
    model.eval()
    try:
        for images in tqdm(batches, desc="find dead channels", disable=not progress, leave=False):
            model(preprocess(images.to(device)))
    finally:
        for h in hooks:
            h.remove()
    # NaN compares unequal to 0, so a channel with NaNs is never called dead.
    return {name: (a == 0).cpu() for name, a in amax.items()}


def zero_input_columns(layer: nn.Module, channels: torch.Tensor) -> None:
    """Zero every weight that reads one of ``channels`` (input channel indices), respecting groups.

    Conv2d weight (C_out, C_in/groups, kH, kW): input channel c lives in group c // (C_in/groups) at
    local index c % (C_in/groups) and is read only by that group's output channels.
    ConvTranspose2d weight (C_in, C_out/groups, kH, kW): row c. Linear (out, in): column c.
    """
    w = layer.weight
    with torch.no_grad():
        if isinstance(layer, nn.Linear):
            w[:, channels] = 0
        elif isinstance(layer, nn.ConvTranspose2d):
            w[channels] = 0
        else:
            per_group_in = layer.in_channels // layer.groups
            per_group_out = layer.out_channels // layer.groups
            for c in channels.tolist():
                g = c // per_group_in
                w[g * per_group_out:(g + 1) * per_group_out, c % per_group_in] = 0


@torch.no_grad()
def repair_dead_channels(model: nn.Module, batches: Sequence[torch.Tensor], preprocess: Preprocess,
                         device: str | torch.device = "cpu", progress: bool = False) -> list[RepairEntry]:
    """Zero, IN PLACE, the kernel columns of every input channel that is 0 on all ``batches``.

    Run on the fused float model before PTQ. Returns one :class:`RepairEntry` per changed layer.
    """
    dead = find_dead_inputs(model, batches, preprocess, device, progress)
    layers = dict(model.named_modules())
    report = []
    for name, mask in dead.items():
        channels = torch.nonzero(mask).flatten()
        if channels.numel() == 0:
            continue
        layer = layers[name]
        before = float(layer.weight.abs().max())
        zero_input_columns(layer, channels.to(layer.weight.device))
        report.append(RepairEntry(name, channels.tolist(), before, float(layer.weight.abs().max())))
    if report:
        log.info("dead-channel repair: %d layers, %d input channels zeroed", len(report),
                 sum(len(e.channels) for e in report))
    return report
