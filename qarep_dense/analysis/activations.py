"""Activation statistics gathered with hooks (the paper's C2 and Fig. 4).

:class:`ActivationRecorder` watches the input of every conv/linear of a model: the tensors a
per-tensor activation quantizer sees. :class:`BranchRecorder` watches each training-form
:class:`RepVGGBlock` and splits its output into the branches that are summed.
"""
from __future__ import annotations

import torch
from torch import nn

from ..layers.rep_blocks import RepVGGBlock
from .stats import RunningStats, channel_first
from .weights import QUANTIZABLE


@torch.no_grad()
def branch_decomposition(block: RepVGGBlock, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every intermediate of a block's forward: its branches, their sum, the post-BN and the output.

    x: (N, C_in, H, W). Returns (N, C_out, H', W') tensors keyed "3x3", "1x1" [, "identity"]
    [, "avg"], "sum" [, "post_bn"], "out"; "out" equals ``block(x)`` in eval mode.
    """
    parts = dict(block.branch_outputs(x))
    total = sum(parts.values())
    parts["sum"] = total
    pre_act = total
    if block.post_bn is not None:
        pre_act = parts["post_bn"] = block.post_bn(total)
    # The block's activation may be in-place (ReLU(inplace=True)): give it a copy.
    parts["out"] = block.act(pre_act.clone())
    return parts


class _Hooks:
    """Context manager that removes its hooks on exit, even after an exception."""

    def __init__(self) -> None:
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


class ActivationRecorder(_Hooks):
    """Per-layer input statistics of every Conv2d/Linear in ``model`` (forward pre-hooks).

    ``stats[name]`` is a :class:`RunningStats` over all batches seen inside the ``with`` block.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.stats: dict[str, RunningStats] = {}
        for name, module in model.named_modules():
            if isinstance(module, QUANTIZABLE):
                self.stats[name] = RunningStats()
                self._handles.append(module.register_forward_pre_hook(self._hook(name)))

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            self.stats[name].update(channel_first(args[0], module))
        return hook

    def summary(self) -> dict[str, dict]:
        return {name: s.summary() for name, s in self.stats.items()}

    def channel_power(self) -> dict[str, torch.Tensor]:
        """{layer: (C_in,) mean x^2 of each input channel} for the layers that saw input."""
        return {name: s.channel_power for name, s in self.stats.items() if s.channel_power is not None}


class BranchRecorder(_Hooks):
    """Per-branch output statistics of every RepVGGBlock, from each block's input (pre-hooks).

    If ``hist_block`` names a block, the values of channel ``hist_channel`` of each of its branches
    are kept (up to ``max_values`` per branch) for a histogram.
    """

    def __init__(self, model: nn.Module, hist_block: str | None = None, hist_channel: int = 0,
                 max_values: int = 200_000):
        super().__init__()
        self.stats: dict[str, dict[str, RunningStats]] = {}
        self.hist_block, self.hist_channel, self.max_values = hist_block, hist_channel, max_values
        self.hist_values: dict[str, list[torch.Tensor]] = {}
        for name, module in model.named_modules():
            if isinstance(module, RepVGGBlock):
                self.stats[name] = {}
                self._handles.append(module.register_forward_pre_hook(self._hook(name)))

    def _hook(self, name: str):
        def hook(module: RepVGGBlock, args: tuple) -> None:
            parts = branch_decomposition(module, args[0])
            for key, value in parts.items():
                self.stats[name].setdefault(key, RunningStats()).update(channel_first(value, module))
            if name == self.hist_block:
                self._keep(parts)
        return hook

    def _keep(self, parts: dict[str, torch.Tensor]) -> None:
        for key, value in parts.items():
            kept = self.hist_values.setdefault(key, [])
            room = self.max_values - sum(v.numel() for v in kept)
            if room > 0:
                kept.append(value[:, self.hist_channel].flatten()[:room].detach().float().cpu())

    def histogram_values(self) -> dict[str, torch.Tensor]:
        """{branch: 1-D values of the chosen channel}; empty when no block was chosen or seen."""
        return {k: torch.cat(v) for k, v in self.hist_values.items() if v}

    def summary(self) -> dict[str, dict]:
        """{block: {"branches": {key: stats}, "std_ratio": std(sum) / largest branch std}}.

        std_ratio > 1 means adding the branches enlarged the spread (the Fig. 4 effect).
        """
        out = {}
        for name, parts in self.stats.items():
            branch_keys = [k for k in parts if k not in ("sum", "post_bn", "out")]
            largest = max((parts[k].std for k in branch_keys), default=0.0)
            std_sum = parts["sum"].std if "sum" in parts else 0.0
            out[name] = {"branches": {k: s.summary() for k, s in parts.items()},
                         "std_ratio": std_sum / largest if largest > 0 else 0.0}
        return out
