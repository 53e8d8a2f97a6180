"""Dead-channel repair: the fix for the collapse mechanism of the paper's Fig. 3, and nothing more.

A RepVGG identity BN whose input channel died (always zero after the previous ReLU) learns a
running variance near 0, so the fused kernel carries gamma/sqrt(var+eps) (hundreds) at that
channel's identity position. The weight is multiplied by zeros in FP32 and does no harm, but it
sets the per-output-channel INT8 weight scale and wipes out every other weight of that output channel.

The repair zeroes only such outliers: a kernel slice ``w[o, c]`` (output channel o, input channel c)
is zeroed when input c is exactly zero on every calibration image AND on a held-out batch, and
that dead slice sets the scale of o, i.e. the largest |w| over o's dead slices is at least
``min_ratio`` times the largest over its live ones (2 = at least one bit of o's INT8 resolution).
Then every dead slice of o above the live maximum is zeroed, so o's scale falls to the live maximum.
Dead slices below the live maximum change no scale and are left alone (a dead input of a final
linear layer usually holds ordinary weights). Channels dead on calibration but alive on the held-out
batch are counted and never zeroed. The FP32 outputs on the held-out batch before and after are
compared and reported: exact by construction, checked anyway.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch
from torch import nn
from tqdm import tqdm

from ..data.preprocess import Preprocess
from .calibration import flatten_outputs

log = logging.getLogger(__name__)
_LAYERS = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)


@dataclass
class RepairEntry:
    """One layer: ``channels`` are the input channels with at least one zeroed kernel slice.

    zeroed_slices: (output channel, input channel) kernel slices zeroed; output_channels: output
    channels whose INT8 scale came from a dead slice (now from their live weights); dead_inputs:
    input channels dead on the calibration data; alive_on_heldout: of those, the ones alive on the
    held-out batch (left alone); max_abs_before/after: max |w| of the whole layer.
    """

    layer: str
    channels: list[int]
    zeroed_slices: int = 0
    output_channels: int = 0
    dead_inputs: int = 0
    alive_on_heldout: list[int] = field(default_factory=list)
    max_abs_before: float = 0.0
    max_abs_after: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class RepairReport:
    """What :func:`repair_dead_channels` did, over all layers.

    entries: one per layer with dead inputs on the calibration data (zeroed or not).
    heldout_images: images of the held-out batch (0: none was given, nothing was checked);
    heldout_max_abs_diff / heldout_rel_error: FP32 outputs after vs before the repair on it.
    """

    entries: list[RepairEntry] = field(default_factory=list)
    calib_images: int = 0
    heldout_images: int = 0
    heldout_max_abs_diff: float | None = None
    heldout_rel_error: float | None = None

    @property
    def changed(self) -> list[RepairEntry]:
        """Entries of the layers whose weights were changed."""
        return [e for e in self.entries if e.zeroed_slices]

    @property
    def zeroed_slices(self) -> int:
        return sum(e.zeroed_slices for e in self.entries)

    @property
    def zeroed_channels(self) -> int:
        """(layer, input channel) pairs with at least one zeroed slice."""
        return sum(len(e.channels) for e in self.entries)

    @property
    def dead_on_calibration(self) -> int:
        return sum(e.dead_inputs for e in self.entries)

    @property
    def alive_on_heldout(self) -> int:
        """Input channels dead on every calibration image but alive on the held-out batch."""
        return sum(len(e.alive_on_heldout) for e in self.entries)

    def summary(self) -> dict:
        """The headline numbers (for tables and logs)."""
        return {"zeroed_channels": self.zeroed_channels, "zeroed_slices": self.zeroed_slices,
                "layers_changed": len(self.changed), "dead_on_calibration": self.dead_on_calibration,
                "alive_on_heldout": self.alive_on_heldout, "calib_images": self.calib_images,
                "heldout_images": self.heldout_images, "heldout_max_abs_diff": self.heldout_max_abs_diff,
                "heldout_rel_error": self.heldout_rel_error}

    def as_dict(self) -> dict:
        return {**self.summary(), "entries": [e.as_dict() for e in self.entries]}


def _channel_amax(x: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """Per-input-channel max |x|: channels are dim 1 for convs, the last dim for Linear."""
    if isinstance(layer, nn.Linear):
        return x.detach().abs().reshape(-1, x.shape[-1]).amax(dim=0)
    return x.detach().abs().transpose(0, 1).reshape(x.shape[1], -1).amax(dim=1)


@torch.no_grad()
def input_amax(model: nn.Module, batches: Sequence[torch.Tensor], preprocess: Preprocess,
               device: str | torch.device = "cpu", progress: bool = False,
               keep_outputs: bool = False) -> tuple[dict[str, torch.Tensor], list]:
    """({layer name: (C_in,) max |input| per channel over all batches}, outputs if ``keep_outputs``).

    Covers Conv2d, ConvTranspose2d and Linear layers; runs ``model`` in eval mode.
    """
    amax: dict[str, torch.Tensor] = {}
    hooks, outputs = [], []
    for name, layer in model.named_modules():
        if type(layer) in _LAYERS:
            def hook(mod, inputs, name=name):
                a = _channel_amax(inputs[0], mod)
                amax[name] = a if name not in amax else torch.maximum(amax[name], a)
            hooks.append(layer.register_forward_pre_hook(hook))
    model.eval()
    try:
        for images in tqdm(batches, desc="find dead channels", disable=not progress, leave=False):
            out = model(preprocess(images.to(device)))
            if keep_outputs:
                outputs.append(out)
    finally:
        for h in hooks:
            h.remove()
    return {name: a.cpu() for name, a in amax.items()}, outputs


def find_dead_inputs(model: nn.Module, batches: Sequence[torch.Tensor], preprocess: Preprocess,
                     device: str | torch.device = "cpu", progress: bool = False) -> dict[str, torch.Tensor]:
    """{layer name: bool (C_in,) mask of input channels that are exactly 0 on every batch}."""
    amax, _ = input_amax(model, batches, preprocess, device, progress)
    # NaN compares unequal to 0, so a channel with NaNs is never called dead.
    return {name: a == 0 for name, a in amax.items()}


def slice_amax(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, index): M[u, j] = max |w| of the weights of scale unit u that read local input j, and
    index[u, j] = the global input channel that is.

    Scale units are the weight quantizer's channels: output channels of Conv2d/Linear (dim 0),
    dim 1 of a ConvTranspose2d weight (C_in, C_out/groups, kH, kW), shared across its groups.
    Conv2d weight (C_out, C_in/groups, kH, kW): output o of group o // (C_out/groups) reads inputs
    group * C_in/groups + j.
    """
    w = layer.weight.detach().abs()
    if isinstance(layer, nn.Linear):
        m = w
        index = torch.arange(w.shape[1]).expand(w.shape[0], -1)
    elif isinstance(layer, nn.ConvTranspose2d):
        m = w.amax(dim=(2, 3)).t()  # (C_out/groups, C_in)
        index = torch.arange(w.shape[0]).expand(m.shape[0], -1)
    else:
        m = w.amax(dim=(2, 3))  # (C_out, C_in/groups)
        per_in, per_out = w.shape[1], layer.out_channels // layer.groups
        group = torch.arange(w.shape[0]) // per_out
        index = group[:, None] * per_in + torch.arange(per_in)[None, :]
    return m, index.to(m.device)


