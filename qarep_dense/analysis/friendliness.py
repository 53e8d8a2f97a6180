"""Flag the layers that break the paper's two conditions for good INT8 quantization.

C1: the fused weights have a feasible range (no outliers). Weights are quantized per output
channel, so the decisive questions are whether one channel's range dwarfs the others' (the paper's
outliers, e.g. a BN multiplier of 316+ on a dead identity channel) and whether INT8 destroys most of
a channel's output (the outlier sits on an input that is always zero, so the rest of the channel is
rounded away). The whole-tensor max/std of the paper's Fig. 3 is reported but not flagged: for a
single outlier it is bounded by sqrt(number of weights), so it mostly measures layer size.
C2: the conv/linear inputs have a feasible range. Activations are quantized per tensor, so one
extreme value, or one channel far wider than the rest, stretches the step for everything.

The thresholds are heuristics; every number behind a flag is reported so a reader can judge.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from .bn_scales import BlockScaleStats
from .weights import LayerWeightStats


@dataclass(frozen=True)
class Thresholds:
    """Flag a layer when a ratio exceeds its threshold.

    weight_channel_spread: largest channel max|w| / median channel max|w|.
    weight_int8_error: worst channel's share of output power lost to INT8 weight quantization.
    act_max_over_std: max|x| / std(x) of a layer input.
    act_channel_spread: largest channel max|x| / median over live channels.
    """

    weight_channel_spread: float = 20.0
    weight_int8_error: float = 0.5
    act_max_over_std: float = 30.0
    act_channel_spread: float = 20.0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
                raise ValueError(f"threshold {name} must be a positive finite number, got {value!r}")


@dataclass(frozen=True)
class Flag:
    """One flagged layer: which condition, why (human-readable reasons) and the numbers behind it."""

    condition: str
    layer: str
    reasons: tuple[str, ...]
    block: str | None = None
    numbers: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        out = asdict(self)
        out["reasons"] = list(self.reasons)
        return out


def owning_block(layer: str, blocks: list[str]) -> str | None:
    """The longest block name that is ``layer`` itself or a dotted prefix of it."""
    matches = [b for b in blocks if layer == b or layer.startswith(b + ".")]
    return max(matches, key=len) if matches else None


def _weight_reasons(s: LayerWeightStats, thr: Thresholds) -> list[str]:
    reasons = []
    if s.channel_spread > thr.weight_channel_spread:
        reasons.append(f"channel {s.worst_channel} range is {s.channel_spread:.3g}x the median channel's "
                       f"(> {thr.weight_channel_spread:g})")
    if s.int8_error > thr.weight_int8_error:
        reasons.append(f"INT8 weights lose {100 * s.int8_error:.0f}% of channel {s.int8_error_channel}'s output "
                       f"(> {100 * thr.weight_int8_error:.0f}%)")
    return reasons


def flag_weights(stats: list[LayerWeightStats], scales: list[BlockScaleStats],
                 thr: Thresholds = Thresholds()) -> list[Flag]:
    """C1 flags; each carries its block's largest BN multiplier (the usual cause) when there is one."""
    by_block = {s.name: s for s in scales}
    flags = []
    for s in stats:
        reasons = _weight_reasons(s, thr)
        if not reasons:
            continue
        block = owning_block(s.name, list(by_block))
        numbers = {k: getattr(s, k) for k in ("max_abs", "std", "max_over_std", "channel_spread",
                                               "worst_channel", "int8_error", "int8_error_channel")}
        if block is not None:
            branch, value = by_block[block].largest()
            numbers.update(max_multiplier=value, max_multiplier_branch=branch,
                           max_multiplier_channel=by_block[block].branches[branch].argmax,
                           near_dead=by_block[block].near_dead)
        flags.append(Flag("C1", s.name, tuple(reasons), block, numbers))
    return flags


def flag_activations(summary: dict[str, dict], thr: Thresholds = Thresholds(),
                     blocks: list[str] | tuple[str, ...] = ()) -> list[Flag]:
    """C2 flags from :meth:`ActivationRecorder.summary` ({layer: stats of its input}).

    ``blocks``: training-form block names, to name the block each flagged deploy layer came from.
    """
    flags = []
    for layer, s in summary.items():
        reasons = []
        if s["amax_over_std"] > thr.act_max_over_std:
            reasons.append(f"input max|x|/std = {s['amax_over_std']:.3g} > {thr.act_max_over_std:g}")
        if s["channel_spread"] > thr.act_channel_spread:
            reasons.append(f"input channel {s['worst_channel']} range is {s['channel_spread']:.3g}x the median "
                           f"channel's (> {thr.act_channel_spread:g}): a per-tensor INT8 scale leaves the median "
                           f"channel about {127 / s['channel_spread']:.2g} levels")
        if reasons:
            numbers = {k: s[k] for k in ("amax", "std", "amax_over_std", "channel_spread", "worst_channel")}
            flags.append(Flag("C2", layer, tuple(reasons), owning_block(layer, list(blocks)), numbers))
    return flags
