"""Fused-weight statistics of a deploy model (the paper's C1 and Fig. 2/3).

Everything here reads the weights of a model *after* ``reparameterize``: that is the model PTQ
quantizes, and the only place where a huge BN multiplier of one branch becomes visible as an
outlier weight.

Why an activation-weighted error: an outlier is harmless when it carries the channel's signal
(an identity path with factor 5 on a live input) and destructive when it sits on an input that
is always zero. That is exactly the Fig. 3 case: the identity BN of a dead ReLU channel has
running var ~1e-16, its multiplier lands on that dead input, and per-channel INT8 then rounds
every *other* weight of the output channel to zero. Weighting each weight's quantization error
by its input's power separates the two cases; weight statistics alone cannot.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from .stats import median, safe_ratio

QUANTIZABLE = (nn.Conv2d, nn.Linear)
INT8_MAX = 127  # symmetric signed INT8, as pytorch-quantization's per-channel weight quantizer


@dataclass(frozen=True)
class LayerWeightStats:
    """One conv/linear layer's fused weights.

    std / max_abs / max_over_std: over the whole tensor (population std), the paper's Fig. 3 view.
    channel_range_*: per output channel max |w| (the per-channel INT8 scale is this / 127);
    channel_spread = max / median of those, worst_channel its argmax.
    int8_error: worst output channel's relative error from INT8 per-channel weight quantization,
    sum (w - Q(w))^2 E[x^2] / sum w^2 E[x^2] (see :func:`int8_channel_error`), in channel
    int8_error_channel; input_weighted says whether measured input powers E[x^2] were used.
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    std: float
    max_abs: float
    max_over_std: float
    channel_range_median: float
    channel_range_max: float
    channel_spread: float
    worst_channel: int
    int8_error: float
    int8_error_channel: int
    input_weighted: bool

    def as_dict(self) -> dict:
        out = asdict(self)
        out["shape"] = list(self.shape)
        return out


def quantizable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every Conv2d and Linear, in registration order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, QUANTIZABLE)]


def int8_quantize(weight: torch.Tensor) -> torch.Tensor:
    """Symmetric per-output-channel INT8 fake quantization (max calibration); same shape, float64."""
    w = weight.detach().double()
    flat = w.reshape(w.shape[0], -1)
    scale = (flat.abs().amax(dim=1, keepdim=True) / INT8_MAX).clamp_min(torch.finfo(torch.float64).tiny)
    return (torch.round(flat / scale).clamp(-INT8_MAX, INT8_MAX) * scale).reshape(w.shape)


def int8_channel_error(weight: torch.Tensor, input_power: torch.Tensor | None = None,
                       groups: int = 1) -> torch.Tensor:
    """Per output channel, the share of its output power that INT8 weight quantization turns into error.

    weight: conv (O, I/g, k, k) or linear (O, I); input_power: (I,) mean x^2 of each input channel
    (None: all 1). Returns (O,): sum_i,k (w - Q(w))^2 P_i / sum_i,k w^2 P_i, 0 for silent channels.
    Treats inputs as uncorrelated and ignores padding: a ranking proxy, not an exact output error.
    """
    w = weight.detach().double()
    w = w.reshape(w.shape[0], w.shape[1], -1)
    out_ch, in_per_group = w.shape[0], w.shape[1]
    if input_power is None:
        power = torch.ones(out_ch, in_per_group, 1, dtype=w.dtype, device=w.device)
    else:
        if input_power.numel() != groups * in_per_group:
            raise ValueError(f"input_power has {input_power.numel()} channels; the weight {tuple(weight.shape)} "
                             f"with groups={groups} reads {groups * in_per_group}")
        # Output channel o of group g reads inputs g*(I/g) .. (g+1)*(I/g) - 1.
        power = input_power.double().to(w.device).view(groups, in_per_group)
        power = power.repeat_interleave(out_ch // groups, dim=0).unsqueeze(-1)
    err = ((w - int8_quantize(w)) ** 2 * power).sum(dim=(1, 2))
    signal = (w ** 2 * power).sum(dim=(1, 2))
    return torch.where(signal > 0, err / signal.clamp_min(torch.finfo(torch.float64).tiny), torch.zeros_like(err))


def layer_weight_stats(name: str, weight: torch.Tensor, kind: str = "conv", groups: int = 1,
                       input_power: torch.Tensor | None = None) -> LayerWeightStats:
    """Statistics of one weight tensor of shape (O, ...) (conv (O, I/g, k, k) or linear (O, I))."""
    w = weight.detach().double()
    std = float(w.std(correction=0))
    max_abs = float(w.abs().max())
    ranges = w.abs().reshape(w.shape[0], -1).amax(dim=1)
    range_median = median(ranges)
    error = int8_channel_error(w, input_power, groups)
    return LayerWeightStats(
        name=name, kind=kind, shape=tuple(w.shape), std=std, max_abs=max_abs,
        max_over_std=safe_ratio(max_abs, std), channel_range_median=range_median,
        channel_range_max=float(ranges.max()), channel_spread=safe_ratio(float(ranges.max()), range_median),
        worst_channel=int(ranges.argmax()), int8_error=float(error.max()), int8_error_channel=int(error.argmax()),
        input_weighted=input_power is not None,
    )


def weight_stats(deploy_model: nn.Module,
                 input_power: dict[str, torch.Tensor] | None = None) -> list[LayerWeightStats]:
    """Statistics of every conv/linear weight of a (fused) model, in module order.

    input_power: {layer name: (C_in,) mean x^2 of its input}, e.g. from
    :meth:`ActivationRecorder.channel_power`; layers missing from it use uniform weighting.
    """
    input_power = input_power or {}
    return [layer_weight_stats(name, m.weight, "linear" if isinstance(m, nn.Linear) else "conv",
                               getattr(m, "groups", 1), input_power.get(name))
            for name, m in quantizable_layers(deploy_model)]
