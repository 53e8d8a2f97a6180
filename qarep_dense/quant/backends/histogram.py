"""Activation amax from a collected histogram of |x|, one implementation for every backend.

pytorch-quantization 2.1.3 and nvidia-modelopt 0.47.0 collect the same histogram (``num_bins`` bins
of |x| from 0 to the first batch's max, grown by bins of the same width) and compute the same
percentile from it. Their other two methods cannot be used as shipped: pytorch-quantization's mse
calls ``.cuda()`` and modelopt's passes ``num_bits`` where its fake quant expects the bias (amax 0.29
where max gives 4.8); both entropy searches are pure-Python loops (seconds per quantizer). So the
backends hand their calibrator's histogram to :func:`histogram_amax`, which uses the library for
the percentile and :mod:`qarep_dense.quant.calibration` for mse and entropy (the same search,
vectorised): the same data gives the same amax in either backend.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..calibration import entropy_amax, mse_amax

# A zero amax means "all zeros" to both libraries but a zero scale in ONNX: keep it tiny instead.
# It stays below their zero threshold (2**-24), so fake quant still outputs zeros.
MIN_AMAX = 1e-8


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
