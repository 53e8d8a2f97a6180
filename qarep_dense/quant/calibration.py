"""Calibration: feed uint8 batches through the model with the evaluation ``Preprocess``.

Also the histogram math behind the "mse" and "entropy" calibrators. pytorch-quantization 2.1.3
has both, but its mse moves the histogram to ``.cuda()`` unconditionally (fails on CPU) and its
entropy is a pure-Python double loop (about 4 s per quantizer on 2048 bins). The functions here
compute the same amax from the same histogram (tests compare them to the package) on any device.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..data.preprocess import Preprocess
from .backends import QuantBackend
from .config import QuantConfig

log = logging.getLogger(__name__)


def batch_images(batch: Any) -> torch.Tensor:
    """The image tensor of a loader batch: the batch itself, its first item, or batch["images"]."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    if isinstance(batch, dict):
        for key in ("images", "image", "img", "inputs"):
            if isinstance(batch.get(key), torch.Tensor):
                return batch[key]
    raise TypeError(f"cannot find the images in a calibration batch of type {type(batch).__name__}; "
                    "expected a tensor, an (images, ...) tuple or a dict with an 'images' tensor")


def collect_batches(loader: Iterable, num_batches: int, source: str = "calibration loader") -> list[torch.Tensor]:
    """The first ``num_batches`` image batches of ``loader`` (kept as given, normally uint8 (N, 3, H, W)).

    Taken once so that repair, calibration and sensitivity all see the same images even when
    the loader shuffles.
    """
    if num_batches < 1:
        raise ValueError(f"{source}: num_batches must be >= 1, got {num_batches}")
    batches = []
    for batch in loader:
        images = batch_images(batch)
        if images.numel() == 0:
            continue
        batches.append(images)
        if len(batches) >= num_batches:
            break
    if not batches:
        raise ValueError(f"{source} yielded no images: calibration needs at least one non-empty batch")
    return batches


@torch.no_grad()
def forward_batches(model: nn.Module, batches: Sequence[torch.Tensor], preprocess: Preprocess,
                    device: str | torch.device = "cpu", desc: str = "calibrate", progress: bool = True,
                    keep_outputs: bool = False) -> list[Any]:
    """Run ``model`` on every batch (uint8 -> ``preprocess`` on ``device``); optionally keep outputs on CPU."""
    outputs = []
    for images in tqdm(batches, desc=desc, disable=not progress, leave=False):
        out = model(preprocess(images.to(device)))
        if keep_outputs:
            outputs.append(_to_cpu(out))
    return outputs


