"""onnxruntime INT8 vs FP32 latency of fused classifiers, measured side by side in one run.

    python benchmarks/bench_ort.py --archs A0 B1g4 --batches 1 8 --repeats 20 --out benchmarks/results/quant_ort.md

Random-init models calibrated on random images: SPEED ONLY (accuracy is tools/ptq_eval.py's job).
INT8 models: our pytorch-quantization QDQ export ("ptq-qdq") and onnxruntime's quantize_static
("ort-static"). Integer kernels are counted in ORT's optimized graph, not assumed. Runs of the
variants are interleaved, so load from other processes hits them alike; the medians' ratios are
the numbers to read. "precise" = session.x64quantprecision (exact U8U8 kernels; the default U8S8
kernels can saturate on x86 CPUs without VNNI).
"""
from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from qarep_dense.data.preprocess import IMAGENET
from qarep_dense.layers import reparameterize
from qarep_dense.models import build_classifier
from qarep_dense.quant import ort_quantize_static
from qarep_dense.tasks.quant_check import CheckOptions, QuantConfig, quantize_and_check
from qarep_dense.deploy.onnx import export_onnx
from qarep_dense.deploy.ort import make_session
from qarep_dense.quant.export import kernel_counts
from _timing import append_report  # benchmarks/ is the script's folder, first on sys.path  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", nargs="+", default=["A0", "B1g4"])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=20, help="timed runs per variant (median reported)")
    p.add_argument("--repeats-large", type=int, default=5, help="timed runs for B-series models")
    p.add_argument("--threads", type=int, default=2, help="ORT intra-op threads")
    p.add_argument("--calib-images", type=int, default=8)
    p.add_argument("--out", type=Path, default=None, help="append the Markdown table to this file")
    return p.parse_args()


def build_variants(arch: str, size: int, calib_images: int, work: Path) -> dict[str, Path]:
    """ONNX files: fp32, ptq-qdq (ours), ort-static."""
    torch.manual_seed(0)
    fused = reparameterize(build_classifier(arch, "qarepvgg", 1000)).eval()
    g = torch.Generator().manual_seed(0)
    calib = [torch.randint(0, 256, (calib_images // 2, 3, size, size), dtype=torch.uint8, generator=g)
             for _ in range(2)]
    example = IMAGENET(calib[0][:1])
    paths = {"fp32": export_onnx(fused, example, work / f"{arch}_fp32.onnx")}
    report = quantize_and_check(fused, calib, IMAGENET, QuantConfig(num_calib_batches=2), options=CheckOptions(
        onnx_path=work / f"{arch}_qdq.onnx", ort_pre_process=False, check_images=1))
    paths["ptq-qdq"] = Path(report.onnx)
    paths["ort-static"] = ort_quantize_static(fused, calib, IMAGENET, work / f"{arch}_ort_static.onnx",
                                              QuantConfig(num_calib_batches=2))
    return paths


def time_interleaved(sessions: dict[str, object], x: np.ndarray, repeats: int) -> dict[str, float]:
    """Median ms per run for each session; one warm-up run each, then round-robin timed runs."""
    for s in sessions.values():
        s.run(None, {"input": x})
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(repeats):
        for name, s in sessions.items():
            start = time.perf_counter()
            s.run(None, {"input": x})
            times[name].append((time.perf_counter() - start) * 1000)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_arch(arch: str, args: argparse.Namespace, work: Path) -> list[str]:
    paths = build_variants(arch, args.size, args.calib_images, work)
    kernels = {}
    for name in ("ptq-qdq", "ort-static"):
        _, total, integer, floating = kernel_counts(paths[name], args.threads)
        kernels[name] = f"{integer}/{total}" + ("" if not floating else f" ({floating} float)")
    sessions = {"fp32": make_session(paths["fp32"], args.threads)}
    for name in ("ptq-qdq", "ort-static"):
        sessions[f"{name} fast"] = make_session(paths[name], args.threads, precise_int8=False)
        sessions[f"{name} precise"] = make_session(paths[name], args.threads, precise_int8=True)
    repeats = args.repeats_large if arch.startswith("B") else args.repeats
    rows = []
    for batch in args.batches:
        x = np.random.default_rng(0).standard_normal((batch, 3, args.size, args.size)).astype(np.float32)
        ms = time_interleaved(sessions, x, repeats)
        for name in sessions:
            if name == "fp32":
                continue
            int8 = name.split()[0]
            rows.append(f"| {arch} | {batch} | {name} | {kernels[int8]} | {ms['fp32']:.1f} | {ms[name]:.1f} | "
                        f"{ms['fp32'] / ms[name]:.2f}x | {repeats} |")
        print("\n".join(rows[-4:]), flush=True)
    return rows


def main() -> None:
    import onnxruntime

    args = parse_args()
    torch.set_num_threads(args.threads)
    header = [f"onnxruntime {onnxruntime.__version__}, {platform.processor() or platform.machine()}, "
              f"{args.threads} intra-op threads, {args.size}x{args.size}, random-init fused QARepVGG, median ms",
              "",
              "| model | batch | INT8 variant | integer convs | FP32 ms | INT8 ms | speed-up | runs |",
              "|---|---|---|---|---|---|---|---|"]
    print("\n".join(header), flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs:
            rows += bench_arch(arch, args, Path(tmp))
    append_report(args.out, "\n".join(header + rows))


if __name__ == "__main__":
    main()
