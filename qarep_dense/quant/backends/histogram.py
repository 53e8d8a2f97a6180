"""Activation amax from a collected histogram of |x|, one implementation for every backend.

pytorch-quantization 2.1.3 and nvidia-modelopt 0.47.0 collect the same histogram (``num_bins`` bins
of |x| from 0 to the first batch's max, grown by bins of the same width; both backends collect it with
:func:`collect_bounded`, the same steps with the growth bounded) and compute the same percentile from it. Their other two methods cannot be used as shipped: pytorch-quantization's mse
calls ``.cuda()`` and modelopt's passes ``num_bits`` where its fake quant expects the bias (amax 0.29
where max gives 4.8); both entropy searches are pure-Python loops (seconds per quantizer). So the
backends hand their calibrator's histogram to :func:`histogram_amax`, which uses the library for
the percentile and :mod:`qarep_dense.quant.calibration` for mse and entropy (the same search,
vectorised): the same data gives the same amax in either backend.
"""
from __future__ import annotations

import math
import types
from typing import Any

import numpy as np
import torch

from ..calibration import entropy_amax, mse_amax

# A zero amax means "all zeros" to both libraries but a zero scale in ONNX: keep it tiny instead.
# It stays below their zero threshold (2**-24), so fake quant still outputs zeros.
MIN_AMAX = 1e-8


# How many bins a histogram may grow to before groups of its bins are merged (64x the libraries' 2048).
MAX_HISTOGRAM_BINS = 2048 * 64


def collect_bounded(calibrator: Any, x: torch.Tensor) -> None:
    """A library ``HistogramCalibrator.collect`` (its torch-histogram path) whose growth is bounded.

    Both libraries start with ``num_bins`` bins over [0, first batch's max] and, when a later batch reaches
    further, add bins of the same width. A first batch that is almost all zeros (an activation behind
    near-dead channels) gives bins so narrow that a later batch asked pytorch-quantization for 3e9 of them
    (12 GB, the main job's detector quantize search killed by the kernel's OOM killer on 2026-12-07), and an
    all-zero first batch gives width 0 and a division by zero. Here, where the growth would pass
    :data:`MAX_HISTOGRAM_BINS`, groups of ``k`` neighbouring bins are merged first (exact: the bins start at 0
    and have one width, so ``k`` of them are one bin of ``k`` times the width); an all-zero start is re-binned
    over the new range with its counts in the first bin. Below the bound every step is the library's own, so
    the same data gives the same histogram.
    """
    with torch.no_grad():
        x = x.detach().float().abs()
        if calibrator._skip_zeros:
            x = x[x != 0]
        x_max = x.max()
        hist, edges = calibrator._calib_hist, calibrator._calib_bin_edges
        if hist is None:
            calibrator._calib_hist = torch.histc(x, bins=calibrator._num_bins, min=0, max=x_max)
            calibrator._calib_bin_edges = torch.linspace(0, x_max, calibrator._num_bins + 1, device=x.device)
            return
        if x_max > edges[-1]:
            width = edges[1] - edges[0]
            if width <= 0:  # everything so far was 0: start over on the new range, the old counts in bin 0
                zeros = hist.sum()
                calibrator._calib_hist, calibrator._calib_bin_edges = None, None
                collect_bounded(calibrator, x)
                calibrator._calib_hist[0] += zeros
                return
            bins = int((x_max / width).ceil().item())
            if bins > MAX_HISTOGRAM_BINS:
                group = math.ceil(bins / MAX_HISTOGRAM_BINS)
                hist = torch.cat([hist, hist.new_zeros((-hist.numel()) % group)]).view(-1, group).sum(dim=1)
                width = width * group
                bins = int((x_max / width).ceil().item())
            calibrator._num_bins = bins
            calibrator._calib_bin_edges = torch.arange(0, x_max + width, width, device=x.device)
        new = torch.histc(x, bins=calibrator._num_bins, min=0, max=calibrator._calib_bin_edges[-1])
        new[:hist.numel()] += hist
        calibrator._calib_hist = new


def use_bounded_collect(calibrator: Any, num_bins: int) -> None:
    """Give a library ``HistogramCalibrator`` ``num_bins`` starting bins and :func:`collect_bounded` as its
    ``collect`` (on this instance only; both backends call it on every histogram calibrator they make)."""
    if not getattr(calibrator, "_torch_hist", True):
        raise ValueError("collect_bounded replaces the torch-histogram path; this calibrator uses numpy's")
    calibrator._num_bins = int(num_bins)
    calibrator.collect = types.MethodType(collect_bounded, calibrator)


def histogram_edges(bins: int, edges: np.ndarray) -> np.ndarray:
    """The ``bins + 1`` edges of a collected histogram. When a later batch widens the range, both libraries
    rebuild the edges with ``torch.arange(0, x_max + width, width)``, whose float rounding can add one edge
    more than the ``torch.histc`` bins they count into (seen on a detector: 8984 bins, 8986 edges). histc's
    bins are equal over [0, last edge], so those are the edges; a histogram whose edges agree is unchanged."""
    if edges.size == bins + 1:
        return edges
    return np.linspace(float(edges[0]), float(edges[-1]), bins + 1, dtype=edges.dtype)


def histogram_amax(calibrator: Any, method: str, num_bits: int, unsigned: bool, percentile: float, start_bin: int,
                   stride: int) -> torch.Tensor | None:
    """The amax ``method`` ("percentile", "mse" or "entropy") picks from a library ``HistogramCalibrator``'s
    histogram (``_calib_hist``, ``_calib_bin_edges``); None when it saw no data."""
    if calibrator._calib_hist is None:
        return None
    if method == "percentile":
        amax = calibrator.compute_amax("percentile", percentile=percentile)
    else:
        hist = torch.as_tensor(calibrator._calib_hist).int().cpu().numpy()
        edges = histogram_edges(hist.size, torch.as_tensor(calibrator._calib_bin_edges).cpu().numpy())
        fn = mse_amax if method == "mse" else entropy_amax
        amax = torch.tensor(fn(hist, edges, num_bits, unsigned, start_bin, stride))
    amax = torch.as_tensor(amax)
    if not torch.isfinite(amax).all():
        raise RuntimeError(f"{method} calibration produced a non-finite amax ({amax}); "
                           "the calibration activations contain inf/NaN")
    return amax.to(torch.as_tensor(calibrator._calib_hist).device)