def flatten_outputs(out: Any) -> list[torch.Tensor]:
    """Every tensor of a model output (tensor, or nested list/tuple/dict of tensors), in order."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in flatten_outputs(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in flatten_outputs(v)]
    raise TypeError(f"unsupported model output type {type(out).__name__}")


def _to_cpu(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out.detach().float().cpu()
    if isinstance(out, (list, tuple)):
        return type(out)(_to_cpu(o) for o in out)
    if isinstance(out, dict):
        return {k: _to_cpu(v) for k, v in out.items()}
    return out


def calibrate(model: nn.Module, backend: QuantBackend, batches: Sequence[torch.Tensor], preprocess: Preprocess,
              config: QuantConfig, device: str | torch.device = "cpu", progress: bool = True) -> tuple[dict, float]:
    """Collect activation statistics on ``batches`` and load every amax.

    Returns ({quantizer name: amax}, seconds spent). The model stays in eval mode throughout
    (calibrating in train mode would use batch statistics in any remaining BN).
    """
    model.eval()
    start = time.perf_counter()
    backend.begin_calibration(model)
    forward_batches(model, batches, preprocess, device, desc=f"calibrate ({config.calibrator})", progress=progress)
    amax = backend.end_calibration(model, config.calibrator, config.percentile, config.hist_start_bin,
                                   config.hist_stride)
    model.to(device)  # histogram amax is computed on the CPU
    return amax, time.perf_counter() - start


# --- histogram math -------------------------------------------------------------------------

def mse_amax(hist: np.ndarray, edges: np.ndarray, num_bits: int, unsigned: bool = False, start_bin: int = 128,
             stride: int = 1, chunk: int = 256) -> float:
    """The bin centre that, used as amax, minimises the histogram-weighted quantization MSE.

    Same search as pytorch-quantization's ``_compute_amax_mse`` (candidates ``centres[start_bin::stride]``,
    narrow-range fake quant, first minimum), vectorised over candidates in chunks and run on the CPU.
    """
    counts = torch.as_tensor(np.asarray(hist), dtype=torch.float32)
    edge_t = torch.as_tensor(np.asarray(edges), dtype=torch.float32)
    centres = (edge_t[1:] + edge_t[:-1]) / 2
    if start_bin >= centres.numel():
        return float(edge_t[-1])  # too few bins to search: fall back to the max
    max_bound = torch.tensor(2.0 ** (num_bits - 1 + int(unsigned)) - 1.0)
    min_bound = torch.zeros(()) if unsigned else -max_bound
    candidates = torch.arange(start_bin, centres.numel(), stride)
    # Empty bins add exactly 0 to every candidate's error: drop them (same argmin, much less work).
    occupied = counts > 0
    values, weights = centres[occupied].unsqueeze(0), counts[occupied]
    # Every chunk's arithmetic runs in place in one buffer. Fresh (K, bins) temporaries per step (seven per chunk,
    # 13 MB each for a detector's 110k-bin histogram) could grow glibc's heap by 5.5 GB through fragmentation (the
    # main job's 6.5 GB stage; benchmarks/bench_mse_memory.py); the elementwise ops are the same, so the errors
    # are bit for bit the same.
    buffer = torch.empty(min(chunk, candidates.numel()), values.shape[1])
    mses = []
    for part in candidates.split(chunk):
        scale = max_bound / centres[part].unsqueeze(1)  # (K, 1)
        quant = torch.mul(values, scale, out=buffer[:len(part)])
        quant.round_().clamp_(min_bound, max_bound).div_(scale)
        mses.append(quant.sub_(values).pow_(2).mul_(weights).sum(dim=1))
    best = int(torch.cat(mses).argmin())
    return float(centres[candidates[best]])


def entropy_amax(hist: np.ndarray, edges: np.ndarray, num_bits: int, unsigned: bool = False, start_bin: int = 128,
                 stride: int = 1) -> float:
    """The amax minimising KL(reference || quantized) of the |x| histogram (TensorRT's entropy calibration).

    Same algorithm and tie-breaking (last minimum) as pytorch-quantization's ``_compute_amax_entropy``,
    with the per-bin Python loops replaced by ``np.digitize``/``np.bincount``.
    """
    # scipy.stats.entropy(p, q) is sum(rel_entr(p/sum p, q/sum q)); its argument-checking wrapper
    # costs ~3 ms per call, so call the ufunc directly (same values, inf where q == 0 < p).
    from scipy.special import rel_entr  # scipy comes with scikit-learn; imported only when used

    bins = np.array(hist, dtype=np.int64)
    bins[0] = bins[1]  # the zero bin is dominated by ReLU zeros: the package replaces it the same way
    nbins = 1 << (num_bits - 1 + int(unsigned))
    if start_bin > len(bins):
        return float(edges[-1])
    divergences = []
    for i in range(start_bin, len(bins) + 1, stride):
        ref = bins[:i].astype(np.float64)
        ref[-1] += bins[i:].sum()
        space = np.linspace(0, i, num=nbins + 1)
        digitized = np.digitize(np.arange(i), space) - 1
        nonzero = bins[:i] != 0
        # float64 even when no bin is occupied (bincount of an empty selection returns int64)
        sums = np.bincount(digitized[nonzero], weights=bins[:i][nonzero], minlength=nbins).astype(np.float64)
        counts = np.bincount(digitized[nonzero], minlength=nbins)
        mean = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
        quant = np.where(nonzero, mean[digitized], 0.0)
        divergences.append(rel_entr(ref / ref.sum(), quant / quant.sum()).sum())
    divergences = np.array(divergences)
    last_argmin = len(divergences) - 1 - int(np.argmin(divergences[::-1]))
    return float(edges[last_argmin * stride + start_bin])
