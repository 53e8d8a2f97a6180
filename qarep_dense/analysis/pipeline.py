"""One call that runs every analysis on a training-form model and writes plots + report.md + report.json."""
from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from ..fileio import claim
from ..layers.rep import reparameterize
from ..layers.rep_blocks import RepVGGBlock
from . import plots
from .activations import ActivationRecorder, BranchRecorder
from .bn_scales import bn_scale_stats, bn_scale_values
from .friendliness import Thresholds, flag_activations, flag_weights
from .report import write_json, write_markdown
from .weights import weight_stats

log = logging.getLogger(__name__)

PLOT_FILES = {"weights": "weights_violin.png", "bn_scales": "bn_scales.png",
              "activations": "activation_ranges.png", "branches": "branch_histogram.png"}


def default_hist_block(model: nn.Module) -> str | None:
    """Fig. 4 used a block with all three branches: the first block with an identity, else the first block."""
    blocks = [(n, m) for n, m in model.named_modules() if isinstance(m, RepVGGBlock)]
    with_identity = [n for n, m in blocks if m.branch_identity is not None]
    return (with_identity or [n for n, _ in blocks] or [None])[0]


def _check_hist_choice(model: nn.Module, block: str, channel: int) -> None:
    modules = dict(model.named_modules())
    if not isinstance(modules.get(block), RepVGGBlock):
        names = [n for n, m in modules.items() if isinstance(m, RepVGGBlock)]
        raise ValueError(f"hist_block {block!r} is not a RepVGGBlock of this model; choose one of {names[:8]}"
                         + (" ..." if len(names) > 8 else ""))
    channels = modules[block].out_channels
    if not 0 <= channel < channels:
        raise ValueError(f"hist_channel {channel} out of range: block {block!r} has {channels} output channels")


@torch.no_grad()
def _record(model: nn.Module, deploy: nn.Module, batches: Iterable[torch.Tensor], device: torch.device,
            hist_block: str | None, hist_channel: int, progress: bool):
    """Run every batch through the deploy model (layer inputs) and the train model (branches)."""
    n_batches = n_images = 0
    with ActivationRecorder(deploy) as acts, BranchRecorder(model, hist_block, hist_channel) as branches:
        for x in tqdm(batches, desc="analysis", disable=not progress, leave=False):
            x = x.to(device)
            deploy(x)
            if branches.stats:
                model(x)
            n_batches, n_images = n_batches + 1, n_images + x.shape[0]
    if n_batches == 0:
        raise ValueError("batches is empty: the activation analyses need at least one input batch")
    return acts, branches, n_batches, n_images


def analyze_model(model: nn.Module, batches: Iterable[torch.Tensor], out_dir: str | Path, *,
                  thresholds: Thresholds = Thresholds(), hist_block: str | None = None, hist_channel: int = 0,
                  device: str | torch.device = "cpu", model_info: dict | None = None, input_note: str = "",
                  progress: bool = True) -> dict:
    """Analyse ``model`` (training form; an already fused one works without the branch parts).

    batches: float network inputs (N, C, H, W), already preprocessed. Writes ``PLOT_FILES``,
    report.md and report.json into ``out_dir`` and returns the report dict (the JSON content).
    hist_block / hist_channel: the block and output channel of the Fig. 4 histogram
    (default: :func:`default_hist_block`, channel 0). ``model`` is moved to ``device`` and put in
    eval mode (BN must use its running statistics, as the fused model does).
    """
    device = torch.device(device)
    model = model.to(device).eval()
    hist_block = hist_block if hist_block is not None else default_hist_block(model)
    if hist_block is not None:
        _check_hist_choice(model, hist_block, hist_channel)
    out_dir = Path(out_dir)
    deploy = reparameterize(model, fold_bn=True)
    acts, branches, n_batches, n_images = _record(model, deploy, batches, device, hist_block, hist_channel,
                                                   progress)
    w_stats, scales = weight_stats(deploy, acts.channel_power()), bn_scale_stats(model)
    act_summary = acts.summary()
    block_names = [s.name for s in scales]
    flags = {"C1": [f.as_dict() for f in flag_weights(w_stats, scales, thresholds)],
             "C2": [f.as_dict() for f in flag_activations(act_summary, thresholds, block_names)]}
    report = {
        "model": dict(model_info or {}),
        "inputs": f"{input_note or 'given batches'} ({n_batches} batches, {n_images} images)",
        "thresholds": dict(vars(thresholds)),
        "flags": flags,
        "weights": [s.as_dict() for s in w_stats],
        "bn_scales": [s.as_dict() for s in scales],
        "activations": act_summary,
        "branches": branches.summary(),
        "histogram": {"block": hist_block, "channel": hist_channel},
    }
    # Claimed once the model has been measured: a rerun replaces only what the last analysis there wrote.
    with claim(out_dir, "analyze", writes=[*PLOT_FILES.values(), "report.json", "report.md"]) as claimed:
        report["plots"] = _write_plots(out_dir, deploy, model, act_summary, flags, branches, hist_block, hist_channel)
        write_json(report, out_dir / "report.json")
        write_markdown(report, out_dir / "report.md")
        claimed.seal()
    log.info("analysis written to %s: %d C1 and %d C2 flags", out_dir, len(flags["C1"]), len(flags["C2"]))
    return report


def _write_plots(out_dir: Path, deploy: nn.Module, model: nn.Module, act_summary: dict, flags: dict,
                 branches: BranchRecorder, hist_block: str | None, hist_channel: int) -> list[str]:
    written = [plots.plot_weight_violins(deploy, out_dir / PLOT_FILES["weights"]).name]
    scale_values = bn_scale_values(model)
    if scale_values:
        written.append(plots.plot_bn_scales(scale_values, out_dir / PLOT_FILES["bn_scales"]).name)
    flagged = {f["layer"] for f in flags["C2"]}
    written.append(plots.plot_activation_ranges(act_summary, flagged, out_dir / PLOT_FILES["activations"]).name)
    hist = branches.histogram_values()
    if hist_block is not None and hist:
        written.append(plots.plot_branch_histogram(hist, hist_block, hist_channel,
                                                   out_dir / PLOT_FILES["branches"]).name)
    return written
