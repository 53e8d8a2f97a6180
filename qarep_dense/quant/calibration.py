"""Calibration: feed uint8 batches through the model with the evaluation ``Preprocess``.

Also the histogram math behind the "mse" and "entropy" calibrators. pytorch-quantization 2.1.3
has both, but its mse moves the histogram to ``.cuda()`` unconditionally (fails on CPU) and its
entropy is a pure-Python double loop (seconds per quantizer on 2048 bins). The functions here
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


# Divergences within this of the smallest count as equal to it (the package's ties, e.g. exact zeros where every
# group holds one bin, come out of the prefix sums as rounding noise of about 1e-15)
ENTROPY_TIE = 1e-12
ENTROPY_BLOCK = 2048  # candidates per block of entropy_divergences


def entropy_amax(hist: np.ndarray, edges: np.ndarray, num_bits: int, unsigned: bool = False, start_bin: int = 128,
                 stride: int = 1) -> float:
    """The amax minimising KL(reference || quantized) of the |x| histogram (TensorRT's entropy calibration).

    Same algorithm, bin grouping and tie-breaking (the last of the smallest, up to ``ENTROPY_TIE``) as
    pytorch-quantization's ``_compute_amax_entropy``. Written by hand because the package's double loop costs
    O(bins^2) in Python (seconds per quantizer at 2048 bins, minutes on a histogram grown past its first range).
    Here every candidate's divergence comes from prefix sums over the bins, a block of candidates at once:
    O(candidates x quantization levels).

    For a candidate ``i``: the reference is ``bins[:i]`` with the tail ``bins[i:]`` added to its last bin; the
    quantized distribution spreads each of the ``2**bits`` groups' mass evenly over its nonzero bins (group ``k``
    is the bins ``j`` with ``space[k] <= j < space[k+1]``, ``space = linspace(0, i, levels + 1)``, as
    ``np.digitize`` assigns them). With ``T`` the total count, ``S = sum(bins[:i])`` and ``m_k`` group ``k``'s
    mean over its nonzero bins, the divergence over the bins below ``i - 1`` is
    ``(sum b log b - (log T - log S) sum b - sum_k G_k log m_k) / T``, ``G_k`` the group's mass below ``i - 1``;
    the last bin adds its own term, infinite where the tail lands on an empty bin (as ``rel_entr`` gives).
    """
    if start_bin > len(hist):
        return float(edges[-1])
    divergences = entropy_divergences(hist, num_bits, unsigned, start_bin, stride)
    if np.isnan(divergences).any():  # the package's np.argmin takes a NaN (0/0) as the smallest: its last one
        best = int(np.flatnonzero(np.isnan(divergences))[-1])
    else:
        best = int(np.flatnonzero(divergences <= divergences.min() + ENTROPY_TIE)[-1])
    return float(edges[best * stride + start_bin])


def entropy_divergences(hist: np.ndarray, num_bits: int, unsigned: bool = False, start_bin: int = 128,
                        stride: int = 1) -> np.ndarray:
    """KL(reference || quantized) of each candidate ``i`` in ``range(start_bin, len(hist) + 1, stride)``
    (:func:`entropy_amax`)."""
    bins = np.array(hist, dtype=np.int64)
    bins[0] = bins[1]  # the zero bin is dominated by ReLU zeros: the package replaces it the same way
    levels = 1 << (num_bits - 1 + int(unsigned))
    cand = np.arange(start_bin, len(bins) + 1, stride)
    counts = np.concatenate([[0], np.cumsum(bins)])  # exact integer prefix sums
    occupied = np.concatenate([[0], np.cumsum(bins != 0)])
    blogb = np.concatenate([[0.0], np.cumsum(np.where(bins > 0, bins * np.log(np.maximum(bins, 1)), 0.0))])
    total = float(counts[-1])  # T
    # blocks of candidates: a (block x levels) table each, a few MB, however far the histogram has grown
    return np.concatenate([_block_divergences(cand[k:k + ENTROPY_BLOCK], bins, counts, occupied, blogb, total,
                                              levels) for k in range(0, len(cand), ENTROPY_BLOCK)])


def _block_divergences(cand: np.ndarray, bins: np.ndarray, counts: np.ndarray, occupied: np.ndarray,
                       blogb: np.ndarray, total: float, levels: int) -> np.ndarray:
    """:func:`entropy_divergences` of the candidates ``cand``, from the histogram's prefix sums."""
    below = counts[cand]  # S per candidate
    last, tail = bins[cand - 1], counts[-1] - counts[cand]
    # group starts: the first integer at or above each edge (np.digitize's j >= space[k]); the last edge is i
    starts = np.ceil(np.linspace(0, cand, levels + 1, axis=1)).astype(np.int64)
    mass = counts[starts[:, 1:]] - counts[starts[:, :-1]]  # G_k over j < i
    nonzero = occupied[starts[:, 1:]] - occupied[starts[:, :-1]]
    mean = np.divide(mass, nonzero, out=np.zeros(mass.shape), where=nonzero > 0)
    rows = np.arange(len(cand))
    last_group = (starts[:, :-1] <= (cand - 1)[:, None]).sum(axis=1) - 1
    mass[rows, last_group] -= last  # G_k over j < i - 1: the last bin has a term of its own
    with np.errstate(divide="ignore", invalid="ignore"):
        log_mean = np.log(mean, out=np.zeros(mean.shape), where=mean > 0)  # groups without mass weigh 0 below
        log_ratio = np.log(total) - np.log(below.astype(np.float64))
        body = (blogb[cand - 1] - log_ratio * counts[cand - 1] - (mass * log_mean).sum(axis=1)) / total
        ref_last = (last + tail) / total
        q_last = mean[rows, last_group] / below
        last_term = np.where(last + tail == 0, 0.0,
                             np.where(last == 0, np.inf, ref_last * (np.log(ref_last) - np.log(q_last))))
        divergences = body + last_term
    # the package's 0/0 where nothing lies below the candidate (or in the histogram) gives NaN: keep it
    divergences[(below == 0) | (total == 0)] = np.nan
    return divergences
