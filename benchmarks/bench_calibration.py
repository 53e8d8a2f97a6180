"""Calibration time of each calibrator on the same data, measured side by side in one run.

    python benchmarks/bench_calibration.py --arch A0 --size 224 --batches 4 --batch-size 8 \
        --out benchmarks/results/quant_calibration.md

Splits each calibration into the statistics pass (forward with quantizers collecting) and the
amax computation; adds the per-quantizer amax cost of pytorch-quantization's own entropy search
(pure-Python loops) against ours on one collected histogram. Random-init fused QARepVGG on random
images: speed only.
"""
from __future__ import annotations

import argparse
import copy
import platform
import time
from pathlib import Path

import numpy as np
import torch

from qarep_dense.data.preprocess import IMAGENET
from qarep_dense.layers import reparameterize
from qarep_dense.models import build_classifier
from qarep_dense.quant import QuantConfig
from qarep_dense.quant.backends import get_backend
from qarep_dense.quant.calibration import entropy_amax, forward_batches
from qarep_dense.quant.swap import quantize_modules
from _timing import append_report  # benchmarks/ is the script's folder, first on sys.path  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="A0")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="append the Markdown table to this file")
    return p.parse_args()


def quantize_modules_copy(fused, backend, cfg):
    model = copy.deepcopy(fused).eval()
    quantize_modules(model, backend, cfg)
    return model


def time_calibrator(fused, batches, calibrator: str) -> tuple[float, float, int, float]:
    """(statistics pass s, amax computation s, number of activation quantizers, mean amax)."""
    backend = get_backend("pytorch_quantization")
    cfg = QuantConfig(calibrator=calibrator)
    model = quantize_modules_copy(fused, backend, cfg)
    start = time.perf_counter()
    backend.begin_calibration(model)
    forward_batches(model, batches, IMAGENET, progress=False)
    collected = time.perf_counter()
    amax = backend.end_calibration(model, calibrator, cfg.percentile, cfg.hist_start_bin, cfg.hist_stride)
    done = time.perf_counter()
    return collected - start, done - collected, len(amax), float(np.mean(list(amax.values())))


def package_entropy_vs_ours(fused, batches) -> tuple[float, float, float, float]:
    """(package s, ours s, package amax, our amax) for the entropy search on one real histogram."""
    from pytorch_quantization.calib.histogram import _compute_amax_entropy

    backend = get_backend("pytorch_quantization")
    model = quantize_modules_copy(fused, backend, QuantConfig(calibrator="entropy"))
    backend.begin_calibration(model)
    forward_batches(model, batches[:1], IMAGENET, progress=False)
    cal = model.stages[2][0].conv.input_quantizer._calibrator
    hist, edges = cal._calib_hist.int().cpu().numpy(), cal._calib_bin_edges.cpu().numpy()
    start = time.perf_counter()
    theirs = float(_compute_amax_entropy(hist.copy(), edges, 8, False, 1, 128))
    mid = time.perf_counter()
    ours = entropy_amax(hist.copy(), edges, 8)
    end = time.perf_counter()
    return mid - start, end - mid, theirs, ours


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    fused = reparameterize(build_classifier(args.arch, "qarepvgg", 1000)).eval()
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 256, (args.batch_size, 3, args.size, args.size), dtype=torch.uint8, generator=g)
               for _ in range(args.batches)]
    lines = [f"{args.arch} fused QARepVGG (random init), {args.batches} x {args.batch_size} random images "
             f"{args.size}x{args.size}, {args.threads} torch threads, {platform.machine()}, pytorch-quantization 2.1.3",
             "",
             "| calibrator | statistics pass s | amax computation s | total s | quantizers | mean amax |",
             "|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    forward_batches(fused, batches[:1], IMAGENET, progress=False)  # warm-up: the first method is not charged for it
    for calibrator in ("max", "percentile", "mse", "entropy"):
        collect, compute, n, mean_amax = time_calibrator(fused, batches, calibrator)
        lines.append(f"| {calibrator} | {collect:.2f} | {compute:.2f} | {collect + compute:.2f} | {n} | {mean_amax:.3f} |")
        print(lines[-1], flush=True)
    theirs_s, ours_s, theirs, ours = package_entropy_vs_ours(fused, batches)
    lines += ["", "Entropy amax search on one histogram (stages.2.0 input, 2048 bins):", "",
              "| implementation | seconds | amax |", "|---|---|---|",
              f"| pytorch-quantization `_compute_amax_entropy` | {theirs_s:.2f} | {theirs:.5f} |",
              f"| qarep_dense `entropy_amax` | {ours_s:.3f} | {ours:.5f} |",
              f"| speed-up | {theirs_s / ours_s:.0f}x | |"]
    print("\n".join(lines[-7:]), flush=True)
    append_report(args.out, "\n".join(lines))


if __name__ == "__main__":
    main()