def outlier_slices(layer: nn.Module, dead: torch.Tensor, min_ratio: float = 2.0) -> torch.Tensor:
    """Bool mask, shaped like :func:`slice_amax`'s M, of the dead slices that set their unit's scale.

    dead: (C_in,) bool. A unit qualifies when max |w| over its dead slices >= ``min_ratio`` x the max
    over its live ones; then every dead slice of it above the live max is marked.
    """
    m, index = slice_amax(layer)
    is_dead = dead.to(m.device)[index]
    live_max = torch.where(is_dead, torch.zeros_like(m), m).amax(dim=1, keepdim=True)
    dead_max = torch.where(is_dead, m, torch.zeros_like(m)).amax(dim=1, keepdim=True)
    unit = (dead_max > 0) & (dead_max >= min_ratio * live_max)
    return is_dead & unit & (m > live_max)


def zero_slices(layer: nn.Module, mask: torch.Tensor) -> None:
    """Zero, in place, the kernel slices ``mask`` (shaped like :func:`slice_amax`'s M) marks."""
    w = layer.weight
    with torch.no_grad():
        if isinstance(layer, nn.ConvTranspose2d):
            w[mask.t()] = 0
        else:
            w[mask] = 0


def zero_input_columns(layer: nn.Module, channels: torch.Tensor) -> None:
    """Zero every weight that reads one of ``channels`` (input channel indices), respecting groups."""
    dead = torch.zeros(layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels, dtype=torch.bool)
    dead[channels] = True
    _, index = slice_amax(layer)
    zero_slices(layer, dead.to(index.device)[index])


