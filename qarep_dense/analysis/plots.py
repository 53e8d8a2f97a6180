"""PNG figures in the style of the paper's Fig. 2-4.

Uses matplotlib's object API with the Agg canvas (no pyplot): nothing global is switched, so a
caller's interactive backend is left alone, and no display is needed. matplotlib is imported inside
the functions so ``import qarep_dense.analysis`` stays light.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .weights import quantizable_layers

MAX_POINTS = 20_000  # per violin: a KDE over millions of weights is slow and looks the same
MAX_WIDTH_PX = 1600  # composed figures: readable at page width
TICK_PT, NOTE_PT = 9, 8  # font sizes of layer names / tick labels and of the numbers written on a plot


def _figure(width: float, height: float, rows: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 1, squeeze=False)[:, 0]
    return fig, axes


def _sample(values: torch.Tensor, k: int = MAX_POINTS) -> torch.Tensor:
    """At most ``k`` values, always keeping the minimum and maximum (the outliers are the point)."""
    flat = values.detach().double().flatten().cpu()
    if flat.numel() <= k:
        return flat
    gen = torch.Generator().manual_seed(0)
    idx = torch.randperm(flat.numel(), generator=gen)[: k - 2]
    return torch.cat([flat[idx], flat.min().view(1), flat.max().view(1)])


def _violins(ax, data: list[torch.Tensor], labels: list[str]) -> None:
    positions = list(range(1, len(data) + 1))
    # A violin needs spread; a constant tensor (e.g. all-equal multipliers) is drawn as a point.
    spread = [i for i, d in enumerate(data) if d.numel() > 1 and float(d.max() - d.min()) > 0]
    if spread:
        ax.violinplot([data[i].numpy() for i in spread], [positions[i] for i in spread], showextrema=True)
    for i, d in enumerate(data):
        if i not in spread:
            ax.plot([positions[i]], [float(d.mean())], "o", color="C0")
    ax.set_xticks(positions, labels, rotation=90, fontsize=TICK_PT)
    ax.ticklabel_format(axis="y", useOffset=False)  # equal values would otherwise read "1e-6 + ..."


def symlog(values: torch.Tensor, linthresh: float) -> torch.Tensor:
    """sign(x) * log10(1 + |x| / linthresh): linear near zero, logarithmic beyond ``linthresh``."""
    if not linthresh > 0:
        raise ValueError(f"symlog: linthresh must be positive, got {linthresh}")
    return values.sign() * torch.log10(1 + values.abs() / linthresh)


def _symlog_ticks(ax, linthresh: float, lo: float, hi: float) -> None:
    """Ticks at 0, +-linthresh * 10^k inside [lo, hi] (transformed units), labelled with the raw values."""
    ticks, labels = [0.0], ["0"]
    for k in range(0, 12):
        raw = linthresh * 10 ** k
        t = float(symlog(torch.tensor(raw), linthresh))
        for sign in (1, -1):
            if lo - 0.3 <= sign * t <= hi + 0.3:
                ticks.append(sign * t)
                labels.append(f"{sign * raw:.2g}")
    ax.set_yticks(ticks, labels, fontsize=TICK_PT)


def plot_weight_violins(deploy_model: nn.Module, path: str | Path, title: str = "", log_scale: bool = True) -> Path:
    """Fig. 2/3: one violin per conv/linear layer of the fused weights, std written above each.

    ``log_scale``: a symmetric-log value axis (linear within the median layer std, logarithmic beyond),
    with each violin's density estimated on that axis, so a single outlier of several hundred does
    not flatten every other layer's violin into a line. The tick labels are raw weight values.
    """
    layers = quantizable_layers(deploy_model)
    raw = [_sample(m.weight) for _, m in layers]
    stds = [float(m.weight.detach().double().std(correction=0)) for _, m in layers]
    linthresh = max(float(torch.tensor(stds).median()), 1e-12) if stds else 1.0
    data = [symlog(d, linthresh) for d in raw] if log_scale else raw
    fig, (ax,) = _figure(max(6.0, 0.45 * len(layers) + 2), 4.5)
    _violins(ax, data, [name for name, _ in layers])
    for pos, std in enumerate(stds, start=1):
        ax.annotate(f"{std:.2g}", (pos, float(data[pos - 1].max())), ha="center", va="bottom", fontsize=NOTE_PT)
    if log_scale and data:
        _symlog_ticks(ax, linthresh, min(float(d.min()) for d in data), max(float(d.max()) for d in data))
        ax.set_ylabel(f"fused weight value (symlog, linear within {linthresh:.2g})")
    else:
        ax.set_ylabel("fused weight value")
    ax.set_title(title or "Fused conv/linear weights per layer (number: std)")
    fig.savefig(path, dpi=110)
    return Path(path)


def plot_bn_scales(values: dict[str, dict[str, torch.Tensor]], path: str | Path) -> Path:
    """Fig. 3 mechanism: per branch type, one violin of log10 |gamma/sqrt(var+eps)| per block."""
    kinds = [k for k in ("3x3", "1x1", "identity", "post", "bn") if any(k in v for v in values.values())]
    fig, axes = _figure(max(6.0, 0.45 * len(values) + 2), 2.6 * max(1, len(kinds)), rows=max(1, len(kinds)))
    for ax, kind in zip(axes, kinds):
        blocks = [b for b, v in values.items() if kind in v]
        data = [torch.log10(values[b][kind].abs().clamp_min(1e-12)) for b in blocks]
        _violins(ax, data, blocks)
        ax.set_ylabel(f"{kind}: log10 |multiplier|", fontsize=TICK_PT)
    axes[0].set_title("BN multipliers gamma/sqrt(var+eps) per block and branch")
    fig.savefig(path, dpi=110)
    return Path(path)


def plot_activation_ranges(summary: dict[str, dict], flagged: set[str], path: str | Path) -> Path:
    """C2: per layer, max|x| and std of its input on a log axis; flagged layers marked red."""
    names = list(summary)
    pos = list(range(len(names)))
    fig, (ax,) = _figure(max(6.0, 0.45 * len(names) + 2), 4.0)
    ax.semilogy(pos, [max(summary[n]["amax"], 1e-12) for n in names], "o-", label="max |x|")
    ax.semilogy(pos, [max(summary[n]["std"], 1e-12) for n in names], "s-", label="std")
    for i, name in enumerate(names):
        if name in flagged:
            ax.axvspan(i - 0.4, i + 0.4, color="red", alpha=0.15)
    ax.set_xticks(pos, names, rotation=90, fontsize=TICK_PT)
    ax.legend()
    ax.set_title("Input activations per conv/linear layer (red: C2 flag)")
    fig.savefig(path, dpi=110)
    return Path(path)


def plot_branch_histogram(values: dict[str, torch.Tensor], block: str, channel: int, path: str | Path) -> Path:
    """Fig. 4: histograms of one channel of each branch of a block and of their sum."""
    fig, (ax,) = _figure(7.0, 4.0)
    for key, v in values.items():
        if key == "out":
            continue  # after ReLU: a spike at zero that hides the branches
        v = v.double()
        label = f"{key}: mean {float(v.mean()):.3g}, std {float(v.std(correction=0)):.3g}"
        ax.hist(v.numpy(), bins=80, histtype="step", linewidth=1.4, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("value")
    ax.set_ylabel("count")
    ax.legend(fontsize=NOTE_PT)
    ax.set_title(f"{block}, channel {channel}: branch outputs and their sum")
    fig.savefig(path, dpi=110)
    return Path(path)


def plot_side_by_side(images: list[str | Path], titles: list[str], path: str | Path, title: str = "",
                      stack: bool = False, max_width: int = MAX_WIDTH_PX) -> Path:
    """Put existing PNGs (e.g. the same figure of a RepVGG and a QARepVGG model) next to each other, or one
    above the other with ``stack`` (two wide per-layer figures side by side are too wide to read on a page).
    The result is at most ``max_width`` pixels wide: larger inputs are scaled down, never up."""
    from matplotlib.image import imread

    if len(images) != len(titles) or not images:
        raise ValueError(f"plot_side_by_side: {len(images)} images but {len(titles)} titles")
    arrays = []
    for image in images:
        if not Path(image).is_file():
            raise FileNotFoundError(f"{image}: figure to place side by side not found")
        arrays.append(imread(str(image)))
    dpi, title_px = 100, 34  # title rows are drawn at this height, whatever the scale
    widths, heights = [a.shape[1] for a in arrays], [a.shape[0] for a in arrays]
    width = max(widths) if stack else sum(widths)
    scale = min(1.0, max_width / width)
    if stack:
        rows = [h * scale + title_px for h in heights]
        size, grid = (width * scale, sum(rows)), dict(nrows=len(arrays), ncols=1, height_ratios=rows)
    else:
        size = (width * scale, max(heights) * scale + title_px)
        grid = dict(nrows=1, ncols=len(arrays), width_ratios=widths)
    fig, _ = _figure(1, 1)
    fig.clear()
    fig.set_size_inches(size[0] / dpi, (size[1] + (title_px if title else 0)) / dpi)
    axes = fig.subplots(**grid, squeeze=False).flatten()
    for ax, array, name in zip(axes, arrays, titles):
        ax.imshow(array, interpolation="antialiased")
        ax.set_title(name, fontsize=12)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=13, fontweight="bold")
    fig.savefig(path, dpi=dpi)
    return Path(path)