def _compare(after: list, before: list) -> tuple[float, float]:
    """(max |a - b|, ||a - b|| / ||b||) over every output tensor of every batch."""
    diff = num = den = 0.0
    for a_out, b_out in zip(after, before):
        for a, b in zip(flatten_outputs(a_out), flatten_outputs(b_out)):
            diff = max(diff, float((a.float() - b.float()).abs().max()))
            num += float(((a.float() - b.float()) ** 2).sum())
            den += float((b.float() ** 2).sum())
    return diff, (num / den) ** 0.5 if den > 0 else float(num > 0)


@torch.no_grad()
def repair_dead_channels(model: nn.Module, batches: Sequence[torch.Tensor], preprocess: Preprocess,
                         device: str | torch.device = "cpu", progress: bool = False,
                         heldout: Sequence[torch.Tensor] = (), min_ratio: float = 2.0) -> RepairReport:
    """Zero, IN PLACE, the dead-input kernel slices that set an INT8 weight scale (see module doc).

    batches: the uint8 calibration batches (N, 3, H, W); heldout: uint8 batches NOT used for
    calibration (a channel alive there is never zeroed; the FP32 agreement is measured there).
    Run on the fused float model before PTQ.
    """
    if min_ratio < 1.0:
        raise ValueError(f"repair_dead_channels: min_ratio must be >= 1, got {min_ratio}")
    calib_amax, _ = input_amax(model, batches, preprocess, device, progress)
    held_amax, before = input_amax(model, heldout, preprocess, device, keep_outputs=True) if heldout else ({}, [])
    layers = dict(model.named_modules())
    report = RepairReport(calib_images=sum(int(b.shape[0]) for b in batches),
                          heldout_images=sum(int(b.shape[0]) for b in heldout))
    for name, amax in calib_amax.items():
        dead = amax == 0  # NaN compares unequal to 0: a channel with NaNs is never called dead
        if not dead.any():
            continue
        alive = dead & (held_amax[name] > 0) if name in held_amax else torch.zeros_like(dead)
        layer = layers[name]
        entry = RepairEntry(name, [], dead_inputs=int(dead.sum()),
                            alive_on_heldout=torch.nonzero(alive).flatten().tolist(),
                            max_abs_before=float(layer.weight.abs().max()))
        mask = outlier_slices(layer, dead & ~alive, min_ratio)
        if mask.any():
            _, index = slice_amax(layer)
            zero_slices(layer, mask)
            entry.channels = sorted(set(index[mask].tolist()))
            entry.zeroed_slices, entry.output_channels = int(mask.sum()), int(mask.any(dim=1).sum())
        entry.max_abs_after = float(layer.weight.abs().max())
        report.entries.append(entry)
    if heldout:
        _, after = input_amax(model, heldout, preprocess, device, keep_outputs=True)
        report.heldout_max_abs_diff, report.heldout_rel_error = _compare(after, before)
    else:
        log.warning("dead-channel repair without a held-out batch: channels dead only on the calibration "
                    "images may be zeroed, and FP32 agreement is not checked")
    log.info("dead-channel repair: %d kernel slices of %d input channels zeroed in %d layers; %d channels dead "
             "on calibration, %d of them alive on held-out data (kept); held-out FP32 max |diff| %s",
             report.zeroed_slices, report.zeroed_channels, len(report.changed), report.dead_on_calibration,
             report.alive_on_heldout, report.heldout_max_abs_diff)
    return report
